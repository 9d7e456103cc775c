//! OTLP export through opentelemetry-otlp, over gRPC (tonic) or HTTP/protobuf.
//!
//! Spans go through our own bounded queue rather than the SDK's batch processor: each observed
//! process has its own resource, and one exporter serves them all by switching resources
//! between batches. When the queue is full, spans are dropped and counted; a slow or absent
//! collector never grows memory or stalls capture.

use super::Sink;
use crate::metadata::{process_resource, ProcessInfo};
use crate::protocols::call::Call;
use crate::telemetry::counters::{Counter, Stats};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::spans::{scope, to_span};
use anyhow::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use otel_config::{BatchSettings, Compression, Protocol, SignalExport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

type Queued = (Arc<Resource>, SpanData);

fn compression(c: Compression) -> Option<opentelemetry_otlp::Compression> {
    match c {
        Compression::None => None,
        Compression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
        Compression::Zstd => Some(opentelemetry_otlp::Compression::Zstd),
    }
}

fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the OTLP {what} {}", path.display()))
}

fn tonic_tls(
    s: &SignalExport,
) -> anyhow::Result<Option<opentelemetry_otlp::tonic_types::transport::ClientTlsConfig>> {
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
    if !s.endpoint.starts_with("https://") {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &s.certificate {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "certificate")?));
    }
    if let (Some(cert), Some(key)) = (&s.client_certificate, &s.client_key) {
        tls = tls.identity(Identity::from_pem(
            read_pem(cert, "client certificate")?,
            read_pem(key, "client key")?,
        ));
    }
    Ok(Some(tls))
}

fn http_headers(s: &SignalExport) -> HashMap<String, String> {
    s.headers.iter().cloned().collect()
}

fn tonic_metadata(s: &SignalExport) -> anyhow::Result<tonic::metadata::MetadataMap> {
    use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
    let mut md = MetadataMap::new();
    for (k, v) in &s.headers {
        let key = MetadataKey::from_bytes(k.as_bytes())
            .with_context(|| format!("OTLP header name {k:?} is not valid for gRPC"))?;
        let value: MetadataValue<_> = v
            .parse()
            .with_context(|| format!("OTLP header {k:?} has a value gRPC cannot carry"))?;
        md.insert(key, value);
    }
    Ok(md)
}

/// The HTTP client for HTTP/protobuf export: rustls (ring), trusting the configured CA alone
/// when one is given (OTEL_EXPORTER_OTLP_CERTIFICATE), else the system's roots, and presenting
/// a client certificate when one is configured.
fn http_client(s: &SignalExport) -> anyhow::Result<reqwest::Client> {
    // Several exporters may race to install it; the first wins and the rest are no-ops.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder().timeout(s.timeout);
    if let Some(ca) = &s.certificate {
        let certs = reqwest::Certificate::from_pem_bundle(&read_pem(ca, "certificate")?)
            .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
        b = b.tls_certs_only(certs);
    } else if !s.endpoint.starts_with("https://") {
        // Plaintext export needs no roots: a host (or a minimal image) without
        // ca-certificates must still export to a collector over http://.
        b = b.tls_certs_only(Vec::<reqwest::Certificate>::new());
    }
    if let (Some(cert), Some(key)) = (&s.client_certificate, &s.client_key) {
        let mut pem = read_pem(cert, "client certificate")?;
        pem.push(b'\n');
        pem.extend(read_pem(key, "client key")?);
        b = b.identity(
            reqwest::Identity::from_pem(&pem)
                .context("the OTLP client certificate and key do not form a PEM identity")?,
        );
    }
    b.build().with_context(|| {
        if s.endpoint.starts_with("https://") && s.certificate.is_none() {
            "building the OTLP HTTPS client (if this host has no CA certificates, install \
             ca-certificates or name the collector's CA in OTEL_EXPORTER_OTLP_CERTIFICATE)"
        } else {
            "building the OTLP HTTP client"
        }
    })
}

/// The gRPC settings both signals share; the builders differ only in type.
fn tonic_settings<B: WithExportConfig + WithTonicConfig>(
    b: B,
    s: &SignalExport,
) -> anyhow::Result<B> {
    let mut b = b
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_metadata(tonic_metadata(s)?);
    if let Some(c) = compression(s.compression) {
        b = b.with_compression(c);
    }
    if let Some(tls) = tonic_tls(s)? {
        b = b.with_tls_config(tls);
    }
    Ok(b)
}

/// The HTTP/protobuf settings both signals share.
fn http_settings<B: WithExportConfig + WithHttpConfig>(
    b: B,
    s: &SignalExport,
) -> anyhow::Result<B> {
    let mut b = b
        .with_http_client(http_client(s)?)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(&s.endpoint)
        .with_timeout(s.timeout)
        .with_headers(http_headers(s));
    if let Some(c) = compression(s.compression) {
        b = b.with_compression(c);
    }
    Ok(b)
}

pub fn span_exporter(s: &SignalExport) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let b = opentelemetry_otlp::SpanExporter::builder();
    let e = match s.protocol {
        Protocol::Grpc => tonic_settings(b.with_tonic(), s)?.build(),
        Protocol::HttpProtobuf => http_settings(b.with_http(), s)?.build(),
    };
    e.with_context(|| format!("building the OTLP trace exporter for {}", s.endpoint))
}

pub fn metric_exporter(s: &SignalExport) -> anyhow::Result<opentelemetry_otlp::MetricExporter> {
    let b = opentelemetry_otlp::MetricExporter::builder();
    let e = match s.protocol {
        Protocol::Grpc => tonic_settings(b.with_tonic(), s)?.build(),
        Protocol::HttpProtobuf => http_settings(b.with_http(), s)?.build(),
    };
    e.with_context(|| format!("building the OTLP metric exporter for {}", s.endpoint))
}

/// The pipeline-side end of span export: converts calls and queues them without blocking.
pub struct SpanSink {
    tx: mpsc::Sender<Queued>,
    stats: Arc<Stats>,
    scope: InstrumentationScope,
    extra: Vec<(String, String)>,
    resources: HashMap<u32, (Arc<ProcessInfo>, Arc<Resource>)>,
}

impl SpanSink {
    fn resource(&mut self, p: &Arc<ProcessInfo>) -> Arc<Resource> {
        match self.resources.get(&p.pid) {
            Some((info, r)) if Arc::ptr_eq(info, p) => r.clone(),
            _ => {
                let r = Arc::new(process_resource(p, &self.extra));
                self.resources.insert(p.pid, (p.clone(), r.clone()));
                r
            }
        }
    }
}

impl Sink for SpanSink {
    fn on_call(&mut self, call: &Call) {
        let span = to_span(call, &self.scope);
        let res = self.resource(&call.process);
        if self.tx.try_send((res, span)).is_err() {
            self.stats.add(Counter::SpansDropped, 1);
        }
    }

    fn on_process_exit(&mut self, pid: u32) {
        // Queued spans hold their own reference to the resource.
        self.resources.remove(&pid);
    }
}

pub struct MetricsSink {
    pub metrics: Arc<Metrics>,
}

impl Sink for MetricsSink {
    fn on_call(&mut self, call: &Call) {
        self.metrics.record(call);
    }
    fn on_net(&mut self, event: &crate::sources::tcp::NetEvent) {
        self.metrics.record_net(event);
    }
    fn on_process_exit(&mut self, pid: u32) {
        self.metrics.process_exited(pid);
    }
}

/// Starts the span export task; returns the sink to give the pipeline.
pub fn start_spans(
    exporter: opentelemetry_otlp::SpanExporter,
    batch: BatchSettings,
    stats: Arc<Stats>,
    extra: Vec<(String, String)>,
    shutdown: watch::Receiver<bool>,
) -> (SpanSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(batch.max_queue_size);
    let task = tokio::spawn(export_spans(exporter, rx, batch, stats.clone(), shutdown));
    (
        SpanSink {
            tx,
            stats,
            scope: scope(),
            extra,
            resources: HashMap::new(),
        },
        task,
    )
}

/// What the final flush at shutdown may take, so that sightline exits within 5 s even when the
/// collector hangs.
pub const FINAL_FLUSH: Duration = Duration::from_millis(2500);

async fn export_spans(
    mut exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Queued>,
    batch: BatchSettings,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf: Vec<Queued> = Vec::with_capacity(batch.max_export_batch_size);
    let mut deadline = Instant::now() + batch.schedule_delay;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let due = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    buf.push(item);
                    buf.len() >= batch.max_export_batch_size
                }
                None => break,
            },
            // Armed only while something waits: with a zero delay (OTEL_BSP_SCHEDULE_DELAY=0)
            // an empty queue would otherwise wake this loop without end.
            _ = tokio::time::sleep(wait), if !buf.is_empty() => true,
            _ = shutdown.changed() => break,
        };
        if !due {
            continue;
        }
        let n = buf.len() as u64;
        // An export stuck on a slow collector must not hold up shutdown.
        let interrupted = tokio::select! {
            _ = flush(&mut exporter, &mut buf, batch.export_timeout, &stats) => false,
            _ = shutdown.changed() => true,
        };
        if interrupted {
            stats.add(Counter::SpansDropped, n);
            buf.clear();
            break;
        }
        deadline = Instant::now() + batch.schedule_delay;
    }
    // Shutdown: what is queued goes out in one last bounded attempt.
    let end = Instant::now() + FINAL_FLUSH;
    while let Ok(item) = rx.try_recv() {
        buf.push(item);
    }
    while !buf.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        let take = buf.len().min(batch.max_export_batch_size);
        let mut chunk: Vec<Queued> = buf.drain(..take).collect();
        if left.is_zero() {
            stats.add(Counter::SpansDropped, chunk.len() as u64);
            continue;
        }
        flush(&mut exporter, &mut chunk, left, &stats).await;
    }
}

async fn flush(
    exporter: &mut opentelemetry_otlp::SpanExporter,
    buf: &mut Vec<Queued>,
    timeout: Duration,
    stats: &Stats,
) {
    if buf.is_empty() {
        return;
    }
    // Group by resource, keeping arrival order within each group.
    let mut groups: Vec<(Arc<Resource>, Vec<SpanData>)> = Vec::new();
    for (res, span) in buf.drain(..) {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &res)) {
            Some((_, spans)) => spans.push(span),
            None => groups.push((res, vec![span])),
        }
    }
    for (res, spans) in groups {
        let n = spans.len() as u64;
        exporter.set_resource(&res);
        match tokio::time::timeout(timeout, exporter.export(spans)).await {
            Ok(Ok(())) => {
                stats.add(Counter::SpansExported, n);
            }
            failed => {
                stats.add(Counter::ExportFailures, 1);
                stats.add(Counter::SpansDropped, n);
                report_failure(
                    "spans",
                    failed
                        .map_err(|_| "timed out".to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                );
            }
        }
    }
}

/// Starts the metric export task: every interval, and once more at shutdown.
pub fn start_metrics(
    exporter: opentelemetry_otlp::MetricExporter,
    metrics: Arc<Metrics>,
    interval: Duration,
    timeout: Duration,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            // Each round, and above all the last one, has one deadline for all processes.
            let end = Instant::now()
                + if last {
                    FINAL_FLUSH
                } else {
                    interval.min(timeout)
                };
            for rm in metrics.collect(crate::telemetry::metrics::Reader::Otlp) {
                let left = end.saturating_duration_since(Instant::now());
                let result = if left.is_zero() {
                    Err("no time left".to_string())
                } else {
                    match tokio::time::timeout(left, exporter.export(&rm)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("timed out".to_string()),
                    }
                };
                if result.is_err() {
                    stats.add(Counter::ExportFailures, 1);
                    report_failure("metrics", result);
                }
            }
            if last || *shutdown.borrow() {
                return;
            }
        }
    })
}

/// Export failures are counted always, but logged at most once a minute per signal: a dead
/// collector must not become a log flood.
fn report_failure(signal: &'static str, result: Result<(), String>) {
    use std::sync::Mutex;
    static LAST: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());
    let Err(e) = result else { return };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match last.iter_mut().find(|(s, _)| *s == signal) {
        Some((_, t)) if now.duration_since(*t) < Duration::from_secs(60) => return,
        Some((_, t)) => *t = now,
        None => last.push((signal, now)),
    }
    // Lost spans are counted on their own; a failed metrics export loses nothing for good,
    // since the next export carries the cumulative values again.
    let counted = match signal {
        "spans" => "counted in sightline.spans.dropped and sightline.export.failures",
        _ => "counted in sightline.export.failures",
    };
    tracing::warn!("exporting {signal} failed ({counted}; next report in a minute at most): {e}");
}
