//! End to end, as root: binaries crafted to be huge to analyse (a terabyte-long sparse
//! segment, a debug section that decompresses to 512 MiB, debuglinks to a terabyte-long file
//! and out of their directory), run while HTTPS calls are captured. Analysis runs beside the
//! capture loop, within a memory budget per binary: every call is still reported, the agent's
//! memory stays under the shipped cap, and each binary is refused with its reason.

use sightline_e2e::crafted;
use sightline_e2e::flat::{spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::procs::{free_port, require, run, sightline_bin, tempdir, Agent, Killed, Nginx};
use sightline_e2e::receiver;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The memory cap of the shipped systemd unit and DaemonSet.
const CAP_KIB: u64 = 256 * 1024;
const CALLS: usize = 300;

/// The crafted files' directory, removed however the test ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn symbols(path: &std::path::Path) -> String {
    let out = Command::new(sightline_bin())
        .arg("symbols")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// The value of the series of metric `name` with label `label` in Prometheus text.
fn series(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

#[test]
fn hostile_binaries_are_refused_while_https_is_captured() {
    require("curl");
    let dir = Dir(tempdir("hostile"));
    let sparse = crafted::sparse_elf(&dir.0);
    let bomb = crafted::decompression_bomb(&dir.0);
    let huge_link = crafted::debuglink_to_huge(&dir.0);
    let escape = crafted::debuglink_escape(&dir.0);

    // `sightline symbols` says why each is refused, or analyses it without the named file.
    for refused in [&sparse, &bomb] {
        let said = symbols(refused);
        assert!(
            said.contains("MiB into memory"),
            "{}: {said}",
            refused.display()
        );
    }
    for linked in [&huge_link, &escape] {
        let said = symbols(linked);
        assert!(
            !said.contains("sleep.debug") && !said.contains("kcore"),
            "{said}"
        );
        assert!(
            said.contains("build_id") || said.contains("build-id"),
            "{said}"
        );
    }

    let (rt, addr, rec) = receiver::http_on_runtime();
    let prom = free_port();
    let mut agent = Agent::start(
        &[
            "--output",
            "none",
            "--prometheus",
            &format!("127.0.0.1:{prom}"),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .unwrap();
    let agent_pid = agent.pid().unwrap();
    let nginx = Nginx::start().unwrap();
    let url = nginx.url("/hostile");

    // The calls, from one curl on one connection, while the hostile binaries start.
    let client = Killed(
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "--rate", "100/s"])
            .args(std::iter::repeat_n(url.as_str(), CALLS))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let runs: Vec<Killed> = [&sparse, &huge_link, &escape]
        .into_iter()
        .map(|p| Killed(Command::new(p).arg("5").spawn().unwrap()))
        .chain(std::iter::once(Killed(
            Command::new(&bomb).spawn().unwrap(),
        )))
        .collect();
    let mut client = client;
    let st = client.0.wait().unwrap();
    assert!(st.success(), "curl: {st}");

    let to_nginx =
        |s: &FlatSpan| s.kind == CLIENT && s.attr("url.full").map(Val::s) == Some(url.as_str());
    let found = |rec: &receiver::Received| {
        let all = spans(&rec.traces.lock().unwrap());
        all.iter()
            .filter(|s| s.kind == SERVER && s.service() == "nginx")
            .count()
            >= CALLS
            && all
                .iter()
                .filter(|s| s.kind == CLIENT && s.service() == "curl")
                .count()
                >= CALLS
    };
    let waited = rt.block_on(receiver::wait_for(Duration::from_secs(30), || found(&rec)));
    let metrics =
        run(Command::new("curl").args(["-s", &format!("http://127.0.0.1:{prom}/metrics")]))
            .unwrap();
    let peak = status_kib(agent_pid, "VmHWM:");
    drop(runs);
    agent.stop().unwrap();
    let all = spans(&rec.traces.lock().unwrap());
    let served = all
        .iter()
        .filter(|s| s.kind == SERVER && s.service() == "nginx")
        .count();
    let sent = all.iter().filter(|s| to_nginx(s)).count();
    assert!(
        waited.is_ok(),
        "calls lost: {served} served and {sent} sent of {CALLS}"
    );
    assert_eq!((served, sent), (CALLS, CALLS), "each call once");
    assert!(
        peak < CAP_KIB,
        "sightline's peak RSS {peak} KiB is over the {CAP_KIB} KiB cap"
    );
    // The sparse executable and the bomb, each refused for memory (the sparse one by both
    // capture points that look at executables); nothing waits for an answer.
    let refused = series(
        &metrics,
        "sightline_binaries_refused_total",
        "reason=\"memory\"",
    );
    assert!(refused >= 2, "{metrics}");
    assert_eq!(
        series(
            &metrics,
            "sightline_table_fill",
            "table=\"analyses_pending\""
        ),
        0,
        "{metrics}"
    );
}
