//! The Go test service (`tests/go/probe`) as a running process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct GoService {
    child: Child,
    /// The first address it listens on; `ports` has them all.
    pub port: u16,
    pub ports: Vec<u16>,
    pub pid: u32,
}

impl GoService {
    /// Starts `bin` with `args` and waits for it to listen.
    pub fn start(bin: &Path, args: &[&str]) -> GoService {
        Self::spawn(Command::new(bin).args(args), bin, 1)
    }

    /// Starts a program that prints `listening on ADDR` for each of `n` listeners.
    pub fn start_listening(bin: &Path, args: &[&str], n: usize) -> GoService {
        Self::spawn(Command::new(bin).args(args), bin, n)
    }

    /// The same in network namespace `netns` (`ip netns exec` execs it: the pid is its own).
    pub fn start_in(netns: &str, bin: &Path, args: &[&str]) -> GoService {
        Self::spawn(
            Command::new("ip")
                .args(["netns", "exec", netns])
                .arg(bin)
                .args(args),
            bin,
            1,
        )
    }

    fn spawn(cmd: &mut Command, bin: &Path, n: usize) -> GoService {
        let mut child = cmd
            // The probe's go.mod says 1.19, which keeps Go 1.22+'s ServeMux in its 1.21 mode;
            // a module declaring 1.22 or later gets patterns (and Request.Pattern) by default.
            .env("GODEBUG", "httpmuxgo121=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let ports: Vec<u16> = (0..n)
            .map(|_| {
                let mut line = String::new();
                out.read_line(&mut line)
                    .expect("the service prints its address");
                line.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{} said {line:?}", bin.display()))
            })
            .collect();
        GoService {
            pid: child.id(),
            child,
            port: ports[0],
            ports,
        }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for GoService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
