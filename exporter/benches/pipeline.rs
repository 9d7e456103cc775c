//! The user-space pipeline on one core: ring buffer records → HTTP/1.x → span + histogram →
//! OTLP protobuf encoding. Reported per request (one request and one response record).
//!
//! cargo bench -p sightline --bench pipeline

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use prost::Message;
use sightline::capture::sockets::NoLookup;
use sightline::metadata::{process_resource, ProcessInfo};
use sightline::pipeline::Pipeline;
use sightline::protocols::call::Call;
use sightline::protocols::Conventions;
use sightline::sinks::otlp::MetricsSink;
use sightline::sinks::Sink;
use sightline::sources;
use sightline::telemetry::counters::{Counter, Stats};
use sightline::telemetry::metrics::{Metrics, Reader};
use sightline::telemetry::spans::{scope, to_span};
use sightline_common::{direction, kind, DataHeader};
use std::sync::{Arc, Mutex};

/// Converts to spans and encodes them in export-sized batches, as the exporter would.
struct EncodeSink {
    batch: Vec<opentelemetry_sdk::trace::SpanData>,
    scope: opentelemetry::InstrumentationScope,
    resource: ResourceAttributesWithSchema,
    bytes: Arc<Mutex<usize>>,
}

impl Sink for EncodeSink {
    fn on_call(&mut self, call: &Call) {
        self.batch.push(to_span(call, &self.scope));
        if self.batch.len() == 512 {
            let spans = std::mem::take(&mut self.batch);
            let req = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(spans, &self.resource),
            };
            *self.bytes.lock().unwrap() += req.encode_to_vec().len();
        }
    }
}

fn record(dir: u32, conn: u64, t: u64, payload: &[u8]) -> Vec<u8> {
    let h = DataHeader {
        kind: kind::DATA,
        direction: dir,
        tgid: 4242,
        tid: 4242,
        start_ns: t,
        end_ns: t + 2_000,
        conn,
        fd: 7,
        flags: 0,
        len: payload.len() as u32,
        captured: payload.len() as u32,
        sock_ts: 1,
    };
    sightline::sources::openssl::record::encode_data(&h, payload)
}

fn bench(c: &mut Criterion) {
    let process = ProcessInfo::from_parts(4242, "/usr/sbin/nginx".into(), "nginx".into(), b"");
    let stats = Arc::new(Stats::default());
    let metrics = Arc::new(Metrics::new(stats.clone(), Vec::new(), &[Reader::Otlp]));
    let resource = process_resource(&process, &[]);
    let bytes = Arc::new(Mutex::new(0usize));
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(MetricsSink {
            metrics: metrics.clone(),
        }),
        Box::new(EncodeSink {
            batch: Vec::with_capacity(512),
            scope: scope(),
            resource: (&resource).into(),
            bytes: bytes.clone(),
        }),
    ];
    let conv = Conventions {
        redact_query_values: true,
        mono_to_unix_ns: 0,
    };
    let (sources, _) = sources::split(sources::all(&Default::default(), conv, &stats));
    let mut p = Pipeline::new(Box::new(NoLookup), sources, sinks, stats.clone(), conv)
        .with_fixed_process(process);

    let req = b"GET /api/v1/items/42?page=2&sort=asc HTTP/1.1\r\nHost: shop.example:8443\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    let body = b"{\"id\":42,\"name\":\"widget\"}\n";
    let resp = &[
        format!(
            "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    // 64 keep-alive connections in rotation, as a busy server has.
    let mut t = 1_000_000u64;
    let mut records = Vec::new();
    for i in 0..4096u64 {
        let conn = 0x5500_0000 + (i % 64) * 0x100;
        records.push(record(direction::INGRESS, conn, t, req));
        records.push(record(direction::EGRESS, conn, t + 50_000, resp));
        t += 100_000;
    }

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(4096));
    g.bench_function("http1_request_to_span_metric_and_otlp_bytes", |b| {
        b.iter(|| {
            for r in &records {
                p.handle(r);
            }
        })
    });
    g.finish();
    // Every request must become a span: a bench whose records are dropped measures the drop
    // path, not the pipeline.
    assert_eq!(stats.parse_dropped_total(), 0, "records were dropped");
    assert!(stats.get(Counter::Calls) > 0);
    assert!(*bytes.lock().unwrap() > 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
