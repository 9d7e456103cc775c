//! The Kubernetes example: a Helm chart, and daemonset.yaml, the chart rendered with its
//! default values. There is no cluster here: helm lints and renders the chart,
//! kubernetes-validate checks every object against the API's schemas, and the assertions read
//! the values a kubelet would act on.

use serde_json::Value;
use sightline_e2e::procs::{require, run, sightline_bin, tempdir};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where tests/prereqs.sh --tests installs helm, kubernetes-validate and PyYAML (pinned).
const VENV: &str = "/var/cache/sightline-tests/venv/bin";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> PathBuf {
    root().join("examples/kubernetes")
}

/// A tool from the tests' venv; fails loudly when it is missing.
fn tool(name: &str) -> PathBuf {
    let p = Path::new(VENV).join(name);
    assert!(
        p.exists(),
        "{} is missing; run tests/prereqs.sh --tests (the README's test command does)",
        p.display()
    );
    p
}

/// `helm template sightline <chart> --namespace sightline`, as render.sh runs it, plus `extra`.
fn render(extra: &[&str]) -> String {
    run(Command::new(tool("helm"))
        .args(["template", "sightline"])
        .arg(example().join("chart"))
        .args(["--namespace", "sightline"])
        .args(extra))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Every YAML document in `yaml`, as JSON, read by PyYAML (the venv's python).
fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

fn object<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in {docs:#?}");
    found[0]
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().unwrap()).collect()
}

fn container(docs: &[Value]) -> &Value {
    let containers = object(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{containers:#?}");
    &containers[0]
}

fn env<'a>(c: &'a Value, name: &str) -> (usize, &'a Value) {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .find(|(_, e)| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {:#?}", c["env"]))
}

/// kubernetes-validate --strict (unknown fields are errors) against Kubernetes `version`, or
/// against the newest it ships with none. Its output, or its complaint.
fn validate(file: &Path, version: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(tool("kubernetes-validate"));
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let out = cmd.arg(file).output().expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Every object in `file` passed, and there are `objects` of them.
fn assert_valid(file: &Path, version: Option<&str>, objects: usize) {
    let out = validate(file, version).unwrap_or_else(|e| panic!("{version:?}: {e}"));
    assert_eq!(
        out.matches(" passed for resource ").count(),
        objects,
        "{version:?}: {out}"
    );
}

fn write_temp(tag: &str, name: &str, text: &str) -> PathBuf {
    let path = tempdir(tag).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn helm_lints_the_chart_strictly() {
    for extra in [
        &[][..],
        &["--set", "priorityClassName=system-node-critical"][..],
    ] {
        let out = run(Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(example().join("chart"))
            .args(["--namespace", "sightline"])
            .args(extra))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
    }
}

#[test]
fn daemonset_yaml_is_the_chart_rendered_with_its_defaults() {
    let committed = std::fs::read_to_string(example().join("daemonset.yaml")).unwrap();
    assert!(
        render(&[]) == committed,
        "examples/kubernetes/daemonset.yaml differs from the chart's rendering: run examples/kubernetes/render.sh"
    );
}

#[test]
fn render_sh_writes_the_same_manifest() {
    let out = tempdir("render").join("daemonset.yaml");
    // Without helm on PATH, render.sh finds the venv's.
    run(Command::new(example().join("render.sh"))
        .arg(&out)
        .env("PATH", "/usr/bin:/bin"))
    .unwrap_or_else(|e| panic!("{e}"));
    let written = std::fs::read(&out).unwrap();
    let committed = std::fs::read(example().join("daemonset.yaml")).unwrap();
    assert!(written == committed, "render.sh wrote something else");
}

#[test]
fn the_manifest_is_valid_for_kubernetes_1_30_and_the_newest() {
    let file = example().join("daemonset.yaml");
    // Namespace, ServiceAccount, ConfigMap, DaemonSet.
    assert_valid(&file, Some("1.30.0"), 4);
    assert_valid(&file, None, 4);
    // 1.30 is the oldest that knows appArmorProfile, hence the chart's kubeVersion.
    let older = validate(&file, Some("1.29.0")).expect_err("1.29 has no appArmorProfile field");
    assert!(
        older.contains("'appArmorProfile' was unexpected"),
        "{older}"
    );
    let chart = std::fs::read_to_string(example().join("chart/Chart.yaml")).unwrap();
    assert!(chart.contains("kubeVersion: \">=1.30.0-0\""), "{chart}");
}

#[test]
fn the_daemonset_holds_what_sightline_needs() {
    let text = std::fs::read_to_string(example().join("daemonset.yaml")).unwrap();
    let docs = documents(&text);
    assert_eq!(
        kinds(&docs),
        ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    for d in &docs {
        assert_eq!(d["metadata"]["name"], "sightline", "{d:#}");
        let labels = &d["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "sightline");
        assert_eq!(labels["app.kubernetes.io/instance"], "sightline");
        assert_eq!(
            labels["app.kubernetes.io/version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "sightline", "{d:#}");
        }
    }
    let ns = object(&docs, "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert_eq!(
        object(&docs, "ServiceAccount")["automountServiceAccountToken"],
        false
    );
    let config = documents(
        object(&docs, "ConfigMap")["data"]["sightline.yaml"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        config[0],
        serde_json::json!({
            "output": "none",
            "capture": {"max_bytes": 4096},
            "redaction": {"query_values": true},
        })
    );

    let ds = object(&docs, "DaemonSet");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
    let template = &ds["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    let pod = &template["spec"];
    assert_eq!(pod["hostPID"], true);
    assert!(pod.get("hostNetwork").is_none(), "{pod:#}");
    assert_eq!(pod["serviceAccountName"], "sightline");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert!(pod.get("priorityClassName").is_none(), "{pod:#}");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );

    let c = container(&docs);
    assert_eq!(
        c["image"],
        format!("localhost/sightline:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c["args"],
        serde_json::json!([
            "--config",
            "/etc/sightline/sightline.yaml",
            "--prometheus",
            ":9464"
        ])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut added: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    added.sort_unstable();
    assert_eq!(
        added,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "PERFMON",
            "SYS_ADMIN",
            "SYS_PTRACE"
        ]
    );
    // The API refuses false together with CAP_SYS_ADMIN.
    assert!(sc.get("allowPrivilegeEscalation").is_none(), "{sc:#}");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["appArmorProfile"]["type"], "Unconfined");

    let (endpoint_at, endpoint) = env(c, "OTEL_EXPORTER_OTLP_ENDPOINT");
    assert_eq!(
        endpoint["value"],
        "http://otel-collector.observability:4318"
    );
    let (node_at, node) = env(c, "NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let (attrs_at, attrs) = env(c, "OTEL_RESOURCE_ATTRIBUTES");
    assert_eq!(
        attrs["value"],
        "host.name=$(NODE_NAME),k8s.node.name=$(NODE_NAME)"
    );
    // The kubelet expands $(NODE_NAME) only from variables declared before.
    assert!(node_at < attrs_at, "{:#}", c["env"]);
    assert!(endpoint_at < attrs_at);

    assert_eq!(
        c["ports"],
        serde_json::json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    let live = &c["livenessProbe"];
    assert_eq!(live["httpGet"]["path"], "/healthz");
    assert_eq!(live["httpGet"]["port"], "metrics");
    // At least a minute and a half before a restart: attaching on a busy node takes seconds.
    let patience = live["initialDelaySeconds"].as_u64().unwrap()
        + live["periodSeconds"].as_u64().unwrap() * live["failureThreshold"].as_u64().unwrap();
    assert!(patience >= 90, "{live:#}");

    assert_eq!(
        c["resources"],
        serde_json::json!({
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        })
    );

    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{mounts:#?}");
    for (at, host) in [
        ("/sys/fs/cgroup", Some("/sys/fs/cgroup")),
        ("/sys/kernel", Some("/sys/kernel")),
        ("/etc/sightline", None),
    ] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == at)
            .unwrap_or_else(|| panic!("nothing mounted at {at}"));
        assert_eq!(m["readOnly"], true, "{m:#}");
        let v = volume(m["name"].as_str().unwrap());
        match host {
            Some(path) => assert_eq!(v["hostPath"]["path"], path, "{v:#}"),
            None => assert_eq!(v["configMap"]["name"], "sightline", "{v:#}"),
        }
    }
}

#[test]
fn other_values_render_valid_objects() {
    let text = render(&[
        "--set",
        "namespace.create=false",
        "--set",
        "priorityClassName=system-node-critical",
        "--set",
        "otlp.endpoint=https://collector.example.com:4318",
        "--set",
        "clusterName=prod-eu",
        "--set",
        "image.repository=registry.example.com/sightline",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "config.capture.max_bytes=2048",
    ]);
    let file = write_temp("values", "rendered.yaml", &text);
    // ServiceAccount, ConfigMap, ResourceQuota, DaemonSet.
    assert_valid(&file, Some("1.30.0"), 4);
    assert_valid(&file, None, 4);

    let docs = documents(&text);
    assert_eq!(
        kinds(&docs),
        ["ResourceQuota", "ServiceAccount", "ConfigMap", "DaemonSet"]
    );
    let quota = object(&docs, "ResourceQuota");
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"],
        serde_json::json!([{
            "scopeName": "PriorityClass",
            "operator": "In",
            "values": ["system-node-critical"],
        }])
    );
    let pod = &object(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    let c = container(&docs);
    assert_eq!(c["image"], "registry.example.com/sightline:9.9.9");
    assert_eq!(
        env(c, "OTEL_EXPORTER_OTLP_ENDPOINT").1["value"],
        "https://collector.example.com:4318"
    );
    assert_eq!(
        env(c, "OTEL_RESOURCE_ATTRIBUTES").1["value"],
        "k8s.cluster.name=prod-eu,host.name=$(NODE_NAME),k8s.node.name=$(NODE_NAME)"
    );
    let config = object(&docs, "ConfigMap")["data"]["sightline.yaml"]
        .as_str()
        .unwrap();
    assert_eq!(documents(config)[0]["capture"]["max_bytes"], 2048);

    // Another configuration rolls the pods: the template's checksum changes with it.
    let checksum = |docs: &[Value]| {
        object(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let defaults = documents(&render(&[]));
    assert_ne!(checksum(&docs), checksum(&defaults));
}

#[test]
fn the_chart_refuses_to_take_over_the_default_namespace() {
    // Rendering its Namespace object for "default" would relabel that namespace to admit
    // privileged pods.
    let out = Command::new(tool("helm"))
        .args(["template", "sightline"])
        .arg(example().join("chart"))
        .args(["--namespace", "default"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("namespace.create would relabel the namespace"),
        "{said}"
    );
    let out = render(&["--namespace", "default", "--set", "namespace.create=false"]);
    assert!(!kinds(&documents(&out)).contains(&"Namespace"));
}

#[test]
fn the_chart_refuses_misspelled_values() {
    let out = Command::new(tool("helm"))
        .args(["template", "sightline"])
        .arg(example().join("chart"))
        .args([
            "--namespace",
            "sightline",
            "--set",
            "otlp.endpiont=http://x:4318",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("Additional property endpiont is not allowed"),
        "{said}"
    );
}

#[test]
fn sightline_accepts_the_configuration_arguments_and_environment() {
    require("setpriv");
    let docs = documents(&std::fs::read_to_string(example().join("daemonset.yaml")).unwrap());
    let config = object(&docs, "ConfigMap")["data"]["sightline.yaml"]
        .as_str()
        .unwrap();
    let file = write_temp("kconfig", "sightline.yaml", config);
    let c = container(&docs);
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a.as_str().unwrap() {
            "/etc/sightline/sightline.yaml" => file.display().to_string(),
            other => other.to_string(),
        })
        .collect();
    let mut cmd = Command::new("setpriv");
    // Without privileges sightline stops at its first check after reading its configuration
    // and environment: what it says there shows that both were accepted, and nothing attaches.
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sightline_bin())
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for e in c["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(
                e["name"].as_str().unwrap(),
                v.replace("$(NODE_NAME)", "node-1"),
            );
        }
    }
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("sightline lacks CAP_SYS_ADMIN"),
        "{said}"
    );
}
