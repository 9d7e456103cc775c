//! sightline's own health: every loss is counted here and exported as a metric, never logged
//! once per event (Coroot #369 turned loss into a log flood).
//!
//! [`COUNTERS`] is the one table of them: adding a counter is one variant and one row.
//! Counters that share a metric name and attributes are summed into one series.

use crate::protocols::DropReason;
use sightline_common::{counter as kernel, table};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One of sightline's own counters; [`COUNTERS`] says how each is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    EventsLost,
    KernelActiveFull,
    KernelReadFailed,
    KernelOrphanReturns,
    TraceparentInjected,
    TraceparentSkipped,
    TraceparentSocketsFull,
    TraceparentWrittenInProcess,
    TraceparentWriteSkipped,
    Records,
    RecordsTruncated,
    RecordsUndecodable,
    AttachFailures,
    Calls,
    CallsDeduplicated,
    SpansDropped,
    SpansExported,
    ExportFailures,
    SocketsHttp,
    SocketsTls,
    SocketsH2,
    SocketsOther,
    SocketsLibrary,
    KernelSyscallSlotBusy,
    OwnConnections,
    KernelFlowsFull,
    FlowsUntracked,
    FlowsUnattributed,
    KernelTcpUnfollowed,
    KernelFlowsAdded,
    KernelFlowsRemoved,
    KernelFlowsFill,
    FlowsFollowed,
    RefusedMemory,
    RefusedTime,
    RefusedNotRegular,
    AnalysesPending,
    TableSwept,
    TableSweepsDropped,
    ThreadParentFound,
    ThreadParentAmbiguous,
    ThreadsOpen,
}

/// How a counter is exported: its metric, the attributes of its series, what it means, and
/// the kernel counter it copies, if the kernel keeps it.
pub struct CounterDef {
    pub counter: Counter,
    pub metric: &'static str,
    pub attributes: &'static [(&'static str, &'static str)],
    pub description: &'static str,
    pub kernel: Option<u32>,
    /// A level (a table's fill), exported as a gauge; the others only grow.
    pub gauge: bool,
}

const UNTRACKED: &str = "Library calls not tracked (no in-flight slot, unreadable memory, or a return without its entry).";
const CLASSIFIED: &str = "Sockets classified by their first bytes at the socket syscalls (class: http, whose bytes are copied; tls, h2 and other, which cost one map lookup per syscall from then on; library, in a process whose requests a library capture point reports).";
const UNTRACKED_FLOWS: &str = "TCP connections not followed for network signals because a flow table was full (table: kernel or user).";
const KERNEL_FLOWS: &str = "TCP connections the kernel started (op: added) and stopped (op: removed) following for network signals.";
pub const FILL: &str = "Entries in sightline's bounded tables: the kernel's (table: kernel_*, one per eBPF hash table, e.g. kernel_go_client, kernel_sock_class, kernel_tcp_flows) and its own (tcp_flows, analyses_pending, threads_open: threads handling a request, for in-process parents).";
pub const CAPACITY: &str = "Entries each of sightline's bounded kernel tables can hold (table: as for sightline.table.fill). An LRU table at capacity recycles its oldest entries.";
pub const INSERT_FAILED: &str = "Inserts into a kernel table that failed (table: as for sightline.table.fill): the entry was not kept, and what needed it is missing.";
const BY_THREAD: &str = "Outgoing requests (outside Go) sent by a thread while it handled requests: outcome found, the thread had exactly one request open (read, its response not started), whose child the call became; ambiguous, it had several open (an event loop, pipelining), so the call names no parent.";
const REFUSED: &str = "Binaries not traced because analysing them ran over a budget (reason: memory, more than 128 MiB read or decompressed; time, more than 10 s) or because the file is not a regular file (reason: not_regular). `sightline symbols FILE` says why for one file.";
const INJECTIONS: &str = "Outgoing Go requests sightline was to write a traceparent into, by where (via: socket for plaintext HTTP/1.x, memory for HTTPS and HTTP/2) and outcome: written; skipped (sent untouched: at the socket, the first bytes were not a request line it could extend, or the head already carried a traceparent or did not end within 1 KiB; in memory, the request's buffer had no room or held an unexpected frame, or its header map could not be read whole, so it might already carry one); no_socket (the connection could not take the socket program).";

macro_rules! def {
    ($c:ident, $metric:expr, $attrs:expr, $desc:expr, $kernel:expr) => {
        CounterDef {
            counter: Counter::$c,
            metric: $metric,
            attributes: $attrs,
            description: $desc,
            kernel: $kernel,
            gauge: false,
        }
    };
}

macro_rules! gauge {
    ($c:ident, $metric:expr, $attrs:expr, $desc:expr) => {
        CounterDef {
            counter: Counter::$c,
            metric: $metric,
            attributes: $attrs,
            description: $desc,
            kernel: None,
            gauge: true,
        }
    };
}

/// Every counter, in [`Counter`]'s order.
pub const COUNTERS: [CounterDef; 42] = [
    def!(EventsLost, "sightline.events.lost", &[], "Capture records lost because the ring buffer was full.", Some(kernel::RINGBUF_FULL)),
    def!(KernelActiveFull, "sightline.kernel.calls.untracked", &[], UNTRACKED, Some(kernel::ACTIVE_FULL)),
    def!(KernelReadFailed, "sightline.kernel.calls.untracked", &[], UNTRACKED, Some(kernel::READ_FAILED)),
    def!(KernelOrphanReturns, "sightline.kernel.calls.untracked", &[], UNTRACKED, Some(kernel::ORPHAN_RETURN)),
    def!(TraceparentInjected, "sightline.traceparent.injections", &[("via", "socket"), ("outcome", "written")], INJECTIONS, Some(kernel::INJECTED)),
    def!(TraceparentSkipped, "sightline.traceparent.injections", &[("via", "socket"), ("outcome", "skipped")], INJECTIONS, Some(kernel::INJECT_SKIPPED)),
    def!(TraceparentSocketsFull, "sightline.traceparent.injections", &[("via", "socket"), ("outcome", "no_socket")], INJECTIONS, Some(kernel::INJECT_SOCKS_FULL)),
    def!(TraceparentWrittenInProcess, "sightline.traceparent.injections", &[("via", "memory"), ("outcome", "written")], INJECTIONS, Some(kernel::WRITTEN_IN_PROCESS)),
    def!(TraceparentWriteSkipped, "sightline.traceparent.injections", &[("via", "memory"), ("outcome", "skipped")], INJECTIONS, Some(kernel::WRITE_SKIPPED)),
    def!(Records, "sightline.records", &[], "Capture records received from the kernel.", None),
    def!(RecordsTruncated, "sightline.records.truncated", &[], "Capture records cut at the capture size.", None),
    def!(RecordsUndecodable, "sightline.records.undecodable", &[], "Capture records that could not be decoded.", None),
    def!(AttachFailures, "sightline.attach.failures", &[], "Probes that could not be attached.", None),
    def!(Calls, "sightline.calls", &[], "HTTP calls reconstructed.", None),
    def!(CallsDeduplicated, "sightline.calls.deduplicated", &[], "Requests seen by two capture points (a Go program on OpenSSL: the Go and the OpenSSL probes), reported once.", None),
    def!(SpansDropped, "sightline.spans.dropped", &[], "Spans dropped because the export queue was full or the export failed.", None),
    def!(SpansExported, "sightline.spans.exported", &[], "Spans accepted by the collector.", None),
    def!(ExportFailures, "sightline.export.failures", &[], "Exports of spans or metrics that the collector did not accept.", None),
    def!(SocketsHttp, "sightline.sockets.classified", &[("class", "http")], CLASSIFIED, Some(kernel::SOCK_HTTP)),
    def!(SocketsTls, "sightline.sockets.classified", &[("class", "tls")], CLASSIFIED, Some(kernel::SOCK_TLS)),
    def!(SocketsH2, "sightline.sockets.classified", &[("class", "h2")], CLASSIFIED, Some(kernel::SOCK_H2)),
    def!(SocketsOther, "sightline.sockets.classified", &[("class", "other")], CLASSIFIED, Some(kernel::SOCK_OTHER)),
    def!(SocketsLibrary, "sightline.sockets.classified", &[("class", "library")], CLASSIFIED, Some(kernel::SOCK_LIBRARY)),
    def!(KernelSyscallSlotBusy, "sightline.kernel.calls.untracked", &[], UNTRACKED, Some(kernel::SYSCALL_SLOT_BUSY)),
    def!(OwnConnections, "sightline.connections.own", &[], "Connections a process on this host accepted from sightline itself (its export to a local collector): not reported, so the export does not trace itself.", None),
    def!(KernelFlowsFull, "sightline.tcp.flows.untracked", &[("table", "kernel")], UNTRACKED_FLOWS, Some(kernel::FLOWS_FULL)),
    def!(FlowsUntracked, "sightline.tcp.flows.untracked", &[("table", "user")], UNTRACKED_FLOWS, None),
    def!(FlowsUnattributed, "sightline.tcp.flows.unattributed", &[], "TCP connections accepted on a listening socket whose process sightline does not know (opened in another way than listen() after start or /proc at start): not reported.", None),
    def!(KernelTcpUnfollowed, "sightline.tcp.events.unfollowed", &[], "Retransmits and resets on TCP connections opened before sightline started, which it does not follow.", Some(kernel::TCP_UNFOLLOWED)),
    def!(KernelFlowsAdded, "sightline.kernel.flows", &[("op", "added")], KERNEL_FLOWS, Some(kernel::FLOWS_ADDED)),
    def!(KernelFlowsRemoved, "sightline.kernel.flows", &[("op", "removed")], KERNEL_FLOWS, Some(kernel::FLOWS_REMOVED)),
    gauge!(KernelFlowsFill, "sightline.table.fill", &[("table", "kernel_tcp_flows")], FILL),
    gauge!(FlowsFollowed, "sightline.table.fill", &[("table", "tcp_flows")], FILL),
    def!(RefusedMemory, "sightline.binaries.refused", &[("reason", "memory")], REFUSED, None),
    def!(RefusedTime, "sightline.binaries.refused", &[("reason", "time")], REFUSED, None),
    def!(RefusedNotRegular, "sightline.binaries.refused", &[("reason", "not_regular")], REFUSED, None),
    gauge!(AnalysesPending, "sightline.table.fill", &[("table", "analyses_pending")], FILL),
    def!(TableSwept, "sightline.table.swept", &[], "Entries of exited processes removed from the kernel's tables (a process's connections, calls in flight and goroutines), so that a later process under the same pid does not match them.", None),
    def!(TableSweepsDropped, "sightline.table.sweeps.dropped", &[], "Process exits whose table entries were left to age out of their LRU tables rather than swept, because more than 65 536 exits waited for a sweep.", None),
    def!(ThreadParentFound, "sightline.parents.by_thread", &[("outcome", "found")], BY_THREAD, None),
    def!(ThreadParentAmbiguous, "sightline.parents.by_thread", &[("outcome", "ambiguous")], BY_THREAD, None),
    gauge!(ThreadsOpen, "sightline.table.fill", &[("table", "threads_open")], FILL),
];

/// The counters' values, shared by every stage and read by the metrics and the summary.
#[derive(Debug)]
pub struct Stats {
    values: [AtomicU64; COUNTERS.len()],
    parse_dropped: [AtomicU64; DropReason::ALL.len()],
    /// The kernel's hash tables, by `sightline_common::table` index.
    tables: [TableStats; table::COUNT as usize],
}

/// One kernel table's figures.
#[derive(Debug, Default)]
pub struct TableStats {
    pub fill: AtomicU64,
    pub capacity: AtomicU64,
    pub insert_failed: AtomicU64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            parse_dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            tables: std::array::from_fn(|_| TableStats::default()),
        }
    }
}

impl Stats {
    pub fn add(&self, c: Counter, n: u64) {
        self.values[c as usize].fetch_add(n, Relaxed);
    }

    pub fn set(&self, c: Counter, n: u64) {
        self.values[c as usize].store(n, Relaxed);
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Relaxed)
    }

    /// Copies the kernel's counters (summed over CPUs, indexed by `sightline_common::counter`).
    pub fn copy_kernel(&self, k: &[u64]) {
        for d in &COUNTERS {
            if let Some(v) = d.kernel.and_then(|i| k.get(i as usize)) {
                self.set(d.counter, *v);
            }
        }
        let fill = self
            .get(Counter::KernelFlowsAdded)
            .saturating_sub(self.get(Counter::KernelFlowsRemoved));
        self.set(Counter::KernelFlowsFill, fill);
        for (i, t) in self.tables.iter().enumerate() {
            if let Some(v) = k.get((kernel::INSERT_FAILED + i as u32) as usize) {
                t.insert_failed.store(*v, Relaxed);
            }
        }
    }

    /// Each kernel table's entries as last counted (`None`: not counted this time).
    pub fn set_table_fills(&self, fill: &[Option<u64>]) {
        for (t, f) in self.tables.iter().zip(fill) {
            if let Some(f) = f {
                t.fill.store(*f, Relaxed);
            }
        }
    }

    pub fn set_table_capacities(&self, capacity: &[u64]) {
        for (t, c) in self.tables.iter().zip(capacity) {
            t.capacity.store(*c, Relaxed);
        }
    }

    /// The kernel table at `table` index `i`.
    pub fn table(&self, i: usize) -> &TableStats {
        &self.tables[i]
    }

    pub fn count_drop(&self, r: DropReason) {
        self.parse_dropped[r.index()].fetch_add(1, Relaxed);
    }

    pub fn parse_dropped(&self, r: DropReason) -> u64 {
        self.parse_dropped[r.index()].load(Relaxed)
    }

    pub fn parse_dropped_total(&self) -> u64 {
        self.parse_dropped.iter().map(|c| c.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_enums_order() {
        for (i, d) in COUNTERS.iter().enumerate() {
            assert_eq!(d.counter as usize, i, "{}", d.metric);
        }
    }

    #[test]
    fn kernel_counters_are_copied_by_their_index() {
        let s = Stats::default();
        let mut k = [0u64; kernel::COUNT as usize];
        k[kernel::RINGBUF_FULL as usize] = 7;
        k[kernel::WRITE_SKIPPED as usize] = 3;
        s.copy_kernel(&k);
        assert_eq!(s.get(Counter::EventsLost), 7);
        assert_eq!(s.get(Counter::TraceparentWriteSkipped), 3);
        assert_eq!(s.get(Counter::Calls), 0);
    }
}
