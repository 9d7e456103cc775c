//! What every capture point that sees byte streams shares: a table of connections, each parsed
//! by the protocol detected on it, whose finished exchanges become calls, returned with the
//! connection they were seen on. The OpenSSL probes key a connection by the library's object
//! (`SSL*`), the socket syscall probes by the socket's fd; both name the socket by fd and stamp.

pub mod record;

use super::{CapturePoint, ConnView, Context, Made, Source};
use crate::correlate::same_host::Ends;
use crate::metadata::ProcessInfo;
use crate::protocols::call::{Call, ConnFacts};
use crate::protocols::http1::Output;
use crate::protocols::trace_context::parse_traceparent;
use crate::protocols::{Conventions, DropReason, Protocol, Role};
use crate::telemetry::counters::{Counter, Stats};
use otel_config::Selection;
use record::Record;
use rustc_hash::FxHashMap as HashMap;
use sightline_common::{data_flags, direction, DataHeader};
use std::net::SocketAddr;
use std::sync::Arc;

/// Connections tracked at once per capture point; past this the least recently used go.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Connections evicted together when the table is full.
const EVICT_BATCH: usize = MAX_CONNECTIONS / 16;
/// A connection silent this long is closed: its open exchanges end or are counted.
pub const IDLE_NS: u64 = 30_000_000_000;

/// A connection: a process and its handle for it (an `SSL*`, or an fd).
type ConnId = (u32, u64);

struct Conn {
    /// The process, when it is selected and the connection is reported.
    process: Option<Arc<ProcessInfo>>,
    /// The socket, once a record named it; from the first record when the handle is the fd.
    fd: i32,
    sock_ts: u64,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// The process's end, when the socket told it.
    role: Option<Role>,
    proto: Option<Protocol>,
    last_ns: u64,
}

impl Conn {
    fn facts(&self, tls: bool) -> ConnFacts {
        ConnFacts {
            peer: self.peer,
            local: self.local,
            tls,
        }
    }

    /// Both ends, when this process saw the connection being made (so request positions on it
    /// line up with the other end's).
    fn ends(&self) -> Option<Ends> {
        match (self.sock_ts, self.local, self.peer) {
            (1.., Some(local), Some(peer)) => Some(Ends { local, peer }),
            _ => None,
        }
    }
}

/// What moved a record's bytes: the thread, and whether the process sent them.
#[derive(Clone, Copy)]
struct Moved {
    tid: u32,
    egress: bool,
}

/// A connection seen as a byte stream, as it stands after a record (`moved`) or at its end.
fn view(point: CapturePoint, c: &Conn, id: ConnId, moved: Option<Moved>) -> ConnView {
    let role = c.proto.as_ref().and_then(Protocol::role).or(c.role);
    let read = moved.is_some_and(|m| !m.egress);
    // Parsed only where a thread may have just read a request its children continue.
    let incoming = match (&c.proto, role, read) {
        (Some(p), Some(Role::Server), true) => p.newest_traceparent().and_then(parse_traceparent),
        _ => None,
    };
    ConnView {
        point,
        id,
        ends: c.ends(),
        role,
        requests_seen: c.proto.as_ref().map_or(0, Protocol::requests_seen),
        responses_seen: c.proto.as_ref().map_or(0, Protocol::responses_seen),
        tid: moved.map_or(0, |m| m.tid),
        egress: moved.is_some_and(|m| m.egress),
        incoming,
        closed: moved.is_none(),
    }
}

/// Calls out of the exchanges the parser finished, and its drops counted.
fn finish(
    out: &mut Output,
    stats: &Stats,
    conv: &Conventions,
    (conn, process): (ConnView, &Arc<ProcessInfo>),
    facts: ConnFacts,
) -> Made {
    for r in out.drops.drain(..) {
        tracing::trace!(pid = conn.id.0, reason = r.as_str(), "dropped");
        stats.count_drop(r);
    }
    let calls = out
        .exchanges
        .drain(..)
        .map(|ex| Call::from_http1(process.clone(), ex, facts, conv))
        .collect();
    Made::Stream { conn, calls }
}

/// A capture point's byte streams: the [`Source`] of every capture point that sees them.
pub struct Streams {
    point: CapturePoint,
    /// The record kinds the capture point writes.
    kinds: &'static [u32],
    /// The bytes are a TLS library's plaintext.
    tls: bool,
    conns: HashMap<ConnId, Conn>,
    selection: Selection,
    conv: Conventions,
    stats: Arc<Stats>,
    out: Output,
}

impl Streams {
    pub fn new(
        (point, kinds): (CapturePoint, &'static [u32]),
        tls: bool,
        selection: Selection,
        conv: Conventions,
        stats: Arc<Stats>,
    ) -> Streams {
        Streams {
            point,
            kinds,
            tls,
            conns: HashMap::default(),
            selection,
            conv,
            stats,
            out: Output::default(),
        }
    }

    /// The connection a record belongs to: the library's object, or the socket.
    fn key(&self, h: &DataHeader) -> ConnId {
        if h.conn != 0 {
            (h.tgid, h.conn)
        } else {
            (h.tgid, h.fd as u32 as u64)
        }
    }

    /// One payload record: what it finished, after any connection it ended first (the
    /// handle now names a new connection, or the table was full).
    fn data(&mut self, h: &DataHeader, payload: &[u8], cx: &mut Context<'_>, made: &mut Vec<Made>) {
        self.stats.add(Counter::Records, 1);
        tracing::trace!(
            kind = h.kind,
            tgid = h.tgid,
            conn = format_args!("{:#x}", h.conn),
            fd = h.fd,
            dir = h.direction,
            start = h.start_ns,
            end = h.end_ns,
            len = h.len,
            "record"
        );
        if h.captured < h.len {
            self.stats.add(Counter::RecordsTruncated, 1);
        }
        let key = self.key(h);
        // A socket the thread read before a call that touched none (a memory BIO) names the
        // connection only while it has none: it never ends one.
        let (fd, sock_ts) = if h.flags & data_flags::FD_FROM_READ != 0 {
            (-1, 0)
        } else {
            (h.fd, h.sock_ts)
        };
        // A newer connect/accept behind the same handle: a library reused a freed object, or
        // the process reused an fd, for a new connection, so the old one is over. A different
        // fd alone proves nothing: the first fd a TLS call touches may be another file
        // (OpenSSL reading /dev/urandom), so only a socket that sightline saw being created
        // (sock_ts != 0) counts.
        let known = self.conns.get(&key).map(|c| {
            let reused = sock_ts != 0 && c.sock_ts != 0 && c.sock_ts != sock_ts;
            let moved = sock_ts != 0 && c.sock_ts == 0 && c.fd >= 0 && c.fd != fd;
            !(reused || moved)
        });
        if known == Some(false) {
            self.close(key, made);
        }
        if known != Some(true) {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.evict_oldest(made);
            }
            let process = cx.processes.get(h.tgid);
            let selected = process
                .as_ref()
                .is_some_and(|p| self.selection.matches(p.pid, &p.exe_name));
            let by_fd = h.conn == 0 && h.fd >= 0;
            if !selected && by_fd {
                // Not reported: the kernel need not copy it either.
                cx.sockets.silence(h.tgid, h.fd, h.sock_ts);
            }
            self.conns.insert(
                key,
                Conn {
                    process: selected.then_some(process).flatten(),
                    fd: if selected || !by_fd { -1 } else { h.fd },
                    sock_ts: 0,
                    peer: None,
                    local: None,
                    role: None,
                    proto: None,
                    last_ns: h.end_ns,
                },
            );
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_ns = h.end_ns;
        if conn.process.is_none() {
            return;
        }
        if conn.sock_ts == 0 && conn.fd < 0 {
            conn.sock_ts = h.sock_ts;
        }
        if conn.fd < 0 && h.fd >= 0 {
            conn.fd = h.fd;
            let s = cx.sockets.resolve(h.tgid, h.fd, h.sock_ts);
            conn.peer = s.peer;
            conn.local = s.local;
            conn.role = conn.role.or(s.role);
            if let (Some(p), Some(r)) = (conn.proto.as_mut(), s.role) {
                p.set_role(r);
            }
            if s.role == Some(Role::Server) && s.peer.is_some_and(|p| cx.sockets.is_own(p, s.local))
            {
                // A collector on this host receiving sightline's own export.
                conn.process = None;
                cx.sockets.silence(h.tgid, h.fd, h.sock_ts);
                self.stats.add(Counter::OwnConnections, 1);
                return;
            }
        }
        let Some(process) = conn.process.as_ref() else {
            return;
        };
        let role = conn.role;
        let proto = conn
            .proto
            .get_or_insert_with(|| Protocol::detect(payload, role));
        let egress = h.direction == direction::EGRESS;
        // Bytes become visible to us when written (entry) or when a read returns.
        let first_ns = if egress { h.start_ns } else { h.end_ns };
        proto.feed(
            egress,
            payload,
            h.len as usize,
            first_ns,
            h.end_ns,
            &mut self.out,
        );
        let facts = conn.facts(self.tls);
        let moved = Moved { tid: h.tid, egress };
        let view = view(self.point, conn, key, Some(moved));
        made.push(finish(
            &mut self.out,
            &self.stats,
            &self.conv,
            (view, process),
            facts,
        ));
    }

    /// The connection is over.
    pub fn close(&mut self, key: ConnId, made: &mut Vec<Made>) {
        let Some(mut c) = self.conns.remove(&key) else {
            return;
        };
        if let Some(p) = c.proto.as_mut() {
            p.close(&mut self.out);
        }
        match c.process.as_ref() {
            Some(process) => {
                let view = view(self.point, &c, key, None);
                let facts = c.facts(self.tls);
                made.push(finish(
                    &mut self.out,
                    &self.stats,
                    &self.conv,
                    (view, process),
                    facts,
                ));
            }
            None => {
                self.out.drops.clear();
                self.out.exchanges.clear();
            }
        }
    }

    /// The table is full: the least recently used [`EVICT_BATCH`] connections go at once, so
    /// the scan that finds them is paid once per batch, not once per new connection.
    fn evict_oldest(&mut self, made: &mut Vec<Made>) {
        let mut by_age: Vec<(u64, ConnId)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = EVICT_BATCH.min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable(n - 1);
        for (_, key) in by_age.into_iter().take(n) {
            self.stats.count_drop(DropReason::Evicted);
            self.close(key, made);
        }
    }
}

impl Source for Streams {
    fn kinds(&self) -> &'static [u32] {
        self.kinds
    }

    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), crate::capture::records::DecodeError> {
        match record::decode(kind, bytes)? {
            Record::Data { header, payload } => self.data(&header, payload, cx, made),
            Record::Close { tgid, conn } => self.close((tgid, conn), made),
        }
        Ok(())
    }

    /// Closes connections silent for [`IDLE_NS`].
    fn tick(&mut self, now_mono_ns: u64, made: &mut Vec<Made>) {
        let idle: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| now_mono_ns.saturating_sub(c.last_ns) > IDLE_NS)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            self.close(k, made);
        }
    }

    /// A process exited: its connections are over, and the kernel forgets its sockets.
    fn process_exit(&mut self, tgid: u32, cx: &mut Context<'_>, made: &mut Vec<Made>) {
        let keys: Vec<_> = self
            .conns
            .keys()
            .filter(|(t, _)| *t == tgid)
            .copied()
            .collect();
        for k in keys {
            if let Some(fd) = self.conns.get(&k).map(|c| c.fd).filter(|fd| *fd >= 0) {
                cx.sockets.forget(tgid, fd);
            }
            self.close(k, made);
        }
    }

    /// Ends every connection, for shutdown.
    fn close_all(&mut self, made: &mut Vec<Made>) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.close(k, made);
        }
    }
}
