//! Builds the eBPF programs with nightly and bpf-linker and embeds them in the `sightline`
//! binary, so `cargo build --release --bin sightline` yields one self-contained file.

use std::path::Path;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_PROBES").is_none() {
        return Ok(());
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).join("..").join("uprobe-ebpf");
    println!("cargo:rerun-if-changed={}", root.join("common").display());
    let ebpf_dir = root.join("ebpf");
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = std::fs::read_to_string(&toolchain_file)?
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel")
                .and_then(|r| r.split('"').nth(1))
                .map(str::to_owned)
        })
        .ok_or_else(|| anyhow::anyhow!("no channel in {}", toolchain_file.display()))?;
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        preflight(&toolchain)?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sightline-ebpf",
            root_dir: ebpf_dir.to_str().expect("UTF-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

/// Says which prerequisite is missing and how to get it, before aya-build fails obscurely.
fn preflight(toolchain: &str) -> anyhow::Result<()> {
    let fix = "run `sudo tests/prereqs.sh` from the repository, which installs every prerequisite";
    let nightly = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .output();
    if !matches!(&nightly, Ok(o) if o.status.success()) {
        anyhow::bail!(
            "the eBPF programs need the {toolchain} toolchain: \
             `rustup toolchain install {toolchain} --profile minimal -c rust-src`; or {fix}"
        );
    }
    let src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()?;
    if !String::from_utf8_lossy(&src.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        anyhow::bail!(
            "the eBPF programs need rust-src: `rustup component add rust-src --toolchain {toolchain}`; or {fix}"
        );
    }
    let linker_found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !linker_found {
        anyhow::bail!(
            "bpf-linker is not on PATH: `apt-get install llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev` \
             then `cargo install bpf-linker --no-default-features --features llvm-22`; or {fix}"
        );
    }
    Ok(())
}
