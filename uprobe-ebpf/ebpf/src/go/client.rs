//! The client side: a round trip, from `Transport.RoundTrip` to a RET of it, sent as one
//! `GoHttpRecord`. At entry the call finds the server request it serves (through the
//! goroutines that started its own) and takes that request's trace, or starts one. Once the
//! connection is known, its traceparent is left for the propagation programs: under the
//! connection's ends in `PENDING_TRACE` for `propagate::socket`, under the connection's writer
//! in `PENDING_WRITE` (HTTP/1) or as `want_write` (HTTP/2) for `propagate::memory`. At return
//! the call learns whether it was written.

use super::{
    below_tls, conn_fd, current, field, in_flight, init, read_request, regs, request_traceparent,
    reserve, settle_trace, Seen,
};
use crate::{
    maps::{
        bump, inserted, now, sock_gen, wakeup_flags, writes_on, InFlight, WriterKey, CONN_INFO,
        GO_CLIENT, GO_PARENT, GO_SERVER, GO_WINDOWS, INJECT_ON, PENDING_TRACE, PENDING_WRITE,
    },
    propagate::traceparent::{random64, random_trace},
};
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use sightline_common::{
    counter, go_role, table, ConnKey, GoKey, GoOffsets, InjectKey, PendingTrace,
};

/// How many goroutine generations a client call looks up for its server request.
const ANCESTORS: usize = 4;

/// `net/http.(*Transport).roundTrip(t, req *Request) (*Response, error)`, the body of
/// `RoundTrip` (probed instead where a binary lacks it), same arguments: RAX = t, RBX = req.
#[uprobe]
pub fn go_client_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    // A round trip made inside another on the same goroutine (a RoundTripper that calls a
    // second Transport) belongs to the first, and the first return ends it.
    // SAFETY: map lookup.
    if unsafe { GO_CLIENT.get(&key) }.is_some() {
        return 0;
    }
    let r = regs(&ctx);
    let mut call = in_flight(now(), r.rbx, 0);
    // The server request this call serves: on this goroutine, or on the one that started it
    // (from `g.parentGoid` where Go records it, else from the newproc1 probes' table).
    let mut g = key.goid;
    // SAFETY: map lookup.
    if !unsafe { GO_SERVER.get(&key) }.is_some_and(|s| s.start_ns != 0) {
        if let Some(p) = field::<u64>(r.r14, off.g_parent_goid).filter(|p| *p != 0) {
            g = p;
        }
    }
    for _ in 0..ANCESTORS {
        let k = GoKey {
            tgid: key.tgid,
            _pad: 0,
            goid: g,
        };
        // SAFETY: map lookup, copied at once.
        if let Some(server) = unsafe { GO_SERVER.get(&k) }.filter(|s| s.start_ns != 0) {
            call.parent_goid = g;
            call.parent_start_ns = server.start_ns;
            break;
        }
        // SAFETY: as above.
        match unsafe { GO_PARENT.get(&k) } {
            Some(p) if *p != 0 => g = *p,
            _ => break,
        }
    }
    call.span = random64();
    if !inherit_trace(off, key.tgid, &mut call) {
        // A call made outside any request handled here starts a trace of its own.
        call.trace = random_trace();
        call.flags = 1;
    }
    if !inserted(table::GO_CLIENT, GO_CLIENT.insert(&key, &call, 0)) {
        bump(counter::ACTIVE_FULL);
    }
    0
}

/// Gives a client call the trace of the server request it serves (found by the caller), deciding
/// that trace now if no earlier call did. False when there is no such request.
#[inline(always)]
fn inherit_trace(off: &GoOffsets, tgid: u32, call: &mut InFlight) -> bool {
    if call.parent_goid == 0 {
        return false;
    }
    let k = GoKey {
        tgid,
        _pad: 0,
        goid: call.parent_goid,
    };
    let Some(p) = GO_SERVER.get_ptr_mut(&k) else {
        return false;
    };
    // SAFETY: the server goroutine's map value. A call from a goroutine the handler spawned can
    // race with the handler's return, each deciding a trace; user space then gives the call its
    // request's (from the server record), and only this call's outgoing header names another.
    let server = unsafe { &mut *p };
    if server.start_ns != call.parent_start_ns {
        return false;
    }
    if server.traced == 0 {
        let Some(w) = GO_WINDOWS.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: this CPU's scratch, used by this program run only.
        let w = unsafe { &mut *w };
        let hmap = field::<u64>(server.req, off.req_header).unwrap_or(0);
        settle_trace(off, hmap, server, w);
    }
    call.trace = server.trace;
    call.parent_span = server.span;
    call.flags = server.flags;
    true
}

/// Leaves the call's traceparent waiting for its request to be written on socket `fd`, when
/// injection is on, the connection is plaintext HTTP/1.x with known ends, and the program
/// set no `Traceparent` of its own (it is never written twice). A header map that could not
/// be read whole does not stop it: `go_inject` looks at the bytes sent, and leaves a head
/// that carries one untouched.
#[inline(always)]
fn pend_traceparent(off: &GoOffsets, tgid: u32, fd: i32, call: &mut InFlight) {
    if fd < 0 || !INJECT_ON.get(0).is_some_and(|on| *on == 1) {
        return;
    }
    // SAFETY: map lookup, copied at once.
    let Some(info) = (unsafe { CONN_INFO.get(&ConnKey { tgid, fd }) }).copied() else {
        return;
    };
    if info.local_port == 0 || info.port == 0 {
        return;
    }
    if let Seen::Found(_) = request_traceparent(off, call) {
        return;
    }
    let key = InjectKey {
        family: info.family,
        local_port: info.local_port,
        remote_port: info.port,
        _pad: 0,
        remote_addr: info.addr,
        tgid,
    };
    let pending = PendingTrace {
        trace_id: call.trace,
        span_id: call.span,
        at_ns: now(),
        flags: call.flags,
        done: 0,
        _pad: [0; 6],
    };
    if inserted(
        table::PENDING_TRACE,
        PENDING_TRACE.insert(&key, &pending, 0),
    ) {
        call.inject = key;
    }
}

/// The memory path writes into a request only when its whole header map was read and holds
/// no `traceparent`: it cannot see the bytes the program then writes. A map it could not
/// read whole is counted as a skipped write.
#[inline(always)]
fn may_write(off: &GoOffsets, call: &InFlight) -> bool {
    match request_traceparent(off, call) {
        Seen::None => true,
        Seen::Found(_) => false,
        Seen::Unknown => {
            bump(counter::WRITE_SKIPPED);
            false
        }
    }
}

/// Leaves an HTTP/1 call's traceparent for its connection's writer (`persistConn.bw`, of `pc`).
#[inline(always)]
fn pend_h1(off: &GoOffsets, tgid: u32, pc: u64, call: &mut InFlight) {
    if !writes_on() || !may_write(off, call) {
        return;
    }
    let Some(writer) = field::<u64>(pc, off.pconn_bw).filter(|w| *w != 0) else {
        return;
    };
    // A retry on another connection: the first one's entry is not to be written any more.
    if call.writer != 0 && call.writer != writer {
        let _ = PENDING_WRITE.remove(&WriterKey {
            tgid,
            _pad: 0,
            writer: call.writer,
        });
    }
    let pending = PendingTrace {
        trace_id: call.trace,
        span_id: call.span,
        at_ns: now(),
        flags: call.flags,
        done: 0,
        _pad: [0; 6],
    };
    let key = WriterKey {
        tgid,
        _pad: 0,
        writer,
    };
    if inserted(
        table::PENDING_WRITE,
        PENDING_WRITE.insert(&key, &pending, 0),
    ) {
        call.writer = writer;
    }
}

/// At the call's return: 1 if its traceparent was written into its request in memory.
#[inline(always)]
fn settle_write(tgid: u32, call: &InFlight) -> u8 {
    if call.writer == 0 {
        return call.written;
    }
    let key = WriterKey {
        tgid,
        _pad: 0,
        writer: call.writer,
    };
    let mut done = 0;
    // SAFETY: map lookup, read at once.
    if let Some(p) = unsafe { PENDING_WRITE.get(&key) } {
        if p.span_id == call.span {
            done = (p.done == 1) as u8;
            let _ = PENDING_WRITE.remove(&key);
        }
    }
    done | call.written
}

/// `net/http.(*persistConn).roundTrip(pc, req)`: RAX = pc. Runs inside `Transport.RoundTrip`
/// on the same goroutine for HTTP/1; tells that call which socket carries it.
#[uprobe]
pub fn go_pconn_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(call) = GO_CLIENT.get_ptr_mut(&key) else {
        return 0;
    };
    let r = regs(&ctx);
    let tls = field::<u64>(r.rax, off.pconn_tls_state).unwrap_or(0) != 0;
    // persistConn.conn is a net.Conn: its data word follows the itab word.
    let Some(c) = field::<u64>(r.rax, off.pconn_conn.wrapping_add(8)) else {
        return 0;
    };
    let Some(c) = below_tls(&off, c, tls) else {
        return 0;
    };
    let fd = conn_fd(&off, c);
    // SAFETY: this goroutine's map value.
    unsafe {
        (*call).fd = fd;
        (*call).tls = tls as u8;
        let at_socket = !tls && INJECT_ON.get(0).is_some_and(|on| *on == 1);
        if at_socket {
            if (*call).inject.family == 0 {
                pend_traceparent(off, key.tgid, fd, &mut *call);
            }
        } else {
            pend_h1(off, key.tgid, r.rax, &mut *call);
        }
    }
    0
}

/// `net/http.(*http2ClientConn).RoundTrip(cc, req)` (or `roundTrip` on Go 1.23+): RAX = cc, on
/// the caller's goroutine inside `Transport.RoundTrip`; its `tconn` is the connection, TLS
/// whenever the request's scheme is https.
#[uprobe]
pub fn go_h2cc_enter(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(call) = GO_CLIENT.get_ptr_mut(&key) else {
        return 0;
    };
    let r = regs(&ctx);
    let Some(c) = field::<u64>(r.rax, off.h2cc_tconn.wrapping_add(8)) else {
        return 0;
    };
    // SAFETY: this goroutine's map value.
    let req = unsafe { (*call).req };
    let url = field::<u64>(req, off.req_url).unwrap_or(0);
    let scheme = field::<[u64; 2]>(url, off.url_scheme).unwrap_or([0, 0]);
    let tls = scheme[1] == 5;
    let Some(c) = below_tls(&off, c, tls) else {
        return 0;
    };
    let fd = conn_fd(&off, c);
    // SAFETY: this goroutine's map value.
    unsafe {
        (*call).fd = fd;
        (*call).tls = tls as u8;
        (*call).proto_major = 2;
        // Each attempt (a retry on another connection runs this again) gets its header once.
        (*call).written = 0;
        (*call).want_write = (writes_on() && may_write(&off, &*call)) as u8;
    }
    0
}

/// A RET of `Transport.RoundTrip`: RAX = *Response (nil on error).
#[uprobe]
pub fn go_client_ret(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    // SAFETY: map lookup, copied at once.
    let Some(call) = (unsafe { GO_CLIENT.get(&key) }).copied() else {
        return 0;
    };
    let _ = GO_CLIENT.remove(&key);
    let resp = regs(&ctx).rax;
    let mut injected = settle_write(key.tgid, &call);
    if call.inject.family != 0 {
        // SAFETY: map lookup, read at once.
        if let Some(p) = unsafe { PENDING_TRACE.get(&call.inject) } {
            if p.span_id == call.span {
                injected |= (p.done == 1) as u8;
                let _ = PENDING_TRACE.remove(&call.inject);
            }
        }
    }
    let Some((mut entry, w)) = reserve() else {
        return 0;
    };
    // SAFETY: reserved ring memory of the record's size; every scalar is set by `init`.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    init(rec, go_role::CLIENT, key.tgid, key.goid, call.start_ns);
    read_request(off, call.req, rec, w);
    rec.parent_goid = call.parent_goid;
    rec.parent_start_ns = call.parent_start_ns;
    rec.trace_id = call.trace;
    rec.span_id = call.span;
    rec.parent_span_id = call.parent_span;
    rec.trace_flags = call.flags;
    rec.injected = injected;
    rec.fd = call.fd;
    rec.sock_gen = sock_gen(key.tgid, call.fd);
    rec.tls = call.tls;
    if call.proto_major == 2 {
        rec.proto_major = 2;
        rec.proto_minor = 0;
    }
    rec.status = field::<u64>(resp, off.resp_status_code).unwrap_or(0) as u32;
    entry.submit(wakeup_flags());
    0
}
