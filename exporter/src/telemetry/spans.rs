//! A [`Call`] as an OpenTelemetry span, with the stable HTTP semantic conventions.

use crate::protocols::call::Call;
use crate::protocols::Role;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("sightline")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

pub fn to_span(call: &Call, scope: &InstrumentationScope) -> SpanData {
    let trace_state = call
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let span_context = SpanContext::new(
        TraceId::from(call.trace_id),
        SpanId::from(call.span_id),
        TraceFlags::new(call.trace_flags),
        false,
        trace_state,
    );
    let start = UNIX_EPOCH + Duration::from_nanos(call.start_unix_ns);
    let end = start + Duration::from_nanos(call.duration_ns);
    let status = if call.is_error() {
        Status::Error {
            description: Cow::Borrowed(""),
        }
    } else {
        Status::Unset
    };
    SpanData {
        span_context,
        parent_span_id: call
            .parent_span_id
            .map(SpanId::from)
            .unwrap_or(SpanId::INVALID),
        parent_span_is_remote: call.parent_span_id.is_some(),
        span_kind: match call.role {
            Role::Client => SpanKind::Client,
            Role::Server => SpanKind::Server,
        },
        // The method only: a raw path as the name explodes cardinality.
        name: span_name(call),
        start_time: start,
        end_time: end.max(start),
        attributes: attributes(call),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

fn span_name(call: &Call) -> Cow<'static, str> {
    let method = match call.method.as_str() {
        "_OTHER" => "HTTP",
        m => m,
    };
    // A route is a template, so it names the span without exploding cardinality.
    match (&call.route, call.role) {
        (Some(r), Role::Server) => Cow::Owned(format!("{method} {r}")),
        _ => Cow::Owned(method.to_string()),
    }
}

fn attributes(c: &Call) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(14);
    a.push(KeyValue::new("http.request.method", c.method.clone()));
    if let Some(m) = &c.method_original {
        a.push(KeyValue::new("http.request.method_original", m.clone()));
    }
    if c.status != 0 {
        a.push(KeyValue::new("http.response.status_code", c.status as i64));
    }
    if let Some(t) = c.error_type() {
        a.push(KeyValue::new("error.type", t));
    }
    a.push(KeyValue::new(
        "network.protocol.version",
        c.protocol_version,
    ));
    if let Some(p) = c.peer {
        a.push(KeyValue::new("network.peer.address", p.ip().to_string()));
        a.push(KeyValue::new("network.peer.port", p.port() as i64));
    }
    if let Some(l) = c.local {
        a.push(KeyValue::new("network.local.address", l.ip().to_string()));
        a.push(KeyValue::new("network.local.port", l.port() as i64));
    }
    match c.role {
        Role::Server => {
            a.push(KeyValue::new("url.path", c.path.clone()));
            if let Some(r) = &c.route {
                a.push(KeyValue::new("http.route", r.clone()));
            }
            a.push(KeyValue::new("url.scheme", c.scheme));
            if let Some(q) = &c.query {
                a.push(KeyValue::new("url.query", q.clone()));
            }
            if let Some(h) = &c.host {
                a.push(KeyValue::new("server.address", h.clone()));
            }
            if let Some(p) = c.server_port() {
                a.push(KeyValue::new("server.port", p as i64));
            }
            if let Some(p) = c.peer {
                a.push(KeyValue::new("client.address", p.ip().to_string()));
            }
        }
        Role::Client => {
            a.push(KeyValue::new("url.full", c.url_full()));
            let server = c
                .host
                .clone()
                .or_else(|| c.peer.map(|p| p.ip().to_string()));
            if let Some(h) = server {
                a.push(KeyValue::new("server.address", h));
            }
            if let Some(p) = c.server_port() {
                a.push(KeyValue::new("server.port", p as i64));
            }
        }
    }
    if let Some(ua) = &c.user_agent {
        a.push(KeyValue::new("user_agent.original", ua.clone()));
    }
    if let Some(n) = &c.network {
        a.push(KeyValue::new(
            "sightline.tcp.retransmits",
            n.retransmits as i64,
        ));
        a.push(KeyValue::new(
            "sightline.tcp.connection.new",
            n.new_connection,
        ));
        if let Some(rtt) = n.srtt_us {
            a.push(KeyValue::new("sightline.tcp.rtt", rtt as f64 / 1e6));
        }
        if let Some(d) = n.connect_ns {
            a.push(KeyValue::new(
                "sightline.tcp.connect.duration",
                d as f64 / 1e9,
            ));
        }
    }
    a
}

/// Wall-clock time for a span, used by sinks that print.
pub fn system_time(unix_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_ns)
}
