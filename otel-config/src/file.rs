//! The YAML file's shape. Every struct denies unknown keys so a typo is an error with its
//! position, not a setting silently ignored.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub capture: CaptureFile,
    #[serde(default)]
    pub redaction: RedactionFile,
    #[serde(default)]
    pub select: SelectFile,
    pub output: Option<OutputFormat>,
    #[serde(default)]
    pub otlp: OtlpFile,
    #[serde(default)]
    pub batch: BatchFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub resource: ResourceFile,
    #[serde(default)]
    pub propagation: PropagationFile,
    pub sdk_disabled: Option<bool>,
    /// Where to serve `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
    pub prometheus: Option<ListenAddr>,
}

/// A listening address: `host:port`, or `:port` for every interface. Validated while parsing,
/// so the error has a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(pub std::net::SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ListenAddr::parse(&s)
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        let full = match s.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => s.to_string(),
        };
        full.parse().map(ListenAddr).map_err(|_| {
            format!("`{s}` is not a listening address; write host:port or :port, e.g. :9464")
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropagationFile {
    /// Whether sightline may write a `traceparent` into Go clients' HTTPS and HTTP/2 requests
    /// in their memory (where the kernel allows it). Plaintext HTTP/1.x ones get theirs at the
    /// socket either way.
    pub process_memory: Option<bool>,
    /// Whether sightline may add a `traceparent` to Go clients' plaintext HTTP/1.x requests at
    /// the socket (cgroup connect and sock_ops hooks, an sk_msg program). Off where another
    /// agent's sk_msg or sock_ops programs must have those hooks alone.
    pub socket: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFile {
    pub max_bytes: Option<CaptureBytes>,
    /// Whether the network signals (every TCP connection's events and figures) are captured.
    pub network: Option<bool>,
}

/// Payload bytes copied per library call; validated while parsing so the error has a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct CaptureBytes(pub u32);

impl TryFrom<u64> for CaptureBytes {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        let max = crate::MAX_CAPTURE_BYTES as u64;
        if (64..=max).contains(&v) {
            Ok(CaptureBytes(v as u32))
        } else {
            Err(format!(
                "capture.max_bytes must be between 64 and {max} (got {v}); heads rarely need more than 4096"
            ))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionFile {
    /// Header names whose values are replaced, in addition to the defaults.
    pub headers: Option<Vec<String>>,
    /// Whether to keep the defaults (Authorization, Cookie, Set-Cookie). Turning this off is a
    /// deliberate act, so it has its own key.
    pub keep_default_headers: Option<bool>,
    pub query_values: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectFile {
    pub executables: Option<Vec<String>>,
    pub pids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Text,
    Json,
    None,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    // Spelled out rather than `#[serde(flatten)]`: serde cannot deny unknown keys through a
    // flattened struct, and a typo here would silently send telemetry nowhere.
    pub endpoint: Option<String>,
    pub protocol: Option<crate::Protocol>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_ms: Option<u64>,
    pub compression: Option<crate::Compression>,
    pub certificate: Option<String>,
    pub client_key: Option<String>,
    pub client_certificate: Option<String>,
    pub insecure: Option<bool>,
    #[serde(default)]
    pub traces: SignalFile,
    #[serde(default)]
    pub metrics: SignalFile,
}

impl OtlpFile {
    pub fn common(&self) -> SignalFile {
        SignalFile {
            endpoint: self.endpoint.clone(),
            protocol: self.protocol,
            headers: self.headers.clone(),
            timeout_ms: self.timeout_ms,
            compression: self.compression,
            certificate: self.certificate.clone(),
            client_key: self.client_key.clone(),
            client_certificate: self.client_certificate.clone(),
            insecure: self.insecure,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalFile {
    pub endpoint: Option<String>,
    pub protocol: Option<crate::Protocol>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_ms: Option<u64>,
    pub compression: Option<crate::Compression>,
    pub certificate: Option<String>,
    pub client_key: Option<String>,
    pub client_certificate: Option<String>,
    pub insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchFile {
    pub schedule_delay_ms: Option<u64>,
    pub export_timeout_ms: Option<u64>,
    pub max_queue_size: Option<usize>,
    pub max_export_batch_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub export_interval_ms: Option<u64>,
    pub export_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    pub attributes: Option<BTreeMap<String, String>>,
}
