//! Connections open before sightline started. Their connect or accept ran before the probes,
//! so the kernel's socket table does not know them, and their bytes would never be looked at:
//! a keep-alive pool opened before a restart of sightline would stay invisible for as long as
//! it lives. At start they are found in `/proc` and entered unstamped, so their next bytes are
//! classified like a new socket's. Unstamped, they never take part in same-host joins: request
//! positions on a connection watched from its middle need not line up with the other end's.

use super::proc_net::{established_inodes, socket_inode};
use rustc_hash::{FxHashMap, FxHashSet};
use std::time::{Duration, Instant};

/// How long the walk of `/proc` may take, and how many sockets it may enter: a host with more
/// is covered for its first ones, and the rest show up when they reconnect.
pub const BUDGET: Duration = Duration::from_secs(2);
pub const MAX_SOCKETS: usize = 32_768;

/// Every established TCP socket of every process `wanted(pid, executable name)` accepts, as
/// (pid, fd), but sightline's own; within [`BUDGET`] and [`MAX_SOCKETS`].
pub fn established_sockets(wanted: impl Fn(u32, &str) -> bool) -> Vec<(u32, i32)> {
    let started = Instant::now();
    let me = std::process::id();
    // Processes in one network namespace share its socket tables: read them once.
    let mut by_netns: FxHashMap<String, FxHashSet<u64>> = FxHashMap::default();
    let mut out = Vec::new();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc.flatten() {
        if started.elapsed() > BUDGET || out.len() >= MAX_SOCKETS {
            break;
        }
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !wanted(pid, name) {
            continue;
        }
        let Ok(netns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let inodes = by_netns
            .entry(netns.to_string_lossy().into_owned())
            .or_insert_with(|| established_inodes(pid));
        if inodes.is_empty() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if socket_inode(&link).is_some_and(|i| inodes.contains(&i)) {
                out.push((pid, n));
                if out.len() >= MAX_SOCKETS {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_sockets_but_not_its_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // sightline's own process is skipped, and this test is that process.
        let found = established_sockets(|_, _| true);
        use std::os::fd::AsRawFd;
        assert!(!found.contains(&(std::process::id(), c.as_raw_fd())));
    }
}
