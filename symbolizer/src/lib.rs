//! Maps a binary to the places sightline attaches probes, with the source of each answer.
//!
//! Files are read through `object::ReadCache`, which reads only the parts a lookup touches: a
//! 100 MB executable costs the pages its symbol tables, pclntab and probed functions occupy,
//! not 100 MB of heap, and no `mmap` (and so no `unsafe`) is needed. Every parser also accepts
//! a byte slice, which is how the fuzz targets drive it.
#![forbid(unsafe_code)]

mod analysis;
pub mod budget;
mod cache;
mod debuglink;
pub mod dwarf;
mod elf;
pub mod go;
pub mod image;
mod openssl;
pub mod rets;

pub use analysis::{analyze, Analysis, OpensslInfo, Options, Point, SCHEMA_VERSION};
pub use cache::Cache;
pub use elf::{build_id, find_functions, function_offsets, AttachPoint, SymbolSource};
pub use openssl::{openssl_targets, openssl_version, OpensslTarget, SSL_FUNCTIONS};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file (a FIFO, device or directory), so it is not analysed")]
    NotRegular { path: PathBuf },
    #[error("{path}: analysing it would read more than {limit_mib} MiB into memory (its sizes, or its debug sections' decompressed sizes, are that large), so it is not traced")]
    OverBudget { path: PathBuf, limit_mib: u64 },
    #[error("{path}: not a readable ELF file ({reason}); is it a script or a corrupt binary?")]
    NotElf { path: PathBuf, reason: String },
    #[error("{path}: symbol {symbol} at {address:#x} lies in no loadable segment; the file is corrupt or unusual, so it is not probed")]
    NoSegment {
        path: PathBuf,
        symbol: String,
        address: u64,
    },
}
