//! The socket syscall capture point: plaintext HTTP from any runtime (Python, node, nginx,
//! Java, C), as `read`/`write` and their kin move it, keyed by the socket's fd. The kernel
//! copies only sockets whose first bytes were HTTP; the byte streams are [`Streams`]'.
//!
//! It attaches nothing per binary: its tracepoints see every process, loaded at start.

use super::stream::Streams;
use super::{Attach, AttachContext, CapturePoint, Found};
use crate::protocols::Conventions;
use crate::telemetry::counters::Stats;
use otel_config::Selection;
use sightline_common::kind;
use std::sync::Arc;

/// The record kinds this capture point writes.
pub const KINDS: &[u32] = &[kind::SOCK_DATA, kind::SOCK_CLOSE];

/// The capture point's source: plaintext at the socket, as byte streams.
pub fn source(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Streams {
    Streams::new(
        (CapturePoint::Syscalls, KINDS),
        false,
        selection,
        conv,
        stats,
    )
}

/// Nothing to attach per binary: the tracepoints cover every process.
pub struct SyscallsAttach;

impl Attach for SyscallsAttach {
    fn consider(&mut self, _found: &Found<'_>, _cx: &mut AttachContext<'_>) {}
}
