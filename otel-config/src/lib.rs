//! sightline's configuration: a YAML file for everything, overridden by the standard
//! `OTEL_*` variables, as OpenTelemetry users expect. The result is validated once, here, so
//! the rest of the agent works with settled values.
#![forbid(unsafe_code)]

mod env;
mod file;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{ListenAddr, OutputFormat};

/// Must match `sightline_common::MAX_CAPTURE`; kept here so this crate has no eBPF dependency.
pub const MAX_CAPTURE_BYTES: u32 = 8192;
pub const DEFAULT_CAPTURE_BYTES: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    /// A variable that may hold credentials: its value is never shown.
    #[error("{var}: {message} (its value is not shown, as it may hold credentials)")]
    Secret { var: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
            other => Err(format!(
                "unknown protocol {other:?}; use grpc or http/protobuf"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}; use none, gzip or zstd"
            )),
        }
    }
}

/// Where and how one signal is exported, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalExport {
    /// The final URL: for HTTP, the general endpoint plus `/v1/traces` or `/v1/metrics`.
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub compression: Compression,
    pub certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// Lower-case header names whose values never leave the host.
    pub headers: Vec<String>,
    pub query_values: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    pub executables: Vec<String>,
    pub pids: Vec<u32>,
}

impl Selection {
    /// No rule given: every process is selected.
    pub fn is_everything(&self) -> bool {
        self.executables.is_empty() && self.pids.is_empty()
    }

    /// Everything is selected when no rule is given.
    pub fn matches(&self, pid: u32, exe_name: &str) -> bool {
        (self.executables.is_empty() && self.pids.is_empty())
            || self.pids.contains(&pid)
            || self.executables.iter().any(|e| e == exe_name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub capture_bytes: u32,
    /// `capture.network`: every TCP connection's events and figures (on by default).
    pub network_signals: bool,
    pub redaction: Redaction,
    pub selection: Selection,
    pub output: Option<OutputFormat>,
    /// `prometheus`: where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub prometheus: Option<std::net::SocketAddr>,
    pub traces: Option<SignalExport>,
    pub metrics: Option<SignalExport>,
    pub batch: BatchSettings,
    pub metric_export_interval: Duration,
    pub metric_export_timeout: Duration,
    /// Extra resource attributes for every observed process (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
    pub sdk_disabled: bool,
    /// `propagation.socket`: a traceparent may be added to Go clients' plaintext HTTP/1.x
    /// requests at the socket (on by default).
    pub inject_at_socket: bool,
    /// `propagation.process_memory`: a traceparent may be written into Go clients' HTTPS and
    /// HTTP/2 requests in their memory (on by default; the kernel may still refuse).
    pub write_process_memory: bool,
}

pub const DEFAULT_REDACTED_HEADERS: [&str; 3] = ["authorization", "cookie", "set-cookie"];

impl Config {
    /// Reads the optional file, then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                parse_file(p, &text)?
            }
            None => file::FileConfig::default(),
        };
        let vars: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("OTEL_"))
            .collect();
        resolve(file, &vars)
    }

    /// Same as [`Config::load`] with explicit inputs, for tests.
    pub fn from_parts(
        path: &Path,
        yaml: Option<&str>,
        vars: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file = match yaml {
            Some(t) => parse_file(path, t)?,
            None => file::FileConfig::default(),
        };
        resolve(file, vars)
    }
}

fn parse_file(path: &Path, text: &str) -> Result<file::FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(file::FileConfig::default());
    }
    serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(loc) => ConfigError::At {
            path: path.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: strip_location(&e.to_string()),
        },
        None => ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })
}

/// serde_yaml appends " at line L column C"; we already lead with file:line:col.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn resolve(file: file::FileConfig, vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let env = env::Env::new(vars);
    let capture_bytes = file
        .capture
        .max_bytes
        .map(|c| c.0)
        .unwrap_or(DEFAULT_CAPTURE_BYTES);

    let mut headers: Vec<String> = if file.redaction.keep_default_headers.unwrap_or(true) {
        DEFAULT_REDACTED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        Vec::new()
    };
    for h in file.redaction.headers.unwrap_or_default() {
        let h = h.to_ascii_lowercase();
        if !headers.contains(&h) {
            headers.push(h);
        }
    }
    let redaction = Redaction {
        headers,
        query_values: file.redaction.query_values.unwrap_or(true),
    };

    let selection = Selection {
        executables: file.select.executables.unwrap_or_default(),
        pids: file.select.pids.unwrap_or_default(),
    };

    let sdk_disabled = match env.bool("OTEL_SDK_DISABLED")? {
        Some(b) => b,
        None => file.sdk_disabled.unwrap_or(false),
    };

    let common = file.otlp.common();
    let traces = env::signal(&env, &common, &file.otlp.traces, "TRACES")?;
    let metrics = env::signal(&env, &common, &file.otlp.metrics, "METRICS")?;
    let traces = if env.exporter_is_none("OTEL_TRACES_EXPORTER")? {
        None
    } else {
        traces
    };
    let metrics = if env.exporter_is_none("OTEL_METRICS_EXPORTER")? {
        None
    } else {
        metrics
    };

    let batch = BatchSettings {
        schedule_delay: env
            .millis("OTEL_BSP_SCHEDULE_DELAY")?
            .or(file.batch.schedule_delay_ms.map(Duration::from_millis))
            .unwrap_or(Duration::from_millis(5000)),
        export_timeout: env
            .millis("OTEL_BSP_EXPORT_TIMEOUT")?
            .or(file.batch.export_timeout_ms.map(Duration::from_millis))
            .unwrap_or(Duration::from_millis(30000)),
        max_queue_size: env
            .usize("OTEL_BSP_MAX_QUEUE_SIZE")?
            .or(file.batch.max_queue_size)
            .unwrap_or(2048),
        max_export_batch_size: env
            .usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
            .or(file.batch.max_export_batch_size)
            .unwrap_or(512),
    };
    if batch.max_queue_size == 0 || batch.max_export_batch_size == 0 {
        return Err(ConfigError::Invalid(
            "batch sizes must be at least 1 (OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE)"
                .into(),
        ));
    }
    if batch.max_export_batch_size > batch.max_queue_size {
        return Err(ConfigError::Invalid(format!(
            "the export batch ({}) cannot be larger than the queue ({}); lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            batch.max_export_batch_size, batch.max_queue_size
        )));
    }
    let metric_export_interval = env
        .millis("OTEL_METRIC_EXPORT_INTERVAL")?
        .or(file.metrics.export_interval_ms.map(Duration::from_millis))
        .unwrap_or(Duration::from_millis(60000));
    let metric_export_timeout = env
        .millis("OTEL_METRIC_EXPORT_TIMEOUT")?
        .or(file.metrics.export_timeout_ms.map(Duration::from_millis))
        .unwrap_or(Duration::from_millis(30000));
    if metric_export_interval.is_zero() {
        return Err(ConfigError::Invalid(
            "the metric export interval must be above 0 ms".into(),
        ));
    }

    let mut resource_attributes: Vec<(String, String)> = file
        .resource
        .attributes
        .unwrap_or_default()
        .into_iter()
        .collect();
    for (k, v) in env.key_values("OTEL_RESOURCE_ATTRIBUTES")? {
        resource_attributes.retain(|(ek, _)| *ek != k);
        resource_attributes.push((k, v));
    }

    Ok(Config {
        capture_bytes,
        network_signals: file.capture.network.unwrap_or(true),
        redaction,
        selection,
        output: file.output,
        prometheus: file.prometheus.map(|a| a.0),
        traces,
        metrics,
        batch,
        metric_export_interval,
        metric_export_timeout,
        resource_attributes,
        sdk_disabled,
        write_process_memory: file.propagation.process_memory.unwrap_or(true),
        inject_at_socket: file.propagation.socket.unwrap_or(true),
    })
}

/// Parses the W3C-baggage-like `key=value,key2=value2` list that `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_EXPORTER_OTLP_HEADERS` use. Values are percent-decoded.
pub fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{part:?} has an empty key"));
        }
        let v = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| format!("{part:?}: the value is not UTF-8 once percent-decoded"))?;
        out.push((k.to_string(), v.into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
