//! Finds the files that carry OpenSSL and asks the loader to probe each one once.
//!
//! A uprobe is keyed by inode, so one attach covers every process mapping that file, now and
//! later. Discovery therefore works per file: at start it probes the system's libssl copies
//! and every file running processes map; at each exec it looks at the new process's
//! executable (node carries OpenSSL statically) and maps, again a few times within the first
//! second to catch libraries loaded with dlopen.

use crate::loader::Loader;
use crate::telemetry::stats::Stats;
use sightline_symbolizer::{Cache, OpensslTarget};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// When to look at a new process again after its exec: dlopen'd libraries (Python's `_ssl`)
/// appear after start. The last look is inside the 1 s promise.
pub const RESCAN_AFTER: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(800),
];

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// No OpenSSL inside.
    NotTls,
    Attached {
        points: usize,
    },
    Failed(String),
}

pub struct Discovery {
    /// What was done with each file: a uprobe belongs to an inode, so attaching is per inode.
    files: HashMap<(u64, u64), FileState>,
    /// What each binary contains: analysed once per build-id, whatever the path.
    symbols: Cache,
    stats: Arc<Stats>,
}

const LIB_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/aarch64-linux-gnu",
];

impl Discovery {
    pub fn new(stats: Arc<Stats>) -> Self {
        Discovery {
            files: HashMap::new(),
            symbols: Cache::default(),
            stats,
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &FileState> {
        self.files.values()
    }

    /// Start-up: the system's libssl copies, then everything running processes map.
    pub fn scan_all(&mut self, loader: &mut Loader) {
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("libssl.so") {
                    self.consider(&e.path(), loader);
                }
            }
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            if let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if pid != std::process::id() {
                    self.scan_pid(pid, loader);
                }
            }
        }
    }

    /// The executable and the mapped files of one process that may carry OpenSSL.
    pub fn scan_pid(&mut self, pid: u32, loader: &mut Loader) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // Through the process's root the file is reachable whatever mount namespace it lives
        // in, and, unlike /proc/PID/exe, the path stays valid if the process exits mid-attach.
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            let exe = exe.to_string_lossy();
            if exe.starts_with('/') && !exe.ends_with(" (deleted)") {
                self.consider(&stable_path(&root, &exe), loader);
            }
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        for line in maps.lines() {
            let Some(path) = line.split_whitespace().nth(5) else {
                continue;
            };
            if !path.starts_with('/') || seen.contains(&path) {
                continue;
            }
            seen.push(path);
            let name = path.rsplit('/').next().unwrap_or(path);
            // BoringSSL and OpenSSL builds keep "ssl" in the library's name.
            if name.contains("ssl") && name.contains(".so") {
                self.consider(&stable_path(&root, path), loader);
            }
        }
    }

    fn consider(&mut self, path: &Path, loader: &mut Loader) {
        tracing::debug!(file = %path.display(), "considering");
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        let key = (meta.dev(), meta.ino());
        if self.files.contains_key(&key) {
            return;
        }
        let t0 = std::time::Instant::now();
        let found = self.symbols.openssl_points(path).map(|points| {
            points.map(|points| OpensslTarget {
                path: path.to_owned(),
                points,
            })
        });
        tracing::debug!(file = %path.display(), elapsed = ?t0.elapsed(), "symbols read");
        let state = match found {
            Ok(None) => FileState::NotTls,
            // Scripts, corrupt files: nothing to probe, nothing to report per file.
            Err(_) => FileState::NotTls,
            Ok(Some(target)) => match loader.attach_openssl(&target) {
                Ok(points) => {
                    let shown = std::fs::canonicalize(path).unwrap_or(path.to_owned());
                    tracing::info!(file = %shown.display(), points, "probing OpenSSL");
                    FileState::Attached { points }
                }
                Err(e) => {
                    self.stats.attach_failures.fetch_add(1, Relaxed);
                    tracing::warn!(file = %path.display(), "cannot probe OpenSSL: {e:#}");
                    FileState::Failed(format!("{e:#}"))
                }
            },
        };
        self.files.insert(key, state);
    }
}

/// A path to a process's file that outlives the process: our own view of it when we share the
/// mount namespace (same inode), else the view through its root.
fn stable_path(root: &Path, path: &str) -> PathBuf {
    let through_root = root.join(path.trim_start_matches('/'));
    let ours = PathBuf::from(path);
    match (std::fs::metadata(&ours), std::fs::metadata(&through_root)) {
        (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino() => ours,
        _ => through_root,
    }
}
