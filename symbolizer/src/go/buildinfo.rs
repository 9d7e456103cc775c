//! Go build information: the toolchain version, the main module, every dependency's version
//! and the build settings, as `go version -m` prints them. Stripping keeps it.

use serde::Serialize;

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const FLAG_BIG_ENDIAN: u8 = 1;
const FLAG_INLINE: u8 = 2;
/// Longest version or module text accepted; real ones are a few KiB.
const MAX_TEXT: u64 = 1 << 22;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// For example `go1.22.12`.
    pub go_version: String,
    /// The main package's import path (`path` line); present even for GOPATH builds, which
    /// have no main module.
    pub path: Option<String>,
    pub main_module: Option<Module>,
    pub deps: Vec<Module>,
    /// `build` lines: `-buildmode`, `CGO_ENABLED`, `GOARCH` and so on, in file order.
    pub settings: Vec<Setting>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Module {
    pub path: String,
    pub version: String,
    /// Set when a `replace` directive swapped the module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Box<Module>>,
}

impl BuildInfo {
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.value.as_str())
    }

    pub fn dep(&self, path: &str) -> Option<&Module> {
        self.deps.iter().find(|m| m.path == path)
    }

    /// `(major, minor)` of the toolchain, from `go1.22.12`, `go1.21rc2` or `go1.23.0 X:...`.
    pub fn go_minor(&self) -> Option<(u32, u32)> {
        parse_go_version(&self.go_version)
    }
}

pub fn parse_go_version(v: &str) -> Option<(u32, u32)> {
    let rest = v.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("no Go build information (not a Go binary, or one older than Go 1.13)")]
    Missing,
    #[error("Go build information is truncated or corrupt: {0}")]
    Corrupt(&'static str),
}

/// Reads `len` bytes at a virtual address; the build information of Go 1.17 and older points
/// into the binary's data instead of holding its strings inline.
pub trait AddressReader {
    fn read_at(&self, addr: u64, len: u64) -> Option<&[u8]>;
}

/// Parses the `.go.buildinfo` blob (the section, or the 16-byte-aligned region that starts with
/// its magic).
pub fn parse(blob: &[u8], mem: &dyn AddressReader) -> Result<BuildInfo, BuildInfoError> {
    let header = blob.get(..32).ok_or(BuildInfoError::Missing)?;
    if &header[..14] != MAGIC {
        return Err(BuildInfoError::Missing);
    }
    let ptr_size = header[14] as usize;
    let flags = header[15];
    let (version, modinfo) = if flags & FLAG_INLINE != 0 {
        let (v, rest) = varint_str(&blob[32..])?;
        let (m, _) = varint_str(rest)?;
        (v.to_vec(), m.to_vec())
    } else {
        if !matches!(ptr_size, 4 | 8) {
            return Err(BuildInfoError::Corrupt("pointer size"));
        }
        let big = flags & FLAG_BIG_ENDIAN != 0;
        let word = |b: &[u8]| -> u64 {
            let mut v = 0u64;
            for i in 0..b.len() {
                let byte = if big { b[i] } else { b[b.len() - 1 - i] };
                v = (v << 8) | u64::from(byte);
            }
            v
        };
        let go_string = |ptr_at: usize| -> Result<Vec<u8>, BuildInfoError> {
            let p = blob
                .get(ptr_at..ptr_at + ptr_size)
                .ok_or(BuildInfoError::Corrupt("string pointer"))?;
            let hdr = mem
                .read_at(word(p), 2 * ptr_size as u64)
                .ok_or(BuildInfoError::Corrupt("string header address"))?;
            let (data, len) = (word(&hdr[..ptr_size]), word(&hdr[ptr_size..]));
            if len > MAX_TEXT {
                return Err(BuildInfoError::Corrupt("string length"));
            }
            mem.read_at(data, len)
                .map(<[u8]>::to_vec)
                .ok_or(BuildInfoError::Corrupt("string address"))
        };
        (go_string(16)?, go_string(16 + ptr_size)?)
    };
    let mut info = BuildInfo {
        go_version: String::from_utf8_lossy(&version).into_owned(),
        ..Default::default()
    };
    // The module text sits between two 16-byte sentinels; Go's own reader keys on the newline
    // before the closing one.
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        parse_modinfo(
            &String::from_utf8_lossy(&modinfo[16..modinfo.len() - 16]),
            &mut info,
        );
    }
    Ok(info)
}

fn varint_str(b: &[u8]) -> Result<(&[u8], &[u8]), BuildInfoError> {
    let mut len = 0u64;
    let mut shift = 0;
    let mut i = 0;
    loop {
        let byte = *b.get(i).ok_or(BuildInfoError::Corrupt("length"))?;
        i += 1;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(BuildInfoError::Corrupt("length"));
        }
    }
    if len > MAX_TEXT {
        return Err(BuildInfoError::Corrupt("length"));
    }
    let end = i + len as usize;
    let s = b.get(i..end).ok_or(BuildInfoError::Corrupt("string"))?;
    Ok((s, &b[end..]))
}

fn parse_modinfo(text: &str, info: &mut BuildInfo) {
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let module = |f: &[&str]| Module {
            path: f.first().unwrap_or(&"").to_string(),
            version: f.get(1).unwrap_or(&"").to_string(),
            replaced_by: None,
        };
        match f[0] {
            "path" => info.path = f.get(1).map(|p| p.to_string()),
            "mod" => info.main_module = Some(module(&f[1..])),
            "dep" => info.deps.push(module(&f[1..])),
            "=>" => {
                if let Some(last) = info.deps.last_mut() {
                    last.replaced_by = Some(Box::new(module(&f[1..])));
                }
            }
            "build" => {
                if let Some((k, v)) = f.get(1).and_then(|kv| kv.split_once('=')) {
                    info.settings.push(Setting {
                        key: k.to_string(),
                        value: v.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoMemory;
    impl AddressReader for NoMemory {
        fn read_at(&self, _: u64, _: u64) -> Option<&[u8]> {
            None
        }
    }

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[8, FLAG_INLINE]);
        b.resize(32, 0);
        b.push(version.len() as u8);
        b.extend_from_slice(version.as_bytes());
        let m = format!("{}{}{}", "0".repeat(16), modinfo, "1".repeat(16));
        b.push((m.len() & 0x7f) as u8 | 0x80);
        b.push((m.len() >> 7) as u8);
        b.extend_from_slice(m.as_bytes());
        b
    }

    #[test]
    fn reads_version_modules_and_settings() {
        let b = blob(
            "go1.22.12",
            "path\texample.com/x\nmod\texample.com/x\t(devel)\t\ndep\tgolang.org/x/net\tv0.27.0\th1:abc=\n=>\t../net\t(devel)\t\nbuild\t-buildmode=pie\nbuild\tCGO_ENABLED=1\n",
        );
        let i = parse(&b, &NoMemory).unwrap();
        assert_eq!(i.go_version, "go1.22.12");
        assert_eq!(i.go_minor(), Some((1, 22)));
        assert_eq!(i.main_module.as_ref().unwrap().path, "example.com/x");
        let net = i.dep("golang.org/x/net").unwrap();
        assert_eq!(net.version, "v0.27.0");
        assert_eq!(net.replaced_by.as_ref().unwrap().path, "../net");
        assert_eq!(i.setting("-buildmode"), Some("pie"));
        assert_eq!(i.setting("CGO_ENABLED"), Some("1"));
    }

    #[test]
    fn truncation_is_an_error() {
        let b = blob("go1.21.0", "mod\tx\tv1\t\n");
        for n in 0..b.len() - 20 {
            let _ = parse(&b[..n], &NoMemory);
        }
        assert_eq!(parse(&b[..20], &NoMemory), Err(BuildInfoError::Missing));
        assert!(parse(&b[..40], &NoMemory).is_err());
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_go_version("go1.21rc2"), Some((1, 21)));
        assert_eq!(
            parse_go_version("go1.23.0 X:nocoverageredesign"),
            Some((1, 23))
        );
        assert_eq!(parse_go_version("devel +abc"), None);
    }
}
