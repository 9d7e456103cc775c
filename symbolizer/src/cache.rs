//! Each binary is analysed once per run, however many processes or paths (containers, hard
//! links, copies) share it: answers are kept by GNU build-id, by Go build ID for Go binaries
//! linked without one, and by (device, inode) for files with neither.

use crate::analysis::{analyze, Analysis, Options};
use crate::elf::AttachPoint;
use crate::image::with_image;
use crate::openssl::openssl_targets;
use crate::SymbolizeError;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    BuildId(Vec<u8>),
    GoBuildId(String),
    Inode(u64, u64),
}

#[derive(Debug, Default)]
pub struct Cache {
    openssl: HashMap<Key, Option<Vec<AttachPoint>>>,
    analyses: HashMap<Key, Arc<Analysis>>,
    hits: u64,
}

/// The identity of the binary at `path`, reading only its notes.
fn key_of(path: &Path) -> Result<Key, SymbolizeError> {
    let ids = with_image(path, |img| {
        (
            object::Object::build_id(&img.elf)
                .ok()
                .flatten()
                .map(<[u8]>::to_vec),
            img.go_build_id(),
        )
    })?;
    Ok(match ids {
        (Some(id), _) => Key::BuildId(id),
        (None, Some(id)) => Key::GoBuildId(id),
        (None, None) => {
            let meta = std::fs::metadata(path).map_err(|source| SymbolizeError::Open {
                path: path.to_owned(),
                source,
            })?;
            Key::Inode(meta.dev(), meta.ino())
        }
    })
}

impl Cache {
    /// The OpenSSL attach points of `path` (`None` if it has no OpenSSL), from the cache when
    /// the same binary was seen before under any name.
    pub fn openssl_points(
        &mut self,
        path: &Path,
    ) -> Result<Option<Vec<AttachPoint>>, SymbolizeError> {
        let key = key_of(path)?;
        if let Some(found) = self.openssl.get(&key) {
            self.hits += 1;
            return Ok(found.clone());
        }
        let found = openssl_targets(path)?.map(|t| t.points);
        self.openssl.insert(key, found.clone());
        Ok(found)
    }

    /// The whole analysis of `path` (attach points, Go functions, return sites, offsets).
    pub fn analysis(
        &mut self,
        path: &Path,
        opts: &Options,
    ) -> Result<Arc<Analysis>, SymbolizeError> {
        let key = key_of(path)?;
        if let Some(found) = self.analyses.get(&key) {
            self.hits += 1;
            return Ok(found.clone());
        }
        let a = Arc::new(analyze(path, opts)?);
        self.analyses.insert(key, a.clone());
        Ok(a)
    }

    /// How many answers came from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::build_id;

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
        let x = c.analysis(lib, &Options::default()).unwrap();
        let y = c.analysis(&copy, &Options::default()).unwrap();
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(c.hits(), 2);
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
