//! Loads the embedded eBPF programs, attaches them, and gives the rest of the agent safe
//! handles. This is the one module of the agent that talks to the kernel directly, so it is
//! the one place `unsafe` is allowed.
#![allow(unsafe_code)]

use anyhow::Context;
use aya::maps::{
    Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, SockHash,
};
use aya::programs::trace_point::TracePointLink;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps, TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use sightline_common::{counter, names, ConnKey, GoOffsets, SockInfo, SockStateOffsets};
use sightline_symbolizer::go::GoInfo;
use sightline_symbolizer::OpensslTarget;
use std::path::Path;

#[cfg(feature = "probes")]
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sightline-probes"));
/// Built without the `probes` feature (fuzzing): loading fails with a clear error.
#[cfg(not(feature = "probes"))]
static PROBES: &[u8] = &[];

/// Things the kernel must offer; each failure says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("sightline must run as root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE: it loads eBPF programs and reads other processes' memory maps. Try `sudo sightline`.")]
    NotPrivileged,
    #[error("this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): sightline needs CONFIG_UPROBE_EVENTS=y, which every mainstream distribution kernel has")]
    NoUprobes,
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): sightline needs CONFIG_DEBUG_INFO_BTF=y (kernels from Debian 11, Ubuntu 20.10 and RHEL 8.2 on have it)")]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`")]
    NoTracefs(std::io::Error),
}

pub fn preflight() -> Result<(), PreflightError> {
    if !privileged() {
        return Err(PreflightError::NotPrivileged);
    }
    kernel_features(Path::new("/"))?;
    ensure_tracefs().map_err(PreflightError::NoTracefs)?;
    Ok(())
}

/// What the kernel under `root` offers (a parameter so tests can present a kernel without).
fn kernel_features(root: &Path) -> Result<(), PreflightError> {
    if !root.join("sys/bus/event_source/devices/uprobe").exists() {
        return Err(PreflightError::NoUprobes);
    }
    if !root.join("sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // CAP_BPF = 39, CAP_PERFMON = 38, CAP_SYS_PTRACE = 19.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let need = (1u64 << 39) | (1u64 << 38) | (1u64 << 19);
    eff & need == need
}

/// Tracepoints are found through tracefs; hosts often leave it unmounted.
fn ensure_tracefs() -> std::io::Result<()> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(());
        }
    }
    mount_fs(c"tracefs", c"/sys/kernel/tracing")
}

/// Mounts a kernel filesystem of type `fstype` (its name as source too) at `target`.
fn mount_fs(fstype: &std::ffi::CStr, target: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: NUL-terminated strings that outlive the call; a null data pointer is allowed.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`), from securityfs,
/// mounted if the host left it unmounted. `None` when the kernel has no lockdown support.
pub fn lockdown_mode() -> Option<String> {
    let path = Path::new("/sys/kernel/security/lockdown");
    if !path.exists() {
        // Absent support shows as the file still missing below.
        let _ = mount_fs(c"securityfs", c"/sys/kernel/security");
    }
    let text = std::fs::read_to_string(path).ok()?;
    // "none [integrity] confidentiality": the bracketed one is in force.
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Field offsets of a tracepoint, from its tracefs format description.
fn tracepoint_fields(category: &str, name: &str, fields: &[&str]) -> Option<Vec<u32>> {
    let text = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(format!("{d}/events/{category}/{name}/format")).ok()
        })?;
    fields
        .iter()
        .map(|f| {
            text.lines().find_map(|l| {
                let decl = l.trim().strip_prefix("field:")?;
                let (decl, rest) = decl.split_once(';')?;
                let field = decl.split_whitespace().last()?;
                let field = field.split('[').next()?;
                if field != *f {
                    return None;
                }
                rest.trim()
                    .strip_prefix("offset:")?
                    .split(';')
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .collect()
}

fn sock_state_offsets() -> Option<SockStateOffsets> {
    let o = tracepoint_fields(
        "sock",
        "inet_sock_set_state",
        &["newstate", "sport", "family", "saddr", "saddr_v6", "skaddr"],
    )?;
    Some(SockStateOffsets {
        newstate: o[0],
        sport: o[1],
        family: o[2],
        saddr: o[3],
        saddr_v6: o[4],
        skaddr: o[5],
    })
}

/// `CLOCK_MONOTONIC` now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Wall clock now, in ns since the epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Socket syscalls during which a TLS library moves its ciphertext.
const FD_SYSCALLS: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_write",
    "sys_enter_recvfrom",
    "sys_enter_sendto",
    "sys_enter_readv",
    "sys_enter_writev",
    "sys_enter_recvmsg",
    "sys_enter_sendmsg",
];

/// The loaded programs. Dropping it detaches and unloads everything: nothing is pinned, so
/// nothing outlives the process, even on a crash.
pub struct Loader {
    /// Every uprobe attached, owned here rather than by its program so that shutdown can drop
    /// them from many threads at once: each detach waits for grace periods of its own (seconds
    /// each on this kernel), and concurrent ones share them.
    links: Vec<UProbeLink>,
    /// Tracepoint links, owned here for the same reason: each close waits for a grace period
    /// (about 75 ms here), and 17 of them one after another cost over a second at shutdown.
    tracepoint_links: Vec<TracePointLink>,
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    go_procs: BpfHashMap<MapData, u32, GoOffsets>,
    /// The sockhash `go_inject` is attached to, once it is.
    inject_socks: Option<SockHash<MapData, u64>>,
    /// The programs that write a traceparent into Go requests in memory loaded (the kernel
    /// allows `bpf_probe_write_user`): Go binaries get them too.
    writes: bool,
}

/// Go functions sightline probes: (symbol, program at entry, program at each RET). Each needs
/// its return sites; a function without them is not probed at all.
pub const GO_PROBES: [(&str, &str, &str); 5] = [
    (
        "net/http.serverHandler.ServeHTTP",
        "go_server_enter",
        "go_server_ret",
    ),
    (
        "net/http.(*Transport).RoundTrip",
        "go_client_enter",
        "go_client_ret",
    ),
    // Inlined into callers that hold a *Transport; the first of the two to run owns the call.
    (
        "net/http.(*Transport).roundTrip",
        "go_client_enter",
        "go_client_ret",
    ),
    ("runtime.newproc1", "go_newproc_enter", "go_newproc_ret"),
    // Every request of golang.org/x/net/http2's own server, which h2c and ServeConn serve
    // without serverHandler.ServeHTTP (with ConfigureServer, ServeHTTP runs inside it).
    (
        "golang.org/x/net/http2.(*serverConn).runHandler",
        "go_xserver_enter",
        "go_server_ret",
    ),
];

impl Drop for Loader {
    fn drop(&mut self) {
        let (uprobes, tracepoints) = (
            std::mem::take(&mut self.links),
            std::mem::take(&mut self.tracepoint_links),
        );
        // The two kinds wait on different kernel locks, so they go at once.
        std::thread::scope(|s| {
            s.spawn(move || detach_links(tracepoints));
            detach_links(uprobes);
        });
        // Sockets in the sockhash keep its sk_msg program until they leave it; taking them out
        // now, rather than when the kernel gets round to freeing the map, means the program is
        // gone when sightline is.
        if let Some(socks) = self.inject_socks.as_mut() {
            let keys: Vec<u64> = socks.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = socks.remove(&k);
            }
        }
    }
}

fn detach_links<L: Send>(links: Vec<L>) {
    {
        // The kernel serialises most of each detach (about 0.1 s per uprobe on 6.18, under its
        // perf event mutex), so threads only overlap the rest.
        const THREADS: usize = 64;
        if links.is_empty() {
            return;
        }
        let per = links.len().div_ceil(THREADS);
        let mut chunks: Vec<Vec<L>> = Vec::new();
        let mut it = links.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per).collect());
        }
        std::thread::scope(|s| {
            for chunk in chunks {
                s.spawn(move || drop(chunk));
            }
        });
    }
}

/// Go functions probed at entry only: (symbol, program).
/// The first symbol of each list that the binary has is probed.
pub const GO_ENTRY_PROBES: [(&[&str], &str); 2] = [
    (&["net/http.(*persistConn).roundTrip"], "go_pconn_enter"),
    (
        &[
            // Go 1.23+: the body moved here, and RoundTrip is inlined into its caller.
            "net/http.(*http2ClientConn).roundTrip",
            "net/http.(*http2ClientConn).RoundTrip",
        ],
        "go_h2cc_enter",
    ),
];

/// Go functions where a traceparent is written into a request in the process's memory:
/// (symbol, program at entry, program at each call to the symbolizer's callee, if any).
pub const GO_WRITE_PROBES: [(&str, &str, Option<&str>); 2] = [
    ("net/http.(*transferWriter).writeHeader", "go_tp_h1", None),
    (
        "net/http.(*http2ClientConn).writeHeaders",
        "go_tp_h2_enter",
        Some("go_tp_h2_flush"),
    ),
];

/// Maps that other stages read, handed out once.
pub struct Channels {
    pub events: RingBuf<MapData>,
    pub conn_info: ConnInfo,
}

impl Loader {
    pub fn load(capture_len: u32) -> anyhow::Result<(Loader, Channels)> {
        bump_memlock();
        let me = std::process::id();
        let ss = sock_state_offsets().unwrap_or_default();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CAPTURE_LEN, &capture_len, true)
            .override_global(names::AGENT_TGID, &me, true)
            .override_global(names::SS_OFFSETS, &ss, true)
            .load(PROBES)
            .context("loading sightline's eBPF programs into the kernel")?;

        for name in [
            "ssl_read",
            "ssl_write",
            "ssl_read_ex",
            "ssl_write_ex",
            "ssl_free",
            "ssl_ret",
            "go_server_enter",
            "go_xserver_enter",
            "go_server_ret",
            "go_client_enter",
            "go_client_ret",
            "go_newproc_enter",
            "go_newproc_ret",
            "go_pconn_enter",
            "go_h2cc_enter",
            "go_empty",
        ] {
            let p: &mut UProbe = program(&mut ebpf, name)?.try_into()?;
            p.load()
                .with_context(|| format!("the kernel's verifier rejected {name}"))?;
        }
        let tracepoints: [(&str, &str, &[&str]); 6] = [
            ("proc_exec", "sched", &["sched_process_exec"]),
            ("proc_exit", "sched", &["sched_process_exit"]),
            ("sock_connect", "syscalls", &["sys_enter_connect"]),
            (
                "accept_enter",
                "syscalls",
                &["sys_enter_accept", "sys_enter_accept4"],
            ),
            (
                "accept_exit",
                "syscalls",
                &["sys_exit_accept", "sys_exit_accept4"],
            ),
            ("fd_link", "syscalls", &FD_SYSCALLS),
        ];
        let mut tracepoint_links = Vec::new();
        for (name, category, events) in tracepoints {
            let p: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
            p.load()
                .with_context(|| format!("the kernel's verifier rejected {name}"))?;
            for ev in events {
                let id = p
                    .attach(category, ev)
                    .with_context(|| format!("attaching {name} to {category}:{ev}"))?;
                tracepoint_links.push(p.take_link(id)?);
            }
        }

        // Local addresses of client sockets; optional, as the tracepoint's fields may differ.
        if ss.newstate != 0 {
            let p: &mut TracePoint = program(&mut ebpf, "sock_state")?.try_into()?;
            p.load()
                .context("the kernel's verifier rejected sock_state")?;
            let id = p
                .attach("sock", "inet_sock_set_state")
                .context("attaching sock_state to sock:inet_sock_set_state")?;
            tracepoint_links.push(p.take_link(id)?);
        } else {
            tracing::info!("sock:inet_sock_set_state has unexpected fields; client local addresses come from /proc only");
        }

        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS)?)?;
        let conn_info = ConnInfo {
            map: BpfHashMap::try_from(take_map(&mut ebpf, names::CONN_INFO)?)?,
            past: BpfHashMap::try_from(take_map(&mut ebpf, names::CONN_PAST)?)?,
        };
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS)?)?;
        let go_procs = BpfHashMap::try_from(take_map(&mut ebpf, names::GO_PROCS)?)?;
        Ok((
            Loader {
                links: Vec::new(),
                tracepoint_links,
                ebpf,
                counters,
                go_procs,
                inject_socks: None,
                writes: false,
            },
            Channels { events, conn_info },
        ))
    }

    /// Attaches entry and return probes to each OpenSSL function the target defines. A uprobe
    /// is keyed by inode and offset, so this covers every process that maps the file.
    pub fn attach_openssl(&mut self, target: &OpensslTarget) -> anyhow::Result<usize> {
        let mut attached = 0;
        for point in &target.points {
            let entry = match point.symbol.as_str() {
                "SSL_read" => "ssl_read",
                "SSL_write" => "ssl_write",
                "SSL_read_ex" => "ssl_read_ex",
                "SSL_write_ex" => "ssl_write_ex",
                "SSL_free" => "ssl_free",
                _ => continue,
            };
            // The return probe goes first: an entry without its return would leave calls in
            // flight that never complete. SSL_free needs no return.
            let progs: &[&str] = if entry == "ssl_free" {
                &["ssl_free"]
            } else {
                &["ssl_ret", entry]
            };
            for &prog in progs {
                self.uprobe(prog, point.file_offset, &target.path)
                    .with_context(|| format!("probing {}", point.symbol))?;
            }
            attached += 1;
        }
        Ok(attached)
    }

    /// Attaches the Go probes to a Go binary: an entry uprobe on each function and one on each
    /// of its RET instructions (never a uretprobe). Returns the functions probed.
    pub fn attach_go(&mut self, path: &Path, go: &GoInfo) -> anyhow::Result<Vec<&'static str>> {
        self.attach_go_as(path, go, None)
    }

    /// [`Self::attach_go`], with every program replaced by `instead` when given (benchmarks
    /// attach the empty probe at the same points).
    pub fn attach_go_as(
        &mut self,
        path: &Path,
        go: &GoInfo,
        instead: Option<&'static str>,
    ) -> anyhow::Result<Vec<&'static str>> {
        let mut probed = Vec::new();
        // Where g records its creator (Go 1.21+), no probe on every goroutine start is needed.
        let parent_in_g = go
            .field("runtime.g", "parentGoid")
            .is_some_and(|f| f.offset.is_some());
        for (symbol, entry, ret) in GO_PROBES {
            if symbol == "runtime.newproc1" && parent_in_g {
                continue;
            }
            let Some(f) = go.function(symbol) else {
                continue;
            };
            let Some(rets) = f.returns.as_ref().filter(|r| !r.is_empty()) else {
                continue;
            };
            // Return sites first: an entry without its returns would leave calls in flight.
            let (entry, ret) = instead.map_or((entry, ret), |p| (p, p));
            let sites = rets.iter().map(|r| (ret, r.file_offset));
            for (prog, offset) in sites.chain([(entry, f.file_offset)]) {
                self.uprobe(prog, offset, path)
                    .with_context(|| format!("probing {symbol}"))?;
            }
            probed.push(symbol);
        }
        if probed.is_empty() {
            return Ok(probed);
        }
        for (symbols, prog) in GO_ENTRY_PROBES {
            let Some((symbol, f)) = symbols.iter().find_map(|s| go.function(s).map(|f| (*s, f)))
            else {
                continue;
            };
            self.uprobe(instead.unwrap_or(prog), f.file_offset, path)
                .with_context(|| format!("probing {symbol}"))?;
            probed.push(symbol);
        }
        if self.writes {
            for (symbol, entry, at_calls) in GO_WRITE_PROBES {
                let Some(f) = go.function(symbol) else {
                    continue;
                };
                let calls = f.calls.as_deref().unwrap_or_default();
                if at_calls.is_some() && calls.is_empty() {
                    continue;
                }
                // The call sites first: an entry without them would leave headers waiting.
                let sites = at_calls
                    .into_iter()
                    .flat_map(|p| calls.iter().map(move |c| (p, c.file_offset)));
                for (prog, offset) in sites.chain([(entry, f.file_offset)]) {
                    self.uprobe(instead.unwrap_or(prog), offset, path)
                        .with_context(|| format!("probing {symbol}"))?;
                }
                probed.push(symbol);
            }
        }
        Ok(probed)
    }

    /// Loads the programs that write a traceparent into Go clients' HTTPS and HTTP/2 requests
    /// in their memory, so Go binaries attached from now on get them. Fails where the kernel
    /// refuses `bpf_probe_write_user` (lockdown), and then nothing is ever written.
    pub fn enable_memory_writes(&mut self) -> anyhow::Result<()> {
        for name in ["go_tp_h1", "go_tp_h2_enter", "go_tp_h2_flush"] {
            let p: &mut UProbe = program(&mut self.ebpf, name)?.try_into()?;
            if let Err(e) = p.load() {
                // The verifier's whole log says little more than that the helper is unknown.
                tracing::debug!(program = name, error = %e, "loading a memory-writing program failed");
                anyhow::bail!(match lockdown_mode().as_deref() {
                    Some(m @ ("integrity" | "confidentiality")) =>
                        format!("kernel lockdown ({m}) forbids bpf_probe_write_user"),
                    _ => "the kernel refused a program that calls bpf_probe_write_user".into(),
                });
            }
        }
        self.switch_on(names::WRITE_ON)
            .context("turning memory writes on")?;
        self.writes = true;
        Ok(())
    }

    /// Detaches every uprobe attached so far.
    pub fn detach_all(&mut self) {
        detach_links(std::mem::take(&mut self.links));
    }

    /// Attaches `prog` at `offset` of the file, for every process that maps it, and keeps the
    /// link so that shutdown can detach all links at once (see `Drop`).
    fn uprobe(&mut self, prog: &str, offset: u64, path: &Path) -> anyhow::Result<()> {
        let p: &mut UProbe = program(&mut self.ebpf, prog)?.try_into()?;
        let id = p
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::AllProcesses,
            )
            .with_context(|| {
                format!(
                    "attaching {prog} to {} at offset {offset:#x}",
                    path.display()
                )
            })?;
        self.links.push(p.take_link(id)?);
        Ok(())
    }

    /// Attaches what writes a `traceparent` into Go clients' plaintext HTTP/1.x requests at
    /// the socket: connect hooks and a sock_ops program on the root cgroup (v2, mounted if the
    /// host has none), and the sk_msg program on their sockhash. Nothing is written into any
    /// process, so this works under kernel lockdown. On error, nothing is injected and the
    /// error says why.
    pub fn attach_injection(&mut self) -> anyhow::Result<()> {
        let root = cgroup2_root().context("finding or mounting a cgroup v2 hierarchy")?;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening the cgroup {}", root.display()))?;
        let socks: SockHash<MapData, u64> =
            SockHash::try_from(take_map(&mut self.ebpf, names::INJECT_SOCKS)?)?;
        let p: &mut SkMsg = program(&mut self.ebpf, "go_inject")?.try_into()?;
        p.load()
            .context("the kernel's verifier rejected go_inject")?;
        p.attach(socks.fd())
            .context("attaching go_inject to its sockhash")?;
        self.inject_socks = Some(socks);
        // Links (kernel 5.7+, which aya uses when it can) always run beside other programs on
        // the cgroup and take no mode flag: BPF_F_ALLOW_MULTI there is EINVAL.
        let mode = CgroupAttachMode::Single;
        let p: &mut SockOps = program(&mut self.ebpf, "go_sockops")?.try_into()?;
        p.load()
            .context("the kernel's verifier rejected go_sockops")?;
        p.attach(&cgroup, mode)
            .with_context(|| format!("attaching go_sockops to {}", root.display()))?;
        for name in ["go_connect4", "go_connect6"] {
            let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            p.load()
                .with_context(|| format!("the kernel's verifier rejected {name}"))?;
            p.attach(&cgroup, mode)
                .with_context(|| format!("attaching {name} to {}", root.display()))?;
        }
        self.switch_on(names::INJECT_ON)
            .context("turning injection on")?;
        Ok(())
    }

    /// Sets the one-slot array `map` to 1: the probes that read it start their work.
    fn switch_on(&mut self, map: &str) -> anyhow::Result<()> {
        let mut on: BpfArray<_, u32> = BpfArray::try_from(
            self.ebpf
                .map_mut(map)
                .with_context(|| format!("map {map} missing; rebuild sightline"))?,
        )?;
        on.set(0, 1, 0)?;
        Ok(())
    }

    /// Tells the Go probes where process `tgid` keeps what they read.
    pub fn set_go_process(&mut self, tgid: u32, offsets: &GoOffsets) -> anyhow::Result<()> {
        self.go_procs
            .insert(tgid, offsets, 0)
            .context("storing a Go process's offsets")
    }

    pub fn forget_go_process(&mut self, tgid: u32) {
        let _ = self.go_procs.remove(&tgid);
    }

    /// Kernel-side counters summed over CPUs, indexed by `sightline_common::counter`.
    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| {
        format!("program {name} missing from the embedded object; rebuild sightline")
    })
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the embedded object; rebuild sightline"))
}

/// Where a cgroup v2 hierarchy is mounted (its root holds every process of a hybrid or pure
/// v2 host), mounted under /run when the host has none.
fn cgroup2_root() -> std::io::Result<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if let Some(dir) = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| dir.to_string())
    }) {
        return Ok(dir.into());
    }
    let dir = Path::new("/run/sightline/cgroup2");
    std::fs::create_dir_all(dir)?;
    mount_fs(c"cgroup2", c"/run/sightline/cgroup2")?;
    Ok(dir.into())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit; failure only matters on old kernels and is reported
    // by the load that follows.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Socket peers recorded at connect/accept time, looked up once per connection.
pub struct ConnInfo {
    map: BpfHashMap<MapData, ConnKey, SockInfo>,
    past: BpfHashMap<MapData, u64, SockInfo>,
}

impl ConnInfo {
    /// The socket `fd` of `tgid` holds now, as its connect or accept recorded it.
    pub fn get(&self, tgid: u32, fd: i32) -> Option<SockInfo> {
        self.map.get(&ConnKey { tgid, fd }, 0).ok()
    }

    /// An earlier socket whose fd a newer one took, by its stamp.
    pub fn before(&self, stamp: u64) -> Option<SockInfo> {
        self.past.get(&stamp, 0).ok().filter(|i| i.ts_ns == stamp)
    }
}

/// Registers the ring buffer with tokio so the main loop wakes when records arrive.
pub fn watch_ring(
    events: RingBuf<MapData>,
) -> std::io::Result<tokio::io::unix::AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the AsyncFd takes ownership of the ring buffer, which owns the fd; the fd is
    // therefore open for as long as it is registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_features_are_named() {
        let root = std::env::temp_dir().join(format!("sightline-kernel-{}", std::process::id()));
        let uprobe = root.join("sys/bus/event_source/devices/uprobe");
        std::fs::create_dir_all(root.join("sys/kernel/btf")).unwrap();
        let err = kernel_features(&root).unwrap_err();
        assert!(err.to_string().contains("CONFIG_UPROBE_EVENTS"), "{err}");
        std::fs::create_dir_all(&uprobe).unwrap();
        let err = kernel_features(&root).unwrap_err();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
        std::fs::write(root.join("sys/kernel/btf/vmlinux"), b"").unwrap();
        assert!(kernel_features(&root).is_ok());
        // This machine has both.
        assert!(kernel_features(Path::new("/")).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn tracepoint_offsets_come_from_tracefs() {
        ensure_tracefs().unwrap();
        let o = sock_state_offsets().expect("sock:inet_sock_set_state on this kernel");
        // Independent ground truth: the format file itself, parsed by hand here.
        let text =
            std::fs::read_to_string("/sys/kernel/tracing/events/sock/inet_sock_set_state/format")
                .unwrap();
        let line = text.lines().find(|l| l.contains(" newstate;")).unwrap();
        assert!(line.contains(&format!("offset:{};", o.newstate)), "{line}");
        assert!(o.sport > o.newstate && o.saddr_v6 > o.saddr);
    }
}
