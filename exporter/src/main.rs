//! The `sightline` command.
#![deny(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use otel_config::{Config, OutputFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sightline",
    version,
    about = "HTTP calls of every process on this host, from eBPF, as OpenTelemetry spans and metrics",
    long_about = "Runs as root. With no OTLP endpoint it shows a live view of HTTP calls and a RED summary on exit; with OTEL_EXPORTER_OTLP_ENDPOINT set it also exports spans and metrics."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML configuration; OTEL_* variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Live view format; `none` exports only.
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// Observe only these pids (repeatable); adds to the config file's selection.
    #[arg(long)]
    pid: Vec<u32>,
    /// Observe only executables with this name (repeatable).
    #[arg(long)]
    exe: Vec<String>,
    /// Serve metrics on /metrics (Prometheus text format) and probes on /healthz and /readyz
    /// at this address (`:9464`, or host:port).
    #[arg(long, global = true, value_parser = parse_listen)]
    prometheus: Option<std::net::SocketAddr>,
    /// Show TCP connection events (as `sightline flows` does) beside the calls.
    #[arg(long)]
    flows: bool,
    /// More logging on stderr (-v info is the default; -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
    None,
}

impl From<Output> for OutputFormat {
    fn from(o: Output) -> OutputFormat {
        match o {
            Output::Text => OutputFormat::Text,
            Output::Json => OutputFormat::Json,
            Output::None => OutputFormat::None,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Capture and report (the default).
    Run,
    /// A live view of TCP connection events: opens, accepts, closes, failed connects and why,
    /// resets and retransmit bursts, with process, peer and figures (like `hubble observe`).
    Flows {
        /// Line format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Only these processes' connections (repeatable).
        #[arg(long)]
        pid: Vec<u32>,
        /// Only connections of processes with this service or executable name (repeatable).
        #[arg(long)]
        process: Vec<String>,
        /// Only connections to or from this peer address (repeatable).
        #[arg(long)]
        peer: Vec<std::net::IpAddr>,
        /// Only connections with this local or peer port (repeatable).
        #[arg(long)]
        port: Vec<u16>,
    },
    /// Show where sightline would attach in a binary or a running process.
    Symbols {
        /// A file path or a pid.
        target: String,
        #[arg(long)]
        json: bool,
        /// Which sources may answer struct offsets, in their fixed order of preference
        /// (dwarf, table, disassembly); naming fewer shows what the others would give.
        #[arg(long, value_delimiter = ',', default_value = "dwarf,table,disassembly")]
        offset_sources: Vec<sightline_symbolizer::go::OffsetSource>,
        /// Where separate debug files live.
        #[arg(long, default_value = "/usr/lib/debug")]
        debug_root: std::path::PathBuf,
    },
    /// For benchmarks and tests: the Go probes on one executable, outside the pipeline.
    #[command(hide = true)]
    ProbeGo {
        target: std::path::PathBuf,
        /// Attach an empty probe at the same points instead, and print its hits at exit.
        #[arg(long)]
        empty: bool,
        /// Attach and detach this many times, then exit.
        #[arg(long)]
        cycles: Option<u32>,
        /// Give the probes this process's offsets, so they do their full work.
        #[arg(long)]
        pid: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for people; journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(format!("sightline={level},warn"))
            }),
        )
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sightline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Symbols {
            target,
            json,
            offset_sources,
            debug_root,
        }) => sightline::commands::symbols::run(
            &target,
            json,
            &sightline_symbolizer::Options {
                debug_root,
                offset_sources,
            },
        ),
        Some(Command::ProbeGo {
            target,
            empty,
            cycles,
            pid,
        }) => sightline::commands::probe_go::run(&target, empty, cycles, pid),
        Some(Command::Flows {
            output,
            pid,
            process,
            peer,
            port,
        }) => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            cfg.prometheus = cli.prometheus.or(cfg.prometheus);
            cfg.output = Some(output.into());
            let filter = sightline::sinks::flows::FlowFilter {
                pids: pid,
                processes: process,
                peers: peer,
                ports: port,
            };
            run(cfg, sightline::app::View::Flows(filter))
        }
        None | Some(Command::Run) => {
            let mut cfg = Config::load(cli.config.as_deref())?;
            cfg.prometheus = cli.prometheus.or(cfg.prometheus);
            if let Some(o) = cli.output {
                cfg.output = Some(o.into());
            }
            cfg.selection.pids.extend(cli.pid);
            cfg.selection.executables.extend(cli.exe);
            let view = if cli.flows {
                sightline::app::View::CallsAndFlows
            } else {
                sightline::app::View::Calls
            };
            run(cfg, view)
        }
    }
}

fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    otel_config::ListenAddr::parse(s).map(|a| a.0)
}

fn run(cfg: Config, view: sightline::app::View) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sightline")
        .build()?;
    rt.block_on(sightline::app::run(cfg, view))
}
