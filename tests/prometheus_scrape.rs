//! End to end, as root: Debian's real Prometheus scrapes sightline's `/metrics`, with the
//! example alerts loaded. The series and their labels are what the requests made, and the
//! Grafana dashboard's queries run on them.

use serde_json::Value;
use sightline_e2e::procs::{free_port, require, tempdir, Agent, Killed};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An instant query's result vector.
fn query(prom: &str, q: &str) -> Vec<Value> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-G",
            &format!("{prom}/api/v1/query"),
            "--data-urlencode",
        ])
        .arg(format!("query={q}"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{q}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn value(r: &Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_sightline_and_the_dashboard_queries_return_data() {
    require("prometheus");
    require("python3");
    require("curl");
    let dir = tempdir("prom");
    std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    let web = free_port();
    let _server = Killed(
        Command::new("python3")
            .args(["-m", "http.server", &web.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("http.server", || {
        std::net::TcpStream::connect(("127.0.0.1", web)).is_ok()
    });

    let metrics_port = free_port();
    let sightline = format!("http://127.0.0.1:{metrics_port}");
    let mut agent = Agent::start(
        &[
            "--output",
            "none",
            "--prometheus",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(get(&format!("{sightline}/healthz")).0, 200);
    assert_eq!(
        get(&format!("{sightline}/readyz")),
        (200, "capturing\n".into())
    );

    let base = format!("http://127.0.0.1:{web}");
    for path in ["/hello.txt", "/hello.txt", "/missing"] {
        get(&format!("{base}{path}"));
    }
    // A refused connect, for the failed-connects panel.
    assert!(std::net::TcpStream::connect(("127.0.0.1", free_port())).is_err());

    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    let alerts = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/prometheus/alerts.yml")
        .canonicalize()
        .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sightline\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            alerts.display()
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Rates need two scrapes after the requests.
    let served = r#"http_server_request_duration_seconds_count{service_name="python3.11",url_scheme="http",http_request_method="GET"}"#;
    wait_until("the requests' series in Prometheus", || {
        let r = std::process::Command::new("curl")
            .args(["-s", &format!("{prom}/-/ready")])
            .output()
            .map(|o| o.status.success() && !o.stdout.is_empty())
            .unwrap_or(false);
        r && query(&prom, served).len() == 2
    });
    std::thread::sleep(Duration::from_secs(3));

    // The series, with the labels the collector's translation would give them.
    let by_status: Vec<(String, f64)> = query(&prom, served)
        .iter()
        .map(|r| {
            (
                r["metric"]["http_response_status_code"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                value(r),
            )
        })
        .collect();
    assert!(by_status.contains(&("200".into(), 2.0)), "{by_status:?}");
    assert!(by_status.contains(&("404".into(), 1.0)), "{by_status:?}");
    let r = &query(&prom, served)[0]["metric"];
    assert_eq!(r["job"], "sightline");
    assert_eq!(r["process_executable_name"], "python3.11");
    let refused = query(
        &prom,
        r#"sightline_tcp_connections_total{outcome="refused",role="client"}"#,
    );
    assert!(refused.iter().any(|r| value(r) >= 1.0), "{refused:?}");
    let own = query(
        &prom,
        r#"sightline_events_lost_total{service_name="sightline"}"#,
    );
    assert_eq!(own.len(), 1, "{own:?}");

    // Every dashboard query is valid PromQL; those whose series these requests made return data.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/grafana/sightline-red.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut with_data = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            let q = t["expr"]
                .as_str()
                .unwrap()
                .replace("$service", ".*")
                .replace("$__rate_interval", "1m");
            if !query(&prom, &q).is_empty() {
                with_data.push(format!("{} {}", p["id"], t["refId"].as_str().unwrap()));
            }
        }
    }
    for want in [
        "1 A", "3 A", "3 B", "4 A", "5 A", "5 F", "8 A", "9 A", "11 nodes", "11 edges",
    ] {
        assert!(
            with_data.contains(&want.to_string()),
            "panel {want} has no data: {with_data:?}"
        );
    }

    // The service picker lists client-only services too (curl here), as Grafana asks.
    let picker = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "service")
        .unwrap()["query"]
        .as_str()
        .unwrap()
        .to_string();
    let selector = picker
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(", service_name)"))
        .unwrap_or_else(|| panic!("{picker}"));
    let out = Command::new("curl")
        .args([
            "-s",
            "-G",
            &format!("{prom}/api/v1/label/service_name/values"),
            "--data-urlencode",
        ])
        .arg(format!("match[]={selector}"))
        .output()
        .unwrap();
    let names: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = names["data"].as_array().cloned().unwrap_or_default();
    for svc in ["curl", "python3.11"] {
        assert!(names.iter().any(|n| n == svc), "{svc} not in {names:?}");
    }

    // The example alerts loaded.
    let out = Command::new("curl")
        .args(["-s", &format!("{prom}/api/v1/rules")])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    for alert in [
        "TcpRetransmitRatioHigh",
        "TcpConnectsFailing",
        "HttpServerErrorRate",
    ] {
        assert!(rules.contains(alert), "{alert}: {rules}");
    }
    agent.stop().unwrap();
}
