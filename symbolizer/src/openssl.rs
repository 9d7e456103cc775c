//! OpenSSL attach points and the version, read from the binary itself: a version guessed from
//! a file name chose the wrong layout in eCapture #759.

use crate::elf::{function_offsets, AttachPoint};
use crate::SymbolizeError;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The plaintext boundary of OpenSSL (and BoringSSL, which keeps these names), and the end of
/// a connection object.
pub const SSL_FUNCTIONS: [&str; 5] = [
    "SSL_read",
    "SSL_write",
    "SSL_read_ex",
    "SSL_write_ex",
    "SSL_free",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpensslTarget {
    pub path: PathBuf,
    pub points: Vec<AttachPoint>,
}

/// The OpenSSL functions a file defines, or `None` when it has neither `SSL_read` nor
/// `SSL_write` (most binaries).
pub fn openssl_targets(path: &Path) -> Result<Option<OpensslTarget>, SymbolizeError> {
    let points = function_offsets(path, &SSL_FUNCTIONS)?;
    if !points
        .iter()
        .any(|p| p.symbol == "SSL_read" || p.symbol == "SSL_write")
    {
        return Ok(None);
    }
    Ok(Some(OpensslTarget {
        path: path.to_owned(),
        points,
    }))
}

/// The OpenSSL version the file (or, for `libssl`, its `libcrypto` sibling) carries, for
/// example `OpenSSL 3.0.15 3 Sep 2024`. This reads the whole file, so callers on a hot path
/// attach first and ask later.
pub fn openssl_version(path: &Path) -> Option<String> {
    version_string(path).or_else(|| sibling_libcrypto(path).and_then(|c| version_string(&c)))
}

/// `libssl.so.3` keeps no version text; its `libcrypto.so.3` does.
fn sibling_libcrypto(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libssl")?;
    Some(path.with_file_name(format!("libcrypto{rest}")))
}

/// Streams the file looking for `OpenSSL <digit>`, without holding it in memory.
fn version_string(path: &Path) -> Option<String> {
    const NEEDLE: &[u8] = b"OpenSSL ";
    const KEEP: usize = 64;
    // A bounded stream: the string sits in read-only data, within the first few hundred MiB
    // of even the largest static binaries, and a sparse file may claim a terabyte of zeros.
    const MAX_SCAN: u64 = 512 << 20;
    let mut f = crate::budget::open_regular(path).ok()?.take(MAX_SCAN);
    let mut buf = vec![0u8; 1 << 20];
    let mut carry = 0usize;
    loop {
        let n = f.read(&mut buf[carry..]).ok()?;
        if n == 0 {
            return None;
        }
        let end = carry + n;
        let window = &buf[..end];
        let mut from = 0;
        while let Some(i) = memchr::memmem::find(&window[from..], NEEDLE) {
            let at = from + i;
            let tail = &window[at..end.min(at + KEEP)];
            if let Some(v) = parse_version(tail) {
                return Some(v);
            }
            from = at + 1;
        }
        // Keep a tail so a string split across reads is still found.
        let keep = KEEP.min(end);
        buf.copy_within(end - keep..end, 0);
        carry = keep;
    }
}

/// Accepts `OpenSSL 1.1.1w  11 Sep 2023` or `OpenSSL 3.0.15 3 Sep 2024`: the text up to the
/// NUL, when it starts with a dotted version.
fn parse_version(tail: &[u8]) -> Option<String> {
    let text = &tail[b"OpenSSL ".len()..];
    let end = text.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = text.split_whitespace();
    let ver = parts.next()?;
    // Release versions have three parts (3.0.15, 1.1.1w); "OpenSSL 3.0 legacy provider" is
    // a provider's name, not a version.
    let nums: Vec<&str> = ver.split('.').collect();
    if nums.len() < 3 || !nums[0].chars().all(|c| c.is_ascii_digit()) || nums[0].is_empty() {
        return None;
    }
    Some(format!("OpenSSL {}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_text_is_recognised() {
        assert_eq!(
            parse_version(b"OpenSSL 3.0.15 3 Sep 2024\0junk"),
            Some("OpenSSL 3.0.15 3 Sep 2024".into())
        );
        assert_eq!(parse_version(b"OpenSSL support\0"), None);
        assert_eq!(parse_version(b"OpenSSL 3"), None);
        assert_eq!(parse_version(b"OpenSSL 3.0 legacy provider\0"), None);
        assert_eq!(
            parse_version(b"OpenSSL 1.1.1w  11 Sep 2023\0"),
            Some("OpenSSL 1.1.1w  11 Sep 2023".into())
        );
    }

    #[test]
    fn libcrypto_sibling_name() {
        assert_eq!(
            sibling_libcrypto(Path::new("/usr/lib/libssl.so.3")),
            Some(PathBuf::from("/usr/lib/libcrypto.so.3"))
        );
        assert_eq!(sibling_libcrypto(Path::new("/usr/bin/node")), None);
    }
}

#[cfg(test)]
mod system_tests {
    use super::*;

    /// Ground truth from the system's own libssl: the offsets must point at the same bytes as
    /// the symbol's address does (checked through `nm -D` independently in the e2e tests).
    #[test]
    fn system_libssl_has_all_four_functions() {
        let p = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert!(
            p.exists(),
            "libssl3 must be installed (tests/prereqs.sh does it)"
        );
        let t = openssl_targets(p)
            .unwrap()
            .expect("libssl defines SSL_read");
        let names: Vec<_> = t.points.iter().map(|p| p.symbol.as_str()).collect();
        assert_eq!(
            names,
            [
                "SSL_free",
                "SSL_read",
                "SSL_read_ex",
                "SSL_write",
                "SSL_write_ex"
            ]
        );
        let v = openssl_version(p).unwrap_or_default();
        assert!(v.starts_with("OpenSSL 3."), "{v}");
    }
}
