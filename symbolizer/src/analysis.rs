//! The whole answer for one binary: what `sightline symbols` prints and what discovery uses.

use crate::budget::Budgeted;
use crate::elf::{AttachPoint, SymbolSource};
use crate::go::{self, GoInfo, OffsetSource};
use crate::image::{Arch, Image};
use crate::openssl::SSL_FUNCTIONS;
use crate::{debuglink, SymbolizeError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bumped when a field changes meaning or goes away; new fields may appear without a bump.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where separate debug files live.
    pub debug_root: PathBuf,
    /// Which of DWARF, the table and disassembly may answer struct offsets.
    pub offset_sources: Vec<OffsetSource>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debug_root: PathBuf::from(debuglink::DEFAULT_ROOT),
            offset_sources: vec![
                OffsetSource::Dwarf,
                OffsetSource::Table,
                OffsetSource::Disassembly,
            ],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub schema: u32,
    pub file: String,
    pub build_id: Option<String>,
    /// Go's build ID, for Go binaries linked without a GNU build-id.
    pub go_build_id: Option<String>,
    pub arch: Arch,
    /// The separate debug file used for symbols and DWARF, when one was found.
    pub debug_file: Option<String>,
    pub has_symtab: bool,
    pub has_dwarf: bool,
    pub openssl: Option<OpensslInfo>,
    pub go: Option<GoInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpensslInfo {
    /// Filled in by the caller that can afford to read the whole file (see `openssl_version`).
    pub version: Option<String>,
    pub functions: Vec<Point>,
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub symbol: String,
    pub address: u64,
    pub file_offset: u64,
    pub source: &'static str,
}

impl From<AttachPoint> for Point {
    fn from(p: AttachPoint) -> Self {
        Point {
            symbol: p.symbol,
            address: p.address,
            file_offset: p.file_offset,
            source: p.source.as_str(),
        }
    }
}

pub fn analyze(path: &Path, opts: &Options) -> Result<Analysis, SymbolizeError> {
    // One budget for the binary and its debug file together.
    let (out, over) =
        crate::budget::within(crate::budget::MAX_BYTES, || analyze_within(path, opts));
    if over {
        return Err(crate::image::over_budget(path));
    }
    out
}

fn analyze_within(path: &Path, opts: &Options) -> Result<Analysis, SymbolizeError> {
    let open = |p: &Path| crate::budget::open_regular(p).map(Budgeted::new);
    let not_elf = |reason: String| SymbolizeError::NotElf {
        path: path.to_owned(),
        reason,
    };
    let cache = open(path)?;
    let img = Image::parse(&cache).map_err(not_elf)?;
    let debug_path = debuglink::find(&img, path, &opts.debug_root);
    let debug_cache = match &debug_path {
        Some(p) => Some(open(p)?),
        None => None,
    };
    // A debug file that does not parse is ignored: the binary itself still answers.
    let debug = debug_cache.as_ref().and_then(|c| Image::parse(c).ok());

    let has_symtab = img.symbol_table(object::elf::SHT_SYMTAB).is_some()
        || debug
            .as_ref()
            .is_some_and(|d| d.symbol_table(object::elf::SHT_SYMTAB).is_some());
    let has_dwarf = img.has_section(".debug_info")
        || debug.as_ref().is_some_and(|d| d.has_section(".debug_info"));

    let mut points =
        crate::elf::find_functions(&img, &SSL_FUNCTIONS).map_err(|(symbol, address)| {
            SymbolizeError::NoSegment {
                path: path.to_owned(),
                symbol,
                address,
            }
        })?;
    if let Some(d) = &debug {
        if points.len() < SSL_FUNCTIONS.len() {
            // The debug file's symbols share the binary's addresses; offsets come from the
            // binary's own segments.
            for mut p in crate::elf::find_functions(d, &SSL_FUNCTIONS).unwrap_or_default() {
                if points.iter().any(|q| q.symbol == p.symbol) {
                    continue;
                }
                if let Some(off) = img.addr_to_offset(p.address) {
                    p.file_offset = off;
                    p.source = SymbolSource::DebugSymtab;
                    points.push(p);
                }
            }
            points.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        }
    }
    let openssl = points
        .iter()
        .any(|p| p.symbol == "SSL_read" || p.symbol == "SSL_write")
        .then(|| OpensslInfo {
            version: None,
            missing: SSL_FUNCTIONS
                .iter()
                .filter(|s| !points.iter().any(|p| p.symbol == **s))
                .map(|s| s.to_string())
                .collect(),
            functions: points.into_iter().map(Point::from).collect(),
        });

    Ok(Analysis {
        schema: SCHEMA_VERSION,
        file: path.display().to_string(),
        build_id: img.build_id_hex(),
        go_build_id: img.go_build_id(),
        arch: img.arch(),
        debug_file: debug_path.map(|p| p.display().to_string()),
        has_symtab,
        has_dwarf,
        openssl,
        go: go::analyze(&img, debug.as_ref(), &opts.offset_sources),
    })
}
