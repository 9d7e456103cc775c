//! One request seen by two capture points. A Go program whose net/http runs over OpenSSL (through
//! cgo) is seen by the Go probes, as Go's own structs, and by the OpenSSL probes, as the bytes
//! SSL_read and SSL_write move. Each request must be reported once.
//!
//! The Go view is the one kept: it has the route, and the goroutine ancestry that makes the
//! handler's client calls its children. The OpenSSL view adds what only the wire shows: that the
//! connection was TLS (net/http cannot tell, so the Go view says `http`), the peer and local
//! addresses when the Go view has none, and the User-Agent. In a process both have reported
//! from, each view waits a while for its twin: same role, method and path, overlapping in
//! time. The OpenSSL twin is then dropped, and counted.

use super::hold::{GO_HOLD, RECENT_KEEP, SSL_HOLD};
use crate::protocols::call::Call;
use crate::sources::CapturePoint;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Processes remembered per capture point; past this the sets are cleared and relearnt, which
/// costs at most a few unpaired calls. A process is not forgotten when it exits: its last
/// views are still being paired, and a new process that gets its pid only has its calls held
/// a moment.
const MAX_PIDS: usize = 65_536;

struct Held {
    call: Call,
    source: CapturePoint,
    since: Instant,
}

pub struct Twins {
    go_pids: FxHashSet<u32>,
    ssl_pids: FxHashSet<u32>,
    held: Vec<Held>,
    /// Calls already out, kept (from their release) for a twin read after them.
    recent: VecDeque<Held>,
    merged: u64,
    go_hold: Duration,
    ssl_hold: Duration,
}

impl Default for Twins {
    fn default() -> Self {
        Twins::with_holds(GO_HOLD, SSL_HOLD)
    }
}

impl Twins {
    /// How long each view waits for its twin (tests use 0: until the next batch ends).
    pub fn with_holds(go_hold: Duration, ssl_hold: Duration) -> Twins {
        Twins {
            go_pids: FxHashSet::default(),
            ssl_pids: FxHashSet::default(),
            held: Vec::new(),
            recent: VecDeque::new(),
            merged: 0,
            go_hold,
            ssl_hold,
        }
    }

    /// A capture point reported from `pid`.
    pub fn seen(&mut self, source: CapturePoint, pid: u32) {
        let set = match source {
            CapturePoint::Go => &mut self.go_pids,
            CapturePoint::Openssl => &mut self.ssl_pids,
            // The kernel leaves the sockets of a process the Go probes report to them; the TCP
            // tracepoints see connections, not requests.
            CapturePoint::Syscalls | CapturePoint::Tcp => return,
        };
        if !set.contains(&pid) {
            if set.len() >= MAX_PIDS {
                set.clear();
            }
            set.insert(pid);
        }
    }

    /// Whether the Go probes report from `pid`: its Go view of a request is the one kept.
    pub fn is_go(&self, pid: u32) -> bool {
        self.go_pids.contains(&pid)
    }

    /// Requests reported by both capture points, and so once.
    pub fn merged(&self) -> u64 {
        self.merged
    }

    /// A finished call from `source`: out at once (into `out`), merged with its twin, or held
    /// for it.
    pub fn offer(&mut self, call: Call, source: CapturePoint, out: &mut Vec<Call>) {
        let pid = call.process.pid;
        if source == CapturePoint::Syscalls
            || !(self.go_pids.contains(&pid) && self.ssl_pids.contains(&pid))
        {
            out.push(call);
            return;
        }
        if let Some(i) = best_twin(self.held.iter(), source, &call) {
            let other = self.held.swap_remove(i).call;
            let (go, ssl) = match source {
                CapturePoint::Go => (call, other),
                CapturePoint::Openssl | CapturePoint::Syscalls | CapturePoint::Tcp => (other, call),
            };
            self.merged += 1;
            out.push(merge(go, &ssl));
            return;
        }
        if let Some(i) = best_twin(self.recent.iter(), source, &call) {
            // Its twin already went out (it waited longer than its hold): this view is the
            // second report of the request, so it is the one dropped.
            self.recent.remove(i);
            self.merged += 1;
            return;
        }
        self.held.push(Held {
            call,
            source,
            since: Instant::now(),
        });
    }

    /// After each batch: calls that waited long enough go out as they are (`force`: all).
    pub fn end_batch(&mut self, force: bool, out: &mut Vec<Call>) {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|o| now.duration_since(o.since) > RECENT_KEEP)
        {
            self.recent.pop_front();
        }
        let mut i = 0;
        while i < self.held.len() {
            let hold = match self.held[i].source {
                CapturePoint::Go => self.go_hold,
                CapturePoint::Openssl | CapturePoint::Syscalls | CapturePoint::Tcp => self.ssl_hold,
            };
            if force || now.duration_since(self.held[i].since) >= hold {
                let h = self.held.swap_remove(i);
                self.recent.push_back(Held {
                    call: h.call.clone(),
                    source: h.source,
                    since: now,
                });
                out.push(h.call);
            } else {
                i += 1;
            }
        }
    }
}

/// Which of `views` is the other view of `call`'s request. Requests on a keep-alive
/// connection follow each other within microseconds; the twin is the view that shares the
/// most time with this one (both clocks are the kernel's, so a request's two views nest).
fn best_twin<'a>(
    views: impl Iterator<Item = &'a Held>,
    source: CapturePoint,
    call: &Call,
) -> Option<usize> {
    views
        .enumerate()
        .filter(|(_, h)| h.source != source && alike(&h.call, call))
        .filter_map(|(i, h)| shared_ns(span(&h.call), span(call)).map(|t| (t, i)))
        .max()
        .map(|(_, i)| i)
}

/// Could be two views of one request, times aside.
fn alike(a: &Call, b: &Call) -> bool {
    a.process.pid == b.process.pid
        && a.role == b.role
        && a.method == b.method
        && same_path(&a.path, &b.path)
}

fn span(c: &Call) -> (u64, u64) {
    (
        c.start_unix_ns,
        c.start_unix_ns.saturating_add(c.duration_ns),
    )
}

/// The time two views share, `None` when they share none.
fn shared_ns(a: (u64, u64), b: (u64, u64)) -> Option<u64> {
    let (s, e) = (a.0.max(b.0), a.1.min(b.1));
    (s <= e).then(|| e - s)
}

/// Go reports the decoded path; the wire has it as sent.
fn same_path(a: &str, b: &str) -> bool {
    a == b || a.contains('%') || b.contains('%')
}

/// The Go view, with what only the wire told.
fn merge(mut go: Call, ssl: &Call) -> Call {
    if ssl.scheme == "https" {
        go.scheme = "https";
    }
    go.peer = go.peer.or(ssl.peer);
    go.local = go.local.or(ssl.local);
    if go.user_agent.is_none() {
        go.user_agent = ssl.user_agent.clone();
    }
    go
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metadata::ProcessInfo;
    use crate::protocols::Role;
    use std::sync::Arc;

    pub(crate) fn call(
        pid: u32,
        role: Role,
        path: &str,
        start: u64,
        dur: u64,
        scheme: &'static str,
    ) -> Call {
        Call {
            process: Arc::new(ProcessInfo::from_parts(
                pid,
                "svc".into(),
                "svc".into(),
                b"",
            )),
            role,
            method: "GET".into(),
            method_original: None,
            path: path.into(),
            query: None,
            absolute_authority: None,
            status: 200,
            route: None,
            protocol_version: "1.1",
            scheme,
            host: None,
            host_port: None,
            peer: None,
            local: None,
            user_agent: None,
            start_unix_ns: start,
            duration_ns: dur,
            trace_id: 1,
            span_id: 1,
            parent_span_id: None,
            trace_flags: 1,
            tracestate: None,
            network: None,
        }
    }

    /// Twins that wait until the next batch ends, seeing both capture points in `pid`.
    fn both(pid: u32) -> Twins {
        let mut t = Twins::with_holds(Duration::ZERO, Duration::ZERO);
        t.seen(CapturePoint::Go, pid);
        t.seen(CapturePoint::Openssl, pid);
        t
    }

    #[test]
    fn a_process_seen_by_one_capture_point_is_not_held() {
        let mut t = Twins::default();
        t.seen(CapturePoint::Go, 1);
        let mut out = Vec::new();
        t.offer(
            call(1, Role::Server, "/a", 10, 5, "http"),
            CapturePoint::Go,
            &mut out,
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn twins_become_one_call_with_what_the_wire_told() {
        let mut t = both(1);
        let mut out = Vec::new();
        let go = call(1, Role::Server, "/a", 1_000_000, 500_000, "http");
        let mut ssl = call(1, Role::Server, "/a", 900_000, 800_000, "https");
        ssl.user_agent = Some("curl/7.88".into());
        t.offer(go, CapturePoint::Go, &mut out);
        assert!(out.is_empty(), "held for its twin");
        t.offer(ssl, CapturePoint::Openssl, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].scheme, "https");
        assert_eq!(out[0].user_agent.as_deref(), Some("curl/7.88"));
        assert_eq!(t.merged(), 1);
        t.end_batch(true, &mut out);
        assert_eq!(out.len(), 1, "nothing left over");
    }

    #[test]
    fn calls_of_different_requests_are_not_twins() {
        let mut t = both(1);
        let mut out = Vec::new();
        // Two requests on one keep-alive connection, 10 ms apart; and another path.
        t.offer(
            call(1, Role::Server, "/a", 0, 1_000, "http"),
            CapturePoint::Go,
            &mut out,
        );
        t.offer(
            call(1, Role::Server, "/a", 10_000_000, 1_000, "https"),
            CapturePoint::Openssl,
            &mut out,
        );
        t.offer(
            call(1, Role::Client, "/a", 0, 1_000, "https"),
            CapturePoint::Openssl,
            &mut out,
        );
        t.offer(
            call(1, Role::Server, "/b", 0, 1_000, "https"),
            CapturePoint::Openssl,
            &mut out,
        );
        assert!(out.is_empty(), "each waits for its twin");
        t.end_batch(false, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(t.merged(), 0);
    }

    #[test]
    fn back_to_back_requests_pair_with_their_own_twins() {
        let mut t = both(1);
        let mut out = Vec::new();
        // Go views of three keep-alive requests (the first includes the handshake) and the
        // OpenSSL views nested in them, 150 µs apart: read in the order the probes write them.
        let go = [(0, 3_200_000), (3_300_000, 500_000), (3_900_000, 400_000)];
        let ssl = [
            (2_700_000, 400_000),
            (3_350_000, 400_000),
            (3_950_000, 300_000),
        ];
        for i in 0..3 {
            t.offer(
                call(1, Role::Client, "/a", ssl[i].0, ssl[i].1, "https"),
                CapturePoint::Openssl,
                &mut out,
            );
            t.offer(
                call(1, Role::Client, "/a", go[i].0, go[i].1, "https"),
                CapturePoint::Go,
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        for (c, g) in out.iter().zip(go) {
            assert_eq!((c.start_unix_ns, c.duration_ns), g, "the Go view is kept");
        }
        assert_eq!(t.merged(), 3);
    }

    #[test]
    fn a_twin_read_after_the_other_went_out_is_still_one_call() {
        let mut t = both(1);
        let mut out = Vec::new();
        t.offer(
            call(1, Role::Client, "/a", 0, 1_000, "https"),
            CapturePoint::Go,
            &mut out,
        );
        t.end_batch(false, &mut out);
        assert_eq!(out.len(), 1);
        t.offer(
            call(1, Role::Client, "/a", 100, 5_000, "https"),
            CapturePoint::Openssl,
            &mut out,
        );
        assert_eq!(out.len(), 1, "the late view is dropped");
        assert_eq!(t.merged(), 1);
    }
}
