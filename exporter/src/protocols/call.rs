//! A finished HTTP call, whichever capture point and protocol it came from, with everything
//! every later stage needs decided once: names, redacted query, wall-clock times and trace ids
//! (which `correlate` may still change).

use super::http1::Exchange;
use super::trace_context::{new_span_id, new_trace_id, parse_traceparent};
use super::{Conventions, Role};
use crate::metadata::ProcessInfo;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub process: Arc<ProcessInfo>,
    pub role: Role,
    /// A known method, or `_OTHER` as semconv asks, to bound cardinality.
    pub method: String,
    /// The method as sent, when it is not a known one.
    pub method_original: Option<String>,
    pub path: String,
    /// Redacted unless redaction is turned off.
    pub query: Option<String>,
    /// Absolute-form targets (proxies) carry their own scheme and authority.
    pub absolute_authority: Option<String>,
    pub status: u16,
    /// The server's route template (`http.route`), when the framework exposes it.
    pub route: Option<String>,
    pub protocol_version: &'static str,
    pub scheme: &'static str,
    /// From the `Host` header, without the port.
    pub host: Option<String>,
    pub host_port: Option<u16>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub user_agent: Option<String>,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub trace_flags: u8,
    pub tracestate: Option<String>,
    /// What the call's TCP connection did while it ran, when the network signals saw it.
    pub network: Option<NetPart>,
}

/// The network's part of a call: whether a slow call was the network's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetPart {
    /// Segments the process's end retransmitted between the call's start and end.
    pub retransmits: u32,
    /// The connection's smoothed RTT as last sampled.
    pub srtt_us: Option<u32>,
    /// The call was the connection's first.
    pub new_connection: bool,
    /// A client's first call: the handshake it waited for.
    pub connect_ns: Option<u64>,
}

/// Connection facts that the HTTP bytes don't carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnFacts {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub tls: bool,
}

impl Call {
    /// An HTTP/1.x exchange as a call. Its ids continue an incoming `traceparent`; without
    /// one they are 0, for `correlate` to decide (a join, or [`Call::fresh_ids`]).
    pub fn from_http1(
        process: Arc<ProcessInfo>,
        ex: Exchange,
        conn: ConnFacts,
        conv: &Conventions,
    ) -> Call {
        // Taken by value: the head's strings become the call's without copies.
        let req = ex.request;
        let (method, method_original) = super::method_owned(req.method);
        let scheme = if conn.tls { "https" } else { "http" };
        // Absolute-form (`GET http://host/path`) is what proxies receive.
        let (absolute_authority, target) = match req.target.split_once("://") {
            Some((_, rest)) if !req.target.starts_with('/') => {
                let (auth, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                // `user:password@host`: the credentials never leave the host.
                let auth = auth.rsplit_once('@').map_or(auth, |(_, host)| host);
                (Some(auth.to_string()), path)
            }
            _ => (None, req.target.as_str()),
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let query = query.map(|q| conv.query(q));
        let (host, host_port) = split_host(req.host.as_deref().or(absolute_authority.as_deref()));

        let incoming = match ex.role {
            Role::Server => req.traceparent.as_deref().and_then(parse_traceparent),
            Role::Client => None,
        };
        let (trace_id, span_id, parent_span_id, trace_flags) = match incoming {
            Some(tp) => (tp.trace_id, new_span_id(), Some(tp.span_id), tp.flags),
            None => (0, 0, None, 1),
        };
        let tracestate = incoming.and(req.tracestate);

        Call {
            process,
            role: ex.role,
            method,
            method_original,
            path: path.to_string(),
            query,
            absolute_authority,
            status: ex.response.status.unwrap_or(0),
            route: None,
            protocol_version: if req.minor == 0 { "1.0" } else { "1.1" },
            scheme,
            host,
            host_port,
            peer: conn.peer,
            local: conn.local,
            user_agent: req.user_agent,
            start_unix_ns: conv.unix_ns(ex.start_ns),
            duration_ns: ex.end_ns.saturating_sub(ex.start_ns),
            trace_id,
            span_id,
            parent_span_id,
            trace_flags,
            tracestate,
            network: None,
        }
    }

    /// Ids for a call that starts its own trace, where none are set.
    pub fn fresh_ids(&mut self) {
        if self.trace_id == 0 {
            self.trace_id = new_trace_id();
        }
        if self.span_id == 0 {
            self.span_id = new_span_id();
        }
    }

    /// Whether the call's trace came from an incoming `traceparent`: what the caller itself
    /// said wins over any join.
    pub fn continues_incoming(&self) -> bool {
        self.role == Role::Server && self.parent_span_id.is_some()
    }

    /// `url.full` for CLIENT spans, with the query already redacted.
    pub fn url_full(&self) -> String {
        let authority = match (&self.host, self.host_port) {
            (Some(h), Some(p)) => format!("{}:{p}", bracket(h)),
            (Some(h), None) => bracket(h),
            (None, _) => match self.peer {
                Some(p) => p.to_string(),
                None => "unknown".to_string(),
            },
        };
        let mut url = format!("{}://{authority}{}", self.scheme, self.path);
        if let Some(q) = &self.query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    /// `server.port`: the Host header's, else the socket's (the peer for clients, the local
    /// end for servers), else the scheme's default.
    pub fn server_port(&self) -> Option<u16> {
        let socket = match self.role {
            Role::Client => self.peer,
            Role::Server => self.local,
        };
        self.host_port
            .or(socket.map(|a| a.port()))
            .or(Some(if self.scheme == "https" { 443 } else { 80 }))
    }

    /// `error.type` per semconv: the status code when it is an error, `_OTHER` without one.
    pub fn error_type(&self) -> Option<String> {
        self.is_error().then(|| match self.status {
            0 => "_OTHER".to_string(),
            s => s.to_string(),
        })
    }

    /// Error status per semconv: 5xx for servers, 4xx and 5xx for clients.
    pub fn is_error(&self) -> bool {
        match self.role {
            Role::Server => self.status >= 500 || self.status == 0,
            Role::Client => self.status >= 400 || self.status == 0,
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `example.com:8443` → (`example.com`, 8443); `[::1]:80` → (`::1`, 80).
pub fn split_host(h: Option<&str>) -> (Option<String>, Option<u16>) {
    let Some(h) = h.map(str::trim).filter(|h| !h.is_empty()) else {
        return (None, None);
    };
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (Some(addr.to_string()), port);
        }
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (Some(host.to_string()), Some(p)),
            Err(_) => (Some(h.to_string()), None),
        },
        _ => (Some(h.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::http1::{parse_head, Response};

    fn exchange(role: Role, req: &[u8], resp: &[u8]) -> Exchange {
        Exchange {
            role,
            request: parse_head(req).unwrap().unwrap().0,
            response: Response {
                status: parse_head(resp).unwrap().unwrap().0.status,
            },
            start_ns: 1_000,
            end_ns: 3_500,
        }
    }

    fn proc() -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo::from_parts(
            7,
            "/usr/bin/curl".into(),
            "curl".into(),
            b"",
        ))
    }

    #[test]
    fn server_call_continues_the_incoming_trace() {
        let ex = exchange(
            Role::Server,
            b"GET /api/items?token=s3cret&page=2 HTTP/1.1\r\nHost: shop.example:8443\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: k=v\r\n\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        );
        let c = Call::from_http1(
            proc(),
            ex,
            ConnFacts {
                peer: None,
                local: None,
                tls: true,
            },
            &Conventions {
                redact_query_values: true,
                mono_to_unix_ns: 10,
            },
        );
        assert_eq!(c.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(c.parent_span_id, Some(0xb7ad6b7169203331));
        assert_eq!(c.tracestate.as_deref(), Some("k=v"));
        assert_eq!(c.path, "/api/items");
        assert_eq!(c.query.as_deref(), Some("token=REDACTED&page=REDACTED"));
        assert_eq!(c.host.as_deref(), Some("shop.example"));
        assert_eq!(c.server_port(), Some(8443));
        assert_eq!(c.start_unix_ns, 1_010);
        assert_eq!(c.duration_ns, 2_500);
        assert!(c.is_error());
    }

    #[test]
    fn userinfo_in_an_absolute_target_is_dropped() {
        let ex = exchange(
            Role::Server,
            b"GET http://alice:s3cret@upstream.example:8080/x?q=1 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let c = Call::from_http1(
            proc(),
            ex,
            ConnFacts::default(),
            &Conventions {
                redact_query_values: true,
                mono_to_unix_ns: 0,
            },
        );
        assert_eq!(
            c.absolute_authority.as_deref(),
            Some("upstream.example:8080")
        );
        assert_eq!(c.host.as_deref(), Some("upstream.example"));
        assert_eq!(c.url_full(), "http://upstream.example:8080/x?q=REDACTED");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn client_call_builds_a_redacted_url() {
        let ex = exchange(
            Role::Client,
            b"BREW /pot?sugar=2 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\n\r\n",
        );
        let peer: SocketAddr = "[::1]:8443".parse().unwrap();
        let c = Call::from_http1(
            proc(),
            ex,
            ConnFacts {
                peer: Some(peer),
                local: None,
                tls: true,
            },
            &Conventions {
                redact_query_values: true,
                mono_to_unix_ns: 0,
            },
        );
        assert_eq!(c.method, "_OTHER");
        assert_eq!(c.method_original.as_deref(), Some("BREW"));
        assert_eq!(c.url_full(), "https://[::1]:8443/pot?sugar=REDACTED");
        assert_eq!(c.parent_span_id, None);
        assert!(c.is_error());
    }
}
