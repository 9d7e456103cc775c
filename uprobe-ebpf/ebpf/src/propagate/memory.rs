//! `traceparent` written into a Go client's request in the process's own memory, for the
//! requests the socket path (`socket`) cannot reach: HTTPS, whose bytes are encrypted
//! before any socket sees them, and HTTP/2, whose headers are HPACK-compressed frames. The
//! client probes (`go::client`) leave an HTTP/1 request's traceparent under its connection's
//! writer in `PENDING_WRITE`, and mark an HTTP/2 round trip `want_write`.
//!
//! It takes `bpf_probe_write_user`. Kernel lockdown refuses that helper, and then these
//! programs fail to load, `WRITE_ON` stays 0 and user space reports it once.
//!
//! Every write is bounded and checked first, because a wrong byte here corrupts a request:
//! - Only the request's own `bufio.Writer` is written, and only its free room
//!   (`buf[n:len(buf)]`), then `n` is advanced: what `bufio.Writer.Write` does itself. The
//!   goroutine that owns the writer is the one stopped in the probe, so nothing else touches
//!   it meanwhile. No pointer is ever written, so Go's garbage collector has nothing to see.
//! - HTTP/1: the line goes in where `transferWriter.writeHeader` is about to add the framing
//!   headers, after the request line, Host and User-Agent.
//! - HTTP/2: the HEADERS frame that `writeHeaders` just put into the buffer is found where the
//!   entry probe saw the buffer end, and checked (length, type, END_HEADERS, no padding, its
//!   stream) before the field is appended to its block and its length raised.
//! - When anything does not match (no room, the frame was flushed early or split, a failed
//!   write), the request is sent as the program wrote it, and counted.

use super::traceparent::traceparent_value;
use crate::{
    go::{current, field, read, regs},
    maps::{
        bump, inserted, now, H2Headers, InFlight, WriterKey, GO_CLIENT, GO_PARENT, GO_PROCS,
        H2_HEADERS, PENDING_WRITE,
    },
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::uprobe,
    programs::ProbeContext,
};
use sightline_common::{
    counter, table, GoKey, GoOffsets, PendingTrace, PENDING_TRACE_NS, TRACEPARENT_HPACK_LEN,
    TRACEPARENT_LINE_LEN,
};

/// An HTTP/2 frame header: 9 bytes, the first 3 the payload length.
const FRAME_HEADER: u64 = 9;
const FRAME_HEADERS: u8 = 1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;

/// `bpf_probe_write_user` of `len` bytes from `src` to `dst` in the current process.
#[inline(always)]
fn write_user(dst: u64, src: *const u8, len: u32) -> Result<(), ()> {
    // SAFETY: the helper writes only into the current process's mapped, writable memory and
    // fails instead of faulting; the callers bound `dst..dst+len` to memory they checked.
    let r = unsafe { generated::bpf_probe_write_user(dst as *mut _, src as *const _, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// The writer's buffer (pointer, len) and fill level, when it has `room` bytes free.
#[inline(always)]
fn free_room(off: &GoOffsets, writer: u64, room: u64) -> Option<(u64, u64)> {
    let buf = field::<[u64; 3]>(writer, off.bufio_buf)?;
    let n = field::<u64>(writer, off.bufio_n)?;
    if buf[0] == 0 || n > buf[1] || buf[1] - n < room {
        return None;
    }
    Some((buf[0], n))
}

/// `net/http.(*transferWriter).writeHeader(t, w io.Writer, trace)`: RBX/RCX = w (itab, data).
/// On a client connection w is `persistConn.bw`, the key a pending line waits under.
#[uprobe]
pub fn go_tp_h1(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = WriterKey {
        tgid,
        _pad: 0,
        writer: regs(&ctx).rcx,
    };
    let Some(p) = PENDING_WRITE.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: the writer's map value; its write loop is the goroutine stopped here.
    let pending = unsafe { &mut *p };
    if pending.done != 0 || now().wrapping_sub(pending.at_ns) > PENDING_TRACE_NS {
        return 0;
    }
    // SAFETY: map lookup.
    let Some(off) = (unsafe { GO_PROCS.get(&tgid) }) else {
        return 0;
    };
    let ok = append_line(off, key.writer, pending).is_ok();
    pending.done = if ok { 1 } else { 2 };
    bump(if ok {
        counter::WRITTEN_IN_PROCESS
    } else {
        counter::WRITE_SKIPPED
    });
    0
}

#[inline(always)]
fn append_line(off: &GoOffsets, writer: u64, p: &PendingTrace) -> Result<(), ()> {
    const LEN: usize = TRACEPARENT_LINE_LEN as usize;
    let (buf, n) = free_room(off, writer, LEN as u64).ok_or(())?;
    let mut line = [0u8; LEN];
    line[..13].copy_from_slice(b"traceparent: ");
    traceparent_value(&mut line, 13, p.trace_id, p.span_id, p.flags);
    line[LEN - 2] = b'\r';
    line[LEN - 1] = b'\n';
    // The bytes first: should advancing `n` then fail, they lie past the end, unsent.
    write_user(buf + n, line.as_ptr(), LEN as u32)?;
    let n2 = n + LEN as u64;
    write_user(writer + off.bufio_n as u64, (&n2 as *const u64).cast(), 8)
}

/// `net/http.(*http2ClientConn).writeHeaders(cc, streamID uint32, endStream bool,
/// maxFrameSize int, hdrs []byte)`: RAX = cc, RBX = streamID, RDI = maxFrameSize, R8 =
/// len(hdrs). Runs on the request's own writer goroutine, which its round trip started.
#[uprobe]
pub fn go_tp_h2_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let r = regs(&ctx);
    let Some((client_goid, call)) = client_call(off, key, r.r14) else {
        return 0;
    };
    // Written already: a second block for the same attempt is its trailers.
    if call.want_write == 0 || call.written != 0 {
        return 0;
    }
    let Some(writer) = field::<u64>(r.rax, off.h2cc_bw) else {
        return 0;
    };
    let Some(start) = field::<u64>(writer, off.bufio_n) else {
        return 0;
    };
    let h = H2Headers {
        writer,
        start,
        block: r.r8,
        max_frame: r.rdi,
        client_goid,
        trace: call.trace,
        span: call.span,
        stream: r.rbx as u32,
        flags: call.flags,
        _pad: [0; 3],
    };
    inserted(table::H2_HEADERS, H2_HEADERS.insert(&key, &h, 0));
    0
}

/// The round trip a request belongs to: this goroutine's own, or (HTTP/2 writes headers on
/// a goroutine the round trip starts) its creator's.
#[inline(always)]
fn client_call(off: &GoOffsets, key: GoKey, g: u64) -> Option<(u64, InFlight)> {
    // SAFETY: map lookups, copied at once.
    if let Some(c) = unsafe { GO_CLIENT.get(&key) } {
        return Some((key.goid, *c));
    }
    let parent = match field::<u64>(g, off.g_parent_goid).filter(|p| *p != 0) {
        Some(p) => p,
        // SAFETY: as above.
        None => *unsafe { GO_PARENT.get(&key) }?,
    };
    let k = GoKey {
        tgid: key.tgid,
        _pad: 0,
        goid: parent,
    };
    // SAFETY: as above.
    unsafe { GO_CLIENT.get(&k) }.map(|c| (parent, *c))
}

/// The call to `cc.bw.Flush()` at the end of `writeHeaders`: RAX = cc.bw.
#[uprobe]
pub fn go_tp_h2_flush(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    // SAFETY: map lookup, copied at once.
    let Some(h) = (unsafe { H2_HEADERS.get(&key) }).copied() else {
        return 0;
    };
    let _ = H2_HEADERS.remove(&key);
    let ok = regs(&ctx).rax == h.writer && extend_frame(off, &h).is_ok();
    if ok {
        let k = GoKey {
            tgid: key.tgid,
            _pad: 0,
            goid: h.client_goid,
        };
        if let Some(c) = GO_CLIENT.get_ptr_mut(&k) {
            // SAFETY: the round trip's map value; its goroutine waits for this one.
            unsafe {
                if (*c).span == h.span {
                    (*c).written = 1;
                }
            }
        }
    }
    bump(if ok {
        counter::WRITTEN_IN_PROCESS
    } else {
        counter::WRITE_SKIPPED
    });
    0
}

/// Appends the traceparent field to the request's HEADERS frame, which must be the whole
/// header block, still whole in the buffer where the entry probe saw the buffer end.
#[inline(always)]
fn extend_frame(off: &GoOffsets, h: &H2Headers) -> Result<(), ()> {
    const LEN: usize = TRACEPARENT_HPACK_LEN as usize;
    let (buf, n) = free_room(off, h.writer, LEN as u64).ok_or(())?;
    if n != h.start + FRAME_HEADER + h.block || h.block + LEN as u64 > h.max_frame {
        return Err(());
    }
    let head = read::<[u8; 9]>(buf + h.start).ok_or(())?;
    let length = (head[0] as u64) << 16 | (head[1] as u64) << 8 | head[2] as u64;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    if length != h.block
        || head[3] != FRAME_HEADERS
        || head[4] & FLAG_END_HEADERS == 0
        || head[4] & FLAG_PADDED != 0
        || stream != h.stream
    {
        return Err(());
    }
    // Literal header field without indexing, new name (RFC 7541 6.2.2), no Huffman coding.
    let mut field = [0u8; LEN];
    field[0] = 0;
    field[1] = 11;
    field[2..13].copy_from_slice(b"traceparent");
    field[13] = 55;
    traceparent_value(&mut field, 14, h.trace, h.span, h.flags);
    write_user(buf + n, field.as_ptr(), LEN as u32)?;
    let new_len = length + LEN as u64;
    let len_bytes = [(new_len >> 16) as u8, (new_len >> 8) as u8, new_len as u8];
    write_user(buf + h.start, len_bytes.as_ptr(), 3)?;
    let n2 = n + LEN as u64;
    if write_user(h.writer + off.bufio_n as u64, (&n2 as *const u64).cast(), 8).is_err() {
        // The frame must not claim bytes that are not sent.
        let old = [head[0], head[1], head[2]];
        let _ = write_user(buf + h.start, old.as_ptr(), 3);
        return Err(());
    }
    Ok(())
}
