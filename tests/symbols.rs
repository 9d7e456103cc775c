//! `sightline symbols` against independent ground truth: `nm -D` for symbol addresses,
//! `readelf -n` for build-ids, on the system's libssl and on node's static OpenSSL.

use sightline_e2e::procs::{require, sightline_bin};
use std::process::Command;

fn nm_address(file: &str, symbol: &str) -> u64 {
    let out = Command::new("nm")
        .args(["-D", "--defined-only", file])
        .output()
        .expect("nm (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            l.split_whitespace()
                .last()
                .is_some_and(|n| n.split('@').next() == Some(symbol))
        })
        .unwrap_or_else(|| panic!("nm finds {symbol} in {file}"));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

fn readelf_build_id(file: &str) -> String {
    let out = Command::new("readelf").args(["-n", file]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .unwrap()
}

fn check(file: &str) {
    require("nm");
    require("readelf");
    let out = Command::new(sightline_bin())
        .args(["symbols", file, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["build_id"], readelf_build_id(file).as_str());
    assert_eq!(r["schema"], 1);
    assert!(r["openssl"]["version"]
        .as_str()
        .unwrap()
        .starts_with("OpenSSL 3."));
    let points = r["openssl"]["functions"].as_array().unwrap();
    let names: Vec<&str> = points
        .iter()
        .map(|p| p["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "SSL_free",
            "SSL_read",
            "SSL_read_ex",
            "SSL_write",
            "SSL_write_ex"
        ]
    );
    for p in points {
        let name = p["symbol"].as_str().unwrap();
        let addr = p["address"].as_u64().unwrap();
        assert_eq!(addr, nm_address(file, name), "{name} in {file}");
        assert_eq!(p["source"], "dynsym");
    }
}

#[test]
fn system_libssl_matches_nm_and_readelf() {
    check("/usr/lib/x86_64-linux-gnu/libssl.so.3");
}

#[test]
fn node_static_openssl_matches_nm_and_readelf() {
    require("node");
    let node = String::from_utf8(
        Command::new("sh")
            .args(["-c", "readlink -f $(command -v node)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    check(node.trim());
}
