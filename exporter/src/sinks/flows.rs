//! `sightline flows`: one line per TCP connection event (open, accept, close, a failed
//! connect and why, resets, retransmit bursts), with process, peer and figures, for people
//! (text) or programs (JSON lines).

use super::live::{format_duration, Format};
use super::timefmt::{clock, rfc3339};
use super::{printable, Sink};
use crate::protocols::call::Call;
use crate::sources::tcp::{NetEvent, NetKind};
use rustc_hash::FxHashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// A connection's retransmits within this of its last retransmit line are one burst: they show
/// in the connection's next line, not one line each.
const BURST_NS: u64 = 1_000_000_000;
/// Connections whose last retransmit line is remembered; past this the oldest are forgotten
/// (their next retransmit prints a line).
const MAX_BURSTS: usize = 16_384;

/// Which events are shown; an empty field matches any.
#[derive(Debug, Clone, Default)]
pub struct FlowFilter {
    pub pids: Vec<u32>,
    /// A service or executable name.
    pub processes: Vec<String>,
    pub peers: Vec<IpAddr>,
    /// A local or peer port.
    pub ports: Vec<u16>,
}

impl FlowFilter {
    pub fn matches(&self, e: &NetEvent) -> bool {
        let p = &e.process;
        (self.pids.is_empty() || self.pids.contains(&p.pid))
            && (self.processes.is_empty()
                || self
                    .processes
                    .iter()
                    .any(|n| *n == p.service_name || *n == p.exe_name))
            && (self.peers.is_empty() || self.peers.contains(&e.peer.ip()))
            && (self.ports.is_empty()
                || self.ports.contains(&e.peer.port())
                || self.ports.contains(&e.local.port()))
    }
}

pub struct FlowsView<W: Write + Send> {
    out: std::io::BufWriter<W>,
    format: Format,
    filter: FlowFilter,
    titled: bool,
    /// Per connection (local, peer): when its last retransmit line was printed.
    bursts: FxHashMap<(SocketAddr, SocketAddr), u64>,
}

impl<W: Write + Send> FlowsView<W> {
    pub fn new(out: W, format: Format, filter: FlowFilter) -> Self {
        FlowsView {
            out: std::io::BufWriter::with_capacity(64 << 10, out),
            format,
            filter,
            titled: format != Format::Text,
            bursts: FxHashMap::default(),
        }
    }

    fn title(&mut self) {
        if !self.titled {
            self.titled = true;
            let _ = writeln!(
                self.out,
                "{:<12} {:<22} {:<14} {:<6} {:<24} {:<24} DETAILS",
                "TIME", "PROCESS", "EVENT", "ROLE", "LOCAL", "PEER"
            );
        }
    }

    /// Whether a retransmit starts a burst (and so gets a line).
    fn burst_starts(&mut self, e: &NetEvent) -> bool {
        let key = (e.local, e.peer);
        match self.bursts.get(&key) {
            Some(t) if e.at_unix_ns.saturating_sub(*t) < BURST_NS => false,
            _ => {
                if self.bursts.len() >= MAX_BURSTS {
                    self.bursts.clear();
                }
                self.bursts.insert(key, e.at_unix_ns);
                true
            }
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n}B"),
        1_024..1_048_576 => format!("{:.1}KiB", n as f64 / 1024.0),
        _ => format!("{:.1}MiB", n as f64 / 1_048_576.0),
    }
}

pub fn text_line(e: &NetEvent) -> String {
    let who = format!("{}[{}]", printable(&e.process.service_name), e.process.pid);
    let peer = match &e.peer_process {
        Some(p) => format!("{} ({})", e.peer, printable(&p.service_name)),
        None => e.peer.to_string(),
    };
    let t = &e.totals;
    let details = match e.kind {
        NetKind::Connected => match e.duration_ns {
            Some(d) => format!("connect {}", format_duration(d)),
            None => String::new(),
        },
        NetKind::Accepted => String::new(),
        NetKind::Failed(_) => match e.duration_ns {
            Some(d) => format!("after {} retransmits {}", format_duration(d), t.retransmits),
            None => format!("retransmits {}", t.retransmits),
        },
        _ => {
            let mut s = format!(
                "tx {} rx {} retransmits {}",
                bytes(t.bytes_sent),
                bytes(t.bytes_received),
                t.retransmits
            );
            if let Some(rtt) = e.srtt_us {
                s.push_str(&format!(" rtt {}", format_duration(rtt as u64 * 1_000)));
            }
            if let (NetKind::Closed, Some(d)) = (e.kind, e.duration_ns) {
                s.push_str(&format!(" lived {}", format_duration(d)));
            }
            s
        }
    };
    format!(
        "{} {:<22} {:<14} {:<6} {:<24} {:<24} {}",
        clock(e.at_unix_ns),
        who,
        e.kind.as_str(),
        e.role.as_str(),
        e.local.to_string(),
        peer,
        details
    )
}

pub fn json_line(e: &NetEvent) -> String {
    let t = &e.totals;
    serde_json::json!({
        "time": rfc3339(e.at_unix_ns),
        "event": e.kind.as_str(),
        "service": e.process.service_name,
        "pid": e.process.pid,
        "role": e.role.as_str(),
        "local": e.local.to_string(),
        "peer": e.peer.to_string(),
        "peer_service": e.peer_process.as_ref().map(|p| p.service_name.clone()),
        "peer_pid": e.peer_process.as_ref().map(|p| p.pid),
        "duration_ms": e.duration_ns.map(|d| d as f64 / 1e6),
        "rtt_ms": e.srtt_us.map(|r| r as f64 / 1e3),
        "bytes_sent": t.bytes_sent,
        "bytes_received": t.bytes_received,
        "segments_sent": t.segs_out,
        "segments_received": t.segs_in,
        "retransmits": t.retransmits,
    })
    .to_string()
}

impl<W: Write + Send> Sink for FlowsView<W> {
    fn on_call(&mut self, _call: &Call) {}

    fn on_net(&mut self, e: &NetEvent) {
        if e.kind == NetKind::Sample || !self.filter.matches(e) {
            return;
        }
        if e.kind == NetKind::Retransmit && !self.burst_starts(e) {
            return;
        }
        if e.kind == NetKind::Closed {
            self.bursts.remove(&(e.local, e.peer));
        }
        self.title();
        let line = match self.format {
            Format::Text => text_line(e),
            Format::Json => json_line(e),
        };
        // A closed stdout (piped into `head`) must not stop the agent.
        let _ = writeln!(self.out, "{line}");
    }

    fn flush(&mut self) {
        self.title();
        let _ = self.out.flush();
    }
}
