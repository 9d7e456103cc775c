//! Every map and loader-set global of the programs, the types their values have when only the
//! kernel reads them, and the small helpers that touch nothing but maps. The loader finds each
//! map and global by its symbol name. This module imports no other module of the crate.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use sightline_common::{
    counter, sock_gen_slot, ActiveCall, ConnKey, DataRecord, Flow, GoKey, GoOffsets, InjectKey,
    ListenKey, PendingTrace, SockClass, SockGen, SockInfo, SockStateOffsets, TcpEventOffsets,
    TcpOffsets, ACTIVE_SLOTS, DEFAULT_CAPTURE, GO_REQ_WINDOW, GO_TRACEPARENT_CAP, GO_URL_WINDOW,
    MAX_FLOWS, MAX_LISTENERS, RING_BYTES, SOCK_GEN_SLOTS, WAKEUP_BYTES,
};

// Globals the loader sets before load.

/// Payload bytes to copy per call; set by the loader from the configuration.
#[no_mangle]
pub(crate) static CAPTURE_LEN: u32 = DEFAULT_CAPTURE;

/// sightline's own process, whose sockets (the OTLP exporter's) are not of interest.
#[no_mangle]
pub(crate) static AGENT_TGID: u32 = 0;

/// Where `sock:inet_sock_set_state` keeps its fields; set by the loader from tracefs.
#[no_mangle]
pub(crate) static SS_OFFSETS: SockStateOffsets = SockStateOffsets {
    newstate: 0,
    sport: 0,
    family: 0,
    saddr: 0,
    saddr_v6: 0,
    skaddr: 0,
    oldstate: 0,
    dport: 0,
    protocol: 0,
    daddr: 0,
    daddr_v6: 0,
};

/// Where the other TCP tracepoints keep their socket; set by the loader from tracefs.
#[no_mangle]
pub(crate) static TCP_EVENT_OFFSETS: TcpEventOffsets = TcpEventOffsets {
    retransmit_sk: 0,
    send_reset_sk: 0,
    receive_reset_sk: 0,
    destroy_sk: 0,
};

/// `struct tcp_sock` field offsets; set by the loader from the kernel's BTF.
#[no_mangle]
pub(crate) static TCP_OFFSETS: TcpOffsets = TcpOffsets {
    ready: 0,
    sk_err: 0,
    srtt_us: 0,
    total_retrans: 0,
    bytes_received: 0,
    bytes_acked: 0,
    segs_in: 0,
    segs_out: 0,
};

// Output to user space.

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// TLS library calls (`openssl`).

/// TLS calls in flight, by thread (`pid_tgid`): a thread runs one `SSL_*` call at a time.
#[map]
pub(crate) static ACTIVE: Array<ActiveCall> = Array::with_max_entries(ACTIVE_SLOTS, 0);

#[map]
pub(crate) static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(1, 0);

// Sockets (`sockets`).

/// Sockets between SYN_SENT and ESTABLISHED, by kernel address: the local port is chosen after
/// SYN_SENT, and ESTABLISHED may be reached in softirq context, where no pid tells whose it is.
#[map]
pub(crate) static SYN_SENT: LruHashMap<u64, ConnKey> = LruHashMap::with_max_entries(8192, 0);

/// `connect()` in progress per thread: the fd whose local address the SYN_SENT transition
/// inside the same syscall will tell. Emptied at SYN_SENT or at the syscall's return
/// (`sock_connect_exit`); an LRU for the threads that die inside `connect()`.
#[map]
pub(crate) static PENDING_CONNECT: LruHashMap<u64, i32> = LruHashMap::with_max_entries(4096, 0);

#[map]
pub(crate) static SOCK_GEN: Array<SockGen> = Array::with_max_entries(SOCK_GEN_SLOTS, 0);

#[map]
pub(crate) static CONN_INFO: LruHashMap<ConnKey, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// A connection's `CONN_INFO` entry once a newer socket took its fd, by its stamp (`ts_ns`):
/// user space may read a connection's first records after its process closed it and
/// connected or accepted again on the same fd number.
#[map]
pub(crate) static CONN_PAST: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// `accept()`'s sockaddr pointer and listening fd, from syscall entry to exit. An LRU: a thread
/// that dies inside accept() leaves its entry.
#[map]
pub(crate) static ACCEPT_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// Sockets whose bytes may be copied, by (tgid, fd): entered at connect/accept, classified by
/// their first bytes, removed at close. The socket syscall probes' first (and, for a file, a
/// pipe or a non-HTTP socket, only) work is one lookup here.
#[map]
pub(crate) static SOCK_CLASS: LruHashMap<ConnKey, SockClass> =
    LruHashMap::with_max_entries(65536, 0);

/// sightline's own client sockets (its exporter's), by local port (as `u32`): their
/// `CONN_INFO` key, so that user space knows a collector on this host receiving its export
/// from the connection's ends, and leaves that connection alone.
#[map]
pub(crate) static AGENT_PORTS: LruHashMap<u32, ConnKey> = LruHashMap::with_max_entries(1024, 0);

/// A socket syscall's arguments from entry to exit, kept only for sockets in `SOCK_CLASS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SysCall {
    /// `pid_tgid` of the thread; 0 when free.
    pub(crate) id: u64,
    /// The buffer, the iovec array or the msghdr, by `shape`.
    pub(crate) arg: u64,
    pub(crate) start_ns: u64,
    pub(crate) sock_ts: u64,
    pub(crate) fd: i32,
    pub(crate) shape: u8,
    pub(crate) direction: u8,
    pub(crate) class: u8,
    pub(crate) _pad: u8,
}

/// The TLS socket a thread last read, by thread slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TlsRead {
    pub(crate) id: u64,
    pub(crate) sock_ts: u64,
    pub(crate) at_ns: u64,
    pub(crate) fd: i32,
    pub(crate) _pad: u32,
}

/// The TLS socket each thread last read, for `SSL_read`s that touch no socket (memory BIOs).
#[map]
pub(crate) static TLS_READS: Array<TlsRead> = Array::with_max_entries(ACTIVE_SLOTS, 0);

/// Socket syscalls in flight, by thread slot, like `ACTIVE`.
#[map]
pub(crate) static SYS_ACTIVE: Array<SysCall> = Array::with_max_entries(ACTIVE_SLOTS, 0);

// Go net/http (`go`).

#[map]
pub(crate) static GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(4096, 0);

/// What an entry probe keeps for the return: pointers to read then, not the values. Reading
/// everything once at return, straight into the ring buffer, costs a third of copying a whole
/// record into a map at entry and out again.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct InFlight {
    pub(crate) start_ns: u64,
    /// The `*http.Request`.
    pub(crate) req: u64,
    /// Server: the ResponseWriter's data pointer (x/net's server: its response state).
    pub(crate) obj: u64,
    /// Client: the server request (goroutine, entry time) whose handling made the call.
    pub(crate) parent_goid: u64,
    pub(crate) parent_start_ns: u64,
    /// The trace this call is in and its span id, chosen at entry (see `GoHttpRecord`).
    pub(crate) trace: [u8; 16],
    pub(crate) span: u64,
    /// Server: the incoming traceparent's parent id; client: its server request's span.
    pub(crate) parent_span: u64,
    /// Client: the socket, learnt inside the round trip, or -1.
    pub(crate) fd: i32,
    pub(crate) tls: u8,
    /// Client: 2 once the HTTP/2 connection code ran, else 0.
    pub(crate) proto_major: u8,
    pub(crate) flags: u8,
    /// Server: the trace came from an incoming traceparent.
    pub(crate) given: u8,
    /// Client: the connection a traceparent waits to be written into (family 0: none).
    pub(crate) inject: InjectKey,
    /// Server: the ResponseWriter is golang.org/x/net/http2's, not net/http's bundled one.
    pub(crate) xnet: u8,
    /// Server: `trace`, `parent_span`, `flags` and `given` are decided (see `go::settle_trace`).
    pub(crate) traced: u8,
    /// Client: its traceparent is to be written into its request in the process's memory
    /// (the memory path is on and the request has none), and was (see `propagate::memory`).
    pub(crate) want_write: u8,
    pub(crate) written: u8,
    pub(crate) _pad: [u8; 4],
    /// Client, HTTP/1: the `*bufio.Writer` its traceparent waits for in `PENDING_WRITE`.
    pub(crate) writer: u64,
}

/// Server requests being handled, by goroutine. An HTTP/1 connection keeps one goroutine for
/// all its requests, so its entry is kept between them (idle: `start_ns` 0) with the socket
/// found for the first: updating an entry in place costs a fraction of inserting and
/// deleting one, and the fd is followed once per connection. Goroutine ids are never reused;
/// the LRU drops the entries of finished connections.
#[map]
pub(crate) static GO_SERVER: LruHashMap<GoKey, InFlight> = LruHashMap::with_max_entries(65536, 0);

/// Client round trips in flight, by goroutine. An LRU: a process that exits mid-call leaves
/// its entries.
#[map]
pub(crate) static GO_CLIENT: LruHashMap<GoKey, InFlight> = LruHashMap::with_max_entries(16384, 0);

/// The goroutine that started each goroutine, so a call made from a goroutine a handler
/// spawned still finds its request.
#[map]
pub(crate) static GO_PARENT: LruHashMap<GoKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// `runtime.newproc1`'s caller goroutine, from entry to return, by thread (an LRU, for
/// threads that die in between).
#[map]
pub(crate) static GO_NEWPROC: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Go's classic map layout (every release this supports, up to 1.23) for the `http.Header`
/// type `map[string][]string`: a bucket is 8 top hashes, 8 string keys, 8 slices and an
/// overflow pointer, in 8-byte words.
pub(crate) const BUCKET_KEYS: usize = 1;
pub(crate) const BUCKET_ELEMS: usize = 1 + 8 * 2;
pub(crate) const BUCKET_OVERFLOW: usize = 1 + 8 * 2 + 8 * 3;
pub(crate) const BUCKET_WORDS: usize = BUCKET_OVERFLOW + 1;

/// The first bytes of the structs a return probe reads, each copied in one helper call rather
/// than a call per field (a call costs about as much as copying 256 bytes). Too big for the
/// stack, so per CPU.
#[repr(C)]
pub(crate) struct Windows {
    pub(crate) req: [u64; (GO_REQ_WINDOW / 8) as usize],
    pub(crate) url: [u64; (GO_URL_WINDOW / 8) as usize],
    /// One header map bucket: 8 top hashes, 8 keys, 8 values, the overflow pointer.
    pub(crate) bucket: [u64; BUCKET_WORDS],
    /// A `Traceparent` header value.
    pub(crate) tp: [u8; GO_TRACEPARENT_CAP],
}

#[map]
pub(crate) static GO_WINDOWS: PerCpuArray<Windows> = PerCpuArray::with_max_entries(1, 0);

// traceparent propagation (`propagate`).

/// Outgoing HTTP/1.x requests waiting for their `traceparent`, by connection: set by the
/// client probes before the request is written, filled in by `go_inject` as it is sent. An
/// LRU: a request never sent (its process exited) leaves its entry.
#[map]
pub(crate) static PENDING_TRACE: LruHashMap<InjectKey, PendingTrace> =
    LruHashMap::with_max_entries(16384, 0);

/// Index 0 is 1 once user space attached the injection programs; until then the client
/// probes leave nothing pending.
#[map]
pub(crate) static INJECT_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Client sockets of traced Go processes, by socket cookie.
#[map]
pub(crate) static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);

/// Sockets that connected from a traced Go process, by cookie, until established.
#[map]
pub(crate) static INJECT_WANTED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Index 0 is 1 once user space attached the programs that write into process memory; until
/// then nothing waits for them.
#[map]
pub(crate) static WRITE_ON: Array<u32> = Array::with_max_entries(1, 0);

/// A `*bufio.Writer` of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct WriterKey {
    pub(crate) tgid: u32,
    pub(crate) _pad: u32,
    pub(crate) writer: u64,
}

/// HTTP/1 requests waiting for their line, by their connection's writer: left by the client
/// goroutine, written by the connection's write loop (another goroutine).
#[map]
pub(crate) static PENDING_WRITE: LruHashMap<WriterKey, PendingTrace> =
    LruHashMap::with_max_entries(16384, 0);

/// An HTTP/2 request's headers between `writeHeaders`' entry and its flush.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct H2Headers {
    /// The connection's `*bufio.Writer`, and its `n` at entry: where the frame starts.
    pub(crate) writer: u64,
    pub(crate) start: u64,
    /// The header block's length and the largest frame payload the peer takes.
    pub(crate) block: u64,
    pub(crate) max_frame: u64,
    /// The goroutine of the round trip the request belongs to.
    pub(crate) client_goid: u64,
    pub(crate) trace: [u8; 16],
    pub(crate) span: u64,
    pub(crate) stream: u32,
    pub(crate) flags: u8,
    pub(crate) _pad: [u8; 3],
}

#[map]
pub(crate) static H2_HEADERS: LruHashMap<GoKey, H2Headers> = LruHashMap::with_max_entries(16384, 0);

// Network signals (`tcp`).

/// TCP connections followed, by kernel socket address. Not an LRU: a full table is counted,
/// never silently recycled, and entries are allocated on demand (`BPF_F_NO_PREALLOC`), so
/// an idle host pays for the connections it has.
#[map]
pub(crate) static FLOWS: HashMap<u64, Flow> = HashMap::with_max_entries(MAX_FLOWS, 1);

/// Who listens on a port, for accepted connections (established in softirq context, where no
/// pid tells whose they are).
#[map]
pub(crate) static LISTENERS: LruHashMap<ListenKey, u32> =
    LruHashMap::with_max_entries(MAX_LISTENERS, 0);

// Helpers.

/// Wake the reader only once enough has piled up; its timer collects the rest.
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub(crate) fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; no other program touches it concurrently on this CPU.
        unsafe { *p += 1 };
    }
}

/// Counts a failed insert into hash table `t` (a `sightline_common::table` index).
#[inline(always)]
pub(crate) fn inserted<E>(t: u32, r: Result<(), E>) -> bool {
    if r.is_err() {
        bump(counter::INSERT_FAILED + t);
        return false;
    }
    true
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub(crate) fn global(v: &'static u32) -> u32 {
    // SAFETY: a volatile read stops the compiler from folding in the compile-time default; the
    // loader rewrites the value before load.
    unsafe { core::ptr::read_volatile(v) }
}

/// The in-flight TLS call slot of thread `id`.
#[inline(always)]
pub(crate) fn slot(id: u64) -> Option<*mut ActiveCall> {
    ACTIVE.get_ptr_mut((id as u32) & (ACTIVE_SLOTS - 1))
}

/// The stamp of the socket `fd` of `tgid`, or 0 when the table does not know it.
#[inline(always)]
pub(crate) fn sock_gen(tgid: u32, fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    match SOCK_GEN.get(sock_gen_slot(tgid, fd)) {
        Some(g) if g.tgid == tgid && g.fd == fd => g.ts_ns,
        _ => 0,
    }
}

/// A socket syscall by thread `id` on `fd`: if the thread is inside a TLS call whose socket is
/// not known yet, this is it. That ties an `SSL*` to its socket without reading OpenSSL's
/// private structs (their layout changes between versions; see eCapture #759).
#[inline(always)]
pub(crate) fn link_tls_call(id: u64, fd: i32) {
    let Some(call) = slot(id) else {
        return;
    };
    // SAFETY: array slot read; the common cases (no TLS call, or its socket already known)
    // leave here.
    if unsafe { (*call).id != id || (*call).fd >= 0 } {
        return;
    }
    let sock_ts = sock_gen((id >> 32) as u32, fd);
    // SAFETY: this thread's in-flight slot.
    unsafe {
        (*call).fd = fd;
        (*call).sock_ts = sock_ts;
    }
}

#[inline(always)]
pub(crate) fn writes_on() -> bool {
    WRITE_ON.get(0).is_some_and(|on| *on == 1)
}
