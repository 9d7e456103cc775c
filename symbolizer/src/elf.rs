//! ELF symbol tables: function name → address → file offset, which is what a uprobe needs.

use crate::SymbolizeError;
use object::{Object, ObjectSegment, ObjectSymbol, ReadCache, SymbolKind};
use std::fs::File;
use std::path::Path;

/// Which table an answer came from, shown to people by `sightline symbols`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolSource {
    Dynsym,
    Symtab,
}

impl SymbolSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SymbolSource::Dynsym => "dynsym",
            SymbolSource::Symtab => "symtab",
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
    let file = File::open(path).map_err(|source| SymbolizeError::Open {
        path: path.to_owned(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| SymbolizeError::NotElf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;

    let mut found: Vec<AttachPoint> = Vec::new();
    // The dynamic table survives `strip`, so it is the first choice; the full table adds
    // statically linked copies that are not exported.
    let tables = [
        (SymbolSource::Dynsym, obj.dynamic_symbols()),
        (SymbolSource::Symtab, obj.symbols()),
    ];
    for (source, symbols) in tables {
        for sym in symbols {
            if sym.kind() != SymbolKind::Text || !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            // Versioned names such as `SSL_read@@OPENSSL_3.0.0` match their base name.
            let base = name.split('@').next().unwrap_or(name);
            if !names.contains(&base) || found.iter().any(|f| f.symbol == base) {
                continue;
            }
            let file_offset = address_to_offset(&obj, sym.address()).ok_or_else(|| {
                SymbolizeError::NoSegment {
                    path: path.to_owned(),
                    symbol: base.to_string(),
                    address: sym.address(),
                }
            })?;
            found.push(AttachPoint {
                symbol: base.to_string(),
                address: sym.address(),
                file_offset,
                source,
            });
        }
    }
    found.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    Ok(found)
}

/// Program headers map addresses to file offsets; section headers may be stripped.
fn address_to_offset<'a, R: object::ReadRef<'a>>(
    obj: &object::File<'a, R>,
    addr: u64,
) -> Option<u64> {
    obj.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        let start = seg.address();
        (addr >= start && addr < start.checked_add(size)?).then(|| addr - start + off)
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
