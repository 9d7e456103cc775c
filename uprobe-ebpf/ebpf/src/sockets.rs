//! Sockets, from syscall and socket tracepoints:
//! - `sock_connect` / `accept_enter` / `accept_exit` remember each socket's peer and whether
//!   this process is its client or server, in an LRU map the user side reads on demand, stamp
//!   the fd in the socket generation table, and enter the socket in `SOCK_CLASS`, where the
//!   socket syscall probes (`syscalls`) look for the sockets whose bytes may be HTTP.
//! - `sock_state` adds a client socket's local address once TCP chose it.

use crate::maps::{
    global, inserted, now, ACCEPT_ARGS, AGENT_PORTS, AGENT_TGID, CONN_INFO, CONN_PAST,
    PENDING_CONNECT, SOCK_CLASS, SOCK_GEN, SS_OFFSETS, SYN_SENT,
};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sightline_common::{
    sock_class, sock_gen_slot, sock_role, table, ConnKey, SockClass, SockGen, SockInfo,
};

/// Syscall tracepoints share one layout: 8 bytes of common fields, the syscall number, then
/// each argument as 8 bytes from offset 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_ARG1: usize = 24;
const SYSCALL_RET: usize = 16;

/// Records that `fd` of `tgid` is, from now on, the socket first seen at `ts_ns`.
#[inline(always)]
fn set_sock_gen(tgid: u32, fd: i32, ts_ns: u64) {
    if let Some(g) = SOCK_GEN.get_ptr_mut(sock_gen_slot(tgid, fd)) {
        // SAFETY: array slot; a concurrent writer can only make the entry read as unknown.
        unsafe { *g = SockGen { tgid, fd, ts_ns } };
    }
}

/// Records a socket's connect/accept under its fd, keeping what the fd held before; `copy`:
/// its bytes may be copied (every process's but sightline's own).
#[inline(always)]
fn record_socket(key: &ConnKey, info: &SockInfo, copy: bool) {
    // SAFETY: map lookup, copied at once.
    if let Some(old) = unsafe { CONN_INFO.get(key) }.copied() {
        inserted(table::CONN_PAST, CONN_PAST.insert(&old.ts_ns, &old, 0));
    }
    inserted(table::CONN_INFO, CONN_INFO.insert(key, info, 0));
    if !copy {
        return;
    }
    let class = SockClass {
        ts_ns: info.ts_ns,
        class: sock_class::UNKNOWN,
        _pad: [0; 7],
    };
    inserted(table::SOCK_CLASS, SOCK_CLASS.insert(key, &class, 0));
}

#[inline(always)]
fn read_sockaddr(ptr: u64, info: &mut SockInfo) -> bool {
    if ptr == 0 {
        return false;
    }
    // sockaddr_in6 is the largest family we read: 28 bytes.
    // SAFETY: helper-checked read of user memory.
    let raw = match unsafe { aya_ebpf::helpers::bpf_probe_read_user(ptr as *const [u8; 28]) } {
        Ok(r) => r,
        Err(_) => return false,
    };
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    info.family = family;
    info.port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        2 => {
            info.addr[..4].copy_from_slice(&raw[4..8]);
            true
        }
        10 => {
            info.addr.copy_from_slice(&raw[8..24]);
            true
        }
        _ => false,
    }
}

#[tracepoint]
pub fn sock_connect(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // sightline's own connections are followed to ESTABLISHED too, never copied: a collector
    // on this host that receives its export is told apart by them.
    let agent = tgid == global(&AGENT_TGID);
    // SAFETY: connect(fd, uservaddr, addrlen) arguments at fixed offsets.
    let (fd, addr) = unsafe {
        (
            ctx.read_at::<u64>(SYSCALL_ARG0).unwrap_or(u64::MAX),
            ctx.read_at::<u64>(SYSCALL_ARG1).unwrap_or(0),
        )
    };
    let mut info = SockInfo {
        role: sock_role::CONNECTED,
        ts_ns: now(),
        listen_fd: -1,
        ..SockInfo::default()
    };
    if !read_sockaddr(addr, &mut info) {
        return 0;
    }
    let key = ConnKey {
        tgid,
        fd: fd as i32,
    };
    record_socket(&key, &info, !agent);
    set_sock_gen(tgid, fd as i32, info.ts_ns);
    inserted(
        table::PENDING_CONNECT,
        PENDING_CONNECT.insert(&id, &(fd as i32), 0),
    );
    0
}

/// `connect()` returned: a TCP socket reached SYN_SENT inside it and took its fd from
/// `PENDING_CONNECT`; whatever is left there is a UDP connect (every `getaddrinfo` makes
/// some) or one that failed before the handshake, and goes now rather than filling the table.
#[tracepoint]
pub fn sock_connect_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let _ = PENDING_CONNECT.remove(&id);
    0
}

/// A client socket's local address: at TCP_SYN_SENT (inside `connect()`, so the pid is
/// known) the socket is tied to its fd; at TCP_ESTABLISHED the chosen port is read. No
/// `struct sock` field is read, only the tracepoint's own fields.
#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    const TCP_ESTABLISHED: i32 = 1;
    const TCP_SYN_SENT: i32 = 2;
    const TCP_CLOSE: i32 = 7;
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&SS_OFFSETS) };
    if off.newstate == 0 {
        return 0;
    }
    // SAFETY: offsets come from the tracepoint's own format description.
    let (newstate, sk) = unsafe {
        (
            ctx.read_at::<i32>(off.newstate as usize).unwrap_or(0),
            ctx.read_at::<u64>(off.skaddr as usize).unwrap_or(0),
        )
    };
    if newstate == TCP_SYN_SENT {
        let id = bpf_get_current_pid_tgid();
        // SAFETY: value copied before removal.
        if let Some(fd) = (unsafe { PENDING_CONNECT.get(&id) }).copied() {
            let _ = PENDING_CONNECT.remove(&id);
            let key = ConnKey {
                tgid: (id >> 32) as u32,
                fd,
            };
            inserted(table::SYN_SENT, SYN_SENT.insert(&sk, &key, 0));
        }
        return 0;
    }
    if newstate == TCP_CLOSE {
        // A connect that never got through (refused, timed out, unreachable) leaves here.
        // SAFETY: offset from the tracepoint's own format description.
        if unsafe { ctx.read_at::<i32>(off.oldstate as usize) } == Ok(TCP_SYN_SENT) {
            let _ = SYN_SENT.remove(&sk);
        }
        return 0;
    }
    if newstate != TCP_ESTABLISHED {
        return 0;
    }
    // SAFETY: value copied before removal.
    let Some(key) = (unsafe { SYN_SENT.get(&sk) }).copied() else {
        return 0;
    };
    let _ = SYN_SENT.remove(&sk);
    let Some(info) = CONN_INFO.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: the map value is this socket's entry, valid for this program run; offsets come
    // from the tracepoint's format.
    unsafe {
        let info = &mut *info;
        let family = ctx.read_at::<u16>(off.family as usize).unwrap_or(0);
        info.local_port = ctx.read_at::<u16>(off.sport as usize).unwrap_or(0);
        if key.tgid == global(&AGENT_TGID) {
            inserted(
                table::AGENT_PORTS,
                AGENT_PORTS.insert(&(info.local_port as u32), &key, 0),
            );
        }
        if family == 2 {
            let a = ctx.read_at::<[u8; 4]>(off.saddr as usize).unwrap_or([0; 4]);
            info.local_addr[..4].copy_from_slice(&a);
        } else if family == 10 {
            info.local_addr = ctx
                .read_at::<[u8; 16]>(off.saddr_v6 as usize)
                .unwrap_or([0; 16]);
        }
    }
    0
}

#[tracepoint]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == global(&AGENT_TGID) {
        return 0;
    }
    // SAFETY: accept(fd, upeer_sockaddr, ...) first and second arguments.
    let (listen_fd, addr) = unsafe {
        (
            ctx.read_at::<u64>(SYSCALL_ARG0).unwrap_or(u64::MAX),
            ctx.read_at::<u64>(SYSCALL_ARG1).unwrap_or(0),
        )
    };
    inserted(
        table::ACCEPT_ARGS,
        ACCEPT_ARGS.insert(&id, &[addr, listen_fd], 0),
    );
    0
}

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied before removal.
    let [addr, listen_fd] = match (unsafe { ACCEPT_ARGS.get(&id) }).copied() {
        Some(args) => {
            let _ = ACCEPT_ARGS.remove(&id);
            args
        }
        // Blocked in accept() since before the probes were attached: the role is still
        // known, the ends come from /proc.
        None if (id >> 32) as u32 != global(&AGENT_TGID) => [0, u64::MAX],
        None => return 0,
    };
    // SAFETY: sys_exit layout: return value at offset 16.
    let ret = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    let mut info = SockInfo {
        role: sock_role::ACCEPTED,
        ts_ns: now(),
        listen_fd: listen_fd as i32,
        ..SockInfo::default()
    };
    // A server that passes no sockaddr still tells us its role; the address is looked up
    // later from /proc.
    let _ = read_sockaddr(addr, &mut info);
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: ret as i32,
    };
    record_socket(&key, &info, true);
    set_sock_gen(key.tgid, key.fd, info.ts_ns);
    0
}
