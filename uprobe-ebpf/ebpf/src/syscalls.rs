//! Socket syscalls: plaintext HTTP from any runtime, and the fd a TLS call used.
//!
//! Each `sys_*` program runs at a read/write-family syscall's entry. It first tells an in-flight
//! TLS call which socket it touched (`maps::link_tls_call`). Then one `SOCK_CLASS` lookup
//! decides whether the fd is a socket whose bytes may be HTTP: a file, a pipe, a socket older
//! than sightline or one already known not to be HTTP (TLS, a database protocol) ends there.
//! Otherwise the arguments wait in the thread's `SYS_ACTIVE` slot for `sys_data_exit`, which
//! reads the true length, classifies a new socket by its first bytes, and copies the bytes of
//! an HTTP socket into the ring buffer. `sys_close` ends a copied socket.

use crate::emit::{payload, Payload};
use crate::maps::{
    bump, link_tls_call, now, wakeup_flags, SysCall, TlsRead, EVENTS, GO_PROCS, SOCK_CLASS,
    SYS_ACTIVE, TLS_READS,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use sightline_common::{
    classify, counter, direction, kind, sock_class, CloseRecord, ConnKey, ACTIVE_SLOTS,
};

/// Syscall tracepoints share one layout: 8 bytes of common fields, the syscall number, then
/// each argument as 8 bytes from offset 16; at exit, the return value at offset 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

/// Where a syscall's bytes are.
mod shape {
    /// A buffer (`read`, `write`, `recvfrom`, `sendto`).
    pub const BUF: u8 = 0;
    /// An iovec array (`readv`, `writev`).
    pub const IOV: u8 = 1;
    /// A msghdr and its iovec array (`recvmsg`, `sendmsg`).
    pub const MSG: u8 = 2;
    /// Nowhere the process can show: `sendfile` moves file bytes, only their count is kept.
    pub const COUNT: u8 = 3;
}

/// `MSG_PEEK`: the bytes stay queued and will be read again.
const MSG_PEEK: u64 = 2;
/// `struct msghdr`'s `msg_iov`, after `msg_name` and the padded `msg_namelen`.
const MSGHDR_IOV: u64 = 16;

#[inline(always)]
fn enter(ctx: &TracePointContext, shape: u8, dir: u32, flags_at: usize) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the first argument of every syscall these programs attach to is the fd.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else {
        return 0;
    };
    let fd = fd as i32;
    link_tls_call(id, fd);
    let tgid = (id >> 32) as u32;
    let key = ConnKey { tgid, fd };
    let Some(class) = SOCK_CLASS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: this socket's entry, valid for this program run.
    let (c, sock_ts) = unsafe { ((*class).class, (*class).ts_ns) };
    if c == sock_class::TLS && dir == direction::INGRESS {
        // What a TLS library with a memory BIO decrypts next came from here (`openssl`).
        if let Some(r) = TLS_READS.get_ptr_mut((id as u32) & (ACTIVE_SLOTS - 1)) {
            // SAFETY: array slot of this thread.
            unsafe {
                *r = TlsRead {
                    id,
                    sock_ts,
                    at_ns: now(),
                    fd,
                    _pad: 0,
                }
            };
        }
        return 0;
    }
    if c != sock_class::UNKNOWN && c != sock_class::HTTP {
        return 0;
    }
    // SAFETY: map lookup by value; only presence matters.
    if unsafe { GO_PROCS.get(&tgid) }.is_some() {
        // The Go probes report this process's requests; its sockets are left to them.
        // SAFETY: as above.
        unsafe { (*class).class = sock_class::LIBRARY };
        bump(counter::SOCK_LIBRARY);
        return 0;
    }
    if flags_at != 0 {
        // SAFETY: `flags_at` is this syscall's flags argument.
        let flags = unsafe { ctx.read_at::<u64>(flags_at) }.unwrap_or(0);
        if flags & MSG_PEEK != 0 {
            return 0;
        }
    }
    // SAFETY: the second argument: the buffer, iovec array or msghdr (sendfile's in_fd, unused).
    let arg = unsafe { ctx.read_at::<u64>(ARG1) }.unwrap_or(0);
    let Some(slot) = SYS_ACTIVE.get_ptr_mut((id as u32) & (ACTIVE_SLOTS - 1)) else {
        return 0;
    };
    // SAFETY: array slot of this thread; another thread's call in flight there is lost, and
    // counted.
    unsafe {
        if (*slot).id != 0 && (*slot).id != id {
            bump(counter::SYSCALL_SLOT_BUSY);
        }
        *slot = SysCall {
            id,
            arg,
            start_ns: now(),
            sock_ts,
            fd,
            shape,
            direction: dir as u8,
            class: c,
            _pad: 0,
        }
    };
    0
}

#[tracepoint]
pub fn sys_read(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::BUF, direction::INGRESS, 0)
}

/// `recvfrom(fd, buf, len, flags, ...)`.
#[tracepoint]
pub fn sys_recvfrom(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::BUF, direction::INGRESS, 40)
}

/// `write` and `sendto`.
#[tracepoint]
pub fn sys_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::BUF, direction::EGRESS, 0)
}

#[tracepoint]
pub fn sys_readv(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::IOV, direction::INGRESS, 0)
}

#[tracepoint]
pub fn sys_writev(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::IOV, direction::EGRESS, 0)
}

/// `recvmsg(fd, msg, flags)`.
#[tracepoint]
pub fn sys_recvmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::MSG, direction::INGRESS, 32)
}

#[tracepoint]
pub fn sys_sendmsg(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::MSG, direction::EGRESS, 0)
}

/// `sendfile(out_fd, in_fd, offset, count)`: the socket is `out_fd`.
#[tracepoint]
pub fn sys_sendfile(ctx: TracePointContext) -> u32 {
    enter(&ctx, shape::COUNT, direction::EGRESS, 0)
}

/// The first iovec of an array: where the first bytes are, and how many.
#[inline(always)]
fn first_iovec(iov: u64) -> Option<(u64, u64)> {
    // SAFETY: helper-checked read of the process's iovec.
    let v = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
    Some((v[0], v[1]))
}

#[inline(always)]
fn class_counter(class: u8) -> u32 {
    match class {
        sock_class::HTTP => counter::SOCK_HTTP,
        sock_class::TLS => counter::SOCK_TLS,
        sock_class::H2 => counter::SOCK_H2,
        _ => counter::SOCK_OTHER,
    }
}

/// Exit of every syscall the `sys_*` programs attach to.
#[tracepoint]
pub fn sys_data_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = SYS_ACTIVE.get_ptr_mut((id as u32) & (ACTIVE_SLOTS - 1)) else {
        return 0;
    };
    // SAFETY: array slot read; most exits (files, pipes, other sockets) leave here.
    if unsafe { (*slot).id } != id {
        return 0;
    }
    // SAFETY: copied out, then released.
    let call = unsafe { *slot };
    // SAFETY: as above.
    unsafe { (*slot).id = 0 };
    // SAFETY: sys_exit layout.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.unwrap_or(-1);
    if ret <= 0 {
        return 0;
    }
    let len = ret as u64;
    // The iovec array, if any; where the first bytes are, and how many of the call's are
    // there.
    let iov = match call.shape {
        shape::IOV => call.arg,
        // SAFETY: helper-checked read of the msghdr's iovec pointer.
        shape::MSG => {
            unsafe { bpf_probe_read_user((call.arg + MSGHDR_IOV) as *const u64) }.unwrap_or(0)
        }
        _ => 0,
    };
    let (buf, avail) = match call.shape {
        shape::BUF => (call.arg, len),
        shape::IOV | shape::MSG if iov != 0 => first_iovec(iov).unwrap_or((0, 0)),
        _ => (0, 0),
    };
    let avail = if avail < len { avail } else { len };
    if call.class == sock_class::UNKNOWN {
        if avail == 0 {
            return 0;
        }
        let mut first = [0u8; 8];
        let n = if avail < 8 { avail } else { 8 };
        // SAFETY: helper-checked read of the first `n <= 8` bytes into `first`.
        let ok = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                first.as_mut_ptr().cast(),
                n as u32,
                buf as *const core::ffi::c_void,
            )
        } == 0;
        if !ok {
            bump(counter::READ_FAILED);
            return 0;
        }
        if let Some(c) = classify(&first, n) {
            let key = ConnKey {
                tgid: (id >> 32) as u32,
                fd: call.fd,
            };
            if let Some(e) = SOCK_CLASS.get_ptr_mut(&key) {
                // SAFETY: this socket's entry; a newer socket on the fd has another stamp.
                unsafe {
                    if (*e).ts_ns == call.sock_ts {
                        (*e).class = c;
                    }
                }
            }
            bump(class_counter(c));
            if c != sock_class::HTTP {
                return 0;
            }
        }
    }
    payload(&Payload {
        kind: kind::SOCK_DATA,
        direction: call.direction as u32,
        id,
        start_ns: call.start_ns,
        conn: 0,
        fd: call.fd,
        flags: 0,
        sock_ts: call.sock_ts,
        buf,
        len,
        avail,
        iov,
    });
    0
}

/// `close(fd)`: a socket whose bytes were copied ends, and its entry goes.
#[tracepoint]
pub fn sys_close(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: close's only argument.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else {
        return 0;
    };
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: fd as i32,
    };
    // SAFETY: map lookup, copied at once.
    let Some(class) = (unsafe { SOCK_CLASS.get(&key) }).map(|c| c.class) else {
        return 0;
    };
    let _ = SOCK_CLASS.remove(&key);
    if class == sock_class::HTTP {
        let rec = CloseRecord {
            kind: kind::SOCK_CLOSE,
            tgid: key.tgid,
            conn: fd,
            ts_ns: now(),
        };
        if EVENTS.output::<CloseRecord>(&rec, wakeup_flags()).is_err() {
            bump(counter::RINGBUF_FULL);
        }
    }
    0
}
