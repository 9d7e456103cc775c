//! Who an observed process is: its identity, and the OpenTelemetry resource every signal from
//! it carries. Enrichers add what the host knows beyond `/proc` (containers, Kubernetes).

pub mod container;
pub mod runtime;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// Adds resource attributes to a process as it is first read (a container runtime's or
/// Kubernetes' names for it, say). Runs off the capture path, once per process.
pub trait Enricher: Send {
    fn enrich(&self, process: &mut ProcessInfo);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe_path: String,
    pub exe_name: String,
    /// From the process's own `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`, else the
    /// executable's name: the service is named as it would name itself.
    pub service_name: String,
    /// The process named its service itself (`OTEL_SERVICE_NAME` or `service.name`): no
    /// enricher renames it.
    pub self_named: bool,
    /// The rest of the process's own `OTEL_RESOURCE_ATTRIBUTES`.
    pub attributes: Vec<(String, String)>,
    /// What sightline's enrichers found (its container, say): these win over the process's
    /// own attributes.
    pub detected: Vec<(String, String)>,
}

impl ProcessInfo {
    pub fn read(pid: u32) -> Option<ProcessInfo> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe_path = match exe {
            Some(p) => p
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string(),
            // Kernel threads and zombies have no exe; the comm still names them.
            None => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()?
                .trim()
                .to_string(),
        };
        let exe_name = exe_path.rsplit('/').next().unwrap_or(&exe_path).to_string();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        Some(Self::from_parts(pid, exe_path, exe_name, &environ))
    }

    pub fn from_parts(pid: u32, exe_path: String, exe_name: String, environ: &[u8]) -> Self {
        let mut service_name = None;
        let mut attributes = Vec::new();
        for var in environ.split(|&b| b == 0) {
            let Ok(var) = std::str::from_utf8(var) else {
                continue;
            };
            if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
                if !v.trim().is_empty() {
                    service_name = Some(v.trim().to_string());
                }
            } else if let Some(v) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
                // A malformed list in the target's environment is the target's problem; keep
                // what parses.
                for part in v.split(',') {
                    if let Ok(kv) = otel_config::parse_key_values(part) {
                        attributes.extend(kv);
                    }
                }
            }
        }
        let from_attrs = attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone());
        attributes.retain(|(k, _)| k != "service.name");
        let own = service_name.or(from_attrs);
        let self_named = own.is_some();
        let service_name = own.unwrap_or_else(|| exe_name.clone());
        ProcessInfo {
            pid,
            exe_path,
            exe_name,
            service_name,
            self_named,
            attributes,
            detected: Vec::new(),
        }
    }
}

/// Process identities by pid, read once when a process is first seen.
#[derive(Default)]
pub struct Processes {
    map: HashMap<u32, Arc<ProcessInfo>>,
    enrichers: Vec<Box<dyn Enricher>>,
}

impl Processes {
    pub fn with_enrichers(enrichers: Vec<Box<dyn Enricher>>) -> Processes {
        Processes {
            map: HashMap::default(),
            enrichers,
        }
    }

    /// Reads /proc now; done at exec so short-lived clients are identified before they exit.
    pub fn refresh(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        let mut info = ProcessInfo::read(pid)?;
        for e in &self.enrichers {
            e.enrich(&mut info);
        }
        let info = Arc::new(info);
        self.map.insert(pid, info.clone());
        Some(info)
    }

    pub fn get(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        match self.map.get(&pid) {
            Some(p) => Some(p.clone()),
            None => self.refresh(pid),
        }
    }

    pub fn insert(&mut self, info: Arc<ProcessInfo>) {
        self.map.insert(info.pid, info);
    }

    pub fn remove(&mut self, pid: u32) {
        self.map.remove(&pid);
    }
}

/// Builds the resource every signal of an observed process carries.
pub fn process_resource(p: &ProcessInfo, extra: &[(String, String)]) -> Resource {
    // The process's own attributes first: what sightline knows of it and what the operator
    // set come after, and a later value wins, so a traced process cannot rename the host or
    // pose as another process.
    let mut attrs: Vec<KeyValue> = p
        .attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    attrs.extend(
        p.detected
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    attrs.extend([
        KeyValue::new("process.pid", p.pid as i64),
        KeyValue::new("process.executable.name", p.exe_name.clone()),
        KeyValue::new("process.executable.path", p.exe_path.clone()),
    ]);
    attrs.extend(common_resource_attributes(extra));
    Resource::builder_empty()
        .with_attributes(attrs)
        .with_service_name(p.service_name.clone())
        .build()
}

pub fn common_resource_attributes(extra: &[(String, String)]) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new("host.name", host_name()),
        KeyValue::new("telemetry.sdk.name", "sightline"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ];
    v.extend(
        extra
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    v
}

pub fn host_name() -> String {
    let own = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    // In a container with a UTS namespace of its own the kernel's name is the container's;
    // the host's is in the host's /etc.
    let name = match host_process() {
        Some(pid) if namespace("self", "uts") != namespace(&pid.to_string(), "uts") => {
            std::fs::read_to_string(host_root().join("etc/hostname"))
                .ok()
                .filter(|h| !h.trim().is_empty())
                .or_else(own)
        }
        _ => own(),
    };
    name.map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A process in the host's namespaces whose root this one may enter (from a container, with
/// the host's pid namespace): init, else kthreadd, which shares init's file system root from
/// boot, for hosts that bar reading their init.
pub fn host_process() -> Option<u32> {
    [1, 2]
        .into_iter()
        .find(|pid| std::fs::read_dir(format!("/proc/{pid}/root")).is_ok())
}

/// The host's root file system, reached through a host process's root without mounting
/// anything; "/" where none is readable.
pub fn host_root() -> std::path::PathBuf {
    match host_process() {
        Some(pid) => format!("/proc/{pid}/root").into(),
        None => "/".into(),
    }
}

fn namespace(pid: &str, kind: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_name_precedence() {
        let p = ProcessInfo::from_parts(
            1,
            "/usr/bin/python3.11".into(),
            "python3.11".into(),
            b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=service.name=from-attrs,team=pay%20ments\0",
        );
        assert_eq!(p.service_name, "from-attrs");
        assert_eq!(p.attributes, vec![("team".into(), "pay ments".into())]);
        let p = ProcessInfo::from_parts(
            1,
            "/x/y".into(),
            "y".into(),
            b"OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.name=nope\0",
        );
        assert_eq!(p.service_name, "checkout");
        let p = ProcessInfo::from_parts(1, "/usr/sbin/nginx".into(), "nginx".into(), b"");
        assert_eq!(p.service_name, "nginx");
    }

    #[test]
    fn a_process_cannot_override_what_sightline_and_the_operator_say() {
        let p = ProcessInfo::from_parts(
            42,
            "/usr/bin/app".into(),
            "app".into(),
            b"OTEL_RESOURCE_ATTRIBUTES=host.name=spoofed,process.pid=1,team=pay,env=dev\0",
        );
        let r = process_resource(&p, &[("env".into(), "prod".into())]);
        let get = |k: &str| {
            r.iter()
                .find(|(key, _)| key.as_str() == k)
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(get("host.name"), Some(host_name()));
        assert_eq!(get("process.pid"), Some("42".into()));
        assert_eq!(get("team"), Some("pay".into()));
        assert_eq!(get("env"), Some("prod".into()));
    }

    #[test]
    fn reads_own_process() {
        let p = ProcessInfo::read(std::process::id()).unwrap();
        assert!(p.exe_path.starts_with('/'));
        assert_eq!(p.pid, std::process::id());
    }
}
