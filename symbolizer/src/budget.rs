//! What one binary may cost to analyse. Any user's binary is read by a root agent whose memory
//! is capped (256 MiB in the shipped unit and DaemonSet), and a file's sizes are the file's
//! word: a sparse file claims a terabyte for nothing, a compressed section claims a gigabyte
//! from a megabyte. So every byte read or decompressed for one binary (and its debug file) is
//! charged to one budget; over it, the analysis fails and the binary is not traced.

use object::{ReadCache, ReadRef};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

/// Bytes one binary's analysis may read into memory: a large Go binary's pclntab, symbols and
/// DWARF take tens of MiB; twice the largest seen leaves room.
pub const MAX_BYTES: u64 = 128 << 20;

thread_local! {
    /// (spent, limit) of the analysis running on this thread; none outside one (fuzzing and
    /// tests read byte slices, whose size is already in memory).
    static SPENT: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
    static OVER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with a budget of `limit` bytes; says whether it ran over (then whatever `f`
/// returned was computed from partial data and must be discarded).
pub fn within<T>(limit: u64, f: impl FnOnce() -> T) -> (T, bool) {
    let outer = SPENT.with(|s| s.replace(Some((0, limit))));
    let outer_over = OVER.with(|o| o.replace(false));
    let out = f();
    let over = OVER.with(|o| o.replace(outer_over));
    SPENT.with(|s| s.set(outer));
    (out, over)
}

/// Charges `bytes` to the running analysis; false (and the analysis marked over) when they do
/// not fit.
pub fn charge(bytes: u64) -> bool {
    SPENT.with(|s| match s.get() {
        None => true,
        Some((spent, limit)) => match spent.checked_add(bytes).filter(|&t| t <= limit) {
            Some(total) => {
                s.set(Some((total, limit)));
                true
            }
            None => {
                OVER.with(|o| o.set(true));
                false
            }
        },
    })
}

/// Opens `path` for analysis: a regular file only. O_NONBLOCK, so that a FIFO swapped in
/// after the caller's check cannot block the open; the type is checked on the open file.
pub fn open_regular(path: &Path) -> Result<File, crate::SymbolizeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| crate::SymbolizeError::Open {
            path: path.to_owned(),
            source,
        })?;
    let meta = file
        .metadata()
        .map_err(|source| crate::SymbolizeError::Open {
            path: path.to_owned(),
            source,
        })?;
    if !meta.is_file() {
        return Err(crate::SymbolizeError::NotRegular {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// A file read through `ReadCache`, each distinct range charged once to the budget.
pub struct Budgeted {
    cache: ReadCache<File>,
    charged: RefCell<HashSet<(u64, u64)>>,
}

impl Budgeted {
    pub fn new(file: File) -> Budgeted {
        Budgeted {
            cache: ReadCache::new(file),
            charged: RefCell::new(HashSet::new()),
        }
    }

    fn charge_range(&self, key: (u64, u64), bytes: u64) -> bool {
        if self.charged.borrow().contains(&key) {
            return true;
        }
        let ok = charge(bytes);
        if ok {
            self.charged.borrow_mut().insert(key);
        }
        ok
    }
}

impl<'a> ReadRef<'a> for &'a Budgeted {
    fn len(self) -> Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        // Charged before the read: the read is what allocates.
        if !self.charge_range((offset, size), size) {
            return Err(());
        }
        (&self.cache).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let found = (&self.cache).read_bytes_at_until(range.clone(), delimiter)?;
        let key = (range.start, u64::MAX - u64::from(delimiter));
        if !self.charge_range(key, found.len() as u64) {
            return Err(());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_and_nests() {
        let (_, over) = within(100, || {
            assert!(charge(60));
            assert!(!charge(60));
            // Within an inner budget the outer one is untouched.
            let ((), inner) = within(10, || assert!(charge(10)));
            assert!(!inner);
        });
        assert!(over);
        // Outside any analysis nothing is limited.
        assert!(charge(u64::MAX));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("budget-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("libfakessl.so");
        let _ = std::fs::remove_file(&fifo);
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let err = open_regular(&fifo).unwrap_err();
        assert!(
            matches!(err, crate::SymbolizeError::NotRegular { .. }),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
