//! The one-way path from a ring buffer record to finished calls handed to sinks:
//! events → connections → HTTP/1.x → calls.

use crate::events::{decode, Event, GoRecord};
use crate::golang::{GoCalls, GoConn};
use crate::processes::{ProcessInfo, Processes};
use crate::protocols::http1::{Http1Conn, Output};
use crate::protocols::{DropReason, Role};
use crate::sinks::Sink;
use crate::sockets::tcp_addrs;
use crate::telemetry::call::{Call, ConnFacts};
use crate::telemetry::join::{ConnJoin, Ends, Joins, Key, Origin};
use crate::telemetry::stats::Stats;
use crate::twins::{Source, Twins};
use otel_config::Selection;
use rustc_hash::FxHashMap as HashMap;
use sightline_common::{direction, sock_role, SockInfo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Connections tracked at once; past this the least recently used one is evicted.
pub const MAX_CONNECTIONS: usize = 16_384;
/// A connection silent this long is closed: its open exchanges end or are counted.
pub const IDLE_NS: u64 = 30_000_000_000;

/// Where socket facts recorded by the kernel are looked up.
pub trait SockLookup: Send {
    /// What socket `fd` of `tgid` was when stamped `stamp` (0: not stamped).
    fn lookup(&self, tgid: u32, fd: i32, stamp: u64) -> Sock;
}

/// A socket as the kernel recorded its connect or accept.
pub enum Sock {
    /// The one the fd holds now: /proc may fill in what the record lacks.
    Now(SockInfo),
    /// One a newer socket has since replaced on the same fd.
    Before(SockInfo),
    /// Replaced, and its record is gone: nothing known is about it.
    Replaced,
    /// Never recorded (older than sightline, or dropped): only /proc can tell.
    Unknown,
}

impl SockLookup for crate::loader::ConnInfo {
    fn lookup(&self, tgid: u32, fd: i32, stamp: u64) -> Sock {
        match self.get(tgid, fd) {
            Some(i) if stamp == 0 || i.ts_ns == stamp => Sock::Now(i),
            // A record read after its process reused the fd: another connection's ends
            // would be wrong, so only the earlier socket's own record will do.
            Some(_) => self.before(stamp).map_or(Sock::Replaced, Sock::Before),
            None => Sock::Unknown,
        }
    }
}

/// No kernel map: for benchmarks and unit tests.
pub struct NoLookup;

impl SockLookup for NoLookup {
    fn lookup(&self, _: u32, _: i32, _: u64) -> Sock {
        Sock::Unknown
    }
}

/// What the pipeline tells discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Exec(u32),
    Exit(u32),
}

struct Conn {
    process: Option<Arc<ProcessInfo>>,
    fd: i32,
    sock_ts: u64,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    http: Http1Conn,
    last_ns: u64,
    join: ConnJoin,
}

impl Conn {
    /// Both ends, when this process saw the connection being made (so request positions on it
    /// line up with the other end's).
    fn ends(&self) -> Option<Ends> {
        match (self.sock_ts, self.local, self.peer) {
            (1.., Some(local), Some(peer)) => Some(Ends { local, peer }),
            _ => None,
        }
    }

    fn facts(&self) -> ConnFacts {
        ConnFacts {
            peer: self.peer,
            local: self.local,
            tls: true,
        }
    }
}

pub struct Pipeline {
    processes: Processes,
    joins: Joins,
    origins: Vec<(Origin, Option<Key>)>,
    /// Server calls waiting (a batch at most) for their client's request to be read.
    waiting: Vec<(Call, Key, bool)>,
    /// Local addresses of listening sockets, by (pid, fd): accepted sockets share them.
    listeners: HashMap<(u32, i32), Option<SocketAddr>>,
    conns: HashMap<(u32, u64), Conn>,
    go: GoCalls,
    /// Go connections' ends by (pid, fd), with the socket stamp they were resolved for: a
    /// keep-alive connection is looked up once, not once per request.
    go_socks: HashMap<(u32, i32), (u64, GoConn)>,
    lookup: Box<dyn SockLookup>,
    sinks: Vec<Box<dyn Sink>>,
    stats: Arc<Stats>,
    selection: Selection,
    redact_query: bool,
    mono_to_unix_ns: i128,
    out: Output,
    /// Whether records read from /proc; off in benchmarks where pids are synthetic.
    use_proc: bool,
    /// Requests both capture points saw, reported once.
    twins: Twins,
    /// Calls on their way to the sinks, reused between batches.
    ready: Vec<Call>,
    go_ready: Vec<Call>,
}

impl Pipeline {
    pub fn new(
        lookup: Box<dyn SockLookup>,
        sinks: Vec<Box<dyn Sink>>,
        stats: Arc<Stats>,
        selection: Selection,
        redact_query: bool,
        mono_to_unix_ns: i128,
    ) -> Pipeline {
        Pipeline {
            processes: Processes::default(),
            joins: Joins::default(),
            origins: Vec::new(),
            waiting: Vec::new(),
            listeners: HashMap::default(),
            conns: HashMap::default(),
            go: GoCalls::default(),
            go_socks: HashMap::default(),
            lookup,
            sinks,
            stats,
            selection,
            redact_query,
            mono_to_unix_ns,
            out: Output::default(),
            use_proc: true,
            twins: Twins::default(),
            ready: Vec::new(),
            go_ready: Vec::new(),
        }
    }

    /// For benchmarks: identify every pid as `process` without touching /proc.
    pub fn with_fixed_process(mut self, process: ProcessInfo) -> Self {
        self.use_proc = false;
        self.processes.insert(Arc::new(process));
        self
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn handle(&mut self, bytes: &[u8]) -> Option<Notice> {
        match decode(bytes) {
            Err(_) => {
                self.stats.records_undecodable.fetch_add(1, Relaxed);
                None
            }
            Ok(Event::Exec { tgid, comm }) => {
                // Read now: a short-lived client may be gone by its first call's end. If it
                // already is, its task name still identifies it.
                if self.use_proc && self.processes.refresh(tgid).is_none() {
                    self.processes.insert(Arc::new(ProcessInfo::from_parts(
                        tgid,
                        comm.clone(),
                        comm,
                        b"",
                    )));
                }
                Some(Notice::Exec(tgid))
            }
            Ok(Event::Close { tgid, conn }) => {
                self.close_conn((tgid, conn));
                None
            }
            Ok(Event::Exit { tgid }) => {
                self.process_exit(tgid);
                Some(Notice::Exit(tgid))
            }
            Ok(Event::GoHttp(rec)) => {
                self.stats.records.fetch_add(1, Relaxed);
                self.go_call(&rec);
                None
            }
            Ok(Event::Data { header, payload }) => {
                self.stats.records.fetch_add(1, Relaxed);
                tracing::trace!(
                    tgid = header.tgid,
                    conn = format_args!("{:#x}", header.conn),
                    fd = header.fd,
                    dir = header.direction,
                    start = header.start_ns,
                    end = header.end_ns,
                    len = header.len,
                    head = %String::from_utf8_lossy(&payload[..payload.len().min(40)]).escape_debug(),
                    "record"
                );
                if header.captured < header.len {
                    self.stats.records_truncated.fetch_add(1, Relaxed);
                }
                self.data(&header, payload);
                None
            }
        }
    }

    fn data(&mut self, h: &sightline_common::DataHeader, payload: &[u8]) {
        self.twins.seen(Source::Openssl, h.tgid);
        let key = (h.tgid, h.conn);
        // A newer connect/accept behind the same SSL*: the library reused a freed object for a
        // new connection, so the old one is over. A different fd alone proves nothing: the
        // first fd a TLS call touches may be another file (OpenSSL reading /dev/urandom), so
        // only a socket that sightline saw being created (sock_ts != 0) counts.
        if let Some(c) = self.conns.get(&key) {
            let reused = h.sock_ts != 0 && c.sock_ts != 0 && c.sock_ts != h.sock_ts;
            let moved = h.sock_ts != 0 && c.sock_ts == 0 && c.fd >= 0 && c.fd != h.fd;
            if reused || moved {
                self.close_conn(key);
            }
        }
        if !self.conns.contains_key(&key) {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.evict_oldest();
            }
            let process = self.processes.get(h.tgid);
            let selected = process
                .as_ref()
                .is_some_and(|p| self.selection.matches(p.pid, &p.exe_name));
            self.conns.insert(
                key,
                Conn {
                    process: selected.then_some(process).flatten(),
                    fd: -1,
                    sock_ts: 0,
                    peer: None,
                    local: None,
                    http: Http1Conn::default(),
                    last_ns: h.end_ns,
                    join: ConnJoin::default(),
                },
            );
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_ns = h.end_ns;
        let Some(process) = conn.process.clone() else {
            return;
        };
        if conn.sock_ts == 0 {
            conn.sock_ts = h.sock_ts;
        }
        if conn.fd < 0 && h.fd >= 0 {
            conn.fd = h.fd;
            let s = resolve(&*self.lookup, h.tgid, h.fd, h.sock_ts, self.use_proc);
            conn.peer = s.peer;
            conn.local = s.local;
            if let (None, Some(lfd), true) = (conn.local, s.listen_fd, self.use_proc) {
                conn.local = *self
                    .listeners
                    .entry((h.tgid, lfd))
                    .or_insert_with(|| tcp_addrs(h.tgid, lfd).map(|(local, _)| local));
            }
            if let Some(r) = s.role {
                conn.http.set_role(r);
            }
        }
        let egress = h.direction == direction::EGRESS;
        // Bytes become visible to us when written (entry) or when a read returns.
        let first_ns = if egress { h.start_ns } else { h.end_ns };
        conn.http.feed(
            egress,
            payload,
            h.len as usize,
            first_ns,
            h.end_ns,
            &mut self.out,
        );
        let ends = conn.ends();
        self.joins.on_requests(
            &mut conn.join,
            conn.http.requests_seen(),
            conn.http.role(),
            ends,
        );
        plan_origins(
            &mut self.joins,
            &mut self.origins,
            &self.out,
            &mut conn.join,
            ends,
        );
        let facts = conn.facts();
        self.emit(&process, facts);
    }

    /// Hands the finished exchanges (with their origins in `self.origins`) to the sinks.
    fn emit(&mut self, process: &Arc<ProcessInfo>, facts: ConnFacts) {
        for r in self.out.drops.drain(..) {
            tracing::trace!(pid = process.pid, reason = r.as_str(), "dropped");
            self.stats.count_drop(r);
        }
        // Taken out (and put back, keeping its capacity) so calls can go out as they are made.
        let mut exchanges = std::mem::take(&mut self.out.exchanges);
        for (i, ex) in exchanges.drain(..).enumerate() {
            let (origin, wait) = self
                .origins
                .get(i)
                .copied()
                .unwrap_or((Origin::Fresh, None));
            let call = Call::new(
                process.clone(),
                &ex,
                facts,
                origin,
                self.redact_query,
                self.mono_to_unix_ns,
            );
            self.stats.calls.fetch_add(1, Relaxed);
            // A call that continues an incoming traceparent has its parent already.
            match wait {
                Some(k) if call.parent_span_id.is_none() => self.waiting.push((call, k, false)),
                _ => self.deliver(call, Source::Openssl),
            }
        }
        self.out.exchanges = exchanges;
    }

    /// Hands a finished call towards the sinks, once per request whichever capture points
    /// saw it.
    fn deliver(&mut self, call: Call, source: Source) {
        self.twins.offer(call, source, &mut self.ready);
        self.hand_out();
    }

    fn hand_out(&mut self) {
        for call in self.ready.drain(..) {
            for s in &mut self.sinks {
                s.on_call(&call);
            }
        }
        self.stats
            .calls_deduplicated
            .store(self.twins.merged(), Relaxed);
    }

    /// Server calls whose client was read since: joined. Those that waited a whole batch
    /// already: sent as they are.
    fn settle_waiting(&mut self, force: bool) {
        let waiting = std::mem::take(&mut self.waiting);
        for (mut call, k, waited) in waiting {
            if let Some(Origin::ChildOf { trace_id, parent }) = self.joins.take(&k) {
                call.trace_id = trace_id;
                call.parent_span_id = Some(parent);
            } else if !(waited || force) {
                self.waiting.push((call, k, true));
                continue;
            }
            self.deliver(call, Source::Openssl);
        }
    }

    fn close_conn(&mut self, key: (u32, u64)) {
        if let Some(mut c) = self.conns.remove(&key) {
            c.http.close(&mut self.out);
            let ends = c.ends();
            plan_origins(
                &mut self.joins,
                &mut self.origins,
                &self.out,
                &mut c.join,
                ends,
            );
            self.joins.forget(&c.join, ends);
            match c.process.clone() {
                Some(p) => self.emit(&p, c.facts()),
                None => {
                    self.out.drops.clear();
                    self.out.exchanges.clear();
                }
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ns)
            .map(|(k, _)| *k)
        {
            self.stats.count_drop(DropReason::Evicted);
            self.close_conn(key);
        }
    }

    /// The Go probes trace `pid`: known before its first record, so that an OpenSSL view of
    /// its first request waits for the Go one.
    pub fn go_process(&mut self, pid: u32) {
        self.twins.seen(Source::Go, pid);
    }

    /// A Go net/http call: already structured by the probes, so straight to a call.
    fn go_call(&mut self, r: &GoRecord) {
        tracing::trace!(?r, "go record");
        let Some(process) = self.processes.get(r.tgid) else {
            return;
        };
        if !self.selection.matches(process.pid, &process.exe_name) {
            return;
        }
        self.twins.seen(Source::Go, r.tgid);
        let conn = if r.fd > 0 {
            self.go_conn(r)
        } else {
            GoConn::default()
        };
        self.go
            .add(process, r, conn, self.redact_query, self.mono_to_unix_ns);
        self.release_go();
    }

    /// The ends of a Go call's socket. Only a stamped socket is remembered: an fd number alone
    /// is reused by the next connection.
    fn go_conn(&mut self, r: &GoRecord) -> GoConn {
        let key = (r.tgid, r.fd);
        if r.sock_gen != 0 {
            if let Some((gen, conn)) = self.go_socks.get(&key) {
                if *gen == r.sock_gen {
                    return *conn;
                }
            }
        }
        let s = resolve(&*self.lookup, r.tgid, r.fd, r.sock_gen, self.use_proc);
        let mut conn = GoConn {
            peer: s.peer,
            local: s.local,
        };
        if let (None, Some(lfd), true) = (conn.local, s.listen_fd, self.use_proc) {
            conn.local = *self
                .listeners
                .entry((r.tgid, lfd))
                .or_insert_with(|| tcp_addrs(r.tgid, lfd).map(|(local, _)| local));
        }
        if r.sock_gen != 0 {
            // Stale entries are harmless (their stamp never matches again); the bound is what
            // keeps them from piling up.
            if self.go_socks.len() >= GO_SOCKS_MAX {
                self.go_socks.clear();
            }
            self.go_socks.insert(key, (r.sock_gen, conn));
        }
        conn
    }

    /// Go calls whose trace is now known, to the sinks.
    fn release_go(&mut self) {
        // A buffer kept between records: this runs once per Go record.
        let mut ready = std::mem::take(&mut self.go_ready);
        ready.extend(self.go.take_ready());
        for call in ready.drain(..) {
            self.stats.calls.fetch_add(1, Relaxed);
            self.deliver(call, Source::Go);
        }
        self.go_ready = ready;
    }

    /// Closes connections silent for [`IDLE_NS`].
    pub fn tick(&mut self, now_mono_ns: u64) {
        let idle: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| now_mono_ns.saturating_sub(c.last_ns) > IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            self.close_conn(k);
        }
    }

    fn process_exit(&mut self, tgid: u32) {
        let keys: Vec<_> = self
            .conns
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        for k in keys {
            self.close_conn(k);
        }
        self.processes.remove(tgid);
        self.listeners.retain(|(t, _), _| *t != tgid);
        for s in &mut self.sinks {
            s.on_process_exit(tgid);
        }
    }

    /// Called after each batch of records, so sinks write once per batch.
    pub fn flush(&mut self) {
        self.go.expire(false);
        self.release_go();
        self.settle_waiting(false);
        self.joins.end_batch();
        self.twins.end_batch(false, &mut self.ready);
        self.hand_out();
        for s in &mut self.sinks {
            s.flush();
        }
    }

    /// Ends every connection, for shutdown.
    pub fn close_all(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.close_conn(k);
        }
        self.settle_waiting(true);
        self.go.expire(true);
        self.release_go();
        self.twins.end_batch(true, &mut self.ready);
        self.flush();
    }
}

/// Decides each finished exchange's trace origin, in order, before `emit` hands them out.
fn plan_origins(
    joins: &mut Joins,
    origins: &mut Vec<(Origin, Option<Key>)>,
    out: &Output,
    join: &mut ConnJoin,
    ends: Option<Ends>,
) {
    origins.clear();
    for ex in &out.exchanges {
        origins.push(joins.next_origin(join, ex.role, ends));
    }
}

#[derive(Debug, Default)]
struct Resolved {
    role: Option<Role>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    listen_fd: Option<i32>,
}

fn sock_addr(family: u16, addr: [u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Go connections whose ends are remembered at once.
const GO_SOCKS_MAX: usize = 65_536;

/// The role, peer and local address of a socket: from the kernel's connect/accept record, or
/// from /proc for connections older than sightline.
fn resolve(lookup: &dyn SockLookup, tgid: u32, fd: i32, stamp: u64, use_proc: bool) -> Resolved {
    let from_proc = || if use_proc { tcp_addrs(tgid, fd) } else { None };
    let (info, current) = match lookup.lookup(tgid, fd, stamp) {
        Sock::Now(i) => (i, true),
        Sock::Before(i) => (i, false),
        Sock::Replaced => return Resolved::default(),
        Sock::Unknown => {
            let (local, peer) = from_proc().unzip();
            return Resolved {
                peer,
                local,
                ..Resolved::default()
            };
        }
    };
    let role = match info.role {
        sock_role::CONNECTED => Some(Role::Client),
        sock_role::ACCEPTED => Some(Role::Server),
        _ => None,
    };
    let mut r = Resolved {
        role,
        peer: sock_addr(info.family, info.addr, info.port),
        local: (info.local_port != 0)
            .then(|| sock_addr(info.family, info.local_addr, info.local_port))
            .flatten(),
        listen_fd: (info.role == sock_role::ACCEPTED && info.listen_fd >= 0)
            .then_some(info.listen_fd),
    };
    if r.peer.is_none() && current {
        if let Some((local, peer)) = from_proc() {
            r.peer = Some(peer);
            r.local = r.local.or(Some(local));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(fn(u64) -> Sock);

    impl SockLookup for Fixed {
        fn lookup(&self, _: u32, _: i32, stamp: u64) -> Sock {
            (self.0)(stamp)
        }
    }

    fn connected(ts_ns: u64, port: u16) -> SockInfo {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        SockInfo {
            role: sock_role::CONNECTED,
            ts_ns,
            family: 2,
            addr,
            port,
            listen_fd: -1,
            ..SockInfo::default()
        }
    }

    #[test]
    fn a_record_read_after_its_fd_was_reused_keeps_its_own_ends() {
        let before = Fixed(|stamp| Sock::Before(connected(stamp, 8443)));
        let r = resolve(&before, 1, 5, 42, false);
        assert_eq!(r.peer, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(r.role, Some(Role::Client));
        // Once the earlier socket's record is gone too, no ends are better than another's.
        let replaced = Fixed(|_| Sock::Replaced);
        let r = resolve(&replaced, 1, 5, 42, true);
        assert_eq!((r.peer, r.local, r.role), (None, None, None));
    }
}
