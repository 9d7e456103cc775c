//! Go net/http probes: entry uprobes only. Returns are caught by uprobes on the RET
//! instructions the symbolizer found, because a uretprobe rewrites the return address on a
//! goroutine stack that Go may move, which crashes the target.
//!
//! Arguments follow Go's register ABI (1.17+): RAX, RBX, RCX, RDI, … in order; the current
//! goroutine's `g` is in R14. Struct offsets come from `GO_PROCS`, per process, as the
//! symbolizer established them; an unknown offset is never read.
//!
//! This module holds what the programs share: reading Go values (registers, fields, strings,
//! the windows a return probe copies at once), the current goroutine, a request's fields and
//! its `Traceparent` header, a server request's trace, and the socket under a connection. The
//! programs are in `server` (handlers), `client` (round trips) and `goroutine` (which
//! goroutine started which), and `go_empty` is here.

mod client;
mod goroutine;
mod server;

use crate::{
    maps::{
        bump, now, InFlight, Windows, BUCKET_ELEMS, BUCKET_KEYS, BUCKET_OVERFLOW, BUCKET_WORDS,
        EVENTS, GO_PROCS, GO_WINDOWS,
    },
    propagate::traceparent::{parse_traceparent, random_trace},
};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::uprobe,
    maps::ring_buf::RingBufEntry,
    programs::ProbeContext,
};
use sightline_common::{
    counter, go_role, kind, GoHttpRecord, GoKey, GoOffsets, InjectKey, GO_NO_OFFSET,
    GO_TRACEPARENT_CAP,
};

#[inline(always)]
pub(crate) fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: the kernel hands every uprobe its saved registers.
    unsafe { &*ctx.regs }
}

#[inline(always)]
pub(crate) fn read<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
pub(crate) fn field<T: Copy>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == GO_NO_OFFSET {
        return None;
    }
    read(base + off as u64)
}

/// Copies the Go string whose header (pointer, length) is at `base + off` into `dst`, cut to
/// its capacity; returns the string's true length.
#[inline(always)]
fn go_string<const N: usize>(base: u64, off: u32, dst: &mut [u8; N]) -> u32 {
    let Some(hdr) = field::<[u64; 2]>(base, off) else {
        return 0;
    };
    copy_string(hdr[0], hdr[1], dst)
}

/// Copies `len` bytes at `ptr` into `dst`, cut to its capacity; returns `len`.
#[inline(always)]
fn copy_string<const N: usize>(ptr: u64, len: u64, dst: &mut [u8; N]) -> u32 {
    let n = if len < N as u64 { len } else { N as u64 - 1 };
    let n = (n as u32) & (N as u32 - 1);
    if n > 0 && ptr != 0 {
        // SAFETY: `n < N`, the destination's size; the helper checks the source.
        let r =
            unsafe { generated::bpf_probe_read_user(dst.as_mut_ptr().cast(), n, ptr as *const _) };
        if r != 0 {
            return 0;
        }
    }
    if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    }
}

/// Copies `len` bytes at `base` into `dst`; returns how many are there to use (0 if none).
#[inline(always)]
fn load<const N: usize>(dst: &mut [u64; N], base: u64, len: u32) -> u32 {
    // A mask, not a range check: the verifier follows it where LLVM folds a range check into
    // arithmetic it cannot. Windows end before `N * 8` (see `go_window`'s cap).
    let len = len & ((N * 8) as u32 - 1);
    if base == 0 || len == 0 {
        return 0;
    }
    // SAFETY: `len` is at most the destination's size; the helper checks the source.
    let r =
        unsafe { generated::bpf_probe_read_user(dst.as_mut_ptr().cast(), len, base as *const _) };
    if r == 0 {
        len
    } else {
        0
    }
}

/// The 8-byte field at `off` of the struct at `base`, from its window `w` (of which `len` bytes
/// hold it) when it is there, else read on its own; 0 when unknown.
#[inline(always)]
fn word<const N: usize>(w: &[u64; N], len: u32, base: u64, off: u32) -> u64 {
    if off == GO_NO_OFFSET || base == 0 {
        return 0;
    }
    let i = (off / 8) as usize;
    if off % 8 == 0 && off.wrapping_add(8) <= len && i < N {
        // LLVM would drop a mask it can prove redundant, and check the bound on a copy of the
        // index the verifier cannot relate to this one; after a volatile copy the mask stays,
        // and bounds the index by itself (windows are powers of two).
        // SAFETY: a read of a local.
        let i = unsafe { core::ptr::read_volatile(&i) } & (N - 1);
        return w[i];
    }
    read::<u64>(base + off as u64).unwrap_or(0)
}

/// The Go string at `off` of the struct at `base`, windowed as for [`word`], into `dst`.
#[inline(always)]
fn wstring<const N: usize, const M: usize>(
    w: &[u64; N],
    len: u32,
    base: u64,
    off: u32,
    dst: &mut [u8; M],
) -> u32 {
    if off == GO_NO_OFFSET || base == 0 {
        return 0;
    }
    let ptr = word(w, len, base, off);
    let n = word(w, len, base, off + 8);
    copy_string(ptr, n, dst)
}

#[inline(always)]
fn goid(off: &GoOffsets, g: u64) -> Option<u64> {
    field::<u64>(g, off.g_goid)
}

/// Sets every scalar of a freshly reserved record (its strings are bounded by their lengths).
#[inline(always)]
fn init(rec: &mut GoHttpRecord, role: u32, tgid: u32, goid: u64, start_ns: u64) {
    rec.kind = kind::GO_HTTP;
    rec.role = role;
    rec.tgid = tgid;
    rec.fd = -1;
    rec.goid = goid;
    rec.start_ns = start_ns;
    rec.end_ns = now();
    rec.parent_goid = 0;
    rec.parent_start_ns = 0;
    rec.status = 0;
    rec.proto_major = 0;
    rec.proto_minor = 0;
    rec.tls = 0;
    rec.trace_flags = 0;
    rec.trace_given = 0;
    rec.injected = 0;
    rec._pad = [0; 4];
    rec.trace_id = [0; 16];
    rec.span_id = 0;
    rec.parent_span_id = 0;
    rec.sock_gen = 0;
    rec.method_len = 0;
    rec.path_len = 0;
    rec.query_len = 0;
    rec.host_len = 0;
    rec.addr_len = 0;
    rec.pattern_len = 0;
    rec.scheme_len = 0;
    rec._pad2 = 0;
}

/// Reads what a `*http.Request` says about the call; returns how much of the request's window
/// `w.req` holds.
#[inline(always)]
fn read_request(off: &GoOffsets, req: u64, rec: &mut GoHttpRecord, w: &mut Windows) -> u32 {
    let rl = load(&mut w.req, req, off.req_window);
    rec.method_len = wstring(&w.req, rl, req, off.req_method, &mut rec.method);
    let url = word(&w.req, rl, req, off.req_url);
    if url != 0 {
        let ul = load(&mut w.url, url, off.url_window);
        rec.path_len = wstring(&w.url, ul, url, off.url_path, &mut rec.path);
        rec.query_len = wstring(&w.url, ul, url, off.url_raw_query, &mut rec.query);
        rec.scheme_len = wstring(&w.url, ul, url, off.url_scheme, &mut rec.scheme);
        if rec.role == go_role::CLIENT {
            rec.host_len = wstring(&w.url, ul, url, off.url_host, &mut rec.host);
        }
    }
    if rec.role == go_role::SERVER {
        rec.host_len = wstring(&w.req, rl, req, off.req_host, &mut rec.host);
    }
    rec.proto_major = word(&w.req, rl, req, off.req_proto_major) as u16;
    rec.proto_minor = word(&w.req, rl, req, off.req_proto_minor) as u16;
    rec.tls = (word(&w.req, rl, req, off.req_tls) != 0) as u8;
    rl
}

/// Top hashes below this mark empty or evacuated slots.
const MIN_TOP_HASH: u8 = 5;
/// Buckets looked at: 2^3, enough for 52 headers at Go's load factor.
const MAX_BUCKETS_LOG2: u8 = 3;

/// What a request's header map says of a `traceparent`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The whole map was read and no key is `traceparent` in any case.
    None,
    /// A key is `traceparent` (in any case); its first value's length is copied.
    Found(u32),
    /// The map could not be read whole: too big, growing, a chain too long, an unknown
    /// offset or unreadable memory. Whoever writes a traceparent must then not.
    Unknown,
}

/// Reads the header map `hmap` for a key `traceparent`, in any case (Go canonicalises the
/// names it parses and `Header.Set` writes, but a program may assign `Header["traceparent"]`
/// itself), copying its first value into `w.tp`.
#[inline(always)]
fn header_traceparent(off: &GoOffsets, hmap: u64, w: &mut Windows) -> Seen {
    if off.hmap_buckets == GO_NO_OFFSET || off.hmap_b == GO_NO_OFFSET {
        return Seen::Unknown;
    }
    // A nil map: no header at all.
    if hmap == 0 {
        return Seen::None;
    }
    // Most requests carry a few headers, some none: an empty map costs one read.
    match field::<u64>(hmap, off.hmap_count) {
        Some(0) => return Seen::None,
        Some(_) => {}
        None => return Seen::Unknown,
    }
    let Some(b) = field::<u8>(hmap, off.hmap_b) else {
        return Seen::Unknown;
    };
    if b > MAX_BUCKETS_LOG2 {
        return Seen::Unknown;
    }
    // `oldbuckets` follows `buckets` in every classic map layout: a map being grown keeps
    // some of its entries there until they are moved.
    let Some([buckets, old]) = field::<[u64; 2]>(hmap, off.hmap_buckets) else {
        return Seen::Unknown;
    };
    if buckets == 0 || old != 0 {
        return Seen::Unknown;
    }
    let n = 1u64 << b;
    let size = BUCKET_WORDS as u64 * 8;
    for i in 0..(1u64 << MAX_BUCKETS_LOG2) {
        if i >= n {
            break;
        }
        let mut bucket = buckets + i * size;
        // A bucket and one overflow bucket, for a crowded first one; a longer chain is not
        // read.
        for hop in 0..3 {
            if bucket == 0 {
                break;
            }
            if hop == 2 || load(&mut w.bucket, bucket, size as u32) == 0 {
                return Seen::Unknown;
            }
            if let Some(len) = traceparent_in_bucket(&w.bucket, &mut w.tp) {
                return Seen::Found(len);
            }
            bucket = w.bucket[BUCKET_OVERFLOW];
        }
    }
    Seen::None
}

#[inline(always)]
fn traceparent_in_bucket(
    bucket: &[u64; BUCKET_WORDS],
    out: &mut [u8; GO_TRACEPARENT_CAP],
) -> Option<u32> {
    let tophash = bucket[0].to_ne_bytes();
    for j in 0..8usize {
        if tophash[j] < MIN_TOP_HASH {
            continue;
        }
        let (ptr, len) = (bucket[BUCKET_KEYS + 2 * j], bucket[BUCKET_KEYS + 2 * j + 1]);
        if len != 11 {
            continue;
        }
        let Some(name) = read::<[u8; 11]>(ptr) else {
            // Unreadable: it may be the one.
            return Some(0);
        };
        // Every byte of the name is a letter, so folding ASCII case is setting bit 5.
        let mut same = true;
        for (k, c) in b"traceparent".iter().enumerate() {
            same &= name[k] | 0x20 == *c;
        }
        if !same {
            continue;
        }
        // []string: the first element's string header.
        let (elems, count) = (
            bucket[BUCKET_ELEMS + 3 * j],
            bucket[BUCKET_ELEMS + 3 * j + 1],
        );
        if count == 0 || elems == 0 {
            return Some(0);
        }
        return Some(go_string::<GO_TRACEPARENT_CAP>(elems, 0, out));
    }
    None
}

/// A server request's trace: its incoming traceparent's (from the header map `hmap`) when it
/// carries a valid one, else a new one. Decided when first needed, by the first client call
/// its handler makes or else at its return (where the request's window gives the map for free),
/// so a request that calls nothing reads its headers once.
#[inline(always)]
fn settle_trace(off: &GoOffsets, hmap: u64, call: &mut InFlight, w: &mut Windows) {
    call.traced = 1;
    let len = match header_traceparent(off, hmap, w) {
        Seen::Found(len) => len,
        Seen::None | Seen::Unknown => 0,
    };
    if let Some((trace, parent, flags)) = parse_traceparent(&w.tp, len) {
        call.trace = trace;
        call.parent_span = parent;
        call.flags = flags;
        call.given = 1;
        return;
    }
    call.trace = random_trace();
    call.parent_span = 0;
    call.flags = 1;
    call.given = 0;
}

#[inline(always)]
fn in_flight(start_ns: u64, req: u64, obj: u64) -> InFlight {
    InFlight {
        start_ns,
        req,
        obj,
        parent_goid: 0,
        parent_start_ns: 0,
        trace: [0; 16],
        span: 0,
        parent_span: 0,
        fd: -1,
        tls: 0,
        proto_major: 0,
        flags: 0,
        given: 0,
        inject: InjectKey::default(),
        xnet: 0,
        traced: 0,
        want_write: 0,
        written: 0,
        _pad: [0; 4],
        writer: 0,
    }
}

/// A record's room in the ring buffer, and this CPU's scratch windows to fill it from.
#[inline(always)]
fn reserve() -> Option<(RingBufEntry<GoHttpRecord>, &'static mut Windows)> {
    // SAFETY: this CPU's scratch, used by this program run only.
    let w = unsafe { &mut *GO_WINDOWS.get_ptr_mut(0)? };
    let Some(entry) = EVENTS.reserve::<GoHttpRecord>(0) else {
        bump(counter::RINGBUF_FULL);
        return None;
    };
    Some((entry, w))
}

/// The current goroutine's key, with the process's offsets.
#[inline(always)]
pub(crate) fn current(ctx: &ProbeContext) -> Option<(&'static GoOffsets, GoKey)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: map lookup; the value stays valid while the program runs (RCU), and is used in
    // place: copying it costs more than the fields read from it.
    let off = unsafe { GO_PROCS.get(&tgid) }?;
    let goid = goid(off, regs(ctx).r14)?;
    Some((
        off,
        GoKey {
            tgid,
            _pad: 0,
            goid,
        },
    ))
}

/// What the call's request header map says of a `traceparent` of the program's own, which
/// sightline never adds a second to.
#[inline(always)]
fn request_traceparent(off: &GoOffsets, call: &InFlight) -> Seen {
    let Some(w) = GO_WINDOWS.get_ptr_mut(0) else {
        return Seen::Unknown;
    };
    // SAFETY: this CPU's scratch, used by this program run only.
    let w = unsafe { &mut *w };
    let Some(hmap) = field::<u64>(call.req, off.req_header) else {
        return Seen::Unknown;
    };
    header_traceparent(off, hmap, w)
}

/// The connection under a `*tls.Conn` (its `conn`, a net.Conn whose data word follows the
/// itab word) when `tls`, else `c` itself.
#[inline(always)]
fn below_tls(off: &GoOffsets, c: u64, tls: bool) -> Option<u64> {
    if tls {
        field::<u64>(c, off.tls_conn_conn.wrapping_add(8))
    } else {
        Some(c)
    }
}

/// The fd of a *net.TCPConn (or *net.UnixConn): net.conn.fd → netFD.pfd.Sysfd.
#[inline(always)]
fn conn_fd(off: &GoOffsets, c: u64) -> i32 {
    let Some(nfd) = field::<u64>(c, off.net_conn_fd) else {
        return -1;
    };
    if off.netfd_pfd == GO_NO_OFFSET || off.fd_sysfd == GO_NO_OFFSET {
        return -1;
    }
    field::<i64>(nfd, off.netfd_pfd.wrapping_add(off.fd_sysfd))
        .map(|fd| fd as i32)
        .unwrap_or(-1)
}

/// Does nothing but count: benchmarks attach it at exactly the points the Go probes use, to
/// measure what the uprobes themselves cost and how many fire per request.
#[uprobe]
pub fn go_empty(_ctx: ProbeContext) -> u32 {
    bump(counter::EMPTY_PROBE_HITS);
    0
}
