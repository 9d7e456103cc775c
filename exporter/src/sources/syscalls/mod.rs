//! The socket syscall capture point: plaintext HTTP from any runtime (Python, node, nginx,
//! Java, C), as `read`/`write` and their kin move it, keyed by the socket's fd. The kernel
//! copies only sockets whose first bytes were HTTP; the byte streams are [`Streams`]'.
//!
//! It attaches nothing per binary: its tracepoints see every process, loaded at start.

use super::stream::Streams;
use super::{Attach, AttachContext, CapturePoint, Context, Found, Made, Source};
use crate::capture::records::DecodeError;
use crate::protocols::Conventions;
use crate::telemetry::counters::Stats;
use otel_config::Selection;
use sightline_common::kind;
use std::sync::Arc;

/// The record kinds this capture point writes.
pub const KINDS: &[u32] = &[kind::SOCK_DATA, kind::SOCK_CLOSE];

pub struct Syscalls(Streams);

impl Syscalls {
    pub fn new(selection: Selection, conv: Conventions, stats: Arc<Stats>) -> Syscalls {
        Syscalls(Streams::new(
            CapturePoint::Syscalls,
            false,
            selection,
            conv,
            stats,
        ))
    }
}

impl Source for Syscalls {
    fn kinds(&self) -> &'static [u32] {
        KINDS
    }

    fn record(
        &mut self,
        kind: u32,
        bytes: &[u8],
        cx: &mut Context<'_>,
        made: &mut Vec<Made>,
    ) -> Result<(), DecodeError> {
        self.0.record(kind, bytes, cx, made)
    }

    fn tick(&mut self, now_mono_ns: u64, made: &mut Vec<Made>) {
        self.0.tick(now_mono_ns, made);
    }

    fn process_exit(&mut self, tgid: u32, cx: &mut Context<'_>, made: &mut Vec<Made>) {
        self.0.process_exit(tgid, cx, made);
    }

    fn close_all(&mut self, made: &mut Vec<Made>) {
        self.0.close_all(made);
    }
}

/// Nothing to attach per binary: the tracepoints cover every process.
pub struct SyscallsAttach;

impl Attach for SyscallsAttach {
    fn consider(&mut self, _found: &Found<'_>, _cx: &mut AttachContext<'_>) {}
}
