//! Ring buffer records into events: process records decoded here, each capture point's left
//! to its source. Decoding is by hand from bytes, field by field at the ABI crate's offsets
//! ([`Fields`]), so a short or garbled record is an error to count, never undefined behaviour.

use sightline_common::{kind, ProcessRecord};
use std::mem::offset_of;

#[derive(Debug)]
pub enum Event<'a> {
    /// A process replaced its image.
    Exec { tgid: u32, comm: String },
    /// A process exited.
    Exit { tgid: u32 },
    /// A capture point's record, whole: its source decodes it.
    Source { kind: u32, bytes: &'a [u8] },
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

/// Reads native-endian fields of a record at their ABI offsets; a field past the record's
/// end reads as `None`, so a short record is an error, never a fault.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

impl<'a> Fields<'a> {
    pub fn bytes<const N: usize>(self, at: usize) -> Result<[u8; N], DecodeError> {
        self.0
            .get(at..at + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(DecodeError::Short)
    }
    pub fn u8(self, at: usize) -> Result<u8, DecodeError> {
        Ok(self.bytes::<1>(at)?[0])
    }
    pub fn u16(self, at: usize) -> Result<u16, DecodeError> {
        self.bytes(at).map(u16::from_ne_bytes)
    }
    pub fn u32(self, at: usize) -> Result<u32, DecodeError> {
        self.bytes(at).map(u32::from_ne_bytes)
    }
    pub fn u64(self, at: usize) -> Result<u64, DecodeError> {
        self.bytes(at).map(u64::from_ne_bytes)
    }
    /// A string whose true length is at `len_at`, stored at `at` in a field of `cap` bytes:
    /// cut to `cap - 1`, the most the probe copies. The flag says it was cut.
    pub fn text(self, len_at: usize, at: usize, cap: usize) -> Result<(String, bool), DecodeError> {
        let len = self.u32(len_at)? as usize;
        let n = len.min(cap - 1);
        let raw = self.0.get(at..at + n).ok_or(DecodeError::Short)?;
        Ok((String::from_utf8_lossy(raw).into_owned(), n < len))
    }
}

/// The record's kind and, for process records, what they say. Records of a capture point
/// are left whole for its source to decode.
pub fn decode(b: &[u8]) -> Result<Event<'_>, DecodeError> {
    let f = Fields(b);
    let k = f.u32(0)?;
    match k {
        kind::EXEC => {
            let raw = f.bytes::<16>(offset_of!(ProcessRecord, comm))?;
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            Ok(Event::Exec {
                tgid: f.u32(offset_of!(ProcessRecord, tgid))?,
                comm: String::from_utf8_lossy(&raw[..end]).into_owned(),
            })
        }
        kind::EXIT => Ok(Event::Exit {
            tgid: f.u32(offset_of!(ProcessRecord, tgid))?,
        }),
        kind => Ok(Event::Source { kind, bytes: b }),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_records_and_short_ones() {
        let mut b = vec![0u8; std::mem::size_of::<ProcessRecord>()];
        b[..4].copy_from_slice(&kind::EXEC.to_ne_bytes());
        b[4..8].copy_from_slice(&42u32.to_ne_bytes());
        b[16..20].copy_from_slice(b"curl");
        match decode(&b).unwrap() {
            Event::Exec { tgid, comm } => assert_eq!((tgid, comm.as_str()), (42, "curl")),
            e => panic!("{e:?}"),
        }
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short);
        assert_eq!(decode(&b[..6]).unwrap_err(), DecodeError::Short);
        assert!(matches!(
            decode(&9u32.to_ne_bytes()),
            Ok(Event::Source { kind: 9, .. })
        ));
    }
}
