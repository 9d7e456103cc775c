//! Ring buffer records decoded into typed events. Decoding is by hand from bytes, field by
//! field, so a short or garbled record is an error to count, never undefined behaviour.

use sightline_common::{kind, DataHeader, GoHttpRecord, DATA_HEADER_LEN};
use std::mem::offset_of;

#[derive(Debug)]
pub enum Event<'a> {
    Data {
        header: DataHeader,
        payload: &'a [u8],
    },
    Exec {
        tgid: u32,
        comm: String,
    },
    Exit {
        tgid: u32,
    },
    Close {
        tgid: u32,
        conn: u64,
    },
    GoHttp(Box<GoRecord>),
}

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
    pub content_length: i64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record shorter than its header")]
    Short,
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record claims more payload than it carries")]
    BadLength,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The kernel's encoding of a data record, for tests and benchmarks that feed the pipeline
/// without the kernel.
pub fn encode_data(h: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DATA_HEADER_LEN + payload.len());
    for x in [h.kind, h.direction, h.tgid, h.tid] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    for x in [h.start_ns, h.end_ns, h.conn] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    for x in [h.fd as u32, h.source, h.len, h.captured] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.extend_from_slice(&h.sock_ts.to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

pub fn decode(b: &[u8]) -> Result<Event<'_>, DecodeError> {
    let k = u32_at(b, 0).ok_or(DecodeError::Short)?;
    match k {
        kind::DATA => {
            if b.len() < DATA_HEADER_LEN {
                return Err(DecodeError::Short);
            }
            let f = |at| u32_at(b, at).unwrap_or(0);
            let g = |at| u64_at(b, at).unwrap_or(0);
            let header = DataHeader {
                kind: k,
                direction: f(4),
                tgid: f(8),
                tid: f(12),
                start_ns: g(16),
                end_ns: g(24),
                conn: g(32),
                fd: f(40) as i32,
                source: f(44),
                len: f(48),
                captured: f(52),
                sock_ts: g(56),
            };
            let payload = b
                .get(DATA_HEADER_LEN..DATA_HEADER_LEN + header.captured as usize)
                .ok_or(DecodeError::BadLength)?;
            if header.captured > header.len {
                return Err(DecodeError::BadLength);
            }
            Ok(Event::Data { header, payload })
        }
        kind::EXEC | kind::EXIT => {
            let tgid = u32_at(b, 4).ok_or(DecodeError::Short)?;
            Ok(if k == kind::EXEC {
                let raw = b.get(16..32).ok_or(DecodeError::Short)?;
                let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                Event::Exec {
                    tgid,
                    comm: String::from_utf8_lossy(&raw[..end]).into_owned(),
                }
            } else {
                Event::Exit { tgid }
            })
        }
        kind::CLOSE => Ok(Event::Close {
            tgid: u32_at(b, 4).ok_or(DecodeError::Short)?,
            conn: u64_at(b, 8).ok_or(DecodeError::Short)?,
        }),
        kind::GO_HTTP => decode_go(b).map(|r| Event::GoHttp(Box::new(r))),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn decode_go(b: &[u8]) -> Result<GoRecord, DecodeError> {
    if b.len() < std::mem::size_of::<GoHttpRecord>() {
        return Err(DecodeError::Short);
    }
    let u32_ = |at: usize| u32_at(b, at).unwrap_or(0);
    let u64_ = |at: usize| u64_at(b, at).unwrap_or(0);
    let u16_ = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
    let mut truncated = false;
    // A string is its true length (at `len_at`) cut to its field's capacity minus one, the
    // most the probe copies.
    let mut text = |len_at: usize, at: usize, cap: usize| {
        let len = u32_(len_at) as usize;
        let n = len.min(cap - 1);
        truncated |= n < len;
        String::from_utf8_lossy(&b[at..at + n]).into_owned()
    };
    macro_rules! s {
        ($len:ident, $field:ident) => {
            text(
                offset_of!(GoHttpRecord, $len),
                offset_of!(GoHttpRecord, $field),
                std::mem::size_of_val(&GoHttpRecord::EMPTY.$field),
            )
        };
    }
    let method = s!(method_len, method);
    let path = s!(path_len, path);
    let query = s!(query_len, query);
    let host = s!(host_len, host);
    let addr = s!(addr_len, addr);
    let pattern = s!(pattern_len, pattern);
    let scheme = s!(scheme_len, scheme);
    let at = offset_of!(GoHttpRecord, trace_id);
    let trace_id = u128::from_be_bytes(b[at..at + 16].try_into().map_err(|_| DecodeError::Short)?);
    Ok(GoRecord {
        role: u32_(offset_of!(GoHttpRecord, role)),
        tgid: u32_(offset_of!(GoHttpRecord, tgid)),
        fd: u32_(offset_of!(GoHttpRecord, fd)) as i32,
        goid: u64_(offset_of!(GoHttpRecord, goid)),
        start_ns: u64_(offset_of!(GoHttpRecord, start_ns)),
        end_ns: u64_(offset_of!(GoHttpRecord, end_ns)),
        parent_goid: u64_(offset_of!(GoHttpRecord, parent_goid)),
        parent_start_ns: u64_(offset_of!(GoHttpRecord, parent_start_ns)),
        content_length: u64_(offset_of!(GoHttpRecord, content_length)) as i64,
        status: u32_(offset_of!(GoHttpRecord, status)),
        proto_major: u16_(offset_of!(GoHttpRecord, proto_major)),
        proto_minor: u16_(offset_of!(GoHttpRecord, proto_minor)),
        tls: b[offset_of!(GoHttpRecord, tls)] != 0,
        sock_gen: u64_(offset_of!(GoHttpRecord, sock_gen)),
        method,
        path,
        query,
        host,
        addr,
        pattern,
        scheme,
        trace_id,
        span_id: u64_(offset_of!(GoHttpRecord, span_id)),
        parent_span_id: u64_(offset_of!(GoHttpRecord, parent_span_id)),
        trace_flags: b[offset_of!(GoHttpRecord, trace_flags)],
        trace_given: b[offset_of!(GoHttpRecord, trace_given)] != 0,
        injected: b[offset_of!(GoHttpRecord, injected)] != 0,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(h: &DataHeader, payload: &[u8]) -> Vec<u8> {
        encode_data(h, payload)
    }

    #[test]
    fn round_trip_matches_the_abi_layout() {
        let h = DataHeader {
            kind: kind::DATA,
            direction: 1,
            tgid: 42,
            tid: 43,
            start_ns: 7,
            end_ns: 9,
            conn: 0xdead_beef,
            fd: -1,
            source: 1,
            len: 100,
            captured: 3,
            sock_ts: 77,
        };
        let raw = encode(&h, b"abc");
        assert_eq!(raw.len(), DATA_HEADER_LEN + 3);
        match decode(&raw).unwrap() {
            Event::Data { header, payload } => {
                assert_eq!(header, h);
                assert_eq!(payload, b"abc");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn short_and_lying_records_are_errors() {
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short);
        let h = DataHeader {
            kind: kind::DATA,
            captured: 50,
            len: 50,
            ..Default::default()
        };
        assert_eq!(
            decode(&encode(&h, b"short")).unwrap_err(),
            DecodeError::BadLength
        );
        assert_eq!(
            decode(&9u32.to_ne_bytes()).unwrap_err(),
            DecodeError::UnknownKind(9)
        );
    }
}
