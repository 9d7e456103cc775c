//! Go net/http records → calls. The Go probes see requests as Go's own structs, so no bytes
//! are parsed here; what remains is naming, addresses and the trace relation between a
//! server request and the client calls its handler made.

use crate::events::GoRecord;
use crate::processes::ProcessInfo;
use crate::protocols::Role;
use crate::telemetry::call::{split_host, Call};
use crate::telemetry::redact::redact_query;
use crate::telemetry::trace_context::{new_span_id, new_trace_id, parse_traceparent};
use rustc_hash::FxHashMap;
use sightline_common::go_role;
use std::net::SocketAddr;
use std::sync::Arc;

/// A server request's trace ids are fixed by whichever of its records is read first: a client
/// call it made ends (and is read) before the request itself does.
type ServerKey = (u32, u64, u64);

/// Contexts older than this are dropped: their server request never ended (or was lost).
const CONTEXT_TTL_NS: u64 = 120_000_000_000;
/// Past this many open contexts the oldest half is dropped; joins are lost, never memory.
const MAX_CONTEXTS: usize = 65_536;

#[derive(Default)]
pub struct GoCalls {
    contexts: FxHashMap<ServerKey, (u128, u64, u8, u64)>,
}

/// Where the call's socket ends are, when the probes could follow its fd.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoConn {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

impl GoCalls {
    /// The (trace id, span id, flags) of a server request, fixed on first use; an incoming
    /// `traceparent` decides the trace.
    fn server_context(
        &mut self,
        key: ServerKey,
        traceparent: &str,
    ) -> (u128, u64, u8, Option<u64>) {
        let incoming = parse_traceparent(traceparent);
        let e = self.contexts.entry(key).or_insert_with(|| {
            let (trace, flags) = incoming.map_or((new_trace_id(), 1), |t| (t.trace_id, t.flags));
            (trace, new_span_id(), flags, key.2)
        });
        (e.0, e.1, e.2, incoming.map(|t| t.span_id))
    }

    pub fn call(
        &mut self,
        process: Arc<ProcessInfo>,
        r: &GoRecord,
        conn: GoConn,
        redact_query_values: bool,
        mono_to_unix_ns: i128,
    ) -> Call {
        let role = if r.role == go_role::CLIENT {
            Role::Client
        } else {
            Role::Server
        };
        let (trace_id, span_id, parent_span_id, trace_flags) = match role {
            Role::Server => {
                let key = (r.tgid, r.goid, r.start_ns);
                let (t, s, f, parent) = self.server_context(key, &r.traceparent);
                self.contexts.remove(&key);
                (t, s, parent, f)
            }
            Role::Client if r.parent_goid != 0 => {
                let key = (r.tgid, r.parent_goid, r.parent_start_ns);
                let (t, parent, f, _) = self.server_context(key, &r.traceparent);
                (t, new_span_id(), Some(parent), f)
            }
            Role::Client => (new_trace_id(), new_span_id(), None, 1),
        };
        let known = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let (method, method_original) = if known.contains(&r.method.as_str()) {
            (r.method.clone(), None)
        } else {
            ("_OTHER".to_string(), Some(r.method.clone()))
        };
        let (host, host_port) = split_host(Some(&r.host));
        let scheme = match role {
            Role::Client if r.scheme == "https" => "https",
            Role::Client => "http",
            Role::Server if r.tls => "https",
            Role::Server => "http",
        };
        let query = (!r.query.is_empty()).then(|| {
            if redact_query_values {
                redact_query(&r.query)
            } else {
                r.query.clone()
            }
        });
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
            start_unix_ns: (r.start_ns as i128 + mono_to_unix_ns).max(0) as u64,
            duration_ns: r.end_ns.saturating_sub(r.start_ns),
            trace_id,
            span_id,
            parent_span_id,
            trace_flags,
            tracestate: None,
        }
    }

    /// Drops contexts whose server request is long gone.
    pub fn expire(&mut self, now_mono_ns: u64) {
        self.contexts
            .retain(|_, v| now_mono_ns.saturating_sub(v.3) < CONTEXT_TTL_NS);
        if self.contexts.len() > MAX_CONTEXTS {
            let mut ages: Vec<u64> = self.contexts.values().map(|v| v.3).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.contexts.retain(|_, v| v.3 >= cut);
        }
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

    fn rec(role: u32, goid: u64, start: u64) -> GoRecord {
        GoRecord {
            role,
            tgid: 7,
            goid,
            start_ns: start,
            end_ns: start + 10,
            method: "GET".into(),
            path: "/a".into(),
            proto_major: 1,
            proto_minor: 1,
            ..Default::default()
        }
    }

    fn process() -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo::from_parts(7, "svc".into(), "svc".into(), b""))
    }

    #[test]
    fn a_client_call_read_first_is_still_the_child_of_its_server_request() {
        let mut g = GoCalls::default();
        let mut client = rec(go_role::CLIENT, 9, 150);
        client.parent_goid = 5;
        client.parent_start_ns = 100;
        let c = g.call(process(), &client, GoConn::default(), true, 0);
        let s = g.call(
            process(),
            &rec(go_role::SERVER, 5, 100),
            GoConn::default(),
            true,
            0,
        );
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent_span_id, Some(s.span_id));
        assert_eq!(s.parent_span_id, None);
        assert!(g.contexts.is_empty());
    }

    #[test]
    fn an_incoming_traceparent_is_continued_by_server_and_children() {
        let mut g = GoCalls::default();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut server = rec(go_role::SERVER, 5, 100);
        server.traceparent = tp.into();
        let mut client = rec(go_role::CLIENT, 5, 120);
        client.parent_goid = 5;
        client.parent_start_ns = 100;
        client.traceparent = tp.into();
        let c = g.call(process(), &client, GoConn::default(), true, 0);
        let s = g.call(process(), &server, GoConn::default(), true, 0);
        assert_eq!(s.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(s.parent_span_id, Some(0xb7ad6b7169203331));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent_span_id, Some(s.span_id));
    }

    #[test]
    fn routes_drop_method_and_host() {
        assert_eq!(route_of("GET /items/{id}"), "/items/{id}");
        assert_eq!(route_of("example.com/static/"), "/static/");
        assert_eq!(route_of("/"), "/");
    }
}
