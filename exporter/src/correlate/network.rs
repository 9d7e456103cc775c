//! The network's part of each call: what its TCP connection did while the call ran
//! (retransmits by the process's end, the smoothed RTT, whether the call opened the
//! connection and how long the handshake took), so that a slow span says by itself whether
//! the network was to blame.
//!
//! Connections are keyed by their two ends, as both the network events and the calls name
//! them. A connection's record outlives its close by a few batches: the call that ends with
//! the connection is often released after the close is seen.

use crate::protocols::call::{Call, NetPart};
use crate::protocols::Role;
use crate::sources::tcp::{NetEvent, NetKind};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;

/// Connections remembered at once; past this the table starts over (calls then go without
/// their network part until their connection's next event).
const MAX_CONNS: usize = 65_536;
/// Retransmit times remembered per connection: the latest ones, which the calls still open
/// on it can cover.
const MAX_RETRANSMITS: usize = 256;
/// Batches a closed connection's record is kept for the calls still to be released on it.
const CLOSED_BATCHES: u64 = 3;

#[derive(Default)]
struct ConnNet {
    connect_ns: Option<u64>,
    srtt_us: Option<u32>,
    /// When each retransmit happened, ns since the epoch, oldest first.
    retransmits: VecDeque<u64>,
    /// A call on it got `new_connection`.
    claimed: bool,
    closed_at: Option<u64>,
}

#[derive(Default)]
pub struct Network {
    conns: HashMap<(SocketAddr, SocketAddr), ConnNet>,
    epoch: u64,
}

impl Network {
    pub fn on_event(&mut self, e: &NetEvent) {
        let key = (e.local, e.peer);
        if matches!(e.kind, NetKind::Connected | NetKind::Accepted) {
            if self.conns.len() >= MAX_CONNS {
                self.conns.clear();
            }
            self.conns.insert(
                key,
                ConnNet {
                    connect_ns: if e.kind == NetKind::Connected {
                        e.duration_ns
                    } else {
                        None
                    },
                    srtt_us: e.srtt_us,
                    ..ConnNet::default()
                },
            );
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if e.srtt_us.is_some() {
            c.srtt_us = e.srtt_us;
        }
        match e.kind {
            NetKind::Retransmit => {
                if c.retransmits.len() >= MAX_RETRANSMITS {
                    c.retransmits.pop_front();
                }
                c.retransmits.push_back(e.at_unix_ns);
            }
            NetKind::Closed => c.closed_at = Some(self.epoch),
            _ => {}
        }
    }

    /// Gives a call its connection's part, if the connection is known.
    pub fn annotate(&mut self, call: &mut Call) {
        let (Some(local), Some(peer)) = (call.local, call.peer) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&(local, peer)) else {
            return;
        };
        let end = call.start_unix_ns.saturating_add(call.duration_ns);
        let retransmits = c
            .retransmits
            .iter()
            .filter(|t| (call.start_unix_ns..=end).contains(*t))
            .count() as u32;
        let new_connection = !c.claimed;
        c.claimed = true;
        call.network = Some(NetPart {
            retransmits,
            srtt_us: c.srtt_us,
            new_connection,
            connect_ns: if new_connection && call.role == Role::Client {
                c.connect_ns
            } else {
                None
            },
        });
    }

    /// After each batch: closed connections' records go once their calls had time to come.
    pub fn end_batch(&mut self) {
        self.epoch += 1;
        let epoch = self.epoch;
        self.conns
            .retain(|_, c| c.closed_at.is_none_or(|t| epoch - t < CLOSED_BATCHES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::sockets::Role as NetRole;
    use crate::correlate::twins::tests::call;
    use crate::metadata::ProcessInfo;
    use crate::sources::tcp::Figures;
    use std::sync::Arc;

    fn event(kind: NetKind, at: u64, ends: (SocketAddr, SocketAddr)) -> NetEvent {
        NetEvent {
            kind,
            process: Arc::new(ProcessInfo::from_parts(1, "c".into(), "c".into(), b"")),
            role: NetRole::Client,
            local: ends.0,
            peer: ends.1,
            peer_process: None,
            at_unix_ns: at,
            duration_ns: Some(40),
            srtt_us: Some(90),
            delta: Figures::default(),
            totals: Figures::default(),
        }
    }

    #[test]
    fn a_call_gets_its_connections_retransmits_while_it_ran() {
        let ends: (SocketAddr, SocketAddr) = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let mut n = Network::default();
        n.on_event(&event(NetKind::Connected, 50, ends));
        for t in [150, 160, 450] {
            n.on_event(&event(NetKind::Retransmit, t, ends));
        }
        let mut first = call(1, Role::Client, "/a", 100, 100, "http");
        (first.local, first.peer) = (Some(ends.0), Some(ends.1));
        n.annotate(&mut first);
        assert_eq!(
            first.network,
            Some(NetPart {
                retransmits: 2,
                srtt_us: Some(90),
                new_connection: true,
                connect_ns: Some(40),
            })
        );
        let mut second = call(1, Role::Client, "/b", 400, 100, "http");
        (second.local, second.peer) = (Some(ends.0), Some(ends.1));
        n.annotate(&mut second);
        let part = second.network.unwrap();
        assert_eq!(
            (part.retransmits, part.new_connection, part.connect_ns),
            (1, false, None)
        );
        // Another connection's call gets nothing.
        let mut other = call(1, Role::Client, "/c", 100, 100, "http");
        other.local = Some("10.0.0.1:40001".parse().unwrap());
        other.peer = Some(ends.1);
        n.annotate(&mut other);
        assert_eq!(other.network, None);
        // A closed connection's record lasts a few batches, for calls released after it.
        n.on_event(&event(NetKind::Closed, 600, ends));
        for _ in 0..CLOSED_BATCHES {
            assert!(n.conns.contains_key(&ends));
            n.end_batch();
        }
        assert!(!n.conns.contains_key(&ends));
    }
}
