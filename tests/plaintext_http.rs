//! End to end, as root: plaintext HTTP from runtimes sightline has no library probe for,
//! captured at the socket syscalls. A Python server called by curl and node, a socket that
//! is not HTTP, and a real OTLP receiver in this process (whose own view of each export must
//! not become a span).

use sightline_e2e::flat::{points, spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::procs::{free_port, leftover_programs, require, run, tempdir, Agent, Killed};
use sightline_e2e::receiver;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Each test loads the probes, which see the whole host: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn s(v: Option<&Val>) -> String {
    match v {
        Some(Val::S(s)) => s.clone(),
        Some(Val::I(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn wait_listening(port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// sightline exporting to a real OTLP receiver in this process, exporting often, and the
/// runtime the receiver runs on.
fn agent_with_receiver() -> (tokio::runtime::Runtime, receiver::Received, Agent) {
    let (rt, addr, rec) = receiver::http_on_runtime();
    let agent = Agent::start(
        &["--output", "json"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
        ],
    )
    .unwrap();
    (rt, rec, agent)
}

fn one<'a>(all: &'a [FlatSpan], kind: i32, key: &str, value: &str) -> &'a FlatSpan {
    let found: Vec<_> = all
        .iter()
        .filter(|sp| sp.kind == kind && sp.attr(key) == Some(&Val::S(value.into())))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one span of kind {kind} with {key}={value}: {found:#?}"
    );
    found[0]
}

#[test]
fn plaintext_http_from_python_curl_and_node() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    require("python3");
    require("node");
    let dir = tempdir("plain");
    std::fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    // Started before sightline: its listening socket is older than the probes, the
    // connections it accepts are not.
    let port = free_port();
    let _server = Killed(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&dir)
            .env("OTEL_SERVICE_NAME", "py-plain")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    // A server that speaks no HTTP: its socket is classified and then left alone.
    let other_port = free_port();
    let echo = format!(
        "import socket\ns = socket.create_server(('127.0.0.1', {other_port}))\nwhile True:\n    c, _ = s.accept()\n    c.sendall(c.recv(100))\n    c.close()"
    );
    let _echo = Killed(
        Command::new("python3")
            .args(["-c", &echo])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(other_port);

    let (rt, rec, mut agent) = agent_with_receiver();

    let base = format!("http://127.0.0.1:{port}");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("traceparent: 00-{trace_id}-{parent_id}-01")])
        .args(["-H", "Authorization: Bearer sekrit-token"])
        .arg(format!("{base}/hello.txt?token=sekrit-query")))
    .unwrap();
    assert_eq!(out, "200");
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{base}/missing")))
    .unwrap();
    assert_eq!(out, "404");
    let js = format!(
        "require('http').get('{base}/hello.txt?from=node', r => {{ r.resume(); r.on('end', () => process.exit(r.statusCode === 200 ? 0 : 1)); }});"
    );
    run(Command::new("node").args(["-e", &js])).unwrap();
    let py = format!(
        "import socket\nc = socket.create_connection(('127.0.0.1', {other_port}))\nc.sendall(b'\\x00\\x01binary, not http')\nprint(c.recv(100))"
    );
    run(Command::new("python3").args(["-c", &py])).unwrap();

    let on_port = |all: &[FlatSpan]| {
        all.iter()
            .filter(|sp| {
                sp.attr("server.port") == Some(&Val::I(port as i64))
                    || sp.attr("network.peer.port") == Some(&Val::I(port as i64))
            })
            .count()
    };
    rt.block_on(receiver::wait_for(Duration::from_secs(20), || {
        on_port(&spans(&rec.traces.lock().unwrap())) >= 6
    }))
    .unwrap_or_else(|_| {
        panic!(
            "expected 6 spans on port {port}: {:#?}\nagent stderr:\n{}",
            spans(&rec.traces.lock().unwrap()),
            agent.stderr.lock().unwrap().join("\n")
        )
    });
    // One more metrics interval, so the counters' last points include every call.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, status) = agent.stop().unwrap();
    assert!(status.success(), "sightline exited with {status}");
    assert_eq!(leftover_programs(), Vec::<String>::new());

    let all = spans(&rec.traces.lock().unwrap());
    assert_eq!(on_port(&all), 6, "{all:#?}");

    // The Python server's view, from its socket: the incoming traceparent is honoured.
    let hello = all
        .iter()
        .filter(|sp| {
            sp.kind == SERVER && sp.attr("url.query") == Some(&Val::S("token=REDACTED".into()))
        })
        .collect::<Vec<_>>();
    assert_eq!(hello.len(), 1, "{all:#?}");
    let hello = hello[0];
    assert_eq!(hello.name, "GET");
    assert_eq!(hello.service(), "py-plain");
    assert_eq!(s(hello.attr("url.path")), "/hello.txt");
    assert_eq!(s(hello.attr("url.scheme")), "http");
    assert_eq!(s(hello.attr("http.response.status_code")), "200");
    assert_eq!(s(hello.attr("server.port")), port.to_string());
    assert_eq!(s(hello.attr("network.local.port")), port.to_string());
    assert_eq!(s(hello.attr("client.address")), "127.0.0.1");
    assert!(s(hello.attr("user_agent.original")).starts_with("curl/"));
    assert_eq!(hello.trace_id, trace_id);
    assert_eq!(hello.parent_span_id, parent_id);
    assert!(s(hello.resource.get("process.executable.name")).starts_with("python3"));

    // curl's view of the same request, from its socket: its local end is the server's peer.
    let c_hello = one(
        &all,
        CLIENT,
        "url.full",
        &format!("{base}/hello.txt?token=REDACTED"),
    );
    assert_eq!(c_hello.service(), "curl");
    assert_eq!(s(c_hello.attr("http.response.status_code")), "200");
    assert_eq!(s(c_hello.attr("network.peer.port")), port.to_string());
    assert_eq!(
        c_hello.attr("network.local.port"),
        hello.attr("network.peer.port")
    );

    // No traceparent: the server joins its same-host client's trace as its child.
    let (m_s, m_c) = (
        one(&all, SERVER, "url.path", "/missing"),
        one(&all, CLIENT, "url.full", &format!("{base}/missing")),
    );
    assert_eq!(s(m_s.attr("http.response.status_code")), "404");
    assert_eq!((m_s.status, m_c.status), (0, 2));
    assert_eq!(
        (m_s.trace_id.as_str(), m_s.parent_span_id.as_str()),
        (m_c.trace_id.as_str(), m_c.span_id.as_str())
    );

    // node's plaintext client, with the addresses its socket has.
    let n_c = one(
        &all,
        CLIENT,
        "url.full",
        &format!("{base}/hello.txt?from=REDACTED"),
    );
    assert_eq!(n_c.service(), "node");
    assert_eq!(s(n_c.attr("network.peer.address")), "127.0.0.1");
    let n_s = one(&all, SERVER, "url.query", "from=REDACTED");
    assert_eq!(n_s.parent_span_id, n_c.span_id);

    // Nothing from the socket that spoke no HTTP, nothing of this receiver's own view of the
    // exports, no secret.
    for sp in &all {
        assert!(
            sp.attr("server.port") != Some(&Val::I(other_port as i64))
                && sp.attr("network.peer.port") != Some(&Val::I(other_port as i64)),
            "{sp:#?}"
        );
        assert_ne!(s(sp.attr("url.path")), "/v1/traces", "{sp:#?}");
        assert_ne!(s(sp.attr("url.path")), "/v1/metrics", "{sp:#?}");
        for v in sp.attrs.values() {
            assert!(!v.s().contains("sekrit"), "secret leaked in {sp:#?}");
        }
    }

    // The kernel classified the sockets: HTTP ones copied, the other one left alone; and the
    // receiver's connections from sightline itself were recognised.
    let pts = points(&rec.metrics.lock().unwrap());
    let last = |metric: &str, class: Option<&str>| -> i64 {
        pts.iter()
            .filter(|p| {
                p.metric == metric
                    && class.is_none_or(|c| p.attrs.get("class") == Some(&Val::S(c.into())))
            })
            .map(|p| p.value)
            .max()
            .unwrap_or(0)
    };
    let classified = "sightline.sockets.classified";
    assert!(last(classified, Some("http")) >= 6, "{pts:#?}");
    assert!(
        last(classified, Some("other")) >= 2,
        "{:?}",
        pts.iter()
            .filter(|p| p.metric == classified)
            .map(|p| (p.attrs.clone(), p.value))
            .collect::<Vec<_>>()
    );
    assert!(last("sightline.connections.own", None) >= 1);
    let server_200 = pts
        .iter()
        .filter(|p| {
            p.metric == "http.server.request.duration"
                && p.resource.get("service.name") == Some(&Val::S("py-plain".into()))
                && p.attrs.get("http.response.status_code") == Some(&Val::I(200))
        })
        .map(|p| p.count)
        .max()
        .unwrap_or(0);
    assert_eq!(server_200, 2);
}

/// A keep-alive connection opened before sightline started: its next requests are captured
/// (from /proc at start), with the addresses /proc gives and no same-host join, since
/// positions on a connection watched from its middle need not line up.
#[test]
fn a_keep_alive_connection_older_than_sightline() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("python3");
    let dir = tempdir("old-conn");
    for f in ["before.txt", "a.txt", "b.txt"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let port = free_port();
    let _server = Killed(
        Command::new("python3")
            .args(["-m", "http.server", "-p", "HTTP/1.1", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(&dir)
            .env("OTEL_SERVICE_NAME", "py-old-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let script = format!(
        "import http.client, sys\nc = http.client.HTTPConnection('127.0.0.1', {port})\ndef get(p):\n    c.request('GET', p)\n    r = c.getresponse()\n    r.read()\n    print(r.status, flush=True)\nget('/before.txt')\nsys.stdin.readline()\nget('/a.txt')\nget('/b.txt')\n"
    );
    let mut client = Killed(
        Command::new("python3")
            .args(["-c", &script])
            .env("OTEL_SERVICE_NAME", "py-old-client")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "200");

    let (rt, rec, mut agent) = agent_with_receiver();
    let said = agent.stderr.lock().unwrap().join("\n");
    assert!(
        said.contains("TCP connections open before start are captured"),
        "{said}"
    );
    client.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "200");
    assert_eq!(lines.next().unwrap().unwrap(), "200");

    let client_url = |f: &str| format!("http://127.0.0.1:{port}/{f}");
    rt.block_on(receiver::wait_for(Duration::from_secs(20), || {
        let all = spans(&rec.traces.lock().unwrap());
        all.iter()
            .any(|s| s.attr("url.full") == Some(&Val::S(client_url("b.txt"))))
            && all
                .iter()
                .any(|s| s.kind == SERVER && s.attr("url.path") == Some(&Val::S("/b.txt".into())))
    }))
    .unwrap_or_else(|_| {
        panic!(
            "{:#?}\nagent stderr:\n{}",
            spans(&rec.traces.lock().unwrap()),
            agent.stderr.lock().unwrap().join("\n")
        )
    });
    let (_, status) = agent.stop().unwrap();
    assert!(status.success());
    let all = spans(&rec.traces.lock().unwrap());

    // The client's two requests after start, on its old connection, with its ends from /proc.
    for f in ["a.txt", "b.txt"] {
        let c = one(&all, CLIENT, "url.full", &client_url(f));
        assert_eq!(c.service(), "py-old-client");
        assert_eq!(s(c.attr("http.response.status_code")), "200");
        assert_eq!(s(c.attr("network.peer.port")), port.to_string());
        assert_eq!(s(c.attr("network.peer.address")), "127.0.0.1");
    }
    // The server's handler was blocked reading the connection when the probes came: that
    // read's bytes are lost, its next one is not.
    let b = one(&all, SERVER, "url.path", "/b.txt");
    assert_eq!(b.service(), "py-old-server");
    assert_eq!(s(b.attr("http.response.status_code")), "200");
    assert_eq!(s(b.attr("network.local.port")), port.to_string());
    assert_eq!(
        b.parent_span_id, "",
        "no join on a connection watched from its middle"
    );
    assert!(all
        .iter()
        .all(|sp| sp.attr("url.path") != Some(&Val::S("/before.txt".into()))));
}
