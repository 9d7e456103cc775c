//! OpenSSL's `SSL_read`, `SSL_write` and their `_ex` forms: the `ssl_*` uprobes store a TLS
//! call's arguments at entry; `ssl_ret` copies the plaintext at return, when the true length
//! is known, into the ring buffer. Which socket the call used is added meanwhile by
//! `sockets::fd_link`. `ssl_free` tells user space a connection object is gone.

use crate::maps::{bump, global, now, slot, wakeup_flags, CAPTURE_LEN, EVENTS, SCRATCH};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sightline_common::{
    counter, direction, kind, ActiveCall, CloseRecord, DataHeader, DataRecord, DATA_HEADER_LEN,
    MAX_CAPTURE,
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

#[inline(always)]
fn emit(call: &ActiveCall, id: u64, len: u64) {
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot belongs to this program run.
    let rec: &mut DataRecord = unsafe { &mut *rec };
    let cap = global(&CAPTURE_LEN) as u64;
    let mut n = if len < cap { len } else { cap };
    if n > MAX_CAPTURE as u64 {
        n = MAX_CAPTURE as u64;
    }
    let mut captured = n as u32;
    if n > 0 {
        // SAFETY: `n <= MAX_CAPTURE`, the size of `data`; the helper checks the source.
        let r = unsafe {
            bpf_probe_read_user(
                rec.data.as_mut_ptr().cast(),
                n as u32,
                call.buf as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            bump(counter::READ_FAILED);
            captured = 0;
        }
    }
    rec.header = DataHeader {
        kind: kind::DATA,
        direction: call.direction,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        start_ns: call.start_ns,
        end_ns: now(),
        conn: call.conn,
        fd: call.fd,
        _pad: 0,
        len: if len > u32::MAX as u64 {
            u32::MAX
        } else {
            len as u32
        },
        captured,
        sock_ts: call.sock_ts,
    };
    let size = DATA_HEADER_LEN as u64 + (captured as u64 & (MAX_CAPTURE as u64 * 2 - 1));
    let size = if size > core::mem::size_of::<DataRecord>() as u64 {
        core::mem::size_of::<DataRecord>() as u64
    } else {
        size
    };
    // SAFETY: `size` is bounded by the scratch record's size, which the verifier checks.
    let r = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS) as *mut core::ffi::c_void,
            (rec as *mut DataRecord).cast(),
            size,
            wakeup_flags(),
        )
    };
    if r != 0 {
        bump(counter::RINGBUF_FULL);
    }
}
