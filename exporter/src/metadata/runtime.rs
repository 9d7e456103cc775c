//! What a container runtime left on the node about a container: its name, its image, and for
//! a container Kubernetes made, the pod's name, namespace and uid and the container's name
//! (from the annotations the CRI writes). Read from the runtime's own files, so no API is
//! called; a runtime whose files are not there (or not readable) adds nothing.
//!
//! - runc's state (`state.json`, under each runtime's state root) keeps the OCI annotations
//!   as `labels` (`key=value`), the CRI's included;
//! - containers/storage (podman, CRI-O) names containers in `containers.json`;
//! - docker names them in `config.v2.json`.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest runtime file read: a node's container list may be long, never this long.
const MAX_FILE: u64 = 16 << 20;

/// Where runc-based runtimes keep a container's state, by runtime.
const RUNC_ROOTS: [&str; 5] = [
    "/run/runc",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/moby",
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/default",
];

/// What the runtime's files say of a container; every field optional.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub k8s_container: Option<String>,
}

/// Looks `id` up in the runtimes' files under `root` ("/" on a host; a test's directory).
pub fn lookup(root: &Path, id: &str) -> RuntimeInfo {
    let mut info = RuntimeInfo::default();
    if let Some(labels) = RUNC_ROOTS
        .iter()
        .find_map(|r| read_json(&under(root, r).join(id).join("state.json")))
        .and_then(|s| s["config"]["labels"].as_array().cloned())
    {
        let get = |key: &str| {
            labels.iter().find_map(|l| {
                l.as_str()?
                    .strip_prefix(key)?
                    .strip_prefix('=')
                    .map(str::to_string)
            })
        };
        info.pod_name = get("io.kubernetes.cri.sandbox-name").or(get("io.kubernetes.pod.name"));
        info.pod_namespace =
            get("io.kubernetes.cri.sandbox-namespace").or(get("io.kubernetes.pod.namespace"));
        info.pod_uid = get("io.kubernetes.cri.sandbox-uid").or(get("io.kubernetes.pod.uid"));
        info.k8s_container =
            get("io.kubernetes.cri.container-name").or(get("io.kubernetes.container.name"));
        info.image = get("io.kubernetes.cri.image-name").or(get("io.kubernetes.cri-o.ImageName"));
    }
    for storage in [
        "/var/lib/containers/storage/overlay-containers/containers.json",
        "/run/containers/storage/overlay-containers/containers.json",
    ] {
        let Some(list) = read_json(&under(root, storage)) else {
            continue;
        };
        if let Some(c) = list
            .as_array()
            .and_then(|l| l.iter().find(|c| c["id"] == id))
        {
            info.name = info
                .name
                .or_else(|| c["names"][0].as_str().map(str::to_string));
            let meta: Value = c["metadata"]
                .as_str()
                .and_then(|m| serde_json::from_str(m).ok())
                .unwrap_or_default();
            info.image = info.image.or_else(|| {
                meta["image-name"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            });
            break;
        }
    }
    if let Some(d) = read_json(
        &under(root, "/var/lib/docker/containers")
            .join(id)
            .join("config.v2.json"),
    ) {
        info.name = info.name.or_else(|| {
            d["Name"]
                .as_str()
                .map(|n| n.trim_start_matches('/').to_string())
        });
        info.image = info
            .image
            .or_else(|| d["Config"]["Image"].as_str().map(str::to_string));
    }
    info
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn read_json(path: &Path) -> Option<Value> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8e1a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn write(root: &Path, rel: &str, v: &Value) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v.to_string()).unwrap();
    }

    fn root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sightline-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_kubernetes_container_under_containerd() {
        let r = root("k8s");
        write(
            &r,
            &format!("run/containerd/runc/k8s.io/{ID}/state.json"),
            &serde_json::json!({"config": {"labels": [
                "io.kubernetes.cri.container-name=web",
                "io.kubernetes.cri.sandbox-name=shop-7d9f-abcde",
                "io.kubernetes.cri.sandbox-namespace=prod",
                "io.kubernetes.cri.sandbox-uid=0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                "io.kubernetes.cri.image-name=registry.example/shop:1.4",
                "bundle=/run/x"
            ]}}),
        );
        let i = lookup(&r, ID);
        assert_eq!(i.k8s_container.as_deref(), Some("web"));
        assert_eq!(i.pod_name.as_deref(), Some("shop-7d9f-abcde"));
        assert_eq!(i.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(
            i.pod_uid.as_deref(),
            Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        );
        assert_eq!(i.image.as_deref(), Some("registry.example/shop:1.4"));
    }

    #[test]
    fn podman_and_docker_names_and_images() {
        let r = root("names");
        write(
            &r,
            "var/lib/containers/storage/overlay-containers/containers.json",
            &serde_json::json!([{"id": "other"}, {"id": ID, "names": ["web-1"],
                "metadata": "{\"image-name\":\"docker.io/library/nginx:1.25\",\"name\":\"web-1\"}"}]),
        );
        let i = lookup(&r, ID);
        assert_eq!(i.name.as_deref(), Some("web-1"));
        assert_eq!(i.image.as_deref(), Some("docker.io/library/nginx:1.25"));
        let r = root("docker");
        write(
            &r,
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            &serde_json::json!({"Name": "/api", "Config": {"Image": "api:2"}}),
        );
        let i = lookup(&r, ID);
        assert_eq!(
            (i.name.as_deref(), i.image.as_deref()),
            (Some("api"), Some("api:2"))
        );
        // Garbage and absent files add nothing.
        let r = root("bad");
        std::fs::create_dir_all(r.join("run/runc").join(ID)).unwrap();
        std::fs::write(r.join("run/runc").join(ID).join("state.json"), "{not json").unwrap();
        assert_eq!(lookup(&r, ID), RuntimeInfo::default());
    }
}
