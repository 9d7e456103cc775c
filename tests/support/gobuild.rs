//! Builds Go test programs with a given toolchain and link shape, once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every toolchain the tests cover; `tests/prereqs.sh` installs them.
pub const TOOLCHAINS: [&str; 4] = ["1.19", "1.21", "1.22", "1.23"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Plain,
    /// `-ldflags=-s -w`: no symbol table, no DWARF.
    Stripped,
    /// `-buildmode=pie -ldflags=-s -w`.
    StrippedPie,
    /// cgo, linked by the system linker.
    Cgo,
}

pub const SHAPES: [Shape; 4] = [
    Shape::Plain,
    Shape::Stripped,
    Shape::StrippedPie,
    Shape::Cgo,
];

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Plain => "plain",
            Shape::Stripped => "stripped",
            Shape::StrippedPie => "stripped-pie",
            Shape::Cgo => "cgo",
        }
    }

    fn args(self) -> (&'static [&'static str], &'static str) {
        match self {
            Shape::Plain => (&[], "0"),
            Shape::Stripped => (&["-ldflags=-s -w"], "0"),
            Shape::StrippedPie => (&["-buildmode=pie", "-ldflags=-s -w"], "0"),
            Shape::Cgo => (&["-ldflags=-linkmode=external"], "1"),
        }
    }

    /// The shape built with symbols and DWARF and otherwise the same flags: the Go linker lays
    /// out text identically with and without `-s -w`, so its addresses are the ground truth.
    pub fn twin(self) -> Shape {
        match self {
            Shape::Stripped => Shape::Plain,
            other => other,
        }
    }
}

pub fn go(version: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/go-{version}/bin/go"));
    assert!(
        p.is_file(),
        "Go {version} is missing at {}: run tests/prereqs.sh (it installs golang-{version}-go)",
        p.display()
    );
    p
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-tests")
}

fn bin_path(program: &str, version: &str, shape: Shape, unstripped: bool) -> PathBuf {
    let suffix = if unstripped { "-twin" } else { "" };
    out_dir().join(format!("{program}-go{version}-{}{suffix}", shape.name()))
}

/// What [`build`] built, where no Go toolchain is (a test running in a guest kernel).
pub fn built(program: &str, version: &str, shape: Shape) -> PathBuf {
    let bin = bin_path(program, version, shape, false);
    assert!(
        bin.exists(),
        "{} was not built before the guest booted",
        bin.display()
    );
    bin
}

/// Builds the Go package in `tests/go/<program>` with Go `version` in `shape`, plus
/// `unstripped` to get the twin of a stripped PIE. Returns the binary's path.
pub fn build(program: &str, version: &str, shape: Shape, unstripped: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("go")
        .join(program);
    let bin = bin_path(program, version, shape, unstripped);
    let (args, cgo) = shape.args();
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !(unstripped && a.starts_with("-ldflags=-s")))
        .collect();
    std::fs::create_dir_all(out_dir()).unwrap();
    let out = Command::new(go(version))
        .arg("build")
        .args(&args)
        .arg("-o")
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .env("CGO_ENABLED", cgo)
        .output()
        .expect("go build runs");
    assert!(
        out.status.success(),
        "go{version} build {args:?} of {program} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Where Debian's golang-golang-x-net-dev puts golang.org/x/net, for GOPATH-mode builds.
pub const GOPATH: &str = "/usr/share/gocode";

/// Builds `tests/go/<program>`, which imports golang.org/x/net, with Go `version` in GOPATH
/// mode against Debian's x/net source (no module download: the tests reach no module proxy).
/// Unstripped: such a build records no module versions, so x/net's struct offsets come from
/// its DWARF.
pub fn build_gopath(program: &str, version: &str) -> PathBuf {
    assert!(
        Path::new(GOPATH).join("src/golang.org/x/net/http2").is_dir(),
        "golang.org/x/net is missing under {GOPATH}: run tests/prereqs.sh (it installs golang-golang-x-net-dev)"
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("go")
        .join(program);
    let bin = out_dir().join(format!("{program}-go{version}-gopath"));
    std::fs::create_dir_all(out_dir()).unwrap();
    let out = Command::new(go(version))
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go build runs");
    assert!(
        out.status.success(),
        "go{version} GOPATH build of {program} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The binary whose symbol table and DWARF describe `shape`'s layout.
pub fn twin(program: &str, version: &str, shape: Shape) -> PathBuf {
    match shape {
        Shape::StrippedPie => build(program, version, shape, true),
        other => build(program, version, other.twin(), false),
    }
}
