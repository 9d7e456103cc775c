//! The `OTEL_*` variables, read from a map so tests need not touch the process environment.

use crate::file::SignalFile;
use crate::{parse_key_values, Compression, ConfigError, Protocol, SignalExport};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct Env<'a> {
    vars: &'a BTreeMap<String, String>,
}

impl<'a> Env<'a> {
    pub fn new(vars: &'a BTreeMap<String, String>) -> Self {
        Env { vars }
    }

    /// An empty variable counts as unset, as the OpenTelemetry spec asks.
    pub fn get(&self, var: &str) -> Option<&'a str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn err(&self, var: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Env {
            var: var.to_string(),
            value: self.vars.get(var).cloned().unwrap_or_default(),
            message: message.into(),
        }
    }

    pub fn bool(&self, var: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" => Ok(Some(true)),
            Some(v) if v == "false" => Ok(Some(false)),
            Some(_) => Err(self.err(var, "expected true or false")),
        }
    }

    pub fn millis(&self, var: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(|ms| Some(Duration::from_millis(ms)))
                .map_err(|_| self.err(var, "expected a whole number of milliseconds")),
        }
    }

    pub fn usize(&self, var: &str) -> Result<Option<usize>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| self.err(var, "expected a whole number")),
        }
    }

    pub fn key_values(&self, var: &str) -> Result<Vec<(String, String)>, ConfigError> {
        match self.get(var) {
            None => Ok(Vec::new()),
            Some(v) => parse_key_values(v).map_err(|m| self.err(var, m)),
        }
    }

    /// [`Self::key_values`] for a variable that may hold credentials (headers): an error never
    /// repeats any part of the value.
    pub fn secret_key_values(&self, var: &str) -> Result<Vec<(String, String)>, ConfigError> {
        match self.get(var) {
            None => Ok(Vec::new()),
            Some(v) => parse_key_values(v).map_err(|_| ConfigError::Secret {
                var: var.to_string(),
                message: "expected comma-separated key=value pairs with percent-encoded values, such as Authorization=Bearer%20<token>".into(),
            }),
        }
    }

    /// `OTEL_TRACES_EXPORTER=none` turns a signal off; only `otlp` and `none` make sense here.
    pub fn exporter_is_none(&self, var: &str) -> Result<bool, ConfigError> {
        match self.get(var).map(str::trim) {
            None | Some("otlp") => Ok(false),
            Some("none") => Ok(true),
            Some(_) => Err(self.err(var, "sightline exports with otlp or none")),
        }
    }
}

/// Resolves one signal. Precedence: per-signal variable, general variable, per-signal file key,
/// general file key. A signal without any endpoint is not exported.
pub fn signal(
    env: &Env,
    common: &SignalFile,
    own: &SignalFile,
    signal: &str,
) -> Result<Option<SignalExport>, ConfigError> {
    let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}");
    let general = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{suffix}");

    let protocol = match env
        .get(&var("PROTOCOL"))
        .map(|v| (var("PROTOCOL"), v))
        .or_else(|| {
            env.get(&general("PROTOCOL"))
                .map(|v| (general("PROTOCOL"), v))
        }) {
        Some((name, v)) => Protocol::parse(v).map_err(|m| env.err(&name, m))?,
        // The OpenTelemetry spec's default.
        None => own
            .protocol
            .or(common.protocol)
            .unwrap_or(Protocol::HttpProtobuf),
    };

    let path = match signal {
        "TRACES" => "v1/traces",
        _ => "v1/metrics",
    };
    // A general endpoint is a base URL for HTTP; a per-signal one is used exactly as given.
    let with_path = |base: &str| match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}/{path}", base.trim_end_matches('/')),
    };
    let (endpoint, origin) = if let Some(v) = env.get(&var("ENDPOINT")) {
        (v.trim().to_string(), var("ENDPOINT"))
    } else if let Some(v) = env.get(&general("ENDPOINT")) {
        (with_path(v.trim()), general("ENDPOINT"))
    } else if let Some(v) = &own.endpoint {
        (
            v.clone(),
            format!("otlp.{} endpoint", signal.to_lowercase()),
        )
    } else if let Some(v) = &common.endpoint {
        (with_path(v), "otlp.endpoint".to_string())
    } else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(ConfigError::Invalid(format!(
            "{origin}: endpoint {endpoint:?} must start with http:// or https://"
        )));
    }

    let mut headers: Vec<(String, String)> = Vec::new();
    let mut add = |kv: Vec<(String, String)>| {
        for (k, v) in kv {
            let k = k.to_ascii_lowercase();
            headers.retain(|(ek, _)| *ek != k);
            headers.push((k, v));
        }
    };
    for src in [&common.headers, &own.headers].into_iter().flatten() {
        add(src.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    }
    add(env.secret_key_values(&general("HEADERS"))?);
    add(env.secret_key_values(&var("HEADERS"))?);

    let timeout = env
        .millis(&var("TIMEOUT"))?
        .or(env.millis(&general("TIMEOUT"))?)
        .or(own
            .timeout_ms
            .or(common.timeout_ms)
            .map(Duration::from_millis))
        .unwrap_or(Duration::from_secs(10));

    let compression = match env
        .get(&var("COMPRESSION"))
        .map(|v| (var("COMPRESSION"), v))
        .or_else(|| {
            env.get(&general("COMPRESSION"))
                .map(|v| (general("COMPRESSION"), v))
        }) {
        Some((name, v)) => Compression::parse(v).map_err(|m| env.err(&name, m))?,
        None => own
            .compression
            .or(common.compression)
            .unwrap_or(Compression::None),
    };

    let path_setting = |suffix: &str, own: &Option<String>, common: &Option<String>| {
        env.get(&var(suffix))
            .or_else(|| env.get(&general(suffix)))
            .map(|s| s.trim().to_string())
            .or_else(|| own.clone())
            .or_else(|| common.clone())
            .map(PathBuf::from)
    };
    let certificate = path_setting("CERTIFICATE", &own.certificate, &common.certificate);
    let client_key = path_setting("CLIENT_KEY", &own.client_key, &common.client_key);
    let client_certificate = path_setting(
        "CLIENT_CERTIFICATE",
        &own.client_certificate,
        &common.client_certificate,
    );
    if client_key.is_some() != client_certificate.is_some() {
        return Err(ConfigError::Invalid(format!(
            "{signal}: a client key and a client certificate go together; set both or neither"
        )));
    }
    let insecure = env
        .bool(&var("INSECURE"))?
        .or(env.bool(&general("INSECURE"))?)
        .or(own.insecure.or(common.insecure))
        .unwrap_or(false);

    Ok(Some(SignalExport {
        endpoint,
        protocol,
        headers,
        timeout,
        compression,
        certificate,
        client_key,
        client_certificate,
        insecure,
    }))
}
