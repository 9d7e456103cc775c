//! Offsets of kernel struct fields from the running kernel's BTF, for the probes that read
//! kernel structs (the network signals' figures). No layout is assumed: a kernel without BTF,
//! or whose field changed name or size, turns those figures off rather than reading the wrong
//! bytes.

use btf_rs::{Btf, Struct, Type};
use sightline_common::TcpOffsets;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// Anonymous structs and unions nest a few levels in `struct sock`; more means a loop.
const MAX_DEPTH: u8 = 8;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("the kernel's BTF ({VMLINUX}) could not be read ({0}); it needs CONFIG_DEBUG_INFO_BTF=y, as every major distribution kernel has")]
    Unreadable(String),
    #[error("the kernel's BTF has no {0} of the expected size; this kernel's TCP structs differ from those sightline knows")]
    NoField(String),
}

/// The `struct sock` and `struct tcp_sock` fields the network signals read.
pub fn tcp_offsets() -> Result<TcpOffsets, BtfError> {
    let btf = Btf::from_file(VMLINUX).map_err(|e| BtfError::Unreadable(e.to_string()))?;
    let field = |st: &str, name: &str, size: usize| {
        member(&btf, st, name)
            .filter(|(_, s)| *s == size)
            .map(|(o, _)| o)
            .ok_or_else(|| BtfError::NoField(format!("{st}.{name} ({size} bytes)")))
    };
    Ok(TcpOffsets {
        ready: 1,
        sk_err: field("sock", "sk_err", 4)?,
        srtt_us: field("tcp_sock", "srtt_us", 4)?,
        total_retrans: field("tcp_sock", "total_retrans", 4)?,
        bytes_received: field("tcp_sock", "bytes_received", 8)?,
        bytes_acked: field("tcp_sock", "bytes_acked", 8)?,
        segs_in: field("tcp_sock", "segs_in", 4)?,
        segs_out: field("tcp_sock", "segs_out", 4)?,
    })
}

/// Byte offset and size of field `name` of struct `st`, looking through anonymous struct and
/// union members. Bitfields are refused: the probes read whole bytes.
fn member(btf: &Btf, st: &str, name: &str) -> Option<(u32, usize)> {
    btf.resolve_types_by_name(st)
        .ok()?
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) => find(btf, s, name, 0, 0),
            _ => None,
        })
}

fn find(btf: &Btf, s: &Struct, name: &str, base_bits: u32, depth: u8) -> Option<(u32, usize)> {
    if depth > MAX_DEPTH {
        return None;
    }
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        let mname = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m).ok();
        if mname == name {
            if m.bitfield_size().unwrap_or(0) != 0 || !bits.is_multiple_of(8) {
                return None;
            }
            return Some((bits / 8, size_of(btf, ty?, 0)?));
        }
        if mname.is_empty() {
            if let Some(Type::Struct(inner) | Type::Union(inner)) = ty {
                if let Some(found) = find(btf, &inner, name, bits, depth + 1) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// A type's size, through typedefs and qualifiers.
fn size_of(btf: &Btf, ty: Type, depth: u8) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match &ty {
        Type::Int(i) => Some(i.size()),
        Type::Enum(e) => Some(e.size()),
        Type::Struct(s) | Type::Union(s) => Some(s.size()),
        Type::Ptr(_) => Some(8),
        Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) => {
            let next = btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
            size_of(btf, next, depth + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against this kernel's own BTF: the fields exist, are distinct, and lie inside the
    /// structs (tcp_sock begins with struct sock, so its fields lie past sk_err).
    #[test]
    fn this_kernels_tcp_fields_are_found() {
        if !std::path::Path::new(VMLINUX).exists() {
            panic!("{VMLINUX} is missing: these tests need a kernel with BTF");
        }
        let o = tcp_offsets().expect("offsets");
        let all = [
            o.srtt_us,
            o.total_retrans,
            o.bytes_received,
            o.bytes_acked,
            o.segs_in,
            o.segs_out,
        ];
        for f in all {
            assert!(f > o.sk_err, "{o:?}");
            assert!(f < 4096, "{o:?}");
        }
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "{o:?}");
    }
}
