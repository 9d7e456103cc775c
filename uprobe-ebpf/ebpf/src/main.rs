//! sightline's eBPF programs.
//!
//! - `ssl_*` uprobes store a TLS call's arguments at entry; `ssl_ret` copies the plaintext at
//!   return, when the true length is known, into the ring buffer.
//! - `fd_link` runs on socket syscalls and records which fd the in-flight TLS call touched,
//!   which ties an `SSL*` to its socket without reading OpenSSL's private structs (their layout
//!   changes between versions; see eCapture #759).
//! - `sock_connect` / `sock_accept*` remember each socket's peer and whether this process is
//!   its client or server, in an LRU map the user side reads on demand.
//! - `proc_exec` / `proc_exit` feed discovery.
//! - `go_connect4/6`, `go_sockops` and `go_inject` write a `traceparent` into Go clients'
//!   plaintext HTTP/1.x requests as the kernel sends them (see `inject`).
#![no_std]
#![no_main]

mod go;
mod inject;
mod write;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_probe_read_user, bpf_ringbuf_output},
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use sightline_common::{
    counter, direction, kind, sock_gen_slot, sock_role, source, ActiveCall, CloseRecord, ConnKey,
    DataHeader, DataRecord, ProcessRecord, SockGen, SockInfo, SockStateOffsets, ACTIVE_SLOTS,
    DATA_HEADER_LEN, DEFAULT_CAPTURE, MAX_CAPTURE, RING_BYTES, SOCK_GEN_SLOTS, WAKEUP_BYTES,
};

/// Payload bytes to copy per call; set by the loader from the configuration.
#[no_mangle]
static CAPTURE_LEN: u32 = DEFAULT_CAPTURE;

/// sightline's own process, whose sockets (the OTLP exporter's) are not of interest.
#[no_mangle]
static AGENT_TGID: u32 = 0;

/// Where `sock:inet_sock_set_state` keeps its fields; set by the loader from tracefs.
#[no_mangle]
static SS_OFFSETS: SockStateOffsets = SockStateOffsets {
    newstate: 0,
    sport: 0,
    family: 0,
    saddr: 0,
    saddr_v6: 0,
    skaddr: 0,
};

/// Sockets between SYN_SENT and ESTABLISHED, by kernel address: the local port is chosen after
/// SYN_SENT, and ESTABLISHED may be reached in softirq context, where no pid tells whose it is.
#[map]
static SYN_SENT: LruHashMap<u64, ConnKey> = LruHashMap::with_max_entries(8192, 0);

/// `connect()` in progress per thread: the fd whose local address the SYN_SENT transition
/// inside the same syscall will tell.
#[map]
static PENDING_CONNECT: HashMap<u64, i32> = HashMap::with_max_entries(4096, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// TLS calls in flight, by thread (`pid_tgid`): a thread runs one `SSL_*` call at a time.
#[map]
static ACTIVE: Array<ActiveCall> = Array::with_max_entries(ACTIVE_SLOTS, 0);

#[map]
static SOCK_GEN: Array<SockGen> = Array::with_max_entries(SOCK_GEN_SLOTS, 0);

/// Records that `fd` of `tgid` is, from now on, the socket first seen at `ts_ns`.
#[inline(always)]
fn set_sock_gen(tgid: u32, fd: i32, ts_ns: u64) {
    if let Some(g) = SOCK_GEN.get_ptr_mut(sock_gen_slot(tgid, fd)) {
        // SAFETY: array slot; a concurrent writer can only make the entry read as unknown.
        unsafe { *g = SockGen { tgid, fd, ts_ns } };
    }
}

#[map]
static SCRATCH: PerCpuArray<DataRecord> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CONN_INFO: LruHashMap<ConnKey, SockInfo> = LruHashMap::with_max_entries(65536, 0);

/// A connection's `CONN_INFO` entry once a newer socket took its fd, by its stamp (`ts_ns`):
/// user space may read a connection's first records after its process closed it and
/// connected or accepted again on the same fd number.
#[map]
static CONN_PAST: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// Records a socket's connect/accept under its fd, keeping what the fd held before.
#[inline(always)]
fn record_socket(key: &ConnKey, info: &SockInfo) {
    // SAFETY: map lookup, copied at once.
    if let Some(old) = unsafe { CONN_INFO.get(key) }.copied() {
        let _ = CONN_PAST.insert(&old.ts_ns, &old, 0);
    }
    let _ = CONN_INFO.insert(key, info, 0);
}

/// `accept()`'s sockaddr pointer and listening fd, from syscall entry to exit.
#[map]
static ACCEPT_ARGS: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

/// Wake the reader only once enough has piled up; its timer collects the rest.
#[inline(always)]
fn wakeup_flags() -> u64 {
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
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; no other program touches it concurrently on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a volatile read stops the compiler from folding in the compile-time default; the
    // loader rewrites the value before load.
    unsafe { core::ptr::read_volatile(v) }
}

/// The in-flight slot of thread `id`.
#[inline(always)]
fn slot(id: u64) -> Option<*mut ActiveCall> {
    ACTIVE.get_ptr_mut((id as u32) & (ACTIVE_SLOTS - 1))
}

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
        source: source::OPENSSL,
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

/// Syscall tracepoints share one layout: 8 bytes of common fields, the syscall number, then
/// each argument as 8 bytes from offset 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_ARG1: usize = 24;
const SYSCALL_RET: usize = 16;

#[tracepoint]
pub fn fd_link(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = slot(id) else {
        return 0;
    };
    // Cheap exit for the common cases: this thread is not inside a TLS call, or the call's
    // socket is already known.
    // SAFETY: array slot read.
    if unsafe { (*call).id != id || (*call).fd >= 0 } {
        return 0;
    }
    // SAFETY: offset 16 is the first syscall argument.
    let fd = match unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) } {
        Ok(fd) => fd as i32,
        Err(_) => return 0,
    };
    let tgid = (id >> 32) as u32;
    let sock_ts = match SOCK_GEN.get(sock_gen_slot(tgid, fd)) {
        Some(g) if g.tgid == tgid && g.fd == fd => g.ts_ns,
        _ => 0,
    };
    // SAFETY: this thread's in-flight slot.
    unsafe {
        (*call).fd = fd;
        (*call).sock_ts = sock_ts;
    }
    0
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
    if tgid == global(&AGENT_TGID) {
        return 0;
    }
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
    record_socket(&key, &info);
    set_sock_gen(tgid, fd as i32, info.ts_ns);
    let _ = PENDING_CONNECT.insert(&id, &(fd as i32), 0);
    0
}

/// A client socket's local address: at TCP_SYN_SENT (inside `connect()`, so the pid is
/// known) the socket is tied to its fd; at TCP_ESTABLISHED the chosen port is read. No
/// `struct sock` field is read, only the tracepoint's own fields.
#[tracepoint]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    const TCP_ESTABLISHED: i32 = 1;
    const TCP_SYN_SENT: i32 = 2;
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
            let _ = SYN_SENT.insert(&sk, &key, 0);
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
    let _ = ACCEPT_ARGS.insert(&id, &[addr, listen_fd], 0);
    0
}

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied before removal.
    let Some([addr, listen_fd]) = (unsafe { ACCEPT_ARGS.get(&id) }).copied() else {
        return 0;
    };
    let _ = ACCEPT_ARGS.remove(&id);
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
    record_socket(&key, &info);
    set_sock_gen(key.tgid, key.fd, info.ts_ns);
    0
}

#[inline(always)]
fn process_event(k: u32, tgid: u32, flags: u64) {
    let rec = ProcessRecord {
        kind: k,
        tgid,
        ts_ns: now(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ProcessRecord>(&rec, flags).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}

#[tracepoint]
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    // Execs are rare and time-critical (user space reads /proc and attaches before a
    // short-lived client is gone), so they always wake the reader.
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    process_event(
        kind::EXEC,
        (bpf_get_current_pid_tgid() >> 32) as u32,
        BPF_RB_FORCE_WAKEUP,
    );
    0
}

#[tracepoint]
pub fn proc_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // Only the thread-group leader's exit ends the process.
    if id as u32 == (id >> 32) as u32 {
        process_event(kind::EXIT, (id >> 32) as u32, wakeup_flags());
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this is never
    // reached in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
