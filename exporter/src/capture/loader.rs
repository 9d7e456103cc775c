//! Loads the embedded eBPF programs, attaches them, and gives the rest of the agent safe
//! handles. This is the one module of the agent that talks to the kernel directly, so it is
//! the one place `unsafe` is allowed.
#![allow(unsafe_code)]

use super::btf;
use super::kernel::{
    bump_memlock, cgroup2_root, lockdown_mode, sock_state_offsets, tcp_event_offsets,
};
use super::sockets::ConnInfo;
use super::tables::{Tables, Watch};
use anyhow::Context;
use aya::maps::{
    Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, SockHash,
};
use aya::programs::trace_point::TracePointLink;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramType, RawTracePoint, SkMsg, SockOps,
    TracePoint, UProbe,
};
use aya::{Ebpf, EbpfLoader};
use sightline_common::{
    counter, names, programs, GoOffsets, ListenKey, SockStateOffsets, TcpEventOffsets,
};
use std::path::Path;

#[cfg(feature = "probes")]
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sightline-probes"));
/// Built without the `probes` feature (fuzzing): loading fails with a clear error.
#[cfg(not(feature = "probes"))]
static PROBES: &[u8] = &[];

/// The exits of every syscall a `sys_*` program watches the entry of.
const DATA_EXITS: [&str; 9] = [
    "sys_exit_read",
    "sys_exit_write",
    "sys_exit_recvfrom",
    "sys_exit_sendto",
    "sys_exit_readv",
    "sys_exit_writev",
    "sys_exit_recvmsg",
    "sys_exit_sendmsg",
    "sys_exit_sendfile64",
];

/// The loaded programs. Dropping it detaches and unloads everything: nothing is pinned, so
/// nothing outlives the process, even on a crash.
pub struct Loader {
    /// Every uprobe attached, owned here rather than by its program so that shutdown can drop
    /// them from many threads at once: each detach waits for grace periods of its own, and
    /// concurrent ones share them.
    links: Vec<UProbeLink>,
    /// Tracepoint links, owned here for the same reason: each close waits for a grace period,
    /// and closing them one after another would add those up at shutdown.
    tracepoint_links: Vec<TracePointLink>,
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    go_procs: BpfHashMap<MapData, u32, GoOffsets>,
    listeners: BpfHashMap<MapData, ListenKey, u32>,
    /// The sockhash `go_inject` is attached to, once it is.
    inject_socks: Option<SockHash<MapData, u64>>,
    /// The programs that write a traceparent into Go requests in memory loaded (the kernel
    /// allows `bpf_probe_write_user`): Go binaries get them too.
    writes: bool,
    /// The hash tables, counted and swept of exited processes' entries.
    pub tables: Watch,
}

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
        // The kernel serialises most of each detach (under its perf event mutex), so threads
        // only overlap the rest.
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

/// The TCP tracepoints of the network signals. The state tracepoint is required; the others
/// (retransmits, resets, per-segment samples) each add what they see where the kernel has
/// them.
fn attach_network(
    ebpf: &mut Ebpf,
    ss: &SockStateOffsets,
    events: &TcpEventOffsets,
    links: &mut Vec<TracePointLink>,
) -> anyhow::Result<()> {
    if ss.oldstate == 0 || ss.protocol == 0 {
        anyhow::bail!("sock:inet_sock_set_state lacks the fields they need");
    }
    let tracepoints = [
        (programs::TCP_STATE, "sock", "inet_sock_set_state", 1),
        (
            programs::TCP_RETRANSMIT,
            "tcp",
            "tcp_retransmit_skb",
            events.retransmit_sk,
        ),
        (
            programs::TCP_RESET_SENT,
            "tcp",
            "tcp_send_reset",
            events.send_reset_sk,
        ),
        (
            programs::TCP_RESET_RECEIVED,
            "tcp",
            "tcp_receive_reset",
            events.receive_reset_sk,
        ),
    ];
    for (name, category, event, offset) in tracepoints {
        if offset == 0 {
            tracing::info!("network signals: this kernel has no {category}:{event}");
            continue;
        }
        let p: &mut TracePoint = program(ebpf, name)?.try_into()?;
        p.load().map_err(|e| rejected(name, e))?;
        let id = p
            .attach(category, event)
            .with_context(|| format!("attaching {name} to {category}:{event}"))?;
        links.push(p.take_link(id)?);
    }
    let sample = (|| -> anyhow::Result<()> {
        let p: &mut RawTracePoint = program(ebpf, programs::TCP_SAMPLE)?.try_into()?;
        p.load().map_err(|e| rejected(programs::TCP_SAMPLE, e))?;
        p.attach("tcp_probe")?;
        Ok(())
    })();
    if let Err(e) = sample {
        tracing::warn!("network signals: RTT and byte figures only at close: {e:#}");
    }
    Ok(())
}

/// Maps that other stages read, handed out once.
pub struct Channels {
    pub events: RingBuf<MapData>,
    pub conn_info: ConnInfo,
}

impl Loader {
    /// Loads every program; `network`: the network signals' tracepoints are attached too.
    pub fn load(capture_len: u32, network: bool) -> anyhow::Result<(Loader, Channels)> {
        bump_memlock();
        let me = std::process::id();
        let ss = sock_state_offsets().unwrap_or_default();
        let tcp = btf::tcp_offsets();
        let tcp_events = tcp_event_offsets();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CAPTURE_LEN, &capture_len, true)
            .override_global(names::AGENT_TGID, &me, true)
            .override_global(names::SS_OFFSETS, &ss, true)
            .override_global(
                names::TCP_OFFSETS,
                &tcp.as_ref().copied().unwrap_or_default(),
                true,
            )
            .override_global(names::TCP_EVENT_OFFSETS, &tcp_events, true)
            .load(PROBES)
            .context("loading sightline's eBPF programs into the kernel")?;
        let tables = Watch::new(Tables::new(&ebpf));

        for name in programs::UPROBES {
            let p: &mut UProbe = program(&mut ebpf, name)?.try_into()?;
            p.load().map_err(|e| rejected(name, e))?;
        }
        let tracepoints: [(&str, &str, &[&str]); 16] = [
            (programs::PROC_EXEC, "sched", &["sched_process_exec"]),
            (programs::PROC_EXIT, "sched", &["sched_process_exit"]),
            (programs::SOCK_CONNECT, "syscalls", &["sys_enter_connect"]),
            (
                programs::SOCK_CONNECT_EXIT,
                "syscalls",
                &["sys_exit_connect"],
            ),
            (
                programs::ACCEPT_ENTER,
                "syscalls",
                &["sys_enter_accept", "sys_enter_accept4"],
            ),
            (
                programs::ACCEPT_EXIT,
                "syscalls",
                &["sys_exit_accept", "sys_exit_accept4"],
            ),
            (programs::SYS_READ, "syscalls", &["sys_enter_read"]),
            (programs::SYS_RECVFROM, "syscalls", &["sys_enter_recvfrom"]),
            (
                programs::SYS_WRITE,
                "syscalls",
                &["sys_enter_write", "sys_enter_sendto"],
            ),
            (programs::SYS_READV, "syscalls", &["sys_enter_readv"]),
            (programs::SYS_WRITEV, "syscalls", &["sys_enter_writev"]),
            (programs::SYS_RECVMSG, "syscalls", &["sys_enter_recvmsg"]),
            (programs::SYS_SENDMSG, "syscalls", &["sys_enter_sendmsg"]),
            (
                programs::SYS_SENDFILE,
                "syscalls",
                &["sys_enter_sendfile64"],
            ),
            (programs::SYS_DATA_EXIT, "syscalls", &DATA_EXITS),
            (programs::SYS_CLOSE, "syscalls", &["sys_enter_close"]),
        ];
        let mut tracepoint_links = Vec::new();
        for (name, category, events) in tracepoints {
            let p: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
            p.load().map_err(|e| rejected(name, e))?;
            for ev in events {
                let id = p
                    .attach(category, ev)
                    .with_context(|| format!("attaching {name} to {category}:{ev}"))?;
                tracepoint_links.push(p.take_link(id)?);
            }
        }

        tracing::info!(
            kprobes = super::kernel::kprobes(),
            "plaintext HTTP is read at the socket syscalls' tracepoints, on every kernel: a file, a pipe or a socket that is not HTTP costs one lookup per syscall, so no kprobe path is needed"
        );

        // Local addresses of client sockets; optional, as the tracepoint's fields may differ.
        if ss.newstate != 0 {
            let p: &mut TracePoint = program(&mut ebpf, programs::SOCK_STATE)?.try_into()?;
            p.load().map_err(|e| rejected("sock_state", e))?;
            let id = p
                .attach("sock", "inet_sock_set_state")
                .context("attaching sock_state to sock:inet_sock_set_state")?;
            tracepoint_links.push(p.take_link(id)?);
        } else {
            tracing::info!("sock:inet_sock_set_state has unexpected fields; client local addresses come from /proc only");
        }

        let attached = if network {
            attach_network(&mut ebpf, &ss, &tcp_events, &mut tracepoint_links)
        } else {
            Err(anyhow::anyhow!(
                "the configuration turns them off (capture.network: false)"
            ))
        };
        match attached {
            Ok(()) => match &tcp {
                Ok(_) => tracing::info!("network signals: every TCP connection's opens, failures, closes, retransmits, resets, bytes and RTT"),
                Err(e) => tracing::warn!("network signals without bytes, segments and RTT: {e}"),
            },
            Err(e) => tracing::warn!("network signals are off: {e:#}"),
        }

        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS)?)?;
        let conn_info = ConnInfo::new(
            BpfHashMap::try_from(take_map(&mut ebpf, names::CONN_INFO)?)?,
            BpfHashMap::try_from(take_map(&mut ebpf, names::CONN_PAST)?)?,
            BpfHashMap::try_from(take_map(&mut ebpf, names::SOCK_CLASS)?)?,
            BpfHashMap::try_from(take_map(&mut ebpf, names::AGENT_PORTS)?)?,
        );
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS)?)?;
        let go_procs = BpfHashMap::try_from(take_map(&mut ebpf, names::GO_PROCS)?)?;
        let listeners = BpfHashMap::try_from(take_map(&mut ebpf, names::LISTENERS)?)?;
        // Loading parsed the kernel's BTF and the programs' object, tens of MiB freed by now
        // but kept by the allocator: give them back, or they stay in the agent's RSS for good.
        // SAFETY: malloc_trim only releases free memory; no allocation is touched.
        unsafe { libc::malloc_trim(0) };
        Ok((
            Loader {
                links: Vec::new(),
                tracepoint_links,
                ebpf,
                counters,
                go_procs,
                listeners,
                inject_socks: None,
                writes: false,
                tables,
            },
            Channels { events, conn_info },
        ))
    }

    /// Loads the programs that write a traceparent into Go clients' HTTPS and HTTP/2 requests
    /// in their memory, so Go binaries attached from now on get them. Fails where the kernel
    /// refuses `bpf_probe_write_user` (lockdown), and then nothing is ever written.
    pub fn enable_memory_writes(&mut self) -> anyhow::Result<()> {
        for name in programs::MEMORY_WRITERS {
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

    /// Whether the memory-writing programs are loaded, so Go binaries get them too.
    pub fn memory_writes(&self) -> bool {
        self.writes
    }

    /// Detaches every uprobe attached so far.
    pub fn detach_all(&mut self) {
        detach_links(std::mem::take(&mut self.links));
    }

    /// How many uprobes are attached: a mark to undo a file's attach back to.
    pub fn uprobes(&self) -> usize {
        self.links.len()
    }

    /// Detaches the uprobes attached since `mark`, so that a file whose attach stopped
    /// half-way can be attached again later without doubling its probes.
    pub fn detach_uprobes_since(&mut self, mark: usize) {
        if mark < self.links.len() {
            detach_links(self.links.split_off(mark));
        }
    }

    /// Attaches `prog` at `offset` of the file, for every process that maps it, and keeps the
    /// link so that shutdown can detach all links at once (see `Drop`).
    pub fn uprobe(&mut self, prog: &str, offset: u64, path: &Path) -> anyhow::Result<()> {
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
        let found = cgroup2_root().context("finding or mounting a cgroup v2 hierarchy")?;
        if !found.host {
            tracing::warn!(
                cgroup = %found.path.display(),
                "the socket programs attach at a cgroup namespace's root, not the host's: only processes in that namespace get traceparent injection; mount the host's /sys/fs/cgroup (examples/kubernetes does)"
            );
        }
        let root = found.path;
        let cgroup = std::fs::File::open(&root)
            .with_context(|| format!("opening the cgroup {}", root.display()))?;
        let socks: SockHash<MapData, u64> =
            SockHash::try_from(take_map(&mut self.ebpf, names::INJECT_SOCKS)?)?;
        let p: &mut SkMsg = program(&mut self.ebpf, programs::GO_INJECT)?.try_into()?;
        p.load().map_err(|e| rejected("go_inject", e))?;
        p.attach(socks.fd())
            .context("attaching go_inject to its sockhash")?;
        self.inject_socks = Some(socks);
        // Links (kernel 5.7+, which aya uses when it can) always run beside other programs on
        // the cgroup and take no mode flag: BPF_F_ALLOW_MULTI there is EINVAL.
        let mode = CgroupAttachMode::Single;
        let p: &mut SockOps = program(&mut self.ebpf, programs::GO_SOCKOPS)?.try_into()?;
        p.load().map_err(|e| rejected("go_sockops", e))?;
        p.attach(&cgroup, mode)
            .with_context(|| format!("attaching go_sockops to {}", root.display()))?;
        for name in [programs::GO_CONNECT4, programs::GO_CONNECT6] {
            let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            p.load().map_err(|e| rejected(name, e))?;
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
    /// Sockets listening since before start, as (family, port, pid): connections accepted on
    /// them are their process's. Returns how many were entered.
    pub fn enter_listeners(&mut self, found: &[(u16, u16, u32)]) -> usize {
        found
            .iter()
            .filter(|(family, port, pid)| {
                let key = ListenKey {
                    family: *family,
                    port: *port,
                };
                // BPF_NOEXIST: a listen() the probe saw since is newer than /proc's view.
                self.listeners.insert(key, *pid, 1).is_ok()
            })
            .count()
    }

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

/// Programs of other agents on the socket hooks the socket path of propagation uses (sk_msg,
/// sock_ops, cgroup connect), by kind and name: a host whose L7 proxy (Cilium's, say) owns
/// those hooks may want `propagation.socket: false`. Call before sightline loads its own.
pub fn other_socket_programs() -> Vec<String> {
    let kinds = [
        (ProgramType::SkMsg, "sk_msg"),
        (ProgramType::SockOps, "sock_ops"),
        (ProgramType::CgroupSockAddr, "cgroup/connect"),
    ];
    // A sightline that just exited may still have its own on the way out.
    let ours = [
        programs::GO_INJECT,
        programs::GO_SOCKOPS,
        programs::GO_CONNECT4,
        programs::GO_CONNECT6,
    ];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let (_, kind) = kinds
                .iter()
                .find(|(t, _)| p.program_type() == (*t).into())?;
            let name = p.name_as_str().unwrap_or("(unnamed)");
            (!ours.contains(&name)).then(|| format!("{kind} {name}"))
        })
        .collect()
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

/// A program the kernel's verifier refused, told in a few lines. Its whole log (tens of
/// thousands of lines for a program past the instruction limit) goes to debug logging only.
fn rejected(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(program = name, log = %log, "the verifier's log");
            anyhow::anyhow!(
                "the kernel's verifier rejected {name} ({io_error}); its log ends: {} (-vv shows it all)",
                last_lines(&log, 3)
            )
        }
        other => {
            anyhow::Error::new(other).context(format!("the kernel's verifier rejected {name}"))
        }
    }
}

/// The last `n` non-empty lines of `log`, on one line.
fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod rejection_tests {
    use super::last_lines;

    #[test]
    fn a_long_verifier_log_is_told_by_its_end() {
        let log = (0..50_000).map(|i| format!("{i}: (bf) r1 = r2\n")).collect::<String>()
            + "BPF program is too large. Processed 1000001 insn\n\nprocessed 1000001 insns (limit 1000000)\n";
        assert_eq!(
            last_lines(&log, 3),
            "49999: (bf) r1 = r2 / BPF program is too large. Processed 1000001 insn / processed 1000001 insns (limit 1000000)"
        );
        assert_eq!(last_lines("", 3), "");
    }
}
