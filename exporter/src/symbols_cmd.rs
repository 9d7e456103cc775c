//! `sightline symbols <path|pid>`: every attach point with its source, for people and scripts.

use serde::Serialize;
use sightline_symbolizer::{build_id, openssl_targets, openssl_version, SSL_FUNCTIONS};
use std::path::PathBuf;

#[derive(Serialize)]
struct Report {
    file: String,
    build_id: Option<String>,
    openssl_version: Option<String>,
    attach_points: Vec<Point>,
    missing: Vec<&'static str>,
}

#[derive(Serialize)]
struct Point {
    symbol: String,
    address: String,
    file_offset: String,
    source: &'static str,
}

/// Files a target stands for: a path is itself; a pid is its executable and its libssl maps.
fn files_of(target: &str) -> Vec<PathBuf> {
    let Ok(pid) = target.parse::<u32>() else {
        return vec![PathBuf::from(target)];
    };
    let mut files = vec![PathBuf::from(format!("/proc/{pid}/exe"))];
    if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
            let name = path.rsplit('/').next().unwrap_or(path);
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if path.starts_with('/') && name.contains("ssl") && !files.contains(&p) {
                files.push(p);
            }
        }
    }
    files
}

pub fn run(target: &str, json: bool) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for f in files_of(target) {
        let shown = std::fs::canonicalize(&f).unwrap_or(f.clone());
        let t = openssl_targets(&f)?;
        let (version, points) = match t {
            Some(t) => (openssl_version(&f), t.points),
            None => (None, Vec::new()),
        };
        reports.push(Report {
            file: shown.display().to_string(),
            build_id: build_id(&f)?.map(|id| id.iter().map(|b| format!("{b:02x}")).collect()),
            openssl_version: version,
            missing: SSL_FUNCTIONS
                .iter()
                .copied()
                .filter(|s| !points.iter().any(|p| p.symbol == *s))
                .collect(),
            attach_points: points
                .into_iter()
                .map(|p| Point {
                    symbol: p.symbol,
                    address: format!("{:#x}", p.address),
                    file_offset: format!("{:#x}", p.file_offset),
                    source: p.source.as_str(),
                })
                .collect(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for r in reports {
        println!("{}", r.file);
        println!("  build-id: {}", r.build_id.as_deref().unwrap_or("none"));
        println!(
            "  OpenSSL: {}",
            r.openssl_version
                .as_deref()
                .unwrap_or(if r.attach_points.is_empty() {
                    "not present"
                } else {
                    "present, version string not found"
                })
        );
        if !r.attach_points.is_empty() {
            println!(
                "  {:<14} {:>12} {:>12}  SOURCE",
                "SYMBOL", "ADDRESS", "FILE OFFSET"
            );
            for p in &r.attach_points {
                println!(
                    "  {:<14} {:>12} {:>12}  {}",
                    p.symbol, p.address, p.file_offset, p.source
                );
            }
            for m in &r.missing {
                println!("  {m:<14} {:>12} {:>12}  not defined here", "-", "-");
            }
        }
    }
    Ok(())
}
