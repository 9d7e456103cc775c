//! sightline's own health: every loss is counted here and exported as a metric, never logged
//! once per event (Coroot #369 turned loss into a log flood).

use crate::protocols::DropReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Stats {
    /// Records the kernel could not put in the ring buffer (copied from the kernel counter).
    pub events_lost: AtomicU64,
    /// Kernel-side: calls that could not be tracked or read (copied).
    pub kernel_active_full: AtomicU64,
    pub kernel_read_failed: AtomicU64,
    /// Returns with no recorded entry (attached mid-call, or an in-flight slot collision).
    pub kernel_orphan_returns: AtomicU64,
    /// Outgoing requests a `traceparent` was written into at the socket (copied).
    pub traceparent_injected: AtomicU64,
    /// Outgoing requests that waited for one but were sent untouched (copied).
    pub traceparent_skipped: AtomicU64,
    /// Client sockets that could not be given the injection program (copied).
    pub traceparent_sockets_full: AtomicU64,
    /// HTTPS and HTTP/2 requests a `traceparent` was written into in the process's memory,
    /// and those left untouched there (no room, an unexpected frame) (copied).
    pub traceparent_written_in_process: AtomicU64,
    pub traceparent_write_skipped: AtomicU64,
    pub records: AtomicU64,
    /// Records whose payload was cut at the capture size.
    pub records_truncated: AtomicU64,
    pub records_undecodable: AtomicU64,
    pub parse_dropped: [AtomicU64; DropReason::ALL.len()],
    pub attach_failures: AtomicU64,
    pub calls: AtomicU64,
    /// Requests both the Go and the OpenSSL probes saw, reported once.
    pub calls_deduplicated: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub spans_exported: AtomicU64,
    pub export_failures: AtomicU64,
}

impl Stats {
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
