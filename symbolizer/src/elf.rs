//! ELF symbol tables: function name → address → file offset, which is what a uprobe needs.

use crate::SymbolizeError;
use object::elf::Sym64;
use object::read::elf::{ElfFile64, SectionHeader, Sym};
use object::{Endianness, Object, ObjectSegment, ReadCache};
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
    let not_elf = |reason: String| SymbolizeError::NotElf {
        path: path.to_owned(),
        reason,
    };
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).map_err(|e| not_elf(e.to_string()))?;
    let endian = elf.endian();

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
        let Some((syms, strings)) = table(&elf, &cache, kind) else {
            continue;
        };
        for sym in syms {
            if sym.st_type() != object::elf::STT_FUNC && sym.st_type() != object::elf::STT_GNU_IFUNC
            {
                continue;
            }
            let addr = sym.st_value(endian);
            if sym.st_shndx(endian) == object::elf::SHN_UNDEF || addr == 0 {
                continue;
            }
            let Some(name) = c_str_at(strings, sym.st_name(endian) as usize) else {
                continue;
            };
            // Versioned names such as `SSL_read@@OPENSSL_3.0.0` match their base name.
            let base = name.split(|&b| b == b'@').next().unwrap_or(name);
            let Some(want) = names.iter().find(|n| n.as_bytes() == base) else {
                continue;
            };
            if found.iter().any(|f| f.symbol == *want) {
                continue;
            }
            let file_offset =
                address_to_offset(&elf, addr).ok_or_else(|| SymbolizeError::NoSegment {
                    path: path.to_owned(),
                    symbol: want.to_string(),
                    address: addr,
                })?;
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

type Elf<'a> = ElfFile64<'a, Endianness, &'a ReadCache<File>>;

/// A symbol table and its strings, each read in one piece: reading names one by one through
/// the cache costs a syscall per symbol, which for node's 100k symbols is most of a second.
fn table<'a>(
    elf: &Elf<'a>,
    cache: &'a ReadCache<File>,
    kind: u32,
) -> Option<(&'a [Sym64<Endianness>], &'a [u8])> {
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let hdr = sections.iter().find(|s| s.sh_type(endian) == kind)?;
    let data = hdr.data(endian, cache).ok()?;
    let syms = object::pod::slice_from_all_bytes::<Sym64<Endianness>>(
        &data[..data.len() - data.len() % std::mem::size_of::<Sym64<Endianness>>()],
    )
    .ok()?;
    let strtab = sections.section(hdr.link(endian)).ok()?;
    let strings = strtab.data(endian, cache).ok()?;
    Some((syms, strings))
}

fn c_str_at(strings: &[u8], at: usize) -> Option<&[u8]> {
    let tail = strings.get(at..)?;
    let end = memchr::memchr(0, tail)?;
    Some(&tail[..end])
}

/// Program headers map addresses to file offsets; section headers may be stripped.
fn address_to_offset(obj: &Elf<'_>, addr: u64) -> Option<u64> {
    obj.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        let start = seg.address();
        (addr >= start && addr < start.checked_add(size)?).then(|| addr - start + off)
    })
}

/// The GNU build-id: the identity of a binary's contents, whatever its path or inode.
pub fn build_id(path: &Path) -> Result<Option<Vec<u8>>, SymbolizeError> {
    let file = File::open(path).map_err(|source| SymbolizeError::Open {
        path: path.to_owned(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).map_err(|e| SymbolizeError::NotElf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    elf.build_id()
        .map(|id| id.map(<[u8]>::to_vec))
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
