//! RED histograms per observed process, and sightline's own counters.
//!
//! Each process has its own resource, so each gets an `SdkMeterProvider`. They share no
//! threads: each has a manual reader, and one export task collects them all in turn.

use super::call::Call;
use super::stats::Stats;
use crate::processes::ProcessInfo;
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
use std::sync::atomic::Ordering::Relaxed;
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

/// Builds the resource every signal of an observed process carries.
pub fn process_resource(p: &ProcessInfo, extra: &[(String, String)]) -> Resource {
    let mut attrs: Vec<KeyValue> = vec![
        KeyValue::new("process.pid", p.pid as i64),
        KeyValue::new("process.executable.name", p.exe_name.clone()),
        KeyValue::new("process.executable.path", p.exe_path.clone()),
    ];
    attrs.extend(common_resource_attributes(extra));
    attrs.extend(
        p.attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    Resource::builder_empty()
        .with_attributes(attrs)
        .with_service_name(p.service_name.clone())
        .build()
}

fn common_resource_attributes(extra: &[(String, String)]) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("host.name", host_name()),
        KeyValue::new("telemetry.sdk.name", "sightline"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    v.extend(
        extra
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    v
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
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
    type Read = fn(&Stats) -> u64;
    let simple: [(&'static str, &'static str, Read); 10] = [
        (
            "sightline.events.lost",
            "Capture records lost because the ring buffer was full.",
            |s| s.events_lost.load(Relaxed),
        ),
        (
            "sightline.records",
            "Capture records received from the kernel.",
            |s| s.records.load(Relaxed),
        ),
        (
            "sightline.records.truncated",
            "Capture records cut at the capture size.",
            |s| s.records_truncated.load(Relaxed),
        ),
        (
            "sightline.records.undecodable",
            "Capture records that could not be decoded.",
            |s| s.records_undecodable.load(Relaxed),
        ),
        (
            "sightline.attach.failures",
            "Probes that could not be attached.",
            |s| s.attach_failures.load(Relaxed),
        ),
        ("sightline.calls", "HTTP calls reconstructed.", |s| {
            s.calls.load(Relaxed)
        }),
        (
            "sightline.calls.deduplicated",
            "Requests seen by two capture points (a Go program on OpenSSL: the Go and the OpenSSL probes), reported once.",
            |s| s.calls_deduplicated.load(Relaxed),
        ),
        (
            "sightline.spans.dropped",
            "Spans dropped because the export queue was full or the export failed.",
            |s| s.spans_dropped.load(Relaxed),
        ),
        (
            "sightline.spans.exported",
            "Spans accepted by the collector.",
            |s| s.spans_exported.load(Relaxed),
        ),
        (
            "sightline.kernel.calls.untracked",
            "Library calls not tracked (no in-flight slot, unreadable memory, or a return without its entry).",
            |s| {
                s.kernel_active_full.load(Relaxed)
                    + s.kernel_read_failed.load(Relaxed)
                    + s.kernel_orphan_returns.load(Relaxed)
            },
        ),
    ];
    for (name, desc, read) in simple {
        let stats = stats.clone();
        let _ = meter
            .u64_observable_counter(name)
            .with_description(desc)
            .with_callback(move |o| o.observe(read(&stats), &[]))
            .build();
    }
    let injection = stats.clone();
    let _ = meter
        .u64_observable_counter("sightline.traceparent.injections")
        .with_description("Outgoing Go requests sightline was to write a traceparent into, by where (via: socket for plaintext HTTP/1.x, memory for HTTPS and HTTP/2) and outcome: written; skipped (sent untouched: at the socket, the first bytes were not a request line it could extend; in memory, the request's buffer had no room or held an unexpected frame); no_socket (the connection could not take the socket program).")
        .with_callback(move |o| {
            for (via, outcome, n) in [
                ("socket", "written", &injection.traceparent_injected),
                ("socket", "skipped", &injection.traceparent_skipped),
                ("socket", "no_socket", &injection.traceparent_sockets_full),
                ("memory", "written", &injection.traceparent_written_in_process),
                ("memory", "skipped", &injection.traceparent_write_skipped),
            ] {
                o.observe(
                    n.load(Relaxed),
                    &[KeyValue::new("via", via), KeyValue::new("outcome", outcome)],
                );
            }
        })
        .build();
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
