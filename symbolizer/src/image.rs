//! One parsed ELF file and the questions every other module asks of it: where a section is,
//! which file offset an address has, what bytes live at an address.
//!
//! Generic over `object::ReadRef`, so the same code reads a file lazily through `ReadCache`
//! (a 100 MB binary costs the pages a lookup touches) and a byte slice (fuzzing, tests).

use object::elf::{FileHeader64, Sym64};
use object::read::elf::{ElfFile64, FileHeader, SectionHeader, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSegment, ReadRef, SegmentFlags};
use serde::Serialize;
use std::borrow::Cow;

/// Largest decompressed debug section accepted; a corrupt header could claim any size.
const MAX_DECOMPRESSED: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
    Other,
}

pub struct Image<'data, R: ReadRef<'data>> {
    pub elf: ElfFile64<'data, Endianness, R>,
    data: R,
}

impl<'data, R: ReadRef<'data>> Image<'data, R> {
    pub fn parse(data: R) -> Result<Self, String> {
        let elf = ElfFile64::<Endianness, R>::parse(data).map_err(|e| {
            if FileHeader64::<Endianness>::parse(data).is_err()
                && object::elf::FileHeader32::<Endianness>::parse(data).is_ok()
            {
                "32-bit ELF files are not supported".to_string()
            } else {
                e.to_string()
            }
        })?;
        Ok(Image { elf, data })
    }

    pub fn endian(&self) -> Endianness {
        self.elf.endian()
    }

    pub fn arch(&self) -> Arch {
        match self.elf.elf_header().e_machine(self.endian()) {
            object::elf::EM_X86_64 => Arch::X86_64,
            object::elf::EM_AARCH64 => Arch::Aarch64,
            _ => Arch::Other,
        }
    }

    /// The first section with one of `names`, with its address and contents.
    pub fn section(&self, names: &[&str]) -> Option<(u64, &'data [u8])> {
        names.iter().find_map(|n| {
            let s = self.elf.section_by_name(n)?;
            if s.kind() == object::SectionKind::UninitializedData {
                return None;
            }
            Some((s.address(), s.data().ok()?))
        })
    }

    /// A section's contents, decompressed when it is (`SHF_COMPRESSED` or `.zdebug_*`).
    pub fn debug_section(&self, name: &str) -> Result<Option<Cow<'data, [u8]>>, String> {
        let Some(s) = self.elf.section_by_name(name) else {
            return Ok(None);
        };
        let c = s.compressed_data().map_err(|e| format!("{name}: {e}"))?;
        // zlib cannot expand more than about 1032:1, so a larger claim is corrupt, and it is
        // refused before anything is allocated for it.
        let bound = (c.data.len() as u64)
            .saturating_mul(1100)
            .min(MAX_DECOMPRESSED);
        if c.uncompressed_size > bound {
            return Err(format!(
                "{name}: claims {} bytes decompressed from {}, more than the {bound} accepted",
                c.uncompressed_size,
                c.data.len()
            ));
        }
        if !crate::budget::charge(c.uncompressed_size) {
            return Err(format!(
                "{name}: {} bytes decompressed exceed the analysis budget",
                c.uncompressed_size
            ));
        }
        c.decompress()
            .map(Some)
            .map_err(|e| format!("{name}: cannot decompress: {e}"))
    }

    /// Whether the file still has section headers (stripping tools can remove them all).
    pub fn has_section_headers(&self) -> bool {
        self.elf.elf_section_table().len() > 1
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.elf.section_by_name(name).is_some()
    }

    pub fn build_id_hex(&self) -> Option<String> {
        let id = self.elf.build_id().ok()??;
        Some(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Go's own build ID (`.note.go.buildid`), which internally linked Go binaries carry
    /// instead of a GNU build-id.
    pub fn go_build_id(&self) -> Option<String> {
        let (_, note) = self.section(&[".note.go.buildid"])?;
        let word = |at: usize| -> Option<usize> {
            Some(u32::from_le_bytes(note.get(at..at + 4)?.try_into().ok()?) as usize)
        };
        let (namesz, descsz) = (word(0)?, word(4)?);
        if namesz != 4 || note.get(12..16)? != b"Go\0\0" {
            return None;
        }
        let desc = note.get(16..16usize.checked_add(descsz)?)?;
        std::str::from_utf8(desc).ok().map(str::to_owned)
    }

    /// Program headers map addresses to file offsets; section headers may be stripped.
    pub fn addr_to_offset(&self, addr: u64) -> Option<u64> {
        self.elf.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            let start = seg.address();
            (addr >= start && addr < start.checked_add(size)?).then(|| addr - start + off)
        })
    }

    /// Whether `addr` lies in a segment the loader maps executable.
    pub fn is_code(&self, addr: u64) -> bool {
        self.elf.segments().any(|seg| {
            let exec = matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            let (_, size) = seg.file_range();
            exec && addr >= seg.address() && addr - seg.address() < size
        })
    }

    /// `len` bytes at virtual address `addr`, if they are all backed by the file.
    pub fn read_at(&self, addr: u64, len: u64) -> Option<&'data [u8]> {
        let seg = self.elf.segments().find(|seg| {
            let (_, size) = seg.file_range();
            addr >= seg.address() && addr - seg.address() < size
        })?;
        let (off, size) = seg.file_range();
        let rel = addr - seg.address();
        if len > size - rel {
            return None;
        }
        self.data.read_bytes_at(off + rel, len).ok()
    }

    /// The contents of every loadable segment that is not executable, for the searches that
    /// run when section headers are gone.
    pub fn data_segments(&self) -> impl Iterator<Item = (u64, &'data [u8])> + '_ {
        self.elf.segments().filter_map(|seg| {
            let exec = matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            if exec {
                return None;
            }
            Some((seg.address(), seg.data().ok()?))
        })
    }

    /// A symbol table and its strings, each read in one piece: reading names one by one through
    /// the cache costs a syscall per symbol, which for node's 100k symbols is most of a second.
    pub fn symbol_table(&self, kind: u32) -> Option<(&'data [Sym64<Endianness>], &'data [u8])> {
        let endian = self.endian();
        let sections = self.elf.elf_section_table();
        let hdr = sections.iter().find(|s| s.sh_type(endian) == kind)?;
        let data = hdr.data(endian, self.data).ok()?;
        let whole = data.len() - data.len() % std::mem::size_of::<Sym64<Endianness>>();
        let syms = object::pod::slice_from_all_bytes::<Sym64<Endianness>>(&data[..whole]).ok()?;
        let strtab = sections.section(hdr.link(endian)).ok()?;
        let strings = strtab.data(endian, self.data).ok()?;
        Some((syms, strings))
    }

    /// Defined functions in a symbol table, as (name without version, address, size).
    pub fn functions(&self, kind: u32) -> Vec<(&'data [u8], u64, u64)> {
        let endian = self.endian();
        let Some((syms, strings)) = self.symbol_table(kind) else {
            return Vec::new();
        };
        syms.iter()
            .filter(|s| {
                (s.st_type() == object::elf::STT_FUNC || s.st_type() == object::elf::STT_GNU_IFUNC)
                    && s.st_shndx(endian) != object::elf::SHN_UNDEF
                    && s.st_value(endian) != 0
            })
            .filter_map(|s| {
                let name = c_str_at(strings, s.st_name(endian) as usize)?;
                // Versioned names such as `SSL_read@@OPENSSL_3.0.0` match their base name.
                let base = name.split(|&b| b == b'@').next().unwrap_or(name);
                Some((base, s.st_value(endian), s.st_size(endian)))
            })
            .collect()
    }

    /// The value a dynamic relocation stores at `addr` (its addend), for fields a
    /// position-independent binary leaves as zero in the file.
    pub fn relocated_word(&self, addr: u64) -> Option<u64> {
        self.elf
            .dynamic_relocations()?
            .find(|(off, _)| *off == addr)
            .map(|(_, r)| r.addend() as u64)
    }
}

/// Opens `path` as an ELF file read through a `ReadCache` within the analysis budget and hands
/// it to `f`: the one place that turns a path into an [`Image`] with the errors a user is
/// shown.
pub fn with_image<T>(
    path: &std::path::Path,
    f: impl for<'a> FnOnce(&Image<'a, &'a crate::budget::Budgeted>) -> T,
) -> Result<T, crate::SymbolizeError> {
    let cache = crate::budget::Budgeted::new(crate::budget::open_regular(path)?);
    let (out, over) = crate::budget::within(crate::budget::MAX_BYTES, || {
        let img = Image::parse(&cache).map_err(|reason| crate::SymbolizeError::NotElf {
            path: path.to_owned(),
            reason,
        })?;
        Ok(f(&img))
    });
    if over {
        return Err(over_budget(path));
    }
    out
}

pub fn over_budget(path: &std::path::Path) -> crate::SymbolizeError {
    crate::SymbolizeError::OverBudget {
        path: path.to_owned(),
        limit_mib: crate::budget::MAX_BYTES >> 20,
    }
}

pub fn c_str_at(strings: &[u8], at: usize) -> Option<&[u8]> {
    let tail = strings.get(at..)?;
    let end = memchr::memchr(0, tail)?;
    Some(&tail[..end])
}

impl<'data, R: ReadRef<'data>> crate::go::buildinfo::AddressReader for Image<'data, R> {
    fn read_at(&self, addr: u64, len: u64) -> Option<&[u8]> {
        Image::read_at(self, addr, len)
    }
}
