//! Separate debug files: distributions strip symbols and DWARF into `/usr/lib/debug`, found by
//! build-id (`.build-id/ab/cdef….debug`) or by the `.gnu_debuglink` name and CRC.

use crate::image::Image;
use object::{Object, ReadRef};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/usr/lib/debug";

/// Largest debug file whose CRC is computed: a debuglink is the binary's word, and any user's
/// binary may name a huge (or sparse) file; real debug files are far smaller.
pub const MAX_DEBUG_FILE: u64 = 1 << 30;

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
    let name = plain_name(name)?;
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

/// A debuglink names a file beside the binary: a plain file name, never a path (`/etc/x`,
/// `../../proc/kcore`) that would lead the lookup anywhere else.
fn plain_name(name: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(name).ok()?;
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    plain.then_some(name)
}

/// The CRC of a regular file no larger than [`MAX_DEBUG_FILE`].
fn crc32_of(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_DEBUG_FILE {
        return None;
    }
    let f = crate::budget::open_regular(path).ok()?;
    // The size checked above may grow meanwhile: the read itself is bounded too.
    let mut f = f.take(MAX_DEBUG_FILE);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_file_name_is_followed() {
        assert_eq!(plain_name(b"node.debug"), Some("node.debug"));
        for bad in [
            &b"/proc/kcore"[..],
            b"../../../proc/kcore",
            b"sub/dir.debug",
            b"..",
            b".",
            b"",
            b"a\0b",
            b"\xff\xfe",
        ] {
            assert_eq!(plain_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_huge_or_special_file_is_never_read() {
        let dir = std::env::temp_dir().join(format!("sightline-crc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.debug");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(crc32_of(&small), Some(crc32fast::hash(b"abc")));
        let sparse = dir.join("sparse.debug");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(MAX_DEBUG_FILE + 1).unwrap();
        assert_eq!(crc32_of(&sparse), None);
        assert_eq!(crc32_of(Path::new("/dev/zero")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
