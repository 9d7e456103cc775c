//! RED histograms per observed process, and sightline's own counters.
//!
//! Each process has its own resource, so each gets an `SdkMeterProvider`. They share no
//! threads: each has a manual reader, and one export task collects them all in turn.

use super::counters::{CounterDef, Stats, COUNTERS};
use crate::metadata::{common_resource_attributes, process_resource};
use crate::protocols::call::Call;
use crate::protocols::{DropReason, Role};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Semconv's advised buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A manual reader the provider owns and our export task can also reach.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, p: Weak<Pipeline>) {
        self.0.register_pipeline(p)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, t: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(t)
    }
    fn temporality(&self, k: InstrumentKind) -> Temporality {
        self.0.temporality(k)
    }
}

struct Instruments {
    // Kept alive: dropping the provider shuts its pipeline down.
    _provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    server: Histogram<f64>,
    client: Histogram<f64>,
    /// The process is gone: export once more, then forget it.
    exited: bool,
}

fn new_provider(resource: Resource) -> (SdkMeterProvider, Arc<ManualReader>) {
    // Cumulative is what Prometheus and most backends expect from a long-running agent.
    let reader = Arc::new(
        ManualReader::builder()
            .with_temporality(Temporality::Cumulative)
            .build(),
    );
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(SharedReader(reader.clone()))
        .build();
    (provider, reader)
}

pub struct Metrics {
    procs: Mutex<HashMap<u32, Instruments>>,
    extra: Vec<(String, String)>,
    own: (SdkMeterProvider, Arc<ManualReader>),
}

impl Metrics {
    pub fn new(stats: Arc<Stats>, extra: Vec<(String, String)>) -> Metrics {
        let own_resource = Resource::builder_empty()
            .with_attributes(
                [
                    KeyValue::new("process.pid", std::process::id() as i64),
                    KeyValue::new("process.executable.name", "sightline"),
                ]
                .into_iter()
                .chain(common_resource_attributes(&extra)),
            )
            .with_service_name("sightline")
            .build();
        let own = new_provider(own_resource);
        register_own(&own.0, stats);
        Metrics {
            procs: Mutex::new(HashMap::new()),
            extra,
            own,
        }
    }

    pub fn record(&self, call: &Call) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let inst = procs.entry(call.process.pid).or_insert_with(|| {
            let (provider, reader) = new_provider(process_resource(&call.process, &self.extra));
            let meter = provider.meter("sightline");
            let hist = |name: &'static str, desc: &'static str| {
                meter
                    .f64_histogram(name)
                    .with_unit("s")
                    .with_description(desc)
                    .with_boundaries(DURATION_BUCKETS.to_vec())
                    .build()
            };
            Instruments {
                server: hist(
                    "http.server.request.duration",
                    "Duration of HTTP server requests.",
                ),
                client: hist(
                    "http.client.request.duration",
                    "Duration of HTTP client requests.",
                ),
                _provider: provider,
                reader,
                exited: false,
            }
        });
        let secs = call.duration_ns as f64 / 1e9;
        let attrs = metric_attributes(call);
        match call.role {
            Role::Server => inst.server.record(secs, &attrs),
            Role::Client => inst.client.record(secs, &attrs),
        }
    }

    pub fn process_exited(&self, pid: u32) {
        if let Some(i) = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&pid)
        {
            i.exited = true;
        }
    }

    /// Collects every provider; processes that exited are collected a last time and dropped.
    pub fn collect(&self) -> Vec<ResourceMetrics> {
        let mut out = Vec::new();
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for inst in procs.values() {
            let mut rm = ResourceMetrics::default();
            if inst.reader.collect(&mut rm).is_ok() {
                out.push(rm);
            }
        }
        procs.retain(|_, i| !i.exited);
        drop(procs);
        let mut rm = ResourceMetrics::default();
        if self.own.1.collect(&mut rm).is_ok() {
            out.push(rm);
        }
        out
    }
}

/// Low-cardinality attributes only: no path, no peer address.
fn metric_attributes(c: &Call) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("http.request.method", c.method.clone()),
        KeyValue::new("url.scheme", c.scheme),
        KeyValue::new("network.protocol.version", c.protocol_version),
    ];
    if c.status != 0 {
        a.push(KeyValue::new("http.response.status_code", c.status as i64));
    }
    if let Some(t) = c.error_type() {
        a.push(KeyValue::new("error.type", t));
    }
    if let (Role::Server, Some(r)) = (c.role, &c.route) {
        a.push(KeyValue::new("http.route", r.clone()));
    }
    if c.role == Role::Client {
        if let Some(h) = c
            .host
            .clone()
            .or_else(|| c.peer.map(|p| p.ip().to_string()))
        {
            a.push(KeyValue::new("server.address", h));
        }
        if let Some(p) = c.server_port() {
            a.push(KeyValue::new("server.port", p as i64));
        }
    }
    a
}

fn register_own(provider: &SdkMeterProvider, stats: Arc<Stats>) {
    let meter = provider.meter("sightline");
    let mut metrics: Vec<&'static str> = Vec::new();
    for d in &COUNTERS {
        if !metrics.contains(&d.metric) {
            metrics.push(d.metric);
        }
    }
    for metric in metrics {
        let defs: Vec<&'static CounterDef> =
            COUNTERS.iter().filter(|d| d.metric == metric).collect();
        let stats = stats.clone();
        let _ = meter
            .u64_observable_counter(metric)
            .with_description(defs[0].description)
            .with_callback(move |o| {
                // Rows with the same attributes are one series: their sum.
                let mut series: Vec<(&[(&str, &str)], u64)> = Vec::new();
                for d in &defs {
                    let v = stats.get(d.counter);
                    match series.iter_mut().find(|(a, _)| *a == d.attributes) {
                        Some((_, sum)) => *sum += v,
                        None => series.push((d.attributes, v)),
                    }
                }
                for (attrs, v) in series {
                    let kv: Vec<KeyValue> =
                        attrs.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
                    o.observe(v, &kv);
                }
            })
            .build();
    }
    let _ = meter
        .u64_observable_counter("sightline.parse.dropped")
        .with_description("Captured bytes given up on, by reason.")
        .with_callback(move |o| {
            for r in DropReason::ALL {
                o.observe(
                    stats.parse_dropped(r),
                    &[KeyValue::new("reason", r.as_str())],
                );
            }
        })
        .build();
}
