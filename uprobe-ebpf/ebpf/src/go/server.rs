//! The server side: a request's handling, from `serverHandler.ServeHTTP` (or x/net's
//! `runHandler`) to a RET of it, sent as one `GoHttpRecord` with the request, its status, its
//! socket and its trace.

use super::{
    below_tls, conn_fd, current, field, in_flight, init, read_request, regs, reserve, settle_trace,
    word, wstring,
};
use crate::{
    maps::{bump, inserted, now, sock_gen, wakeup_flags, GO_SERVER},
    propagate::traceparent::random64,
};
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use sightline_common::{counter, go_role, table, GoOffsets};

/// `InFlight::fd` of a server connection whose socket was not followed yet.
const FD_UNKNOWN: i32 = -2;

/// The socket fd under an HTTP/1 server response: response.conn.rwc (a net.Conn), through
/// the TLS layer when there is one, to the netFD's poll.FD.
#[inline(always)]
fn server_fd(off: &GoOffsets, response: u64, tls: bool) -> i32 {
    let Some(conn) = field::<u64>(response, off.response_conn) else {
        return -1;
    };
    // An interface is (itab, data); the data word follows the itab word.
    let Some(c) = field::<u64>(conn, off.conn_rwc.wrapping_add(8)) else {
        return -1;
    };
    let Some(c) = below_tls(off, c, tls) else {
        return -1;
    };
    // *net.TCPConn (and *net.UnixConn) embed net.conn first, whose fd is a *netFD.
    conn_fd(off, c)
}

/// `net/http.serverHandler.ServeHTTP(sh, rw ResponseWriter, req *Request)`: RAX = sh.srv,
/// RBX/RCX = rw (itab, data), RDI = req. HTTP/2 requests pass here too.
#[uprobe]
pub fn go_server_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    server_enter(&ctx, r.rdi, r.rcx, 0)
}

/// `golang.org/x/net/http2.(*serverConn).runHandler(sc, rw *responseWriter, req *Request,
/// handler)`: RAX = sc, RBX = rw, RCX = req; on the request's own goroutine.
#[uprobe]
pub fn go_xserver_enter(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    server_enter(&ctx, r.rcx, r.rbx, 1)
}

#[inline(always)]
fn server_enter(ctx: &ProbeContext, req: u64, obj: u64, xnet: u8) -> u32 {
    let Some((off, key)) = current(ctx) else {
        return 0;
    };
    // x/net's runHandler ends by handing the response state back to its pool and clearing
    // `rw.rws`, before its RET: the state is kept from here. Nothing can take it from the pool
    // between that and the RET, a few instructions later on the same P.
    let obj = if xnet != 0 {
        field::<u64>(obj, off.xh2rw_rws).unwrap_or(0)
    } else {
        obj
    };
    let start = now();
    if let Some(p) = GO_SERVER.get_ptr_mut(&key) {
        // SAFETY: this goroutine's map value.
        unsafe {
            // The same request entering serverHandler.ServeHTTP inside x/net's runHandler:
            // the outer entry owns it, and the first RET after the handler ends it.
            if (*p).start_ns != 0 && (*p).req == req {
                return 0;
            }
            (*p).start_ns = start;
            (*p).req = req;
            (*p).obj = obj;
            (*p).xnet = xnet;
            (*p).span = random64();
            (*p).traced = 0;
        }
        return 0;
    }
    let mut call = in_flight(start, req, obj);
    call.fd = FD_UNKNOWN;
    call.xnet = xnet;
    call.span = random64();
    if !inserted(table::GO_SERVER, GO_SERVER.insert(&key, &call, 0)) {
        bump(counter::ACTIVE_FULL);
    }
    0
}

/// A RET of `serverHandler.ServeHTTP`: the handler is done, the status is set, and ServeMux
/// has set `Request.Pattern` (Go 1.23+).
#[uprobe]
pub fn go_server_ret(ctx: ProbeContext) -> u32 {
    let Some((off, key)) = current(&ctx) else {
        return 0;
    };
    let Some(p) = GO_SERVER.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: this goroutine's map value, copied at once and marked idle.
    let mut call = unsafe { *p };
    if call.start_ns == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*p).start_ns = 0 };
    let Some((mut entry, w)) = reserve() else {
        return 0;
    };
    // SAFETY: reserved ring memory of the record's size; every scalar is set by `init`.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    init(rec, go_role::SERVER, key.tgid, key.goid, call.start_ns);
    let rl = read_request(&off, call.req, rec, w);
    if call.traced == 0 {
        let hmap = word(&w.req, rl, call.req, off.req_header);
        settle_trace(off, hmap, &mut call, w);
    }
    rec.trace_id = call.trace;
    rec.span_id = call.span;
    rec.parent_span_id = call.parent_span;
    rec.trace_flags = call.flags;
    rec.trace_given = call.given;
    rec.status = if rec.proto_major == 2 {
        // *http2responseWriter → its state → the status WriteHeader recorded; for x/net's
        // server, the state kept at entry, in x/net's layout.
        if call.xnet != 0 {
            field::<u64>(call.obj, off.xh2rws_status).unwrap_or(0) as u32
        } else {
            let rws = field::<u64>(call.obj, off.h2rw_rws).unwrap_or(0);
            field::<u64>(rws, off.h2rws_status).unwrap_or(0) as u32
        }
    } else {
        rec.fd = if call.fd == FD_UNKNOWN {
            let fd = server_fd(&off, call.obj, rec.tls != 0);
            // SAFETY: this goroutine's map value.
            unsafe { (*p).fd = fd };
            fd
        } else {
            call.fd
        };
        field::<u64>(call.obj, off.response_status).unwrap_or(0) as u32
    };
    rec.pattern_len = wstring(&w.req, rl, call.req, off.req_pattern, &mut rec.pattern);
    rec.sock_gen = sock_gen(key.tgid, rec.fd);
    // The peer's address, when the socket table cannot give it (no socket, or one older than
    // sightline).
    if rec.sock_gen == 0 {
        rec.addr_len = wstring(&w.req, rl, call.req, off.req_remote_addr, &mut rec.addr);
    }
    entry.submit(wakeup_flags());
    0
}
