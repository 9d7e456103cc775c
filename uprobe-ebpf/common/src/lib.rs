//! The single definition of everything that crosses sightline's kernel/user boundary.
//!
//! The eBPF programs (`sightline-ebpf`) and the user side (`sightline`) both compile against
//! this crate, so a record layout can never drift between the two. Every struct is `#[repr(C)]`
//! with explicit padding fields: the verifier rejects reads of uninitialised stack bytes, and
//! the user side must not see compiler-chosen padding.
#![no_std]

/// Largest payload slice one record can carry. A power of two so the programs can bound a
/// length with a mask that the verifier understands.
pub const MAX_CAPTURE: usize = 8192;

/// Default payload bytes per record: enough for request and response heads with cookies.
pub const DEFAULT_CAPTURE: u32 = 4096;

/// Ring buffer size; a power of two multiple of the page size, as the kernel requires.
pub const RING_BYTES: u32 = 8 << 20;

/// Unread bytes in the ring buffer past which a record wakes the reader. Below it, records
/// are written without a wakeup and the reader drains them on its timer: one wakeup per
/// record would cost a context switch per TLS call on a busy server.
pub const WAKEUP_BYTES: u64 = 256 << 10;

/// How often the reader drains the ring buffer without being woken, in milliseconds.
pub const DRAIN_INTERVAL_MS: u64 = 20;

/// Names of maps and globals, shared so a rename breaks the build rather than the loader.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONN_INFO: &str = "CONN_INFO";
    pub const CAPTURE_LEN: &str = "CAPTURE_LEN";
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Offsets of `sock:inet_sock_set_state` fields, read from its tracefs format at load.
    pub const SS_OFFSETS: &str = "SS_OFFSETS";
}

/// Field offsets of the `sock:inet_sock_set_state` tracepoint, from its tracefs `format`, so
/// no layout is guessed. A zero `newstate` offset means the tracepoint is not used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStateOffsets {
    pub newstate: u32,
    pub sport: u32,
    pub family: u32,
    pub saddr: u32,
    pub saddr_v6: u32,
    pub skaddr: u32,
}

/// Record kinds, the first `u32` of every ring buffer record.
pub mod kind {
    /// A payload slice from a TLS library call ([`super::DataHeader`] + bytes).
    pub const DATA: u32 = 1;
    /// A process replaced its image ([`super::ProcessRecord`]).
    pub const EXEC: u32 = 2;
    /// A thread group leader exited ([`super::ProcessRecord`]).
    pub const EXIT: u32 = 3;
    /// A TLS connection object was freed ([`super::CloseRecord`]): its connection is over,
    /// and the same address may next belong to another connection.
    pub const CLOSE: u32 = 4;
}

/// Direction of a payload, from the observed process's point of view.
pub mod direction {
    /// Bytes the process received (`SSL_read`).
    pub const INGRESS: u32 = 0;
    /// Bytes the process sent (`SSL_write`).
    pub const EGRESS: u32 = 1;
}

/// Which capture point produced a record.
pub mod source {
    pub const OPENSSL: u32 = 1;
}

/// Indexes into the per-CPU `COUNTERS` array. The user side sums them over CPUs and exports
/// them as metrics; losses are never logged per event.
pub mod counter {
    /// A record could not be reserved in the ring buffer: user space fell behind.
    pub const RINGBUF_FULL: u32 = 0;
    /// A library call's arguments could not be stored (too many calls in flight).
    pub const ACTIVE_FULL: u32 = 1;
    /// The target's buffer could not be read (paged out or bad pointer).
    pub const READ_FAILED: u32 = 2;
    /// A return probe fired with no matching entry (attached mid-call).
    pub const ORPHAN_RETURN: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Header of a [`kind::DATA`] record. `captured` payload bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u32,
    pub direction: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Call entry, `CLOCK_MONOTONIC` nanoseconds.
    pub start_ns: u64,
    /// Call return, `CLOCK_MONOTONIC` nanoseconds.
    pub end_ns: u64,
    /// The library's connection handle (`SSL*`), unique per live connection in a process.
    pub conn: u64,
    /// Socket fd the library touched during this call, or -1 if it touched none (data served
    /// from the library's own buffer, or a memory BIO as in node).
    pub fd: i32,
    pub source: u32,
    /// True length the call transferred.
    pub len: u32,
    /// Payload bytes that follow the header (`<= len`, `<= MAX_CAPTURE`).
    pub captured: u32,
    /// When the socket behind `fd` was connected or accepted ([`SockInfo::ts_ns`]), 0 if
    /// unknown. Libraries reuse freed `SSL*` addresses and the kernel reuses fd numbers, so
    /// this is what tells a new connection from an old one under the same handle.
    pub sock_ts: u64,
}

pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataHeader>();

/// The per-CPU scratch area a record is assembled in before it is copied to the ring buffer:
/// the BPF stack is only 512 bytes.
#[repr(C)]
pub struct DataRecord {
    pub header: DataHeader,
    pub data: [u8; MAX_CAPTURE],
}

/// The end of a library connection object (`SSL_free`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseRecord {
    pub kind: u32,
    pub tgid: u32,
    pub conn: u64,
    pub ts_ns: u64,
}

/// An exec or exit notification for discovery.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessRecord {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    /// The task's name after exec: the identity of last resort for a process that is gone
    /// before user space reads /proc.
    pub comm: [u8; 16],
}

/// Key of [`SockInfo`]: a socket fd in a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
}

/// How a socket came to be, which tells the role of the process on it.
pub mod sock_role {
    pub const UNKNOWN: u32 = 0;
    /// The process called `connect()`: it is the client.
    pub const CONNECTED: u32 = 1;
    /// The process got the fd from `accept()`: it is the server.
    pub const ACCEPTED: u32 = 2;
}

/// A socket as seen at `connect()` or `accept()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub role: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Peer port, host byte order.
    pub port: u16,
    /// Peer address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub addr: [u8; 16],
    pub ts_ns: u64,
    /// Local port, host byte order, 0 if unknown (clients: from the SYN_SENT transition).
    pub local_port: u16,
    pub _pad: u16,
    /// For accepted sockets, the listening fd: its address is the local one.
    pub listen_fd: i32,
    /// Local address, same encoding as `addr`.
    pub local_addr: [u8; 16],
}

/// Slots for calls in flight, indexed by thread id modulo this. An array slot costs a fraction
/// of a hash map operation, and the probes run on every TLS call; two threads whose ids
/// collide and are both inside a TLS call at once lose one call, counted as an orphan.
pub const ACTIVE_SLOTS: u32 = 1 << 16;

/// Slots of the socket generation table (see [`SockGen`]).
pub const SOCK_GEN_SLOTS: u32 = 1 << 16;

/// When a process's fd became its current socket, in a direct-mapped table: the TLS probes
/// read it on every call, and an array slot costs a fraction of the LRU map's lookup. A slot
/// taken by a colliding (pid, fd) reads as unknown, never as wrong.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockGen {
    pub tgid: u32,
    pub fd: i32,
    pub ts_ns: u64,
}

/// The [`SockGen`] slot of a socket.
#[inline(always)]
pub fn sock_gen_slot(tgid: u32, fd: i32) -> u32 {
    (tgid.wrapping_mul(0x9e37_79b1) ^ fd as u32) & (SOCK_GEN_SLOTS - 1)
}

/// Arguments of a library call in flight, stored at entry and consumed at return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ActiveCall {
    /// The owning thread's `pid_tgid`; 0 when the slot is free.
    pub id: u64,
    pub conn: u64,
    pub buf: u64,
    /// `size_t *` out-parameter of the `_ex` forms; 0 for `SSL_read`/`SSL_write`.
    pub ex_len_ptr: u64,
    pub start_ns: u64,
    pub sock_ts: u64,
    pub direction: u32,
    pub fd: i32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `repr(C)`, `Copy`, and valid for any bit pattern.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::ActiveCall {}
    unsafe impl aya::Pod for super::SockStateOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_no_hidden_padding() {
        assert_eq!(DATA_HEADER_LEN, 64);
        assert_eq!(core::mem::size_of::<SockInfo>(), 56);
        assert_eq!(core::mem::size_of::<SockStateOffsets>(), 24);
        assert_eq!(core::mem::size_of::<ConnKey>(), 8);
        assert_eq!(core::mem::size_of::<ProcessRecord>(), 32);
        assert_eq!(core::mem::size_of::<CloseRecord>(), 24);
    }
}
