//! `sightline run`: wires the stages together and runs the capture loop.

use crate::capture::existing;
use crate::capture::kernel::{self, lockdown_mode};
use crate::capture::loader::{self, Loader};
use crate::discovery::{Discovery, Rescans};
use crate::pipeline::{Notice, Pipeline};
use crate::protocols::{Conventions, DropReason};
use crate::sinks::flows::{FlowFilter, FlowsView};
use crate::sinks::live::{Format, LiveView};
use crate::sinks::otlp;
use crate::sinks::prometheus::{self, Health};
use crate::sinks::summary::Summary;
use crate::sinks::Sink;
use crate::sources;
use crate::telemetry::counters::{Counter, Stats};
use crate::telemetry::metrics::{Metrics, Reader};
use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use otel_config::{Config, OutputFormat};
use sightline_common::DRAIN_INTERVAL_MS;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How often new processes' second looks are taken: a fraction of the first delay.
const RESCAN_TICK: Duration = Duration::from_millis(25);
/// How long start-up waits for the analyses of what already runs (each has its own budget).
const STARTUP_ANALYSIS: Duration = Duration::from_secs(30);

/// Everything must be detached and flushed within this after SIGINT/SIGTERM.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4000);
/// How often the processes a capture point holds state for are checked for having ended
/// unseen (an exit record lost to a full ring buffer).
const REAP_INTERVAL: Duration = Duration::from_secs(10);
/// How often the kernel's counters are read when no record came since the last second.
const QUIET_COUNTERS: Duration = Duration::from_secs(10);

/// What the terminal shows.
#[derive(Debug, Clone)]
pub enum View {
    /// HTTP calls, then a RED summary at exit.
    Calls,
    /// TCP connection events only (`sightline flows`), those the filter accepts.
    Flows(FlowFilter),
    /// Both, interleaved.
    CallsAndFlows,
}

pub async fn run(cfg: Config, view: View) -> anyhow::Result<()> {
    kernel::preflight()?;
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let mut outputs = Outputs::start(&cfg, &view, &stats)?;

    let (mut loader, channels) = Loader::load(cfg.capture_bytes, cfg.network_signals)?;
    // Before any Go binary is attached, so every one gets the writing probes.
    let writes = if cfg.write_process_memory {
        loader.enable_memory_writes()
    } else {
        Err(anyhow::anyhow!(
            "the configuration turns it off (propagation.process_memory: false)"
        ))
    };
    let conv = Conventions {
        redact_query_values: cfg.redaction.query_values,
        mono_to_unix_ns: kernel::realtime_ns() as i128 - kernel::monotonic_ns() as i128,
    };
    let (sources, attachers) = sources::split(sources::all(&cfg.selection, conv, &stats));
    let mut discovery = Discovery::new(attachers, stats.clone(), cfg.selection.clone());
    discovery.scan_all(&mut loader);
    // Processes running before start are traced once sightline says it runs; a binary slow to
    // analyse is left to finish in the background.
    discovery.settle(&mut loader, STARTUP_ANALYSIS);
    let mut conn_info = channels.conn_info;
    let at_start = existing::sockets_at_start(|pid, exe| cfg.selection.matches(pid, exe));
    let entered = conn_info.enter_existing(&at_start.established);
    tracing::info!(
        connections = entered,
        "TCP connections open before start are captured from their next bytes"
    );
    let listeners = loader.enter_listeners(&at_start.listening);
    tracing::debug!(
        listeners,
        "connections accepted on sockets listening since before start are their process's"
    );
    let mut pipeline = Pipeline::new(
        Box::new(conn_info),
        sources,
        outputs.sinks(),
        stats.clone(),
        conv,
    );
    for (point, pid) in discovery.traced() {
        pipeline.traced(point, pid);
    }
    let others = loader::other_socket_programs();
    if !others.is_empty() {
        tracing::warn!(
            programs = ?others,
            "other agents' programs are loaded on the socket hooks sightline's plaintext propagation uses; if one of them must own those hooks (an L7 proxy such as Cilium's), set propagation.socket: false"
        );
    }
    let socket = if cfg.inject_at_socket {
        loader.attach_injection()
    } else {
        Err(anyhow::anyhow!(
            "the configuration turns it off (propagation.socket: false)"
        ))
    };
    report_propagation(socket, writes, lockdown_mode().as_deref());
    outputs
        .health
        .capturing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("sightline is running; Ctrl-C to stop");

    let ring = loader::watch_ring(channels.events).context("watching the ring buffer")?;
    capture(ring, &mut pipeline, &mut discovery, &mut loader, &stats).await?;

    // Stop capture first, so nothing is attached while we flush.
    let deadline = Instant::now() + SHUTDOWN_BUDGET;
    stats.copy_kernel(&loader.counters());
    drop(loader);
    kernel::unmount_ours();
    pipeline.close_all();
    drop(pipeline);
    outputs.finish(deadline, started.elapsed()).await;
    report_losses(&stats);
    Ok(())
}

/// Where calls go: the live view and summary (unless `--output none`) and the OTLP exporters
/// the configuration names, with the tasks that export.
struct Outputs {
    /// What `/readyz` reports.
    health: Arc<Health>,
    output: OutputFormat,
    sinks: Vec<Box<dyn Sink>>,
    summary: Summary,
    /// The calls are shown, so their summary is too.
    summary_shown: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Outputs {
    fn start(cfg: &Config, view: &View, stats: &Arc<Stats>) -> anyhow::Result<Outputs> {
        let output = cfg.output.unwrap_or(OutputFormat::Text);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let summary = Summary::default();
        let format = match output {
            OutputFormat::Text => Some(Format::Text),
            OutputFormat::Json => Some(Format::Json),
            OutputFormat::None => None,
        };
        if let Some(format) = format {
            if !matches!(view, View::Flows(_)) {
                sinks.push(Box::new(LiveView::new(std::io::stdout(), format)));
                sinks.push(Box::new(summary.clone()));
            }
            match view {
                View::Calls => {}
                View::Flows(filter) => sinks.push(Box::new(FlowsView::new(
                    std::io::stdout(),
                    format,
                    filter.clone(),
                ))),
                View::CallsAndFlows => sinks.push(Box::new(FlowsView::new(
                    std::io::stdout(),
                    format,
                    FlowFilter::default(),
                ))),
            }
        }
        let mut tasks = Vec::new();
        let exporting = !cfg.sdk_disabled;
        if cfg.sdk_disabled && (cfg.traces.is_some() || cfg.metrics.is_some()) {
            tracing::info!("OTEL_SDK_DISABLED=true: nothing is exported");
        }
        if let (true, Some(t)) = (exporting, &cfg.traces) {
            let (sink, task) = otlp::start_spans(
                otlp::span_exporter(t)?,
                cfg.batch.clone(),
                stats.clone(),
                cfg.resource_attributes.clone(),
                shutdown_rx.clone(),
            );
            sinks.push(Box::new(sink));
            tasks.push(task);
            tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, "exporting spans");
        }
        let otlp_metrics = match (exporting, &cfg.metrics) {
            (true, Some(m)) => Some((otlp::metric_exporter(m)?, m)),
            _ => None,
        };
        let mut readers = Vec::new();
        if otlp_metrics.is_some() {
            readers.push(Reader::Otlp);
        }
        if cfg.prometheus.is_some() {
            readers.push(Reader::Prometheus);
        }
        let health = Arc::new(Health::default());
        if !readers.is_empty() {
            let metrics = Arc::new(Metrics::new(
                stats.clone(),
                cfg.resource_attributes.clone(),
                &readers,
            ));
            sinks.push(Box::new(otlp::MetricsSink {
                metrics: metrics.clone(),
            }));
            if let Some(addr) = cfg.prometheus {
                tasks.push(prometheus::start(
                    addr,
                    metrics.clone(),
                    health.clone(),
                    shutdown_rx.clone(),
                )?);
            }
            if let Some((exporter, m)) = otlp_metrics {
                tasks.push(otlp::start_metrics(
                    exporter,
                    metrics,
                    cfg.metric_export_interval,
                    cfg.metric_export_timeout,
                    stats.clone(),
                    shutdown_rx,
                ));
                tracing::info!(endpoint = %m.endpoint, protocol = ?m.protocol, "exporting metrics");
            }
        }
        Ok(Outputs {
            health,
            output,
            sinks,
            summary,
            summary_shown: !matches!(view, View::Flows(_)),
            tasks,
            shutdown,
        })
    }

    /// The sinks, for the pipeline.
    fn sinks(&mut self) -> Vec<Box<dyn Sink>> {
        std::mem::take(&mut self.sinks)
    }

    /// Lets the exporters send what they hold (until `deadline`), then prints the summary.
    async fn finish(self, deadline: Instant, elapsed: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                tracing::warn!(
                    "export did not finish within the shutdown budget; the rest is dropped"
                );
            }
        }
        let elapsed = elapsed.as_secs_f64();
        let output = if self.summary_shown {
            self.output
        } else {
            OutputFormat::None
        };
        match output {
            OutputFormat::Text => print!("{}", self.summary.render_text(elapsed)),
            OutputFormat::Json => println!(
                "{}",
                serde_json::json!({ "summary": self.summary.rows(elapsed) })
            ),
            OutputFormat::None => {}
        }
    }
}

/// The capture loop, until SIGINT or SIGTERM: records through the pipeline, and what they say
/// about processes to discovery.
async fn capture(
    mut ring: AsyncFd<RingBuf<MapData>>,
    pipeline: &mut Pipeline,
    discovery: &mut Discovery,
    loader: &mut Loader,
    stats: &Stats,
) -> anyhow::Result<()> {
    let mut rescans = Rescans::default();
    let mut last_rescan = Instant::now();
    let mut due = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut drain = Drain::default();
    // Records drained at the last tick, and when the kernel's counters are next read anyway.
    let mut counted = 0;
    let mut counters_at = Instant::now();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut notices = Vec::new();
    let analysed = discovery.wake();
    let mut reap_at = Instant::now() + REAP_INTERVAL;
    stats.set_table_capacities(&loader.tables.capacities());
    loop {
        tokio::select! {
            // Analyses done on the workers: attach, and look again at who waited.
            _ = analysed.notified() => {
                for pid in discovery.answered(loader) {
                    look_at(pid, discovery, loader, pipeline);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let n = drain_ring(guard.get_inner_mut(), pipeline, &mut notices);
                drain.drained(n);
                guard.clear_ready();
            }
            // Records are mostly written without a wakeup; collect them here.
            _ = tokio::time::sleep_until(drain.next.into()) => {
                let n = drain_ring(ring.get_mut(), pipeline, &mut notices);
                drain.drained(n);
            }
            // Looks again at new processes only while some are due: no timer runs idle. Due
            // looks are taken together, at most every RESCAN_TICK.
            _ = until(rescans.next().map(|at| at.max(last_rescan + RESCAN_TICK))) => {
                last_rescan = Instant::now();
                rescans.due(last_rescan, &mut due);
                for pid in due.drain(..) {
                    look_at(pid, discovery, loader, pipeline);
                }
            }
            _ = tick.tick() => {
                // Also where an analysis that ran over its time is given up.
                for pid in discovery.answered(loader) {
                    look_at(pid, discovery, loader, pipeline);
                }
                pipeline.tick(kernel::monotonic_ns());
                pipeline.flush();
                let now = Instant::now();
                let active = drain.total != counted;
                counted = drain.total;
                // A lookup per counter: every second while records come, else every
                // QUIET_COUNTERS (the programs that count without writing a record, such as
                // the classification of a socket that is not HTTP, are rare on a quiet host).
                if active || now >= counters_at {
                    counters_at = now + QUIET_COUNTERS;
                    stats.copy_kernel(&loader.counters());
                }
                if reap_at <= now {
                    reap_at = now + REAP_INTERVAL;
                    for pid in discovery.reap(loader) {
                        loader.tables.exited(pid, now);
                    }
                }
                if let Some(scan) = loader.tables.tick(now, active) {
                    stats.set_table_fills(&scan.fill);
                    stats.add(Counter::TableSwept, scan.removed);
                    stats.set(Counter::TableSweepsDropped, loader.tables.exits_dropped);
                }
            }
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
        for n in notices.drain(..) {
            match n {
                Notice::Exit(pid) => {
                    discovery.forget(pid, loader);
                    loader.tables.exited(pid, Instant::now());
                }
                Notice::Exec(pid) => {
                    // A process that replaced its image keeps its pid: what was held for the
                    // old image (a Go program's offsets) must not serve the new one. So must a
                    // new process whose pid an exited one had, if that exit was lost.
                    discovery.forget(pid, loader);
                    look_at(pid, discovery, loader, pipeline);
                    rescans.exec(pid, Instant::now());
                }
            }
        }
    }
}

/// Scans `pid` and tells the pipeline which capture points trace it.
fn look_at(pid: u32, discovery: &mut Discovery, loader: &mut Loader, pipeline: &mut Pipeline) {
    discovery.scan_pid(pid, loader);
    for point in discovery.tracing(pid) {
        pipeline.traced(point, pid);
    }
}

/// Says once, at exit, what was not captured.
fn report_losses(stats: &Stats) {
    let lost = stats.get(Counter::EventsLost);
    let dropped = stats.parse_dropped_total();
    let spans_dropped = stats.get(Counter::SpansDropped);
    if lost > 0 || dropped > 0 || spans_dropped > 0 {
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| stats.parse_dropped(**r) > 0)
            .map(|r| format!("{}={}", r.as_str(), stats.parse_dropped(*r)))
            .collect();
        tracing::warn!(
            events_lost = lost,
            parse_dropped = dropped,
            spans_dropped,
            "some data was not captured (parse drops: {})",
            reasons.join(", ")
        );
    }
}

/// Drains the ring buffer; returns how many records it held.
fn drain_ring(
    rb: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    notices: &mut Vec<Notice>,
) -> usize {
    let mut n = 0;
    while let Some(item) = rb.next() {
        n += 1;
        if let Some(notice) = pipeline.handle(&item) {
            notices.push(notice);
        }
    }
    pipeline.flush();
    n
}

/// When the ring buffer is next drained without a wakeup. Every `DRAIN_INTERVAL_MS` while
/// records come; on a quiet host the wait doubles with each empty drain, up to
/// [`MAX_IDLE_DRAIN`], so an idle sightline wakes about twice a second (this and the second's
/// tick), not fifty times. A burst
/// after a quiet spell still wakes it at once: the programs force a wakeup once
/// `WAKEUP_BYTES` are pending.
struct Drain {
    next: Instant,
    empty: u32,
    /// Records drained so far.
    total: u64,
}

/// The longest wait between drains on a quiet host.
const MAX_IDLE_DRAIN: Duration = Duration::from_millis(1000);

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            next: Instant::now() + Duration::from_millis(DRAIN_INTERVAL_MS),
            empty: 0,
            total: 0,
        }
    }
}

impl Drain {
    fn drained(&mut self, records: usize) {
        self.total += records as u64;
        self.empty = if records == 0 { self.empty + 1 } else { 0 };
        let wait =
            Duration::from_millis(DRAIN_INTERVAL_MS << self.empty.min(8)).min(MAX_IDLE_DRAIN);
        self.next = Instant::now() + wait;
    }
}

/// Completes at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
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
