//! OTLP requests flattened into rows that tests can assert on directly.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    S(String),
    I(i64),
    B(bool),
    D(f64),
    Other,
}

impl Val {
    pub fn s(&self) -> &str {
        match self {
            Val::S(s) => s,
            _ => "",
        }
    }
}

pub type Attrs = BTreeMap<String, Val>;

pub fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Val::S(s.clone()),
                Some(Value::IntValue(i)) => Val::I(*i),
                Some(Value::BoolValue(b)) => Val::B(*b),
                Some(Value::DoubleValue(d)) => Val::D(*d),
                _ => Val::Other,
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// `Span.kind` as OTLP numbers it (SPAN_KIND_SERVER, SPAN_KIND_CLIENT).
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

#[derive(Debug, Clone)]
pub struct FlatSpan {
    pub resource: Attrs,
    pub scope: String,
    pub name: String,
    /// 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attrs: Attrs,
    /// 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl FlatSpan {
    pub fn attr(&self, k: &str) -> Option<&Val> {
        self.attrs.get(k)
    }
    pub fn service(&self) -> &str {
        self.resource.get("service.name").map(Val::s).unwrap_or("")
    }
}

pub fn spans(reqs: &[ExportTraceServiceRequest]) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for r in reqs {
        for rs in &r.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for s in &ss.spans {
                    out.push(FlatSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        name: s.name.clone(),
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attrs: attrs(&s.attributes),
                        status: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                    });
                }
            }
        }
    }
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone)]
pub struct FlatPoint {
    pub resource: Attrs,
    pub metric: String,
    pub unit: String,
    pub attrs: Attrs,
    pub count: u64,
    pub sum: f64,
    pub bounds: Vec<f64>,
    /// Monotonic counters' value (for sums).
    pub value: i64,
    /// 1 delta, 2 cumulative.
    pub temporality: i32,
}

/// Histogram and sum points of every export, in arrival order.
pub fn points(reqs: &[ExportMetricsServiceRequest]) -> Vec<FlatPoint> {
    let mut out = Vec::new();
    for r in reqs {
        for rm in &r.resource_metrics {
            let resource = rm
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    match &m.data {
                        Some(Data::Histogram(h)) => {
                            for p in &h.data_points {
                                out.push(FlatPoint {
                                    resource: resource.clone(),
                                    metric: m.name.clone(),
                                    unit: m.unit.clone(),
                                    attrs: attrs(&p.attributes),
                                    count: p.count,
                                    sum: p.sum.unwrap_or(0.0),
                                    bounds: p.explicit_bounds.clone(),
                                    value: 0,
                                    temporality: h.aggregation_temporality,
                                });
                            }
                        }
                        Some(Data::Sum(s)) => {
                            for p in &s.data_points {
                                let value = match p.value {
                                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => i,
                                    Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d)) => d as i64,
                                    None => 0,
                                };
                                out.push(FlatPoint {
                                    resource: resource.clone(),
                                    metric: m.name.clone(),
                                    unit: m.unit.clone(),
                                    attrs: attrs(&p.attributes),
                                    count: 0,
                                    sum: 0.0,
                                    bounds: Vec::new(),
                                    value,
                                    temporality: s.aggregation_temporality,
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    out
}
