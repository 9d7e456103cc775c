//! Finds the files on the host that a capture point may probe, and hands each to the capture
//! points (`sources::Attach`), which attach once per file.
//!
//! At start: the system's libraries a capture point asks for, then every running process.
//! At each exec: the new process's executable and the libraries it maps, again a few times
//! within the first second to catch libraries loaded with dlopen.

use crate::capture::loader::Loader;
use crate::sources::{self, Attach, AttachContext, CapturePoint, Found};
use crate::telemetry::counters::Stats;
use sightline_symbolizer::Cache;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// When to look at a new process again after its exec: dlopen'd libraries (Python's `_ssl`)
/// appear after start. The last look is inside the 1 s promise.
pub const RESCAN_AFTER: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(800),
];

const LIB_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/aarch64-linux-gnu",
];

pub struct Discovery {
    attachers: Vec<(CapturePoint, Box<dyn Attach>)>,
    /// What each binary contains: analysed once per build-id, whatever the path.
    symbols: Cache,
    stats: Arc<Stats>,
}

impl Discovery {
    pub fn new(stats: Arc<Stats>) -> Self {
        Discovery {
            attachers: sources::attachers(),
            symbols: Cache::default(),
            stats,
        }
    }

    /// Start-up: the system libraries capture points ask for, then every running process.
    pub fn scan_all(&mut self, loader: &mut Loader) {
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                self.offer(&e.path(), None, loader, |a| a.wants_system_library(&name));
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

    /// The capture points that trace `pid` on their own (beyond the files it maps).
    pub fn tracing(&self, pid: u32) -> impl Iterator<Item = CapturePoint> + '_ {
        self.attachers
            .iter()
            .filter(move |(_, a)| a.traces(pid))
            .map(|(p, _)| *p)
    }

    /// Every process some capture point traces on its own, with that capture point.
    pub fn traced(&self) -> Vec<(CapturePoint, u32)> {
        self.attachers
            .iter()
            .flat_map(|(p, a)| a.pids().into_iter().map(move |pid| (*p, pid)))
            .collect()
    }

    /// The executable and the mapped libraries of one process.
    pub fn scan_pid(&mut self, pid: u32, loader: &mut Loader) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // Through the process's root the file is reachable whatever mount namespace it lives
        // in, and, unlike /proc/PID/exe, the path stays valid if the process exits mid-attach.
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            let exe = exe.to_string_lossy();
            if exe.starts_with('/') && !exe.ends_with(" (deleted)") {
                let path = stable_path(&root, &exe);
                self.offer(&path, Some(pid), loader, |_| true);
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
            if self
                .attachers
                .iter()
                .any(|(_, a)| a.wants_mapped_library(name))
            {
                let path = stable_path(&root, path);
                self.offer(&path, None, loader, |a| a.wants_mapped_library(name));
            }
        }
    }

    /// A process is gone: what the kernel holds for it goes (its pid may be reused).
    pub fn forget(&mut self, pid: u32, loader: &mut Loader) {
        for (_, a) in &mut self.attachers {
            a.forget(pid, loader);
        }
    }

    /// Hands a regular file to the capture points `wants` picks. Only regular files: a FIFO
    /// or a device would block or never end a read.
    fn offer(
        &mut self,
        path: &Path,
        pid: Option<u32>,
        loader: &mut Loader,
        wants: impl Fn(&dyn Attach) -> bool,
    ) {
        if !self.attachers.iter().any(|(_, a)| wants(a.as_ref())) {
            return;
        }
        tracing::debug!(file = %path.display(), "considering");
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        let found = Found {
            path,
            inode: (meta.dev(), meta.ino()),
            pid,
        };
        let mut cx = AttachContext {
            loader,
            symbols: &mut self.symbols,
            stats: &self.stats,
        };
        for (_, a) in &mut self.attachers {
            if wants(a.as_ref()) {
                a.consider(&found, &mut cx);
            }
        }
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
