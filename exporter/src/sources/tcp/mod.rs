//! The network signals' capture point: every TCP connection's life from the kernel's TCP
//! tracepoints (no kprobes), attributed to its process and, when the peer runs on this host,
//! to the peer's process. Each kernel event becomes a [`NetEvent`] carrying what the
//! connection did since its previous event, so counters add exact deltas of the kernel's own
//! totals.
//!
//! It attaches nothing per binary: the tracepoints cover every process, loaded at start.

pub mod record;

use super::{Attach, AttachContext, Context, Found, Made, Source};
use crate::capture::records::DecodeError;
use crate::capture::sockets::Role;
use crate::metadata::ProcessInfo;
use crate::protocols::Conventions;
use crate::telemetry::counters::{Counter, Stats};
use otel_config::Selection;
use rustc_hash::FxHashMap as HashMap;
use sightline_common::{kind, tcp_event, TcpRecord, MAX_FLOWS};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The record kinds this capture point writes.
pub const KINDS: &[u32] = &[kind::TCP];

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// The process's connect() completed.
    Connected,
    /// A connection to the process's listening socket completed.
    Accepted,
    Closed,
    Failed(FailReason),
    Retransmit,
    ResetSent,
    ResetReceived,
    /// The connection's figures while it is busy, at most once a second.
    Sample,
}

impl NetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NetKind::Connected => "open",
            NetKind::Accepted => "accept",
            NetKind::Closed => "close",
            NetKind::Failed(r) => r.as_str(),
            NetKind::Retransmit => "retransmit",
            NetKind::ResetSent => "reset-sent",
            NetKind::ResetReceived => "reset-received",
            NetKind::Sample => "sample",
        }
    }
}

/// Why a connect() failed, from the socket's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// ECONNREFUSED: the peer answered the SYN with a reset.
    Refused,
    /// ETIMEDOUT: no answer to any SYN.
    Timeout,
    /// EHOSTUNREACH, ENETUNREACH: ICMP said there is no way there.
    Unreachable,
    /// No error: the process closed the socket before the handshake completed.
    Abandoned,
    Other,
}

impl FailReason {
    fn from_errno(e: i32) -> FailReason {
        match e {
            0 => FailReason::Abandoned,
            libc::ECONNREFUSED => FailReason::Refused,
            libc::ETIMEDOUT => FailReason::Timeout,
            libc::EHOSTUNREACH | libc::ENETUNREACH => FailReason::Unreachable,
            _ => FailReason::Other,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            FailReason::Refused => "refused",
            FailReason::Timeout => "timeout",
            FailReason::Unreachable => "unreachable",
            FailReason::Abandoned => "abandoned",
            FailReason::Other => "error",
        }
    }
}

/// A connection's figures: totals as the kernel keeps them, or what changed between events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Bytes sent and acknowledged by the peer. Like the kernel's own counts (TCP_INFO's
    /// `bytes_acked`, `bytes_received`), these are sequence space: payload, plus one for a
    /// FIN once it is acknowledged (sent) or received. The handshake's SYN, which the kernel
    /// also counts in `bytes_acked`, is left out, so what one end sent is what the other
    /// received.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segs_out: u64,
    pub segs_in: u64,
    pub retransmits: u64,
}

impl Figures {
    fn of(r: &TcpRecord) -> Figures {
        // The SYN's one: acknowledged on every connection that got figures.
        Figures {
            bytes_sent: r.bytes_acked.saturating_sub(1),
            bytes_received: r.bytes_received,
            segs_out: r.segs_out as u64,
            segs_in: r.segs_in as u64,
            retransmits: r.total_retrans as u64,
        }
    }

    /// What changed since `before`. Totals only grow on one socket; a smaller one means the
    /// figures were unavailable, and counts as no change.
    fn since(&self, before: &Figures) -> Figures {
        Figures {
            bytes_sent: self.bytes_sent.saturating_sub(before.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(before.bytes_received),
            segs_out: self.segs_out.saturating_sub(before.segs_out),
            segs_in: self.segs_in.saturating_sub(before.segs_in),
            retransmits: self.retransmits.saturating_sub(before.retransmits),
        }
    }
}

/// One event of one TCP connection of an observed process.
#[derive(Debug, Clone)]
pub struct NetEvent {
    pub kind: NetKind,
    pub process: Arc<ProcessInfo>,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The peer's process, when it runs on this host and sightline follows its end.
    pub peer_process: Option<Arc<ProcessInfo>>,
    /// Nanoseconds since the Unix epoch.
    pub at_unix_ns: u64,
    /// Connected: the handshake (SYN_SENT to ESTABLISHED); Failed: until it failed;
    /// Closed: the connection's whole life. `None` where sightline did not see the start.
    pub duration_ns: Option<u64>,
    /// Smoothed RTT, where the event carries the connection's figures.
    pub srtt_us: Option<u32>,
    /// What the connection did since its previous event.
    pub delta: Figures,
    pub totals: Figures,
}

/// A followed connection, by kernel socket address.
#[derive(Clone)]
struct FlowState {
    process: Arc<ProcessInfo>,
    peer_process: Option<Arc<ProcessInfo>>,
    role: Role,
    local: SocketAddr,
    peer: SocketAddr,
    last: Figures,
}

/// Closed connections remembered for what is reported after their close (an abortive close
/// sends its reset after it); past this many the table starts over.
const MAX_CLOSED: usize = 4096;

/// The capture point's source.
pub struct Tcp {
    flows: HashMap<u64, FlowState>,
    /// Connections that closed, until their socket's next life or [`MAX_CLOSED`].
    closed: HashMap<u64, FlowState>,
    /// Followed connections by (local, peer) end, to name a local peer's process.
    by_ends: HashMap<(SocketAddr, SocketAddr), u64>,
    selection: Selection,
    conv: Conventions,
    stats: Arc<Stats>,
}

impl Tcp {
    pub fn new(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Tcp {
        Tcp {
            flows: HashMap::default(),
            closed: HashMap::default(),
            by_ends: HashMap::default(),
            selection,
            conv,
            stats,
        }
    }

    fn event(&mut self, r: &TcpRecord, cx: &mut Context<'_>, made: &mut Vec<Made>) {
        let kind = match r.event {
            tcp_event::CONNECTED => NetKind::Connected,
            tcp_event::ACCEPTED => NetKind::Accepted,
            tcp_event::CLOSED => NetKind::Closed,
            tcp_event::FAILED => NetKind::Failed(FailReason::from_errno(r.err)),
            tcp_event::RETRANSMIT => NetKind::Retransmit,
            tcp_event::RESET_SENT => NetKind::ResetSent,
            tcp_event::RESET_RECEIVED => NetKind::ResetReceived,
            tcp_event::SAMPLE => NetKind::Sample,
            _ => {
                self.stats.add(Counter::RecordsUndecodable, 1);
                return;
            }
        };
        let totals = Figures::of(r);
        let (state, delta) = match kind {
            NetKind::Connected | NetKind::Accepted => {
                let role = if kind == NetKind::Connected {
                    Role::Client
                } else {
                    Role::Server
                };
                let Some(mut s) = self.open(r, role, cx) else {
                    return;
                };
                if self.flows.len() >= MAX_FLOWS as usize {
                    self.stats.add(Counter::FlowsUntracked, 1);
                    return;
                }
                // The other end, if this host runs it: each names the other's process.
                if let Some(other) = self
                    .by_ends
                    .get(&(s.peer, s.local))
                    .and_then(|sk| self.flows.get_mut(sk))
                {
                    other.peer_process = Some(s.process.clone());
                    s.peer_process = Some(other.process.clone());
                }
                self.by_ends.insert((s.local, s.peer), r.sk);
                self.closed.remove(&r.sk);
                self.flows.insert(r.sk, s.clone());
                (s, Figures::default())
            }
            // A failed connect was never followed here: its record tells it whole.
            NetKind::Failed(_) => {
                let Some(s) = self.open(r, Role::Client, cx) else {
                    return;
                };
                (s, totals)
            }
            NetKind::Closed => {
                let Some(s) = self.flows.remove(&r.sk) else {
                    return;
                };
                self.by_ends.remove(&(s.local, s.peer));
                let delta = totals.since(&s.last);
                if self.closed.len() >= MAX_CLOSED {
                    self.closed.clear();
                }
                let mut kept = s.clone();
                kept.last = totals;
                self.closed.insert(r.sk, kept);
                (s, delta)
            }
            _ => {
                let Some(s) = self
                    .flows
                    .get_mut(&r.sk)
                    .or_else(|| self.closed.get_mut(&r.sk))
                else {
                    return;
                };
                let delta = totals.since(&s.last);
                s.last = totals;
                (s.clone(), delta)
            }
        };
        let duration_ns = match kind {
            NetKind::Connected | NetKind::Failed(_) | NetKind::Closed if r.start_ns != 0 => {
                Some(r.ts_ns.saturating_sub(r.start_ns))
            }
            _ => None,
        };
        made.push(Made::Net(Box::new(NetEvent {
            kind,
            process: state.process,
            role: state.role,
            local: state.local,
            peer: state.peer,
            peer_process: state.peer_process,
            at_unix_ns: self.conv.unix_ns(r.ts_ns),
            duration_ns,
            srtt_us: (r.srtt_us > 0).then_some(r.srtt_us),
            delta,
            totals,
        })));
    }

    /// A new connection of a selected process, from its record.
    fn open(&mut self, r: &TcpRecord, role: Role, cx: &mut Context<'_>) -> Option<FlowState> {
        if r.tgid == 0 {
            // Accepted on a socket whose listener sightline does not know.
            self.stats.add(Counter::FlowsUnattributed, 1);
            return None;
        }
        let process = cx.processes.get(r.tgid)?;
        if !self.selection.matches(process.pid, &process.exe_name) {
            return None;
        }
        Some(FlowState {
            process,
            peer_process: None,
            role,
            local: SocketAddr::new(ip(r.family, &r.laddr), r.lport),
            peer: SocketAddr::new(ip(r.family, &r.raddr), r.rport),
            last: Figures::default(),
        })
    }
}

/// An address as the kernel stores it; an IPv4-mapped IPv6 one as IPv4, as it was dialled.
fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u16 {
        return IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]));
    }
    let v6 = Ipv6Addr::from(*raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl Source for Tcp {
    fn kinds(&self) -> &'static [u32] {
        KINDS
    }

    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), DecodeError> {
        let r = record::decode(kind, bytes)?;
        self.event(&r, cx, made);
        Ok(())
    }

    /// The table's fill, for the health metrics. (A process's exit needs nothing here: the
    /// kernel closes its connections and reports each.)
    fn tick(&mut self, _now_mono_ns: u64, _made: &mut Vec<Made>) {
        self.stats
            .set(Counter::FlowsFollowed, self.flows.len() as u64);
    }
}

/// Nothing to attach per binary: the tracepoints cover every process.
pub struct TcpAttach;

impl Attach for TcpAttach {
    fn consider(&mut self, _found: &Found<'_>, _cx: &mut AttachContext<'_>) {}
}

#[cfg(test)]
mod tests;
