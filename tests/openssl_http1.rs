//! End to end, as root: nginx serving HTTPS, called by curl, Python and node (static OpenSSL),
//! all started after sightline; a real OTLP receiver checks the exact spans and metrics.

use sightline_e2e::flat::{points, spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::procs::{leftover_programs, require, run, Agent, Nginx};
use sightline_e2e::receiver::{self, Received};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Each test loads the probes, which see the whole host: run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SEMCONV_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn s(v: Option<&Val>) -> String {
    match v {
        Some(Val::S(s)) => s.clone(),
        Some(Val::I(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

struct Seen<'a> {
    spans: &'a [FlatSpan],
    port: u16,
}

impl<'a> Seen<'a> {
    fn server(&self, path: &str) -> &'a FlatSpan {
        let port = self.port as i64;
        let found: Vec<_> = self
            .spans
            .iter()
            .filter(|s| {
                s.kind == SERVER
                    && s.attr("url.path") == Some(&Val::S(path.into()))
                    && s.attr("server.port") == Some(&Val::I(port))
            })
            .collect();
        assert_eq!(found.len(), 1, "one SERVER span for {path}: {found:#?}");
        found[0]
    }

    fn client(&self, path_and_query: &str) -> &'a FlatSpan {
        let url = format!("https://127.0.0.1:{}{path_and_query}", self.port);
        let found: Vec<_> = self
            .spans
            .iter()
            .filter(|s| s.kind == CLIENT && s.attr("url.full") == Some(&Val::S(url.clone())))
            .collect();
        assert_eq!(found.len(), 1, "one CLIENT span for {url}: {found:#?}");
        found[0]
    }
}

async fn scenario(grpc: bool) {
    require("curl");
    require("python3");
    require("node");
    let (addr, rec): (_, Received) = if grpc {
        receiver::start_grpc().await.unwrap()
    } else {
        receiver::start_http().await.unwrap()
    };
    let nginx = Nginx::start().unwrap();
    let port = nginx.port;
    let mut agent = Agent::start(
        &["--output", "json"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                if grpc { "grpc" } else { "http/protobuf" }.into(),
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-test-tenant=acme".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=e2e".into(),
            ),
            // gzip on the HTTP transport; gRPC stays uncompressed, so both paths run.
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                if grpc { "none" } else { "gzip" }.into(),
            ),
        ],
    )
    .unwrap();

    let trace_id = random_hex(16);
    let parent_id = random_hex(8);
    // Two requests on one keep-alive connection; secrets in a header, a cookie and the query.
    run(Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-o", "/dev/null"])
        .arg("-H")
        .arg(format!("traceparent: 00-{trace_id}-{parent_id}-01"))
        .args(["-H", "Authorization: Bearer sekrit-token"])
        .args(["-H", "Cookie: session=sekrit-cookie"])
        .arg(nginx.url("/api/items?token=sekrit-query&page=2"))
        .arg(nginx.url("/k2")))
    .unwrap();
    for path in ["/missing", "/down"] {
        run(Command::new("curl")
            .args(["-sk", "--http1.1", "-o", "/dev/null"])
            .arg(nginx.url(path)))
        .unwrap();
    }
    let py = format!(
        "import ssl, urllib.request\nctx = ssl._create_unverified_context()\nprint(urllib.request.urlopen('{}', context=ctx).status)",
        nginx.url("/py")
    );
    let out = run(Command::new("python3")
        .args(["-c", &py])
        .env("OTEL_SERVICE_NAME", "py-client"))
    .unwrap();
    assert_eq!(out.trim(), "200");
    // node carries OpenSSL statically; the promise is coverage within 1 s of its start.
    let js = format!(
        "setTimeout(() => require('https').get({{host: '127.0.0.1', port: {port}, path: '/node?x=1', rejectUnauthorized: false}}, r => {{ r.resume(); r.on('end', () => process.exit(r.statusCode === 200 ? 0 : 1)); }}), 1000);"
    );
    run(Command::new("node").args(["-e", &js])).unwrap();

    // 6 SERVER spans from nginx and 6 CLIENT spans.
    let mine = |rec: &Received| {
        let all = spans(&rec.traces.lock().unwrap());
        all.into_iter()
            .filter(|s| {
                s.attr("server.port") == Some(&Val::I(port as i64))
                    || s.attr("network.peer.port") == Some(&Val::I(port as i64))
            })
            .count()
    };
    receiver::wait_for(Duration::from_secs(20), || mine(&rec) >= 12)
        .await
        .unwrap_or_else(|_| {
            let got: Vec<String> = spans(&rec.traces.lock().unwrap())
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {:?} {:?}",
                        s.service(),
                        s.kind,
                        s.attr("url.path"),
                        s.attr("url.full")
                    )
                })
                .collect();
            panic!(
                "expected 12 spans, got {}: {got:#?}\nagent stdout:\n{}\nagent stderr:\n{}",
                mine(&rec),
                agent.stdout_lines().join("\n"),
                agent.stderr.lock().unwrap().join("\n")
            )
        });

    let (took, status) = agent.stop().unwrap();
    assert!(status.success(), "sightline exited with {status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(leftover_programs(), Vec::<String>::new());

    let all = spans(&rec.traces.lock().unwrap());
    let seen = Seen { spans: &all, port };

    // The SERVER span continues the incoming trace and carries the semconv attributes.
    let api = seen.server("/api/items");
    assert_eq!(api.name, "GET");
    assert_eq!(api.scope, "sightline");
    assert_eq!(api.trace_id, trace_id);
    assert_eq!(api.parent_span_id, parent_id);
    assert_eq!(api.status, 0);
    assert_eq!(s(api.attr("http.request.method")), "GET");
    assert_eq!(s(api.attr("url.scheme")), "https");
    assert_eq!(s(api.attr("url.query")), "token=REDACTED&page=REDACTED");
    assert_eq!(s(api.attr("http.response.status_code")), "200");
    assert_eq!(s(api.attr("network.protocol.version")), "1.1");
    assert_eq!(s(api.attr("server.address")), "127.0.0.1");
    assert_eq!(s(api.attr("client.address")), "127.0.0.1");
    assert_eq!(s(api.attr("network.peer.address")), "127.0.0.1");
    assert!(s(api.attr("user_agent.original")).starts_with("curl/"));
    assert_eq!(api.service(), "nginx");
    assert_eq!(s(api.resource.get("process.executable.name")), "nginx");
    assert_eq!(
        s(api.resource.get("process.executable.path")),
        "/usr/sbin/nginx"
    );
    assert_eq!(
        s(api.resource.get("process.pid")),
        nginx.worker_pid().unwrap().to_string()
    );
    assert_eq!(s(api.resource.get("host.name")), host_name());
    assert_eq!(s(api.resource.get("telemetry.sdk.name")), "sightline");
    assert_eq!(s(api.resource.get("deployment.environment")), "e2e");

    // The keep-alive request shares the connection (same client port); curl sends the same
    // headers with it, so it continues the same trace as a sibling.
    let k2 = seen.server("/k2");
    assert_eq!(k2.attr("network.peer.port"), api.attr("network.peer.port"));
    assert_eq!(
        (k2.trace_id.as_str(), k2.parent_span_id.as_str()),
        (trace_id.as_str(), parent_id.as_str())
    );
    assert_ne!(k2.span_id, api.span_id);

    // The CLIENT span in curl: redacted url.full, the server's port from the socket.
    let capi = seen.client("/api/items?token=REDACTED&page=REDACTED");
    assert_eq!(capi.name, "GET");
    assert_eq!(capi.service(), "curl");
    assert_eq!(capi.status, 0);
    assert_eq!(s(capi.attr("server.address")), "127.0.0.1");
    assert_eq!(s(capi.attr("server.port")), port.to_string());
    assert_eq!(s(capi.attr("network.peer.port")), port.to_string());
    assert_eq!(s(capi.attr("http.response.status_code")), "200");
    // The same connection seen from both ends: the server's local end is nginx's listening
    // port, the client's local end is the server's peer.
    assert_eq!(s(api.attr("network.local.port")), port.to_string());
    assert_eq!(s(api.attr("network.local.address")), "127.0.0.1");
    assert_eq!(
        capi.attr("network.local.port"),
        api.attr("network.peer.port")
    );
    assert_eq!(s(capi.attr("network.local.address")), "127.0.0.1");
    // Both ends on one clock: the server saw the request after the client sent it and before
    // the client had its answer. (Its end may trail the client's: the client can read the
    // response while the server's write call is still returning.)
    assert!(capi.start_ns <= api.start_ns && api.start_ns <= capi.end_ns);

    // Status per semconv: 4xx is an error for clients only, 5xx for both.
    let (m_s, m_c) = (seen.server("/missing"), seen.client("/missing"));
    assert_eq!((m_s.status, m_c.status), (0, 2));
    // No traceparent, and both ends on this host: the server joins the client's trace as its
    // child, with nothing written into either process.
    assert_ne!(m_s.trace_id, trace_id);
    assert_eq!(
        (m_s.trace_id.as_str(), m_s.parent_span_id.as_str()),
        (m_c.trace_id.as_str(), m_c.span_id.as_str())
    );
    assert_eq!(s(m_c.attr("error.type")), "404");
    let (d_s, d_c) = (seen.server("/down"), seen.client("/down"));
    assert_eq!((d_s.status, d_c.status), (2, 2));
    assert_eq!(s(d_s.attr("http.response.status_code")), "503");

    // Python names itself through OTEL_SERVICE_NAME; node is found by its static OpenSSL.
    let py = seen.client("/py");
    assert_eq!(py.service(), "py-client");
    let py_server = seen.server("/py");
    assert_eq!(
        (
            py_server.trace_id.as_str(),
            py_server.parent_span_id.as_str()
        ),
        (py.trace_id.as_str(), py.span_id.as_str())
    );
    let (d_s, d_c) = (seen.server("/down"), seen.client("/down"));
    assert_eq!(d_s.parent_span_id, d_c.span_id);
    assert!(s(py.resource.get("process.executable.name")).starts_with("python3"));
    assert_eq!(
        seen.server("/py")
            .attr("user_agent.original")
            .map(|v| v.s().starts_with("Python-urllib")),
        Some(true)
    );
    let node = seen.client("/node?x=REDACTED");
    assert_eq!(node.service(), "node");
    // node's TLS touches no socket (memory BIOs): the TLS socket its thread read just before
    // each SSL_read names the connection, so its CLIENT span has the server's end, and nginx
    // joins it.
    assert_eq!(s(node.attr("network.peer.port")), port.to_string());
    assert_eq!(s(node.attr("network.peer.address")), "127.0.0.1");
    let node_server = seen.server("/node");
    assert_eq!(
        (
            node_server.trace_id.as_str(),
            node_server.parent_span_id.as_str()
        ),
        (node.trace_id.as_str(), node.span_id.as_str())
    );
    assert_eq!(
        node.attr("network.local.port"),
        node_server.attr("network.peer.port")
    );

    // Secrets never leave the host.
    for sp in &all {
        for v in sp.attrs.values().chain(sp.resource.values()) {
            assert!(!v.s().contains("sekrit"), "secret leaked in {sp:#?}");
        }
    }

    // The exporter sent the configured header, and compressed when asked to.
    let headers = rec.headers.lock().unwrap().clone();
    assert!(headers
        .iter()
        .any(|(k, v)| k == "x-test-tenant" && v == "acme"));
    if !grpc {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-encoding" && v == "gzip"),
            "{headers:?}"
        );
    }

    // Histograms: the last cumulative point per series has the exact counts.
    let pts = points(&rec.metrics.lock().unwrap());
    let worker = nginx.worker_pid().unwrap() as i64;
    let last_count = |metric: &str, pid: Option<i64>, service: &str, status: i64| -> u64 {
        pts.iter()
            .filter(|p| {
                p.metric == metric
                    && p.resource.get("service.name") == Some(&Val::S(service.into()))
                    && pid.is_none_or(|pid| p.resource.get("process.pid") == Some(&Val::I(pid)))
                    && p.attrs.get("http.response.status_code") == Some(&Val::I(status))
            })
            .map(|p| {
                assert_eq!(p.unit, "s");
                assert_eq!(p.bounds, SEMCONV_BUCKETS);
                assert_eq!(p.temporality, 2);
                (
                    p.resource.get("process.pid").cloned().map(|v| s(Some(&v))),
                    p.count,
                )
            })
            .fold(std::collections::BTreeMap::new(), |mut m, (pid, c)| {
                m.insert(pid, c);
                m
            })
            .values()
            .sum()
    };
    let server = "http.server.request.duration";
    assert_eq!(last_count(server, Some(worker), "nginx", 200), 4);
    assert_eq!(last_count(server, Some(worker), "nginx", 404), 1);
    assert_eq!(last_count(server, Some(worker), "nginx", 503), 1);
    let client = "http.client.request.duration";
    assert_eq!(last_count(client, None, "curl", 200), 2);
    assert_eq!(last_count(client, None, "curl", 503), 1);
    assert_eq!(last_count(client, None, "py-client", 200), 1);
    let calls = pts
        .iter()
        .filter(|p| p.metric == "sightline.calls")
        .map(|p| p.value)
        .max()
        .unwrap_or(0);
    assert!(calls >= 12, "sightline.calls = {calls}");
    // Every connection here is well-formed HTTP/1.1 that completes: nothing may be dropped.
    let mut dropped = std::collections::BTreeMap::new();
    for p in pts.iter().filter(|p| p.metric == "sightline.parse.dropped") {
        dropped.insert(s(p.attrs.get("reason")), p.value);
    }
    assert!(!dropped.is_empty(), "sightline.parse.dropped is exported");
    assert!(dropped.values().all(|v| *v == 0), "{dropped:?}");

    // The live view saw the same calls, as JSON lines, and ended with the RED summary.
    let lines = agent.stdout_lines();
    let json: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let api_lines: Vec<_> = json
        .iter()
        .filter(|v| v["path"] == "/api/items" && v["query"] == "token=REDACTED&page=REDACTED")
        .collect();
    assert_eq!(api_lines.len(), 2, "{api_lines:?}");
    assert!(api_lines.iter().any(|v| v["role"] == "server"
        && v["trace_id"] == trace_id.as_str()
        && v["status"] == 200));
    let summary = json.last().unwrap();
    let nginx_row = summary["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "nginx" && r["role"] == "server")
        .expect("nginx in the summary");
    assert!(nginx_row["calls"].as_u64().unwrap() >= 6);
}

fn serially(grpc: bool) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario(grpc));
}

#[test]
fn https_calls_over_otlp_grpc() {
    serially(true);
}

#[test]
fn https_calls_over_otlp_http_protobuf() {
    serially(false);
}

#[test]
fn bad_config_is_reported_with_its_position() {
    let dir = sightline_e2e::procs::tempdir("cfg");
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "capture:\n  max_bytes: 4096\n  color: blue\n").unwrap();
    let out = Command::new(sightline_e2e::procs::sightline_bin())
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3:3: capture: unknown field `color`",
            f.display()
        )),
        "{err}"
    );
}

#[test]
fn unprivileged_run_says_what_to_do() {
    require("setpriv");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(sightline_e2e::procs::sightline_bin())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lacks CAP_SYS_ADMIN and CAP_SYS_PTRACE") && err.contains("sudo sightline"),
        "{err}"
    );
}

/// sightline leaves the host's mounts as it found them: what it mounts to read the kernel
/// (securityfs for the lockdown mode) is gone at exit. Run in a private mount namespace whose
/// securityfs and cgroup v2 mounts were removed: the host's cgroup v2 root is still reached
/// through a host process's root, so no hierarchy is mounted for the socket programs.
#[test]
fn mounts_it_makes_are_gone_at_exit() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("unshare");
    let bin = sightline_e2e::procs::sightline_bin();
    let ours = r#"awk '$3 == "securityfs" || $3 == "cgroup2" {printf "%s:%s ", $3, $2}' /proc/self/mounts"#;
    let script = format!(
        r#"umount /sys/kernel/security 2>/dev/null
for m in $(awk '$3 == "cgroup2" {{print $2}}' /proc/self/mounts); do umount "$m"; done
echo "before: $({ours})"
{bin} --output none 2>/dev/null & p=$!
sleep 4
echo "during: $({ours})"
kill -TERM $p; wait $p; echo "status: $?"
echo "after: $({ours})""#,
        bin = bin.display()
    );
    let out = run(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]))
    .unwrap();
    let line = |tag: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} in {out}"))
            .trim()
            .to_string()
    };
    assert_eq!(line("before:"), "", "{out}");
    assert_eq!(line("status:"), "0", "{out}");
    let during = line("during:");
    assert!(during.contains("securityfs:/sys/kernel/security"), "{out}");
    assert!(!during.contains("cgroup2"), "{out}");
    assert_eq!(line("after:"), "", "{out}");
}

/// With the collector down, export retries and drops (counted), while capture and the live
/// view go on, and shutdown still takes under 5 s.
#[test]
fn collector_down_keeps_the_live_view() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    let nginx = Nginx::start().unwrap();
    let dead = sightline_e2e::procs::free_port();
    let mut agent = Agent::start(
        &["--output", "json"],
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{dead}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".into()),
        ],
    )
    .unwrap();
    for i in 0..20 {
        run(Command::new("curl")
            .args(["-sk", "--http1.1", "-o", "/dev/null"])
            .arg(nginx.url(&format!("/down/{i}"))))
        .unwrap();
    }
    let want = |agent: &Agent| {
        agent
            .stdout_lines()
            .iter()
            .filter(|l| l.contains("\"role\":\"server\"") && l.contains("/down/"))
            .count()
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while want(&agent) < 20 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(want(&agent), 20, "{:?}", agent.stdout_lines());
    let (took, status) = agent.stop().unwrap();
    assert!(status.success());
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let stderr = agent.stderr.lock().unwrap().join("\n");
    assert!(stderr.contains("spans_dropped="), "{stderr}");
}

/// OTLP over TLS, both transports: the receiver's certificate is trusted through
/// OTEL_EXPORTER_OTLP_CERTIFICATE, and one call arrives as a span.
fn tls_export(grpc: bool) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    require("openssl");
    let dir = sightline_e2e::procs::tempdir("otlp-tls");
    // A private CA and a leaf for 127.0.0.1 signed by it: what a real deployment has.
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr; \
         printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > leaf.ext; \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile leaf.ext -out cert.pem",
        d = dir.display()
    );
    let st = Command::new("sh")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (cert_pem, key_pem) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, rec) = rt
        .block_on(async {
            if grpc {
                receiver::start_grpc_tls(&cert_pem, &key_pem).await
            } else {
                receiver::start_http_tls(&cert_pem, &key_pem).await
            }
        })
        .unwrap();
    let nginx = Nginx::start().unwrap();
    let mut agent = Agent::start(
        &["--output", "none"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://{addr}")),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                if grpc { "grpc" } else { "http/protobuf" }.into(),
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.display().to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .unwrap();
    run(Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null"])
        .arg(nginx.url("/over-tls")))
    .unwrap();
    let got = |rec: &Received| {
        spans(&rec.traces.lock().unwrap())
            .iter()
            .any(|s| s.kind == SERVER && s.attr("url.path") == Some(&Val::S("/over-tls".into())))
    };
    rt.block_on(receiver::wait_for(Duration::from_secs(15), || got(&rec)))
        .unwrap_or_else(|_| {
            panic!(
                "no span over TLS; agent: {}",
                agent.stderr.lock().unwrap().join("\n")
            )
        });
    agent.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn otlp_grpc_over_tls_with_a_private_ca() {
    tls_export(true);
}

#[test]
fn otlp_http_over_tls_with_a_private_ca() {
    tls_export(false);
}

/// Process selection and capture size from the YAML file: only curl is observed, and a body
/// larger than the capture is skipped by its length, counted as truncated, never misparsed.
#[test]
fn selection_and_capture_size_from_the_config_file() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("curl");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, rec) = rt.block_on(receiver::start_grpc()).unwrap();
    let nginx = Nginx::start().unwrap();
    let dir = sightline_e2e::procs::tempdir("select");
    let cfg = dir.join("sightline.yaml");
    std::fs::write(
        &cfg,
        format!(
            "capture:\n  max_bytes: 256\nselect:\n  executables: [curl]\noutput: json\notlp:\n  endpoint: http://{addr}\n  protocol: grpc\nmetrics:\n  export_interval_ms: 300\n"
        ),
    )
    .unwrap();
    let cfg_arg = cfg.display().to_string();
    let mut agent = Agent::start(&["--config", &cfg_arg], &[]).unwrap();
    for path in ["/big", "/small"] {
        run(Command::new("curl")
            .args(["-sk", "--http1.1", "-o", "/dev/null"])
            .arg(nginx.url(path)))
        .unwrap();
    }
    let lines = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v.get("path").is_some())
            .collect()
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while lines(&agent).len() < 2 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    agent.stop().unwrap();
    let seen = lines(&agent);
    let paths: Vec<(String, String, u64)> = seen
        .iter()
        .map(|v| {
            (
                v["service"].as_str().unwrap_or("").to_string(),
                v["path"].as_str().unwrap_or("").to_string(),
                v["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // nginx served both calls but is not selected.
    assert_eq!(
        paths,
        vec![
            ("curl".to_string(), "/big".to_string(), 200),
            ("curl".to_string(), "/small".to_string(), 200)
        ]
    );
    let pts = points(&rec.metrics.lock().unwrap());
    let last = |name: &str| {
        pts.iter()
            .filter(|p| p.metric == name)
            .map(|p| p.value)
            .max()
            .unwrap_or(0)
    };
    assert!(
        last("sightline.records.truncated") >= 1,
        "the 3000-byte body was cut at 256"
    );
    let dropped: i64 = pts
        .iter()
        .filter(|p| p.metric == "sightline.parse.dropped")
        .map(|p| p.value)
        .max()
        .unwrap_or(0);
    assert_eq!(dropped, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
