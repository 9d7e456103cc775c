//! Connections open before sightline started. Their connect or accept ran before the probes,
//! so the kernel's socket table does not know them, and their bytes would never be looked at:
//! a keep-alive pool opened before a restart of sightline would stay invisible for as long as
//! it lives. At start they are found in `/proc` and entered unstamped, so their next bytes are
//! classified like a new socket's. Unstamped, they never take part in same-host joins: request
//! positions on a connection watched from its middle need not line up with the other end's.
//! The same walk finds the sockets listening since before start, whose accepted connections
//! the network signals attribute to their process.

use super::proc_net::{inodes_in_states, socket_inode, ESTABLISHED, LISTEN};
use rustc_hash::FxHashMap;
use std::time::{Duration, Instant};

/// How long the walk of `/proc` may take, and how many sockets it may enter: a host with more
/// is covered for its first ones, and the rest show up when they reconnect.
pub const BUDGET: Duration = Duration::from_secs(2);
pub const MAX_SOCKETS: usize = 32_768;

/// The TCP sockets open at start, from one walk of `/proc`.
#[derive(Debug, Default)]
pub struct AtStart {
    /// Established sockets of the processes `wanted` accepts, as (pid, fd).
    pub established: Vec<(u32, i32)>,
    /// Every process's listening sockets, as (family, port, pid): the owners of the
    /// connections accepted on them from now on.
    pub listening: Vec<(u16, u16, u32)>,
}

/// Every established TCP socket of every process `wanted(pid, executable name)` accepts and
/// every listening one, but sightline's own; within [`BUDGET`] and [`MAX_SOCKETS`].
pub fn sockets_at_start(wanted: impl Fn(u32, &str) -> bool) -> AtStart {
    let started = Instant::now();
    let me = std::process::id();
    let mut out = AtStart::default();
    // Processes in one network namespace share its socket tables: read them once.
    let mut by_netns: FxHashMap<String, FxHashMap<u64, (usize, u16, u16)>> = FxHashMap::default();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc.flatten() {
        let n = out.established.len() + out.listening.len();
        if started.elapsed() > BUDGET || n >= MAX_SOCKETS {
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
        let selected = wanted(pid, name);
        let Ok(netns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let inodes = by_netns
            .entry(netns.to_string_lossy().into_owned())
            .or_insert_with(|| inodes_in_states(pid, &[ESTABLISHED, LISTEN]));
        if inodes.is_empty() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(fdn) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            match socket_inode(&link).and_then(|i| inodes.get(&i)) {
                Some((0, _, _)) if selected => out.established.push((pid, fdn)),
                Some((1, family, port)) => out.listening.push((*family, *port, pid)),
                _ => continue,
            }
            if out.established.len() + out.listening.len() >= MAX_SOCKETS {
                break;
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
        let found = sockets_at_start(|_, _| true).established;
        use std::os::fd::AsRawFd;
        assert!(!found.contains(&(std::process::id(), c.as_raw_fd())));
    }
}
