//! The hostile files of `support/crafted.rs` are what they claim to be, and the executables
//! among them still run: a test that starts them and sees sightline keep capturing must not
//! pass because the kernel refused them, or because a crafting step silently did nothing.

use sightline_e2e::crafted::{self, BOMB_SIZE, SHF_COMPRESSED, TIB};
use sightline_e2e::procs::{tempdir, Killed};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
/// Generous for a file whose real contents are a 2 MB busybox: the rest must be holes.
const FEW_BLOCKS: u64 = 16 << 20;

/// The crafted files' directory, removed however the test ends: some are a terabyte long.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        Dir(tempdir(tag))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runs_and_exits_0(bin: &Path, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {} {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn on_disk(path: &Path) -> u64 {
    path.metadata().unwrap().blocks() * 512
}

#[test]
fn a_terabyte_segment_without_sections_still_runs() {
    let dir = Dir::new("crafted-sparse");
    let bin = crafted::sparse_elf(&dir.0);
    assert_eq!(bin.file_name().unwrap(), "sleep");

    let t = Instant::now();
    runs_and_exits_0(&bin, &["2"]);
    assert!(t.elapsed() >= Duration::from_secs(2), "it ran as sleep");

    let len = bin.metadata().unwrap().len();
    assert!(len >= 64 * GIB, "{len} bytes");
    assert!(
        on_disk(&bin) <= FEW_BLOCKS,
        "{} bytes on disk",
        on_disk(&bin)
    );

    let mut eh = [0u8; 64];
    let f = File::open(&bin).unwrap();
    f.read_exact_at(&mut eh, 0).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert_eq!(
        (u64_at(&eh, 0x28), u16_at(&eh, 0x3c), u16_at(&eh, 0x3e)),
        (0, 0, 0),
        "no section headers"
    );
    let (phoff, phnum) = (u64_at(&eh, 0x20), u16_at(&eh, 0x38) as usize);
    let mut ph = vec![0u8; phnum * 56];
    f.read_exact_at(&mut ph, phoff).unwrap();
    let last_data = ph
        .chunks(56)
        .rfind(|p| p[..4] == 1u32.to_le_bytes() && p[4] & 1 == 0)
        .expect("a non-executable PT_LOAD");
    let (offset, filesz, memsz) = (
        u64_at(last_data, 8),
        u64_at(last_data, 32),
        u64_at(last_data, 40),
    );
    assert_eq!((filesz, memsz), (TIB, TIB));
    assert!(
        offset + filesz <= len,
        "the segment's bytes are in the file"
    );
}

#[test]
fn a_go_program_whose_dwarf_inflates_to_512_mib_runs() {
    let dir = Dir::new("crafted-bomb");
    let bin = crafted::decompression_bomb(&dir.0);
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "dwarf-bomb")
        .collect();
    assert!(leftovers.is_empty(), "intermediates left: {leftovers:?}");

    let mut child = Killed(
        Command::new(&bin)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display())),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "{} exited early",
        bin.display()
    );
    drop(child);

    let sec = crafted::section(&bin, ".debug_info").expect(".debug_info");
    assert!(sec.flags & SHF_COMPRESSED != 0, "{sec:?}");
    assert!(sec.size < 8 << 20, "{sec:?}");
    assert_eq!(
        crafted::compressed_size(&bin, ".debug_info"),
        Some(BOMB_SIZE)
    );
    let len = bin.metadata().unwrap().len();
    assert!(len < 8 << 20, "{len} bytes");
}

#[test]
fn a_debuglink_to_a_terabyte_file_runs() {
    let dir = Dir::new("crafted-debuglink");
    let bin = crafted::debuglink_to_huge(&dir.0);
    runs_and_exits_0(&bin, &["0"]);
    assert_eq!(crafted::debuglink(&bin).as_deref(), Some("sleep.debug"));
    let debug = bin.with_file_name("sleep.debug");
    assert_eq!(debug.metadata().unwrap().len(), TIB);
    assert!(on_disk(&debug) <= FEW_BLOCKS, "{} on disk", on_disk(&debug));
}

#[test]
fn a_debuglink_out_of_its_directory_runs() {
    let dir = Dir::new("crafted-escape");
    let bin = crafted::debuglink_escape(&dir.0);
    runs_and_exits_0(&bin, &["0"]);
    let name = crafted::debuglink(&bin).expect(".gnu_debuglink");
    assert!(name.starts_with("../../../../"), "{name}");
    // Resolved lexically, as a reader joining it to the binary's directory would.
    let mut at = bin.parent().unwrap().canonicalize().unwrap();
    for part in Path::new(&name).components() {
        match part {
            std::path::Component::ParentDir => {
                at.pop();
            }
            other => at.push(other),
        }
    }
    assert_eq!(at, Path::new("/proc/kcore"));
    // Only the binary: the placeholder objcopy needed is gone.
    assert_eq!(std::fs::read_dir(bin.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn a_fifo_named_like_a_tls_library() {
    let dir = Dir::new("crafted-fifo");
    let fifo = crafted::fifo_named_like_a_library(&dir.0);
    assert_eq!(fifo.file_name().unwrap(), "libcraftedssl.so");
    assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
}
