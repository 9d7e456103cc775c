//! A Go net/http record as a call. The Go probes see requests as Go's own structs, so no bytes
//! are parsed: what remains is naming and addresses.

use crate::metadata::ProcessInfo;
use crate::protocols::call::{split_host, Call};
use crate::protocols::{self, Conventions, Role};
use crate::sources::go::record::GoRecord;
use sightline_common::go_role;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where a Go call sits among its process's requests (its goroutine and the request whose
/// handling made it), and the ids the kernel chose for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Goroutine {
    pub tgid: u32,
    pub goid: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub parent_goid: u64,
    pub parent_start_ns: u64,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: u64,
    pub trace_flags: u8,
    /// Server: `trace_id` and `parent_span_id` are an incoming traceparent's.
    pub trace_given: bool,
    /// Client: the request carried a `traceparent` naming this call.
    pub injected: bool,
}

impl From<&GoRecord> for Goroutine {
    fn from(r: &GoRecord) -> Goroutine {
        Goroutine {
            tgid: r.tgid,
            goid: r.goid,
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            parent_goid: r.parent_goid,
            parent_start_ns: r.parent_start_ns,
            trace_id: r.trace_id,
            span_id: r.span_id,
            parent_span_id: r.parent_span_id,
            trace_flags: r.trace_flags,
            trace_given: r.trace_given,
            injected: r.injected,
        }
    }
}

/// Where the call's socket ends are, when the probes could follow its fd.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoConn {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// A Go record as a call: everything but its trace, which `correlate` decides.
pub fn call(process: Arc<ProcessInfo>, r: &GoRecord, conn: GoConn, conv: &Conventions) -> Call {
    let role = if r.role == go_role::CLIENT {
        Role::Client
    } else {
        Role::Server
    };
    let (method, method_original) = protocols::method(&r.method);
    let (host, host_port) = split_host(Some(&r.host));
    let scheme = match role {
        Role::Client if r.scheme == "https" => "https",
        Role::Client => "http",
        Role::Server if r.tls => "https",
        Role::Server => "http",
    };
    let query = (!r.query.is_empty()).then(|| conv.query(&r.query));
    let peer = match role {
        Role::Server => r.addr.parse().ok().or(conn.peer),
        Role::Client => conn.peer,
    };
    Call {
        process,
        role,
        method,
        method_original,
        path: if r.path.is_empty() {
            "/".into()
        } else {
            r.path.clone()
        },
        query,
        absolute_authority: None,
        status: u16::try_from(r.status).unwrap_or(0),
        route: (!r.pattern.is_empty()).then(|| route_of(&r.pattern)),
        protocol_version: match (r.proto_major, r.proto_minor) {
            (2, _) => "2",
            (1, 0) => "1.0",
            _ => "1.1",
        },
        scheme,
        host,
        host_port,
        peer,
        local: conn.local,
        user_agent: None,
        start_unix_ns: conv.unix_ns(r.start_ns),
        duration_ns: r.end_ns.saturating_sub(r.start_ns),
        trace_id: 0,
        span_id: 0,
        parent_span_id: None,
        trace_flags: 1,
        tracestate: None,
        network: None,
    }
}

/// A ServeMux pattern (`GET /items/{id}`, `example.com/static/`) as `http.route`: the path
/// part, since the method and host are attributes of their own.
fn route_of(pattern: &str) -> String {
    let p = pattern.split_once(' ').map_or(pattern, |(_, p)| p).trim();
    match p.find('/') {
        Some(i) => p[i..].to_string(),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_drop_method_and_host() {
        assert_eq!(route_of("GET /items/{id}"), "/items/{id}");
        assert_eq!(route_of("example.com/static/"), "/static/");
        assert_eq!(route_of("/"), "/");
    }
}
