//! The records of the capture points that see byte streams: a payload a call moved
//! ([`kind::DATA`] from a TLS library, [`kind::SOCK_DATA`] from a socket syscall) and the end of
//! a connection ([`kind::CLOSE`]: a freed TLS connection object; [`kind::SOCK_CLOSE`]: a
//! closed socket).

use crate::capture::records::{DecodeError, Fields};
use sightline_common::{kind, CloseRecord, DataHeader, DATA_HEADER_LEN};
use std::mem::offset_of;

#[derive(Debug)]
pub enum Record<'a> {
    /// Bytes one call moved: `payload` is the captured part of `header.len`.
    Data {
        header: DataHeader,
        payload: &'a [u8],
    },
    /// The connection `conn` (a library's object, or a socket's fd) is over.
    Close { tgid: u32, conn: u64 },
}

pub fn decode(k: u32, b: &[u8]) -> Result<Record<'_>, DecodeError> {
    let f = Fields(b);
    match k {
        kind::DATA | kind::SOCK_DATA => {
            decode_data(k, f).map(|(header, payload)| Record::Data { header, payload })
        }
        kind::CLOSE | kind::SOCK_CLOSE => Ok(Record::Close {
            tgid: f.u32(offset_of!(CloseRecord, tgid))?,
            conn: f.u64(offset_of!(CloseRecord, conn))?,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The kernel's encoding of a data record, for tests and benchmarks that feed the pipeline
/// without the kernel.
pub fn encode_data(h: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; DATA_HEADER_LEN];
    let mut put = |at: usize, b: &[u8]| v[at..at + b.len()].copy_from_slice(b);
    put(offset_of!(DataHeader, kind), &h.kind.to_ne_bytes());
    put(
        offset_of!(DataHeader, direction),
        &h.direction.to_ne_bytes(),
    );
    put(offset_of!(DataHeader, tgid), &h.tgid.to_ne_bytes());
    put(offset_of!(DataHeader, tid), &h.tid.to_ne_bytes());
    put(offset_of!(DataHeader, start_ns), &h.start_ns.to_ne_bytes());
    put(offset_of!(DataHeader, end_ns), &h.end_ns.to_ne_bytes());
    put(offset_of!(DataHeader, conn), &h.conn.to_ne_bytes());
    put(offset_of!(DataHeader, fd), &h.fd.to_ne_bytes());
    put(offset_of!(DataHeader, flags), &h.flags.to_ne_bytes());
    put(offset_of!(DataHeader, len), &h.len.to_ne_bytes());
    put(offset_of!(DataHeader, captured), &h.captured.to_ne_bytes());
    put(offset_of!(DataHeader, sock_ts), &h.sock_ts.to_ne_bytes());
    v.extend_from_slice(payload);
    v
}

fn decode_data(k: u32, f: Fields<'_>) -> Result<(DataHeader, &[u8]), DecodeError> {
    if f.0.len() < DATA_HEADER_LEN {
        return Err(DecodeError::Short);
    }
    let header = DataHeader {
        kind: k,
        direction: f.u32(offset_of!(DataHeader, direction))?,
        tgid: f.u32(offset_of!(DataHeader, tgid))?,
        tid: f.u32(offset_of!(DataHeader, tid))?,
        start_ns: f.u64(offset_of!(DataHeader, start_ns))?,
        end_ns: f.u64(offset_of!(DataHeader, end_ns))?,
        conn: f.u64(offset_of!(DataHeader, conn))?,
        fd: f.u32(offset_of!(DataHeader, fd))? as i32,
        flags: f.u32(offset_of!(DataHeader, flags))?,
        len: f.u32(offset_of!(DataHeader, len))?,
        captured: f.u32(offset_of!(DataHeader, captured))?,
        sock_ts: f.u64(offset_of!(DataHeader, sock_ts))?,
    };
    if header.captured > header.len {
        return Err(DecodeError::BadLength);
    }
    let payload =
        f.0.get(DATA_HEADER_LEN..DATA_HEADER_LEN + header.captured as usize)
            .ok_or(DecodeError::BadLength)?;
    Ok((header, payload))
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
            flags: 0,
            len: 100,
            captured: 3,
            sock_ts: 77,
        };
        let raw = encode(&h, b"abc");
        assert_eq!(raw.len(), DATA_HEADER_LEN + 3);
        match decode(kind::DATA, &raw).unwrap() {
            Record::Data { header, payload } => {
                assert_eq!(header, h);
                assert_eq!(payload, b"abc");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn short_and_lying_records_are_errors() {
        assert_eq!(decode(kind::DATA, &[1, 0]).unwrap_err(), DecodeError::Short);
        let h = DataHeader {
            kind: kind::DATA,
            captured: 50,
            len: 50,
            ..Default::default()
        };
        assert_eq!(
            decode(kind::DATA, &encode(&h, b"short")).unwrap_err(),
            DecodeError::BadLength
        );
        assert_eq!(
            decode(9, &9u32.to_ne_bytes()).unwrap_err(),
            DecodeError::UnknownKind(9)
        );
    }
}
