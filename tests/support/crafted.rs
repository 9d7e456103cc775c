//! Hostile files for "discovery must never stall capture": executables and libraries a process
//! on the host may run or map, each built so that an analysis which believes its headers reads
//! a terabyte, inflates half a gigabyte, or blocks on a pipe. They stay cheap on disk: the huge
//! ones are sparse, so never copy them with a tool that is not sparse-aware, and remove `dir`
//! when done.

use crate::gobuild::{self, Shape};
use crate::procs::require;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a hostile header claims: more than any host has memory or patience for.
pub const TIB: u64 = 1 << 40;
/// What the bomb's `.debug_info` inflates to: far beyond any sane DWARF budget, small enough
/// that objcopy can still build it in memory.
pub const BOMB_SIZE: u64 = 512 << 20;

/// busybox-static: one static binary that behaves as `sleep` when so named, so a crafted copy
/// needs neither an interpreter nor libraries that could hide what the kernel accepts.
const BUSYBOX: &str = "/bin/busybox";

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const PT_GNU_PROPERTY: u32 = 0x6474_e553;
const PF_R: u32 = 4;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const NT_GNU_BUILD_ID: u32 = 3;
/// `sh_flags` bit of a section whose contents start with an `Elf64_Chdr`.
pub const SHF_COMPRESSED: u64 = 0x800;
const ELFCOMPRESS_ZLIB: u32 = 1;

/// A 1 TiB executable that really runs: `sleep` (busybox) without section headers, whose last
/// non-executable PT_LOAD segment claims p_filesz = p_memsz = 1 TiB, all of it present in the
/// (sparse) file. Why: anything that sizes a read by a segment's p_filesz, or hashes "the
/// loaded bytes", meets a file the kernel itself accepts, in a process that is alive.
///
/// The kernel refuses the same claim on busybox's own writable data segment: a private
/// writable mapping is charged to commit, and under `vm.overcommit_memory=0` exec fails (the
/// process dies of SIGSEGV past the point of no return) for anything beyond RAM plus swap,
/// so 64 GiB already fails on a 23 GiB host. A read-only mapping is not charged, so the claim
/// is a segment of its own, after the data segment, in the program header slot of a PT_NOTE
/// that only repeats the PT_GNU_PROPERTY beside it.
pub fn sparse_elf(dir: &Path) -> PathBuf {
    let mut elf = busybox_image();
    let phoff = u64_at(&elf, 0x20) as usize;
    let phnum = u16_at(&elf, 0x38) as usize;
    let mut phdrs: Vec<[u8; PHDR_SIZE]> = (0..phnum)
        .map(|i| {
            elf[phoff + i * PHDR_SIZE..][..PHDR_SIZE]
                .try_into()
                .unwrap()
        })
        .collect();
    let ph = |p: &[u8; PHDR_SIZE], at: usize| u64_at(p, at);
    let ty = |p: &[u8; PHDR_SIZE]| u32_at(p, 0);
    // Only what some segment holds survives: the section headers and the non-loaded sections
    // they describe go, so nothing but the program headers tells what the file is.
    let end = phdrs.iter().map(|p| ph(p, 8) + ph(p, 32)).max().unwrap();
    elf.truncate(end as usize);
    put_u64(&mut elf, 0x28, 0);
    put_u16(&mut elf, 0x3c, 0);
    put_u16(&mut elf, 0x3e, 0);

    let property = phdrs
        .iter()
        .find(|p| ty(p) == PT_GNU_PROPERTY)
        .map(|p| ph(p, 8));
    let spare = phdrs
        .iter()
        .position(|p| ty(p) == PT_NOTE && Some(ph(p, 8)) == property)
        .unwrap_or_else(|| {
            panic!("{BUSYBOX} has no PT_NOTE that repeats its PT_GNU_PROPERTY: no program header slot to spare for the huge segment")
        });
    phdrs.remove(spare);
    let loads: Vec<&[u8; PHDR_SIZE]> = phdrs.iter().filter(|p| ty(p) == PT_LOAD).collect();
    let align = loads.iter().map(|p| ph(p, 48)).max().unwrap().max(4096);
    let top = loads.iter().map(|p| ph(p, 16) + ph(p, 40)).max().unwrap();
    let offset = end.next_multiple_of(align);
    let vaddr = top.next_multiple_of(align);
    let mut huge = [0u8; PHDR_SIZE];
    put_u32(&mut huge, 0, PT_LOAD);
    put_u32(&mut huge, 4, PF_R);
    put_u64(&mut huge, 8, offset);
    put_u64(&mut huge, 16, vaddr);
    put_u64(&mut huge, 24, vaddr);
    put_u64(&mut huge, 32, TIB);
    put_u64(&mut huge, 40, TIB);
    put_u64(&mut huge, 48, align);
    // The loader wants PT_LOADs in address order: the new one goes right after the last.
    let last_load = phdrs.iter().rposition(|p| ty(p) == PT_LOAD).unwrap();
    phdrs.insert(last_load + 1, huge);
    for (i, p) in phdrs.iter().enumerate() {
        elf[phoff + i * PHDR_SIZE..][..PHDR_SIZE].copy_from_slice(p);
    }
    rebrand_build_id(&mut elf, 1);

    let path = dir.join("sleep");
    let mut f = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(&elf).unwrap();
    // Extending by set_len writes nothing: the terabyte reads as zeros and takes no blocks.
    f.set_len(offset + TIB).unwrap();
    drop(f);
    executable(&path);
    path
}

/// A real Go program (it sleeps an hour) whose `.debug_info` is a zlib SHF_COMPRESSED section
/// of about half a megabyte that inflates to 512 MiB of zeros. Why: Go analysis reads DWARF
/// for struct offsets, and a reader that inflates whatever `ch_size` says, or allocates it up
/// front, spends seconds and half a gigabyte on a 2 MB file.
pub fn decompression_bomb(dir: &Path) -> PathBuf {
    require("objcopy");
    let newest = gobuild::TOOLCHAINS[gobuild::TOOLCHAINS.len() - 1];
    // Plain: the only shape with DWARF to replace.
    let go = gobuild::build("idle", newest, Shape::Plain, false);
    let zeros = dir.join(".bomb-zeros");
    let inflated = dir.join(".bomb-inflated");
    let path = dir.join("dwarf-bomb");
    // Sparse, so the zeros cost nothing until objcopy reads them.
    File::create(&zeros).unwrap().set_len(BOMB_SIZE).unwrap();
    // objcopy compresses what --update-section brings only in a later run: in the same run it
    // keeps the section's compressed flag over raw contents.
    let first = objcopy(&[
        "--decompress-debug-sections".as_ref(),
        "--update-section".as_ref(),
        format!(".debug_info={}", zeros.display()).as_ref(),
        go.as_os_str(),
        inflated.as_os_str(),
    ]);
    let second = first.and_then(|()| {
        objcopy(&[
            "--compress-debug-sections=zlib-gabi".as_ref(),
            inflated.as_os_str(),
            path.as_os_str(),
        ])
    });
    // The inflated copy is half a gigabyte of real blocks.
    let _ = fs::remove_file(&zeros);
    let _ = fs::remove_file(&inflated);
    if let Err(e) = second {
        panic!("crafting {}: {e}", path.display());
    }
    let sec = section(&path, ".debug_info")
        .unwrap_or_else(|| panic!("{}: no .debug_info after objcopy", path.display()));
    assert!(
        sec.flags & SHF_COMPRESSED != 0 && compressed_size(&path, ".debug_info") == Some(BOMB_SIZE),
        "{}: objcopy did not leave .debug_info zlib-compressed from {BOMB_SIZE} bytes: {sec:?}",
        path.display()
    );
    path
}

/// `sleep` (busybox) in `dir/debuglink/`, whose `.gnu_debuglink` names `sleep.debug` beside
/// it, a 1 TiB sparse file. Why: the debuglink CRC covers the whole debug file, so a reader
/// that checks it before looking at the size reads a terabyte of zeros; one that maps or
/// parses it finds no ELF at all.
pub fn debuglink_to_huge(dir: &Path) -> PathBuf {
    let sub = dir.join("debuglink");
    fs::create_dir_all(&sub).unwrap();
    let debug = sub.join("sleep.debug");
    let path = sub.join("sleep");
    // objcopy computes the CRC from the file it is given: give it a small one.
    fs::write(
        &debug,
        b"sightline crafted: replaced by a 1 TiB sparse file\n",
    )
    .unwrap();
    linked_busybox(&debug, &path);
    let mut elf = fs::read(&path).unwrap();
    rebrand_build_id(&mut elf, 2);
    fs::write(&path, &elf).unwrap();
    assert_eq!(
        debuglink(&path).as_deref(),
        Some("sleep.debug"),
        "{}: objcopy did not set the debuglink",
        path.display()
    );
    // A fresh file rather than the small one extended, so no real block is left in it.
    fs::remove_file(&debug).unwrap();
    File::create(&debug).unwrap().set_len(TIB).unwrap();
    path
}

/// `sleep` (busybox) in `dir/escape/`, whose `.gnu_debuglink` names `../../../../proc/kcore`
/// (with more `../` if `dir` is deeper): the debug file it points at is the kernel's memory,
/// where the kernel has it, a file of some 128 TiB whose reads fault or stall. Why: the name
/// is the binary's word, and any user can write a binary; a debuglink is a file name, never a
/// path to follow out of the binary's directory.
///
/// objcopy writes only the base name of the file it is given, and computes its CRC by reading
/// it all, so the name is patched into the section here instead.
pub fn debuglink_escape(dir: &Path) -> PathBuf {
    let sub = dir.join("escape");
    fs::create_dir_all(&sub).unwrap();
    let depth = sub.canonicalize().unwrap().components().count() - 1;
    let name = format!("{}proc/kcore", "../".repeat(depth.max(4)));
    // A placeholder whose name is as long, so the section has room for the real one.
    let placeholder = sub.join(format!("{}.debug", "x".repeat(name.len())));
    let path = sub.join("sleep");
    fs::write(&placeholder, b"placeholder").unwrap();
    linked_busybox(&placeholder, &path);
    fs::remove_file(&placeholder).unwrap();

    let sec = section(&path, ".gnu_debuglink")
        .unwrap_or_else(|| panic!("{}: objcopy added no .gnu_debuglink", path.display()));
    let mut elf = fs::read(&path).unwrap();
    let at = sec.offset as usize;
    let old = &elf[at..at + sec.size as usize];
    let crc = u32_at(old, old.len() - 4);
    // The layout readers expect: the name, NUL, zeros to a multiple of 4, then the CRC.
    let mut contents = name.into_bytes();
    contents.push(0);
    contents.resize(contents.len().next_multiple_of(4), 0);
    contents.extend_from_slice(&crc.to_le_bytes());
    assert!(contents.len() as u64 <= sec.size);
    elf[at..at + sec.size as usize].fill(0);
    elf[at..at + contents.len()].copy_from_slice(&contents);
    put_u64(&mut elf, sec.header + 32, contents.len() as u64);
    rebrand_build_id(&mut elf, 3);
    fs::write(&path, &elf).unwrap();
    path
}

/// A FIFO named `libcraftedssl.so`: sightline looks at every mapped `*ssl*.so`, and a process
/// can name any file so, but only a regular file can be mapped. Why: opening a FIFO blocks
/// until a writer comes, and one that comes never closes it; nothing should open it at all.
pub fn fifo_named_like_a_library(dir: &Path) -> PathBuf {
    require("mkfifo");
    let path = dir.join("libcraftedssl.so");
    let _ = fs::remove_file(&path);
    let out = Command::new("mkfifo")
        .arg(&path)
        .output()
        .expect("mkfifo runs");
    assert!(
        out.status.success(),
        "mkfifo {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Where a section is, read from the section headers alone (never the whole file, which may be
/// a terabyte).
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// File offset of the section's header.
    pub header: usize,
    pub flags: u64,
    pub offset: u64,
    pub size: u64,
}

/// The ELF64 section `name` of `path`, if it has section headers and such a section.
pub fn section(path: &Path, name: &str) -> Option<Section> {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let read = |at: u64, len: usize| {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, at).ok().map(|()| b)
    };
    let eh = read(0, 64)?;
    let (shoff, shnum, shstrndx) = (u64_at(&eh, 0x28), u16_at(&eh, 0x3c), u16_at(&eh, 0x3e));
    if shoff == 0 || shnum == 0 {
        return None;
    }
    let shdrs = read(shoff, shnum as usize * SHDR_SIZE)?;
    let shdr = |i: usize| &shdrs[i * SHDR_SIZE..][..SHDR_SIZE];
    let strtab = shdr(shstrndx as usize);
    let names = read(u64_at(strtab, 24), u64_at(strtab, 32) as usize)?;
    (0..shnum as usize).find_map(|i| {
        let h = shdr(i);
        let at = u32_at(h, 0) as usize;
        let n = names.get(at..)?.split(|&c| c == 0).next()?;
        (n == name.as_bytes()).then(|| Section {
            header: shoff as usize + i * SHDR_SIZE,
            flags: u64_at(h, 8),
            offset: u64_at(h, 24),
            size: u64_at(h, 32),
        })
    })
}

/// The size a zlib SHF_COMPRESSED section says it inflates to (its `Elf64_Chdr.ch_size`).
pub fn compressed_size(path: &Path, name: &str) -> Option<u64> {
    let sec = section(path, name)?;
    if sec.flags & SHF_COMPRESSED == 0 {
        return None;
    }
    let mut chdr = [0u8; 24];
    File::open(path)
        .ok()?
        .read_exact_at(&mut chdr, sec.offset)
        .ok()?;
    (u32_at(&chdr, 0) == ELFCOMPRESS_ZLIB).then(|| u64_at(&chdr, 8))
}

/// The file name a binary's `.gnu_debuglink` names.
pub fn debuglink(path: &Path) -> Option<String> {
    let sec = section(path, ".gnu_debuglink")?;
    let mut b = vec![0u8; sec.size as usize];
    File::open(path)
        .ok()?
        .read_exact_at(&mut b, sec.offset)
        .ok()?;
    let name = b.split(|&c| c == 0).next()?;
    Some(String::from_utf8_lossy(name).into_owned())
}

fn busybox_image() -> Vec<u8> {
    let elf = fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX}: {e}; install busybox-static (tests/prereqs.sh does)")
    });
    assert!(
        elf.len() > 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "{BUSYBOX} is not a little-endian ELF64 file"
    );
    let (phoff, phnum) = (u64_at(&elf, 0x20) as usize, u16_at(&elf, 0x38) as usize);
    let interp = (0..phnum).any(|i| u32_at(&elf, phoff + i * PHDR_SIZE) == PT_INTERP);
    assert!(
        !interp,
        "{BUSYBOX} is dynamically linked: install busybox-static (tests/prereqs.sh does)"
    );
    elf
}

/// busybox with one `.gnu_debuglink` naming `debug`'s base name; Debian's busybox already has
/// one, and objcopy, asked to add another, says so and exits 0 with the old one kept.
fn linked_busybox(debug: &Path, out: &Path) {
    require("objcopy");
    busybox_image();
    objcopy(&[
        "--remove-section=.gnu_debuglink".as_ref(),
        format!("--add-gnu-debuglink={}", debug.display()).as_ref(),
        BUSYBOX.as_ref(),
        out.as_os_str(),
    ])
    .unwrap_or_else(|e| panic!("crafting {}: {e}", out.display()));
    executable(out);
}

fn objcopy(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("objcopy")
        .args(args)
        .output()
        .map_err(|e| format!("objcopy: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "objcopy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Gives a crafted copy a GNU build-id of its own: sightline analyses a file once per build-id,
/// so a copy sharing busybox's would be answered from the cache and never read.
fn rebrand_build_id(elf: &mut [u8], tag: u8) {
    let (phoff, phnum) = (u64_at(elf, 0x20) as usize, u16_at(elf, 0x38) as usize);
    for i in 0..phnum {
        let p = phoff + i * PHDR_SIZE;
        if u32_at(elf, p) != PT_NOTE {
            continue;
        }
        let (start, len) = (u64_at(elf, p + 8) as usize, u64_at(elf, p + 32) as usize);
        let align = if u64_at(elf, p + 48) == 8 { 8 } else { 4 };
        let mut at = start;
        while at + 12 <= start + len {
            let (namesz, descsz) = (u32_at(elf, at) as usize, u32_at(elf, at + 4) as usize);
            let name = at + 12;
            let desc = name + namesz.next_multiple_of(align);
            if u32_at(elf, at + 8) == NT_GNU_BUILD_ID
                && elf.get(name..name + namesz) == Some(b"GNU\0")
                && descsz >= 2
            {
                elf[desc] = 0x5c;
                elf[desc + 1] = tag;
                return;
            }
            at = desc + descsz.next_multiple_of(align);
        }
    }
    panic!("{BUSYBOX} has no GNU build-id note to make unique");
}

fn executable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
