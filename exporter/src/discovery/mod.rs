//! Finds the files on the host that a capture point may probe, and hands each to the capture
//! points (`sources::Attach`), which attach once per file.
//!
//! At start: the system's libraries a capture point asks for, then every running process.
//! At each exec: the new process's executable and the libraries it maps, again a few times
//! within the first second to catch libraries loaded with dlopen. Analysis runs on workers
//! (`analyzer`); a process whose files are still being analysed is scanned again when they
//! are.

pub mod analyzer;

use crate::capture::loader::Loader;
use crate::sources::{Attach, AttachContext, CapturePoint, Found};
use crate::telemetry::counters::{Counter, Stats};
use analyzer::{Analyzer, Refused, Waiter};
use otel_config::Selection;
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When to look at a new process again after its exec: dlopen'd libraries (Python's `_ssl`)
/// appear after start. The last look is inside the 1 s promise.
pub const RESCAN_AFTER: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(800),
];

/// New processes waiting for their next look, per delay; past this, a storm of execs gets one
/// look per process (at exec) instead of four.
const MAX_RESCANS: usize = 65_536;

/// New processes to look at again, [`RESCAN_AFTER`] their exec: one queue per delay, each in
/// time order, drained by the capture loop's timer (no task or timer per exec).
#[derive(Default)]
pub struct Rescans {
    queues: [VecDeque<(Instant, u32)>; RESCAN_AFTER.len()],
}

impl Rescans {
    /// `pid` just exec'd.
    pub fn exec(&mut self, pid: u32, now: Instant) {
        for (q, delay) in self.queues.iter_mut().zip(RESCAN_AFTER) {
            if q.len() < MAX_RESCANS {
                q.push_back((now + delay, pid));
            }
        }
    }

    /// When the next look is due, if any is waiting.
    pub fn next(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|q| q.front())
            .map(|(at, _)| *at)
            .min()
    }

    /// The pids whose next look is due by `now`, into `out`.
    pub fn due(&mut self, now: Instant, out: &mut Vec<u32>) {
        for q in &mut self.queues {
            while let Some(&(at, pid)) = q.front() {
                if at > now {
                    break;
                }
                q.pop_front();
                out.push(pid);
            }
        }
    }
}

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
    /// Only selected processes are analysed, attached to or written into (a library every
    /// process may map, such as the system's libssl, is still probed once for all).
    selection: Selection,
    /// What each binary contains, analysed off the capture loop once per file.
    analyzer: Analyzer,
    stats: Arc<Stats>,
}

impl Discovery {
    pub fn new(
        attachers: Vec<(CapturePoint, Box<dyn Attach>)>,
        stats: Arc<Stats>,
        selection: Selection,
    ) -> Self {
        Discovery {
            attachers,
            selection,
            analyzer: Analyzer::new(),
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
                let path = e.path();
                let waiter = Waiter::Library(path.clone());
                self.offer(&path, None, waiter, loader, |a| {
                    a.wants_system_library(&name)
                });
            }
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut selected = 0;
        for p in procs.flatten() {
            if let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if pid != std::process::id() && self.scan_pid(pid, loader) {
                    selected += 1;
                }
            }
        }
        if !self.selection.is_everything() && selected == 0 {
            tracing::info!(
                executables = ?self.selection.executables,
                pids = ?self.selection.pids,
                "the selection matches no running process; sightline attaches to one as soon as it starts"
            );
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

    /// The executable and the mapped libraries of one process, if it is selected; returns
    /// whether it was.
    pub fn scan_pid(&mut self, pid: u32, loader: &mut Loader) -> bool {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return false;
        };
        let exe = exe.to_string_lossy();
        let deleted = exe.ends_with(" (deleted)");
        let exe = exe.trim_end_matches(" (deleted)");
        let name = exe.rsplit('/').next().unwrap_or(exe);
        if !self.selection.matches(pid, name) {
            return false;
        }
        // Through the process's root the file is reachable whatever mount namespace it lives
        // in, and, unlike /proc/PID/exe, the path stays valid if the process exits mid-attach.
        // A deleted executable's path may name another file by now.
        if exe.starts_with('/') && !deleted {
            let path = stable_path(&root, exe);
            self.offer(&path, Some(pid), Waiter::Process(pid), loader, |_| true);
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return true;
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
                self.offer(&path, None, Waiter::Process(pid), loader, |a| {
                    a.wants_mapped_library(name)
                });
            }
        }
        true
    }

    /// Takes in the analyses that are done: system libraries are looked at again here; the
    /// processes that waited are returned, to be scanned again.
    pub fn answered(&mut self, loader: &mut Loader) -> Vec<u32> {
        let waiters = self.analyzer.collect(Instant::now());
        for r in self.analyzer.refused.drain(..) {
            let c = match r {
                Refused::OverMemory(_) => Counter::RefusedMemory,
                Refused::OverTime => Counter::RefusedTime,
                Refused::NotRegular => Counter::RefusedNotRegular,
                Refused::Unusable(_) => continue,
            };
            self.stats.add(c, 1);
        }
        self.stats
            .set(Counter::AnalysesPending, self.analyzer.in_flight() as u64);
        let mut pids = Vec::new();
        for w in waiters {
            match w {
                Waiter::Process(pid) => pids.push(pid),
                Waiter::Library(path) => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    self.offer(&path, None, Waiter::Library(path.clone()), loader, |a| {
                        a.wants_system_library(&name)
                    });
                }
            }
        }
        pids
    }

    /// Wakes the capture loop when an analysis is done.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.analyzer.wake()
    }

    /// Start-up: waits (at most `budget`) until what the first scan asked for is analysed and
    /// attached, so that processes running before start are traced once sightline says so.
    pub fn settle(&mut self, loader: &mut Loader, budget: Duration) {
        let end = Instant::now() + budget;
        while self.analyzer.in_flight() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
            for pid in self.answered(loader) {
                self.scan_pid(pid, loader);
            }
        }
    }

    /// A process is gone: what the kernel holds for it goes (its pid may be reused).
    pub fn forget(&mut self, pid: u32, loader: &mut Loader) {
        for (_, a) in &mut self.attachers {
            a.forget(pid, loader);
        }
    }

    /// The processes a capture point holds state for but that no longer run: their exit
    /// record was lost (a full ring buffer). Without this, a full Go table would refuse new
    /// Go processes for good. Returns them, forgotten.
    pub fn reap(&mut self, loader: &mut Loader) -> Vec<u32> {
        let mut gone: Vec<u32> = self
            .attachers
            .iter()
            .flat_map(|(_, a)| a.pids())
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        gone.sort_unstable();
        gone.dedup();
        for pid in &gone {
            self.forget(*pid, loader);
        }
        gone
    }

    /// Hands a regular file to the capture points `wants` picks. Only regular files: a FIFO
    /// or a device would block or never end a read.
    fn offer(
        &mut self,
        path: &Path,
        pid: Option<u32>,
        waiter: Waiter,
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
            analyzer: &mut self.analyzer,
            waiter,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_process_is_looked_at_again_at_each_delay() {
        let mut r = Rescans::default();
        let t0 = Instant::now();
        r.exec(1, t0);
        r.exec(2, t0 + Duration::from_millis(10));
        let mut due = Vec::new();
        r.due(t0 + Duration::from_millis(40), &mut due);
        assert!(due.is_empty());
        r.due(t0 + Duration::from_millis(55), &mut due);
        assert_eq!(due, [1]);
        due.clear();
        r.due(t0 + Duration::from_secs(1), &mut due);
        due.sort_unstable();
        assert_eq!(due, [1, 1, 2, 2, 2]);
    }
}
