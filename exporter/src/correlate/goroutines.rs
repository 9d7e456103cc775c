//! In-process parents for Go: a client call made while a server request is handled (on its
//! goroutine or one it spawned) is that request's child, and a server request whose caller
//! runs on this host joins the caller's trace. Calls are held until their request's trace is
//! known.

use super::hold::{CONTEXT_TTL, JOIN_GRACE, NO_CALLER_KEEP, SETTLED_KEEP};
use crate::protocols::call::Call;
use crate::protocols::trace_context::{new_span_id, new_trace_id};
use crate::protocols::Role;
use crate::sources::go::call::{GoConn, Goroutine};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A server request, by process, goroutine and entry time.
type ServerKey = (u32, u64, u64);

/// Where a client call and the server call answering it on this host meet: the client's
/// address and port, and the server's port.
type CallerKey = (IpAddr, u16, u16);

/// Calls held at once; past this the oldest contexts are settled early (joins are lost,
/// never memory).
const MAX_HELD: usize = 65_536;
/// Client calls kept for server records read after them; past this, new ones are not kept
/// (their servers start their own traces).
const MAX_RECENT: usize = 65_536;
/// Server ports remembered; past this the set is relearnt from the next requests.
const MAX_SERVER_PORTS: usize = 4_096;

/// The trace a server request belongs to, once known.
#[derive(Debug, Clone, Copy)]
struct Settled {
    trace_id: u128,
    flags: u8,
    parent: Option<u64>,
}

/// One server request's trace context. Its calls (the request itself and the client calls
/// its handler made) are held until its trace is known: a caller on this host may still turn
/// it into a child of that caller's trace.
struct Ctx {
    span_id: u64,
    /// The trace the kernel chose for the request (what its plaintext client calls carried
    /// onward), used when nothing else settles it.
    own_trace: u128,
    settled: Option<Settled>,
    /// An incoming traceparent that may have been written by sightline itself into a call
    /// from this host (see [`RecentClient::injected`]): the trace holds only if no traced
    /// caller here turns up, since that caller's trace may have been joined further up.
    fallback: Option<Settled>,
    held: Vec<Call>,
    /// Server requests in other processes that answer this request's client calls: they join
    /// this trace, under the client span that called them.
    dependents: Vec<(ServerKey, u64)>,
    /// When to stop waiting for a caller on this host.
    deadline: Option<Instant>,
    /// Where the request's caller would show up, to stop waiting for it once settled.
    awaiting: Option<CallerKey>,
    born: Instant,
}

impl Ctx {
    fn new(span_id: u64, own_trace: u128) -> Ctx {
        Ctx {
            span_id: nonzero_or(span_id, new_span_id),
            own_trace,
            settled: None,
            fallback: None,
            held: Vec::new(),
            dependents: Vec::new(),
            deadline: None,
            awaiting: None,
            born: Instant::now(),
        }
    }
}

/// A client call seen recently, for a server record read after it.
#[derive(Debug, Clone, Copy)]
struct RecentClient {
    owner: Option<ServerKey>,
    span_id: u64,
    /// Its request carried a traceparent sightline wrote, naming this span.
    injected: bool,
    trace: Option<(u128, u8)>,
    start_ns: u64,
    end_ns: u64,
    seen: Instant,
}

/// What client calls read after their server request settled need of it.
#[derive(Debug, Clone, Copy)]
struct Done {
    span_id: u64,
    s: Settled,
}

#[derive(Default)]
pub struct GoCalls {
    /// Server requests whose trace is not settled yet.
    contexts: FxHashMap<ServerKey, Ctx>,
    /// Settled server requests, for [`SETTLED_KEEP`].
    done: FxHashMap<ServerKey, Done>,
    /// Server requests waiting for their caller, by where that caller would be.
    waiting: FxHashMap<CallerKey, Vec<(ServerKey, u64, u64)>>,
    recent_clients: FxHashMap<CallerKey, VecDeque<RecentClient>>,
    /// Ports Go servers here were seen serving on: a client call from another capture point
    /// is kept for joining only when its peer is one of them.
    server_ports: FxHashSet<u16>,
    /// Time-ordered queues, so that expiry costs what expires, not what is kept: server
    /// requests waiting for a caller, contexts by birth, settled contexts, recent clients.
    due: VecDeque<(Instant, ServerKey)>,
    born: VecDeque<(Instant, ServerKey)>,
    retire: VecDeque<(Instant, ServerKey)>,
    recent: VecDeque<(Instant, CallerKey)>,
    /// Connections on this host whose caller is not traced, with when that was last relied on.
    no_caller: FxHashMap<CallerKey, Instant>,
    no_caller_swept: Option<Instant>,
    held: usize,
    ready: Vec<Call>,
}

impl GoCalls {
    /// Calls whose trace is settled, in the order they were settled.
    pub fn take_ready(&mut self) -> std::vec::Drain<'_, Call> {
        self.ready.drain(..)
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// A Go call, held until its trace is known.
    pub fn add(&mut self, mut call: Call, r: &Goroutine, conn: GoConn) {
        match call.role {
            Role::Server => self.add_server(r, call, conn),
            Role::Client => {
                call.span_id = nonzero_or(r.span_id, new_span_id);
                let owner =
                    (r.parent_goid != 0).then_some((r.tgid, r.parent_goid, r.parent_start_ns));
                let mut release = true;
                let trace = match owner {
                    // The request that made the call is over (the call outlived it).
                    Some(k) if self.done.contains_key(&k) => {
                        let d = &self.done[&k];
                        call.parent_span_id = Some(d.span_id);
                        call.trace_id = d.s.trace_id;
                        call.trace_flags = d.s.flags;
                        Some((d.s.trace_id, d.s.flags))
                    }
                    Some(k) => {
                        let ctx = ctx_entry(
                            &mut self.contexts,
                            &mut self.born,
                            k,
                            r.parent_span_id,
                            r.trace_id,
                        );
                        call.parent_span_id = Some(ctx.span_id);
                        release = false;
                        ctx.settled.map(|s| (s.trace_id, s.flags))
                    }
                    None => {
                        // The kernel's ids: the ones a traceparent it wrote carried.
                        call.trace_id = nonzero_or(r.trace_id, new_trace_id);
                        call.trace_flags = if r.trace_id == 0 { 1 } else { r.trace_flags };
                        Some((call.trace_id, call.trace_flags))
                    }
                };
                if let (Some(local), Some(peer)) = (conn.local, conn.peer) {
                    self.client_seen(
                        (local.ip(), local.port(), peer.port()),
                        RecentClient {
                            owner,
                            span_id: call.span_id,
                            injected: r.injected,
                            trace,
                            start_ns: r.start_ns,
                            end_ns: r.end_ns,
                            seen: Instant::now(),
                        },
                    );
                }
                match owner {
                    Some(k) if !release => self.hold(k, call),
                    _ => self.ready.push(call),
                }
            }
        }
    }

    fn add_server(&mut self, r: &Goroutine, mut call: Call, conn: GoConn) {
        if let Some(port) = conn.local.map(|l| l.port()).or(call.host_port) {
            if !self.server_ports.contains(&port) {
                if self.server_ports.len() >= MAX_SERVER_PORTS {
                    self.server_ports.clear();
                }
                self.server_ports.insert(port);
            }
        }
        let key = (r.tgid, r.goid, r.start_ns);
        // An incoming traceparent is what the caller itself said: it wins, unless sightline
        // wrote it for a caller on this host (see `Ctx::fallback`).
        let given =
            (r.trace_given && r.trace_id != 0 && r.parent_span_id != 0).then_some(Settled {
                trace_id: r.trace_id,
                flags: r.trace_flags,
                parent: Some(r.parent_span_id),
            });
        if let Some(d) = self.done.get(&key) {
            // Settled before its own record was read (its client calls waited too long).
            call.span_id = d.span_id;
            release(&mut call, d.s);
            self.ready.push(call);
            return;
        }
        // HTTP/2 requests carry no socket to follow; the Host header's port is the server's.
        let here = match (call.peer, conn.local) {
            (Some(p), Some(l)) => Some((p.ip(), p.port(), l.port()))
                .filter(|_| p.ip().is_loopback() || p.ip() == l.ip()),
            (Some(p), None) if p.ip().is_loopback() => {
                call.host_port.map(|port| (p.ip(), p.port(), port))
            }
            _ => None,
        };
        // The caller may already have been read.
        let found = here.and_then(|ck| {
            self.recent_clients.get(&ck).and_then(|v| {
                v.iter()
                    .find(|c| c.start_ns <= r.start_ns && r.end_ns <= c.end_ns)
                    .copied()
            })
        });
        let no_caller = found.is_none()
            && here.is_some_and(|ck| match self.no_caller.get_mut(&ck) {
                Some(seen) => {
                    *seen = Instant::now();
                    true
                }
                None => false,
            });
        // A traceparent from a caller elsewhere is final; one from a caller on this host waits
        // for that caller, whose trace may differ from what the kernel wrote.
        let (given, fallback) = match here {
            Some(_) if !no_caller => (None, given),
            _ => (given, None),
        };
        let Some(ctx) = self.contexts.get_mut(&key) else {
            if found.is_none()
                && fallback.is_none()
                && (given.is_some() || here.is_none() || no_caller)
            {
                // Nothing to wait for and nothing waits for it: the common case costs no
                // context, only the record of its trace for client calls read after it.
                let s = given.unwrap_or_else(|| Settled {
                    trace_id: nonzero_or(r.trace_id, new_trace_id),
                    flags: 1,
                    parent: None,
                });
                call.span_id = nonzero_or(r.span_id, new_span_id);
                release(&mut call, s);
                self.retire(key, call.span_id, s);
                self.ready.push(call);
                return;
            }
            // A context of its own, settled below or by its deadline (so not in `born`).
            let ctx = self
                .contexts
                .entry(key)
                .or_insert_with(|| Ctx::new(r.span_id, r.trace_id));
            call.span_id = ctx.span_id;
            ctx.settled = given.or(ctx.settled);
            ctx.fallback = fallback;
            return self.wait_or_settle(key, call, here, found, no_caller, r.end_ns);
        };
        call.span_id = ctx.span_id;
        if r.trace_id != 0 {
            ctx.own_trace = r.trace_id;
        }
        ctx.settled = given.or(ctx.settled);
        ctx.fallback = fallback;
        self.wait_or_settle(key, call, here, found, no_caller, r.end_ns)
    }

    /// Holds a server request's call, then settles it unless it waits for a caller on this
    /// host.
    fn wait_or_settle(
        &mut self,
        key: ServerKey,
        call: Call,
        here: Option<CallerKey>,
        found: Option<RecentClient>,
        no_caller: bool,
        end_ns: u64,
    ) {
        let settled = self.contexts.get(&key).is_some_and(|c| c.settled.is_some());
        self.hold(key, call);
        let Some(ck) = here.filter(|_| !settled && !no_caller) else {
            self.settle(key, None);
            return;
        };
        if let Some(c) = found {
            self.join(key, c);
            return;
        }
        if let Some(ctx) = self.contexts.get_mut(&key) {
            let at = Instant::now() + JOIN_GRACE;
            ctx.deadline = Some(at);
            ctx.awaiting = Some(ck);
            self.due.push_back((at, key));
        }
        self.waiting
            .entry(ck)
            .or_default()
            .push((key, key.2, end_ns));
    }

    /// Whether a Go server here was seen serving on `port`.
    pub fn serves_port(&self, port: u16) -> bool {
        self.server_ports.contains(&port)
    }

    /// A client call on this host that another capture point saw (an OpenSSL or a socket
    /// client, say), with its ids: a Go server request it carried becomes its child. When the
    /// client has no parent (`root`) and the request is still held, the request keeps the
    /// trace the kernel chose for it, which its own client calls may already have carried to
    /// other hosts, and the trace the client must adopt is returned. Times are the capture
    /// clock's (`CLOCK_MONOTONIC`).
    pub fn foreign_client(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        span_id: u64,
        trace: (u128, u8),
        root: bool,
        (start_ns, end_ns): (u64, u64),
    ) -> Option<(u128, u8)> {
        let mut c = RecentClient {
            owner: None,
            span_id,
            injected: false,
            trace: Some(trace),
            start_ns,
            end_ns,
            seen: Instant::now(),
        };
        let ck = (local.ip(), local.port(), peer.port());
        if root {
            if let Some(server) = self.waiting_for(ck, &c) {
                let adopted = self.adopt(server, span_id);
                if let Some(t) = adopted {
                    c.trace = Some(t);
                }
                self.remember_client(ck, c);
                return adopted;
            }
        }
        self.client_seen(ck, c);
        None
    }

    /// The server request waiting at `ck` that client call `c` carried, no longer waiting.
    fn waiting_for(&mut self, ck: CallerKey, c: &RecentClient) -> Option<ServerKey> {
        self.no_caller.remove(&ck);
        self.waiting.get_mut(&ck).and_then(|v| {
            let i = v
                .iter()
                .position(|(_, s, e)| c.start_ns <= *s && *e <= c.end_ns)?;
            Some(v.swap_remove(i).0)
        })
    }

    /// Server request `server`, called by a client with no trace of its own, becomes that
    /// client's child in the request's own trace, which the client adopts. A traceparent the
    /// client itself sent holds instead (and nothing is adopted).
    fn adopt(&mut self, server: ServerKey, client_span: u64) -> Option<(u128, u8)> {
        let ctx = self.contexts.get_mut(&server)?;
        ctx.deadline = None;
        ctx.awaiting = None;
        if let Some(f) = ctx.fallback {
            self.settle(server, Some(f));
            return None;
        }
        let trace_id = nonzero_or(ctx.own_trace, new_trace_id);
        self.settle(
            server,
            Some(Settled {
                trace_id,
                flags: 1,
                parent: Some(client_span),
            }),
        );
        Some((trace_id, 1))
    }

    /// A client call on this host: if a server request waits for it, that request joins it.
    fn client_seen(&mut self, ck: CallerKey, c: RecentClient) {
        if let Some(server) = self.waiting_for(ck, &c) {
            self.join(server, c);
        } else {
            self.remember_client(ck, c);
        }
    }

    /// Keeps client call `c` a while, for a server record read after it.
    fn remember_client(&mut self, ck: CallerKey, c: RecentClient) {
        if self.recent.len() < MAX_RECENT {
            self.recent_clients.entry(ck).or_default().push_back(c);
            self.recent.push_back((c.seen, ck));
        }
    }

    /// Server request `server` answers client call `c`: it becomes that span's child.
    fn join(&mut self, server: ServerKey, c: RecentClient) {
        if let Some(ctx) = self.contexts.get_mut(&server) {
            ctx.deadline = None;
            ctx.awaiting = None;
            // The request carried a traceparent its caller set itself: that one holds.
            if let Some(f) = ctx.fallback.filter(|_| !c.injected) {
                return self.settle(server, Some(f));
            }
        }
        match (c.trace, c.owner) {
            (Some((trace_id, flags)), _) => self.settle(
                server,
                Some(Settled {
                    trace_id,
                    flags,
                    parent: Some(c.span_id),
                }),
            ),
            (None, Some(owner)) => {
                // The caller's own trace is not known yet: follow it when it is.
                let resolved = self
                    .done
                    .get(&owner)
                    .map(|d| d.s)
                    .or_else(|| self.contexts.get(&owner).and_then(|o| o.settled));
                match resolved {
                    Some(s) => self.settle(
                        server,
                        Some(Settled {
                            trace_id: s.trace_id,
                            flags: s.flags,
                            parent: Some(c.span_id),
                        }),
                    ),
                    None => match self.contexts.get_mut(&owner) {
                        Some(o) => o.dependents.push((server, c.span_id)),
                        None => self.settle(server, None),
                    },
                }
            }
            (None, None) => self.settle(server, None),
        }
    }

    fn hold(&mut self, key: ServerKey, call: Call) {
        let ctx = ctx_entry(&mut self.contexts, &mut self.born, key, 0, 0);
        match ctx.settled {
            Some(s) if ctx.held.is_empty() && call.role == Role::Client => {
                let mut call = call;
                call.trace_id = s.trace_id;
                call.trace_flags = s.flags;
                self.ready.push(call);
            }
            _ => {
                ctx.held.push(call);
                self.held += 1;
            }
        }
        if self.held > MAX_HELD {
            let mut oldest: Vec<(Instant, ServerKey)> =
                self.contexts.iter().map(|(k, c)| (c.born, *k)).collect();
            oldest.sort_unstable();
            for (_, k) in oldest.into_iter().take(self.contexts.len() / 2) {
                self.settle(k, None);
            }
        }
    }

    /// Fixes a server request's trace (`how`, or its own when `None`), releases its calls, and
    /// settles the requests that joined it. Its context goes; what late client calls need of
    /// it is kept a while.
    fn settle(&mut self, key: ServerKey, how: Option<Settled>) {
        let mut stack = vec![(key, how)];
        while let Some((key, how)) = stack.pop() {
            let Some(ctx) = self.contexts.remove(&key) else {
                continue;
            };
            let s = match (how, ctx.settled) {
                (Some(h), None) => h,
                (_, Some(own)) => own,
                (None, None) => ctx.fallback.unwrap_or_else(|| Settled {
                    trace_id: nonzero_or(ctx.own_trace, new_trace_id),
                    flags: 1,
                    parent: None,
                }),
            };
            if let Some(ck) = ctx.awaiting {
                if let Some(v) = self.waiting.get_mut(&ck) {
                    v.retain(|(k, _, _)| *k != key);
                }
            }
            for mut call in ctx.held {
                release(&mut call, s);
                self.held -= 1;
                self.ready.push(call);
            }
            for (dep, parent) in ctx.dependents {
                stack.push((
                    dep,
                    Some(Settled {
                        trace_id: s.trace_id,
                        flags: s.flags,
                        parent: Some(parent),
                    }),
                ));
            }
            self.retire(key, ctx.span_id, s);
        }
    }

    /// Keeps a settled request's span and trace for [`SETTLED_KEEP`].
    fn retire(&mut self, key: ServerKey, span_id: u64, s: Settled) {
        self.done.insert(key, Done { span_id, s });
        self.retire.push_back((Instant::now(), key));
    }

    /// Settles requests that waited long enough for a caller, and forgets old state. Called
    /// after every batch; costs what expires.
    pub fn expire(&mut self, force: bool) {
        let now = Instant::now();
        if force {
            let all: Vec<ServerKey> = self.contexts.keys().copied().collect();
            for k in all {
                self.settle(k, None);
            }
        }
        while let Some(&(at, key)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            let waiting = self
                .contexts
                .get(&key)
                .filter(|c| c.settled.is_none() && c.deadline.is_some_and(|d| d <= now));
            if let Some(c) = waiting {
                if let Some(ck) = c.awaiting {
                    self.no_caller.insert(ck, now);
                }
                self.settle(key, None);
            }
        }
        // A context whose server request never ended (or whose record was lost).
        while let Some(&(at, key)) = self.born.front() {
            if now.duration_since(at) < CONTEXT_TTL {
                break;
            }
            self.born.pop_front();
            if self.contexts.contains_key(&key) {
                self.settle(key, None);
            }
        }
        // Settled requests stay a moment for client calls that outlive them (a goroutine the
        // handler left running), then go.
        while let Some(&(at, key)) = self.retire.front() {
            if now.duration_since(at) < SETTLED_KEEP {
                break;
            }
            self.retire.pop_front();
            self.done.remove(&key);
        }
        if self
            .no_caller_swept
            .is_none_or(|t| now.duration_since(t) > NO_CALLER_KEEP / 4)
        {
            self.no_caller
                .retain(|_, seen| now.duration_since(*seen) < NO_CALLER_KEEP);
            self.no_caller_swept = Some(now);
        }
        while let Some(&(at, ck)) = self.recent.front() {
            if now.duration_since(at) < JOIN_GRACE * 4 {
                break;
            }
            self.recent.pop_front();
            if let Some(v) = self.recent_clients.get_mut(&ck) {
                // In the order they were seen: the expired ones are at the front.
                while v
                    .front()
                    .is_some_and(|c| now.duration_since(c.seen) >= JOIN_GRACE * 4)
                {
                    v.pop_front();
                }
                if v.is_empty() {
                    self.recent_clients.remove(&ck);
                }
            }
        }
        if self.born.len() > 2 * self.contexts.len() + 1024 {
            // Contexts settled before their TTL leave stale entries; compacting when they
            // outnumber the live ones keeps this amortised O(1).
            let contexts = &self.contexts;
            self.born.retain(|(_, k)| contexts.contains_key(k));
        }
    }
}

/// Gives a call its request's trace.
fn release(call: &mut Call, s: Settled) {
    call.trace_id = s.trace_id;
    call.trace_flags = s.flags;
    if call.role == Role::Server {
        call.parent_span_id = s.parent;
    }
}

/// The context of server request `key`, made with the kernel's span and trace ids for it
/// when it is new.
fn ctx_entry<'a>(
    contexts: &'a mut FxHashMap<ServerKey, Ctx>,
    born: &mut VecDeque<(Instant, ServerKey)>,
    key: ServerKey,
    span_id: u64,
    trace_id: u128,
) -> &'a mut Ctx {
    contexts.entry(key).or_insert_with(|| {
        let c = Ctx::new(span_id, trace_id);
        born.push_back((c.born, key));
        c
    })
}

/// `v`, or a fresh id where the kernel gave none (records from before it chose ids, tests).
fn nonzero_or<T: Default + PartialEq>(v: T, fresh: fn() -> T) -> T {
    if v == T::default() {
        fresh()
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::ProcessInfo;
    use crate::protocols::Conventions;
    use crate::sources::go::call::call;
    use crate::sources::go::record::GoRecord;
    use sightline_common::go_role;
    use std::sync::Arc;
    use std::time::Duration;

    fn rec(role: u32, tgid: u32, goid: u64, start: u64, end: u64) -> GoRecord {
        GoRecord {
            role,
            tgid,
            goid,
            start_ns: start,
            end_ns: end,
            method: "GET".into(),
            path: "/a".into(),
            proto_major: 1,
            proto_minor: 1,
            ..Default::default()
        }
    }

    /// The record of a server request that arrived with a traceparent.
    fn given(r: &mut GoRecord, trace: u128, parent: u64) {
        r.trace_given = true;
        r.trace_id = trace;
        r.parent_span_id = parent;
        r.trace_flags = 1;
    }

    fn process(pid: u32) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo::from_parts(
            pid,
            "svc".into(),
            "svc".into(),
            b"",
        ))
    }

    fn add(g: &mut GoCalls, p: Arc<ProcessInfo>, r: &GoRecord, conn: GoConn) {
        let conv = Conventions {
            redact_query_values: true,
            mono_to_unix_ns: 0,
        };
        g.add(call(p, r, conn, &conv), &Goroutine::from(r), conn);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_call_read_first_is_still_the_child_of_its_server_request() {
        let mut g = GoCalls::default();
        let mut client = rec(go_role::CLIENT, 7, 9, 150, 160);
        client.parent_goid = 5;
        client.parent_start_ns = 100;
        add(&mut g, process(7), &client, GoConn::default());
        assert_eq!(
            g.take_ready().count(),
            0,
            "held until its request's trace is known"
        );
        let mut server = rec(go_role::SERVER, 7, 5, 100, 200);
        server.addr = "10.0.0.9:5555".into();
        add(&mut g, process(7), &server, GoConn::default());
        let out: Vec<Call> = g.take_ready().collect();
        assert_eq!(out.len(), 2);
        let (c, s) = (&out[0], &out[1]);
        assert_eq!(c.role, Role::Client);
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent_span_id, Some(s.span_id));
        assert_eq!(s.parent_span_id, None);
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn a_client_call_that_outlives_its_server_request_is_still_its_child() {
        let mut g = GoCalls::default();
        let mut server = rec(go_role::SERVER, 7, 5, 100, 200);
        server.addr = "10.0.0.9:5555".into();
        given(
            &mut server,
            0x0af7651916cd43dd8448eb211c80319c,
            0xb7ad6b7169203331,
        );
        add(&mut g, process(7), &server, GoConn::default());
        let s: Vec<Call> = g.take_ready().collect();
        assert_eq!(s.len(), 1, "nothing to wait for");
        // A goroutine the handler started calls out after the handler returned.
        let mut client = rec(go_role::CLIENT, 7, 9, 150, 900);
        client.parent_goid = 5;
        client.parent_start_ns = 100;
        add(&mut g, process(7), &client, GoConn::default());
        let c: Vec<Call> = g.take_ready().collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].parent_span_id, Some(s[0].span_id));
        assert_eq!(c[0].trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(s[0].parent_span_id, Some(0xb7ad6b7169203331));
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn an_incoming_traceparent_is_continued_by_server_and_children() {
        let mut g = GoCalls::default();
        let mut client = rec(go_role::CLIENT, 7, 5, 120, 130);
        client.parent_goid = 5;
        client.parent_start_ns = 100;
        add(&mut g, process(7), &client, GoConn::default());
        let mut server = rec(go_role::SERVER, 7, 5, 100, 200);
        given(
            &mut server,
            0x0af7651916cd43dd8448eb211c80319c,
            0xb7ad6b7169203331,
        );
        add(&mut g, process(7), &server, GoConn::default());
        let out: Vec<Call> = g.take_ready().collect();
        let c = out.iter().find(|c| c.role == Role::Client).unwrap();
        let s = out.iter().find(|c| c.role == Role::Server).unwrap();
        assert_eq!(s.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(s.parent_span_id, Some(0xb7ad6b7169203331));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent_span_id, Some(s.span_id));
    }

    /// A → B → C on one host, read in the order the probes emit: C's request, B's call to C,
    /// B's request, A's call to B, A's request. One trace, each hop under its caller.
    #[test]
    fn a_chain_on_one_host_is_one_trace() {
        let mut g = GoCalls::default();
        let conn = |l: &str, p: &str| GoConn {
            local: Some(addr(l)),
            peer: Some(addr(p)),
        };
        // C (pid 3) serves B's call, arriving from B's port 4002.
        let mut c_srv = rec(go_role::SERVER, 3, 1, 300, 310);
        c_srv.addr = "127.0.0.1:4002".into();
        add(
            &mut g,
            process(3),
            &c_srv,
            conn("127.0.0.1:9003", "127.0.0.1:4002"),
        );
        // B's client call to C, made while serving request (2, 11, 200).
        let mut b_cli = rec(go_role::CLIENT, 2, 12, 290, 320);
        b_cli.parent_goid = 11;
        b_cli.parent_start_ns = 200;
        add(
            &mut g,
            process(2),
            &b_cli,
            conn("127.0.0.1:4002", "127.0.0.1:9003"),
        );
        let mut b_srv = rec(go_role::SERVER, 2, 11, 200, 400);
        b_srv.addr = "127.0.0.1:4001".into();
        add(
            &mut g,
            process(2),
            &b_srv,
            conn("127.0.0.1:9002", "127.0.0.1:4001"),
        );
        let mut a_cli = rec(go_role::CLIENT, 1, 21, 150, 450);
        a_cli.parent_goid = 20;
        a_cli.parent_start_ns = 100;
        add(
            &mut g,
            process(1),
            &a_cli,
            conn("127.0.0.1:4001", "127.0.0.1:9002"),
        );
        assert_eq!(
            g.take_ready().count(),
            0,
            "nothing is final before the root is"
        );
        let mut a_srv = rec(go_role::SERVER, 1, 20, 100, 500);
        a_srv.addr = "192.0.2.1:5000".into();
        add(
            &mut g,
            process(1),
            &a_srv,
            conn("192.0.2.2:9001", "192.0.2.1:5000"),
        );
        let out: Vec<Call> = g.take_ready().collect();
        assert_eq!(out.len(), 5);
        let find = |pid: u32, role: Role| {
            out.iter()
                .find(|c| c.process.pid == pid && c.role == role)
                .unwrap()
        };
        let (a_s, a_c) = (find(1, Role::Server), find(1, Role::Client));
        let (b_s, b_c) = (find(2, Role::Server), find(2, Role::Client));
        let c_s = find(3, Role::Server);
        assert!(out.iter().all(|c| c.trace_id == a_s.trace_id));
        assert_eq!(a_s.parent_span_id, None);
        assert_eq!(a_c.parent_span_id, Some(a_s.span_id));
        assert_eq!(b_s.parent_span_id, Some(a_c.span_id));
        assert_eq!(b_c.parent_span_id, Some(b_s.span_id));
        assert_eq!(c_s.parent_span_id, Some(b_c.span_id));
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn a_local_caller_that_never_shows_up_costs_only_the_grace() {
        let mut g = GoCalls::default();
        let mut s = rec(go_role::SERVER, 1, 1, 100, 200);
        s.addr = "127.0.0.1:4444".into();
        let conn = GoConn {
            local: Some(addr("127.0.0.1:8080")),
            peer: None,
        };
        add(&mut g, process(1), &s, conn);
        assert_eq!(g.take_ready().count(), 0);
        std::thread::sleep(JOIN_GRACE + Duration::from_millis(20));
        g.expire(false);
        let out: Vec<Call> = g.take_ready().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, None);
        assert_ne!(out[0].trace_id, 0);
    }

    #[test]
    fn a_connection_whose_caller_never_showed_up_stops_waiting_until_a_caller_does() {
        let mut g = GoCalls::default();
        let conn = GoConn {
            local: Some(addr("127.0.0.1:8080")),
            peer: None,
        };
        let server = |goid, start, end| {
            let mut s = rec(go_role::SERVER, 1, goid, start, end);
            s.addr = "127.0.0.1:4444".into();
            s
        };
        add(&mut g, process(1), &server(1, 100, 200), conn);
        std::thread::sleep(JOIN_GRACE + Duration::from_millis(20));
        g.expire(false);
        assert_eq!(g.take_ready().count(), 1);
        // The same connection again: settled at once.
        add(&mut g, process(1), &server(2, 300, 400), conn);
        assert_eq!(g.take_ready().count(), 1);
        // Its caller shows up after all (a client call from 127.0.0.1:4444 to port 8080): the
        // next request waits for, and joins, the call that carried it.
        let mut c = rec(go_role::CLIENT, 2, 7, 450, 700);
        c.host = "127.0.0.1:8080".into();
        let cconn = GoConn {
            local: Some(addr("127.0.0.1:4444")),
            peer: Some(addr("127.0.0.1:8080")),
        };
        add(&mut g, process(2), &c, cconn);
        let client: Vec<Call> = g.take_ready().collect();
        assert_eq!(client.len(), 1);
        add(&mut g, process(1), &server(3, 500, 600), conn);
        let out: Vec<Call> = g.take_ready().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, Some(client[0].span_id));
        assert_eq!(out[0].trace_id, client[0].trace_id);
    }
}
