//! Same-host trace joining: when sightline sees both ends of a connection, the SERVER span
//! becomes a child of the CLIENT span that sent the request, with no header injected and no
//! write into any process (so it works under lockdown).
//!
//! The two ends meet on a key both can compute: the client's address and port, the server's
//! port (its address may be a wildcard bind), and the request's position on the connection.
//! Positions only line up when both ends were watched from the connection's start, so only
//! connections whose connect and accept sightline saw take part; the rest start fresh traces,
//! which is the safe answer.

use super::hold::POSITION_BATCHES;
use super::threads::Parent;
use crate::protocols::trace_context::{new_span_id, new_trace_id};
use crate::protocols::Role;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// Client requests waiting for their server side; past this the table is reset, which only
/// costs joins, never correctness.
const MAX_PENDING: usize = 65_536;

/// How a call's trace ids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Fresh,
    /// A client call whose ids were fixed when its request was sent.
    Client(Sent),
    /// A server call answering a client call seen on this host.
    ChildOf {
        trace_id: u128,
        parent: u64,
    },
}

/// A client request's ids, fixed when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub trace_id: u128,
    pub span_id: u64,
    /// The in-process parent's span, if the thread that sent it was handling a request.
    pub parent: Option<u64>,
    /// The trace began on this host (a fresh root, or a chain of same-host calls from one), so
    /// no other host carries it: the local chain may still move to another trace as a whole.
    pub local_trace: bool,
}

/// The two ends of a connection, as this process sees them, when joinable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Where the two ends meet: client address and port, server port, request position.
pub type Key = (IpAddr, u16, u16, u64);

pub fn key(role: Role, ends: Ends, seq: u64) -> Key {
    let (client, server_port) = match role {
        Role::Client => (ends.local, ends.peer.port()),
        Role::Server => (ends.peer, ends.local.port()),
    };
    (client.ip(), client.port(), server_port, seq)
}

/// Per-connection bookkeeping.
#[derive(Debug, Default)]
pub struct ConnJoin {
    /// Requests registered so far (the next request's position).
    seen: u64,
    /// Exchanges emitted so far (the next exchange's position).
    emitted: u64,
    /// Ids fixed at send time, one per client request, in order.
    client_ids: VecDeque<Option<Sent>>,
    /// A server's requests whose client on this host was registered when they were read, by
    /// position: claimed then, so that a request that takes long (a body sent slowly) still
    /// finds its client after the registrations of the time have expired.
    callers: VecDeque<(u64, Sent)>,
    /// Requests whose thread was asked about its parent so far.
    pub threaded: u64,
}

/// Server requests claimed at read time and not yet answered, per connection; past this the
/// oldest claim goes (its request then looks again when it is answered).
const MAX_CALLERS: usize = 64;

impl ConnJoin {
    /// The position of the connection's next exchange.
    pub fn next_position(&self) -> u64 {
        self.emitted
    }

    /// The client on this host that sent the server's request at position `seq`, if it was
    /// registered when the request was read.
    pub fn caller(&self, seq: u64) -> Option<Sent> {
        self.callers
            .iter()
            .find(|(p, _)| *p == seq)
            .map(|(_, s)| *s)
    }
}

#[derive(Debug, Default)]
pub struct Joins {
    /// Registered client requests, and the batch they were registered in.
    pending: FxHashMap<Key, (Sent, u64)>,
    epoch: u64,
}

impl Joins {
    /// Registers requests the connection has sent since the last call; a client's new ones
    /// continue `parent`'s trace, when the thread that sent them was handling a request. A
    /// client's wait until its ends are known (a TLS library with a memory BIO names its
    /// socket only at its first read); those already answered by then are not registered, so
    /// positions never shift.
    pub fn on_requests(
        &mut self,
        cj: &mut ConnJoin,
        requests_seen: u64,
        role: Option<Role>,
        ends: Option<Ends>,
        parent: Option<Parent>,
    ) {
        if role == Some(Role::Client) && ends.is_none() {
            return;
        }
        while cj.seen < requests_seen {
            if role == Some(Role::Client) && cj.seen >= cj.emitted {
                let ids = ends.map(|e| {
                    let sent = Sent {
                        trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
                        span_id: new_span_id(),
                        parent: parent.map(|p| p.span_id),
                        local_trace: parent.is_none_or(|p| p.local_trace),
                    };
                    if self.pending.len() >= MAX_PENDING {
                        self.pending.clear();
                    }
                    self.pending
                        .insert(key(Role::Client, e, cj.seen), (sent, self.epoch));
                    sent
                });
                cj.client_ids.push_back(ids);
            }
            if let (Some(Role::Server), Some(e)) = (role, ends) {
                if let Some(sent) = self.take_sent(&key(Role::Server, e, cj.seen)) {
                    if cj.callers.len() >= MAX_CALLERS {
                        cj.callers.pop_front();
                    }
                    cj.callers.push_back((cj.seen, sent));
                }
            }
            cj.seen += 1;
        }
    }

    /// The origin of the connection's next exchange, and for a server call whose client has
    /// not been read yet, the key to wait on.
    pub fn next_origin(
        &mut self,
        cj: &mut ConnJoin,
        role: Role,
        ends: Option<Ends>,
    ) -> (Origin, Option<Key>) {
        let seq = cj.emitted;
        cj.emitted += 1;
        match role {
            Role::Client => match cj.client_ids.pop_front() {
                Some(Some(sent)) => (Origin::Client(sent), None),
                _ => (Origin::Fresh, None),
            },
            Role::Server => match ends {
                Some(e) => {
                    while cj.callers.front().is_some_and(|(p, _)| *p < seq) {
                        cj.callers.pop_front();
                    }
                    if let Some((_, sent)) = cj.callers.front().filter(|(p, _)| *p == seq) {
                        let o = Origin::ChildOf {
                            trace_id: sent.trace_id,
                            parent: sent.span_id,
                        };
                        cj.callers.pop_front();
                        return (o, None);
                    }
                    let k = key(Role::Server, e, seq);
                    match self.take(&k) {
                        Some(o) => (o, None),
                        None => (Origin::Fresh, Some(k)),
                    }
                }
                None => (Origin::Fresh, None),
            },
        }
    }

    /// Claims a client registration for a server call.
    pub fn take(&mut self, k: &Key) -> Option<Origin> {
        self.take_sent(k).map(|s| Origin::ChildOf {
            trace_id: s.trace_id,
            parent: s.span_id,
        })
    }

    /// Claims a client registration: the client request's ids.
    pub fn take_sent(&mut self, k: &Key) -> Option<Sent> {
        self.pending.remove(k).map(|(sent, _)| sent)
    }

    /// End of a batch: registrations nobody claimed for a while are dropped (their server is
    /// elsewhere, or not observed).
    pub fn end_batch(&mut self) {
        self.epoch += 1;
        let oldest = self.epoch.saturating_sub(POSITION_BATCHES);
        self.pending.retain(|_, (_, e)| *e >= oldest);
    }

    /// The connection ended: its unanswered registrations go.
    pub fn forget(&mut self, cj: &ConnJoin, ends: Option<Ends>) {
        if let Some(e) = ends {
            for seq in cj.emitted..cj.seen {
                self.pending.remove(&key(Role::Client, e, seq));
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(local: &str, peer: &str) -> Option<Ends> {
        Some(Ends {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
        })
    }

    #[test]
    fn a_client_whose_ends_come_late_registers_then_and_never_shifts() {
        let mut j = Joins::default();
        let (mut c, mut s) = (ConnJoin::default(), ConnJoin::default());
        let client = ends("127.0.0.1:50001", "127.0.0.1:8443");
        let server = ends("127.0.0.1:8443", "127.0.0.1:50001");
        // A memory-BIO client wrote its first request before any read named its socket.
        j.on_requests(&mut c, 1, Some(Role::Client), None, None);
        assert_eq!(j.pending(), 0);
        // Its first read names it: the request registers, and its call takes those ids.
        j.on_requests(&mut c, 1, Some(Role::Client), client, None);
        let c0 = j.next_origin(&mut c, Role::Client, client).0;
        j.on_requests(&mut s, 1, Some(Role::Server), server, None);
        let s0 = j.next_origin(&mut s, Role::Server, server).0;
        match (s0, c0) {
            (
                Origin::ChildOf { trace_id, parent },
                Origin::Client(Sent {
                    trace_id: t,
                    span_id,
                    ..
                }),
            ) => {
                assert_eq!((trace_id, parent), (t, span_id))
            }
            other => panic!("{other:?}"),
        }
        // A request answered before the ends were known is never registered: the next one
        // keeps its own position.
        let mut late = ConnJoin::default();
        j.on_requests(&mut late, 1, Some(Role::Client), None, None);
        assert_eq!(
            j.next_origin(&mut late, Role::Client, None).0,
            Origin::Fresh
        );
        j.on_requests(&mut late, 2, Some(Role::Client), client, None);
        assert_eq!(j.pending(), 1);
    }

    #[test]
    fn a_slow_request_keeps_the_client_it_claimed_when_it_was_read() {
        let mut j = Joins::default();
        let (mut c, mut s) = (ConnJoin::default(), ConnJoin::default());
        let client = ends("127.0.0.1:50003", "127.0.0.1:8080");
        let server = ends("127.0.0.1:8080", "127.0.0.1:50003");
        j.on_requests(&mut c, 1, Some(Role::Client), client, None);
        j.on_requests(&mut s, 1, Some(Role::Server), server, None);
        // Its body takes longer than any registration is kept.
        for _ in 0..=POSITION_BATCHES * 10 {
            j.end_batch();
        }
        let Origin::Client(sent) = j.next_origin(&mut c, Role::Client, client).0 else {
            panic!()
        };
        assert_eq!(
            j.next_origin(&mut s, Role::Server, server),
            (
                Origin::ChildOf {
                    trace_id: sent.trace_id,
                    parent: sent.span_id
                },
                None
            )
        );
    }

    #[test]
    fn server_joins_the_client_by_position_even_on_a_wildcard_bind() {
        let mut j = Joins::default();
        let (mut c, mut s) = (ConnJoin::default(), ConnJoin::default());
        let client = ends("127.0.0.1:50000", "127.0.0.1:8443");
        let server = ends("0.0.0.0:8443", "127.0.0.1:50000");
        j.on_requests(&mut c, 2, Some(Role::Client), client, None);
        j.on_requests(&mut s, 2, Some(Role::Server), server, None);
        let s0 = j.next_origin(&mut s, Role::Server, server).0;
        let s1 = j.next_origin(&mut s, Role::Server, server).0;
        let c0 = j.next_origin(&mut c, Role::Client, client).0;
        let c1 = j.next_origin(&mut c, Role::Client, client).0;
        for (sv, cl) in [(s0, c0), (s1, c1)] {
            match (sv, cl) {
                (
                    Origin::ChildOf { trace_id, parent },
                    Origin::Client(Sent {
                        trace_id: t,
                        span_id,
                        ..
                    }),
                ) => assert_eq!((trace_id, parent), (t, span_id)),
                other => panic!("{other:?}"),
            }
        }
        assert_ne!(s0, s1);
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn unknown_ends_start_fresh_and_leave_nothing_behind() {
        let mut j = Joins::default();
        let mut c = ConnJoin::default();
        j.on_requests(&mut c, 1, Some(Role::Client), None, None);
        assert_eq!(
            j.next_origin(&mut c, Role::Client, None),
            (Origin::Fresh, None)
        );
        let mut s = ConnJoin::default();
        let server = ends("127.0.0.1:8443", "127.0.0.1:50001");
        let (o, wait) = j.next_origin(&mut s, Role::Server, server);
        assert_eq!(o, Origin::Fresh);
        // The server finished first: it waits on the key the client will register.
        let wait = wait.unwrap();
        let mut late = ConnJoin::default();
        j.on_requests(
            &mut late,
            1,
            Some(Role::Client),
            ends("127.0.0.1:50001", "127.0.0.1:8443"),
            None,
        );
        assert!(matches!(j.take(&wait), Some(Origin::ChildOf { .. })));
        let client = ends("127.0.0.1:50002", "127.0.0.1:8443");
        let mut c2 = ConnJoin::default();
        j.on_requests(&mut c2, 3, Some(Role::Client), client, None);
        j.forget(&c2, client);
        assert_eq!(j.pending(), 0);
        j.on_requests(
            &mut ConnJoin::default(),
            1,
            Some(Role::Client),
            client,
            None,
        );
        for _ in 0..=POSITION_BATCHES {
            j.end_batch();
        }
        assert_eq!(j.pending(), 0, "unclaimed registrations expire");
    }
}
