//! The kernel's tables under churn that any local user can cause: 100 000 UDP connects (every
//! `getaddrinfo` makes some), 10 000 refused connects, and 200 Go client calls whose processes
//! are killed mid-request. Afterwards the tables hold only what is alive, the exported fill
//! levels and sweeps say so, and traceparent injection and same-host joins still work.

use sightline_e2e::flat::{spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::gobuild::{self, Shape};
use sightline_e2e::gosvc::GoService;
use sightline_e2e::netns::Netns;
use sightline_e2e::procs::{free_port, leftover_programs, require, run, Agent, Killed};
use sightline_e2e::receiver;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Go client processes killed mid-request, and the calls each has in flight.
const HANGING_PROCESSES: usize = 20;
const CALLS_EACH: usize = 10;

/// `/metrics` of sightline's Prometheus endpoint.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The sum of `metric`'s series whose labels include every `label="value"` in `labels`.
fn value(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

fn fill(port: u16, table: &str) -> f64 {
    value(&scrape(port), "sightline_table_fill", &[("table", table)])
        .unwrap_or_else(|| panic!("no sightline_table_fill for {table}"))
}

/// Waits until `cond` holds for the scraped metrics, or fails with what was last seen.
fn wait_metrics(port: u16, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = scrape(port);
        if cond(&text) {
            return;
        }
        if Instant::now() > deadline {
            let tables: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("sightline_table"))
                .collect();
            panic!(
                "{what}: not within {timeout:?}; tables:\n{}",
                tables.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A server that accepts connections and never answers: the calls to it stay in flight.
fn silent_server() -> (Killed, u16) {
    let script = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(1024)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().unwrap();
    (Killed(child), port)
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_tables_hold_only_the_living_after_churn() {
    require("curl");
    require("python3");
    let net = Netns::create("sl-tables", 78);
    let probe = gobuild::build("probe", "1.22", Shape::Plain, false);
    let load = gobuild::build("load", "1.22", Shape::Plain, false);
    let (addr, rec) = receiver::start_grpc().await.unwrap();
    let prom = free_port();
    let mut agent = Agent::start(
        &[
            "--output",
            "json",
            "--prometheus",
            &format!("127.0.0.1:{prom}"),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .unwrap();
    let b = GoService::start_in(
        &net.name,
        &probe,
        &["-listen", &format!("{}:0", net.remote_ip)],
    );
    let a = GoService::start(
        &probe,
        &[
            "-next",
            &format!("http://{}:{}/tp/after", net.remote_ip, b.port),
        ],
    );
    let capacity = value(
        &scrape(prom),
        "sightline_table_capacity",
        &[("table", "kernel_pending_connect")],
    );
    assert_eq!(capacity, Some(4096.0));

    // 100 000 UDP connects and 10 000 refused TCP connects, counted by the program itself.
    let closed = free_port();
    let churn = format!(
        r#"
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(100000):
    u.connect(("127.0.0.1", 1024 + i % 1000))
u.close()
refused = 0
for i in range(10000):
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", {closed}))
    except ConnectionRefusedError:
        refused += 1
    c.close()
print(refused)
"#
    );
    let out = run(Command::new("python3").args(["-c", &churn])).unwrap();
    assert_eq!(
        out.trim(),
        "10000",
        "every connect to the closed port refused"
    );

    // 200 Go client calls in flight, from processes started after sightline (each waits for
    // its probes before it calls).
    let (_server, silent) = silent_server();
    let url = format!("http://127.0.0.1:{silent}/hang");
    let mut clients = Vec::new();
    for _ in 0..HANGING_PROCESSES {
        let mut child = Command::new(&load)
            .args([
                "-url",
                &url,
                "-c",
                &CALLS_EACH.to_string(),
                "-d",
                "1h",
                "-wait",
                "2s",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        clients.push((Killed(child), stdout));
    }
    for (_, stdout) in &mut clients {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "started");
    }
    let in_flight = (HANGING_PROCESSES * CALLS_EACH) as f64;
    wait_metrics(
        prom,
        "the hanging calls in kernel_go_client",
        Duration::from_secs(30),
        |m| {
            value(m, "sightline_table_fill", &[("table", "kernel_go_client")])
                .is_some_and(|v| v >= in_flight)
        },
    );
    let before = scrape(prom);
    let swept_before = value(&before, "sightline_table_swept_total", &[]).unwrap();
    // sightline's own Go table holds A, B and the hanging clients.
    let go_procs = value(
        &before,
        "sightline_table_fill",
        &[("table", "kernel_go_procs")],
    );
    assert_eq!(go_procs, Some(2.0 + HANGING_PROCESSES as f64));

    // Killed mid-request: no return probe ever runs for those calls.
    drop(clients);
    wait_metrics(
        prom,
        "the killed clients' calls swept",
        Duration::from_secs(30),
        |m| {
            value(m, "sightline_table_fill", &[("table", "kernel_go_client")]) == Some(0.0)
                && value(m, "sightline_table_fill", &[("table", "kernel_go_procs")]) == Some(2.0)
        },
    );
    let after = scrape(prom);
    let swept = value(&after, "sightline_table_swept_total", &[]).unwrap() - swept_before;
    assert!(
        swept >= in_flight,
        "{swept} entries swept for {in_flight} calls in flight"
    );

    // The churn left nothing behind in the tables it went through, and every insert
    // succeeded.
    for table in [
        "kernel_pending_connect",
        "kernel_syn_sent",
        "kernel_accept_args",
    ] {
        let f = fill(prom, table);
        assert!(f < 64.0, "{table} holds {f} entries after the churn");
    }
    for table in [
        "kernel_pending_connect",
        "kernel_syn_sent",
        "kernel_go_client",
    ] {
        let failed = value(
            &after,
            "sightline_table_insert_failures_total",
            &[("table", table)],
        );
        assert_eq!(failed, Some(0.0), "{table}");
    }
    // The network signals counted every refusal.
    let refused = value(
        &after,
        "sightline_tcp_connections_total",
        &[("outcome", "refused"), ("server_port", &closed.to_string())],
    );
    assert_eq!(refused, Some(10000.0));

    // Injection and same-host joins still work: curl → A (joined by connection) → B in
    // another namespace (joined only by the traceparent written at A's socket).
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-H"])
        .arg(format!("traceparent: 00-{trace_id}-{parent}-01"))
        .arg(a.url("http", "/chain/after-churn")))
    .unwrap();
    run(Command::new("curl")
        .args(["-s", "-o", "/dev/null"])
        .arg(a.url("http", "/chain/joined")))
    .unwrap();
    let at = |s: &FlatSpan, port: u16, path: &str| {
        s.kind == SERVER
            && s.attr("server.port") == Some(&Val::I(port as i64))
            && s.attr("url.path") == Some(&Val::S(path.into()))
    };
    receiver::wait_for(Duration::from_secs(20), || {
        let all = spans(&rec.traces.lock().unwrap());
        all.iter().filter(|s| at(s, b.port, "/tp/after")).count() >= 2
            && all.iter().filter(|s| s.kind == CLIENT).count() >= 4
    })
    .await
    .expect("spans after the churn");
    let (_, status) = agent.stop().unwrap();
    assert!(status.success());
    assert_eq!(leftover_programs(), Vec::<String>::new());
    let all = spans(&rec.traces.lock().unwrap());
    let one = |what: &str, f: &dyn Fn(&FlatSpan) -> bool| -> FlatSpan {
        let found: Vec<&FlatSpan> = all.iter().filter(|s| f(s)).collect();
        assert_eq!(found.len(), 1, "{what}: {found:#?}");
        found[0].clone()
    };
    // curl's traceparent is continued by A, then carried to B.
    let a1 = one("A's span", &|s| at(s, a.port, "/chain/after-churn"));
    assert_eq!(
        (a1.trace_id.as_str(), a1.parent_span_id.as_str()),
        (trace_id, parent)
    );
    let a1c = one("A's call", &|s| {
        s.kind == CLIENT && s.parent_span_id == a1.span_id
    });
    let b1 = one("B's span", &|s| {
        at(s, b.port, "/tp/after") && s.parent_span_id == a1c.span_id
    });
    assert_eq!(b1.trace_id, trace_id);
    // Without a traceparent, curl's CLIENT span and A's SERVER span are joined by their
    // connection, and the trace still reaches B.
    let a2 = one("A's joined span", &|s| at(s, a.port, "/chain/joined"));
    let curl2 = one("curl's span", &|s| {
        s.kind == CLIENT && s.span_id == a2.parent_span_id
    });
    assert_eq!(curl2.trace_id, a2.trace_id);
    assert_eq!(curl2.attr("server.port"), Some(&Val::I(a.port as i64)));
    let a2c = one("A's second call", &|s| {
        s.kind == CLIENT && s.parent_span_id == a2.span_id
    });
    one("B's second span", &|s| {
        at(s, b.port, "/tp/after") && s.parent_span_id == a2c.span_id && s.trace_id == a2.trace_id
    });
}
