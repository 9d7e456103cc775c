//! In-process parents outside Go: an outgoing call a thread sends while it handles a request
//! becomes that request's child. A thread handles a request from the read that brought the
//! request's head until the response's head is written, as in thread-per-request servers
//! (Python, Java, PHP) and an nginx worker proxying one request at a time.
//!
//! Only an unambiguous thread names a parent. A thread with two or more requests open at once
//! (an event loop with several in flight, pipelined requests, a reader that hands requests to
//! a pool and reads the next) names none: which one the call serves cannot be known from the
//! thread, and a wrong parent is worse than none. Go programs are left to the goroutine view,
//! since goroutines move between threads.
//!
//! A child is sent before its parent finishes, and its own ids must be fixed when it is sent
//! (a server on this host joins it by those). So the parent's ids are fixed then too: its
//! incoming `traceparent`, else the same-host caller registered for it, else a fresh trace.
//! The parent's call takes them when it finishes.

use super::same_host::Sent;
use crate::protocols::trace_context::{new_span_id, new_trace_id, TraceParent};
use crate::sources::CapturePoint;
use rustc_hash::FxHashMap as HashMap;

/// A byte-stream connection, as the correlator keys it.
pub type ConnKey = (CapturePoint, (u32, u64));
/// A thread: its process and its own id.
pub type Thread = (u32, u32);

/// Threads with requests open at once; past this the table is reset, which costs parents,
/// never correctness.
const MAX_THREADS: usize = 65_536;
/// Requests open on one thread that are remembered; past this the thread is ambiguous anyway.
const MAX_OPEN_PER_THREAD: usize = 8;
/// Server calls whose ids a child fixed before they finished.
const MAX_FIXED: usize = 65_536;
/// Batches (about 20 ms each) an open request or a fixed id is kept without its response:
/// two minutes, past which the request is taken as lost.
const KEEP_BATCHES: u64 = 6_000;
/// Batches between sweeps of what outlived [`KEEP_BATCHES`].
const SWEEP_EVERY: u64 = 256;

/// The ids a child call takes from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
    /// The trace began on this host: see [`Sent::local_trace`].
    pub local_trace: bool,
}

/// A server call's ids, fixed when its first child was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub trace_id: u128,
    pub span_id: u64,
    /// Its own parent: the incoming `traceparent`'s span, or its caller's on this host.
    pub parent: Option<u64>,
    pub flags: u8,
    local_trace: bool,
    epoch: u64,
}

/// A request a thread read and has not answered.
#[derive(Debug, Clone, Copy)]
struct Open {
    conn: ConnKey,
    seq: u64,
    incoming: Option<TraceParent>,
    /// Its client on this host, claimed when it was read.
    caller: Option<Sent>,
    epoch: u64,
}

/// What became of an outgoing request's search for its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The thread handled no request.
    None,
    /// The thread handled exactly one: its child.
    Parent(Parent),
    /// The thread had several open: no parent named.
    Ambiguous,
}

#[derive(Debug, Default)]
pub struct Threads {
    open: HashMap<Thread, Vec<Open>>,
    /// The thread that read each connection's open requests.
    by_conn: HashMap<ConnKey, Thread>,
    fixed: HashMap<(ConnKey, u64), Fixed>,
    epoch: u64,
}

impl Threads {
    /// `thread` read the heads of requests `seqs` (positions on `conn`, a server connection).
    /// `incoming` is the newest one's `traceparent`, `caller` its client on this host.
    pub fn read_requests(
        &mut self,
        thread: Thread,
        conn: ConnKey,
        seqs: std::ops::Range<u64>,
        incoming: Option<TraceParent>,
        caller: Option<Sent>,
    ) {
        if self.open.len() >= MAX_THREADS && !self.open.contains_key(&thread) {
            self.open.clear();
            self.by_conn.clear();
        }
        if let Some(other) = self.by_conn.insert(conn, thread) {
            // Another thread read this connection's earlier request: it no longer holds it
            // alone, so neither names a parent through it.
            if other != thread {
                self.by_conn.insert(conn, other);
                return;
            }
        }
        let list = self.open.entry(thread).or_default();
        for seq in seqs {
            if list.len() >= MAX_OPEN_PER_THREAD {
                break;
            }
            list.push(Open {
                conn,
                seq,
                incoming,
                caller,
                epoch: self.epoch,
            });
        }
    }

    /// `conn`'s responses up to position `answered` have started: those requests are handled.
    pub fn answered(&mut self, conn: ConnKey, answered: u64) {
        let Some(thread) = self.by_conn.get(&conn).copied() else {
            return;
        };
        let Some(list) = self.open.get_mut(&thread) else {
            self.by_conn.remove(&conn);
            return;
        };
        list.retain(|o| o.conn != conn || o.seq >= answered);
        if !list.iter().any(|o| o.conn == conn) {
            self.by_conn.remove(&conn);
        }
        if list.is_empty() {
            self.open.remove(&thread);
        }
    }

    /// The connection ended: its open requests will not be answered.
    pub fn closed(&mut self, conn: ConnKey) {
        self.answered(conn, u64::MAX);
    }

    /// The parent of a request `thread` sends now, fixing the parent's ids if no earlier child
    /// did.
    pub fn parent(&mut self, thread: Thread) -> Found {
        let open = match self.open.get(&thread).map(Vec::as_slice) {
            None | Some([]) => return Found::None,
            Some([one]) => *one,
            Some(_) => return Found::Ambiguous,
        };
        if self.fixed.len() >= MAX_FIXED {
            self.fixed.clear();
        }
        let epoch = self.epoch;
        let f = self.fixed.entry((open.conn, open.seq)).or_insert_with(|| {
            let (trace_id, parent, flags, local_trace) = match open.incoming {
                Some(tp) => (tp.trace_id, Some(tp.span_id), tp.flags, false),
                None => match open.caller {
                    Some(s) => (s.trace_id, Some(s.span_id), 1, s.local_trace),
                    None => (new_trace_id(), None, 1, true),
                },
            };
            Fixed {
                trace_id,
                span_id: new_span_id(),
                parent,
                flags,
                local_trace,
                epoch,
            }
        });
        Found::Parent(Parent {
            trace_id: f.trace_id,
            span_id: f.span_id,
            flags: f.flags,
            local_trace: f.local_trace,
        })
    }

    /// The ids a child fixed for the server call at position `seq` on `conn`, now finished.
    pub fn take_fixed(&mut self, conn: ConnKey, seq: u64) -> Option<Fixed> {
        if self.fixed.is_empty() {
            return None;
        }
        self.fixed.remove(&(conn, seq))
    }

    /// After each batch: what waited for its response far too long goes.
    pub fn end_batch(&mut self) {
        self.epoch += 1;
        if !self.epoch.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        let oldest = self.epoch.saturating_sub(KEEP_BATCHES);
        self.fixed.retain(|_, f| f.epoch >= oldest);
        self.open.retain(|_, list| {
            list.retain(|o| o.epoch >= oldest);
            !list.is_empty()
        });
        let open = &self.open;
        self.by_conn.retain(|conn, t| {
            open.get(t)
                .is_some_and(|l| l.iter().any(|o| o.conn == *conn))
        });
    }

    /// Threads with requests open, for the fill gauge.
    pub fn fill(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnKey = (CapturePoint::Syscalls, (10, 3));
    const B: ConnKey = (CapturePoint::Syscalls, (10, 4));

    fn parent(t: &mut Threads, thread: Thread) -> Found {
        t.parent(thread)
    }

    #[test]
    fn a_thread_with_one_request_open_names_it_until_the_response_starts() {
        let mut t = Threads::default();
        assert_eq!(parent(&mut t, (10, 11)), Found::None);
        t.read_requests((10, 11), A, 0..1, None, None);
        let Found::Parent(p) = parent(&mut t, (10, 11)) else {
            panic!()
        };
        // A second child of the same request: the same parent.
        assert_eq!(parent(&mut t, (10, 11)), Found::Parent(p));
        // Another thread of the process is not handling it.
        assert_eq!(parent(&mut t, (10, 12)), Found::None);
        t.answered(A, 1);
        assert_eq!(parent(&mut t, (10, 11)), Found::None);
        let f = t.take_fixed(A, 0).unwrap();
        assert_eq!(
            (f.trace_id, f.span_id, f.parent),
            (p.trace_id, p.span_id, None)
        );
        assert_eq!(t.take_fixed(A, 0), None);
        assert_eq!(t.fill(), 0);
    }

    #[test]
    fn the_parent_continues_its_incoming_traceparent() {
        let mut t = Threads::default();
        let tp = TraceParent {
            trace_id: 7,
            span_id: 9,
            flags: 0,
        };
        t.read_requests((1, 1), A, 0..1, Some(tp), None);
        let Found::Parent(p) = parent(&mut t, (1, 1)) else {
            panic!()
        };
        assert_eq!((p.trace_id, p.flags, p.local_trace), (7, 0, false));
        let f = t.take_fixed(A, 0).unwrap();
        assert_eq!((f.span_id, f.parent), (p.span_id, Some(9)));
    }

    #[test]
    fn the_parent_joins_its_caller_on_this_host() {
        use super::super::same_host::{ConnJoin, Ends, Joins, Origin};
        use crate::protocols::Role;
        let mut t = Threads::default();
        let mut j = Joins::default();
        let client = Ends {
            local: "127.0.0.1:50000".parse().unwrap(),
            peer: "127.0.0.1:8080".parse().unwrap(),
        };
        let server = Ends {
            local: "127.0.0.1:8080".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
        };
        let (mut c, mut s) = (ConnJoin::default(), ConnJoin::default());
        j.on_requests(&mut c, 1, Some(Role::Client), Some(client), None);
        let Origin::Client(sent) = j.next_origin(&mut c, Role::Client, Some(client)).0 else {
            panic!()
        };
        // The server's read claims its caller.
        j.on_requests(&mut s, 1, Some(Role::Server), Some(server), None);
        assert_eq!(s.caller(0), Some(sent));
        t.read_requests((1, 1), A, 0..1, None, s.caller(0));
        let Found::Parent(p) = t.parent((1, 1)) else {
            panic!()
        };
        assert_eq!((p.trace_id, p.local_trace), (sent.trace_id, true));
        assert_eq!(t.take_fixed(A, 0).unwrap().parent, Some(sent.span_id));
    }

    #[test]
    fn several_requests_open_on_a_thread_name_no_parent() {
        let mut t = Threads::default();
        // An event loop that read two requests on two connections.
        t.read_requests((1, 1), A, 0..1, None, None);
        t.read_requests((1, 1), B, 0..1, None, None);
        assert_eq!(parent(&mut t, (1, 1)), Found::Ambiguous);
        t.answered(A, 1);
        assert!(matches!(parent(&mut t, (1, 1)), Found::Parent(_)));
        // Two pipelined requests in one read.
        let mut t = Threads::default();
        t.read_requests((1, 1), A, 0..2, None, None);
        assert_eq!(parent(&mut t, (1, 1)), Found::Ambiguous);
        t.answered(A, 1);
        assert!(matches!(parent(&mut t, (1, 1)), Found::Parent(_)));
        // A reader that handed its request to another thread and read the next one there.
        let mut t = Threads::default();
        t.read_requests((1, 1), A, 0..1, None, None);
        t.read_requests((1, 2), A, 1..2, None, None);
        assert!(matches!(parent(&mut t, (1, 1)), Found::Parent(_)));
        assert_eq!(parent(&mut t, (1, 2)), Found::None);
    }

    #[test]
    fn closed_and_stale_requests_are_forgotten() {
        let mut t = Threads::default();
        t.read_requests((1, 1), A, 0..1, None, None);
        t.closed(A);
        assert_eq!(parent(&mut t, (1, 1)), Found::None);
        t.read_requests((1, 1), B, 0..1, None, None);
        let _ = parent(&mut t, (1, 1));
        for _ in 0..KEEP_BATCHES + SWEEP_EVERY {
            t.end_batch();
        }
        assert_eq!(t.fill(), 0);
        assert_eq!(t.take_fixed(B, 0), None);
    }
}
