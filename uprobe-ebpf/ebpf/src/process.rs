//! Discovery: `proc_exec` and `proc_exit` tell user space of each exec (it then looks at the
//! new program and attaches to it) and of each process's end.

use crate::maps::{bump, now, wakeup_flags, EVENTS};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use sightline_common::{counter, kind, ProcessRecord};

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
