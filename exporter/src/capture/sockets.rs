//! A socket's role and ends, for a record that names it by (process, fd, stamp): from the
//! kernel's connect/accept record, or from /proc for connections older than sightline.

use super::proc_net::TcpTables;
use aya::maps::{HashMap as BpfHashMap, MapData};
use rustc_hash::FxHashMap as HashMap;
use sightline_common::{sock_class, sock_role, ConnKey, SockClass, SockInfo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which end of a connection the observed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Socket peers recorded at connect/accept time, looked up once per connection, and what the
/// socket syscall probes copy of each socket.
pub struct ConnInfo {
    map: BpfHashMap<MapData, ConnKey, SockInfo>,
    past: BpfHashMap<MapData, u64, SockInfo>,
    class: BpfHashMap<MapData, ConnKey, SockClass>,
    agent_ports: BpfHashMap<MapData, u32, ConnKey>,
}

impl ConnInfo {
    pub fn new(
        map: BpfHashMap<MapData, ConnKey, SockInfo>,
        past: BpfHashMap<MapData, u64, SockInfo>,
        class: BpfHashMap<MapData, ConnKey, SockClass>,
        agent_ports: BpfHashMap<MapData, u32, ConnKey>,
    ) -> ConnInfo {
        ConnInfo {
            map,
            past,
            class,
            agent_ports,
        }
    }

    /// The socket `fd` of `tgid` holds now, as its connect or accept recorded it.
    pub fn get(&self, tgid: u32, fd: i32) -> Option<SockInfo> {
        self.map.get(&ConnKey { tgid, fd }, 0).ok()
    }

    /// Enters sockets open before sightline started, unstamped, so that the socket syscall
    /// probes classify their next bytes; a socket the kernel entered meanwhile is left as it
    /// is. Returns how many were entered.
    pub fn enter_existing(&mut self, sockets: &[(u32, i32)]) -> usize {
        const BPF_NOEXIST: u64 = 1;
        let class = SockClass::default();
        sockets
            .iter()
            .filter(|(tgid, fd)| {
                let key = ConnKey {
                    tgid: *tgid,
                    fd: *fd,
                };
                self.class.insert(key, class, BPF_NOEXIST).is_ok()
            })
            .count()
    }

    /// An earlier socket whose fd a newer one took, by its stamp.
    pub fn before(&self, stamp: u64) -> Option<SockInfo> {
        self.past.get(&stamp, 0).ok().filter(|i| i.ts_ns == stamp)
    }
}

/// Where socket facts recorded by the kernel are looked up.
pub trait SockLookup: Send {
    /// What socket `fd` of `tgid` was when stamped `stamp` (0: not stamped).
    fn lookup(&self, tgid: u32, fd: i32, stamp: u64) -> Sock;
    /// The socket syscall probes are to copy nothing more of socket `fd` of `tgid`, if it is
    /// still the one stamped `stamp`.
    fn silence(&mut self, _tgid: u32, _fd: i32, _stamp: u64) {}
    /// Socket `fd` of `tgid` means nothing any more (its process exited).
    fn forget(&mut self, _tgid: u32, _fd: i32) {}
    /// sightline's own client socket whose local port is `port`, if it has one.
    fn agent_socket(&self, _port: u16) -> Option<SockInfo> {
        None
    }
}

/// A socket as the kernel recorded its connect or accept.
pub enum Sock {
    /// The one the fd holds now: /proc may fill in what the record lacks.
    Now(SockInfo),
    /// One a newer socket has since replaced on the same fd.
    Before(SockInfo),
    /// Replaced, and its record is gone: nothing known is about it.
    Replaced,
    /// Never recorded (older than sightline, or dropped): only /proc can tell.
    Unknown,
}

impl SockLookup for ConnInfo {
    fn lookup(&self, tgid: u32, fd: i32, stamp: u64) -> Sock {
        match self.get(tgid, fd) {
            Some(i) if stamp == 0 || i.ts_ns == stamp => Sock::Now(i),
            // A record read after its process reused the fd: another connection's ends
            // would be wrong, so only the earlier socket's own record will do.
            Some(_) => self.before(stamp).map_or(Sock::Replaced, Sock::Before),
            None => Sock::Unknown,
        }
    }

    fn silence(&mut self, tgid: u32, fd: i32, stamp: u64) {
        let key = ConnKey { tgid, fd };
        if let Ok(mut c) = self.class.get(&key, 0) {
            if c.ts_ns == stamp {
                c.class = sock_class::IGNORED;
                // Gone meanwhile (closed, evicted): nothing left to silence.
                let _ = self.class.insert(key, c, 0);
            }
        }
    }

    fn forget(&mut self, tgid: u32, fd: i32) {
        let _ = self.class.remove(&ConnKey { tgid, fd });
    }

    fn agent_socket(&self, port: u16) -> Option<SockInfo> {
        let key = self.agent_ports.get(&(port as u32), 0).ok()?;
        // The fd may hold a newer connection by now: only one on this port will do.
        self.map.get(&key, 0).ok().filter(|i| i.local_port == port)
    }
}

/// No kernel map: for benchmarks and unit tests.
pub struct NoLookup;

impl SockLookup for NoLookup {
    fn lookup(&self, _: u32, _: i32, _: u64) -> Sock {
        Sock::Unknown
    }
}

/// What is known of a socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resolved {
    pub role: Option<Role>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// Resolves sockets for every source, remembering listening sockets' addresses (accepted
/// sockets share them).
pub struct Sockets {
    lookup: Box<dyn SockLookup>,
    /// Whether /proc may be read; off in benchmarks, where pids are synthetic.
    use_proc: bool,
    /// Local addresses of listening sockets, by (pid, fd), once /proc told them.
    listeners: HashMap<(u32, i32), SocketAddr>,
    tables: TcpTables,
}

impl Sockets {
    pub fn new(lookup: Box<dyn SockLookup>, use_proc: bool) -> Sockets {
        Sockets {
            lookup,
            use_proc,
            listeners: HashMap::default(),
            tables: TcpTables::default(),
        }
    }

    /// Whether a connection from `peer` to `local` is one of sightline's own (its exporter's,
    /// seen from a collector on this host).
    pub fn is_own(&self, peer: SocketAddr, local: Option<SocketAddr>) -> bool {
        let Some(i) = self.lookup.agent_socket(peer.port()) else {
            return false;
        };
        let ours = sock_addr(i.family, i.local_addr, i.local_port);
        let theirs = sock_addr(i.family, i.addr, i.port);
        ours == Some(peer) && local.is_none_or(|l| theirs == Some(l))
    }

    /// Copy nothing more of socket `fd` of `tgid` (stamped `stamp`) in the kernel.
    pub fn silence(&mut self, tgid: u32, fd: i32, stamp: u64) {
        self.lookup.silence(tgid, fd, stamp);
    }

    /// Socket `fd` of exited process `tgid`: its kernel entry goes, so a process that gets the
    /// pid next does not inherit it.
    pub fn forget(&mut self, tgid: u32, fd: i32) {
        self.lookup.forget(tgid, fd);
    }

    /// The role and ends of socket `fd` of `tgid`, as it was when stamped `stamp`.
    pub fn resolve(&mut self, tgid: u32, fd: i32, stamp: u64) -> Resolved {
        let tables = self.use_proc.then_some(&mut self.tables);
        let (mut r, listen_fd) = resolve(&*self.lookup, tgid, fd, stamp, tables);
        if let (None, Some(lfd), true) = (r.local, listen_fd, self.use_proc) {
            // Only an answer is kept: /proc may not have had the listener's table to hand
            // (its rereads are spaced), and a miss kept would leave every connection the
            // listener accepts without its local address.
            r.local = match self.listeners.get(&(tgid, lfd)) {
                Some(local) => Some(*local),
                None => {
                    let local = self.tables.addrs(tgid, lfd).map(|(local, _)| local);
                    if let Some(l) = local {
                        self.listeners.insert((tgid, lfd), l);
                    }
                    local
                }
            };
        }
        r
    }

    /// Never read /proc (benchmarks, whose pids are synthetic).
    pub fn without_proc(&mut self) {
        self.use_proc = false;
    }

    /// A process is gone: its fds mean nothing any more.
    pub fn process_exit(&mut self, tgid: u32) {
        self.listeners.retain(|(t, _), _| *t != tgid);
    }
}

fn sock_addr(family: u16, addr: [u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The socket's role and ends, and for an accepted socket, its listening fd.
fn resolve(
    lookup: &dyn SockLookup,
    tgid: u32,
    fd: i32,
    stamp: u64,
    mut tables: Option<&mut TcpTables>,
) -> (Resolved, Option<i32>) {
    let mut from_proc = || tables.as_mut().and_then(|t| t.addrs(tgid, fd));
    let (info, current) = match lookup.lookup(tgid, fd, stamp) {
        Sock::Now(i) => (i, true),
        Sock::Before(i) => (i, false),
        Sock::Replaced => return (Resolved::default(), None),
        Sock::Unknown => {
            let (local, peer) = from_proc().unzip();
            return (
                Resolved {
                    peer,
                    local,
                    role: None,
                },
                None,
            );
        }
    };
    let role = match info.role {
        sock_role::CONNECTED => Some(Role::Client),
        sock_role::ACCEPTED => Some(Role::Server),
        _ => None,
    };
    let mut r = Resolved {
        role,
        peer: sock_addr(info.family, info.addr, info.port),
        local: (info.local_port != 0)
            .then(|| sock_addr(info.family, info.local_addr, info.local_port))
            .flatten(),
    };
    let listen_fd =
        (info.role == sock_role::ACCEPTED && info.listen_fd >= 0).then_some(info.listen_fd);
    if r.peer.is_none() && current {
        if let Some((local, peer)) = from_proc() {
            r.peer = Some(peer);
            r.local = r.local.or(Some(local));
        }
    }
    (r, listen_fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Fixed(fn(u64) -> Sock);

    impl SockLookup for Fixed {
        fn lookup(&self, _: u32, _: i32, stamp: u64) -> Sock {
            (self.0)(stamp)
        }
    }

    fn connected(ts_ns: u64, port: u16) -> SockInfo {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        SockInfo {
            role: sock_role::CONNECTED,
            ts_ns,
            family: 2,
            addr,
            port,
            listen_fd: -1,
            ..SockInfo::default()
        }
    }

    /// Every socket is one accepted on listening fd `.0`, from 127.0.0.1:40000.
    struct Accepted(i32);

    impl SockLookup for Accepted {
        fn lookup(&self, _: u32, _: i32, stamp: u64) -> Sock {
            Sock::Now(SockInfo {
                role: sock_role::ACCEPTED,
                listen_fd: self.0,
                ..connected(stamp, 40000)
            })
        }
    }

    #[test]
    fn a_listener_proc_did_not_have_yet_is_looked_up_again() {
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        let mut socks = Sockets::new(Box::new(Accepted(-1)), true);
        // This namespace's tables are read, and not again for a while...
        let l0 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(socks.tables.addrs(me, l0.as_raw_fd()).is_some());
        socks.tables.hold_rereads(Duration::from_millis(200));
        // ...when a listener opens and its first connection is resolved.
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socks.lookup = Box::new(Accepted(l1.as_raw_fd()));
        assert_eq!(socks.resolve(me, 99, 1).local, None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            socks.resolve(me, 98, 2).local,
            Some(l1.local_addr().unwrap())
        );
    }

    #[test]
    fn a_record_read_after_its_fd_was_reused_keeps_its_own_ends() {
        let before = Fixed(|stamp| Sock::Before(connected(stamp, 8443)));
        let (r, _) = resolve(&before, 1, 5, 42, None);
        assert_eq!(r.peer, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(r.role, Some(Role::Client));
        // Once the earlier socket's record is gone too, no ends are better than another's.
        let replaced = Fixed(|_| Sock::Replaced);
        let (r, _) = resolve(&replaced, 1, 5, 42, Some(&mut TcpTables::default()));
        assert_eq!((r.peer, r.local, r.role), (None, None, None));
    }
}
