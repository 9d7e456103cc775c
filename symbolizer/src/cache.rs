//! Each binary is analysed once per run, however many processes or paths (containers, hard
//! links, copies) share it: answers are kept by build-id, and by (device, inode) for files
//! without one.

use crate::elf::{build_id, AttachPoint};
use crate::openssl::openssl_targets;
use crate::SymbolizeError;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    BuildId(Vec<u8>),
    Inode(u64, u64),
}

#[derive(Debug, Default)]
pub struct Cache {
    openssl: HashMap<Key, Option<Vec<AttachPoint>>>,
    hits: u64,
}

impl Cache {
    /// The OpenSSL attach points of `path` (`None` if it has no OpenSSL), from the cache when
    /// the same binary was seen before under any name.
    pub fn openssl_points(
        &mut self,
        path: &Path,
    ) -> Result<Option<Vec<AttachPoint>>, SymbolizeError> {
        let key = match build_id(path)? {
            Some(id) => Key::BuildId(id),
            None => {
                let m = std::fs::metadata(path).map_err(|source| SymbolizeError::Open {
                    path: path.to_owned(),
                    source,
                })?;
                Key::Inode(m.dev(), m.ino())
            }
        };
        if let Some(found) = self.openssl.get(&key) {
            self.hits += 1;
            return Ok(found.clone());
        }
        let found = openssl_targets(path)?.map(|t| t.points);
        self.openssl.insert(key, found.clone());
        Ok(found)
    }

    /// How many answers came from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_of_a_binary_is_not_analysed_twice() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let dir = std::env::temp_dir().join(format!("symcache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("libssl-copy.so.3");
        std::fs::copy(lib, &copy).unwrap();
        let mut c = Cache::default();
        let a = c.openssl_points(lib).unwrap().expect("libssl has OpenSSL");
        let b = c.openssl_points(&copy).unwrap().expect("so does its copy");
        assert_eq!(a, b);
        assert_eq!(c.hits(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn build_id_matches_readelf() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let out = std::process::Command::new("readelf")
            .args(["-n"])
            .arg(lib)
            .output()
            .expect("readelf (binutils) is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .expect("libssl carries a build-id")
            .to_string();
        let got: String = build_id(lib)
            .unwrap()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want);
    }
}
