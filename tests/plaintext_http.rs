//! End to end, as root: plaintext HTTP from runtimes sightline has no library probe for,
//! captured at the socket syscalls. A Python server called by curl and node, a socket that
//! is not HTTP, and a real OTLP receiver in this process (whose own view of each export must
//! not become a span).

use sightline_e2e::flat::{points, spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::procs::{
    free_port, leftover_programs, require, run, tempdir, which, Agent, Killed,
};
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

/// `python3 -m http.server` (with `extra` options) serving `dir` on a free loopback port as
/// `service`, listening when this returns.
fn py_file_server(dir: &std::path::Path, service: &str, extra: &[&str]) -> (Killed, u16) {
    let port = free_port();
    let server = Killed(
        Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .args(extra)
            .arg(port.to_string())
            .current_dir(dir)
            .env("OTEL_SERVICE_NAME", service)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    (server, port)
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
    let (_server, port) = py_file_server(&dir, "py-plain", &[]);
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
    let (_server, port) = py_file_server(&dir, "py-old-server", &["-p", "HTTP/1.1"]);
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

/// The spans of `all` that answer or send `path` (`url.path` on a server, `url.full` ending in
/// it on a client), of `service`.
fn by_path<'a>(all: &'a [FlatSpan], kind: i32, service: &str, path: &str) -> &'a FlatSpan {
    let found: Vec<_> = all
        .iter()
        .filter(|sp| {
            sp.kind == kind
                && sp.service() == service
                && match kind {
                    SERVER => s(sp.attr("url.path")) == path,
                    _ => s(sp.attr("url.full")).ends_with(path),
                }
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span of {service} for {path}: {all:#?}"
    );
    found[0]
}

/// `child` is `parent`'s child, in its trace.
#[track_caller]
fn child_of(child: &FlatSpan, parent: &FlatSpan) {
    assert_eq!(
        (child.trace_id.as_str(), child.parent_span_id.as_str()),
        (parent.trace_id.as_str(), parent.span_id.as_str()),
        "{child:#?}\nis not the child of\n{parent:#?}"
    );
}

/// The one span of `kind` and `service` that is `parent`'s child.
#[track_caller]
fn child<'a>(all: &'a [FlatSpan], kind: i32, service: &str, parent: &FlatSpan) -> &'a FlatSpan {
    let found: Vec<_> = all
        .iter()
        .filter(|sp| {
            sp.kind == kind && sp.service() == service && sp.parent_span_id == parent.span_id
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} span of {service} under {parent:#?}: {all:#?}"
    );
    child_of(found[0], parent);
    found[0]
}

/// Waits until `n` spans satisfy `pred`, then stops the agent and returns every span.
fn collect(
    rt: &tokio::runtime::Runtime,
    rec: &receiver::Received,
    mut agent: Agent,
    n: usize,
    pred: impl Fn(&FlatSpan) -> bool,
) -> Vec<FlatSpan> {
    rt.block_on(receiver::wait_for(Duration::from_secs(20), || {
        spans(&rec.traces.lock().unwrap())
            .iter()
            .filter(|s| pred(s))
            .count()
            >= n
    }))
    .unwrap_or_else(|_| {
        panic!(
            "expected {n} spans: {:#?}\nagent stderr:\n{}",
            spans(&rec.traces.lock().unwrap()),
            agent.stderr.lock().unwrap().join("\n")
        )
    });
    // One more metrics interval, so the counters' last points include every call.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, status) = agent.stop().unwrap();
    assert!(status.success(), "sightline exited with {status}");
    spans(&rec.traces.lock().unwrap())
}

/// The last value of a counter series with attribute `key`=`value`.
fn counter(rec: &receiver::Received, metric: &str, key: &str, value: &str) -> i64 {
    points(&rec.metrics.lock().unwrap())
        .iter()
        .filter(|p| p.metric == metric && p.attrs.get(key) == Some(&Val::S(value.into())))
        .map(|p| p.value)
        .max()
        .unwrap_or(0)
}

/// A process that prints `listening on ADDR` once it listens, and its port.
fn listening(cmd: &mut Command) -> (Killed, u16) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{cmd:?} said {line:?}"));
    (Killed(child), port)
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// curl in plaintext → nginx, proxying over HTTPS → a Go service → a Python service in
/// plaintext: one trace through three capture points (the socket syscalls, OpenSSL, Go), with
/// nginx's proxied call the child of the request its worker was handling. nginx's `sendfile`
/// and `writev` answers are captured too.
#[test]
fn a_chain_through_nginx_go_and_python_is_one_trace() {
    use sightline_e2e::gobuild::{self, Shape};
    use sightline_e2e::gosvc::GoService;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    require("python3");
    let dir = tempdir("chain");
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("leaf.txt"), "leaf\n").unwrap();
    let file = "0123456789abcdef".repeat(1024);
    std::fs::write(dir.join("static/file.txt"), &file).unwrap();
    let (_leaf, leaf_port) = py_file_server(&dir, "py-leaf", &[]);
    let go_bin = gobuild::build("probe", "1.23", Shape::Plain, false);
    let leaf_url = format!("http://127.0.0.1:{leaf_port}/leaf.txt");
    let go = GoService::start(&go_bin, &["-tls", "-h1", "-next", &leaf_url]);
    let nginx = sightline_e2e::procs::Nginx::plain(&format!(
        "location /chain/ {{ proxy_pass https://127.0.0.1:{}; proxy_http_version 1.1; }}
    location /static/ {{ root {}; sendfile on; }}
    location /hello {{ return 200 \"hello\\n\"; }}",
        go.port,
        dir.display()
    ))
    .unwrap();
    let base = format!("http://127.0.0.1:{}", nginx.port);

    let (rt, rec, agent) = agent_with_receiver();
    let get = |path: &str| {
        run(Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
            ])
            .arg(format!("{base}{path}")))
        .unwrap()
    };
    assert_eq!(get("/chain/one"), "200 0");
    assert_eq!(get("/static/file.txt"), format!("200 {}", file.len()));
    assert_eq!(get("/hello"), "200 6");
    let on_nginx = |sp: &FlatSpan| {
        sp.service() == "nginx" && sp.kind == SERVER || s(sp.attr("url.full")).starts_with(&base)
    };
    let all = collect(&rt, &rec, agent, 6, |sp| {
        on_nginx(sp) || sp.service() == "py-leaf"
    });

    let curl = by_path(&all, CLIENT, "curl", "/chain/one");
    let n_server = by_path(&all, SERVER, "nginx", "/chain/one");
    let n_client = by_path(&all, CLIENT, "nginx", "/chain/one");
    let go_server = all
        .iter()
        .find(|sp| {
            sp.kind == SERVER
                && s(sp.attr("url.path")) == "/chain/one"
                && sp.service().starts_with("probe")
        })
        .unwrap_or_else(|| panic!("the Go server span: {all:#?}"));
    let go_client = all
        .iter()
        .find(|sp| sp.kind == CLIENT && s(sp.attr("url.full")) == leaf_url)
        .unwrap_or_else(|| panic!("the Go client span: {all:#?}"));
    let leaf = by_path(&all, SERVER, "py-leaf", "/leaf.txt");
    child_of(n_server, curl);
    child_of(n_client, n_server);
    child_of(go_server, n_client);
    child_of(go_client, go_server);
    child_of(leaf, go_client);
    assert_eq!(curl.parent_span_id, "", "curl's call is the root");
    // Each hop as its own capture point saw it.
    assert_eq!(s(n_server.attr("url.scheme")), "http");
    assert_eq!(
        s(n_client.attr("url.full")),
        format!("https://127.0.0.1:{}/chain/one", go.port)
    );
    assert_eq!(s(n_client.attr("network.peer.port")), go.port.to_string());
    assert_eq!(s(go_server.attr("url.scheme")), "https");
    for sp in [curl, n_server, n_client, go_server, go_client, leaf] {
        assert_eq!(s(sp.attr("http.response.status_code")), "200", "{sp:#?}");
    }
    // Each child ran within its parent (a Go client span ends when the response's head is
    // read, so its server may still be sending the body).
    for (c, p) in [(n_client, n_server), (go_server, n_client)] {
        assert!(
            c.start_ns >= p.start_ns && c.end_ns <= p.end_ns,
            "{c:#?}\n{p:#?}"
        );
    }
    assert!(leaf.start_ns >= go_client.start_ns);
    // nginx's sendfile (head by writev, body by sendfile) and its writev answers.
    for path in ["/static/file.txt", "/hello"] {
        let sv = by_path(&all, SERVER, "nginx", path);
        let cl = by_path(&all, CLIENT, "curl", path);
        assert_eq!(s(sv.attr("http.response.status_code")), "200");
        child_of(sv, cl);
        assert_eq!(
            all.iter().filter(|sp| sp.trace_id == sv.trace_id).count(),
            2,
            "nothing else in {path}'s trace"
        );
    }
    assert!(counter(&rec, "sightline.parents.by_thread", "outcome", "found") >= 1);
}

/// Thread-per-request servers in Python (`ThreadingHTTPServer`, calling on with urllib) and
/// Java (the JDK's `HttpServer` on a pool, calling on with `HttpURLConnection`), called by the
/// JDK's `HttpClient`: every outgoing call is the child of the request its thread handles. A
/// node server (one event loop) with two requests open at once names no parent for the calls
/// it makes then.
#[test]
fn thread_per_request_servers_make_their_calls_children() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("python3");
    require("java");
    require("node");
    require("curl");
    let dir = tempdir("threads");
    std::fs::write(dir.join("leaf.txt"), "leaf\n").unwrap();
    let (_leaf, leaf_port) = py_file_server(&dir, "py-leaf", &[]);
    let java = repo("tests/java/Plain.java");
    let (_jfront, jfront_port) = listening(
        Command::new("java")
            .arg(&java)
            .args([
                "server",
                "0",
                &format!("http://127.0.0.1:{leaf_port}/leaf.txt"),
            ])
            .env("OTEL_SERVICE_NAME", "java-front"),
    );
    let (_pfront, pfront_port) = listening(
        Command::new("python3")
            .arg(repo("tests/python/front.py"))
            .args(["0", &format!("http://127.0.0.1:{jfront_port}/front/")])
            .env("OTEL_SERVICE_NAME", "py-front"),
    );
    let node_js = "const http = require('http');
const leaf = process.argv[1];
http.createServer((req, res) => {
  setTimeout(() => http.get(leaf + req.url, r => { r.resume(); r.on('end', () => res.end('ok')); }), 1000);
}).listen(0, '127.0.0.1', function () { console.log('listening on 127.0.0.1:' + this.address().port); });";
    let (_node, node_port) = listening(
        Command::new("node")
            .args(["-e", node_js, &format!("http://127.0.0.1:{leaf_port}")])
            .env("OTEL_SERVICE_NAME", "node-loop"),
    );

    let (rt, rec, agent) = agent_with_receiver();
    let pfront = format!("http://127.0.0.1:{pfront_port}");
    let out = run(Command::new("java")
        .arg(&java)
        .args(["client", &format!("{pfront}/from-java")])
        .env("OTEL_SERVICE_NAME", "java-client"))
    .unwrap();
    assert_eq!(out.trim(), "200");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", &format!("traceparent: 00-{trace_id}-{parent_id}-01")])
        .arg(format!("{pfront}/from-curl")))
    .unwrap();
    assert_eq!(out, "200");
    // node: one request alone, then two open at once.
    let node = format!("http://127.0.0.1:{node_port}");
    let out = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{node}/alone")))
    .unwrap();
    assert_eq!(out, "200");
    let both: Vec<_> = ["/both-a", "/both-b"]
        .iter()
        .map(|p| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("{node}{p}"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in both {
        assert!(c.wait().unwrap().success());
    }
    let all = collect(&rt, &rec, agent, 5, |sp| sp.service() == "py-leaf");

    for (from, root) in [("java-client", "/from-java"), ("curl", "/from-curl")] {
        let client = by_path(&all, CLIENT, from, root);
        let p_server = by_path(&all, SERVER, "py-front", root);
        let p_client = child(&all, CLIENT, "py-front", p_server);
        let j_server = child(&all, SERVER, "java-front", p_client);
        let j_client = child(&all, CLIENT, "java-front", j_server);
        let leaf = child(&all, SERVER, "py-leaf", j_client);
        if from == "curl" {
            // The caller's traceparent holds through every in-process hop.
            assert_eq!(
                (p_server.trace_id.as_str(), p_server.parent_span_id.as_str()),
                (trace_id, parent_id)
            );
        } else {
            child_of(p_server, client);
        }
        assert_eq!(
            s(p_client.attr("url.full")),
            format!("http://127.0.0.1:{jfront_port}/front/")
        );
        assert_eq!(
            s(j_client.attr("url.full")),
            format!("http://127.0.0.1:{leaf_port}/leaf.txt")
        );
        assert_eq!(s(j_server.attr("url.path")), "/front/");
        assert_eq!(s(leaf.attr("http.response.status_code")), "200");
    }

    // node alone: its call is its request's child.
    let alone = by_path(&all, SERVER, "node-loop", "/alone");
    child_of(by_path(&all, CLIENT, "node-loop", "/alone"), alone);
    // node with two requests open: each call has no parent or its own request, never the other.
    for p in ["/both-a", "/both-b"] {
        let c = by_path(&all, CLIENT, "node-loop", p);
        let sv = by_path(&all, SERVER, "node-loop", p);
        assert!(
            c.parent_span_id.is_empty() || c.parent_span_id == sv.span_id,
            "{c:#?}\n{sv:#?}"
        );
    }
    assert!(counter(&rec, "sightline.parents.by_thread", "outcome", "found") >= 5);
    assert!(counter(&rec, "sightline.parents.by_thread", "outcome", "ambiguous") >= 1);
}

/// A node server started after sightline is covered from its first request, made within 1 s
/// of its start: keep-alive and pipelined requests, a chunked request body and a body split
/// across writes, a head split across writes, and a chunked response written 50 ms apart.
/// Each request is one SERVER and one CLIENT span, with its status, its own connection's
/// ends, and a duration within what the client measured.
#[test]
fn keep_alive_pipelining_chunked_and_split_bodies() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("node");
    require("python3");
    let (rt, rec, agent) = agent_with_receiver();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (_node, port) = listening(
        Command::new("node")
            .arg(repo("tests/node/shapes.js"))
            .env("OTEL_SERVICE_NAME", "node-shapes"),
    );
    let out = run(Command::new("python3")
        .arg(repo("tests/python/shapes_client.py"))
        .arg(port.to_string())
        .env("OTEL_SERVICE_NAME", "py-shapes"))
    .unwrap();
    // name → (statuses, ms) as the client saw them.
    let said: std::collections::HashMap<&str, (Vec<&str>, f64)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0],
                (f[1..f.len() - 1].to_vec(), f[f.len() - 1].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(said["pipelined"].0, ["200", "200"], "{out}");
    assert_eq!(said["chunked"].0, ["201"], "{out}");
    let all = collect(&rt, &rec, agent, 8, |sp| sp.service() == "node-shapes");
    let server = |path: &str| by_path(&all, SERVER, "node-shapes", path);
    let client = |path: &str| by_path(&all, CLIENT, "py-shapes", path);
    let cases = [
        ("/ka/1", "keep-alive-1", "GET", 200),
        ("/ka/2", "keep-alive-2", "GET", 200),
        ("/pipe/1", "pipelined", "GET", 200),
        ("/pipe/2", "pipelined", "GET", 200),
        ("/chunked", "chunked", "POST", 201),
        ("/split", "split", "POST", 201),
        ("/split-head", "split-head", "GET", 200),
        ("/stream", "stream", "GET", 200),
    ];
    let conn_port = s(server("/ka/1").attr("network.peer.port"));
    for (path, name, method, status) in cases {
        let (sv, cl) = (server(path), client(path));
        assert_eq!(sv.name, method, "{sv:#?}");
        assert_eq!(s(sv.attr("http.response.status_code")), status.to_string());
        assert_eq!(s(cl.attr("http.response.status_code")), status.to_string());
        assert_eq!(s(cl.attr("url.full")), format!("http://shapes{path}"));
        // One connection throughout, joined end to end.
        assert_eq!(s(sv.attr("network.peer.port")), conn_port, "{sv:#?}");
        assert_eq!(s(cl.attr("network.local.port")), conn_port, "{cl:#?}");
        child_of(sv, cl);
        // Durations within what the client measured around the exchange.
        let ms = |sp: &FlatSpan| (sp.end_ns - sp.start_ns) as f64 / 1e6;
        assert!(
            ms(cl) <= said[name].1 + 1.0,
            "{name}: {} > {}",
            ms(cl),
            said[name].1
        );
        assert!(
            ms(sv) <= ms(cl),
            "{name}: server {} > client {}",
            ms(sv),
            ms(cl)
        );
    }
    // Bodies sent in pieces 50 ms apart take their time; the server's span starts with the
    // request's first bytes.
    for (path, pieces) in [("/chunked", 3.0), ("/split", 1.0), ("/stream", 0.0)] {
        let ms = (client(path).end_ns - client(path).start_ns) as f64 / 1e6;
        assert!(ms >= pieces * 50.0, "{path}: {ms} ms");
    }
    let stream = server("/stream");
    assert!(
        (stream.end_ns - stream.start_ns) as f64 / 1e6 >= 100.0,
        "{stream:#?}"
    );
    // Its first request came within a second of its start.
    let first = server("/ka/1").start_ns.saturating_sub(started);
    assert!(first < 1_000_000_000, "{first} ns after the start");
}

/// A plaintext HTTP server that answers `/missing` with 404 and anything else with 200, on
/// its own thread: the test process itself, reading and writing with `recv` and `send`.
fn tiny_server() -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let missing = head.starts_with(b"GET /missing ");
            let answer: &[u8] = if missing {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            };
            let _ = c.write_all(answer);
        }
    });
    port
}

/// Plaintext capture at the socket syscalls in Debian 12's own 6.1 kernel (booted under
/// qemu, tests/support/vm.rs), which has kprobes and no lockdown: sightline says once how it
/// captures plaintext there, and a server older than sightline and curl are reported with
/// their statuses, paths, addresses and same-host join, as on this host's kernel. (Emulated,
/// /proc reads are slow, so their spacing shows there.)
#[test]
fn plaintext_capture_in_a_guest_kernel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    sightline_e2e::vm::Guest::for_this_test()
        .file(which("curl"))
        .pass("in_guest_plaintext", Duration::from_secs(300));
}

#[test]
#[ignore = "runs in the guest kernel that plaintext_capture_in_a_guest_kernel boots"]
fn in_guest_plaintext() {
    assert_eq!(
        std::env::var("SIGHTLINE_IN_GUEST").as_deref(),
        Ok("1"),
        "this test runs in the guest kernel; run plaintext_capture_in_a_guest_kernel"
    );
    // Older than sightline, its accepting thread blocked in accept() when the probes came.
    let port = tiny_server();
    let (rt, rec, agent) = agent_with_receiver();
    let said = agent.stderr.lock().unwrap().join("\n");
    assert!(
        said.contains("plaintext HTTP is read at the socket syscalls' tracepoints")
            && said.contains("kprobes=\"available\""),
        "{said}"
    );
    let base = format!("http://127.0.0.1:{port}");
    // The connection accepted by that blocked call has its ends from /proc, if its tables
    // were at hand; the next one's local address is the listener's, from /proc too, whose
    // rereads are spaced. A miss then must not stick: later connections have it.
    for path in ["/first", "/second"] {
        run(Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("{base}{path}")))
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for (path, code) in [("/hello?k=v", "200"), ("/missing", "404")] {
        let out = run(Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{base}{path}")))
        .unwrap();
        assert_eq!(out, code);
    }
    let on_port = move |sp: &FlatSpan| {
        sp.attr("server.port") == Some(&Val::I(port as i64))
            || sp.attr("network.peer.port") == Some(&Val::I(port as i64))
    };
    let all = collect(&rt, &rec, agent, 8, on_port);
    let me = std::env::current_exe().unwrap();
    let me = me.file_name().unwrap().to_str().unwrap();
    for (path, query, status) in [("/hello", Some("k=REDACTED"), 200), ("/missing", None, 404)] {
        let sv = by_path(&all, SERVER, me, path);
        let full = format!(
            "{path}{}",
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        let cl = by_path(&all, CLIENT, "curl", &full);
        assert_eq!(s(sv.attr("http.response.status_code")), status.to_string());
        assert_eq!(s(cl.attr("http.response.status_code")), status.to_string());
        assert_eq!(sv.attr("url.query").map(Val::s), query, "{sv:#?}");
        assert_eq!(s(sv.attr("network.local.port")), port.to_string());
        assert_eq!(s(cl.attr("network.peer.port")), port.to_string());
        child_of(sv, cl);
    }
}
