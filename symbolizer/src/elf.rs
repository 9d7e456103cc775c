//! ELF symbol tables: function name → address → file offset, which is what a uprobe needs.

use crate::image::{with_image, Image};
use crate::SymbolizeError;
use object::{Object, ReadRef};
use std::path::Path;

/// Which table an answer came from, shown to people by `sightline symbols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    Dynsym,
    Symtab,
    /// The symbol table of a separate debug file.
    DebugSymtab,
}

impl SymbolSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolSource::Dynsym => "dynsym",
            SymbolSource::Symtab => "symtab",
            SymbolSource::DebugSymtab => "debug file symtab",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPoint {
    pub symbol: String,
    /// Virtual address in the file's own address space.
    pub address: u64,
    /// Offset in the file, which is what the kernel keys a uprobe by.
    pub file_offset: u64,
    pub source: SymbolSource,
}

/// Finds each of `names` that the file defines as a function. Names it lacks are simply absent
/// from the result: the caller decides whether that matters.
pub fn function_offsets(path: &Path, names: &[&str]) -> Result<Vec<AttachPoint>, SymbolizeError> {
    with_image(path, |img| find_functions(img, names))?.map_err(|(symbol, address)| {
        SymbolizeError::NoSegment {
            path: path.to_owned(),
            symbol,
            address,
        }
    })
}

/// `names` found in the dynamic table, then the full one. An address outside every segment is
/// returned as the error `(symbol, address)`.
pub fn find_functions<'d, R: ReadRef<'d>>(
    img: &Image<'d, R>,
    names: &[&str],
) -> Result<Vec<AttachPoint>, (String, u64)> {
    let mut found: Vec<AttachPoint> = Vec::new();
    // The dynamic table survives `strip`, so it is the first choice; the full table adds
    // statically linked copies that are not exported.
    for (source, kind) in [
        (SymbolSource::Dynsym, object::elf::SHT_DYNSYM),
        (SymbolSource::Symtab, object::elf::SHT_SYMTAB),
    ] {
        if found.len() == names.len() {
            break;
        }
        for (name, addr, _) in img.functions(kind) {
            let Some(want) = names.iter().find(|n| n.as_bytes() == name) else {
                continue;
            };
            if found.iter().any(|f| f.symbol == *want) {
                continue;
            }
            let file_offset = img
                .addr_to_offset(addr)
                .ok_or_else(|| (want.to_string(), addr))?;
            found.push(AttachPoint {
                symbol: want.to_string(),
                address: addr,
                file_offset,
                source,
            });
        }
    }
    found.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    Ok(found)
}

/// The GNU build-id: the identity of a binary's contents, whatever its path or inode.
pub fn build_id(path: &Path) -> Result<Option<Vec<u8>>, SymbolizeError> {
    with_image(path, |img| {
        img.elf.build_id().map(|id| id.map(<[u8]>::to_vec))
    })?
    .map_err(|e| SymbolizeError::NotElf {
        path: path.to_owned(),
        reason: format!("unreadable build-id note: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("symtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("garbage");
        std::fs::write(&p, b"\x7fELF\x02\x01\x01garbage-that-is-not-an-elf").unwrap();
        let err = function_offsets(&p, &["SSL_read"]).unwrap_err();
        assert!(err.to_string().contains("not a readable ELF file"), "{err}");
        let missing = function_offsets(&dir.join("missing"), &["x"]).unwrap_err();
        assert!(missing.to_string().contains("cannot open"), "{missing}");
    }
}
