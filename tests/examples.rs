//! The examples are what users copy: each must load in the real tool that reads it, and the
//! alerts must fire on the series sightline's metrics become.

use sightline_e2e::procs::{require, run, sightline_bin, tempdir};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn prometheus_loads_the_example_config_and_its_alerts() {
    require("promtool");
    let out = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("examples/prometheus/prometheus.yml")))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_network_alerts_fire_on_sightline_series() {
    require("promtool");
    let out = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(root().join("tests/examples/alerts_test.yml")))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_grafana_dashboard_queries_sightline_series() {
    let text = std::fs::read_to_string(root().join("examples/grafana/sightline-red.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
        .collect();
    for series in [
        "sightline_tcp_retransmits_total",
        "sightline_tcp_rtt_seconds_bucket",
        "sightline_tcp_connections_total",
        "sightline_tcp_resets_total",
        "sightline_tcp_bytes_total",
        "http_server_request_duration_seconds_count",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(series)),
            "no panel queries {series}"
        );
    }
}

#[test]
fn the_systemd_unit_verifies() {
    require("systemd-analyze");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = std::fs::read_to_string(root().join("examples/systemd/sightline.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/sightline",
            &sightline_bin().display().to_string(),
        );
    let dir = tempdir("unit");
    let path = dir.join("sightline.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
