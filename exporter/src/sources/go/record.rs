//! The Go probes' record: one net/http request, server or client side
//! ([`kind::GO_HTTP`]), with Go's own fields.

use crate::capture::records::{DecodeError, Fields};
use sightline_common::{kind, GoHttpRecord};
use std::mem::offset_of;

/// The record kinds this capture point writes.
pub const KINDS: &[u32] = &[kind::GO_HTTP];

/// A Go net/http call as the Go probes saw it, strings decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoRecord {
    pub role: u32,
    pub tgid: u32,
    pub fd: i32,
    pub goid: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub parent_goid: u64,
    pub parent_start_ns: u64,
    pub status: u32,
    pub proto_major: u16,
    pub proto_minor: u16,
    pub tls: bool,
    /// With `fd`, names the connection (0: unknown).
    pub sock_gen: u64,
    pub method: String,
    pub path: String,
    pub query: String,
    pub host: String,
    pub addr: String,
    pub pattern: String,
    pub scheme: String,
    /// The kernel's ids for this call (see `GoHttpRecord`); 0 when none were set.
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: u64,
    pub trace_flags: u8,
    /// Server: `trace_id` and `parent_span_id` are an incoming traceparent's.
    pub trace_given: bool,
    /// Client: the request carried a `traceparent` naming this call.
    pub injected: bool,
    /// Some string was longer than the record holds and is cut.
    pub truncated: bool,
}

pub fn decode(k: u32, b: &[u8]) -> Result<GoRecord, DecodeError> {
    if k != kind::GO_HTTP {
        return Err(DecodeError::UnknownKind(k));
    }
    decode_go(Fields(b))
}

fn decode_go(f: Fields<'_>) -> Result<GoRecord, DecodeError> {
    if f.0.len() < std::mem::size_of::<GoHttpRecord>() {
        return Err(DecodeError::Short);
    }
    let mut truncated = false;
    macro_rules! text {
        ($len:ident, $field:ident) => {{
            let (s, cut) = f.text(
                offset_of!(GoHttpRecord, $len),
                offset_of!(GoHttpRecord, $field),
                std::mem::size_of_val(&GoHttpRecord::EMPTY.$field),
            )?;
            truncated |= cut;
            s
        }};
    }
    macro_rules! get {
        ($ty:ident, $field:ident) => {
            f.$ty(offset_of!(GoHttpRecord, $field))?
        };
    }
    Ok(GoRecord {
        role: get!(u32, role),
        tgid: get!(u32, tgid),
        fd: get!(u32, fd) as i32,
        goid: get!(u64, goid),
        start_ns: get!(u64, start_ns),
        end_ns: get!(u64, end_ns),
        parent_goid: get!(u64, parent_goid),
        parent_start_ns: get!(u64, parent_start_ns),
        status: get!(u32, status),
        proto_major: get!(u16, proto_major),
        proto_minor: get!(u16, proto_minor),
        tls: get!(u8, tls) != 0,
        sock_gen: get!(u64, sock_gen),
        method: text!(method_len, method),
        path: text!(path_len, path),
        query: text!(query_len, query),
        host: text!(host_len, host),
        addr: text!(addr_len, addr),
        pattern: text!(pattern_len, pattern),
        scheme: text!(scheme_len, scheme),
        trace_id: u128::from_be_bytes(f.bytes(offset_of!(GoHttpRecord, trace_id))?),
        span_id: get!(u64, span_id),
        parent_span_id: get!(u64, parent_span_id),
        trace_flags: get!(u8, trace_flags),
        trace_given: get!(u8, trace_given) != 0,
        injected: get!(u8, injected) != 0,
        truncated,
    })
}
