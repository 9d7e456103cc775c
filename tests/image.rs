//! End to end, as root: sightline's own image (examples/image/build.sh, from Debian's packages
//! with no registry pull) runs under podman as the DaemonSet runs it: the host's pid
//! namespace, the capabilities, mounts, config and read-only root the manifest gives, and no
//! more. From there it captures HTTPS calls between processes on the host and between
//! containers, names the containers, and attaches its socket programs at the host's cgroup
//! root.

use serde_json::Value;
use sightline_e2e::flat::{spans, FlatSpan, Val, CLIENT, SERVER};
use sightline_e2e::podman::{podman, wait_listening, Container};
use sightline_e2e::procs::{free_port, require, run, sightline_bin, tempdir, Nginx};
use sightline_e2e::receiver;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PYTHON: &str = "/var/cache/sightline-tests/venv/bin/python";
const TAG: &str = "localhost/sightline:e2e";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The DaemonSet's container and volumes, as JSON (PyYAML from the test venv reads the
/// manifest; tests/prereqs.sh installs it).
fn daemonset() -> Value {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing; run tests/prereqs.sh --tests (the README's test command does)"
    );
    let out = run(Command::new(PYTHON)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
             print(json.dumps(docs))",
        ])
        .arg(root().join("examples/kubernetes/daemonset.yaml")))
    .unwrap_or_else(|e| panic!("{e}"));
    let docs: Vec<Value> = serde_json::from_str(&out).unwrap();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    serde_json::json!({ "spec": ds["spec"]["template"]["spec"], "configmap": cm["data"] })
}

/// `podman run` options that give the container what the DaemonSet's pod gets.
fn options_from_manifest(m: &Value, config_dir: &Path) -> Vec<String> {
    let spec = &m["spec"];
    let c = &spec["containers"][0];
    let mut o = Vec::new();
    assert_eq!(
        spec["hostPID"], true,
        "the DaemonSet must see every process"
    );
    o.push("--pid=host".to_string());
    let sc = &c["securityContext"];
    assert_ne!(
        sc["privileged"], true,
        "the DaemonSet must not be privileged"
    );
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        o.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        o.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    if sc["readOnlyRootFilesystem"] == true {
        o.push("--read-only".into());
    }
    // RuntimeDefault is podman's own default profile; any other is spelled out.
    let seccomp = &sc["seccompProfile"]["type"];
    assert!(
        seccomp.is_null() || seccomp == "RuntimeDefault",
        "seccomp {seccomp}"
    );
    let volumes = spec["volumes"].as_array().expect("volumes");
    for mount in c["volumeMounts"].as_array().expect("volume mounts") {
        let name = &mount["name"];
        let at = mount["mountPath"].as_str().unwrap();
        let v = volumes.iter().find(|v| &v["name"] == name).expect("volume");
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        if let Some(host) = v["hostPath"]["path"].as_str() {
            o.push(format!("--volume={host}:{at}{ro}"));
        } else if v.get("configMap").is_some() {
            o.push(format!("--volume={}:{at}:ro", config_dir.display()));
        } else {
            panic!("a volume the test cannot give: {v}");
        }
    }
    o
}

/// The manifest's arguments, with the Prometheus endpoint moved to a free loopback port (the
/// container shares the host's network here).
fn args_from_manifest(m: &Value, port: u16) -> Vec<String> {
    let mut args: Vec<String> = m["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--prometheus")
        .expect("--prometheus");
    args[at + 1] = format!("127.0.0.1:{port}");
    args
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Programs attached to the host's cgroup v2 root, by name.
fn programs_on_host_cgroup_root() -> Vec<(u32, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .expect("a cgroup2 mount on the host");
    let out = run(Command::new("bpftool").args(["-j", "cgroup", "show", &dir])).unwrap();
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap() as u32,
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The eBPF programs process `pid` holds, by id: its programs' and links' fdinfo name them.
fn programs_held_by(pid: u32) -> Vec<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn find<'a>(all: &'a [FlatSpan], kind: i32, url: &str) -> Option<&'a FlatSpan> {
    all.iter()
        .find(|s| s.kind == kind && s.attr("url.full").map(Val::s) == Some(url))
}

fn server_on<'a>(all: &'a [FlatSpan], port: u16, path: &str) -> Option<&'a FlatSpan> {
    all.iter().find(|s| {
        s.kind == SERVER
            && s.attr("server.port") == Some(&Val::I(port as i64))
            && s.attr("url.path").map(Val::s) == Some(path)
    })
}

#[test]
fn the_image_runs_as_the_daemonset_does_and_captures_hosts_and_containers_https() {
    for tool in [
        "podman",
        "debootstrap",
        "bpftool",
        "curl",
        "openssl",
        "python3",
    ] {
        require(tool);
    }
    let bin = sightline_bin();

    // The image, from the project's own script, carrying the binary under test.
    let built = run(Command::new(root().join("examples/image/build.sh"))
        .args(["--tag", TAG, "--binary"])
        .arg(&bin))
    .unwrap_or_else(|e| panic!("examples/image/build.sh: {e}"));
    assert_eq!(built.trim(), TAG);
    let label = run(podman().args([
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"io.sightline.binary.sha256\"}}",
        TAG,
    ]))
    .unwrap();
    assert_eq!(
        label.trim(),
        sha256(&bin),
        "the image carries another binary"
    );

    let manifest = daemonset();
    let config_dir = tempdir("image-config");
    for (file, text) in manifest["configmap"].as_object().expect("ConfigMap data") {
        std::fs::write(config_dir.join(file), text.as_str().unwrap()).unwrap();
    }
    let (rt, addr, rec) = receiver::http_on_runtime();
    let prom = free_port();
    let mut cmd = podman();
    cmd.args([
        "run",
        "-d",
        "--name",
        "sightline-image-e2e",
        "--network",
        "host",
    ])
    .args([
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
    ])
    .args(options_from_manifest(&manifest, &config_dir))
    .args([
        "--env",
        &format!("OTEL_EXPORTER_OTLP_ENDPOINT=http://{addr}"),
    ])
    .args(["--env", "OTEL_BSP_SCHEDULE_DELAY=200"])
    .arg(TAG)
    .args(args_from_manifest(&manifest, prom));
    let agent = Container::started("sightline-image-e2e", &mut cmd);
    let end = Instant::now() + Duration::from_secs(60);
    while get(prom, "/readyz").as_deref() != Some("capturing\n") {
        assert!(
            Instant::now() < end,
            "the image's sightline never became ready: {}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(prom, "/healthz").as_deref(), Some("ok\n"));

    // Its socket programs sit on the host's cgroup root, held by the container's process.
    let held = programs_held_by(agent.host_pid());
    let on_root = programs_on_host_cgroup_root();
    let mut attached = Vec::new();
    for name in ["go_sockops", "go_connect4", "go_connect6"] {
        let (id, _) = on_root
            .iter()
            .find(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("{name} is not on the host's cgroup root: {on_root:?}"));
        assert!(
            held.contains(id),
            "{name} (id {id}) is not held by the container's sightline: {held:?}"
        );
        attached.push(*id);
    }

    // HTTPS between two processes on the host.
    let nginx = Nginx::start().unwrap();
    let host_url = nginx.url("/from-host");
    run(Command::new("curl").args(["-sk", "-o", "/dev/null", &host_url])).unwrap();

    // HTTPS between two containers: a Python server and a curl client, each in its own.
    let tls = tempdir("image-tls");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(tls.join("key.pem"))
        .arg("-out")
        .arg(tls.join("cert.pem")))
    .unwrap();
    std::fs::write(tls.join("between.txt"), "between containers\n").unwrap();
    let port = free_port();
    let serve = "import http.server, ssl, sys\n\
                 d = sys.argv[2]\n\
                 h = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=d, **k)\n\
                 s = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), h)\n\
                 c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                 c.load_cert_chain(d + '/cert.pem', d + '/key.pem')\n\
                 s.socket = c.wrap_socket(s.socket, server_side=True)\n\
                 s.serve_forever()";
    let tls_dir = tls.display().to_string();
    let mount = format!("--volume={tls_dir}:{tls_dir}:ro");
    let server_name = format!("sightline-https-server-{}", std::process::id());
    let server = Container::on_host_root(
        &server_name,
        &[&mount],
        &["python3", "-c", serve, &port.to_string(), &tls_dir],
    );
    wait_listening(port, "the Python HTTPS server's container");
    let between_url = format!("https://127.0.0.1:{port}/between.txt");
    // The client lingers a moment so that it is still there to be named when its call ends.
    let client_name = format!("sightline-https-client-{}", std::process::id());
    let client = Container::on_host_root(
        &client_name,
        &[],
        &["sh", "-c", &format!("curl -sk {between_url} && sleep 5")],
    );

    let found = |rec: &receiver::Received| {
        let all = spans(&rec.traces.lock().unwrap());
        find(&all, CLIENT, &host_url).is_some()
            && server_on(&all, nginx.port, "/from-host").is_some()
            && find(&all, CLIENT, &between_url).is_some()
            && server_on(&all, port, "/between.txt").is_some()
    };
    rt.block_on(receiver::wait_for(Duration::from_secs(30), || found(&rec)))
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:#?}\n{}",
                spans(&rec.traces.lock().unwrap()),
                agent.logs()
            )
        });
    let all = spans(&rec.traces.lock().unwrap());
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host_name = host_name.trim();

    // Host to host: no container, the host's name although the agent's container has a UTS
    // namespace of its own.
    let cli = find(&all, CLIENT, &host_url).unwrap();
    let srv = server_on(&all, nginx.port, "/from-host").unwrap();
    for (s, service) in [(cli, "curl"), (srv, "nginx")] {
        assert_eq!(s.service(), service, "{:#?}", s.resource);
        assert_eq!(s.attr("http.response.status_code"), Some(&Val::I(200)));
        assert_eq!(s.resource.get("container.id"), None, "{:#?}", s.resource);
        assert_eq!(
            s.resource.get("host.name").map(Val::s),
            Some(host_name),
            "{:#?}",
            s.resource
        );
    }
    assert_eq!(
        cli.trace_id, srv.trace_id,
        "same-host join of curl and nginx"
    );

    // Container to container: each side carries its own container's id and name, read from
    // podman's state through the host's root.
    let cli = find(&all, CLIENT, &between_url).unwrap();
    let srv = server_on(&all, port, "/between.txt").unwrap();
    for (s, c) in [(cli, &client), (srv, &server)] {
        let r = &s.resource;
        assert_eq!(s.attr("http.response.status_code"), Some(&Val::I(200)));
        assert_eq!(
            r.get("container.id").map(Val::s),
            Some(c.id.as_str()),
            "{r:#?}"
        );
        assert_eq!(
            r.get("container.name").map(Val::s),
            Some(c.name.as_str()),
            "{r:#?}"
        );
        assert_eq!(
            r.get("container.runtime").map(Val::s),
            Some("podman"),
            "{r:#?}"
        );
        assert_eq!(r.get("host.name").map(Val::s), Some(host_name), "{r:#?}");
        // Neither process named itself: the service is its container's name.
        assert_eq!(s.service(), c.name, "{r:#?}");
    }
    assert_eq!(
        cli.trace_id, srv.trace_id,
        "same-host join across containers"
    );

    // Stopping the container detaches everything it attached.
    drop(client);
    drop(server);
    let stopped = podman()
        .args(["stop", "-t", "30", &agent.id])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let left: Vec<_> = programs_on_host_cgroup_root()
        .into_iter()
        .filter(|(id, _)| attached.contains(id))
        .collect();
    assert!(left.is_empty(), "still attached after stop: {left:?}");
    let _ = std::fs::remove_dir_all(&tls);
    let _ = std::fs::remove_dir_all(&config_dir);
}
