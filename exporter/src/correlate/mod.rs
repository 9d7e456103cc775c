//! The one place that ties calls together, keyed by connection plus position or time:
//!
//! - [`same_host`]: a SERVER call answering a CLIENT call seen on this host becomes its child,
//!   matched by the connection's ends and the request's position on it;
//! - [`goroutines`]: Go's in-process parents (a handler's client calls are its children) and
//!   Go's same-host joins, matched by the connection's ends and time;
//! - [`threads`]: outside Go, a thread's outgoing calls while it handles one request are that
//!   request's children;
//! - [`twins`]: one request seen by two capture points is reported once;
//! - [`network`]: each call gets what its TCP connection did while it ran;
//! - [`moved`]: a same-host chain that met a Go request's trace continues in it.
//!
//! Calls come in from the sources and leave, with their final ids, through [`Correlator::ready`].
//! [`hold`] is the one policy for how long any of them waits.

pub mod goroutines;
pub mod hold;
pub mod moved;
pub mod network;
pub mod same_host;
pub mod threads;
pub mod twins;

use crate::protocols::call::Call;
use crate::protocols::{Conventions, Role};
use crate::sources::go::call::{GoConn, Goroutine};
use crate::sources::tcp::NetEvent;
use crate::sources::{CapturePoint, ConnView, Made};
use crate::telemetry::counters::{Counter, Stats};
use goroutines::GoCalls;
use moved::Moves;
use rustc_hash::FxHashMap as HashMap;
use same_host::{ConnJoin, Joins, Key, Origin};
use std::sync::Arc;
use threads::{Found, Threads};
use twins::Twins;

/// Most byte-stream connections whose request positions are tracked; the sources close (and
/// so release) connections long before, so this only guards against a leak.
const MAX_CONN_JOINS: usize = 65_536;

pub struct Correlator {
    joins: Joins,
    /// Request positions of each byte-stream connection, until it closes.
    conn_joins: HashMap<(CapturePoint, (u32, u64)), ConnJoin>,
    /// Server calls waiting (a batch at most) for their client's request to be read: where
    /// they wait, who saw them, and whether they waited a batch already.
    waiting: Vec<(Call, Key, CapturePoint, bool)>,
    go: GoCalls,
    threads: Threads,
    moves: Moves,
    twins: Twins,
    ready: Vec<Call>,
    /// Network events, in order; nothing holds them.
    ready_net: Vec<NetEvent>,
    network: network::Network,
    stats: Arc<Stats>,
    /// Wall-clock minus the capture clock, to put calls' times back on the capture clock.
    mono_to_unix_ns: i128,
}

impl Correlator {
    pub fn new(stats: Arc<Stats>, conv: &Conventions) -> Correlator {
        Correlator {
            joins: Joins::default(),
            conn_joins: HashMap::default(),
            waiting: Vec::new(),
            go: GoCalls::default(),
            threads: Threads::default(),
            moves: Moves::default(),
            twins: Twins::default(),
            ready: Vec::new(),
            ready_net: Vec::new(),
            network: network::Network::default(),
            stats,
            mono_to_unix_ns: conv.mono_to_unix_ns,
        }
    }

    /// Capture point `point` reports from `pid`: a request there may be seen twice.
    pub fn seen(&mut self, point: CapturePoint, pid: u32) {
        self.twins.seen(point, pid);
    }

    /// What a source made.
    pub fn take(&mut self, made: Made) {
        match made {
            Made::Stream { conn, calls } => {
                self.seen(conn.point, conn.id.0);
                self.stream(conn, calls);
            }
            Made::Go(g) => {
                self.seen(CapturePoint::Go, g.goroutine.tgid);
                self.go(g.call, &g.goroutine, g.conn);
            }
            Made::Net(e) => {
                self.network.on_event(&e);
                self.ready_net.push(*e);
            }
        }
    }

    /// What a byte-stream connection showed after a record: its requests register for the
    /// other end, and its finished calls take their trace.
    fn stream(&mut self, conn: ConnView, calls: Vec<Call>) {
        let key = (conn.point, conn.id);
        if self.conn_joins.len() >= MAX_CONN_JOINS && !self.conn_joins.contains_key(&key) {
            // Positions on a connection tracked from the middle would pair the wrong requests:
            // untracked, its calls keep their own traces.
            for mut call in calls {
                call.fresh_ids();
                self.stats.add(Counter::Calls, 1);
                self.twins.offer(call, conn.point, &mut self.ready);
            }
            return;
        }
        let cj = self.conn_joins.entry(key).or_default();
        let new = cj.threaded..conn.requests_seen.max(cj.threaded);
        cj.threaded = new.end;
        // Threads are followed outside Go, whose goroutines move between them.
        let thread =
            (conn.tid != 0 && !self.twins.is_go(conn.id.0)).then_some((conn.id.0, conn.tid));
        let sent_new = conn.egress && !new.is_empty();
        let parent = match (thread, conn.role) {
            (Some(thread), Some(Role::Client)) if sent_new => match self.threads.parent(thread) {
                Found::Parent(p) => {
                    self.stats
                        .add(Counter::ThreadParentFound, new.end - new.start);
                    Some(p)
                }
                Found::Ambiguous => {
                    self.stats
                        .add(Counter::ThreadParentAmbiguous, new.end - new.start);
                    None
                }
                Found::None => None,
            },
            _ => None,
        };
        self.joins
            .on_requests(cj, conn.requests_seen, conn.role, conn.ends, parent);
        match (thread, conn.role, conn.egress) {
            (Some(thread), Some(Role::Server), false) if !new.is_empty() => {
                let caller = cj.caller(new.end - 1);
                self.threads
                    .read_requests(thread, key, new, conn.incoming, caller);
            }
            (Some(_), Some(Role::Server), true) => self.threads.answered(key, conn.responses_seen),
            _ => {}
        }
        for mut call in calls {
            // A server call whose child fixed its ids while it ran keeps them.
            let fixed = match call.role {
                Role::Server => self.threads.take_fixed(key, cj.next_position()),
                Role::Client => None,
            };
            let (origin, mut wait) = self.joins.next_origin(cj, call.role, conn.ends);
            let local_trace = matches!(origin, Origin::Client(s) if s.local_trace);
            if let Some(f) = fixed {
                call.trace_id = f.trace_id;
                call.span_id = f.span_id;
                call.parent_span_id = f.parent;
                call.trace_flags = f.flags;
                wait = None;
            } else if !call.continues_incoming() {
                // What an incoming traceparent said wins over any join.
                apply(&mut call, origin);
            }
            call.fresh_ids();
            self.stats.add(Counter::Calls, 1);
            // A Go program's own view of its call is the one that joins (its OpenSSL view is
            // a twin, dropped below).
            if call.role == Role::Client && !self.twins.is_go(call.process.pid) {
                let before = call.trace_id;
                local_caller(&mut self.go, self.mono_to_unix_ns, &mut call, local_trace);
                if call.parent_span_id.is_some() {
                    // Its parent and their callers, still to leave, follow it.
                    self.moves.record(before, call.trace_id);
                }
            }
            match wait {
                Some(k) if call.parent_span_id.is_none() => {
                    self.waiting.push((call, k, conn.point, false))
                }
                _ => self.twins.offer(call, conn.point, &mut self.ready),
            }
        }
        if conn.closed {
            self.threads.closed(key);
            if let Some(cj) = self.conn_joins.remove(&key) {
                self.joins.forget(&cj, conn.ends);
            }
        }
    }

    /// A Go call: held until its trace is known.
    fn go(&mut self, call: Call, g: &Goroutine, conn: GoConn) {
        self.go.add(call, g, conn);
        self.release_go();
    }

    /// Go calls whose trace is now known, on towards the sinks.
    fn release_go(&mut self) {
        for call in self.go.take_ready() {
            self.stats.add(Counter::Calls, 1);
            self.twins.offer(call, CapturePoint::Go, &mut self.ready);
        }
    }

    /// Server calls whose client was read since: joined. Those that waited a whole batch
    /// already: sent as they are.
    fn settle_waiting(&mut self, force: bool) {
        let waiting = std::mem::take(&mut self.waiting);
        for (mut call, k, point, waited) in waiting {
            if let Some(Origin::ChildOf { trace_id, parent }) = self.joins.take(&k) {
                call.trace_id = trace_id;
                call.parent_span_id = Some(parent);
            } else if !(waited || force) {
                self.waiting.push((call, k, point, true));
                continue;
            }
            self.twins.offer(call, point, &mut self.ready);
        }
    }

    /// After each batch of records: what waited long enough goes on.
    pub fn end_batch(&mut self) {
        self.go.expire(false);
        self.release_go();
        self.settle_waiting(false);
        self.joins.end_batch();
        self.threads.end_batch();
        self.moves.end_batch();
        self.stats
            .set(Counter::ThreadsOpen, self.threads.fill() as u64);
        self.twins.end_batch(false, &mut self.ready);
        self.network.end_batch();
    }

    /// Shutdown: everything held goes on as it is.
    pub fn close_all(&mut self) {
        self.settle_waiting(true);
        self.go.expire(true);
        self.release_go();
        self.twins.end_batch(true, &mut self.ready);
    }

    /// Network events, in the order they happened.
    pub fn ready_net(&mut self) -> std::vec::Drain<'_, NetEvent> {
        self.ready_net.drain(..)
    }

    /// Calls whose ids are final, in the order they became so.
    pub fn ready(&mut self) -> std::vec::Drain<'_, Call> {
        self.stats
            .set(Counter::CallsDeduplicated, self.twins.merged());
        for call in &mut self.ready {
            self.moves.apply(&mut call.trace_id);
            self.network.annotate(call);
        }
        self.ready.drain(..)
    }
}

/// Gives a byte-stream call the trace its connection decided (fresh ids are filled in after).
fn apply(call: &mut Call, origin: Origin) {
    match origin {
        Origin::Fresh => {}
        Origin::Client(sent) => {
            call.trace_id = sent.trace_id;
            call.span_id = sent.span_id;
            call.parent_span_id = sent.parent;
        }
        Origin::ChildOf { trace_id, parent } => {
            call.trace_id = trace_id;
            call.parent_span_id = Some(parent);
            call.trace_flags = 1;
        }
    }
}

/// A byte-stream client call to a server on this host: a Go server request it carried becomes
/// its child (byte-stream servers join it by position). A client with no parent, or whose
/// trace began on this host (`local_trace`), adopts the request's trace, which the request's
/// own calls may already have carried elsewhere.
fn local_caller(go: &mut GoCalls, mono_to_unix_ns: i128, call: &mut Call, local_trace: bool) {
    let (Some(local), Some(peer)) = (call.local, call.peer) else {
        return;
    };
    if !(peer.ip().is_loopback() || peer.ip() == local.ip()) || !go.serves_port(peer.port()) {
        return;
    }
    let start = (call.start_unix_ns as i128 - mono_to_unix_ns).max(0) as u64;
    let adopted = go.foreign_client(
        local,
        peer,
        call.span_id,
        (call.trace_id, call.trace_flags),
        call.parent_span_id.is_none() || local_trace,
        (start, start.saturating_add(call.duration_ns)),
    );
    if let Some((trace_id, flags)) = adopted {
        call.trace_id = trace_id;
        call.trace_flags = flags;
    }
}
