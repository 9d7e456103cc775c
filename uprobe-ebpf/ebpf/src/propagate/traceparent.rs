//! W3C `traceparent` values, with no map and no Go in them: parsing an incoming one,
//! formatting the one written into a request, and choosing random trace and span ids.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use sightline_common::GO_TRACEPARENT_CAP;

#[inline(always)]
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[inline(always)]
fn hex_byte(t: &[u8; GO_TRACEPARENT_CAP], at: usize) -> Option<u8> {
    Some(nibble(t[at])? << 4 | nibble(t[at + 1])?)
}

/// A W3C `traceparent` (`00-<trace>-<parent>-<flags>`), by the rules user space applies too:
/// lowercase hex, version not ff, exactly 55 bytes for version 00, no all-zero id. Only a
/// valid one is continued, and so only hex ever reaches an outgoing request.
#[inline(always)]
pub(crate) fn parse_traceparent(
    t: &[u8; GO_TRACEPARENT_CAP],
    len: u32,
) -> Option<([u8; 16], u64, u8)> {
    if len < 55 || len as usize >= GO_TRACEPARENT_CAP {
        return None;
    }
    let version = hex_byte(t, 0)?;
    if version == 0xff || t[2] != b'-' || t[35] != b'-' || t[52] != b'-' {
        return None;
    }
    if (version == 0 && len != 55) || (len > 55 && t[55] != b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut any = 0u8;
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(t, 3 + 2 * i)?;
        any |= *b;
    }
    let mut span = 0u64;
    for i in 0..8 {
        span = span << 8 | hex_byte(t, 36 + 2 * i)? as u64;
    }
    let flags = hex_byte(t, 53)?;
    if any == 0 || span == 0 {
        return None;
    }
    Some((trace, span, flags))
}

#[inline(always)]
pub(crate) fn random64() -> u64 {
    // SAFETY: helper without arguments.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    // Never 0, which means "none" to W3C and to user space.
    ((a as u64) << 32 | b as u64) | 1
}

#[inline(always)]
pub(crate) fn random_trace() -> [u8; 16] {
    let (hi, lo) = (random64(), random64());
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&hi.to_be_bytes());
    t[8..].copy_from_slice(&lo.to_be_bytes());
    t
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the 55 bytes of a version 00 traceparent, `00-<trace>-<span>-<flags>`, at `at`.
#[inline(always)]
pub(crate) fn traceparent_value<const N: usize>(
    out: &mut [u8; N],
    at: usize,
    trace: [u8; 16],
    span: u64,
    flags: u8,
) {
    out[at..at + 3].copy_from_slice(b"00-");
    for (i, b) in trace.iter().enumerate() {
        out[at + 3 + 2 * i] = HEX[(b >> 4) as usize];
        out[at + 4 + 2 * i] = HEX[(b & 15) as usize];
    }
    out[at + 35] = b'-';
    for i in 0..16 {
        out[at + 36 + i] = HEX[((span >> (60 - 4 * i)) & 15) as usize];
    }
    out[at + 52] = b'-';
    out[at + 53] = HEX[(flags >> 4) as usize];
    out[at + 54] = HEX[(flags & 15) as usize];
}
