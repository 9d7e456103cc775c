//! End to end, as root: a process in a real container (Debian's podman and runc; its root is
//! this host's filesystem behind an overlay, so no image is pulled) gets its container's
//! identity and name on the spans sightline exports, and a host process gets none.

use sightline_e2e::flat::{spans, Val, CLIENT, SERVER};
use sightline_e2e::podman::{wait_listening, Container};
use sightline_e2e::procs::{free_port, require, run, Agent};
use sightline_e2e::receiver;
use std::process::Command;
use std::time::Duration;

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
    let web = Container::on_host_root(
        &name,
        &[],
        &[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ],
    );
    let id = web.id.clone();
    wait_listening(port, "the container's server");
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
    let host_pid = web.host_pid() as i64;
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
