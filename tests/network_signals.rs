//! End to end, as root: network signals. A client on this host and servers in another
//! network namespace joined by veth; nftables makes the faults (random loss for
//! retransmits, dropped SYNs for a connect timeout; a closed port refuses) and a server with
//! SO_LINGER 0 resets. sightline's figures are compared with the kernel's own per-socket
//! counters (TCP_INFO, what `ss -ti` shows) and the byte counts the programs report, in the
//! flows view and in the metrics a real OTLP receiver gets.

use serde_json::Value;
use sightline_e2e::flat::{points, spans, FlatPoint, Val, CLIENT, SERVER};
use sightline_e2e::netns::Netns;
use sightline_e2e::procs::{require, run, Agent, Killed};
use sightline_e2e::receiver;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SINK_PORT: u16 = 7701;
const ABORT_PORT: u16 = 7702;
const CLOSED_PORT: u16 = 7703;
const BLACKHOLE_PORT: u16 = 7704;
const UPLOAD_BYTES: u64 = 4 << 20;
const DOWNLOAD_PORT: u16 = 7705;

/// Each test loads the probes, which see the whole host: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn peer_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("network/peer.py")
}

/// `cmd` run in namespace `ns`, or on this host.
fn in_ns(ns: Option<&Netns>, cmd: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, cmd]);
            c
        }
        None => Command::new(cmd),
    }
}

/// A server of peer.py, once it listens.
fn server(ns: Option<&Netns>, mode: &str, port: u16) -> Killed {
    let mut child = in_ns(ns, "python3")
        .arg(peer_py())
        .args([mode, &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting a server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening", "{mode} server");
    Killed(child)
}

/// A client of peer.py: its pid and what it reported.
fn client(ns: Option<&Netns>, args: &[&str]) -> (u32, Value) {
    let child = in_ns(ns, "python3")
        .arg(peer_py())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting a client");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client {args:?}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client {args:?} printed {:?}: {e}", out.stdout));
    (pid, v)
}

/// The fault table `slfaults`, in a namespace or on this host; deleted when dropped.
struct Faults<'a>(Option<&'a Netns>);

impl<'a> Faults<'a> {
    fn install(ns: Option<&'a Netns>, input_rules: &str) -> Faults<'a> {
        let _ = in_ns(ns, "nft")
            .args(["delete", "table", "inet", "slfaults"])
            .output();
        let file = std::env::temp_dir().join("sightline-nft.rules");
        std::fs::write(
            &file,
            format!(
                "table inet slfaults {{\n chain input {{\n  type filter hook input priority 0;\n  {input_rules}\n }}\n}}\n"
            ),
        )
        .unwrap();
        run(in_ns(ns, "nft").arg("-f").arg(&file)).unwrap_or_else(|e| panic!("nft: {e}"));
        Faults(ns)
    }

    /// Packets the counted rule naming `port` dropped.
    fn dropped(&self, port: u16) -> u64 {
        let out =
            run(in_ns(self.0, "nft").args(["list", "chain", "inet", "slfaults", "input"])).unwrap();
        out.lines()
            .find(|l| l.contains(&format!("port {port} ")))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter for port {port}: {out}"))
    }
}

impl Drop for Faults<'_> {
    fn drop(&mut self) {
        let _ = in_ns(self.0, "nft")
            .args(["delete", "table", "inet", "slfaults"])
            .output();
    }
}

/// The namespace's own count of retransmitted segments (`nstat`'s TcpRetransSegs).
fn retrans_segs(ns: &Netns) -> u64 {
    let out = run(in_ns(Some(ns), "nstat").args(["-asz", "TcpRetransSegs"])).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("TcpRetransSegs"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("nstat: {out}"))
}

/// The flows view's JSON lines.
fn flow_lines(agent: &Agent) -> Vec<Value> {
    agent
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn find<'a>(lines: &'a [Value], event: &str, local: &str) -> &'a Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == event && l["local"] == local)
        .collect();
    assert_eq!(found.len(), 1, "one {event} line for {local}: {lines:#?}");
    found[0]
}

/// The last (cumulative) value of `metric` for process `pid` with attributes `with`.
fn last(pts: &[FlatPoint], metric: &str, pid: u32, with: &[(&str, Val)]) -> i64 {
    pts.iter()
        .filter(|p| {
            p.metric == metric
                && p.resource.get("process.pid") == Some(&Val::I(pid as i64))
                && with.iter().all(|(k, v)| p.attrs.get(*k) == Some(v))
        })
        .map(|p| p.value)
        .max()
        .unwrap_or(0)
}

#[test]
fn tcp_connections_their_faults_and_figures() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("python3");
    require("nft");
    require("ip");
    let ns = Netns::create("slnet", 77);
    // The servers on this host, the clients in the namespace, whose own counters (nstat)
    // then count only their connections. The faults are on the servers' side: loss on the
    // receiver's side is what the sender's TCP retransmits; only the link's traffic is hit,
    // and only packets that carry data (a lost pure ACK is never sent again, so each drop is
    // one the sender repeats).
    let link = format!("{}-h", ns.name);
    let faults = Faults::install(
        None,
        &format!(
            "iifname \"{link}\" tcp dport {SINK_PORT} meta length > 200 numgen random mod 100 < 5 counter drop
             iifname \"{link}\" tcp dport {BLACKHOLE_PORT} counter drop"
        ),
    );
    let sink = server(None, "sink", SINK_PORT);
    let abort = server(None, "abort", ABORT_PORT);
    let (server_pid, abort_pid) = (sink.0.id(), abort.0.id());
    let retrans_before = retrans_segs(&ns);

    let (_rt, addr, rec) = receiver::http_on_runtime();
    let ports: Vec<String> = [SINK_PORT, ABORT_PORT, CLOSED_PORT, BLACKHOLE_PORT]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut args = vec!["flows", "--output", "json"];
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let mut agent = Agent::start(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
        ],
    )
    .unwrap();

    let remote = ns.local_ip.clone();
    let (up_pid, up) = client(
        Some(&ns),
        &[
            "upload",
            &remote,
            &SINK_PORT.to_string(),
            &UPLOAD_BYTES.to_string(),
        ],
    );
    let (ref_pid, refused) = client(Some(&ns), &["connect", &remote, &CLOSED_PORT.to_string()]);
    let (to_pid, timeout) = client(
        Some(&ns),
        &["connect", &remote, &BLACKHOLE_PORT.to_string()],
    );
    let (rst_pid, reset) = client(Some(&ns), &["reset", &remote, &ABORT_PORT.to_string()]);
    let retransmitted = retrans_segs(&ns) - retrans_before;
    assert_eq!(up["server_counted"], UPLOAD_BYTES, "{up}");
    assert_eq!(refused["error"], "ECONNREFUSED", "{refused}");
    assert_eq!(timeout["error"], "ETIMEDOUT", "{timeout}");
    assert_eq!(reset["error"], "ECONNRESET", "{reset}");

    let up_local = up["local"].as_str().unwrap().to_string();
    let wanted = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["event"] == "close" && l["local"] == up_local.as_str())
            && lines.iter().any(|l| l["event"] == "reset-received")
            && lines.iter().any(|l| l["event"] == "timeout")
    };
    let end = Instant::now() + Duration::from_secs(20);
    while !wanted(&flow_lines(&agent)) {
        assert!(Instant::now() < end, "flows: {:#?}", flow_lines(&agent));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Metrics are cumulative: one export after the last event carries every total.
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop().unwrap();
    drop((sink, abort));
    let lines = flow_lines(&agent);
    // The filter let only these ports' connections through (not the export's, say).
    for l in &lines {
        let port_of = |a: &Value| a.as_str().unwrap().rsplit(':').next().unwrap().to_string();
        assert!(
            ports.contains(&port_of(&l["local"])) || ports.contains(&port_of(&l["peer"])),
            "{l}"
        );
    }

    // The upload: its figures are the kernel's own, and it retransmitted what was lost.
    let open = find(&lines, "open", &up_local);
    assert_eq!(open["role"], "client");
    assert_eq!(open["peer"], format!("{remote}:{SINK_PORT}"));
    assert_eq!(open["pid"], up_pid);
    assert!(open["duration_ms"].as_f64().unwrap() > 0.0, "{open}");
    let close = find(&lines, "close", &up_local);
    // The kernel's bytes_acked counts the SYN; sightline's bytes sent do not.
    let acked = up["bytes_acked"].as_u64().unwrap() - 1;
    assert_eq!(close["bytes_sent"], acked, "{close} vs {up}");
    assert_eq!(
        close["bytes_received"], up["bytes_received"],
        "{close} vs {up}"
    );
    assert_eq!(close["retransmits"], up["total_retrans"], "{close} vs {up}");
    assert_eq!(close["segments_sent"], up["segs_out"], "{close} vs {up}");
    // Each dropped packet (several segments, when the veth aggregated them) was resent.
    let lost = faults.dropped(SINK_PORT);
    assert!(lost > 0, "5% loss dropped nothing");
    assert!(
        up["total_retrans"].as_u64().unwrap() >= lost,
        "{up}, {lost} dropped"
    );
    // Payload, and the FIN's sequence number once acknowledged, as the kernel counts.
    assert_eq!(close["bytes_sent"], UPLOAD_BYTES + 1, "{close}");
    assert_eq!(close["peer_pid"], server_pid, "{close}");
    assert!(close["rtt_ms"].as_f64().unwrap() > 0.0, "{close}");
    // The server's end of it, named with its peer.
    let accepted: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "accept" && l["peer"] == up_local.as_str())
        .collect();
    assert_eq!(accepted.len(), 1, "{lines:#?}");
    assert_eq!(accepted[0]["pid"], server_pid);
    assert_eq!(accepted[0]["peer_pid"], up_pid);

    // Failed connects, and why.
    // After a failed connect the socket's name is unbound: the line is found by its process.
    let by_pid = |event: &str, pid: u32| -> &Value {
        let found: Vec<_> = lines
            .iter()
            .filter(|l| l["event"] == event && l["pid"] == pid)
            .collect();
        assert_eq!(found.len(), 1, "one {event} line of {pid}: {lines:#?}");
        found[0]
    };
    let refused_line = by_pid("refused", ref_pid);
    assert_eq!(refused_line["peer"], format!("{remote}:{CLOSED_PORT}"));
    let port_of = |v: &Value| {
        v["local"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(port_of(refused_line), port_of(&refused), "{refused_line}");
    let timeout_line = by_pid("timeout", to_pid);
    assert_eq!(timeout_line["peer"], format!("{remote}:{BLACKHOLE_PORT}"));
    assert!(
        timeout_line["duration_ms"].as_f64().unwrap() > 2000.0,
        "{timeout_line}"
    );
    // Every SYN was dropped by the rule, which counted them: all but the first were
    // retransmits. (The socket's own TCP_INFO is reset by the failed connect.)
    let syns = faults.dropped(BLACKHOLE_PORT);
    assert!(syns >= 2, "{syns}");
    assert_eq!(timeout_line["segments_sent"], syns, "{timeout_line}");
    assert_eq!(timeout_line["retransmits"], syns - 1, "{timeout_line}");
    // The namespace's own count (nstat), which holds only these clients' connections: every
    // segment they retransmitted, as sightline counted them.
    let counted: u64 = lines
        .iter()
        .filter(|l| {
            [up_pid, ref_pid, to_pid, rst_pid]
                .iter()
                .any(|p| l["pid"] == *p)
                && ["close", "refused", "timeout"].contains(&l["event"].as_str().unwrap())
        })
        .map(|l| l["retransmits"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted, retransmitted,
        "sightline vs nstat TcpRetransSegs: {lines:#?}"
    );

    // The reset: received by the client, sent by the server's abortive close.
    let rst_local = reset["local"].as_str().unwrap();
    assert_eq!(find(&lines, "reset-received", rst_local)["pid"], rst_pid);
    let sent: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "reset-sent" && l["peer"] == rst_local)
        .collect();
    assert_eq!(sent.len(), 1, "{lines:#?}");
    assert_eq!(sent[0]["pid"], abort_pid);

    // The same figures as metrics, per process and peer.
    let pts = points(&rec.metrics.lock().unwrap());
    let port = |p: u16| ("server.port", Val::I(p as i64));
    let peer = ("network.peer.address", Val::S(remote.clone()));
    assert_eq!(
        last(
            &pts,
            "sightline.tcp.retransmits",
            up_pid,
            &[port(SINK_PORT), peer.clone()]
        ),
        up["total_retrans"].as_i64().unwrap()
    );
    assert_eq!(
        last(
            &pts,
            "sightline.tcp.bytes",
            up_pid,
            &[
                port(SINK_PORT),
                ("network.io.direction", Val::S("transmit".into()))
            ]
        ),
        acked as i64
    );
    assert_eq!(
        last(
            &pts,
            "sightline.tcp.bytes",
            server_pid,
            &[
                port(SINK_PORT),
                ("network.io.direction", Val::S("receive".into())),
                ("role", Val::S("server".into()))
            ]
        ),
        acked as i64,
        "the server received what the client had acknowledged"
    );
    for (pid, outcome) in [
        (ref_pid, "refused"),
        (to_pid, "timeout"),
        (up_pid, "established"),
    ] {
        assert_eq!(
            last(
                &pts,
                "sightline.tcp.connections",
                pid,
                &[("outcome", Val::S(outcome.into()))]
            ),
            1,
            "{outcome}"
        );
    }
    assert_eq!(
        last(
            &pts,
            "sightline.tcp.resets",
            rst_pid,
            &[("network.io.direction", Val::S("receive".into()))]
        ),
        1
    );
    assert_eq!(
        last(
            &pts,
            "sightline.tcp.resets",
            abort_pid,
            &[("network.io.direction", Val::S("transmit".into()))]
        ),
        1
    );
    let rtt: Vec<_> = pts
        .iter()
        .filter(|p| {
            p.metric == "sightline.tcp.rtt"
                && p.resource.get("process.pid") == Some(&Val::I(up_pid as i64))
        })
        .collect();
    assert!(rtt.iter().any(|p| p.count >= 1 && p.sum > 0.0), "{rtt:#?}");
    let connect: Vec<_> = pts
        .iter()
        .filter(|p| {
            p.metric == "sightline.tcp.connect.duration"
                && p.resource.get("process.pid") == Some(&Val::I(up_pid as i64))
        })
        .collect();
    assert!(connect.iter().any(|p| p.count == 1), "{connect:#?}");
}

/// A download over a lossy link: the server's span says its connection retransmitted while it
/// answered, and the client's that it opened the connection and how long the handshake took.
#[test]
fn spans_carry_what_their_connection_suffered() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require("python3");
    require("curl");
    require("nft");
    let ns = Netns::create("slspan", 78);
    // The server is on this host, the client in the namespace: the loss is on the client's
    // side, so the server's TCP retransmits; only data is lost, not the handshake.
    let faults = Faults::install(
        Some(&ns),
        &format!(
            "tcp sport {DOWNLOAD_PORT} meta length > 200 numgen random mod 100 < 5 counter drop"
        ),
    );
    let dir = std::env::temp_dir().join("sightline-download");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big.bin"), vec![b'x'; 8 << 20]).unwrap();
    let server = Killed(
        Command::new("python3")
            .args(["-m", "http.server", &DOWNLOAD_PORT.to_string(), "--bind"])
            .arg(&ns.local_ip)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((ns.local_ip.as_str(), DOWNLOAD_PORT)).is_err() {
        assert!(Instant::now() < end, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (rt, addr, rec) = receiver::http_on_runtime();
    // The calls' live view with the flows beside it.
    let mut agent = Agent::start(
        &["--output", "json", "--flows"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    )
    .unwrap();
    let url = format!("http://{}:{DOWNLOAD_PORT}/big.bin", ns.local_ip);
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &ns.name,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &url,
    ]))
    .unwrap();
    assert_eq!(out.trim(), (8u64 << 20).to_string());
    let server_pid = server.0.id();
    let found = |rec: &receiver::Received| {
        let all = spans(&rec.traces.lock().unwrap());
        all.iter()
            .any(|s| s.kind == SERVER && s.attr("url.path") == Some(&Val::S("/big.bin".into())))
            && all
                .iter()
                .any(|s| s.kind == CLIENT && s.attr("url.full") == Some(&Val::S(url.clone())))
    };
    rt.block_on(receiver::wait_for(Duration::from_secs(20), || found(&rec)))
        .unwrap_or_else(|e| panic!("{e}: {:#?}", spans(&rec.traces.lock().unwrap())));
    // The connections' close lines, for their totals.
    let end = Instant::now() + Duration::from_secs(10);
    while !flow_lines(&agent)
        .iter()
        .any(|l| l["event"] == "close" && l["pid"] == server_pid)
    {
        assert!(Instant::now() < end, "{:#?}", flow_lines(&agent));
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop().unwrap();
    let all = spans(&rec.traces.lock().unwrap());
    let srv = all
        .iter()
        .find(|s| s.kind == SERVER && s.attr("url.path") == Some(&Val::S("/big.bin".into())))
        .unwrap();
    let cli = all
        .iter()
        .find(|s| s.kind == CLIENT && s.attr("url.full") == Some(&Val::S(url.clone())))
        .unwrap();
    let lines = flow_lines(&agent);
    let srv_close = lines
        .iter()
        .find(|l| l["event"] == "close" && l["pid"] == server_pid)
        .unwrap();
    let conn_retransmits = srv_close["retransmits"].as_i64().unwrap();
    let lost = faults.dropped(DOWNLOAD_PORT);
    assert!(lost > 0, "5% loss dropped nothing");
    assert!(
        conn_retransmits >= lost as i64,
        "{srv_close}, {lost} dropped"
    );
    // Retransmits while the server wrote its answer: some, and no more than the connection
    // had (the last ones may follow the answer's last write).
    let Some(Val::I(during)) = srv.attr("sightline.tcp.retransmits") else {
        panic!("{srv:#?}");
    };
    assert!(
        *during >= 1 && *during <= conn_retransmits,
        "{during} of {conn_retransmits}: {srv:#?}"
    );
    assert_eq!(
        srv.attr("sightline.tcp.connection.new"),
        Some(&Val::B(true)),
        "{srv:#?}"
    );
    assert!(
        matches!(srv.attr("sightline.tcp.rtt"), Some(Val::D(r)) if *r > 0.0),
        "{srv:#?}"
    );
    // The client opened the connection for this call, and retransmitted nothing.
    assert_eq!(
        cli.attr("sightline.tcp.connection.new"),
        Some(&Val::B(true)),
        "{cli:#?}"
    );
    // The link loses the handshake's packets too: a lost SYN-ACK makes the SYN go again after
    // a second (two, three seconds more).
    assert!(
        matches!(cli.attr("sightline.tcp.connect.duration"), Some(Val::D(d)) if *d > 0.0 && *d < 4.0),
        "{cli:#?}"
    );
    assert_eq!(
        cli.attr("sightline.tcp.retransmits"),
        Some(&Val::I(0)),
        "{cli:#?}"
    );
    // Both views on one stdout: the call's line and its connection's.
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/big.bin" && l["role"] == "server" && l["status"] == 200),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "accept" && l["pid"] == server_pid),
        "{lines:#?}"
    );
    drop(server);
}
