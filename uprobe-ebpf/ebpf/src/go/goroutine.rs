//! Goroutine ancestry: which goroutine started which, from `runtime.newproc1`, kept in
//! `GO_PARENT` so a client call made on a goroutine a handler spawned still finds its server
//! request (`client`), and an HTTP/2 header write its round trip (`propagate::memory`). Go
//! 1.21+ also records the creator in `g.parentGoid`, which those read first.

use super::{goid, regs};
use crate::maps::{inserted, GO_NEWPROC, GO_PARENT, GO_PROCS};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use sightline_common::{table, GoKey};

/// `runtime.newproc1(fn, callergp *g, callerpc) *g`: remember the creating goroutine.
#[uprobe]
pub fn go_newproc_enter(ctx: ProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: map lookup, copied at once.
    let Some(off) = (unsafe { GO_PROCS.get(&((id >> 32) as u32)) }).copied() else {
        return 0;
    };
    if let Some(parent) = goid(&off, regs(&ctx).rbx) {
        inserted(table::GO_NEWPROC, GO_NEWPROC.insert(&id, &parent, 0));
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
        let r = GO_PARENT.insert(
            &GoKey {
                tgid,
                _pad: 0,
                goid: child,
            },
            &parent,
            0,
        );
        inserted(table::GO_PARENT, r);
    }
    0
}
