//! Real containers under Debian's podman and runc. Their root is this host's file system
//! behind an overlay (`--rootfs /:O`), so no image is pulled, and they share the host's
//! network, so host processes and containers reach each other on loopback.

use crate::procs::run;
use std::process::Command;
use std::time::{Duration, Instant};

/// podman as it runs here: runc, and cgroupfs, which works on hybrid cgroup hosts too.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

/// A container, removed when dropped.
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    /// Starts `cmd` detached in a container named `name` whose root is the host's, with
    /// `extra` podman options.
    pub fn on_host_root(name: &str, extra: &[&str], cmd: &[&str]) -> Container {
        let mut c = podman();
        c.args(["run", "-d", "--name", name, "--network", "host"]);
        // Explicit limits: podman's defaults may exceed the hard limits of a caller without
        // CAP_SYS_RESOURCE.
        c.args([
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        c.args(extra).args(["--rootfs", "/:O"]).args(cmd);
        Container::started(name, &mut c)
    }

    /// Starts a container with `cmd`, a complete `podman run -d` command.
    pub fn started(name: &str, cmd: &mut Command) -> Container {
        let _ = podman().args(["rm", "-f", "-t", "0", name]).output();
        let id = run(cmd)
            .unwrap_or_else(|e| panic!("podman run: {e}"))
            .trim()
            .to_string();
        assert_eq!(id.len(), 64, "podman run printed no container id: {id}");
        Container {
            id,
            name: name.into(),
        }
    }

    /// The container's main process, as the host sees it.
    pub fn host_pid(&self) -> u32 {
        run(podman().args(["inspect", "-f", "{{.State.Pid}}", &self.id]))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn logs(&self) -> String {
        podman()
            .args(["logs", &self.id])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// Waits until something accepts TCP connections on loopback `port`.
pub fn wait_listening(port: u16, what: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
