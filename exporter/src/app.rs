//! `sightline run`: wires the stages together and owns the main loop.

use crate::discovery::{Discovery, RESCAN_AFTER};
use crate::loader::{self, Loader};
use crate::pipeline::{Notice, Pipeline};
use crate::sinks::live::{Format, LiveView};
use crate::sinks::otlp;
use crate::sinks::summary::Summary;
use crate::sinks::Sink;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::stats::Stats;
use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use otel_config::{Config, OutputFormat};
use sightline_common::{counter, DRAIN_INTERVAL_MS};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// Everything must be detached and flushed within this after SIGINT/SIGTERM.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4000);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    loader::preflight()?;
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let output = cfg.output.unwrap_or(OutputFormat::Text);

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let summary = Summary::default();
    match output {
        OutputFormat::Text => sinks.push(Box::new(LiveView::new(std::io::stdout(), Format::Text))),
        OutputFormat::Json => sinks.push(Box::new(LiveView::new(std::io::stdout(), Format::Json))),
        OutputFormat::None => {}
    }
    if output != OutputFormat::None {
        sinks.push(Box::new(summary.clone()));
    }

    let mut tasks = Vec::new();
    let exporting = !cfg.sdk_disabled;
    if cfg.sdk_disabled && (cfg.traces.is_some() || cfg.metrics.is_some()) {
        tracing::info!("OTEL_SDK_DISABLED=true: nothing is exported");
    }
    if let (true, Some(t)) = (exporting, &cfg.traces) {
        let exporter = otlp::span_exporter(t)?;
        let (sink, task) = otlp::start_spans(
            exporter,
            cfg.batch.clone(),
            stats.clone(),
            cfg.resource_attributes.clone(),
            shutdown_rx.clone(),
        );
        sinks.push(Box::new(sink));
        tasks.push(task);
        tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, "exporting spans");
    }
    if let (true, Some(m)) = (exporting, &cfg.metrics) {
        let exporter = otlp::metric_exporter(m)?;
        let metrics = Arc::new(Metrics::new(stats.clone(), cfg.resource_attributes.clone()));
        sinks.push(Box::new(otlp::MetricsSink {
            metrics: metrics.clone(),
        }));
        tasks.push(otlp::start_metrics(
            exporter,
            metrics,
            cfg.metric_export_interval,
            cfg.metric_export_timeout,
            stats.clone(),
            shutdown_rx.clone(),
        ));
        tracing::info!(endpoint = %m.endpoint, protocol = ?m.protocol, "exporting metrics");
    }

    let (mut loader, channels) = Loader::load(cfg.capture_bytes)?;
    // Before any Go binary is attached, so every one gets the writing probes.
    let writes = if cfg.write_process_memory {
        loader.enable_memory_writes()
    } else {
        Err(anyhow::anyhow!(
            "the configuration turns it off (propagation.process_memory: false)"
        ))
    };
    let mut discovery = Discovery::new(stats.clone());
    discovery.scan_all(&mut loader);
    let mono_to_unix = loader::realtime_ns() as i128 - loader::monotonic_ns() as i128;
    let mut pipeline = Pipeline::new(
        Box::new(channels.conn_info),
        sinks,
        stats.clone(),
        cfg.selection.clone(),
        cfg.redaction.query_values,
        mono_to_unix,
    );
    for pid in discovery.go_pids() {
        pipeline.go_process(pid);
    }
    report_propagation(
        loader.attach_injection(),
        writes,
        crate::loader::lockdown_mode().as_deref(),
    );
    tracing::info!("sightline is running; Ctrl-C to stop");
    if output == OutputFormat::Text {
        println!(
            "{:<12} {:<22} {:<6} {:<7} {:<40} {:>3} {:>10} PEER",
            "TIME", "PROCESS", "ROLE", "METHOD", "PATH", "ST", "DURATION"
        );
    }

    let mut ring = loader::watch_ring(channels.events).context("watching the ring buffer")?;
    let (rescan_tx, mut rescan_rx) = mpsc::unbounded_channel::<u32>();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = tokio::time::interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut notices = Vec::new();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain_ring(guard.get_inner_mut(), &mut pipeline, &mut notices);
                guard.clear_ready();
            }
            // Records are mostly written without a wakeup; collect them here.
            _ = drain.tick() => drain_ring(ring.get_mut(), &mut pipeline, &mut notices),
            Some(pid) = rescan_rx.recv() => {
                discovery.scan_pid(pid, &mut loader);
                if discovery.is_go(pid) {
                    pipeline.go_process(pid);
                }
            }
            _ = tick.tick() => {
                pipeline.tick(loader::monotonic_ns());
                pipeline.flush();
                copy_counters(&loader, &stats);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        for n in notices.drain(..) {
            if let Notice::Exit(pid) = n {
                discovery.forget(pid, &mut loader);
            }
            if let Notice::Exec(pid) = n {
                discovery.scan_pid(pid, &mut loader);
                if discovery.is_go(pid) {
                    pipeline.go_process(pid);
                }
                for delay in RESCAN_AFTER {
                    let tx = rescan_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(pid);
                    });
                }
            }
        }
    }

    // Stop capture first, so nothing is attached while we flush.
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    copy_counters(&loader, &stats);
    drop(ring);
    drop(loader);
    pipeline.close_all();
    drop(pipeline);
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            tracing::warn!("export did not finish within the shutdown budget; the rest is dropped");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    match output {
        OutputFormat::Text => print!("{}", summary.render_text(elapsed)),
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({ "summary": summary.rows(elapsed) })
        ),
        OutputFormat::None => {}
    }
    let lost = stats.events_lost.load(Relaxed);
    let dropped = stats.parse_dropped_total();
    if lost > 0 || dropped > 0 || stats.spans_dropped.load(Relaxed) > 0 {
        let reasons: Vec<String> = crate::protocols::DropReason::ALL
            .iter()
            .filter(|r| stats.parse_dropped(**r) > 0)
            .map(|r| format!("{}={}", r.as_str(), stats.parse_dropped(*r)))
            .collect();
        tracing::warn!(
            events_lost = lost,
            parse_dropped = dropped,
            spans_dropped = stats.spans_dropped.load(Relaxed),
            "some data was not captured (parse drops: {})",
            reasons.join(", ")
        );
    }
    Ok(())
}

/// The kernel side's counters, into the stats that metrics and the summary read.
fn copy_counters(loader: &Loader, stats: &Stats) {
    let k = loader.counters();
    for (slot, at) in [
        (&stats.events_lost, counter::RINGBUF_FULL),
        (&stats.kernel_active_full, counter::ACTIVE_FULL),
        (&stats.kernel_read_failed, counter::READ_FAILED),
        (&stats.kernel_orphan_returns, counter::ORPHAN_RETURN),
        (&stats.traceparent_injected, counter::INJECTED),
        (&stats.traceparent_skipped, counter::INJECT_SKIPPED),
        (&stats.traceparent_sockets_full, counter::INJECT_SOCKS_FULL),
        (
            &stats.traceparent_written_in_process,
            counter::WRITTEN_IN_PROCESS,
        ),
        (&stats.traceparent_write_skipped, counter::WRITE_SKIPPED),
    ] {
        slot.store(k[at as usize], Relaxed);
    }
}

fn drain_ring(rb: &mut RingBuf<MapData>, pipeline: &mut Pipeline, notices: &mut Vec<Notice>) {
    while let Some(item) = rb.next() {
        if let Some(n) = pipeline.handle(&item) {
            notices.push(n);
        }
    }
    pipeline.flush();
}

/// Says once how trace context reaches other services, and why not further. Plaintext
/// HTTP/1.x requests get their `traceparent` at the socket (sk_msg), which no lockdown mode
/// forbids; HTTPS and HTTP/2 ones only by a bounded write into the process's memory
/// (`bpf_probe_write_user`), which lockdown does forbid. Calls between services on this host
/// are joined by connection whatever is written.
fn report_propagation(
    socket: anyhow::Result<()>,
    memory: anyhow::Result<()>,
    lockdown: Option<&str>,
) {
    let lockdown = lockdown.unwrap_or("none");
    const JOINED: &str =
        "calls between services on this host are joined into one trace by their connections";
    match (socket, memory) {
        (Ok(()), Ok(())) => tracing::info!(
            lockdown,
            "traceparent propagation: written into Go clients' plaintext HTTP/1.x requests at the socket (sk_msg), and into their HTTPS and HTTP/2 requests in the process's memory, bounded to the free room of the request's own buffer; {JOINED}"
        ),
        (Ok(()), Err(e)) => tracing::info!(
            lockdown,
            "traceparent propagation: written into Go clients' plaintext HTTP/1.x requests at the socket (sk_msg), with no write into any process; HTTPS and HTTP/2 requests carry none, as that needs a write into the process's memory and {e:#}; a hop over them to another host starts a new trace there; {JOINED}"
        ),
        (Err(e), Ok(())) => tracing::warn!(
            lockdown,
            "traceparent propagation: written into Go clients' requests in the process's memory (plaintext too), as the socket path is off: {e:#}; {JOINED}"
        ),
        (Err(e), Err(m)) => tracing::warn!(
            lockdown,
            "traceparent propagation is off: {e:#}, and {m:#}; every span is still correct, and {JOINED}, but a call to another host starts a new trace there"
        ),
    }
}
