//! The Go test service (`tests/go/probe`) as a running process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct GoService {
    child: Child,
    pub port: u16,
    pub pid: u32,
}

impl GoService {
    /// Starts `bin` with `args` and waits for it to listen.
    pub fn start(bin: &Path, args: &[&str]) -> GoService {
        Self::spawn(Command::new(bin).args(args), bin)
    }

    /// The same in network namespace `netns` (`ip netns exec` execs it: the pid is its own).
    pub fn start_in(netns: &str, bin: &Path, args: &[&str]) -> GoService {
        Self::spawn(
            Command::new("ip")
                .args(["netns", "exec", netns])
                .arg(bin)
                .args(args),
            bin,
        )
    }

    fn spawn(cmd: &mut Command, bin: &Path) -> GoService {
        let mut child = cmd
            // The probe's go.mod says 1.19, which keeps Go 1.22+'s ServeMux in its 1.21 mode;
            // a module declaring 1.22 or later gets patterns (and Request.Pattern) by default.
            .env("GODEBUG", "httpmuxgo121=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the service prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{} said {line:?}", bin.display()));
        GoService {
            pid: child.id(),
            child,
            port,
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
