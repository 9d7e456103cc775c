//! Separate debug files: distributions strip symbols and DWARF into `/usr/lib/debug`, found by
//! build-id (`.build-id/ab/cdef….debug`) or by the `.gnu_debuglink` name and CRC.

use crate::image::Image;
use object::{Object, ReadRef};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/usr/lib/debug";

/// The debug file for the binary at `path`, if one is installed. A debuglink candidate counts
/// only when its CRC matches, so a stale debug file from another build is never used.
pub fn find<'d, R: ReadRef<'d>>(img: &Image<'d, R>, path: &Path, root: &Path) -> Option<PathBuf> {
    if let Ok(Some(id)) = img.elf.build_id() {
        if id.len() >= 2 {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let p = root
                .join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..]));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let (name, crc) = img.elf.gnu_debuglink().ok().flatten()?;
    let name = std::str::from_utf8(name).ok()?;
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = real.parent()?;
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    [
        dir.join(name),
        dir.join(".debug").join(name),
        root.join(rel).join(name),
    ]
    .into_iter()
    .find(|p| p != &real && p.is_file() && crc32_of(p) == Some(crc))
}

fn crc32_of(path: &Path) -> Option<u32> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(h.finalize());
        }
        h.update(&buf[..n]);
    }
}
