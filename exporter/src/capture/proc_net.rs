//! A socket's addresses from /proc, for connections that were open before sightline started
//! (their connect/accept happened before the probes existed).

use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The socket inode an fd's `/proc/PID/fd/N` link names, if it names a socket.
pub fn socket_inode(link: &std::path::Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A namespace's tables are read again for a socket they lack after this many times what the
/// last read took, so rereads take at most a twentieth of the time: a few tens of
/// microseconds on a quiet host (a server that accepts without asking for the peer's address,
/// as node does, gets its new connection's ends at once), milliseconds on a host with
/// 100 000 connections (megabytes of text per read).
const REREAD_FACTOR: u32 = 20;
/// Bounds of the wait between rereads, whatever a read took.
const REREAD_MIN: Duration = Duration::from_millis(1);
const REREAD_MAX: Duration = Duration::from_millis(250);
/// A namespace's tables not asked about for this long are dropped.
const KEEP: Duration = Duration::from_secs(30);
/// Namespaces whose tables are kept at once; past it the one asked about longest ago goes.
const MAX_NAMESPACES: usize = 256;

/// The TCP tables of each network namespace, parsed once and asked many times: every
/// connection /proc is asked about would otherwise reread its namespace's whole tables.
#[derive(Default)]
pub struct TcpTables {
    by_netns: FxHashMap<u64, Table>,
}

struct Table {
    read_at: Instant,
    /// How long to wait after `read_at` before reading again.
    reread_after: Duration,
    used_at: Instant,
    /// Local and peer address by socket inode.
    sockets: FxHashMap<u64, (SocketAddr, SocketAddr)>,
}

impl TcpTables {
    /// Local and peer address of a process's socket fd, if it is a TCP socket.
    pub fn addrs(&mut self, pid: u32, fd: i32) -> Option<(SocketAddr, SocketAddr)> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let inode = socket_inode(&link)?;
        let ns = netns_inode(pid)?;
        let now = Instant::now();
        if let Some(t) = self.by_netns.get_mut(&ns) {
            t.used_at = now;
            if let Some(found) = t.sockets.get(&inode) {
                return Some(*found);
            }
            if now.duration_since(t.read_at) < t.reread_after {
                return None;
            }
        }
        let sockets = read_tables(pid);
        let reread_after = (now.elapsed() * REREAD_FACTOR).clamp(REREAD_MIN, REREAD_MAX);
        let found = sockets.get(&inode).copied();
        self.by_netns
            .retain(|_, t| now.duration_since(t.used_at) < KEEP);
        if self.by_netns.len() >= MAX_NAMESPACES && !self.by_netns.contains_key(&ns) {
            if let Some(oldest) = self
                .by_netns
                .iter()
                .min_by_key(|(_, t)| t.used_at)
                .map(|(k, _)| *k)
            {
                self.by_netns.remove(&oldest);
            }
        }
        self.by_netns.insert(
            ns,
            Table {
                read_at: now,
                reread_after,
                used_at: now,
                sockets,
            },
        );
        found
    }
}

#[cfg(test)]
impl TcpTables {
    /// Every namespace's tables read so far wait `d` before the next reread.
    pub fn hold_rereads(&mut self, d: Duration) {
        for t in self.by_netns.values_mut() {
            t.reread_after = d;
        }
    }
}

/// The inode of `pid`'s network namespace (`net:[N]`).
fn netns_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every socket of `pid`'s namespace's TCP tables, by inode.
fn read_tables(pid: u32) -> FxHashMap<u64, (SocketAddr, SocketAddr)> {
    let mut out = FxHashMap::default();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        out.extend(all_sockets(&table, v6));
    }
    out
}

fn all_sockets(
    table: &str,
    v6: bool,
) -> impl Iterator<Item = (u64, (SocketAddr, SocketAddr))> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            return None;
        }
        let inode = cols[9].parse::<u64>().ok()?;
        Some((inode, (parse_addr(cols[1], v6)?, parse_addr(cols[2], v6)?)))
    })
}

/// `st` 01 is TCP_ESTABLISHED, 0A TCP_LISTEN.
pub const ESTABLISHED: &str = "01";
pub const LISTEN: &str = "0A";

/// The TCP sockets (v4 and v6) of `pid`'s network namespace in any of `states`, by inode:
/// which of `states` (its index) it is in, its address family (2 or 10, as the kernel numbers
/// them) and its local port. Each table is read once for all the states.
pub fn inodes_in_states(
    pid: u32,
    states: &[&str],
) -> rustc_hash::FxHashMap<u64, (usize, u16, u16)> {
    let mut out = rustc_hash::FxHashMap::default();
    for (file, family) in [("tcp", 2u16), ("tcp6", 10)] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for (i, st) in states.iter().enumerate() {
            out.extend(in_state(&table, st).map(|(inode, port)| (inode, (i, family, port))));
        }
    }
    out
}

/// Inode and local port of each socket of a `/proc/net/tcp{,6}` table in state `st`.
fn in_state<'a>(table: &'a str, st: &'a str) -> impl Iterator<Item = (u64, u16)> + 'a {
    table.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != st {
            return None;
        }
        let port = u16::from_str_radix(cols[1].rsplit_once(':')?.1, 16).ok()?;
        Some((cols[9].parse::<u64>().ok()?, port))
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host order.
fn parse_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for w in 0..4 {
            let word = u32::from_str_radix(&addr[w * 8..w * 8 + 8], 16).ok()?;
            bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(bytes);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        let word = u32::from_str_radix(addr, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n";
        let all: Vec<_> = all_sockets(table, false).collect();
        assert_eq!(all.len(), 1);
        let (inode, (l, p)) = all[0];
        assert_eq!(inode, 12345);
        assert_eq!(l.to_string(), "127.0.0.1:8080");
        assert_eq!(p.to_string(), "127.0.0.1:54321");
    }

    #[test]
    fn only_established_sockets_are_listed() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 20 4 30 10 -1\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            in_state(table, ESTABLISHED).collect::<Vec<_>>(),
            vec![(222, 8080)]
        );
        assert_eq!(
            in_state(table, LISTEN).collect::<Vec<_>>(),
            vec![(111, 8080)]
        );
    }

    #[test]
    fn own_socket_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        use std::os::fd::AsRawFd;
        let (local, peer) = TcpTables::default()
            .addrs(std::process::id(), c.as_raw_fd())
            .unwrap();
        assert_eq!(peer, l.local_addr().unwrap());
        assert_eq!(local, c.local_addr().unwrap());
    }

    #[test]
    fn tables_are_read_again_only_for_a_socket_they_lack() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut tables = TcpTables::default();
        let me = std::process::id();
        assert_eq!(
            tables.addrs(me, a.as_raw_fd()).map(|(_, p)| p),
            Some(l.local_addr().unwrap())
        );
        let read_at = tables.by_netns.values().next().unwrap().read_at;
        // Known: answered from the parsed tables.
        assert!(tables.addrs(me, a.as_raw_fd()).is_some());
        assert_eq!(tables.by_netns.values().next().unwrap().read_at, read_at);
        // A socket made since: not before the wait has passed, then found.
        let t = tables.by_netns.values_mut().next().unwrap();
        assert!(t.reread_after >= REREAD_MIN);
        t.reread_after = REREAD_MAX;
        let b = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(tables.addrs(me, b.as_raw_fd()), None);
        std::thread::sleep(REREAD_MAX);
        assert_eq!(
            tables.addrs(me, b.as_raw_fd()).map(|(l, _)| l),
            Some(b.local_addr().unwrap())
        );
        // Not a socket at all.
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(tables.addrs(me, f.as_raw_fd()), None);
    }
}
