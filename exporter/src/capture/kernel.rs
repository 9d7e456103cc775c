//! What the kernel offers and the few system calls around loading: privileges, BTF, tracefs,
//! lockdown, cgroup v2, clocks and the memlock limit. Each missing feature is an error that
//! says what to do about it.
#![allow(unsafe_code)]

use sightline_common::{SockStateOffsets, TcpEventOffsets};
use std::path::Path;

/// Things the kernel must offer; each failure says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("sightline lacks {0}: it loads eBPF programs, creates uprobes (perf_event_open asks for CAP_SYS_ADMIN there) and reads other processes' binaries and memory maps. Run it as root (`sudo sightline`); in a container, add CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (examples/kubernetes shows how)")]
    NotPrivileged(String),
    #[error("this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): sightline needs CONFIG_UPROBE_EVENTS=y, which every mainstream distribution kernel has")]
    NoUprobes,
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): sightline needs CONFIG_DEBUG_INFO_BTF=y (kernels from Debian 11, Ubuntu 20.10 and RHEL 8.2 on have it)")]
    NoBtf,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`")]
    NoTracefs(std::io::Error),
}

pub fn preflight() -> Result<(), PreflightError> {
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(PreflightError::NotPrivileged(missing.join(" and ")));
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

/// The capabilities sightline cannot work without that this process lacks. Root in a
/// container may hold only some, so the effective set is read, not the user id.
fn missing_capabilities() -> Vec<&'static str> {
    const SYS_PTRACE: u32 = 19;
    const SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return vec!["a readable /proc/self/status"];
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_SYS_ADMIN implies CAP_BPF and CAP_PERFMON, and uprobes need it beyond them.
    [(SYS_ADMIN, "CAP_SYS_ADMIN"), (SYS_PTRACE, "CAP_SYS_PTRACE")]
        .into_iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
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

/// What sightline mounted, to unmount at exit: the host is left as it was found.
static MOUNTED: std::sync::Mutex<Vec<&'static std::ffi::CStr>> = std::sync::Mutex::new(Vec::new());

/// Unmounts what sightline mounted, newest first; for exit, once every program is detached.
/// A mount something else still uses is detached lazily (`MNT_DETACH`), never forced.
pub fn unmount_ours() {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(target) = mounted.pop() {
        // SAFETY: a NUL-terminated static string.
        let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(target = ?target, error = %e, "unmounting");
        }
    }
}

/// Mounts a kernel filesystem of type `fstype` (its name as source too) at `target`, and
/// remembers it for [`unmount_ours`].
fn mount_fs(fstype: &std::ffi::CStr, target: &'static std::ffi::CStr) -> std::io::Result<()> {
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
    MOUNTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(target);
    Ok(())
}

/// Whether this kernel lets sightline use kprobes: `available`, `absent` (built without kprobe
/// events), or `refused under lockdown` (confidentiality mode forbids them; integrity does not).
pub fn kprobes() -> &'static str {
    let events = Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists();
    if !events {
        "absent"
    } else if lockdown_mode().as_deref() == Some("confidentiality") {
        "refused under lockdown"
    } else {
        "available"
    }
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

pub(super) fn sock_state_offsets() -> Option<SockStateOffsets> {
    let o = tracepoint_fields(
        "sock",
        "inet_sock_set_state",
        &["newstate", "sport", "family", "saddr", "saddr_v6", "skaddr"],
    )?;
    // The network signals' fields: all or none.
    let n = tracepoint_fields(
        "sock",
        "inet_sock_set_state",
        &["oldstate", "dport", "protocol", "daddr", "daddr_v6"],
    )
    .unwrap_or_else(|| vec![0; 5]);
    Some(SockStateOffsets {
        newstate: o[0],
        sport: o[1],
        family: o[2],
        saddr: o[3],
        saddr_v6: o[4],
        skaddr: o[5],
        oldstate: n[0],
        dport: n[1],
        protocol: n[2],
        daddr: n[3],
        daddr_v6: n[4],
    })
}

/// Where the TCP event tracepoints keep their socket; 0 for one this kernel lacks.
pub(super) fn tcp_event_offsets() -> TcpEventOffsets {
    let sk = |name: &str| tracepoint_fields("tcp", name, &["skaddr"]).map_or(0, |o| o[0]);
    TcpEventOffsets {
        retransmit_sk: sk("tcp_retransmit_skb"),
        send_reset_sk: sk("tcp_send_reset"),
        receive_reset_sk: sk("tcp_receive_reset"),
        destroy_sk: sk("tcp_destroy_sock"),
    }
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

/// The cgroup v2 hierarchy where the socket programs attach.
pub(super) struct CgroupRoot {
    pub path: std::path::PathBuf,
    /// Whether it is the host's root, which holds every process. A container in a cgroup
    /// namespace of its own mounts only its namespace's subtree.
    pub host: bool,
}

/// The host's cgroup v2 root: among the cgroup2 mounts this process sees, and those a host
/// process sees (reached through its /proc root, as a container with the host's pid
/// namespace can), the one whose directory is the hierarchy's root. Every kernfs hierarchy's
/// root directory has inode 1; a namespace's root is a cgroup below it. With none, a
/// hierarchy is mounted under /run, which in a cgroup namespace of its own is that
/// namespace's root.
pub(super) fn cgroup2_root() -> std::io::Result<CgroupRoot> {
    use std::os::unix::fs::MetadataExt;
    let cgroup2_dirs = |mounts: &str, prefix: &str| -> Vec<std::path::PathBuf> {
        mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then(|| format!("{prefix}{dir}").into())
            })
            .collect()
    };
    let own = cgroup2_dirs(&std::fs::read_to_string("/proc/self/mounts")?, "");
    let init = crate::metadata::host_process()
        .and_then(|pid| {
            let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).ok()?;
            Some(cgroup2_dirs(&mounts, &format!("/proc/{pid}/root")))
        })
        .unwrap_or_default();
    let is_root = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.ino() == 1);
    if let Some(path) = own.iter().chain(&init).find(|p| is_root(p)) {
        return Ok(CgroupRoot {
            path: path.clone(),
            host: true,
        });
    }
    let path = match own.into_iter().next() {
        Some(p) => p,
        None => {
            let dir = Path::new("/run/sightline/cgroup2");
            std::fs::create_dir_all(dir)?;
            mount_fs(c"cgroup2", c"/run/sightline/cgroup2")?;
            dir.into()
        }
    };
    let host = is_root(&path);
    Ok(CgroupRoot { path, host })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
pub(super) fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit; failure only matters on old kernels and is reported
    // by the load that follows.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
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
        // The kernel the tests run on has both: sightline needs them.
        assert!(kernel_features(Path::new("/")).is_ok());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_hosts_cgroup_root_is_found() {
        use std::os::unix::fs::MetadataExt;
        // The tests run as root on the host, where every process is in the root's subtree.
        let r = cgroup2_root().unwrap();
        assert!(r.host, "{}", r.path.display());
        assert_eq!(std::fs::metadata(&r.path).unwrap().ino(), 1);
        assert!(missing_capabilities().is_empty());
    }

    #[test]
    fn tracepoint_offsets_come_from_tracefs() {
        ensure_tracefs().unwrap();
        let o = sock_state_offsets().expect("the kernel has sock:inet_sock_set_state");
        // Independent ground truth: the format file itself, parsed by hand here.
        let text =
            std::fs::read_to_string("/sys/kernel/tracing/events/sock/inet_sock_set_state/format")
                .unwrap();
        let line = text.lines().find(|l| l.contains(" newstate;")).unwrap();
        assert!(line.contains(&format!("offset:{};", o.newstate)), "{line}");
        assert!(o.sport > o.newstate && o.saddr_v6 > o.saddr);
    }
}
