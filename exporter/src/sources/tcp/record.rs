//! The network signals' record: one TCP connection event ([`kind::TCP`]).

use crate::capture::records::{DecodeError, Fields};
use sightline_common::{kind, TcpRecord};
use std::mem::{offset_of, size_of};

pub fn decode(k: u32, b: &[u8]) -> Result<TcpRecord, DecodeError> {
    if k != kind::TCP {
        return Err(DecodeError::UnknownKind(k));
    }
    if b.len() < size_of::<TcpRecord>() {
        return Err(DecodeError::Short);
    }
    let f = Fields(b);
    macro_rules! get {
        ($ty:ident, $field:ident) => {
            f.$ty(offset_of!(TcpRecord, $field))?
        };
    }
    Ok(TcpRecord {
        kind: k,
        event: get!(u32, event),
        tgid: get!(u32, tgid),
        family: get!(u16, family),
        lport: get!(u16, lport),
        rport: get!(u16, rport),
        _pad: 0,
        state: get!(u32, state) as i32,
        sk: get!(u64, sk),
        ts_ns: get!(u64, ts_ns),
        start_ns: get!(u64, start_ns),
        laddr: f.bytes(offset_of!(TcpRecord, laddr))?,
        raddr: f.bytes(offset_of!(TcpRecord, raddr))?,
        err: get!(u32, err) as i32,
        srtt_us: get!(u32, srtt_us),
        total_retrans: get!(u32, total_retrans),
        segs_in: get!(u32, segs_in),
        segs_out: get!(u32, segs_out),
        _pad2: 0,
        bytes_received: get!(u64, bytes_received),
        bytes_acked: get!(u64, bytes_acked),
    })
}

/// The kernel's encoding, for tests that feed the source without the kernel.
pub fn encode(r: &TcpRecord) -> Vec<u8> {
    let mut v = vec![0u8; size_of::<TcpRecord>()];
    let mut put = |at: usize, b: &[u8]| v[at..at + b.len()].copy_from_slice(b);
    put(offset_of!(TcpRecord, kind), &r.kind.to_ne_bytes());
    put(offset_of!(TcpRecord, event), &r.event.to_ne_bytes());
    put(offset_of!(TcpRecord, tgid), &r.tgid.to_ne_bytes());
    put(offset_of!(TcpRecord, family), &r.family.to_ne_bytes());
    put(offset_of!(TcpRecord, lport), &r.lport.to_ne_bytes());
    put(offset_of!(TcpRecord, rport), &r.rport.to_ne_bytes());
    put(offset_of!(TcpRecord, state), &r.state.to_ne_bytes());
    put(offset_of!(TcpRecord, sk), &r.sk.to_ne_bytes());
    put(offset_of!(TcpRecord, ts_ns), &r.ts_ns.to_ne_bytes());
    put(offset_of!(TcpRecord, start_ns), &r.start_ns.to_ne_bytes());
    put(offset_of!(TcpRecord, laddr), &r.laddr);
    put(offset_of!(TcpRecord, raddr), &r.raddr);
    put(offset_of!(TcpRecord, err), &r.err.to_ne_bytes());
    put(offset_of!(TcpRecord, srtt_us), &r.srtt_us.to_ne_bytes());
    put(
        offset_of!(TcpRecord, total_retrans),
        &r.total_retrans.to_ne_bytes(),
    );
    put(offset_of!(TcpRecord, segs_in), &r.segs_in.to_ne_bytes());
    put(offset_of!(TcpRecord, segs_out), &r.segs_out.to_ne_bytes());
    put(
        offset_of!(TcpRecord, bytes_received),
        &r.bytes_received.to_ne_bytes(),
    );
    put(
        offset_of!(TcpRecord, bytes_acked),
        &r.bytes_acked.to_ne_bytes(),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_records() {
        let r = TcpRecord {
            kind: kind::TCP,
            event: 3,
            tgid: 42,
            family: 2,
            lport: 40000,
            rport: 80,
            state: 1,
            sk: 0xffff_8880_1234_5678,
            ts_ns: 9,
            start_ns: 5,
            laddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            err: 111,
            srtt_us: 250,
            total_retrans: 3,
            segs_in: 10,
            segs_out: 11,
            bytes_received: 1000,
            bytes_acked: 2000,
            ..TcpRecord::default()
        };
        let b = encode(&r);
        assert_eq!(decode(kind::TCP, &b).unwrap(), r);
        assert_eq!(
            decode(kind::TCP, &b[..b.len() - 1]),
            Err(DecodeError::Short)
        );
        assert_eq!(
            decode(kind::DATA, &b),
            Err(DecodeError::UnknownKind(kind::DATA))
        );
    }
}
