//! Go net/http probes: entry uprobes only. Returns are caught by uprobes on the RET
//! instructions the symbolizer found, because a uretprobe rewrites the return address on a
//! goroutine stack that Go may move, which crashes the target.
//!
//! Arguments follow Go's register ABI (1.17+): RAX, RBX, RCX, RDI, … in order; the current
//! goroutine's `g` is in R14. Struct offsets come from `GO_PROCS`, per process, as the
//! symbolizer established them; an unknown offset is never read.

use crate::{bump, now, wakeup_flags, CONN_INFO, EVENTS, SOCK_GEN};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_user, generated},
    macros::{map, uprobe},
    maps::{ring_buf::RingBufEntry, HashMap, LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use sightline_common::{
    counter, go_role, kind, sock_gen_slot, ConnKey, GoHttpRecord, GoKey, GoOffsets, InjectKey,
    PendingTrace, GO_NO_OFFSET, GO_REQ_WINDOW, GO_TRACEPARENT_CAP, GO_URL_WINDOW,
};

#[map]
pub(crate) static GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(4096, 0);

/// What an entry probe keeps for the return: pointers to read then, not the values. Reading
/// everything once at return, straight into the ring buffer, costs a third of copying a whole
/// record into a map at entry and out again.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct InFlight {
    start_ns: u64,
    /// The `*http.Request`.
    req: u64,
    /// Server: the ResponseWriter's data pointer (x/net's server: its response state).
    obj: u64,
    /// Client: the server request (goroutine, entry time) whose handling made the call.
    parent_goid: u64,
    parent_start_ns: u64,
    /// The trace this call is in and its span id, chosen at entry (see `GoHttpRecord`).
    pub(crate) trace: [u8; 16],
    pub(crate) span: u64,
    /// Server: the incoming traceparent's parent id; client: its server request's span.
    parent_span: u64,
    /// Client: the socket, learnt inside the round trip, or -1.
    fd: i32,
    tls: u8,
    /// Client: 2 once the HTTP/2 connection code ran, else 0.
    proto_major: u8,
    pub(crate) flags: u8,
    /// Server: the trace came from an incoming traceparent.
    given: u8,
    /// Client: the connection a traceparent waits to be written into (family 0: none).
    inject: InjectKey,
    /// Server: the ResponseWriter is golang.org/x/net/http2's, not net/http's bundled one.
    xnet: u8,
    /// Server: `trace`, `parent_span`, `flags` and `given` are decided (see `settle_trace`).
    traced: u8,
    /// Client: its traceparent is to be written into its request in the process's memory
    /// (the memory path is on and the request has none), and was (see `write.rs`).
    pub(crate) want_write: u8,
    pub(crate) written: u8,
    _pad: [u8; 4],
    /// Client, HTTP/1: the `*bufio.Writer` its traceparent waits for in `PENDING_WRITE`.
    pub(crate) writer: u64,
}

/// Outgoing HTTP/1.x requests waiting for their `traceparent`, by connection: set by the
/// client probes before the request is written, filled in by `go_inject` as it is sent.
#[map]
pub(crate) static PENDING_TRACE: HashMap<InjectKey, PendingTrace> =
    HashMap::with_max_entries(16384, 0);

/// Index 0 is 1 once user space attached the injection programs; until then the client
/// probes leave nothing pending.
#[map]
pub(crate) static INJECT_ON: aya_ebpf::maps::Array<u32> =
    aya_ebpf::maps::Array::with_max_entries(1, 0);

/// Server requests being handled, by goroutine. An HTTP/1 connection keeps one goroutine for
/// all its requests, so its entry is kept between them (idle: `start_ns` 0) with the socket
/// found for the first: updating an entry in place costs a fraction of inserting and
/// deleting one, and the fd is followed once per connection. Goroutine ids are never reused;
/// the LRU drops the entries of finished connections.
#[map]
static GO_SERVER: LruHashMap<GoKey, InFlight> = LruHashMap::with_max_entries(65536, 0);

/// `InFlight::fd` of a server connection whose socket was not followed yet.
const FD_UNKNOWN: i32 = -2;

/// Client round trips in flight, by goroutine.
#[map]
pub(crate) static GO_CLIENT: HashMap<GoKey, InFlight> = HashMap::with_max_entries(16384, 0);

/// The goroutine that started each goroutine, so a call made from a goroutine a handler
/// spawned still finds its request.
#[map]
pub(crate) static GO_PARENT: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// `runtime.newproc1`'s caller goroutine, from entry to return, by thread.
#[map]
static GO_NEWPROC: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

/// How many goroutine generations a client call looks up for its server request.
const ANCESTORS: usize = 4;

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

/// The first bytes of the structs a return probe reads, each copied in one helper call rather
/// than a call per field (a call costs about as much as copying 256 bytes). Too big for the
/// stack, so per CPU.
#[repr(C)]
struct Windows {
    req: [u64; (GO_REQ_WINDOW / 8) as usize],
    url: [u64; (GO_URL_WINDOW / 8) as usize],
    /// One header map bucket: 8 top hashes, 8 keys, 8 values, the overflow pointer.
    bucket: [u64; BUCKET_WORDS],
    /// A `Traceparent` header value.
    tp: [u8; GO_TRACEPARENT_CAP],
}

#[map]
static GO_WINDOWS: PerCpuArray<Windows> = PerCpuArray::with_max_entries(1, 0);

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
    rec.object = 0;
    rec.request = 0;
    rec.content_length = -1;
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
    rec.content_length = if off.req_content_length == GO_NO_OFFSET {
        -1
    } else {
        word(&w.req, rl, req, off.req_content_length) as i64
    };
    rec.tls = (word(&w.req, rl, req, off.req_tls) != 0) as u8;
    rl
}

/// Go's classic map layout (every release this supports, up to 1.23) for the `http.Header`
/// type `map[string][]string`: a bucket is 8 top hashes, 8 string keys, 8 slices and an
/// overflow pointer, in 8-byte words.
const BUCKET_KEYS: usize = 1;
const BUCKET_ELEMS: usize = 1 + 8 * 2;
const BUCKET_OVERFLOW: usize = 1 + 8 * 2 + 8 * 3;
const BUCKET_WORDS: usize = BUCKET_OVERFLOW + 1;
/// Top hashes below this mark empty or evacuated slots.
const MIN_TOP_HASH: u8 = 5;
/// Buckets looked at: 2^3, enough for 52 headers at Go's load factor.
const MAX_BUCKETS_LOG2: u8 = 3;

/// Copies the first `Traceparent` value of the header map `hmap` (Go canonicalises the
/// name) into `w.tp`; returns its length, 0 when there is none.
#[inline(always)]
fn header_traceparent(off: &GoOffsets, hmap: u64, w: &mut Windows) -> u32 {
    if off.hmap_buckets == GO_NO_OFFSET || off.hmap_b == GO_NO_OFFSET || hmap == 0 {
        return 0;
    }
    // Most requests carry a few headers, some none: an empty map costs one read.
    if field::<u64>(hmap, off.hmap_count).unwrap_or(0) == 0 {
        return 0;
    }
    let Some(b) = field::<u8>(hmap, off.hmap_b) else {
        return 0;
    };
    if b > MAX_BUCKETS_LOG2 {
        return 0;
    }
    let Some(buckets) = field::<u64>(hmap, off.hmap_buckets) else {
        return 0;
    };
    if buckets == 0 {
        return 0;
    }
    let n = 1u64 << b;
    let size = BUCKET_WORDS as u64 * 8;
    for i in 0..(1u64 << MAX_BUCKETS_LOG2) {
        if i >= n {
            break;
        }
        let mut bucket = buckets + i * size;
        // One overflow bucket, for a crowded first one.
        for _ in 0..2 {
            if bucket == 0 || load(&mut w.bucket, bucket, size as u32) == 0 {
                break;
            }
            if let Some(len) = traceparent_in_bucket(&w.bucket, &mut w.tp) {
                return len;
            }
            bucket = w.bucket[BUCKET_OVERFLOW];
        }
    }
    0
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
            continue;
        };
        if &name != b"Traceparent" {
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

#[inline(always)]
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
fn hex_byte(t: &[u8; GO_TRACEPARENT_CAP], at: usize) -> Option<u8> {
    Some(nibble(t[at])? << 4 | nibble(t[at + 1])?)
}

/// A W3C `traceparent` (`00-<trace>-<parent>-<flags>`), by the rules user space applies too:
/// lowercase hex, version not ff, exactly 55 bytes for version 00, no all-zero id. Only a
/// valid one is continued, and so only hex ever reaches an outgoing request.
#[inline(always)]
fn parse_traceparent(t: &[u8; GO_TRACEPARENT_CAP], len: u32) -> Option<([u8; 16], u64, u8)> {
    if len < 55 || len as usize >= GO_TRACEPARENT_CAP {
        return None;
    }
    let version = hex_byte(t, 0)?;
    if version == 0xff || t[2] != b'-' || t[35] != b'-' || t[52] != b'-' {
        return None;
    }
    if (version == 0 && len != 55) || (len > 55 && t[55] != b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut any = 0u8;
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(t, 3 + 2 * i)?;
        any |= *b;
    }
    let mut span = 0u64;
    for i in 0..8 {
        span = span << 8 | hex_byte(t, 36 + 2 * i)? as u64;
    }
    let flags = hex_byte(t, 53)?;
    if any == 0 || span == 0 {
        return None;
    }
    Some((trace, span, flags))
}

#[inline(always)]
fn random64() -> u64 {
    // SAFETY: helper without arguments.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    // Never 0, which means "none" to W3C and to user space.
    ((a as u64) << 32 | b as u64) | 1
}

#[inline(always)]
fn random_trace() -> [u8; 16] {
    let (hi, lo) = (random64(), random64());
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&hi.to_be_bytes());
    t[8..].copy_from_slice(&lo.to_be_bytes());
    t
}

/// A server request's trace: its incoming traceparent's (from the header map `hmap`) when it
/// carries a valid one, else a new one. Decided when first needed, by the first client call
/// its handler makes or else at its return (where the request's window gives the map for free),
/// so a request that calls nothing reads its headers once, as before ids were chosen here.
#[inline(always)]
fn settle_trace(off: &GoOffsets, hmap: u64, call: &mut InFlight, w: &mut Windows) {
    call.traced = 1;
    let len = header_traceparent(off, hmap, w);
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

/// The socket fd under an HTTP/1 server response: response.conn.rwc (a net.Conn), through
/// the TLS layer when there is one, to the netFD's poll.FD.
#[inline(always)]
fn server_fd(off: &GoOffsets, response: u64, tls: bool) -> i32 {
    let Some(conn) = field::<u64>(response, off.response_conn) else {
        return -1;
    };
    // An interface is (itab, data); the data word follows the itab word.
    let Some(c) = field::<u64>(conn, off.conn_rwc.wrapping_add(8)) else {
        return -1;
    };
    let Some(c) = below_tls(off, c, tls) else {
        return -1;
    };
    // *net.TCPConn (and *net.UnixConn) embed net.conn first, whose fd is a *netFD.
    conn_fd(off, c)
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

/// `net/http.serverHandler.ServeHTTP(sh, rw ResponseWriter, req *Request)`: RAX = sh.srv,
/// RBX/RCX = rw (itab, data), RDI = req. HTTP/2 requests pass here too.
#[uprobe]
pub fn go_server_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    server_enter(&ctx, r.rdi, r.rcx, 0)
}

/// `golang.org/x/net/http2.(*serverConn).runHandler(sc, rw *responseWriter, req *Request,
/// handler)`: RAX = sc, RBX = rw, RCX = req; on the request's own goroutine.
#[uprobe]
pub fn go_xserver_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    server_enter(&ctx, r.rcx, r.rbx, 1)
}

#[inline(always)]
fn server_enter(ctx: &ProbeContext, req: u64, obj: u64, xnet: u8) -> u32 {
    let Some((off, key)) = current(ctx) else {
        return 0;
    };
    // x/net's runHandler ends by handing the response state back to its pool and clearing
    // `rw.rws`, before its RET: the state is kept from here. Nothing can take it from the pool
    // between that and the RET, a few instructions later on the same P.
    let obj = if xnet != 0 {
        field::<u64>(obj, off.xh2rw_rws).unwrap_or(0)
    } else {
        obj
    };
    let start = now();
    if let Some(p) = GO_SERVER.get_ptr_mut(&key) {
        // SAFETY: this goroutine's map value.
        unsafe {
            // The same request entering serverHandler.ServeHTTP inside x/net's runHandler:
            // the outer entry owns it, and the first RET after the handler ends it.
            if (*p).start_ns != 0 && (*p).req == req {
                return 0;
            }
            (*p).start_ns = start;
            (*p).req = req;
            (*p).obj = obj;
            (*p).xnet = xnet;
            (*p).span = random64();
            (*p).traced = 0;
        }
        return 0;
    }
    let mut call = in_flight(start, req, obj);
    call.fd = FD_UNKNOWN;
    call.xnet = xnet;
    call.span = random64();
    if GO_SERVER.insert(&key, &call, 0).is_err() {
        bump(counter::ACTIVE_FULL);
    }
    0
}

/// A RET of `serverHandler.ServeHTTP`: the handler is done, the status is set, and ServeMux
/// has set `Request.Pattern` (Go 1.23+).
#[uprobe]
pub fn go_server_ret(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(p) = GO_SERVER.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: this goroutine's map value, copied at once and marked idle.
    let mut call = unsafe { *p };
    if call.start_ns == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*p).start_ns = 0 };
    let Some((mut entry, w)) = reserve() else {
        return 0;
    };
    // SAFETY: reserved ring memory of the record's size; every scalar is set by `init`.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    init(rec, go_role::SERVER, key.tgid, key.goid, call.start_ns);
    let rl = read_request(&off, call.req, rec, w);
    if call.traced == 0 {
        let hmap = word(&w.req, rl, call.req, off.req_header);
        settle_trace(off, hmap, &mut call, w);
    }
    rec.trace_id = call.trace;
    rec.span_id = call.span;
    rec.parent_span_id = call.parent_span;
    rec.trace_flags = call.flags;
    rec.trace_given = call.given;
    rec.object = call.obj;
    rec.request = call.req;
    rec.status = if rec.proto_major == 2 {
        // *http2responseWriter → its state → the status WriteHeader recorded; for x/net's
        // server, the state kept at entry, in x/net's layout.
        if call.xnet != 0 {
            field::<u64>(call.obj, off.xh2rws_status).unwrap_or(0) as u32
        } else {
            let rws = field::<u64>(call.obj, off.h2rw_rws).unwrap_or(0);
            field::<u64>(rws, off.h2rws_status).unwrap_or(0) as u32
        }
    } else {
        rec.fd = if call.fd == FD_UNKNOWN {
            let fd = server_fd(&off, call.obj, rec.tls != 0);
            // SAFETY: this goroutine's map value.
            unsafe { (*p).fd = fd };
            fd
        } else {
            call.fd
        };
        field::<u64>(call.obj, off.response_status).unwrap_or(0) as u32
    };
    rec.pattern_len = wstring(&w.req, rl, call.req, off.req_pattern, &mut rec.pattern);
    rec.sock_gen = sock_gen(key.tgid, rec.fd);
    // The peer's address, when the socket table cannot give it (no socket, or one older than
    // sightline).
    if rec.sock_gen == 0 {
        rec.addr_len = wstring(&w.req, rl, call.req, off.req_remote_addr, &mut rec.addr);
    }
    entry.submit(wakeup_flags());
    0
}

/// `net/http.(*Transport).RoundTrip(t, req *Request) (*Response, error)` and its body
/// `roundTrip`, same arguments: RAX = t, RBX = req.
#[uprobe]
pub fn go_client_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    // Transport.RoundTrip and its body roundTrip are both probed (the first may be inlined
    // away); when both run, the outer one owns the call and the inner one's return ends it.
    // SAFETY: map lookup.
    if unsafe { GO_CLIENT.get(&key) }.is_some() {
        return 0;
    }
    let r = regs(&ctx);
    let mut call = in_flight(now(), r.rbx, 0);
    // The server request this call serves: on this goroutine, or on the one that started it
    // (from `g.parentGoid` where Go records it, else from the newproc1 probes' table).
    let mut g = key.goid;
    // SAFETY: map lookup.
    if !unsafe { GO_SERVER.get(&key) }.is_some_and(|s| s.start_ns != 0) {
        if let Some(p) = field::<u64>(r.r14, off.g_parent_goid).filter(|p| *p != 0) {
            g = p;
        }
    }
    for _ in 0..ANCESTORS {
        let k = GoKey {
            tgid: key.tgid,
            _pad: 0,
            goid: g,
        };
        // SAFETY: map lookup, copied at once.
        if let Some(server) = unsafe { GO_SERVER.get(&k) }.filter(|s| s.start_ns != 0) {
            call.parent_goid = g;
            call.parent_start_ns = server.start_ns;
            break;
        }
        // SAFETY: as above.
        match unsafe { GO_PARENT.get(&k) } {
            Some(p) if *p != 0 => g = *p,
            _ => break,
        }
    }
    call.span = random64();
    if !inherit_trace(off, key.tgid, &mut call) {
        // A call made outside any request handled here starts a trace of its own.
        call.trace = random_trace();
        call.flags = 1;
    }
    if GO_CLIENT.insert(&key, &call, 0).is_err() {
        bump(counter::ACTIVE_FULL);
    }
    0
}

/// Gives a client call the trace of the server request it serves (found by the caller), deciding
/// that trace now if no earlier call did. False when there is no such request.
#[inline(always)]
fn inherit_trace(off: &GoOffsets, tgid: u32, call: &mut InFlight) -> bool {
    if call.parent_goid == 0 {
        return false;
    }
    let k = GoKey {
        tgid,
        _pad: 0,
        goid: call.parent_goid,
    };
    let Some(p) = GO_SERVER.get_ptr_mut(&k) else {
        return false;
    };
    // SAFETY: the server goroutine's map value. A call from a goroutine the handler spawned can
    // race with the handler's return, each deciding a trace; user space then gives the call its
    // request's (from the server record), and only this call's outgoing header names another.
    let server = unsafe { &mut *p };
    if server.start_ns != call.parent_start_ns {
        return false;
    }
    if server.traced == 0 {
        let Some(w) = GO_WINDOWS.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: this CPU's scratch, used by this program run only.
        let w = unsafe { &mut *w };
        let hmap = field::<u64>(server.req, off.req_header).unwrap_or(0);
        settle_trace(off, hmap, server, w);
    }
    call.trace = server.trace;
    call.parent_span = server.span;
    call.flags = server.flags;
    true
}

/// Leaves the call's traceparent waiting for its request to be written on socket `fd`, when
/// injection is on, the connection is plaintext HTTP/1.x with known ends, and the program
/// set no `Traceparent` of its own (it is never written twice).
#[inline(always)]
fn pend_traceparent(off: &GoOffsets, tgid: u32, fd: i32, call: &mut InFlight) {
    if fd < 0 || !INJECT_ON.get(0).is_some_and(|on| *on == 1) {
        return;
    }
    // SAFETY: map lookup, copied at once.
    let Some(info) = (unsafe { CONN_INFO.get(&ConnKey { tgid, fd }) }).copied() else {
        return;
    };
    if info.local_port == 0 || info.port == 0 {
        return;
    }
    if !carries_none(off, call) {
        return;
    }
    let key = InjectKey {
        family: info.family,
        local_port: info.local_port,
        remote_port: info.port,
        _pad: 0,
        remote_addr: info.addr,
    };
    let pending = PendingTrace {
        trace_id: call.trace,
        span_id: call.span,
        at_ns: now(),
        flags: call.flags,
        done: 0,
        _pad: [0; 6],
    };
    if PENDING_TRACE.insert(&key, &pending, 0).is_ok() {
        call.inject = key;
    }
}

/// True when the call's request has no `Traceparent` of the program's own, so sightline may
/// give it one (it is never written twice).
#[inline(always)]
pub(crate) fn carries_none(off: &GoOffsets, call: &InFlight) -> bool {
    let Some(w) = GO_WINDOWS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch, used by this program run only.
    let w = unsafe { &mut *w };
    let hmap = field::<u64>(call.req, off.req_header).unwrap_or(0);
    header_traceparent(off, hmap, w) == 0
}

/// `net/http.(*persistConn).roundTrip(pc, req)`: RAX = pc. Runs inside `Transport.RoundTrip`
/// on the same goroutine for HTTP/1; tells that call which socket carries it.
#[uprobe]
pub fn go_pconn_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(call) = GO_CLIENT.get_ptr_mut(&key) else {
        return 0;
    };
    let r = regs(&ctx);
    let tls = field::<u64>(r.rax, off.pconn_tls_state).unwrap_or(0) != 0;
    // persistConn.conn is a net.Conn: its data word follows the itab word.
    let Some(c) = field::<u64>(r.rax, off.pconn_conn.wrapping_add(8)) else {
        return 0;
    };
    let Some(c) = below_tls(&off, c, tls) else {
        return 0;
    };
    let fd = conn_fd(&off, c);
    // SAFETY: this goroutine's map value.
    unsafe {
        (*call).fd = fd;
        (*call).tls = tls as u8;
        let at_socket = !tls && INJECT_ON.get(0).is_some_and(|on| *on == 1);
        if at_socket {
            if (*call).inject.family == 0 {
                pend_traceparent(off, key.tgid, fd, &mut *call);
            }
        } else {
            crate::write::pend_h1(off, key.tgid, r.rax, &mut *call);
        }
    }
    0
}

/// `net/http.(*http2ClientConn).RoundTrip(cc, req)` (or `roundTrip` on Go 1.23+): RAX = cc, on
/// the caller's goroutine inside `Transport.RoundTrip`; its `tconn` is the connection, TLS
/// whenever the request's scheme is https.
#[uprobe]
pub fn go_h2cc_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(call) = GO_CLIENT.get_ptr_mut(&key) else {
        return 0;
    };
    let r = regs(&ctx);
    let Some(c) = field::<u64>(r.rax, off.h2cc_tconn.wrapping_add(8)) else {
        return 0;
    };
    // SAFETY: this goroutine's map value.
    let req = unsafe { (*call).req };
    let url = field::<u64>(req, off.req_url).unwrap_or(0);
    let scheme = field::<[u64; 2]>(url, off.url_scheme).unwrap_or([0, 0]);
    let tls = scheme[1] == 5;
    let Some(c) = below_tls(&off, c, tls) else {
        return 0;
    };
    let fd = conn_fd(&off, c);
    // SAFETY: this goroutine's map value.
    unsafe {
        (*call).fd = fd;
        (*call).tls = tls as u8;
        (*call).proto_major = 2;
        // Each attempt (a retry on another connection runs this again) gets its header once.
        (*call).written = 0;
        (*call).want_write = (crate::write::writes_on() && carries_none(off, &*call)) as u8;
    }
    0
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

/// The stamp of the socket `fd` of `tgid`, or 0 when the table does not know it.
#[inline(always)]
fn sock_gen(tgid: u32, fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    match SOCK_GEN.get(sock_gen_slot(tgid, fd)) {
        Some(g) if g.tgid == tgid && g.fd == fd => g.ts_ns,
        _ => 0,
    }
}

/// A RET of `Transport.RoundTrip`: RAX = *Response (nil on error).
#[uprobe]
pub fn go_client_ret(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    // SAFETY: map lookup, copied at once.
    let Some(call) = (unsafe { GO_CLIENT.get(&key) }).copied() else {
        return 0;
    };
    let _ = GO_CLIENT.remove(&key);
    let resp = regs(&ctx).rax;
    let mut injected = crate::write::settle(key.tgid, &call);
    if call.inject.family != 0 {
        // SAFETY: map lookup, read at once.
        if let Some(p) = unsafe { PENDING_TRACE.get(&call.inject) } {
            if p.span_id == call.span {
                injected |= (p.done == 1) as u8;
                let _ = PENDING_TRACE.remove(&call.inject);
            }
        }
    }
    let Some((mut entry, w)) = reserve() else {
        return 0;
    };
    // SAFETY: reserved ring memory of the record's size; every scalar is set by `init`.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    init(rec, go_role::CLIENT, key.tgid, key.goid, call.start_ns);
    read_request(off, call.req, rec, w);
    rec.parent_goid = call.parent_goid;
    rec.parent_start_ns = call.parent_start_ns;
    rec.trace_id = call.trace;
    rec.span_id = call.span;
    rec.parent_span_id = call.parent_span;
    rec.trace_flags = call.flags;
    rec.injected = injected;
    rec.fd = call.fd;
    rec.sock_gen = sock_gen(key.tgid, call.fd);
    rec.tls = call.tls;
    if call.proto_major == 2 {
        rec.proto_major = 2;
        rec.proto_minor = 0;
    }
    rec.status = field::<u64>(resp, off.resp_status_code).unwrap_or(0) as u32;
    entry.submit(wakeup_flags());
    0
}

/// `runtime.newproc1(fn, callergp *g, callerpc) *g`: remember the creating goroutine.
#[uprobe]
pub fn go_newproc_enter(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: as above.
    let Some(off) = (unsafe { GO_PROCS.get(&((id >> 32) as u32)) }).copied() else {
        return 0;
    };
    if let Some(parent) = goid(&off, regs(&ctx).rbx) {
        let _ = GO_NEWPROC.insert(&id, &parent, 0);
    }
    0
}

/// A RET of `runtime.newproc1`: RAX = the new goroutine.
#[uprobe]
pub fn go_newproc_ret(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: as above.
    let Some(parent) = (unsafe { GO_NEWPROC.get(&id) }).copied() else {
        return 0;
    };
    let _ = GO_NEWPROC.remove(&id);
    // SAFETY: as above.
    let Some(off) = (unsafe { GO_PROCS.get(&tgid) }).copied() else {
        return 0;
    };
    if let Some(child) = goid(&off, regs(&ctx).rax) {
        let _ = GO_PARENT.insert(
            &GoKey {
                tgid,
                _pad: 0,
                goid: child,
            },
            &parent,
            0,
        );
    }
    0
}

/// Does nothing but count: benchmarks attach it at exactly the points the Go probes use, to
/// measure what the uprobes themselves cost and how many fire per request.
#[uprobe]
pub fn go_empty(_ctx: ProbeContext) -> u32 {
    bump(counter::EMPTY_PROBE_HITS);
    0
}
