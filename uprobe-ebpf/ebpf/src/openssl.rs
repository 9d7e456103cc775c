//! OpenSSL's `SSL_read`, `SSL_write` and their `_ex` forms: the `ssl_*` uprobes store a TLS
//! call's arguments at entry; `ssl_ret` copies the plaintext at return, when the true length
//! is known, into the ring buffer. Which socket the call used is added meanwhile by the
//! socket syscall probes (`maps::link_tls_call`). `ssl_free` tells user space a connection
//! object is gone.

use crate::emit::{payload, Payload};
use crate::maps::{bump, now, slot, wakeup_flags, EVENTS, TLS_READS};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sightline_common::{
    counter, data_flags, direction, kind, ActiveCall, CloseRecord, ACTIVE_SLOTS,
};

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32, ex: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = slot(id) else {
        bump(counter::ACTIVE_FULL);
        return 0;
    };
    let call = ActiveCall {
        id,
        conn: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        ex_len_ptr: if ex {
            ctx.arg::<u64>(3).unwrap_or(0)
        } else {
            0
        },
        start_ns: now(),
        sock_ts: 0,
        direction: dir,
        fd: -1,
    };
    // SAFETY: array slot of this thread; see ACTIVE_SLOTS for collisions.
    unsafe { *slot = call };
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, false)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, true)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, true)
}

/// `SSL_free(ssl)`: the connection is over. Without this, a freed `SSL*` reused for the next
/// connection would carry the old connection's state, and a first read served from the
/// library's buffer (no syscall, so no fd) could not tell them apart.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let rec = CloseRecord {
        kind: kind::CLOSE,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        conn: ctx.arg::<u64>(0).unwrap_or(0),
        ts_ns: now(),
    };
    if EVENTS.output::<CloseRecord>(&rec, wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
    0
}

#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(slot) = slot(id) else {
        return 0;
    };
    // SAFETY: copied out, then the slot is released.
    let call = unsafe { *slot };
    if call.id != id {
        bump(counter::ORPHAN_RETURN);
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*slot).id = 0 };
    // These functions return C `int`; the upper half of rax is undefined.
    let ret = ctx.ret::<u64>() as i32;
    let len: u64 = if call.ex_len_ptr != 0 {
        if ret != 1 {
            return 0;
        }
        // SAFETY: reads the caller's size_t out-parameter through the checked helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(call.ex_len_ptr as *const u64) } {
            Ok(v) => v,
            Err(_) => {
                bump(counter::READ_FAILED);
                return 0;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    emit(&call, id, len);
    0
}

/// How long before an `SSL_read` that touched no socket the thread's read of a TLS socket may
/// be for it to be the one the library decrypted: node reads, then decrypts, in one callback.
const READ_THEN_DECRYPT_NS: u64 = 10_000_000;

#[inline(always)]
fn emit(call: &ActiveCall, id: u64, len: u64) {
    let (mut fd, mut sock_ts, mut flags) = (call.fd, call.sock_ts, 0);
    if fd < 0 && call.direction == direction::INGRESS {
        if let Some(r) = TLS_READS.get(id as u32 & (ACTIVE_SLOTS - 1)) {
            if r.id == id && call.start_ns.wrapping_sub(r.at_ns) < READ_THEN_DECRYPT_NS {
                (fd, sock_ts, flags) = (r.fd, r.sock_ts, data_flags::FD_FROM_READ);
            }
        }
    }
    payload(&Payload {
        kind: kind::DATA,
        direction: call.direction,
        id,
        start_ns: call.start_ns,
        conn: call.conn,
        fd,
        flags,
        sock_ts,
        buf: call.buf,
        len,
        avail: len,
        iov: 0,
    });
}
