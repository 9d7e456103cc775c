//! The Go capture point: Go's net/http seen by uprobes on its own functions, one record per
//! request with Go's own fields, so nothing is parsed. Records become calls, returned with
//! the connection ends they were made on; their trace is `correlate`'s to decide.

pub mod attach;
pub mod call;
pub mod offsets;
pub mod record;

use super::{Context, GoCall, Made, Source};
use crate::capture::records::DecodeError;
use crate::capture::sockets::Sockets;
use crate::protocols::Conventions;
use crate::telemetry::counters::{Counter, Stats};
use call::GoConn;
use otel_config::Selection;
use record::GoRecord;
use rustc_hash::FxHashMap as HashMap;
use sightline_common::go_role;
use std::sync::Arc;

/// Go connections whose ends are remembered at once.
const GO_SOCKS_MAX: usize = 65_536;

pub struct Go {
    /// Go connections' ends by (pid, fd), with the socket stamp they were resolved for: a
    /// keep-alive connection is looked up once, not once per request.
    socks: HashMap<(u32, i32), (u64, GoConn)>,
    selection: Selection,
    conv: Conventions,
    stats: Arc<Stats>,
}

impl Go {
    pub fn new(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Go {
        Go {
            socks: HashMap::default(),
            selection,
            conv,
            stats,
        }
    }

    /// One Go net/http record as a call, with its connection's ends; `None` for a process not
    /// selected, and for what is not a request.
    fn call(&mut self, r: &GoRecord, cx: &mut Context<'_>) -> Option<Made> {
        // Never the query or the headers' values: a log may leave the host in clear.
        tracing::trace!(
            tgid = r.tgid,
            goid = r.goid,
            role = r.role,
            method = %r.method,
            status = r.status,
            "go record"
        );
        // An h2c connection's preface reaches the HTTP/1 server as `PRI *` and is handed, for
        // the whole connection, to x/net's ServeConn, whose requests are recorded on their own.
        if r.role == go_role::SERVER && r.method == "PRI" && r.path == "*" {
            return None;
        }
        let process = cx.processes.get(r.tgid)?;
        if !self.selection.matches(process.pid, &process.exe_name) {
            return None;
        }
        let conn = if r.fd > 0 {
            self.conn(r, cx.sockets)
        } else {
            GoConn::default()
        };
        Some(Made::Go(Box::new(GoCall {
            call: call::call(process, r, conn, &self.conv),
            goroutine: call::Goroutine::from(r),
            conn,
        })))
    }

    /// The ends of a Go call's socket. Only a stamped socket is remembered: an fd number alone
    /// is reused by the next connection.
    fn conn(&mut self, r: &GoRecord, sockets: &mut Sockets) -> GoConn {
        let key = (r.tgid, r.fd);
        if r.sock_gen != 0 {
            if let Some((gen, conn)) = self.socks.get(&key) {
                if *gen == r.sock_gen {
                    return *conn;
                }
            }
        }
        let s = sockets.resolve(r.tgid, r.fd, r.sock_gen);
        let conn = GoConn {
            peer: s.peer,
            local: s.local,
        };
        if r.sock_gen != 0 {
            // Stale entries are harmless (their stamp never matches again); the bound is what
            // keeps them from piling up.
            if self.socks.len() >= GO_SOCKS_MAX {
                self.socks.clear();
            }
            self.socks.insert(key, (r.sock_gen, conn));
        }
        conn
    }
}

impl Source for Go {
    fn kinds(&self) -> &'static [u32] {
        record::KINDS
    }

    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), DecodeError> {
        let r = record::decode(kind, bytes)?;
        self.stats.add(Counter::Records, 1);
        made.extend(self.call(&r, cx));
        Ok(())
    }
}
