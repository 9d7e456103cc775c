//! `traceparent` injection without writing into any process, so it works under kernel
//! lockdown, where `bpf_probe_write_user` is refused.
//!
//! The client probes decide a call's trace and span ids before its request is written and
//! leave them in `PENDING_TRACE` under the connection's ends. The request's bytes then pass
//! through `go_inject`, an `sk_msg` program on the socket, which inserts a `traceparent` line
//! after the request line as the kernel sends them. Only the sockets of traced Go processes
//! take this path: `go_connect4/6` mark them as they connect and `go_sockops` adds them to
//! the sockhash once established. Everything else on the host is left alone.

use super::traceparent::traceparent_value;
use crate::maps::{
    bump, inserted, now, GO_PROCS, INJECT_ON, INJECT_SOCKS, INJECT_WANTED, PENDING_TRACE,
};
use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{cgroup_sock_addr, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
};
use sightline_common::{counter, table, InjectKey, PENDING_TRACE_NS, TRACEPARENT_LINE_LEN};

/// Longest request line looked at: a line longer than this is sent untouched (and counted).
const MAX_LINE: u32 = 1024;
/// The head must end within this many bytes of the message's start, so that every header
/// line is seen: a head that already carries a `traceparent` is sent untouched, whatever the
/// process's header map looked like (a non-canonical key, a map too big to read).
const MAX_HEAD: u32 = 1024;

#[inline(always)]
fn mark(ctx: &SockAddrContext) {
    const SOCK_STREAM: u32 = 1;
    // SAFETY: the kernel hands the program its context.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return;
    }
    if !INJECT_ON.get(0).is_some_and(|on| *on == 1) {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: map lookup.
    if unsafe { GO_PROCS.get(&tgid) }.is_none() {
        return;
    }
    // SAFETY: the context is a socket address context, which this helper takes.
    let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    inserted(table::INJECT_WANTED, INJECT_WANTED.insert(&cookie, &1, 0));
}

#[cgroup_sock_addr(connect4)]
pub fn go_connect4(ctx: SockAddrContext) -> i32 {
    mark(&ctx);
    // 1 lets the connect proceed; this program never changes it.
    1
}

#[cgroup_sock_addr(connect6)]
pub fn go_connect6(ctx: SockAddrContext) -> i32 {
    mark(&ctx);
    1
}

#[sock_ops]
pub fn go_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    // SAFETY: the context is a sock_ops context, which this helper takes.
    let mut cookie = unsafe { generated::bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: map lookup.
    if unsafe { INJECT_WANTED.get(&cookie) }.is_none() {
        return 1;
    }
    let _ = INJECT_WANTED.remove(&cookie);
    // SAFETY: the kernel hands the program its context.
    let ops = unsafe { &mut *ctx.ops };
    if !inserted(
        table::INJECT_SOCKS,
        INJECT_SOCKS.update(&mut cookie, ops, BPF_ANY as u64),
    ) {
        bump(counter::INJECT_SOCKS_FULL);
    }
    1
}

/// The connection a message is sent on, and the process sending it, as the client probes key
/// them.
#[inline(always)]
fn key_of(ctx: &SkMsgContext) -> InjectKey {
    // SAFETY: the kernel hands the program its context.
    let m = unsafe { &*ctx.msg };
    // The remote port is in network order, and on little-endian kernels shifted into the
    // upper half; a port is never 0, so whichever half holds it is the one not zero.
    let rp = m.remote_port;
    let rp = if rp & 0xffff == 0 { rp >> 16 } else { rp };
    let mut k = InjectKey {
        family: m.family as u16,
        local_port: m.local_port as u16,
        remote_port: u16::from_be(rp as u16),
        _pad: 0,
        remote_addr: [0; 16],
        // sk_msg runs in the sender's sendmsg().
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    // The verifier allows context loads only at constant offsets from the context itself, so
    // each word is read on its own, never through a computed pointer.
    // SAFETY: loads of context fields.
    let words = unsafe {
        if m.family == 2 {
            [core::ptr::read_volatile(&m.remote_ip4), 0, 0, 0]
        } else {
            [
                core::ptr::read_volatile(&m.remote_ip6[0]),
                core::ptr::read_volatile(&m.remote_ip6[1]),
                core::ptr::read_volatile(&m.remote_ip6[2]),
                core::ptr::read_volatile(&m.remote_ip6[3]),
            ]
        }
    };
    for (i, w) in words.iter().enumerate() {
        k.remote_addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    k
}

#[sk_msg]
pub fn go_inject(ctx: SkMsgContext) -> u32 {
    let key = key_of(&ctx);
    let Some(p) = PENDING_TRACE.get_ptr_mut(&key) else {
        return SK_PASS;
    };
    // SAFETY: the connection's map value; its client is blocked in this send.
    let pending = unsafe { &mut *p };
    if pending.done != 0 || now().wrapping_sub(pending.at_ns) > PENDING_TRACE_NS {
        return SK_PASS;
    }
    match insert(&ctx, pending.trace_id, pending.span_id, pending.flags) {
        Ok(()) => {
            pending.done = 1;
            bump(counter::INJECTED);
        }
        Err(()) => {
            // Only the first bytes of a request can take the line; later sends (its body) are
            // not looked at again.
            pending.done = 2;
            bump(counter::INJECT_SKIPPED);
        }
    }
    SK_PASS
}

/// Writes `traceparent: 00-<trace>-<span>-<flags>\r\n` after the request line that starts the
/// message, or leaves the message exactly as it was.
#[inline(always)]
fn insert(ctx: &SkMsgContext, trace: [u8; 16], span: u64, flags: u8) -> Result<(), ()> {
    let size = ctx.size();
    let want = if size < MAX_HEAD { size } else { MAX_HEAD };
    // SAFETY: the helper bounds everything itself.
    if unsafe { generated::bpf_msg_pull_data(ctx.msg, 0, want, 0) } != 0 {
        return Err(());
    }
    // Before the request line is looked for: the scan then starts at a constant offset, and
    // the verifier checks it once rather than once per request line length.
    if carries_traceparent(ctx)? {
        return Err(());
    }
    let at = request_line_end(ctx)?;
    // The line must end with " HTTP/1.x\r\n" and more of the head must follow it.
    if at + 1 >= size {
        return Err(());
    }
    ctx.push_data(at + 1, TRACEPARENT_LINE_LEN, 0)
        .map_err(|_| ())?;
    if fill(ctx, at + 1, trace, span, flags).is_err() {
        // Never leave unwritten bytes in the stream.
        let _ = ctx.pop_data(at + 1, TRACEPARENT_LINE_LEN, 0);
        return Err(());
    }
    Ok(())
}

/// The message's bytes, loaded afresh: pointers of their own, so that how far an earlier scan
/// checked them is not part of the verifier's state afterwards (else every way that scan ends
/// would have what follows verified again, past the verifier's limit).
#[inline(always)]
fn bounds(ctx: &SkMsgContext) -> (usize, usize) {
    // SAFETY: loads of the context's own data pointers, at constant offsets.
    unsafe {
        let m = ctx.msg;
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*m).__bindgen_anon_1.data)) as usize,
            core::ptr::read_volatile(core::ptr::addr_of!((*m).__bindgen_anon_2.data_end)) as usize,
        )
    }
}

/// The offset of the `\n` that ends an HTTP/1.x request line at the start of the message.
#[inline(always)]
fn request_line_end(ctx: &SkMsgContext) -> Result<u32, ()> {
    let (data, end) = bounds(ctx);
    // A method: an uppercase token, then a space.
    let mut i: usize = 0;
    while i < 16 {
        if data + i + 1 > end {
            return Err(());
        }
        // SAFETY: bounds checked just above against the packet end.
        let c = unsafe { *((data + i) as *const u8) };
        if c == b' ' && i > 0 {
            break;
        }
        if !c.is_ascii_uppercase() {
            return Err(());
        }
        i += 1;
    }
    while i < MAX_LINE as usize {
        if data + i + 1 > end {
            return Err(());
        }
        // SAFETY: as above.
        let c = unsafe { *((data + i) as *const u8) };
        if c == b'\n' {
            break;
        }
        i += 1;
    }
    if i < 10 || i >= MAX_LINE as usize {
        return Err(());
    }
    let tail = data + i - 10;
    if tail + 11 > end {
        return Err(());
    }
    // SAFETY: the 11 bytes up to and including the '\n' are inside the packet.
    let t = unsafe { *(tail as *const [u8; 11]) };
    if &t[..8] != b" HTTP/1." || t[9] != b'\r' {
        return Err(());
    }
    Ok(i as u32)
}

/// Whether a line of the head at the message's start is named `traceparent`, in any case (the
/// first line, the request line, never is). An error when the head does not end within the
/// message's first [`MAX_HEAD`] bytes: what cannot be checked is not written to.
#[inline(always)]
fn carries_traceparent(ctx: &SkMsgContext) -> Result<bool, ()> {
    const NAME_LEN: usize = b"traceparent:".len();
    let (data, end) = bounds(ctx);
    // The request line starts with a method, never with '\r' or a header name.
    let mut line_start = false;
    let mut n: usize = 0;
    while n < MAX_HEAD as usize {
        let i = n;
        if data + i + 1 > end {
            return Err(());
        }
        // SAFETY: bounds checked just above against the message end.
        let c = unsafe { *((data + i) as *const u8) };
        if line_start {
            if c == b'\r' {
                return Ok(false);
            }
            if c | 0x20 == b't' {
                if data + i + NAME_LEN > end {
                    return Err(());
                }
                // One comparison per word, not per byte: each branch here is verified once per
                // byte of the head. ASCII letters differ from their lowercase by 0x20, and ':'
                // has that bit.
                // SAFETY: the name's length from `i` is inside the message, just checked.
                let (w8, w4) = unsafe {
                    (
                        core::ptr::read_unaligned((data + i) as *const u64),
                        core::ptr::read_unaligned((data + i + 8) as *const u32),
                    )
                };
                let diff = ((w8 | 0x2020_2020_2020_2020) ^ u64::from_le_bytes(*b"tracepar"))
                    | ((w4 | 0x2020_2020) ^ u32::from_le_bytes(*b"ent:")) as u64;
                if diff == 0 {
                    return Ok(true);
                }
            }
        }
        line_start = c == b'\n';
        n += 1;
    }
    Err(())
}

#[inline(always)]
fn fill(ctx: &SkMsgContext, at: u32, trace: [u8; 16], span: u64, flags: u8) -> Result<(), ()> {
    const LEN: usize = TRACEPARENT_LINE_LEN as usize;
    // SAFETY: the helper bounds everything itself.
    if unsafe { generated::bpf_msg_pull_data(ctx.msg, at, at + LEN as u32, 0) } != 0 {
        return Err(());
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + LEN > end {
        return Err(());
    }
    // SAFETY: `LEN` bytes from `data` are inside the message, just checked.
    let out = unsafe { &mut *(data as *mut [u8; LEN]) };
    out[..13].copy_from_slice(b"traceparent: ");
    traceparent_value(out, 13, trace, span, flags);
    out[68] = b'\r';
    out[69] = b'\n';
    Ok(())
}
