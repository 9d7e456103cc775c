//! End to end, as root: a process in a real container (Debian's podman and runc; its root is
//! this host's filesystem behind an overlay, so no image is pulled) gets its container's
//! identity and name on the spans sightline exports, and a host process gets none.

use sightline_e2e::flat::{spans, Val, CLIENT, SERVER};
use sightline_e2e::procs::{free_port, require, run, Agent};
use sightline_e2e::receiver;
use std::process::Command;
use std::time::{Duration, Instant};

/// The container, removed when dropped.
struct Podman(String);

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}

#[test]
fn a_containers_process_carries_its_container_id() {
    require("podman");
    require("curl");
    let (rt, addr, rec) = receiver::http_on_runtime();
    let mut agent = Agent::start(
        &["--output", "json"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .unwrap();

    let port = free_port();
    let name = format!("sightline-web-{}", std::process::id());
    // cgroupfs works on hybrid cgroup hosts too; explicit limits, as podman's defaults may
    // exceed the hard limits of a caller without CAP_SYS_RESOURCE; the host's network, so the
    // host's curl reaches the server.
    let id = run(Command::new("podman").args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "-d",
        "--name",
        &name,
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        "host",
        "--rootfs",
        "/:O",
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]))
    .unwrap_or_else(|e| panic!("podman run: {e}"))
    .trim()
    .to_string();
    let _container = Podman(id.clone());
    assert_eq!(id.len(), 64, "{id}");
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "the container's server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}/");
    run(Command::new("curl").args(["-s", "-o", "/dev/null", &url])).unwrap();

    let found = |rec: &receiver::Received| {
        let all = spans(&rec.traces.lock().unwrap());
        all.iter()
            .any(|s| s.kind == SERVER && s.attr("server.port") == Some(&Val::I(port as i64)))
            && all
                .iter()
                .any(|s| s.kind == CLIENT && s.attr("url.full") == Some(&Val::S(url.clone())))
    };
    rt.block_on(receiver::wait_for(Duration::from_secs(20), || found(&rec)))
        .unwrap_or_else(|e| panic!("{e}: {:#?}", spans(&rec.traces.lock().unwrap())));
    agent.stop().unwrap();
    let all = spans(&rec.traces.lock().unwrap());
    let srv = all
        .iter()
        .find(|s| s.kind == SERVER && s.attr("server.port") == Some(&Val::I(port as i64)))
        .unwrap();
    let r = &srv.resource;
    assert_eq!(r.get("container.id"), Some(&Val::S(id.clone())), "{r:#?}");
    assert_eq!(
        r.get("container.runtime"),
        Some(&Val::S("podman".into())),
        "{r:#?}"
    );
    assert_eq!(
        r.get("service.instance.id"),
        Some(&Val::S(id.clone())),
        "{r:#?}"
    );
    // The process as the host sees it: sightline reads the host's pid namespace.
    let host_pid = run(Command::new("podman").args(["inspect", "-f", "{{.State.Pid}}", &id]))
        .unwrap()
        .trim()
        .parse::<i64>()
        .unwrap();
    assert_eq!(r.get("process.pid"), Some(&Val::I(host_pid)), "{r:#?}");

    // curl ran on the host: no container, and an instance of its own.
    let cli = all
        .iter()
        .find(|s| s.kind == CLIENT && s.attr("url.full") == Some(&Val::S(url.clone())))
        .unwrap();
    assert_eq!(
        cli.resource.get("container.id"),
        None,
        "{:#?}",
        cli.resource
    );
    let Some(Val::S(instance)) = cli.resource.get("service.instance.id") else {
        panic!("{:#?}", cli.resource);
    };
    let Some(Val::I(curl_pid)) = cli.resource.get("process.pid") else {
        panic!("{:#?}", cli.resource);
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        instance.starts_with(&format!("{}:{curl_pid}:", host.trim())),
        "{instance}"
    );
}
