//! Finds the files that carry OpenSSL and asks the loader to probe each one once.
//!
//! A uprobe is keyed by inode, so one attach covers every process mapping that file, now and
//! later. Discovery therefore works per file: at start it probes the system's libssl copies
//! and every file running processes map; at each exec it looks at the new process's
//! executable (node carries OpenSSL statically) and maps, again a few times within the first
//! second to catch libraries loaded with dlopen.

use crate::loader::Loader;
use crate::telemetry::stats::Stats;
use sightline_common::{go_window, GoOffsets, GO_NO_OFFSET, GO_REQ_WINDOW, GO_URL_WINDOW};
use sightline_symbolizer::go::GoInfo;
use sightline_symbolizer::{Cache, OpensslTarget, Options};
use std::collections::{HashMap, HashSet};
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

/// What was done with a Go executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoFileState {
    NotGo,
    Attached {
        offsets: GoOffsets,
        functions: Vec<&'static str>,
    },
    /// A Go binary sightline cannot trace, and why (told once per file).
    Unusable(String),
}

pub struct Discovery {
    /// What was done with each file: a uprobe belongs to an inode, so attaching is per inode.
    files: HashMap<(u64, u64), FileState>,
    go_files: HashMap<(u64, u64), GoFileState>,
    /// Processes whose offsets the Go probes hold.
    go_pids: HashSet<u32>,
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
            go_files: HashMap::new(),
            go_pids: HashSet::new(),
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

    /// Processes the Go probes are tracing.
    pub fn go_pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.go_pids.iter().copied()
    }

    pub fn is_go(&self, pid: u32) -> bool {
        self.go_pids.contains(&pid)
    }

    /// The executable and the mapped files of one process that may carry OpenSSL.
    pub fn scan_pid(&mut self, pid: u32, loader: &mut Loader) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // Through the process's root the file is reachable whatever mount namespace it lives
        // in, and, unlike /proc/PID/exe, the path stays valid if the process exits mid-attach.
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            let exe = exe.to_string_lossy();
            if exe.starts_with('/') && !exe.ends_with(" (deleted)") {
                let path = stable_path(&root, &exe);
                self.consider(&path, loader);
                self.consider_go(pid, &path, loader);
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

    /// A process is gone: its offsets leave the kernel map (its pid may be reused).
    pub fn forget(&mut self, pid: u32, loader: &mut Loader) {
        if self.go_pids.remove(&pid) {
            loader.forget_go_process(pid);
        }
    }

    /// A Go executable: probe it once per file, and give the probes this process's offsets.
    fn consider_go(&mut self, pid: u32, path: &Path, loader: &mut Loader) {
        if self.go_pids.contains(&pid) {
            return;
        }
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let key = (meta.dev(), meta.ino());
        if !self.go_files.contains_key(&key) {
            let t0 = std::time::Instant::now();
            let state = match self.symbols.analysis(path, &Options::default()) {
                Ok(a) => match &a.go {
                    None => GoFileState::NotGo,
                    Some(go) => self.attach_go(path, go, loader),
                },
                Err(_) => GoFileState::NotGo,
            };
            tracing::debug!(file = %path.display(), elapsed = ?t0.elapsed(), "Go analysis");
            self.go_files.insert(key, state);
        }
        if let Some(GoFileState::Attached { offsets, .. }) = self.go_files.get(&key) {
            match loader.set_go_process(pid, offsets) {
                Ok(()) => {
                    self.go_pids.insert(pid);
                }
                Err(e) => tracing::warn!(pid, "cannot trace this Go process: {e:#}"),
            }
        }
    }

    fn attach_go(&mut self, path: &Path, go: &GoInfo, loader: &mut Loader) -> GoFileState {
        let shown = std::fs::canonicalize(path).unwrap_or(path.to_owned());
        let version = go.version.as_deref().unwrap_or("unknown Go");
        let offsets = match go_offsets(go) {
            Ok(o) => o,
            Err(why) => {
                tracing::warn!(file = %shown.display(), version, "not tracing this Go program: {why}; `sightline symbols {}` shows every source", shown.display());
                return GoFileState::Unusable(why);
            }
        };
        match loader.attach_go(path, go) {
            Ok(functions) if functions.is_empty() => GoFileState::NotGo,
            Ok(functions) => {
                tracing::info!(file = %shown.display(), version, ?functions, "probing Go net/http");
                GoFileState::Attached { offsets, functions }
            }
            Err(e) => {
                self.stats.attach_failures.fetch_add(1, Relaxed);
                tracing::warn!(file = %shown.display(), "cannot probe Go: {e:#}");
                GoFileState::Unusable(format!("{e:#}"))
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

/// The symbolizer's answers as the probes' offsets table. The goroutine id and the request's
/// method and URL are required: without them no call can be told apart or named. Any other
/// unknown field is simply not read.
pub fn go_offsets(go: &GoInfo) -> Result<GoOffsets, String> {
    let get = |ty: &str, f: &str| {
        go.field(ty, f)
            .and_then(|x| x.offset)
            .and_then(|o| u32::try_from(o).ok())
            .unwrap_or(GO_NO_OFFSET)
    };
    let mut o = GoOffsets {
        g_goid: get("runtime.g", "goid"),
        req_method: get("net/http.Request", "Method"),
        req_url: get("net/http.Request", "URL"),
        req_proto_major: get("net/http.Request", "ProtoMajor"),
        req_proto_minor: get("net/http.Request", "ProtoMinor"),
        req_header: get("net/http.Request", "Header"),
        req_content_length: get("net/http.Request", "ContentLength"),
        req_host: get("net/http.Request", "Host"),
        req_remote_addr: get("net/http.Request", "RemoteAddr"),
        req_tls: get("net/http.Request", "TLS"),
        req_pattern: get("net/http.Request", "Pattern"),
        url_scheme: get("net/url.URL", "Scheme"),
        url_host: get("net/url.URL", "Host"),
        url_path: get("net/url.URL", "Path"),
        url_raw_query: get("net/url.URL", "RawQuery"),
        resp_status_code: get("net/http.Response", "StatusCode"),
        response_conn: get("net/http.response", "conn"),
        response_status: get("net/http.response", "status"),
        conn_rwc: get("net/http.conn", "rwc"),
        tls_conn_conn: get("crypto/tls.Conn", "conn"),
        net_conn_fd: get("net.conn", "fd"),
        netfd_pfd: get("net.netFD", "pfd"),
        fd_sysfd: get("internal/poll.FD", "Sysfd"),
        hmap_count: get("runtime.hmap", "count"),
        hmap_b: get("runtime.hmap", "B"),
        hmap_buckets: get("runtime.hmap", "buckets"),
        pconn_conn: get("net/http.persistConn", "conn"),
        pconn_tls_state: get("net/http.persistConn", "tlsState"),
        h2rw_rws: get("net/http.http2responseWriter", "rws"),
        h2rws_status: get("net/http.http2responseWriterState", "status"),
        h2cc_tconn: get("net/http.http2ClientConn", "tconn"),
        xh2rw_rws: get("golang.org/x/net/http2.responseWriter", "rws"),
        xh2rws_status: get("golang.org/x/net/http2.responseWriterState", "status"),
        g_parent_goid: get("runtime.g", "parentGoid"),
        pconn_bw: get("net/http.persistConn", "bw"),
        h2cc_bw: get("net/http.http2ClientConn", "bw"),
        bufio_buf: get("bufio.Writer", "buf"),
        bufio_n: get("bufio.Writer", "n"),
        req_window: 0,
        url_window: 0,
    };
    let (word, string) = (8, 16);
    o.req_window = go_window(
        &[
            (o.req_method, string),
            (o.req_url, word),
            (o.req_proto_major, word),
            (o.req_proto_minor, word),
            (o.req_header, word),
            (o.req_content_length, word),
            (o.req_host, string),
            (o.req_remote_addr, string),
            (o.req_tls, word),
            (o.req_pattern, string),
        ],
        GO_REQ_WINDOW - 8,
    );
    o.url_window = go_window(
        &[
            (o.url_scheme, string),
            (o.url_host, string),
            (o.url_path, string),
            (o.url_raw_query, string),
        ],
        GO_URL_WINDOW - 8,
    );
    for (ty, f, v) in [
        ("runtime.g", "goid", o.g_goid),
        ("net/http.Request", "Method", o.req_method),
        ("net/http.Request", "URL", o.req_url),
        ("net/url.URL", "Path", o.url_path),
    ] {
        if v == GO_NO_OFFSET {
            let why = go
                .field(ty, f)
                .map_or("not reported".to_string(), |x| x.detail.clone());
            return Err(format!("offset of {ty}.{f} unknown ({why})"));
        }
    }
    Ok(o)
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
