//! Payload records into the ring buffer, for every capture point that copies bytes (the TLS
//! library probes and the socket syscalls): one header and up to the capture size of bytes,
//! with the true length, so user space knows when a record was cut.

use crate::maps::{bump, global, now, wakeup_flags, CAPTURE_LEN, EVENTS, SCRATCH};
use aya_ebpf::helpers::generated::{bpf_probe_read_user, bpf_ringbuf_output};
use sightline_common::{counter, DataHeader, DataRecord, DATA_HEADER_LEN, MAX_CAPTURE};

/// What a record says besides its bytes.
pub(crate) struct Payload {
    pub(crate) kind: u32,
    pub(crate) direction: u32,
    /// `bpf_get_current_pid_tgid()` of the call.
    pub(crate) id: u64,
    pub(crate) start_ns: u64,
    pub(crate) conn: u64,
    pub(crate) fd: i32,
    /// `sightline_common::data_flags`.
    pub(crate) flags: u32,
    pub(crate) sock_ts: u64,
    /// Where the bytes are in the process, and how many the call moved.
    pub(crate) buf: u64,
    pub(crate) len: u64,
    /// At most this many of them are copied (below `len` when only part of the call's bytes
    /// are in `buf`, e.g. the first of several iovecs; 0 for none).
    pub(crate) avail: u64,
    /// The call's iovec array when its bytes are spread over several buffers (`buf` is the
    /// first's), else 0: the bytes go on from the next ones, up to the capture size.
    pub(crate) iov: u64,
}

/// Iovecs after the first whose bytes are gathered into a record. A head and its body, or a
/// chunk's size line, data and CRLF (node writes each as its own iovec) fit in four; what is
/// past them counts as length only.
const MORE_IOVECS: u64 = 3;

#[inline(always)]
pub(crate) fn payload(p: &Payload) {
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot belongs to this program run.
    let rec: &mut DataRecord = unsafe { &mut *rec };
    let cap = global(&CAPTURE_LEN) as u64;
    let mut n = if p.avail < cap { p.avail } else { cap };
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
                p.buf as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            bump(counter::READ_FAILED);
            captured = 0;
        } else if p.iov != 0 && n == p.avail {
            captured = gather(rec, p, n, cap) as u32;
        }
    }
    rec.header = DataHeader {
        kind: p.kind,
        direction: p.direction,
        tgid: (p.id >> 32) as u32,
        tid: p.id as u32,
        start_ns: p.start_ns,
        end_ns: now(),
        conn: p.conn,
        fd: p.fd,
        flags: p.flags,
        len: if p.len > u32::MAX as u64 {
            u32::MAX
        } else {
            p.len as u32
        },
        captured,
        sock_ts: p.sock_ts,
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

/// Copies the bytes of the iovecs after the first into `rec`, after the `first` bytes already
/// there, up to `cap` and the call's length; returns how many bytes `rec` holds.
#[inline(always)]
fn gather(rec: &mut DataRecord, p: &Payload, first: u64, cap: u64) -> u64 {
    let mut off = first;
    for i in 1..=MORE_IOVECS {
        if off >= cap || off >= p.len {
            break;
        }
        // SAFETY: helper-checked read of the process's iovec `i`; the call moved more bytes
        // than the iovecs before it hold, so the array has it.
        let Ok(v) = (unsafe {
            aya_ebpf::helpers::bpf_probe_read_user((p.iov + 16 * i) as *const [u64; 2])
        }) else {
            break;
        };
        let mut m = v[1];
        if m > cap - off {
            m = cap - off;
        }
        if m > p.len - off {
            m = p.len - off;
        }
        // Both below MAX_CAPTURE (`off` is at least 1, `cap` at most MAX_CAPTURE): the masks
        // change nothing but let the verifier bound the copy within `data`.
        let at = off & (MAX_CAPTURE as u64 - 1);
        let m = m & (MAX_CAPTURE as u64 - 1);
        if m == 0 {
            continue;
        }
        // SAFETY: `at + m < 2 * MAX_CAPTURE`, the size of `data`; the helper checks the source.
        let r = unsafe {
            bpf_probe_read_user(
                rec.data.as_mut_ptr().add(at as usize).cast(),
                m as u32,
                v[0] as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            break;
        }
        off += m;
    }
    off
}
