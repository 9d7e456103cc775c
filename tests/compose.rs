//! The stack of the README's "From zero to Grafana" (examples/compose): the OpenTelemetry
//! collector, Tempo, Jaeger, Prometheus and Grafana. The test machines reach no image
//! registry, so what a real tool can check is checked with it (the compose file against the
//! compose specification, the Prometheus config and alerts in Debian's promtool, the server's
//! flags in Debian's prometheus), and the rest from the files, the way the containers will see
//! them: through the compose file's mounts, with its variables filled in.

use serde_json::{Map, Value};
use sightline_e2e::procs::{require, run, tempdir};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

const VENV: &str = "/var/cache/sightline-tests/venv/bin";

/// Current names: `otlp` and `otlphttp` became `otlp_grpc` and `otlp_http` in collector
/// 0.144.0 and are deprecated aliases since; `logging` gave way to `debug`.
const DEPRECATED_EXPORTERS: [&str; 3] = ["otlp", "otlphttp", "logging"];

/// The resource attributes sightline sets on a process (exporter/src/metadata): in Prometheus
/// they are labels only where the collector copies them onto the series.
const RESOURCE_ATTRIBUTES: [&str; 14] = [
    "service.name",
    "service.instance.id",
    "host.name",
    "process.pid",
    "process.executable.name",
    "process.executable.path",
    "container.id",
    "container.runtime",
    "container.name",
    "container.image.name",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.container.name",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn compose_file() -> PathBuf {
    root().join("examples/compose/compose.yaml")
}

fn venv(tool: &str) -> PathBuf {
    let p = Path::new(VENV).join(tool);
    assert!(
        p.exists(),
        "{} is not installed; run tests/prereqs.sh --tests (the README's test command does)",
        p.display()
    );
    p
}

/// A YAML file as JSON, parsed by PyYAML.
fn yaml(path: &Path) -> Value {
    let script = "import json, sys, yaml\n\
                  print(json.dumps(yaml.safe_load(open(sys.argv[1])), default=str))";
    let out = run(Command::new(venv("python")).args(["-c", script]).arg(path))
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    yaml(&compose_file())
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_object(), "compose.yaml has no service {name}");
    s
}

fn services(c: &Value) -> BTreeSet<String> {
    c["services"].as_object().unwrap().keys().cloned().collect()
}

/// Compose's interpolation of `${VAR}` and `${VAR:-default}`, with `env` as the environment;
/// stricter than compose, which puts an empty string (and a warning) where a variable has
/// neither a value nor a default.
fn interpolate(s: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("an unclosed ${") + i;
        let expr = &rest[i + 2..end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        let value = env.get(var).copied().filter(|v| !v.is_empty());
        out.push_str(
            value
                .or(default)
                .unwrap_or_else(|| panic!("{var} has no value and no default in {s}")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn command(svc: &Value, env: &HashMap<&str, &str>) -> Vec<String> {
    match &svc["command"] {
        Value::String(s) => s.split_whitespace().map(|a| interpolate(a, env)).collect(),
        Value::Array(a) => a
            .iter()
            .map(|a| interpolate(a.as_str().unwrap(), env))
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("command {other}"),
    }
}

/// Every value of a `--name=value` or `-name=value` argument.
fn flags(cmd: &[String], name: &str) -> Vec<String> {
    cmd.iter()
        .filter_map(|a| a.strip_prefix(name)?.strip_prefix('=').map(str::to_string))
        .collect()
}

fn flag(cmd: &[String], name: &str) -> Option<String> {
    let v = flags(cmd, name);
    assert!(v.len() <= 1, "{name} given {} times: {cmd:?}", v.len());
    v.into_iter().next()
}

struct Mount {
    /// On the host; None for a named volume.
    source: Option<PathBuf>,
    volume: Option<String>,
    target: String,
}

fn mounts(svc: &Value) -> Vec<Mount> {
    let dir = compose_file().parent().unwrap().to_path_buf();
    svc["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let (source, target) = match v {
                Value::String(s) => {
                    let mut parts = s.split(':');
                    (
                        parts.next().unwrap().to_string(),
                        parts.next().expect("a mount's target").to_string(),
                    )
                }
                Value::Object(m) => (
                    m["source"].as_str().unwrap().to_string(),
                    m["target"].as_str().unwrap().to_string(),
                ),
                other => panic!("volume {other}"),
            };
            if source.starts_with('.') || source.starts_with('/') {
                Mount {
                    source: Some(dir.join(&source)),
                    volume: None,
                    target,
                }
            } else {
                Mount {
                    source: None,
                    volume: Some(source),
                    target,
                }
            }
        })
        .collect()
}

/// Where a path inside a service's container comes from on the host: the bind mount whose
/// target holds it. Fails if no mount does (the container would not have the file).
fn host_path(svc: &Value, inside: &str) -> PathBuf {
    let m = mounts(svc)
        .into_iter()
        .filter(|m| {
            m.source.is_some()
                && (inside == m.target || inside.starts_with(&format!("{}/", m.target)))
        })
        .max_by_key(|m| m.target.len())
        .unwrap_or_else(|| panic!("no bind mount holds {inside}"));
    let rest = inside[m.target.len()..].trim_start_matches('/');
    let p = m.source.unwrap();
    let p = if rest.is_empty() { p } else { p.join(rest) };
    assert!(
        p.exists(),
        "{inside} is mounted from {}, which does not exist",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// (host, port) of `host:port`, `scheme://host:port` or `scheme://host:port/path`.
fn host_port(endpoint: &str) -> (String, u16) {
    let hp = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let hp = hp.split('/').next().unwrap();
    let (h, p) = hp
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {endpoint}"));
    (h.to_string(), p.parse().unwrap())
}

/// Host ports a service publishes on the host, with their container ports.
fn published(svc: &Value) -> Vec<(String, u16, u16)> {
    svc["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let s = p.as_str().expect("ports in short syntax");
            let parts: Vec<&str> = s.split(':').collect();
            match parts[..] {
                [ip, host, inside] => (ip.into(), host.parse().unwrap(), inside.parse().unwrap()),
                [host, inside] => (
                    "0.0.0.0".into(),
                    host.parse().unwrap(),
                    inside.parse().unwrap(),
                ),
                _ => panic!("port {s}"),
            }
        })
        .collect()
}

/// Maps merged the way the collector merges its --config files: maps key by key, any other
/// value (lists too) replaced by the later file's.
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The collector's config as its container loads it with TRACES_BACKEND set to `backend`
/// (None: unset).
fn collector_config(c: &Value, backend: Option<&str>) -> Value {
    let svc = service(c, "otel-collector");
    let mut env = HashMap::new();
    if let Some(b) = backend {
        env.insert("TRACES_BACKEND", b);
    }
    let files = flags(&command(svc, &env), "--config");
    assert!(files.len() >= 2, "a base config and an overlay: {files:?}");
    let mut merged = Value::Object(Map::new());
    for f in files {
        merge(&mut merged, yaml(&host_path(svc, &f)));
    }
    merged
}

fn tempo_config(c: &Value) -> Value {
    let svc = service(c, "tempo");
    let file = flag(&command(svc, &HashMap::new()), "-config.file").expect("-config.file");
    yaml(&host_path(svc, &file))
}

fn prometheus_command(c: &Value) -> Vec<String> {
    command(service(c, "prometheus"), &HashMap::new())
}

/// The port of a service's HTTP API or UI, inside its container.
fn http_port(c: &Value, name: &str) -> u16 {
    match name {
        "prometheus" => {
            flag(&prometheus_command(c), "--web.listen-address").map_or(9090, |a| host_port(&a).1)
        }
        "tempo" => tempo_config(c)["server"]["http_listen_port"]
            .as_u64()
            .expect("server.http_listen_port") as u16,
        // jaeger_query's default in Jaeger v2's built-in all-in-one config.
        "jaeger" => 16686,
        "grafana" => 3000,
        other => panic!("which port does {other} serve on?"),
    }
}

fn otlp_grpc_port(c: &Value, name: &str) -> u16 {
    match name {
        "tempo" => {
            let e = &tempo_config(c)["distributor"]["receivers"]["otlp"]["protocols"]["grpc"];
            host_port(e["endpoint"].as_str().expect("Tempo's OTLP/gRPC endpoint")).1
        }
        // Jaeger v2's built-in all-in-one config (cmd/jaeger/internal/all-in-one.yaml).
        "jaeger" => 4317,
        other => panic!("{other} is no trace backend"),
    }
}

fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn kind(id: &str) -> &str {
    id.split('/').next().unwrap()
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let out = run(Command::new(venv("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(compose_file()))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("ok -- validation done"), "{out}");
}

#[test]
fn the_stack_is_the_five_services_on_pinned_images_and_loopback_ports() {
    let c = compose();
    assert_eq!(
        services(&c),
        ["grafana", "jaeger", "otel-collector", "prometheus", "tempo"]
            .map(String::from)
            .into()
    );
    for name in services(&c) {
        // Grafana lets anyone in as an editor, with no login: nothing of the stack is
        // reachable from other hosts.
        for (ip, port, _) in published(service(&c, &name)) {
            assert_eq!(ip, "127.0.0.1", "{name} publishes {port} on {ip}");
        }
        let image = service(&c, &name)["image"].as_str().unwrap().to_string();
        let (repo, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: {image} has no tag"));
        let version: Vec<u32> = tag
            .trim_start_matches('v')
            .split('.')
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("{image}: not a version"))
            })
            .collect();
        assert_eq!(version.len(), 3, "{image}: pin a full version");
        match name.as_str() {
            // Jaeger v2: v1's all-in-one is no longer released.
            "jaeger" => {
                assert_eq!(repo, "jaegertracing/jaeger");
                assert_eq!(version[0], 2, "{image}");
            }
            // resource_constant_labels arrived in 0.160.0, otlp_grpc in 0.144.0.
            "otel-collector" => {
                assert_eq!(repo, "otel/opentelemetry-collector-contrib");
                assert!(version >= vec![0, 160, 0], "{image}");
            }
            "tempo" => assert_eq!((repo, version[0]), ("grafana/tempo", 3)),
            "prometheus" => assert_eq!((repo, version[0]), ("prom/prometheus", 3)),
            "grafana" => assert_eq!(repo, "grafana/grafana"),
            _ => unreachable!(),
        }
    }
}

#[test]
fn every_file_the_stack_mounts_is_in_the_repository() {
    let c = compose();
    let declared: BTreeSet<String> = c["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut mounted = BTreeSet::new();
    for name in services(&c) {
        for m in mounts(service(&c, &name)) {
            match (m.source, m.volume) {
                (Some(src), _) => {
                    assert!(
                        src.exists(),
                        "{name} mounts {} at {}, which does not exist",
                        src.display(),
                        m.target
                    );
                    let src = src.canonicalize().unwrap();
                    assert!(
                        src.starts_with(root()),
                        "{} is outside the repository",
                        src.display()
                    );
                    mounted.insert(src.strip_prefix(root()).unwrap().display().to_string());
                }
                (None, Some(v)) => {
                    assert!(declared.contains(&v), "{name}'s volume {v} is not declared")
                }
                _ => unreachable!(),
            }
        }
    }
    for expected in [
        "examples/collector",
        "examples/tempo/tempo.yaml",
        "examples/prometheus/prometheus.yml",
        "examples/prometheus/alerts.yml",
        "examples/grafana/sightline-red.json",
        "examples/compose/grafana/datasources.yaml",
        "examples/compose/grafana/dashboards.yaml",
    ] {
        assert!(
            mounted.contains(expected),
            "{expected} is not mounted: {mounted:?}"
        );
    }
}

#[test]
fn grafana_provisions_the_dashboard_and_data_sources_on_the_stack() {
    let c = compose();
    let grafana = service(&c, "grafana");
    let provisioned = |kind: &str| -> Vec<Value> {
        mounts(grafana)
            .iter()
            .filter(|m| {
                m.target
                    .starts_with(&format!("/etc/grafana/provisioning/{kind}/"))
            })
            .map(|m| yaml(&host_path(grafana, &m.target)))
            .collect()
    };

    // The dashboard: mounted from examples/grafana into the directory a provider loads.
    let providers: Vec<Value> = provisioned("dashboards")
        .iter()
        .flat_map(|f| f["providers"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(providers.len(), 1, "{providers:?}");
    assert_eq!(providers[0]["type"], "file");
    let dir = providers[0]["options"]["path"].as_str().unwrap();
    let dashboard = mounts(grafana)
        .into_iter()
        .find(|m| m.target.starts_with(&format!("{dir}/")) && m.target.ends_with(".json"))
        .unwrap_or_else(|| panic!("no dashboard mounted in {dir}"));
    assert_eq!(
        host_path(grafana, &dashboard.target),
        root().join("examples/grafana/sightline-red.json")
    );

    // The data sources: one of each kind, each at a service of the stack on the port it
    // serves, the default one Prometheus, which the dashboard's data source picker wants.
    let sources: Vec<Value> = provisioned("datasources")
        .iter()
        .flat_map(|f| f["datasources"].as_array().cloned().unwrap_or_default())
        .collect();
    let kinds: Vec<&str> = sources
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["prometheus", "tempo", "jaeger"]);
    for s in &sources {
        let (host, port) = host_port(s["url"].as_str().unwrap());
        assert!(
            services(&c).contains(&host),
            "{} points at {host}",
            s["name"]
        );
        assert_eq!(port, http_port(&c, &host), "{}: {}", s["name"], s["url"]);
        assert_eq!(host, s["type"].as_str().unwrap());
    }
    let defaults: Vec<&Value> = sources.iter().filter(|s| s["isDefault"] == true).collect();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["type"], "prometheus");
    let d = yaml(&root().join("examples/grafana/sightline-red.json"));
    let picker = &d["templating"]["list"][0];
    assert_eq!(
        (&picker["type"], &picker["query"]),
        (&"datasource".into(), &"prometheus".into())
    );

    // Tempo's service graph is read from the Prometheus that Tempo's generator writes to.
    let tempo = sources.iter().find(|s| s["type"] == "tempo").unwrap();
    assert_eq!(
        tempo["jsonData"]["serviceMap"]["datasourceUid"],
        defaults[0]["uid"]
    );
}

#[test]
fn the_stack_prometheus_loads_its_config_and_alerts_and_takes_its_flags() {
    require("promtool");
    require("prometheus");
    let c = compose();
    let svc = service(&c, "prometheus");
    let cmd = prometheus_command(&c);
    let config = flag(&cmd, "--config.file").expect("--config.file");

    // The container's files, laid out as it sees them: rule files are found relative to the
    // config, so a rule file that is not mounted beside it fails here.
    let dir = tempdir("compose-prometheus");
    for m in mounts(svc) {
        if let Some(src) = m.source {
            let to = dir.join(m.target.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&src, &to).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
    let out = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.join(config.trim_start_matches('/'))))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains("is valid prometheus config file syntax"),
        "{out}"
    );
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
    let alerts = yaml(&root().join("examples/prometheus/alerts.yml"));
    let rules = alerts["groups"][0]["rules"].as_array().unwrap().len();
    assert!(
        out.contains(&format!("SUCCESS: {rules} rules found")),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Debian's server (2.42) knows each flag the stack's (3.x) is started with.
    let help = run(Command::new("prometheus").arg("--help")).unwrap_or_else(|e| panic!("{e}"));
    for a in &cmd {
        let name = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name}=")) || help.contains(&format!("{name} ")),
            "{name}"
        );
    }
    assert!(cmd.contains(&"--web.enable-remote-write-receiver".to_string()));

    // It scrapes the collector's prometheus exporter, keeping the job and instance labels
    // the exporter sets (service.name and service.instance.id), which target_info joins on.
    let p = yaml(&host_path(svc, &config));
    let jobs = p["scrape_configs"].as_array().unwrap();
    let exporter = &collector_config(&c, None)["exporters"]["prometheus"];
    let want = format!(
        "otel-collector:{}",
        host_port(exporter["endpoint"].as_str().unwrap()).1
    );
    let job = jobs
        .iter()
        .find(|j| names(&j["static_configs"][0]["targets"]).contains(&want))
        .unwrap_or_else(|| panic!("no job scrapes {want}"));
    assert_eq!(job["honor_labels"], true);
}

#[test]
fn tempo_writes_span_metrics_and_its_service_graph_to_the_stack_prometheus() {
    let c = compose();
    let t = tempo_config(&c);
    let processors: BTreeSet<String> =
        names(&t["overrides"]["defaults"]["metrics_generator"]["processors"])
            .into_iter()
            .collect();
    assert!(processors.contains("service-graphs"), "{processors:?}");
    assert!(processors.contains("span-metrics"), "{processors:?}");
    assert!(t["metrics_generator"]["storage"]["path"].is_string());
    let writes = t["metrics_generator"]["storage"]["remote_write"]
        .as_array()
        .unwrap();
    assert_eq!(writes.len(), 1);
    let url = writes[0]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "http://prometheus:{}/api/v1/write",
            http_port(&c, "prometheus")
        )
    );
    assert!(prometheus_command(&c).contains(&"--web.enable-remote-write-receiver".to_string()));
    // Reachable from the collector's container: Tempo's own default is localhost.
    let grpc = &t["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"];
    assert_eq!(host_port(grpc.as_str().unwrap()).0, "0.0.0.0");
    assert_eq!(t["storage"]["trace"]["backend"], "local");
    // Tempo's data lives in the named volume, which keeps it across restarts.
    let data = t["storage"]["trace"]["local"]["path"].as_str().unwrap();
    assert!(mounts(service(&c, "tempo"))
        .iter()
        .any(|m| m.volume.is_some() && data.starts_with(&m.target)));
}

#[test]
fn the_collector_sends_traces_to_exactly_the_chosen_backend_and_metrics_to_prometheus() {
    let c = compose();
    let mut seen = BTreeSet::new();
    for (backend, expected) in [
        (None, "tempo"),
        (Some("tempo"), "tempo"),
        (Some("jaeger"), "jaeger"),
    ] {
        let cfg = collector_config(&c, backend);
        let what = format!("TRACES_BACKEND={backend:?}");

        // Every component a pipeline names is defined, under its current name.
        let pipelines = cfg["service"]["pipelines"].as_object().unwrap();
        for (p, def) in pipelines {
            for section in ["receivers", "processors", "exporters"] {
                for id in names(&def[section]) {
                    assert!(
                        cfg[section][&id].is_object(),
                        "{what}: {p} names {id}, undefined"
                    );
                    if section == "exporters" {
                        assert!(!DEPRECATED_EXPORTERS.contains(&kind(&id)), "{what}: {id}");
                    }
                }
            }
            assert!(
                !names(&def["receivers"]).is_empty(),
                "{what}: {p} has no receiver"
            );
        }
        for id in names(&cfg["service"]["extensions"]) {
            assert!(cfg["extensions"][&id].is_object(), "{what}: extension {id}");
        }
        let mut all = BTreeSet::new();
        keys(&cfg, &mut all);
        assert!(
            !all.contains("resource_to_telemetry_conversion"),
            "{what}: deprecated in 0.160.0"
        );

        // Traces: one exporter in all, to the chosen backend's OTLP/gRPC receiver.
        let traces: Vec<String> = pipelines
            .iter()
            .filter(|(p, _)| kind(p) == "traces")
            .flat_map(|(_, d)| names(&d["exporters"]))
            .collect();
        assert_eq!(traces.len(), 1, "{what}: {traces:?}");
        assert_eq!(kind(&traces[0]), "otlp_grpc", "{what}");
        let e = &cfg["exporters"][&traces[0]];
        let (host, port) = host_port(e["endpoint"].as_str().unwrap());
        assert_eq!(host, expected, "{what}");
        assert_eq!(port, otlp_grpc_port(&c, &host), "{what}");
        assert_eq!(
            e["tls"]["insecure"], true,
            "{what}: the backends speak plaintext"
        );
        seen.insert(host);

        // Metrics: to the prometheus exporter only, never to a trace backend.
        let metrics: Vec<String> = pipelines
            .iter()
            .filter(|(p, _)| kind(p) == "metrics")
            .flat_map(|(_, d)| names(&d["exporters"]))
            .collect();
        assert_eq!(metrics, ["prometheus"], "{what}");
        for id in &metrics {
            let to = cfg["exporters"][id]["endpoint"]
                .as_str()
                .unwrap_or_default();
            assert!(
                !to.contains("jaeger") && !to.contains("tempo"),
                "{what}: {id} → {to}"
            );
        }

        // The receivers listen where the compose file publishes them on the host.
        let collector = service(&c, "otel-collector");
        for proto in ["grpc", "http"] {
            let e = &cfg["receivers"]["otlp"]["protocols"][proto]["endpoint"];
            let (host, port) = host_port(e.as_str().unwrap());
            assert_eq!(
                host, "0.0.0.0",
                "{what}: the published port reaches only 0.0.0.0"
            );
            assert!(
                published(collector).contains(&("127.0.0.1".into(), port, port)),
                "{what}: {port} is not published"
            );
        }
    }
    assert_eq!(seen, ["jaeger", "tempo"].map(String::from).into());
}

#[test]
fn the_dashboard_and_alerts_get_the_resource_labels_they_query() {
    let c = compose();
    let exporter = collector_config(&c, None)["exporters"]["prometheus"].clone();
    // The names the queries use: `_seconds` and `_total` suffixes, `.` as `_`.
    assert_eq!(
        exporter["translation_strategy"],
        "UnderscoreEscapingWithSuffixes"
    );
    let included = names(&exporter["resource_constant_labels"]["included"]);
    let copied = |attr: &str| {
        included.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => attr.starts_with(prefix),
            None => p == attr,
        })
    };

    // Every query, legend and alert text of the dashboard and the alerts.
    let mut text =
        std::fs::read_to_string(root().join("examples/grafana/sightline-red.json")).unwrap();
    text.push_str(&std::fs::read_to_string(root().join("examples/prometheus/alerts.yml")).unwrap());
    let is_word = |b: Option<char>| b.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let uses = |label: &str| {
        text.match_indices(label).any(|(i, _)| {
            !is_word(text[..i].chars().next_back())
                && !is_word(text[i + label.len()..].chars().next())
        })
    };
    let mut used = BTreeSet::new();
    for attr in RESOURCE_ATTRIBUTES {
        let label = attr.replace('.', "_");
        if uses(&label) {
            assert!(
                copied(attr),
                "the dashboard or alerts use {label}, but {attr} is not copied"
            );
            used.insert(label);
        }
    }
    assert_eq!(used, ["host_name", "service_name"].map(String::from).into());
}

#[test]
fn the_readme_commands_fit_the_stack() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\n## From zero to Grafana\n")
        .expect("README has a section \"From zero to Grafana\"");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let c = compose();

    // Every file named exists.
    let mut files = 0;
    for word in section.split(|ch: char| ch.is_whitespace() || "`(),".contains(ch)) {
        let word = word.trim_end_matches(['.', ':']);
        if word.starts_with("examples/") || word.starts_with("tests/") {
            assert!(
                root().join(word).exists(),
                "README names {word}, which does not exist"
            );
            files += 1;
        }
    }
    assert!(files >= 5, "{files}");

    // The images named are those the stack runs.
    for name in services(&c) {
        let image = service(&c, &name)["image"].as_str().unwrap();
        assert!(
            section.contains(&format!("`{image}`")),
            "README does not name {image}"
        );
    }

    // Each backend named has its overlay, and the collector loads it.
    let mut backends = 0;
    for (i, _) in section.match_indices("TRACES_BACKEND=") {
        let name: String = section[i + 15..]
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric())
            .collect();
        let cfg = collector_config(&c, Some(&name));
        assert!(cfg["exporters"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with(&name)));
        backends += 1;
    }
    assert!(backends >= 1);

    // Each localhost URL is a port the stack publishes; sightline's is the collector's
    // OTLP/HTTP receiver.
    let mut urls = 0;
    for (i, _) in section.match_indices("http://localhost:") {
        let port: u16 = section[i + 17..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        let publisher = services(&c)
            .into_iter()
            .find(|s| published(service(&c, s)).iter().any(|p| p.1 == port))
            .unwrap_or_else(|| panic!("README sends to localhost:{port}, which nothing publishes"));
        if section[..i].ends_with("OTEL_EXPORTER_OTLP_ENDPOINT=") {
            assert_eq!(publisher, "otel-collector");
            let cfg = collector_config(&c, None);
            let http = cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
                .as_str()
                .unwrap();
            assert_eq!(host_port(http).1, port);
        } else {
            let inside = published(service(&c, &publisher))
                .into_iter()
                .find(|p| p.1 == port)
                .unwrap()
                .2;
            assert_eq!(inside, http_port(&c, &publisher), "localhost:{port}");
        }
        urls += 1;
    }
    assert!(urls >= 4, "{urls}");
}
