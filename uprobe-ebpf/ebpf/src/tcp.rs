//! Network signals: each TCP connection's life from the TCP tracepoints, which need no kprobes.
//! - `tcp_state` (`sock:inet_sock_set_state`) follows a connection from SYN_SENT (inside
//!   `connect()`, so the process is known) or from an accepted handshake (owned by whoever
//!   listens on the port), and reports it established, failed (with the socket's error) or
//!   closed (with its final figures).
//! - `tcp_retransmit`, `tcp_reset_sent` and `tcp_reset_received` report those events on
//!   followed connections, timestamped, so a span can tell what its connection suffered.
//! - `tcp_destroy` (`tcp:tcp_destroy_sock`) forgets a connection once its socket is gone.
//! - `tcp_sample` (raw `tcp:tcp_probe`, per received segment) reports a connection's
//!   figures at most once a second: the one per-packet program, so it does one lookup and
//!   nothing else on most segments.
//!
//! Tracepoint fields are read at offsets from their tracefs formats, `struct tcp_sock` fields
//! at offsets from the kernel's BTF; none is assumed.

use crate::maps::{
    bump, inserted, now, wakeup_flags, EVENTS, FLOWS, LISTENERS, SS_OFFSETS, TCP_EVENT_OFFSETS,
    TCP_OFFSETS,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sightline_common::{
    counter, kind, table, tcp_event, tcp_state, Flow, ListenKey, SockStateOffsets, TcpRecord,
    FLOW_CLOSED,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const SAMPLE_EVERY_NS: u64 = 1_000_000_000;

/// A field of the socket at `sk`, read at a BTF-derived offset; zero if unknown or unreadable.
#[inline(always)]
fn sk_field<T: Copy + Default>(sk: u64, off: u32) -> T {
    if off == 0 {
        return T::default();
    }
    // SAFETY: helper-checked read of kernel memory; a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_kernel((sk + off as u64) as *const T) }.unwrap_or_default()
}

/// The connection's figures as the kernel keeps them.
#[inline(always)]
fn figures(sk: u64, rec: &mut TcpRecord) {
    // SAFETY: plain read of a loader-written global.
    let o = unsafe { core::ptr::read_volatile(&TCP_OFFSETS) };
    if o.ready == 0 {
        return;
    }
    rec.srtt_us = sk_field::<u32>(sk, o.srtt_us) >> 3;
    rec.total_retrans = sk_field(sk, o.total_retrans);
    rec.segs_in = sk_field(sk, o.segs_in);
    rec.segs_out = sk_field(sk, o.segs_out);
    rec.bytes_received = sk_field(sk, o.bytes_received);
    rec.bytes_acked = sk_field(sk, o.bytes_acked);
}

#[inline(always)]
fn emit(rec: &TcpRecord) {
    if EVENTS.output::<TcpRecord>(rec, wakeup_flags()).is_err() {
        bump(counter::RINGBUF_FULL);
    }
}

#[inline(always)]
fn record(event: u32, sk: u64, flow: &Flow, state: i32) -> TcpRecord {
    TcpRecord {
        kind: kind::TCP,
        event,
        tgid: flow.tgid,
        state,
        sk,
        ts_ns: now(),
        start_ns: flow.start_ns,
        ..TcpRecord::default()
    }
}

/// The connection's ends as the state tracepoint gives them.
#[inline(always)]
fn ends(ctx: &TracePointContext, off: &SockStateOffsets, family: u16, rec: &mut TcpRecord) {
    rec.family = family;
    // SAFETY: offsets come from the tracepoint's own format description.
    unsafe {
        rec.lport = ctx.read_at::<u16>(off.sport as usize).unwrap_or(0);
        rec.rport = ctx.read_at::<u16>(off.dport as usize).unwrap_or(0);
        if family == AF_INET {
            let l = ctx.read_at::<[u8; 4]>(off.saddr as usize).unwrap_or([0; 4]);
            let r = ctx.read_at::<[u8; 4]>(off.daddr as usize).unwrap_or([0; 4]);
            rec.laddr[..4].copy_from_slice(&l);
            rec.raddr[..4].copy_from_slice(&r);
        } else {
            rec.laddr = ctx
                .read_at::<[u8; 16]>(off.saddr_v6 as usize)
                .unwrap_or([0; 16]);
            rec.raddr = ctx
                .read_at::<[u8; 16]>(off.daddr_v6 as usize)
                .unwrap_or([0; 16]);
        }
    }
}

#[inline(always)]
fn follow(sk: u64, flow: &Flow) -> bool {
    // A socket that closed (and is not destroyed yet) may connect again: its entry is replaced.
    // SAFETY: map lookup, only tested.
    if unsafe { FLOWS.get(&sk) }.is_some() {
        bump(counter::FLOWS_REMOVED);
    }
    if !inserted(table::FLOWS, FLOWS.insert(&sk, flow, 0)) {
        bump(counter::FLOWS_FULL);
        return false;
    }
    bump(counter::FLOWS_ADDED);
    true
}

#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&SS_OFFSETS) };
    if off.oldstate == 0 {
        return 0;
    }
    // Two of each end's five transitions (into FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, SYN_RECV)
    // say nothing the signals use: they cost one read, not five.
    // SAFETY: offsets come from the tracepoint's own format description.
    let new = unsafe { ctx.read_at::<i32>(off.newstate as usize) }.unwrap_or(0);
    if !matches!(
        new,
        tcp_state::SYN_SENT | tcp_state::ESTABLISHED | tcp_state::CLOSE | tcp_state::LISTEN
    ) {
        return 0;
    }
    // SAFETY: offsets come from the tracepoint's own format description.
    let (protocol, family, old, sk) = unsafe {
        (
            ctx.read_at::<u16>(off.protocol as usize).unwrap_or(0),
            ctx.read_at::<u16>(off.family as usize).unwrap_or(0),
            ctx.read_at::<i32>(off.oldstate as usize).unwrap_or(0),
            ctx.read_at::<u64>(off.skaddr as usize).unwrap_or(0),
        )
    };
    if protocol != IPPROTO_TCP || sk == 0 {
        return 0;
    }
    match new {
        tcp_state::SYN_SENT => {
            let flow = Flow {
                tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
                opened: 0,
                start_ns: now(),
                last_sample_ns: 0,
            };
            follow(sk, &flow);
        }
        tcp_state::LISTEN => {
            // SAFETY: offsets come from the tracepoint's own format description.
            let port = unsafe { ctx.read_at::<u16>(off.sport as usize) }.unwrap_or(0);
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            inserted(
                table::LISTENERS,
                LISTENERS.insert(&ListenKey { family, port }, &tgid, 0),
            );
        }
        tcp_state::ESTABLISHED if old == tcp_state::SYN_SENT => {
            let Some(flow) = FLOWS.get_ptr_mut(&sk) else {
                return 0;
            };
            // SAFETY: map value pointer, valid for this program run.
            let flow = unsafe { &mut *flow };
            flow.opened = tcp_event::CONNECTED;
            flow.last_sample_ns = now();
            let mut rec = record(tcp_event::CONNECTED, sk, flow, new);
            ends(&ctx, &off, family, &mut rec);
            // The handshake's RTT: calls on the connection have one from the start.
            figures(sk, &mut rec);
            emit(&rec);
        }
        tcp_state::ESTABLISHED if old == tcp_state::SYN_RECV => {
            // SAFETY: offsets come from the tracepoint's own format description.
            let port = unsafe { ctx.read_at::<u16>(off.sport as usize) }.unwrap_or(0);
            // SAFETY: value copied at once.
            let tgid = unsafe { LISTENERS.get(&ListenKey { family, port }) }
                .copied()
                .unwrap_or(0);
            let t = now();
            let flow = Flow {
                tgid,
                opened: tcp_event::ACCEPTED,
                start_ns: t,
                last_sample_ns: t,
            };
            if follow(sk, &flow) {
                let mut rec = record(tcp_event::ACCEPTED, sk, &flow, new);
                ends(&ctx, &off, family, &mut rec);
                figures(sk, &mut rec);
                emit(&rec);
            }
        }
        tcp_state::CLOSE => {
            let Some(ptr) = FLOWS.get_ptr_mut(&sk) else {
                return 0;
            };
            // SAFETY: map value pointer, valid for this program run.
            let flow = unsafe { &mut *ptr };
            if flow.opened == FLOW_CLOSED {
                return 0;
            }
            let event = if flow.opened == 0 {
                tcp_event::FAILED
            } else {
                tcp_event::CLOSED
            };
            let mut rec = record(event, sk, flow, old);
            // Kept until the socket is destroyed, so that what happens while it closes (an
            // abortive close sends its reset after this) is still reported.
            flow.opened = FLOW_CLOSED;
            // SAFETY: plain read of a loader-written global.
            if unsafe { core::ptr::read_volatile(&TCP_EVENT_OFFSETS) }.destroy_sk == 0 {
                let _ = FLOWS.remove(&sk);
                bump(counter::FLOWS_REMOVED);
            }
            ends(&ctx, &off, family, &mut rec);
            if event == tcp_event::FAILED {
                // SAFETY: plain read of a loader-written global.
                let o = unsafe { core::ptr::read_volatile(&TCP_OFFSETS) };
                rec.err = sk_field(sk, o.sk_err);
            }
            figures(sk, &mut rec);
            emit(&rec);
        }
        _ => {}
    }
    0
}

/// An event on a followed connection; counted when the connection is not followed.
#[inline(always)]
fn on_socket(sk: u64, event: u32) {
    if sk == 0 {
        return;
    }
    // SAFETY: value copied at once.
    let Some(flow) = (unsafe { FLOWS.get(&sk) }).copied() else {
        bump(counter::TCP_UNFOLLOWED);
        return;
    };
    let state = match flow.opened {
        0 => tcp_state::SYN_SENT,
        FLOW_CLOSED => tcp_state::CLOSE,
        _ => tcp_state::ESTABLISHED,
    };
    let mut rec = record(event, sk, &flow, state);
    figures(sk, &mut rec);
    emit(&rec);
}

#[inline(always)]
fn sk_at(ctx: &TracePointContext, off: u32) -> u64 {
    if off == 0 {
        return 0;
    }
    // SAFETY: the offset comes from the tracepoint's own format description.
    unsafe { ctx.read_at::<u64>(off as usize) }.unwrap_or(0)
}

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&TCP_EVENT_OFFSETS) };
    on_socket(sk_at(&ctx, off.retransmit_sk), tcp_event::RETRANSMIT);
    0
}

#[tracepoint]
pub fn tcp_reset_sent(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&TCP_EVENT_OFFSETS) };
    on_socket(sk_at(&ctx, off.send_reset_sk), tcp_event::RESET_SENT);
    0
}

#[tracepoint]
pub fn tcp_reset_received(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&TCP_EVENT_OFFSETS) };
    on_socket(sk_at(&ctx, off.receive_reset_sk), tcp_event::RESET_RECEIVED);
    0
}

/// The socket is gone: its connection is forgotten.
#[tracepoint]
pub fn tcp_destroy(ctx: TracePointContext) -> u32 {
    // SAFETY: plain read of a loader-written global.
    let off = unsafe { core::ptr::read_volatile(&TCP_EVENT_OFFSETS) };
    let sk = sk_at(&ctx, off.destroy_sk);
    if sk != 0 && FLOWS.remove(&sk).is_ok() {
        bump(counter::FLOWS_REMOVED);
    }
    0
}

/// `tcp_probe(sk, skb)`: a raw tracepoint, so the kernel fills no record per segment.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_sample(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(flow) = FLOWS.get_ptr_mut(&sk) else {
        return 0;
    };
    let t = now();
    // SAFETY: map value pointer, valid for this program run.
    let flow = unsafe { &mut *flow };
    if flow.opened == 0
        || flow.opened == FLOW_CLOSED
        || t.saturating_sub(flow.last_sample_ns) < SAMPLE_EVERY_NS
    {
        return 0;
    }
    // Racing CPUs may both sample once; harmless.
    flow.last_sample_ns = t;
    let copy = *flow;
    let mut rec = record(tcp_event::SAMPLE, sk, &copy, tcp_state::ESTABLISHED);
    figures(sk, &mut rec);
    emit(&rec);
    0
}
