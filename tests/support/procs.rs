//! Real processes for the tests: nginx serving HTTPS, the sightline agent, and clients.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sightline-e2e-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Fails loudly when a prerequisite is missing: the README's test command installs them.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run tests/prereqs.sh (the README's test command does)"
    );
}

/// Where `tool` is on PATH (it must be: see [`require`]).
pub fn which(tool: &str) -> PathBuf {
    require(tool);
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh runs");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// nginx with TLS on a free port and a few fixed answers.
    pub fn start() -> anyhow::Result<Nginx> {
        require("openssl");
        let dir = tempdir("nginx");
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("openssl could not make a test certificate");
        }
        let d = dir.display();
        let server = format!(
            r#"ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location / {{ return 200 "hello\n"; }}
    location /missing {{ return 404; }}
    location /down {{ return 503; }}
    location /big {{ return 200 "{big}"; }}"#,
            big = "x".repeat(3000)
        );
        Self::launch(dir, "ssl", &server)
    }

    /// nginx serving plaintext HTTP on a free port, with `server` (its locations) in its
    /// server block.
    pub fn plain(server: &str) -> anyhow::Result<Nginx> {
        Self::launch(tempdir("nginx"), "", server)
    }

    fn launch(dir: PathBuf, listen_opts: &str, server: &str) -> anyhow::Result<Nginx> {
        require("nginx");
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000;
  server {{
    listen 127.0.0.1:{port} {listen_opts};
    {server}
  }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx { child, port, dir };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                bail!("nginx did not start listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    /// The worker's pid: the process that serves requests and owns the SERVER spans.
    pub fn worker_pid(&self) -> Option<u32> {
        let out = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child killed when dropped, so a failed assertion leaves no server behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn sightline_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIGHTLINE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sightline");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --release --bin sightline` (the README's test command does)",
        p.display()
    );
    p
}

/// A running sightline with its output collected line by line.
pub struct Agent {
    child: Option<Child>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(
    r: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    })
}

impl Agent {
    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Agent> {
        let mut cmd = Command::new(sightline_bin());
        cmd.args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env(
                "RUST_LOG",
                std::env::var("SIGHTLINE_TEST_LOG").unwrap_or("sightline=info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting sightline")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), stdout.clone()),
            collect(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        let agent = Agent {
            child: Some(child),
            readers,
            stdout,
            stderr,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if agent
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("sightline is running"))
            {
                return Ok(agent);
            }
            if Instant::now() > end {
                bail!(
                    "sightline did not start: {}",
                    agent.stderr.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the time it took to exit and its status.
    pub fn stop(&mut self) -> anyhow::Result<(Duration, std::process::ExitStatus)> {
        let mut child = self.child.take().context("already stopped")?;
        let t0 = Instant::now();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        loop {
            if let Some(st) = child.try_wait()? {
                let took = t0.elapsed();
                // The pipes end with the process: read them to the end.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Ok((took, st));
            }
            // Detaching costs the kernel ~0.1 s per uprobe (serialised), so many Go binaries
            // take a while; tests that care about the time assert it themselves.
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!("sightline did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a client to completion; fails if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// eBPF programs of sightline's still loaded in the kernel (there must be none after exit).
/// The kernel frees a program when its last reference goes, some of them (an sk_msg program
/// held by live sockets' sockmap state) a few RCU grace periods after sightline exited: what
/// is still there after 3 s is left over.
pub fn leftover_programs() -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let left = loaded_programs();
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn loaded_programs() -> Vec<String> {
    require("bpftool");
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool runs");
    let names = [
        "ssl_read",
        "ssl_write",
        "ssl_ret",
        "sys_read",
        "sys_data_exit",
        "sock_connect",
        "accept_enter",
        "accept_exit",
        "proc_exec",
        "proc_exit",
        "go_server_ret",
        "go_inject",
        "go_sockops",
        "go_connect4",
        "go_connect6",
        "go_tp_h1",
        "go_tp_h2_enter",
        "go_tp_h2_flush",
    ];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(&format!("name {n} "))))
        .map(str::to_string)
        .collect()
}
