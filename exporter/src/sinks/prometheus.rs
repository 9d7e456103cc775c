//! `--prometheus`: `/metrics` in Prometheus text format, from the same readers as the OTLP
//! export, and `/healthz` and `/readyz` for probes.

use crate::telemetry::metrics::{Metrics, Reader};
use crate::telemetry::prometheus::render;
use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What the probes report: capture runs once every program is loaded and attached.
#[derive(Debug, Default)]
pub struct Health {
    pub capturing: AtomicBool,
}

/// Binds `addr` now (so a taken port fails the start, with a clear error) and serves until
/// shutdown.
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let std_listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("serving Prometheus metrics on {addr}: choose a free port with --prometheus")
    })?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let ready = health.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    // Collecting reads every process's instruments: off the async workers.
                    let text = tokio::task::spawn_blocking(move || {
                        render(&metrics.collect(Reader::Prometheus))
                    })
                    .await
                    .unwrap_or_default();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.capturing.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "capturing\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "loading probes\n").into_response()
                    }
                }
            }),
        );
    tracing::info!(%addr, "serving Prometheus metrics on /metrics, probes on /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!("the Prometheus endpoint stopped: {e}");
        }
    }))
}
