//! A real OTLP receiver: the collector's gRPC services (tonic) and its HTTP/protobuf endpoints
//! (hyper), recording every request it is sent.

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct Received {
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    /// Request headers seen (lower-case names), to check OTEL_EXPORTER_OTLP_HEADERS.
    pub headers: Arc<Mutex<Vec<(String, String)>>>,
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for kv in r.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                self.0
                    .headers
                    .lock()
                    .unwrap()
                    .push((k.as_str().to_string(), v.to_str().unwrap_or("").to_string()));
            }
        }
        self.0.traces.lock().unwrap().push(r.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics.lock().unwrap().push(r.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts a gRPC receiver on a free loopback port.
pub async fn start_grpc() -> anyhow::Result<(SocketAddr, Received)> {
    start_grpc_with(None).await
}

/// A gRPC receiver over TLS, with the given PEM certificate and key.
pub async fn start_grpc_tls(cert: &[u8], key: &[u8]) -> anyhow::Result<(SocketAddr, Received)> {
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    start_grpc_with(Some(tls)).await
}

async fn start_grpc_with(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<(SocketAddr, Received)> {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let svc = builder
        .add_service(
            TraceServiceServer::new(Grpc(received.clone()))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(Grpc(received.clone()))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(svc);
    Ok((addr, received))
}

/// A runtime with an HTTP/protobuf receiver running on it, for a test's sightline to export
/// to; the runtime must live as long as the receiver is needed.
pub fn http_on_runtime() -> (tokio::runtime::Runtime, SocketAddr, Received) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (addr, rec) = rt.block_on(start_http()).expect("the OTLP receiver starts");
    (rt, addr, rec)
}

/// Starts an HTTP/protobuf receiver (`POST /v1/traces`, `POST /v1/metrics`) on a free port.
pub async fn start_http() -> anyhow::Result<(SocketAddr, Received)> {
    start_http_with(None).await
}

/// The HTTP/protobuf receiver over TLS, with the given PEM certificate and key.
pub async fn start_http_tls(cert: &[u8], key: &[u8]) -> anyhow::Result<(SocketAddr, Received)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    start_http_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

async fn start_http_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<(SocketAddr, Received)> {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let rec = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let rec = rec.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let rec = rec.clone();
                    async move { handle_http(rec, req).await }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await
                    }
                };
            });
        }
    });
    Ok((addr, received))
}

async fn handle_http(
    rec: Received,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    for (k, v) in req.headers() {
        rec.headers
            .lock()
            .unwrap()
            .push((k.as_str().to_string(), v.to_str().unwrap_or("").to_string()));
    }
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(400)),
    };
    let body = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return Ok(status(400));
        }
        Bytes::from(out)
    } else {
        body
    };
    match path.as_str() {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(r) => rec.traces.lock().unwrap().push(r),
            Err(_) => return Ok(status(400)),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(r) => rec.metrics.lock().unwrap().push(r),
            Err(_) => return Ok(status(400)),
        },
        _ => return Ok(status(404)),
    }
    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
    resp.headers_mut().insert(
        "content-type",
        "application/x-protobuf".parse().expect("static header"),
    );
    Ok(resp)
}

fn status(code: u16) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::from_u16(code).expect("valid status");
    r
}

/// Waits up to `timeout` for `pred` to hold over what was received.
pub async fn wait_for(
    timeout: std::time::Duration,
    mut pred: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if pred() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pred()
        .then_some(())
        .context("timed out waiting for telemetry")
}
