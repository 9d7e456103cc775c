//! RED histograms per observed process, and sightline's own counters.
//!
//! Each process has its own resource, so each gets an `SdkMeterProvider`. They share no
//! threads: each has a manual reader, and one export task collects them all in turn.

use super::counters::{self, CounterDef, Stats, TableStats, COUNTERS};
use crate::capture::sockets::Role as NetRole;
use crate::metadata::{common_resource_attributes, process_resource, ProcessInfo};
use crate::protocols::call::Call;
use crate::protocols::{DropReason, Role};
use crate::sources::tcp::{NetEvent, NetKind};
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::Resource;
use sightline_common::table;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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

/// Buckets for round-trip and connect times, in seconds: from a same-rack 50 µs to a
/// retransmitted SYN's seconds.
pub const RTT_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    3.0,
];
/// Buckets for connection lifetimes, in seconds.
pub const LIFETIME_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// The network signals' instruments of one process.
struct NetInstruments {
    connections: Counter<u64>,
    bytes: Counter<u64>,
    segments: Counter<u64>,
    retransmits: Counter<u64>,
    resets: Counter<u64>,
    rtt: Histogram<f64>,
    connect: Histogram<f64>,
    lifetime: Histogram<f64>,
}

impl NetInstruments {
    fn new(meter: &Meter) -> NetInstruments {
        let counter = |name: &'static str, unit: &'static str, desc: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(desc)
                .build()
        };
        let hist = |name: &'static str, desc: &'static str, b: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(desc)
                .with_boundaries(b.to_vec())
                .build()
        };
        NetInstruments {
            connections: counter("sightline.tcp.connections", "{connection}", "TCP connections opened (outcome: established) or failed to open (outcome: refused, timeout, unreachable, abandoned, error), by role (client: the process connected; server: it accepted)."),
            bytes: counter("sightline.tcp.bytes", "By", "TCP payload bytes: sent and acknowledged by the peer (network.io.direction: transmit), or received (receive)."),
            segments: counter("sightline.tcp.segments", "{segment}", "TCP segments sent (network.io.direction: transmit) or received (receive)."),
            retransmits: counter("sightline.tcp.retransmits", "{segment}", "TCP segments retransmitted, SYNs included: the kernel's own count (as nstat's TcpRetransSegs)."),
            resets: counter("sightline.tcp.resets", "{reset}", "TCP resets sent (network.io.direction: transmit) or received (receive) on the process's connections."),
            rtt: hist("sightline.tcp.rtt", "Smoothed round-trip time of busy TCP connections, sampled at most once a second each and at close.", &RTT_BUCKETS),
            connect: hist("sightline.tcp.connect.duration", "Time from a client's SYN to the established connection, retransmitted SYNs included.", &RTT_BUCKETS),
            lifetime: hist("sightline.tcp.connection.duration", "How long TCP connections lived, from open to close.", &LIFETIME_BUCKETS),
        }
    }
}

struct Instruments {
    // Kept alive: dropping the provider shuts its pipeline down.
    _provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    server: Histogram<f64>,
    client: Histogram<f64>,
    net: NetInstruments,
    /// The process is gone: each reader collects it once more, then it is forgotten.
    exited: bool,
    /// Collections since it exited, per [`Reader`].
    seen_after_exit: [u8; 2],
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

/// Who reads the metrics: each must see an exited process's last values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Otlp = 0,
    Prometheus = 1,
}

impl Reader {
    /// Collections after a process's exit before this reader lets it go: an OTLP export sends
    /// the final cumulative values once; a Prometheus series needs two samples for `rate()`
    /// to see it, and a short-lived client may exit before its second scrape.
    fn last_looks(self) -> u8 {
        match self {
            Reader::Otlp => 1,
            Reader::Prometheus => 2,
        }
    }
}

pub struct Metrics {
    procs: Mutex<HashMap<u32, Instruments>>,
    /// The readers in use.
    readers: Vec<Reader>,
    extra: Vec<(String, String)>,
    own: (SdkMeterProvider, Arc<ManualReader>),
}

impl Metrics {
    /// Metrics that `readers` collect.
    pub fn new(stats: Arc<Stats>, extra: Vec<(String, String)>, readers: &[Reader]) -> Metrics {
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
            readers: readers.to_vec(),
            extra,
            own,
        }
    }

    /// The instruments of `process`, made at its first call or connection.
    fn with<R>(&self, process: &ProcessInfo, f: impl FnOnce(&Instruments) -> R) -> R {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let inst = procs.entry(process.pid).or_insert_with(|| {
            let (provider, reader) = new_provider(process_resource(process, &self.extra));
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
                net: NetInstruments::new(&meter),
                _provider: provider,
                reader,
                exited: false,
                seen_after_exit: [0; 2],
            }
        });
        f(inst)
    }

    pub fn record(&self, call: &Call) {
        let secs = call.duration_ns as f64 / 1e9;
        let attrs = metric_attributes(call);
        self.with(&call.process, |inst| match call.role {
            Role::Server => inst.server.record(secs, &attrs),
            Role::Client => inst.client.record(secs, &attrs),
        })
    }

    /// A TCP connection event: counters add what it did since its previous event.
    pub fn record_net(&self, e: &NetEvent) {
        let attrs = net_attributes(e);
        let with = |k: &'static str, v: &'static str| {
            let mut a = attrs.clone();
            a.push(KeyValue::new(k, v));
            a
        };
        let secs = |ns: u64| ns as f64 / 1e9;
        self.with(&e.process, |inst| {
            let n = &inst.net;
            match e.kind {
                NetKind::Connected | NetKind::Accepted => {
                    n.connections.add(1, &with("outcome", "established"));
                    if let (NetKind::Connected, Some(d)) = (e.kind, e.duration_ns) {
                        n.connect.record(secs(d), &attrs);
                    }
                }
                NetKind::Failed(r) => n.connections.add(1, &with("outcome", r.as_str())),
                NetKind::ResetSent => n.resets.add(1, &with("network.io.direction", "transmit")),
                NetKind::ResetReceived => n.resets.add(1, &with("network.io.direction", "receive")),
                NetKind::Closed => {
                    if let Some(d) = e.duration_ns {
                        n.lifetime.record(secs(d), &attrs);
                    }
                }
                NetKind::Retransmit | NetKind::Sample => {}
            }
            let d = &e.delta;
            if d.bytes_sent > 0 {
                n.bytes
                    .add(d.bytes_sent, &with("network.io.direction", "transmit"));
            }
            if d.bytes_received > 0 {
                n.bytes
                    .add(d.bytes_received, &with("network.io.direction", "receive"));
            }
            if d.segs_out > 0 {
                n.segments
                    .add(d.segs_out, &with("network.io.direction", "transmit"));
            }
            if d.segs_in > 0 {
                n.segments
                    .add(d.segs_in, &with("network.io.direction", "receive"));
            }
            if d.retransmits > 0 {
                n.retransmits.add(d.retransmits, &attrs);
            }
            if let (NetKind::Sample | NetKind::Closed, Some(rtt)) = (e.kind, e.srtt_us) {
                n.rtt.record(rtt as f64 / 1e6, &attrs);
            }
        })
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

    /// Collects every provider for `reader`; a process that exited is collected its last times
    /// ([`Reader::last_looks`]) by each reader in use, then dropped.
    pub fn collect(&self, reader: Reader) -> Vec<ResourceMetrics> {
        let mut out = Vec::new();
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for inst in procs.values() {
            let mut rm = ResourceMetrics::default();
            if inst.reader.collect(&mut rm).is_ok() {
                out.push(rm);
            }
        }
        for i in procs.values_mut().filter(|i| i.exited) {
            let n = &mut i.seen_after_exit[reader as usize];
            *n = n.saturating_add(1);
        }
        let readers = &self.readers;
        procs.retain(|_, i| {
            !(i.exited
                && readers
                    .iter()
                    .all(|r| i.seen_after_exit[*r as usize] >= r.last_looks()))
        });
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

/// A connection's service pair and direction: the process is the resource; the peer is its
/// address, its service when it runs on this host, and the server's port. A server's peer
/// port is ephemeral, so it is left out.
fn net_attributes(e: &NetEvent) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("network.transport", "tcp"),
        KeyValue::new(
            "network.type",
            if e.peer.is_ipv4() { "ipv4" } else { "ipv6" },
        ),
        KeyValue::new("network.peer.address", e.peer.ip().to_string()),
    ];
    match e.role {
        NetRole::Client => {
            a.push(KeyValue::new("role", "client"));
            a.push(KeyValue::new("server.port", e.peer.port() as i64));
        }
        NetRole::Server => {
            a.push(KeyValue::new("role", "server"));
            a.push(KeyValue::new("server.port", e.local.port() as i64));
        }
    }
    if let Some(p) = &e.peer_process {
        a.push(KeyValue::new("peer.service", p.service_name.clone()));
    }
    a
}

/// The metric the kernel's tables' fill joins.
const TABLE_FILL: &str = "sightline.table.fill";

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
        // Rows with the same attributes are one series: their sum.
        let observe = move |o: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            let mut series: Vec<(&[(&str, &str)], u64)> = Vec::new();
            for d in &defs {
                let v = stats.get(d.counter);
                match series.iter_mut().find(|(a, _)| *a == d.attributes) {
                    Some((_, sum)) => *sum += v,
                    None => series.push((d.attributes, v)),
                }
            }
            for (attrs, v) in series {
                let kv: Vec<KeyValue> = attrs.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
                o.observe(v, &kv);
            }
            if metric == TABLE_FILL {
                // The kernel's tables join the same metric; FLOWS is a row of COUNTERS.
                for (i, t) in table::ALL.iter().enumerate() {
                    if i != table::FLOWS as usize {
                        let v = stats.table(i).fill.load(Relaxed);
                        o.observe(v, &[KeyValue::new("table", t.label)]);
                    }
                }
            }
        };
        let first = COUNTERS
            .iter()
            .find(|d| d.metric == metric)
            .expect("listed");
        if first.gauge {
            let _ = meter
                .u64_observable_gauge(metric)
                .with_description(first.description)
                .with_callback(move |o| observe(o))
                .build();
        } else {
            let _ = meter
                .u64_observable_counter(metric)
                .with_description(first.description)
                .with_callback(move |o| observe(o))
                .build();
        }
    }
    let _ = meter
        .u64_observable_gauge("sightline.table.capacity")
        .with_description(counters::CAPACITY)
        .with_callback(per_kernel_table(&stats, |t| &t.capacity))
        .build();
    let _ = meter
        .u64_observable_counter("sightline.table.insert.failures")
        .with_description(counters::INSERT_FAILED)
        .with_callback(per_kernel_table(&stats, |t| &t.insert_failed))
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

/// An observer of one figure of every kernel table, one series per table.
fn per_kernel_table(
    stats: &Arc<Stats>,
    figure: fn(&TableStats) -> &AtomicU64,
) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<u64>) + Send + Sync + 'static {
    let stats = stats.clone();
    move |o| {
        for (i, t) in table::ALL.iter().enumerate() {
            let v = figure(stats.table(i)).load(Relaxed);
            o.observe(v, &[KeyValue::new("table", t.label)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::twins::tests::call;

    #[test]
    fn an_exited_process_is_kept_until_every_reader_had_its_last_looks() {
        let m = Metrics::new(
            Arc::new(Stats::default()),
            Vec::new(),
            &[Reader::Otlp, Reader::Prometheus],
        );
        m.record(&call(7, Role::Server, "/", 1, 1, "http"));
        m.process_exited(7);
        // Each collection holds the process's resource and sightline's own.
        assert_eq!(m.collect(Reader::Prometheus).len(), 2);
        assert_eq!(m.collect(Reader::Otlp).len(), 2);
        // Prometheus has had one look of its two: still there.
        assert_eq!(m.collect(Reader::Prometheus).len(), 2);
        assert_eq!(m.collect(Reader::Prometheus).len(), 1);
        assert_eq!(m.collect(Reader::Otlp).len(), 1);
    }
}
