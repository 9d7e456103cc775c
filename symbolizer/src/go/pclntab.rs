//! Go's pclntab: function entries and ends without a symbol table.
//!
//! Every Go binary keeps this table, stripped or not, because the runtime needs it for stack
//! traces and garbage collection. Three layouts exist since Go 1.16; each is told apart by its
//! magic number. Every offset read from the table is checked against the table's bounds, so a
//! corrupt or hostile table yields an error, never a panic or an allocation sized by the input.

use std::fmt;

const MAGIC_116: u32 = 0xffff_fffa;
const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// The table layouts, named by the first Go release that wrote each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclntabVersion {
    Go116,
    Go118,
    Go120,
}

impl fmt::Display for PclntabVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PclntabVersion::Go116 => "go1.16",
            PclntabVersion::Go118 => "go1.18",
            PclntabVersion::Go120 => "go1.20",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("the table is shorter than its header")]
    Short,
    #[error("unknown magic {0:#x}: not a pclntab from Go 1.16 or later")]
    Magic(u32),
    #[error("implausible header (quantum {quantum}, pointer size {ptr_size})")]
    Header { quantum: u8, ptr_size: u8 },
    #[error("{what} lies outside the table ({at:#x} of {len:#x} bytes)")]
    OutOfBounds {
        what: &'static str,
        at: u64,
        len: usize,
    },
    #[error("function {index} starts before the one ahead of it; the table is corrupt")]
    Unordered { index: usize },
}

/// A parsed table over borrowed bytes. Parsing checks the header and the function table's
/// bounds; names are decoded only when asked for.
#[derive(Debug, Clone)]
pub struct Pclntab<'a> {
    data: &'a [u8],
    pub version: PclntabVersion,
    pub ptr_size: u8,
    /// The address function entries are relative to (Go 1.18+), or 0 when they are absolute.
    text_start: u64,
    nfunc: usize,
    funcnames: usize,
    functab: usize,
}

/// One function: `[entry, end)` in the binary's own address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoFunc<'a> {
    pub name: &'a str,
    pub entry: u64,
    pub end: u64,
}

impl<'a> Pclntab<'a> {
    /// Parses the header. `text_start` replaces the header's own text address when given:
    /// in position-independent binaries linked externally that field may hold an unrelocated
    /// zero, so the caller passes the address it found by other means.
    pub fn parse(data: &'a [u8], text_start: Option<u64>) -> Result<Self, PclntabError> {
        if data.len() < 8 {
            return Err(PclntabError::Short);
        }
        let magic = u32::from_le_bytes(data[0..4].try_into().unwrap_or_default());
        let version = match magic {
            MAGIC_116 => PclntabVersion::Go116,
            MAGIC_118 => PclntabVersion::Go118,
            MAGIC_120 => PclntabVersion::Go120,
            other => return Err(PclntabError::Magic(other)),
        };
        let (quantum, ptr_size) = (data[6], data[7]);
        if data[4] != 0
            || data[5] != 0
            || !matches!(quantum, 1 | 2 | 4)
            || !matches!(ptr_size, 4 | 8)
        {
            return Err(PclntabError::Header { quantum, ptr_size });
        }
        let mut t = Pclntab {
            data,
            version,
            ptr_size,
            text_start: 0,
            nfunc: 0,
            funcnames: 0,
            functab: 0,
        };
        let word = |i: usize| t.word(8 + i * ptr_size as usize, "header");
        let nfunc = word(0)?;
        // Go 1.18 added the text start after nfiles; the offsets that follow shift by one.
        let (text, shift) = match version {
            PclntabVersion::Go116 => (0, 0),
            _ => (word(2)?, 1),
        };
        let funcnames = word(2 + shift)?;
        let functab = word(6 + shift)?;
        t.text_start = text_start.unwrap_or(text);
        t.funcnames = t.offset(funcnames, "function name table")?;
        t.functab = t.offset(functab, "function table")?;
        // nfunc + 1 entries: the last holds the end of the last function.
        let entry_size = t.functab_entry_size() as u64;
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(entry_size))
            .and_then(|n| n.checked_add(t.functab as u64))
            .ok_or(PclntabError::OutOfBounds {
                what: "function count",
                at: nfunc,
                len: data.len(),
            })?;
        if need > data.len() as u64 {
            return Err(PclntabError::OutOfBounds {
                what: "function table",
                at: need,
                len: data.len(),
            });
        }
        t.nfunc = nfunc as usize;
        Ok(t)
    }

    /// The text address recorded in the header (Go 1.18+), used to check a caller's guess.
    pub fn header_text_start(data: &[u8]) -> Option<u64> {
        let t = Pclntab::parse(data, None).ok()?;
        (t.version != PclntabVersion::Go116).then_some(t.text_start)
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    fn functab_entry_size(&self) -> usize {
        match self.version {
            PclntabVersion::Go116 => 2 * self.ptr_size as usize,
            _ => 8,
        }
    }

    fn offset(&self, v: u64, what: &'static str) -> Result<usize, PclntabError> {
        if v >= self.data.len() as u64 {
            return Err(PclntabError::OutOfBounds {
                what,
                at: v,
                len: self.data.len(),
            });
        }
        Ok(v as usize)
    }

    fn bytes(&self, at: usize, n: usize, what: &'static str) -> Result<&'a [u8], PclntabError> {
        at.checked_add(n)
            .and_then(|end| self.data.get(at..end))
            .ok_or(PclntabError::OutOfBounds {
                what,
                at: at as u64,
                len: self.data.len(),
            })
    }

    fn u32_at(&self, at: usize, what: &'static str) -> Result<u32, PclntabError> {
        let b = self.bytes(at, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn word(&self, at: usize, what: &'static str) -> Result<u64, PclntabError> {
        if self.ptr_size == 4 {
            return self.u32_at(at, what).map(u64::from);
        }
        let b = self.bytes(at, 8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Entry address and `_func` offset of function `i` (`i == len()` gives the end of text).
    fn slot(&self, i: usize) -> Result<(u64, usize), PclntabError> {
        let at = self.functab + i * self.functab_entry_size();
        match self.version {
            PclntabVersion::Go116 => {
                let p = self.ptr_size as usize;
                Ok((
                    self.word(at, "function entry")?,
                    self.word(at + p, "function entry")? as usize,
                ))
            }
            _ => Ok((
                self.text_start
                    .wrapping_add(u64::from(self.u32_at(at, "function entry")?)),
                self.u32_at(at + 4, "function entry")? as usize,
            )),
        }
    }

    fn name_of(&self, func_off: usize) -> Result<&'a str, PclntabError> {
        let func = self
            .functab
            .checked_add(func_off)
            .ok_or(PclntabError::OutOfBounds {
                what: "function record",
                at: func_off as u64,
                len: self.data.len(),
            })?;
        // `_func` starts with the entry (a word before 1.18, a u32 since) and then the name
        // offset into the name table.
        let name_field = match self.version {
            PclntabVersion::Go116 => func + self.ptr_size as usize,
            _ => func + 4,
        };
        let name_off = self.u32_at(name_field, "function record")? as usize;
        let start = self
            .funcnames
            .checked_add(name_off)
            .filter(|&s| s < self.data.len())
            .ok_or(PclntabError::OutOfBounds {
                what: "function name",
                at: name_off as u64,
                len: self.data.len(),
            })?;
        let tail = &self.data[start..];
        let end = memchr::memchr(0, tail).ok_or(PclntabError::OutOfBounds {
            what: "function name end",
            at: start as u64,
            len: self.data.len(),
        })?;
        Ok(std::str::from_utf8(&tail[..end]).unwrap_or("<non-utf8 name>"))
    }

    /// Function `i`, with its end taken from the entry of the next.
    pub fn func(&self, i: usize) -> Result<GoFunc<'a>, PclntabError> {
        let (entry, off) = self.slot(i)?;
        let (end, _) = self.slot(i + 1)?;
        if end < entry {
            return Err(PclntabError::Unordered { index: i });
        }
        Ok(GoFunc {
            name: self.name_of(off)?,
            entry,
            end,
        })
    }

    /// Every function in address order; a corrupt record ends the walk with its error.
    pub fn funcs(&self) -> impl Iterator<Item = Result<GoFunc<'a>, PclntabError>> + '_ {
        (0..self.nfunc).map(move |i| self.func(i))
    }
}

/// Where in `data` a pclntab starts, for binaries whose section headers do not name it. The
/// magic alone is four common bytes, so a candidate must also parse and hold a function whose
/// name reads as Go's runtime.
pub fn find_pclntab(data: &[u8]) -> Option<usize> {
    for magic in [MAGIC_120, MAGIC_118, MAGIC_116] {
        let mut pat = magic.to_le_bytes().to_vec();
        pat.extend_from_slice(&[0, 0]);
        for at in memchr::memmem::find_iter(data, &pat) {
            let Ok(t) = Pclntab::parse(&data[at..], None) else {
                continue;
            };
            if !t.is_empty()
                && t.funcs()
                    .take(64)
                    .flatten()
                    .any(|f| f.name.starts_with("runtime."))
            {
                return Some(at);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny Go 1.20-layout table with two functions, built by hand.
    fn sample() -> Vec<u8> {
        let mut t = vec![0u8; 0x100];
        t[0..4].copy_from_slice(&MAGIC_120.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let put =
            |t: &mut Vec<u8>, at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut t, 8, 2); // nfunc
        put(&mut t, 24, 0x40_1000); // text start
        put(&mut t, 32, 0x60); // names
        put(&mut t, 64, 0x80); // functab
        t[0x60..0x6d].copy_from_slice(b"runtime.main\0");
        t[0x6d..0x77].copy_from_slice(b"main.main\0");
        let ft = 0x80;
        let put32 =
            |t: &mut Vec<u8>, at: usize, v: u32| t[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut t, ft, 0x0);
        put32(&mut t, ft + 4, 0x20);
        put32(&mut t, ft + 8, 0x40);
        put32(&mut t, ft + 12, 0x30);
        put32(&mut t, ft + 16, 0x90);
        put32(&mut t, ft + 20, 0);
        // _func records: entry offset, then name offset.
        put32(&mut t, ft + 0x20 + 4, 0);
        put32(&mut t, ft + 0x30 + 4, 0xd);
        t
    }

    #[test]
    fn reads_entries_ends_and_names() {
        let data = sample();
        let t = Pclntab::parse(&data, None).unwrap();
        let f: Vec<_> = t.funcs().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            f,
            vec![
                GoFunc {
                    name: "runtime.main",
                    entry: 0x40_1000,
                    end: 0x40_1040
                },
                GoFunc {
                    name: "main.main",
                    entry: 0x40_1040,
                    end: 0x40_1090
                },
            ]
        );
        assert_eq!(find_pclntab(&[&[1u8, 2, 3][..], &data].concat()), Some(3));
    }

    /// The Go 1.16/1.17 layout: no text start in the header, absolute word-sized entries.
    #[test]
    fn reads_the_go116_layout() {
        let mut t = vec![0u8; 0x100];
        t[0..4].copy_from_slice(&MAGIC_116.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        let put =
            |t: &mut Vec<u8>, at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut t, 8, 1); // nfunc
        put(&mut t, 24, 0x60); // names
        put(&mut t, 56, 0x80); // functab
        t[0x60..0x6d].copy_from_slice(b"runtime.main\0");
        put(&mut t, 0x80, 0x45_0000); // entry
        put(&mut t, 0x88, 0x20); // _func offset
        put(&mut t, 0x90, 0x45_0100); // end of text
        put(&mut t, 0xa0, 0x45_0000); // _func.entry
        t[0xa8..0xac].copy_from_slice(&0u32.to_le_bytes()); // _func.nameoff
        let tab = Pclntab::parse(&t, None).unwrap();
        assert_eq!(tab.version, PclntabVersion::Go116);
        assert_eq!(
            tab.func(0).unwrap(),
            GoFunc {
                name: "runtime.main",
                entry: 0x45_0000,
                end: 0x45_0100
            }
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let data = sample();
        for n in 0..data.len() {
            if let Ok(t) = Pclntab::parse(&data[..n], None) {
                for f in t.funcs() {
                    let _ = f;
                }
            }
        }
    }

    #[test]
    fn a_huge_function_count_is_refused_without_allocating() {
        let mut data = sample();
        data[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Pclntab::parse(&data, None),
            Err(PclntabError::OutOfBounds { .. })
        ));
    }
}
