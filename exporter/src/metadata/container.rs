//! Which container a process runs in, from its cgroup path: cgroup v1 and v2, under systemd or
//! cgroupfs, with docker's, containerd's, CRI-O's and podman's naming; and, for a container
//! Kubernetes made, its pod's uid (in the path too). The runtime's own files add names
//! ([`super::runtime`]). Also each process's `service.instance.id`, and a service name for a
//! containerised process that gave none.

use super::runtime::{lookup, RuntimeInfo};
use super::{Enricher, ProcessInfo};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Containers whose runtime files were read, remembered; past this the memory starts over.
const MAX_KNOWN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime's full id: 64 hex digits.
    pub id: String,
    /// `docker`, `containerd`, `cri-o` or `podman`, when the path tells.
    pub runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
}

/// Prefixes runtimes give a container's cgroup under systemd (`docker-<id>.scope`), and the
/// runtime each names. The `conmon` scopes podman and CRI-O make hold their monitor, not the
/// container, and are not matched.
const SCOPES: [(&str, &str); 5] = [
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
    ("containerd-", "containerd"),
];

/// The container named by a `/proc/PID/cgroup` text, if any. The unified (`0::`) line wins
/// where a hybrid host lists both.
pub fn from_cgroup(text: &str) -> Option<Container> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines
        .iter()
        .find_map(|l| from_path(l.splitn(3, ':').nth(2)?))
}

fn from_path(path: &str) -> Option<Container> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segs.iter().enumerate().rev() {
        let name = seg.strip_suffix(".scope").unwrap_or(seg);
        let found = SCOPES
            .iter()
            .find_map(|(prefix, rt)| Some((name.strip_prefix(prefix)?, Some(*rt))))
            .or_else(|| {
                // cgroupfs: the bare id, under a directory that names the runtime.
                let rt = match i.checked_sub(1).map(|p| segs[p]) {
                    Some("docker") => Some("docker"),
                    Some("libpod_parent") => Some("podman"),
                    _ => None,
                };
                Some((name, rt))
            });
        if let Some((id, runtime)) = found.filter(|(id, _)| is_id(id)) {
            return Some(Container {
                id: id.to_string(),
                runtime,
                pod_uid: segs[..i].iter().rev().find_map(|s| pod_uid(s)),
            });
        }
    }
    None
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = seg.rfind("pod")?;
    let uid = seg[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

/// Adds `container.*`, `k8s.*` and `service.instance.id`, and names the service of a
/// containerised process that named none after its Kubernetes container or its container.
pub struct ContainerEnricher {
    pub host: String,
    /// Where the runtimes' state is read: the host's root, also from inside a container.
    root: PathBuf,
    known: Mutex<HashMap<String, RuntimeInfo>>,
}

impl ContainerEnricher {
    pub fn new(host: String) -> ContainerEnricher {
        ContainerEnricher {
            host,
            root: super::host_root(),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The runtime's files for container `id`, read once per container.
    fn runtime(&self, id: &str) -> RuntimeInfo {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = known.get(id) {
            return i.clone();
        }
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        let info = lookup(&self.root, id);
        known.insert(id.to_string(), info.clone());
        info
    }
}

impl Enricher for ContainerEnricher {
    fn enrich(&self, p: &mut ProcessInfo) {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).unwrap_or_default();
        let Some(c) = from_cgroup(&cgroup) else {
            // A process on the host: its pid and start time, which no later process repeats.
            let start = start_ticks(p.pid).unwrap_or(0);
            p.detected.push((
                "service.instance.id".into(),
                format!("{}:{}:{start}", self.host, p.pid),
            ));
            return;
        };
        let rt = self.runtime(&c.id);
        let pod_uid = rt.pod_uid.clone().or(c.pod_uid.clone());
        // Every process of a container is one instance of its service.
        let instance = match (&pod_uid, &rt.k8s_container) {
            (Some(pod), Some(name)) => format!("{pod}.{name}"),
            (Some(pod), None) => format!("{pod}.{}", &c.id[..12]),
            _ => c.id.clone(),
        };
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                p.detected.push((k.into(), v));
            }
        };
        add("container.id", Some(c.id.clone()));
        add("container.runtime", c.runtime.map(str::to_string));
        add(
            "container.name",
            rt.name.clone().or(rt.k8s_container.clone()),
        );
        add("container.image.name", rt.image.clone());
        add("k8s.pod.uid", pod_uid);
        add("k8s.pod.name", rt.pod_name.clone());
        add("k8s.namespace.name", rt.pod_namespace.clone());
        add("k8s.container.name", rt.k8s_container.clone());
        add("service.instance.id", Some(instance));
        if !p.self_named {
            if let Some(name) = rt.k8s_container.or(rt.name) {
                p.service_name = name;
            }
        }
    }
}

/// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count fields after its last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8e1a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn id_of(text: &str) -> Option<(String, Option<&'static str>, Option<String>)> {
        from_cgroup(text).map(|c| (c.id, c.runtime, c.pod_uid))
    }

    #[test]
    fn every_runtimes_naming_under_systemd_and_cgroupfs() {
        let cases = [
            (
                format!("0::/system.slice/docker-{ID}.scope"),
                Some("docker"),
            ),
            (
                format!("12:memory:/docker/{ID}\n0::/docker/{ID}"),
                Some("docker"),
            ),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/container"),
                Some("podman"),
            ),
            (format!("0::/libpod_parent/libpod-{ID}"), Some("podman")),
            (format!("0::/system.slice/crio-{ID}.scope"), Some("cri-o")),
            (
                format!("0::/system.slice/containerd.service/default/{ID}"),
                None,
            ),
        ];
        for (text, rt) in cases {
            assert_eq!(id_of(&text), Some((ID.to_string(), rt, None)), "{text}");
        }
    }

    #[test]
    fn kubernetes_pods_give_their_uid() {
        let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(
            id_of(&systemd),
            Some((ID.to_string(), Some("containerd"), Some(uid.to_string())))
        );
        let cgroupfs = format!("0::/kubepods/burstable/pod{uid}/{ID}");
        assert_eq!(
            id_of(&cgroupfs),
            Some((ID.to_string(), None, Some(uid.to_string())))
        );
    }

    #[test]
    fn hosts_processes_and_monitors_are_not_containers() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope",
            "0::/init.scope",
            "12:pids:/\n0::/",
            "",
            "garbage without colons",
            &format!("0::/machine.slice/libpod-conmon-{ID}.scope"),
            &format!("0::/system.slice/docker-{}.scope", &ID[..63]),
        ] {
            assert_eq!(from_cgroup(text), None, "{text}");
        }
    }

    #[test]
    fn this_process_has_a_start_time() {
        assert!(start_ticks(std::process::id()).is_some_and(|t| t > 0));
    }
}
