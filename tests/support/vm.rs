//! Another kernel: Debian 12's own 6.1 cloud kernel, booted under qemu's software emulation
//! (KVM is not assumed), for what this host's kernel forbids or lacks. It has
//! no lockdown, so `bpf_probe_write_user` loads there, and kprobes.
//!
//! The guest needs no disk image: its root is an initramfs holding this host's own files at
//! their own paths (the test binary, sightline, the Go programs, each with the shared
//! libraries `ldd` names), busybox for the rest, and the kernel modules asked for. So a test
//! running in the guest finds everything where it was built. Its output comes back over the
//! serial console, closed by a line with its exit status.

use crate::procs::{require, tempdir};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where tests/prereqs.sh unpacks the guest kernel package.
const KERNEL_ROOT: &str = "/var/cache/sightline-tests/vm/root";
const EXIT_MARK: &str = "SIGHTLINE-VM-EXIT";

pub struct Outcome {
    pub status: Option<i32>,
    /// Everything the guest printed on its console.
    pub console: String,
    /// The guest did not finish within the timeout; the console ends with what the magic
    /// SysRq keys then dumped (every CPU's backtrace, the blocked tasks).
    pub hung: bool,
}

pub struct Guest {
    files: Vec<(PathBuf, bool)>,
    modules: Vec<String>,
    env: Vec<(String, String)>,
    kernel_root: PathBuf,
    cpus: u32,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    pub fn new() -> Guest {
        Guest {
            files: Vec::new(),
            modules: Vec::new(),
            env: Vec::new(),
            kernel_root: PathBuf::from(KERNEL_ROOT),
            cpus: 2,
        }
    }

    /// Another unpacked kernel package (its `boot/vmlinuz-*` and `lib/modules`).
    pub fn kernel_root(mut self, root: impl AsRef<Path>) -> Guest {
        self.kernel_root = root.as_ref().to_path_buf();
        self
    }

    /// Virtual CPUs (2 by default).
    pub fn cpus(mut self, n: u32) -> Guest {
        self.cpus = n;
        self
    }

    /// A host file, at the same path in the guest, with the libraries it links.
    pub fn file(mut self, path: impl AsRef<Path>) -> Guest {
        self.files.push((path.as_ref().to_path_buf(), false));
        self
    }

    /// The same, without its debug information (only for Rust binaries: the Go programs'
    /// shapes are what the tests are about).
    pub fn stripped_file(mut self, path: impl AsRef<Path>) -> Guest {
        self.files.push((path.as_ref().to_path_buf(), true));
        self
    }

    /// A module of the guest kernel, by file name without `.ko`, loaded before the command.
    pub fn module(mut self, name: &str) -> Guest {
        self.modules.push(name.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Guest {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Boots the guest, runs `command` as its only job, and powers it off; fails if the
    /// guest hangs.
    pub fn run(&self, command: &[&str], timeout: Duration) -> Outcome {
        let out = self.outcome(command, timeout);
        assert!(
            !out.hung,
            "the guest did not finish in {timeout:?}; its console:\n{}",
            out.console
        );
        out
    }

    /// A guest holding this test binary and sightline, told it is one (`SIGHTLINE_IN_GUEST`).
    pub fn for_this_test() -> Guest {
        Guest::new()
            .stripped_file(std::env::current_exe().expect("the test binary"))
            .stripped_file(crate::procs::sightline_bin())
            .env("SIGHTLINE_IN_GUEST", "1")
    }

    /// Runs this test binary's ignored test `name` in the guest and fails unless it passed.
    /// Its console is printed either way (shown with --nocapture, or with the failure).
    pub fn pass(&self, name: &str, timeout: Duration) {
        let me = std::env::current_exe().expect("the test binary");
        let me = me.to_str().expect("a UTF-8 path");
        let out = self.run(
            &[
                me,
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ],
            timeout,
        );
        eprintln!("{}", out.console);
        assert_eq!(
            out.status,
            Some(0),
            "{name} failed in the guest; its console:\n{}",
            out.console
        );
        assert!(
            out.console.contains("test result: ok. 1 passed"),
            "{}",
            out.console
        );
    }

    /// The same, telling a hang rather than failing on it.
    pub fn outcome(&self, command: &[&str], timeout: Duration) -> Outcome {
        require("qemu-system-x86_64");
        require("busybox");
        require("cpio");
        let kernel = find(&self.kernel_root.join("boot"), "vmlinuz-").unwrap_or_else(|| {
            panic!(
                "no guest kernel under {}; run tests/prereqs.sh (the README's test command does)",
                self.kernel_root.display()
            )
        });
        let dir = tempdir("vm");
        let root = dir.join("root");
        self.stage(&root, command);
        let initrd = dir.join("initrd.cpio");
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
                root.display(),
                initrd.display()
            ))
            .status()
            .expect("cpio runs");
        assert!(st.success(), "packing the guest's initramfs failed");
        let _ = std::fs::remove_dir_all(&root);

        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "3072", "-smp"])
            .arg(self.cpus.to_string())
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            // A soft lockup prints every CPU's backtrace, and SysRq works over the console.
            .args([
                "-append",
                "console=ttyS0 panic=-1 quiet loglevel=4 sysrq_always_enabled=1 softlockup_all_cpu_backtrace=1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let mut out = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let end = Instant::now() + timeout;
        let mut timed_out = false;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= end {
                timed_out = true;
                dump_over_sysrq(child.stdin.as_mut());
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.wait();
        let console = reader.join().unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let status = console
            .lines()
            .find_map(|l| l.trim().strip_prefix(EXIT_MARK)?.trim().parse().ok());
        Outcome {
            status,
            hung: timed_out && status.is_none(),
            console,
        }
    }

    fn stage(&self, root: &Path, command: &[&str]) {
        // The host's merged /usr layout, so a path through /lib or /bin resolves as here.
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "var",
            "etc",
            "modules",
            "bb",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
            ("var/run", "../run"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();

        let mut wanted: Vec<(PathBuf, bool)> = self.files.clone();
        wanted.push((which("busybox"), false));
        let mut i = 0;
        while i < wanted.len() {
            let libs = linked_libraries(&wanted[i].0);
            for l in libs {
                if !wanted.iter().any(|(p, _)| *p == l) {
                    wanted.push((l, false));
                }
            }
            i += 1;
        }
        for (p, strip) in &wanted {
            // A path given through `dir/..` needs `dir` in the guest too.
            let mut at = PathBuf::from("/");
            for c in p.components().skip(1) {
                if c == std::path::Component::ParentDir {
                    std::fs::create_dir_all(root.join(at.strip_prefix("/").unwrap())).unwrap();
                }
                at.push(c);
            }
            let dest = guest_path(root, p);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            if *strip {
                let st = Command::new("objcopy")
                    .arg("--strip-debug")
                    .arg(p)
                    .arg(&dest)
                    .status()
                    .expect("objcopy runs");
                assert!(st.success(), "objcopy --strip-debug {}", p.display());
            } else {
                std::fs::copy(p, &dest)
                    .unwrap_or_else(|e| panic!("copying {} into the guest: {e}", p.display()));
            }
        }
        let modules = self.kernel_root.join("lib/modules");
        for m in &self.modules {
            let ko = find_file(&modules, &format!("{m}.ko"))
                .unwrap_or_else(|| panic!("module {m} is not in the guest kernel's package"));
            std::fs::copy(&ko, root.join("modules").join(format!("{m}.ko"))).unwrap();
        }

        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        // The initramfs root is itself a writable in-memory filesystem, so /tmp and /run need
        // no mounts of their own, which would hide files staged there (a clone under /tmp).
        let mut init = String::from(
            "#!/usr/bin/busybox sh\n\
             /usr/bin/busybox --install -s /bb\n\
             export PATH=/usr/sbin:/usr/bin:/bb HOME=/root\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n\
             mount -t bpf bpf /sys/fs/bpf\n\
             ip link set lo up\n",
        );
        for m in &self.modules {
            init.push_str(&format!("insmod /modules/{m}.ko\n"));
        }
        for (k, v) in &self.env {
            init.push_str(&format!("export {k}={}\n", quote(v)));
        }
        let cmd: Vec<String> = command.iter().map(|c| quote(c)).collect();
        init.push_str(&format!(
            "cd /tmp\n{} </dev/null 2>&1\necho \"{EXIT_MARK} $?\"\npoweroff -f\n",
            cmd.join(" ")
        ));
        let path = root.join("init");
        std::fs::write(&path, init).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A hung guest's state, through the magic SysRq keys on its serial console (qemu's `-nographic`
/// console sends a break for Ctrl-A b): every CPU's backtrace, then the blocked tasks.
fn dump_over_sysrq(stdin: Option<&mut std::process::ChildStdin>) {
    use std::io::Write;
    let Some(stdin) = stdin else {
        return;
    };
    for key in [b'l', b'w'] {
        let _ = stdin.write_all(b"\x01b");
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_millis(500));
        let _ = stdin.write_all(&[key]);
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Where a host path lands in the staged root: under its real directory, so the symlinks
/// staged for /lib, /bin and the like resolve to it.
fn guest_path(root: &Path, p: &Path) -> PathBuf {
    let dir = p
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .unwrap_or_else(|| panic!("{} has no directory here", p.display()));
    root.join(dir.strip_prefix("/").unwrap())
        .join(p.file_name().unwrap())
}

/// The shared libraries and loader `ldd` names for an ELF file (none for a static one).
fn linked_libraries(p: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(p).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn which(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh runs");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn find(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(p);
        }
    }
    None
}
