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

/// TCP connections the kernel follows at once for network signals; past it new ones are
/// counted ([`counter::FLOWS_FULL`]) and not followed. Entries are allocated on demand.
pub const MAX_FLOWS: u32 = 262_144;
/// Listening ports remembered for accepted connections' owners.
pub const MAX_LISTENERS: u32 = 8192;

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
    /// Earlier sockets of an fd, by their stamp.
    pub const CONN_PAST: &str = "CONN_PAST";
    pub const CAPTURE_LEN: &str = "CAPTURE_LEN";
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Offsets of `sock:inet_sock_set_state` fields, read from its tracefs format at load.
    pub const SS_OFFSETS: &str = "SS_OFFSETS";
    /// Struct offsets of each Go process, by tgid ([`super::GoOffsets`]).
    pub const GO_PROCS: &str = "GO_PROCS";
    /// Client sockets whose outgoing requests get a `traceparent` (a sockhash).
    pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
    /// One `u32`: 1 once the injection programs are attached.
    pub const INJECT_ON: &str = "INJECT_ON";
    /// One `u32`: 1 once the programs that write into process memory are attached.
    pub const WRITE_ON: &str = "WRITE_ON";
    /// What each socket's first bytes said, by (tgid, fd) ([`super::SockClass`]).
    pub const SOCK_CLASS: &str = "SOCK_CLASS";
    /// sightline's own client sockets, by local port: their `CONN_INFO` key.
    pub const AGENT_PORTS: &str = "AGENT_PORTS";
    /// TCP connections followed for network signals, by kernel socket address.
    pub const FLOWS: &str = "FLOWS";
    /// Listening ports and the process that listens, for accepted connections' owner.
    pub const LISTENERS: &str = "LISTENERS";
    pub const TCP_OFFSETS: &str = "TCP_OFFSETS";
    pub const TCP_EVENT_OFFSETS: &str = "TCP_EVENT_OFFSETS";
}

/// Names of the eBPF programs: each is its function's name in the eBPF crate, and the loader
/// finds it by this name.
pub mod programs {
    // OpenSSL (`openssl.rs`).
    pub const SSL_READ: &str = "ssl_read";
    pub const SSL_WRITE: &str = "ssl_write";
    pub const SSL_READ_EX: &str = "ssl_read_ex";
    pub const SSL_WRITE_EX: &str = "ssl_write_ex";
    pub const SSL_FREE: &str = "ssl_free";
    pub const SSL_RET: &str = "ssl_ret";
    // Go net/http (`go/`).
    pub const GO_SERVER_ENTER: &str = "go_server_enter";
    pub const GO_XSERVER_ENTER: &str = "go_xserver_enter";
    pub const GO_SERVER_RET: &str = "go_server_ret";
    pub const GO_CLIENT_ENTER: &str = "go_client_enter";
    pub const GO_CLIENT_RET: &str = "go_client_ret";
    pub const GO_NEWPROC_ENTER: &str = "go_newproc_enter";
    pub const GO_NEWPROC_RET: &str = "go_newproc_ret";
    pub const GO_PCONN_ENTER: &str = "go_pconn_enter";
    pub const GO_H2CC_ENTER: &str = "go_h2cc_enter";
    /// Does nothing but count: benchmarks attach it where the Go probes would go.
    pub const GO_EMPTY: &str = "go_empty";
    // traceparent written in the process's memory (`propagate/memory.rs`).
    pub const GO_TP_H1: &str = "go_tp_h1";
    pub const GO_TP_H2_ENTER: &str = "go_tp_h2_enter";
    pub const GO_TP_H2_FLUSH: &str = "go_tp_h2_flush";
    // traceparent written at the socket (`propagate/socket.rs`).
    pub const GO_INJECT: &str = "go_inject";
    pub const GO_SOCKOPS: &str = "go_sockops";
    pub const GO_CONNECT4: &str = "go_connect4";
    pub const GO_CONNECT6: &str = "go_connect6";
    // Tracepoints: discovery (`process.rs`) and sockets (`sockets.rs`).
    pub const PROC_EXEC: &str = "proc_exec";
    pub const PROC_EXIT: &str = "proc_exit";
    pub const SOCK_CONNECT: &str = "sock_connect";
    pub const SOCK_CONNECT_EXIT: &str = "sock_connect_exit";
    pub const ACCEPT_ENTER: &str = "accept_enter";
    pub const ACCEPT_EXIT: &str = "accept_exit";
    pub const SOCK_STATE: &str = "sock_state";
    // Socket syscalls (`syscalls.rs`): plaintext in any runtime, and the fd a TLS call used.
    pub const SYS_READ: &str = "sys_read";
    pub const SYS_RECVFROM: &str = "sys_recvfrom";
    pub const SYS_WRITE: &str = "sys_write";
    pub const SYS_READV: &str = "sys_readv";
    pub const SYS_WRITEV: &str = "sys_writev";
    pub const SYS_RECVMSG: &str = "sys_recvmsg";
    pub const SYS_SENDMSG: &str = "sys_sendmsg";
    pub const SYS_SENDFILE: &str = "sys_sendfile";
    pub const SYS_DATA_EXIT: &str = "sys_data_exit";
    pub const SYS_CLOSE: &str = "sys_close";
    // Network signals (`tcp`).
    pub const TCP_STATE: &str = "tcp_state";
    pub const TCP_RETRANSMIT: &str = "tcp_retransmit";
    pub const TCP_RESET_SENT: &str = "tcp_reset_sent";
    pub const TCP_RESET_RECEIVED: &str = "tcp_reset_received";
    pub const TCP_SAMPLE: &str = "tcp_sample";
    pub const TCP_DESTROY: &str = "tcp_destroy";

    /// Every uprobe program, loaded at start (the memory-writing ones load on their own,
    /// since lockdown refuses them).
    pub const UPROBES: [&str; 16] = [
        SSL_READ,
        SSL_WRITE,
        SSL_READ_EX,
        SSL_WRITE_EX,
        SSL_FREE,
        SSL_RET,
        GO_SERVER_ENTER,
        GO_XSERVER_ENTER,
        GO_SERVER_RET,
        GO_CLIENT_ENTER,
        GO_CLIENT_RET,
        GO_NEWPROC_ENTER,
        GO_NEWPROC_RET,
        GO_PCONN_ENTER,
        GO_H2CC_ENTER,
        GO_EMPTY,
    ];
    /// The programs that write into a process's memory.
    pub const MEMORY_WRITERS: [&str; 3] = [GO_TP_H1, GO_TP_H2_ENTER, GO_TP_H2_FLUSH];
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
    /// Used by the network signals only; zero `oldstate` means they are off.
    pub oldstate: u32,
    pub dport: u32,
    pub protocol: u32,
    pub daddr: u32,
    pub daddr_v6: u32,
}

/// Where the `struct sock` pointer sits in the other TCP tracepoints, from their tracefs
/// formats. Zero means the tracepoint is not used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpEventOffsets {
    pub retransmit_sk: u32,
    pub send_reset_sk: u32,
    pub receive_reset_sk: u32,
    /// `tcp:tcp_destroy_sock`: where a followed connection is forgotten. Without it, at close,
    /// and a reset sent while closing (an abortive close sends it after) is not reported.
    pub destroy_sk: u32,
}

/// Offsets of `struct sock` and `struct tcp_sock` fields, from the kernel's BTF, so that no
/// layout is assumed. `ready` zero: no BTF, the figures read as zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOffsets {
    pub ready: u32,
    pub sk_err: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub bytes_received: u32,
    pub bytes_acked: u32,
    pub segs_in: u32,
    pub segs_out: u32,
}

/// What [`TcpRecord::event`] says happened.
pub mod tcp_event {
    /// A connect() completed (the process is the client).
    pub const CONNECTED: u32 = 1;
    /// A connection to a listening socket completed (the process is the server).
    pub const ACCEPTED: u32 = 2;
    /// An established connection ended; its totals are final.
    pub const CLOSED: u32 = 3;
    /// A connect() failed; `err` says why (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...), 0
    /// when the process gave up first.
    pub const FAILED: u32 = 4;
    /// A segment was retransmitted; `state` is the socket's TCP state (SYN_SENT: a SYN).
    pub const RETRANSMIT: u32 = 5;
    pub const RESET_SENT: u32 = 6;
    pub const RESET_RECEIVED: u32 = 7;
    /// The connection's figures, at most once a second while it receives segments.
    pub const SAMPLE: u32 = 8;
}

/// [`Flow::opened`] of a connection that closed and whose socket is not destroyed yet.
pub const FLOW_CLOSED: u32 = u32::MAX;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`, UAPI-stable).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// A TCP connection the kernel follows, by socket address: whose it is and when it began.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub tgid: u32,
    /// [`tcp_event::CONNECTED`] or [`tcp_event::ACCEPTED`] once established, 0 before,
    /// [`FLOW_CLOSED`] after.
    pub opened: u32,
    /// SYN_SENT for a client, ESTABLISHED for an accepted connection.
    pub start_ns: u64,
    pub last_sample_ns: u64,
}

/// A listening socket's port, by family and port, for whose an accepted connection is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub family: u16,
    pub port: u16,
}

/// A [`kind::TCP`] record: one connection event with the connection's figures so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRecord {
    pub kind: u32,
    pub event: u32,
    pub tgid: u32,
    pub family: u16,
    /// Local and peer port, host order.
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    /// The TCP state when the event happened.
    pub state: i32,
    /// The socket's kernel address: the connection's identity while it lives.
    pub sk: u64,
    pub ts_ns: u64,
    /// [`Flow::start_ns`]; 0 when the connection began before sightline.
    pub start_ns: u64,
    /// IPv4 in the first 4 bytes, or IPv6. Filled on CONNECTED, ACCEPTED and FAILED.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub err: i32,
    /// Smoothed RTT in µs (the kernel keeps it ×8; this is unscaled).
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    pub _pad2: u32,
    pub bytes_received: u64,
    /// Bytes sent and acknowledged by the peer.
    pub bytes_acked: u64,
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
    /// A Go net/http request, server or client side ([`super::GoHttpRecord`]).
    pub const GO_HTTP: u32 = 5;
    /// Plaintext a socket syscall moved ([`super::DataHeader`] + bytes; `conn` is 0, `fd` and
    /// `sock_ts` name the socket).
    pub const SOCK_DATA: u32 = 6;
    /// A socket whose bytes were copied was closed ([`super::CloseRecord`]; `conn` is the fd).
    pub const SOCK_CLOSE: u32 = 7;
    /// A [`super::TcpRecord`]: a TCP connection event, for the network signals.
    pub const TCP: u32 = 8;
}

/// What a socket's first bytes said ([`SockClass::class`]). Only `UNKNOWN` and `HTTP` sockets
/// have their bytes copied; every other class costs one map lookup per syscall.
pub mod sock_class {
    /// No bytes yet.
    pub const UNKNOWN: u8 = 0;
    /// An HTTP/1.x request or response line.
    pub const HTTP: u8 = 1;
    /// A TLS record: ciphertext, seen in plaintext by the library probes if at all.
    pub const TLS: u8 = 2;
    /// HTTP/2 with prior knowledge (the client preface).
    pub const H2: u8 = 3;
    /// Anything else: a database protocol, DNS, a custom one.
    pub const OTHER: u8 = 4;
    /// A library capture point (Go) reports this process's plaintext: its view wins.
    pub const LIBRARY: u8 = 5;
    /// User space asked for silence: the process is not selected, or the peer is sightline.
    pub const IGNORED: u8 = 6;
}

/// What a socket's first `n` bytes (at most 8, in `first`) say, or `None` while too few
/// arrived to tell. Shared so that the kernel's classification is unit-tested here.
#[inline(always)]
pub fn classify(first: &[u8; 8], n: u64) -> Option<u8> {
    if n >= 2 && first[0] == 0x16 && first[1] == 0x03 {
        return Some(sock_class::TLS);
    }
    if n < 4 {
        return None;
    }
    let w = u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
    const fn word(b: &[u8; 4]) -> u32 {
        u32::from_le_bytes(*b)
    }
    // Request methods (by their first four bytes) and a response's `HTTP/`.
    const HTTP: [u32; 10] = [
        word(b"GET "),
        word(b"POST"),
        word(b"PUT "),
        word(b"HEAD"),
        word(b"DELE"),
        word(b"PATC"),
        word(b"OPTI"),
        word(b"CONN"),
        word(b"TRAC"),
        word(b"HTTP"),
    ];
    let mut i = 0;
    while i < HTTP.len() {
        if w == HTTP[i] {
            return Some(sock_class::HTTP);
        }
        i += 1;
    }
    if w == word(b"PRI ") {
        return Some(sock_class::H2);
    }
    Some(sock_class::OTHER)
}

/// A socket the kernel saw being connected or accepted, by [`ConnKey`]: its stamp (the
/// [`SockInfo::ts_ns`] of its connect/accept) and what its first bytes said.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockClass {
    pub ts_ns: u64,
    pub class: u8,
    pub _pad: [u8; 7],
}

/// Bits of [`DataHeader::flags`].
pub mod data_flags {
    /// The call touched no socket; `fd` and `sock_ts` are the TLS socket this thread read
    /// just before it. A library with a memory BIO (node) moves ciphertext between the socket
    /// and its buffers itself: it reads a TLS socket, then `SSL_read`s what it read.
    pub const FD_FROM_READ: u32 = 1;
}

/// Direction of a payload, from the observed process's point of view.
pub mod direction {
    /// Bytes the process received (`SSL_read`).
    pub const INGRESS: u32 = 0;
    /// Bytes the process sent (`SSL_write`).
    pub const EGRESS: u32 = 1;
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
    /// Hits of the empty Go probe that benchmarks attach in place of the real ones.
    pub const EMPTY_PROBE_HITS: u32 = 4;
    /// Outgoing requests a `traceparent` was written into at the socket.
    pub const INJECTED: u32 = 5;
    /// Outgoing requests that waited for one but whose first bytes were not a request line
    /// sightline can extend (too long a line, or not HTTP/1.x), or whose head already carried
    /// a `traceparent` or did not end within 1 KiB: sent untouched.
    pub const INJECT_SKIPPED: u32 = 6;
    /// Client sockets that could not be added to the injection sockhash (full).
    pub const INJECT_SOCKS_FULL: u32 = 7;
    /// Outgoing requests (HTTPS, HTTP/2) a `traceparent` was written into in the process's
    /// own memory, before encryption or compression.
    pub const WRITTEN_IN_PROCESS: u32 = 8;
    /// Requests that waited for one there but were left untouched: no room left in the
    /// connection's buffer, a frame sightline did not expect, a failed write, or a header
    /// map it could not read whole (it might hold a `traceparent`).
    pub const WRITE_SKIPPED: u32 = 9;
    /// Sockets classified by their first bytes, one counter per class ([`super::sock_class`]).
    pub const SOCK_HTTP: u32 = 10;
    pub const SOCK_TLS: u32 = 11;
    pub const SOCK_H2: u32 = 12;
    pub const SOCK_OTHER: u32 = 13;
    /// Sockets of processes whose plaintext a library capture point (Go) reports: the socket
    /// view of their requests is not copied, so each is reported once.
    pub const SOCK_LIBRARY: u32 = 14;
    /// A socket syscall whose arguments could not be kept to its return: another thread held
    /// the same slot.
    pub const SYSCALL_SLOT_BUSY: u32 = 15;
    /// TCP connections not followed because the flow table was full.
    pub const FLOWS_FULL: u32 = 16;
    /// TCP connections followed, and those that ended: their difference is the flow table's
    /// fill.
    pub const FLOWS_ADDED: u32 = 17;
    pub const FLOWS_REMOVED: u32 = 18;
    /// Retransmits and resets on connections opened before sightline (not followed).
    pub const TCP_UNFOLLOWED: u32 = 19;
    /// Failed inserts into each hash table: `INSERT_FAILED + table::X`.
    pub const INSERT_FAILED: u32 = 20;
    pub const COUNT: u32 = INSERT_FAILED + super::table::COUNT;
}

/// Every hash table the programs keep. User space exports each one's fill and sweeps the
/// entries of processes that exited; the programs count failed inserts at
/// [`counter::INSERT_FAILED`] plus the table's index.
pub mod table {
    pub const SYN_SENT: u32 = 0;
    pub const PENDING_CONNECT: u32 = 1;
    pub const CONN_INFO: u32 = 2;
    pub const CONN_PAST: u32 = 3;
    pub const ACCEPT_ARGS: u32 = 4;
    pub const SOCK_CLASS: u32 = 5;
    pub const AGENT_PORTS: u32 = 6;
    pub const GO_PROCS: u32 = 7;
    pub const GO_SERVER: u32 = 8;
    pub const GO_CLIENT: u32 = 9;
    pub const GO_PARENT: u32 = 10;
    pub const GO_NEWPROC: u32 = 11;
    pub const PENDING_TRACE: u32 = 12;
    pub const INJECT_WANTED: u32 = 13;
    pub const INJECT_SOCKS: u32 = 14;
    pub const PENDING_WRITE: u32 = 15;
    pub const H2_HEADERS: u32 = 16;
    pub const FLOWS: u32 = 17;
    pub const LISTENERS: u32 = 18;
    pub const COUNT: u32 = 19;

    /// Where a table's key holds the process (tgid) its entry belongs to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Owner {
        /// Not keyed by process: the entry ages out (an LRU) or is removed by the kernel.
        None,
        /// The key's first `u32` is the tgid (`ConnKey`, `GoKey`, a tgid).
        Tgid,
        /// The key is a thread's `pid_tgid`: the tgid is its upper half.
        PidTgid,
        /// The tgid is the `u32` at this byte offset of the key (`InjectKey`).
        At(usize),
    }

    /// A table: its map's name, the label its metrics carry, and whose its entries are.
    #[derive(Clone, Copy, Debug)]
    pub struct Table {
        pub map: &'static str,
        pub label: &'static str,
        pub owner: Owner,
    }

    const fn t(map: &'static str, label: &'static str, owner: Owner) -> Table {
        Table { map, label, owner }
    }

    /// Every table, in index order.
    pub const ALL: [Table; COUNT as usize] = [
        t("SYN_SENT", "kernel_syn_sent", Owner::None),
        t("PENDING_CONNECT", "kernel_pending_connect", Owner::PidTgid),
        t("CONN_INFO", "kernel_conn_info", Owner::Tgid),
        t("CONN_PAST", "kernel_conn_past", Owner::None),
        t("ACCEPT_ARGS", "kernel_accept_args", Owner::PidTgid),
        t("SOCK_CLASS", "kernel_sock_class", Owner::Tgid),
        t("AGENT_PORTS", "kernel_agent_ports", Owner::None),
        t("GO_PROCS", "kernel_go_procs", Owner::Tgid),
        t("GO_SERVER", "kernel_go_server", Owner::Tgid),
        t("GO_CLIENT", "kernel_go_client", Owner::Tgid),
        t("GO_PARENT", "kernel_go_parent", Owner::Tgid),
        t("GO_NEWPROC", "kernel_go_newproc", Owner::PidTgid),
        t(
            "PENDING_TRACE",
            "kernel_pending_trace",
            Owner::At(core::mem::offset_of!(super::InjectKey, tgid)),
        ),
        t("INJECT_WANTED", "kernel_inject_wanted", Owner::None),
        t("INJECT_SOCKS", "kernel_inject_socks", Owner::None),
        t("PENDING_WRITE", "kernel_pending_write", Owner::Tgid),
        t("H2_HEADERS", "kernel_h2_headers", Owner::Tgid),
        t("FLOWS", "kernel_tcp_flows", Owner::None),
        t("LISTENERS", "kernel_listeners", Owner::None),
    ];
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
    /// from the library's own buffer, or a memory BIO as in node); see `flags`.
    pub fd: i32,
    /// [`data_flags`].
    pub flags: u32,
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
/// the BPF stack is only 512 bytes. At most [`MAX_CAPTURE`] bytes of `data` are used; it is
/// twice that so that the verifier can bound a copy into it at an offset (offset and size
/// each below `MAX_CAPTURE`) when a call's bytes are gathered from several buffers.
#[repr(C)]
pub struct DataRecord {
    pub header: DataHeader,
    pub data: [u8; MAX_CAPTURE * 2],
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

/// A Go struct field offset the symbolizer could not establish: the probes that need it do
/// not read it.
pub const GO_NO_OFFSET: u32 = u32::MAX;

/// Where the Go probes find what they read in one process, from the symbolizer (DWARF, the
/// offsets table, or disassembly). One per traced Go process, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoOffsets {
    pub g_goid: u32,
    pub req_method: u32,
    pub req_url: u32,
    pub req_proto_major: u32,
    pub req_proto_minor: u32,
    pub req_header: u32,
    pub req_host: u32,
    pub req_remote_addr: u32,
    pub req_tls: u32,
    pub req_pattern: u32,
    pub url_scheme: u32,
    pub url_host: u32,
    pub url_path: u32,
    pub url_raw_query: u32,
    pub resp_status_code: u32,
    pub response_conn: u32,
    pub response_status: u32,
    pub conn_rwc: u32,
    pub tls_conn_conn: u32,
    pub net_conn_fd: u32,
    pub netfd_pfd: u32,
    pub fd_sysfd: u32,
    pub hmap_count: u32,
    pub hmap_b: u32,
    pub hmap_buckets: u32,
    pub pconn_conn: u32,
    pub pconn_tls_state: u32,
    pub h2rw_rws: u32,
    pub h2rws_status: u32,
    pub h2cc_tconn: u32,
    /// `golang.org/x/net/http2`'s own `responseWriter.rws` and `responseWriterState.status`,
    /// for servers built on x/net's HTTP/2 server (h2c, `ServeConn`, `ConfigureServer`).
    pub xh2rw_rws: u32,
    pub xh2rws_status: u32,
    /// `runtime.g.parentGoid` (Go 1.21+): a goroutine's creator, without probing
    /// `runtime.newproc1` on every goroutine start.
    pub g_parent_goid: u32,
    /// Where a `traceparent` is written into a client request in the process's memory:
    /// `persistConn.bw` and `http2ClientConn.bw` (each a `*bufio.Writer`), and that writer's
    /// `buf` and `n`.
    pub pconn_bw: u32,
    pub h2cc_bw: u32,
    pub bufio_buf: u32,
    pub bufio_n: u32,
    /// Bytes of `http.Request` (at most [`GO_REQ_WINDOW`]) and of `url.URL` (at most
    /// [`GO_URL_WINDOW`]) that hold every field the probes read: each is copied in one read,
    /// not a read per field. 0: read field by field.
    pub req_window: u32,
    pub url_window: u32,
}

/// Room for the first bytes of an `http.Request`, copied in one read; a window ends at least
/// a word before it (Go 1.23's `Pattern` ends at 248).
pub const GO_REQ_WINDOW: u32 = 256;
/// The same for a `url.URL` (`RawQuery` ends at 112).
pub const GO_URL_WINDOW: u32 = 128;

/// The window of a struct whose fields at `fields` (offset, size) are read: the bytes up to
/// the end of the last field that fits in `cap`. Fields past it are read one by one.
pub fn go_window(fields: &[(u32, u32)], cap: u32) -> u32 {
    fields
        .iter()
        .filter(|(off, _)| *off != GO_NO_OFFSET)
        .map(|(off, size)| off.saturating_add(*size))
        .filter(|end| *end <= cap)
        .max()
        .unwrap_or(0)
}

impl Default for GoOffsets {
    fn default() -> Self {
        GoOffsets {
            g_goid: GO_NO_OFFSET,
            req_method: GO_NO_OFFSET,
            req_url: GO_NO_OFFSET,
            req_proto_major: GO_NO_OFFSET,
            req_proto_minor: GO_NO_OFFSET,
            req_header: GO_NO_OFFSET,
            req_host: GO_NO_OFFSET,
            req_remote_addr: GO_NO_OFFSET,
            req_tls: GO_NO_OFFSET,
            req_pattern: GO_NO_OFFSET,
            url_scheme: GO_NO_OFFSET,
            url_host: GO_NO_OFFSET,
            url_path: GO_NO_OFFSET,
            url_raw_query: GO_NO_OFFSET,
            resp_status_code: GO_NO_OFFSET,
            response_conn: GO_NO_OFFSET,
            response_status: GO_NO_OFFSET,
            conn_rwc: GO_NO_OFFSET,
            tls_conn_conn: GO_NO_OFFSET,
            net_conn_fd: GO_NO_OFFSET,
            netfd_pfd: GO_NO_OFFSET,
            fd_sysfd: GO_NO_OFFSET,
            hmap_count: GO_NO_OFFSET,
            hmap_b: GO_NO_OFFSET,
            hmap_buckets: GO_NO_OFFSET,
            pconn_conn: GO_NO_OFFSET,
            pconn_tls_state: GO_NO_OFFSET,
            h2rw_rws: GO_NO_OFFSET,
            h2rws_status: GO_NO_OFFSET,
            h2cc_tconn: GO_NO_OFFSET,
            xh2rw_rws: GO_NO_OFFSET,
            xh2rws_status: GO_NO_OFFSET,
            g_parent_goid: GO_NO_OFFSET,
            pconn_bw: GO_NO_OFFSET,
            h2cc_bw: GO_NO_OFFSET,
            bufio_buf: GO_NO_OFFSET,
            bufio_n: GO_NO_OFFSET,
            req_window: 0,
            url_window: 0,
        }
    }
}

/// Which side of a Go HTTP call a record describes.
pub mod go_role {
    pub const SERVER: u32 = 1;
    pub const CLIENT: u32 = 2;
}

/// Capacities of the strings a [`GoHttpRecord`] carries; powers of two, so a length can be
/// bounded with a mask the verifier understands. Longer values are cut, and their true length
/// is kept.
pub const GO_METHOD_CAP: usize = 16;
pub const GO_PATH_CAP: usize = 256;
pub const GO_QUERY_CAP: usize = 128;
pub const GO_HOST_CAP: usize = 64;
pub const GO_ADDR_CAP: usize = 64;
pub const GO_PATTERN_CAP: usize = 128;
pub const GO_SCHEME_CAP: usize = 8;
/// Room for an incoming `traceparent` value (version 00 is 55 bytes).
pub const GO_TRACEPARENT_CAP: usize = 64;

/// How long a pending `traceparent` stays good: a request is written right after its client
/// probe leaves the ids.
pub const PENDING_TRACE_NS: u64 = 10_000_000_000;

/// The header line written into an outgoing HTTP/1.x request, right after its request line:
/// `traceparent: 00-<32 hex>-<16 hex>-<2 hex>\r\n`.
pub const TRACEPARENT_LINE_LEN: u32 = 13 + 55 + 2;

/// A TCP connection as both its client's uprobes (through the socket table) and the socket
/// layer see it: the sending process, the client's local port and the peer's address and
/// port. The ends alone are not unique on a host: two containers, each in its own network
/// namespace, may use the same ephemeral port towards the same peer. They are two
/// processes, and the process sending is known to both sides (`sk_msg` runs in the sender's
/// `sendmsg`), so the key holds it: finer than the namespace, and free to read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InjectKey {
    /// `AF_INET` or `AF_INET6`; 0 for none.
    pub family: u16,
    /// Local port, host byte order.
    pub local_port: u16,
    /// Peer port, host byte order.
    pub remote_port: u16,
    pub _pad: u16,
    /// Peer address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub remote_addr: [u8; 16],
    /// The client process.
    pub tgid: u32,
}

/// Bytes of a `traceparent` header field in an HPACK block: a literal without indexing (so
/// the connection's compression state is untouched), its name and its 55-byte value.
pub const TRACEPARENT_HPACK_LEN: u32 = 69;

/// The `traceparent` an outgoing request on a connection waits for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingTrace {
    pub trace_id: [u8; 16],
    pub span_id: u64,
    /// When the client probe left it (`CLOCK_MONOTONIC`): an entry whose call never returned
    /// (its goroutine died) is not written into a later connection that reuses the ends.
    pub at_ns: u64,
    pub flags: u8,
    /// 1 once written into the request.
    pub done: u8,
    pub _pad: [u8; 6],
}

/// A Go net/http call, built at the entry probe and sent at a return site.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoHttpRecord {
    pub kind: u32,
    pub role: u32,
    pub tgid: u32,
    /// The connection's socket fd, or -1 when it could not be followed.
    pub fd: i32,
    pub goid: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Client calls: the server request whose handling made this call (its goroutine and entry
    /// time), or zeros when there is none.
    pub parent_goid: u64,
    pub parent_start_ns: u64,
    pub status: u32,
    pub proto_major: u16,
    pub proto_minor: u16,
    pub tls: u8,
    /// W3C trace flags of `trace_id`.
    pub trace_flags: u8,
    /// Server: 1 when `trace_id` and `parent_span_id` came from an incoming `traceparent`.
    pub trace_given: u8,
    /// Client: 1 when a `traceparent` naming this call was written into the request.
    pub injected: u8,
    pub _pad: [u8; 4],
    /// The trace the kernel put this call in: an incoming `traceparent`'s, its server
    /// request's, or a fresh one. Big-endian, as in the header.
    pub trace_id: [u8; 16],
    /// This call's span id, chosen in the kernel, so that the id written into an outgoing
    /// request is the one the CLIENT span is exported with.
    pub span_id: u64,
    /// Server: the incoming `traceparent`'s parent id; client: its server request's span id;
    /// 0 when there is none.
    pub parent_span_id: u64,
    /// When the fd became this socket (its `SockGen` stamp), or 0: with the fd, it names the
    /// connection, so user space resolves its addresses once per connection, not per request.
    pub sock_gen: u64,
    pub method_len: u32,
    pub path_len: u32,
    pub query_len: u32,
    pub host_len: u32,
    pub addr_len: u32,
    pub pattern_len: u32,
    pub scheme_len: u32,
    pub _pad2: u32,
    pub method: [u8; GO_METHOD_CAP],
    pub path: [u8; GO_PATH_CAP],
    pub query: [u8; GO_QUERY_CAP],
    /// Server: the `Host` header; client: the URL's host (with port, if any).
    pub host: [u8; GO_HOST_CAP],
    /// Server: `Request.RemoteAddr` (the peer, `ip:port`).
    pub addr: [u8; GO_ADDR_CAP],
    /// Server: `Request.Pattern` (Go 1.23+), the ServeMux route.
    pub pattern: [u8; GO_PATTERN_CAP],
    /// Client: the URL's scheme.
    pub scheme: [u8; GO_SCHEME_CAP],
}

impl GoHttpRecord {
    /// An all-zero record, for sizing and for tests.
    pub const EMPTY: GoHttpRecord = GoHttpRecord {
        kind: 0,
        role: 0,
        tgid: 0,
        fd: 0,
        goid: 0,
        start_ns: 0,
        end_ns: 0,
        parent_goid: 0,
        parent_start_ns: 0,
        status: 0,
        proto_major: 0,
        proto_minor: 0,
        tls: 0,
        trace_flags: 0,
        trace_given: 0,
        injected: 0,
        _pad: [0; 4],
        trace_id: [0; 16],
        span_id: 0,
        parent_span_id: 0,
        sock_gen: 0,
        method_len: 0,
        path_len: 0,
        query_len: 0,
        host_len: 0,
        addr_len: 0,
        pattern_len: 0,
        scheme_len: 0,
        _pad2: 0,
        method: [0; GO_METHOD_CAP],
        path: [0; GO_PATH_CAP],
        query: [0; GO_QUERY_CAP],
        host: [0; GO_HOST_CAP],
        addr: [0; GO_ADDR_CAP],
        pattern: [0; GO_PATTERN_CAP],
        scheme: [0; GO_SCHEME_CAP],
    };
}

/// Key of a Go call in flight: a goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, valid for any bit pattern.
    unsafe impl aya::Pod for super::GoOffsets {}
    // SAFETY: each type is `repr(C)`, `Copy`, and valid for any bit pattern.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::SockClass {}
    unsafe impl aya::Pod for super::ActiveCall {}
    unsafe impl aya::Pod for super::SockStateOffsets {}
    unsafe impl aya::Pod for super::InjectKey {}
    unsafe impl aya::Pod for super::TcpOffsets {}
    unsafe impl aya::Pod for super::TcpEventOffsets {}
    unsafe impl aya::Pod for super::ListenKey {}
    unsafe impl aya::Pod for super::Flow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(b: &[u8]) -> Option<u8> {
        let mut first = [0u8; 8];
        let n = b.len().min(8);
        first[..n].copy_from_slice(&b[..n]);
        classify(&first, n as u64)
    }

    #[test]
    fn first_bytes_classify_a_socket() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x",
            b"HTTP/1.1 200 OK",
            b"OPTIONS *",
        ] {
            assert_eq!(class_of(http), Some(sock_class::HTTP), "{http:?}");
        }
        assert_eq!(class_of(b"\x16\x03\x01\x02\x00"), Some(sock_class::TLS));
        assert_eq!(class_of(b"PRI * HTTP/2.0"), Some(sock_class::H2));
        // PostgreSQL's startup, Redis, SSH, a DNS query: copied never.
        for other in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"*1\r\n$4",
            b"SSH-2.0",
            b"GETX",
        ] {
            assert_eq!(class_of(other), Some(sock_class::OTHER), "{other:?}");
        }
        // Too few bytes to tell: the next read decides.
        assert_eq!(class_of(b"GE"), None);
        assert_eq!(class_of(b""), None);
    }

    #[test]
    fn each_table_sits_at_its_index() {
        use table::*;
        for (i, name) in [
            (SYN_SENT, "SYN_SENT"),
            (PENDING_CONNECT, "PENDING_CONNECT"),
            (CONN_INFO, "CONN_INFO"),
            (CONN_PAST, "CONN_PAST"),
            (ACCEPT_ARGS, "ACCEPT_ARGS"),
            (SOCK_CLASS, "SOCK_CLASS"),
            (AGENT_PORTS, "AGENT_PORTS"),
            (GO_PROCS, "GO_PROCS"),
            (GO_SERVER, "GO_SERVER"),
            (GO_CLIENT, "GO_CLIENT"),
            (GO_PARENT, "GO_PARENT"),
            (GO_NEWPROC, "GO_NEWPROC"),
            (PENDING_TRACE, "PENDING_TRACE"),
            (INJECT_WANTED, "INJECT_WANTED"),
            (INJECT_SOCKS, "INJECT_SOCKS"),
            (PENDING_WRITE, "PENDING_WRITE"),
            (H2_HEADERS, "H2_HEADERS"),
            (FLOWS, "FLOWS"),
            (LISTENERS, "LISTENERS"),
        ] {
            assert_eq!(ALL[i as usize].map, name);
        }
        assert_eq!(ALL[FLOWS as usize].label, "kernel_tcp_flows");
    }

    #[test]
    fn header_has_no_hidden_padding() {
        assert_eq!(DATA_HEADER_LEN, 64);
        assert_eq!(core::mem::size_of::<SockInfo>(), 56);
        assert_eq!(core::mem::size_of::<SockStateOffsets>(), 11 * 4);
        assert_eq!(core::mem::size_of::<TcpOffsets>(), 8 * 4);
        assert_eq!(core::mem::size_of::<TcpEventOffsets>(), 4 * 4);
        assert_eq!(core::mem::size_of::<Flow>(), 24);
        assert_eq!(core::mem::size_of::<TcpRecord>(), 120);
        assert_eq!(core::mem::size_of::<ConnKey>(), 8);
        assert_eq!(core::mem::size_of::<ProcessRecord>(), 32);
        assert_eq!(core::mem::size_of::<CloseRecord>(), 24);
        assert_eq!(core::mem::size_of::<GoOffsets>(), 39 * 4);
        assert_eq!(core::mem::size_of::<InjectKey>(), 28);
        assert_eq!(core::mem::size_of::<PendingTrace>(), 40);
        assert_eq!(
            core::mem::size_of::<GoHttpRecord>(),
            56 + 16
                + 8
                + 32
                + 32
                + GO_METHOD_CAP
                + GO_PATH_CAP
                + GO_QUERY_CAP
                + GO_HOST_CAP
                + GO_ADDR_CAP
                + GO_PATTERN_CAP
                + GO_SCHEME_CAP
        );
    }
}
