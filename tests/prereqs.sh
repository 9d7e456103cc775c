#!/usr/bin/env bash
# Installs everything sightline's build and tests need on a fresh Debian 12 machine, as root.
# Idempotent: each step checks first, so a second run costs seconds.
set -euo pipefail

log() { printf '[prereqs] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "prereqs: run as root (sightline loads eBPF programs and installs packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# rustup's tools live here; a non-login shell (CI) may not have it on PATH.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
  echo "prereqs: cargo and rustup are needed (https://rustup.rs); this machine image ships them" >&2
  exit 1
fi

# Go 1.21+ lives in bookworm-backports; Go 1.19 in bookworm itself.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports to apt sources"
  cat >/etc/apt/sources.list.d/sightline-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATED=
fi

pkgs=(
  # build chain for the eBPF crate (bpf-linker links against LLVM 22, the nightly's LLVM)
  llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev pkg-config build-essential
  # protobuf compiler is not needed (prost ships generated code), but libssl for tests is
  openssl libssl-dev ca-certificates
  # test targets and benchmark tools
  nginx-light curl python3 wrk bpftrace bpftool procps iproute2 binutils
  # Go 1.19 and Debian's golang.org/x/net source, for the Go tests and the offsets generator
  golang-1.19-go golang-golang-x-net-dev
  # a second kernel without lockdown, under software emulation (tests/support/vm.rs)
  qemu-system-x86 busybox-static cpio
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx must not hold port 80 from the package's own unit; tests run their own instances.
if systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
if pgrep -x nginx >/dev/null && [ -f /run/nginx.pid ]; then nginx -s quit 2>/dev/null || true; fi

# Every Go toolchain the tests cover beyond bookworm's 1.19 comes from bookworm-backports.
go_missing=()
for v in 1.21 1.22 1.23; do
  [ -x "/usr/lib/go-$v/bin/go" ] || go_missing+=("golang-$v-go")
done
if [ ${#go_missing[@]} -gt 0 ]; then
  log "apt-get install -t bookworm-backports ${go_missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${go_missing[@]}" >/dev/null
fi

# Third-party Go programs as Debian ships them, unpacked (not installed, so no service starts).
debs=/var/cache/sightline-tests/debs
for p in prometheus-node-exporter caddy docker.io; do
  if ! ls "$debs/$p"_*.deb >/dev/null 2>&1; then
    log "apt-get download $p"
    mkdir -p "$debs"
    (cd "$debs" && apt-get download -q "$p" >/dev/null 2>&1) || { echo "prereqs: apt-get download $p failed" >&2; exit 1; }
    dpkg-deb -x "$debs/$p"_*.deb "$debs/root"
  fi
done

# The guest kernel: Debian's own 6.1 cloud kernel, unpacked (not installed).
vm=/var/cache/sightline-tests/vm
if ! ls "$vm"/root/boot/vmlinuz-* >/dev/null 2>&1; then
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$kpkg" ] || { echo "prereqs: no linux-image-cloud-amd64 package found" >&2; exit 1; }
  log "apt-get download $kpkg (the guest kernel)"
  rm -rf "$vm" && mkdir -p "$vm"
  (cd "$vm" && apt-get download -q "$kpkg" >/dev/null 2>&1) || { echo "prereqs: apt-get download $kpkg failed" >&2; exit 1; }
  dpkg-deb -x "$vm"/"$kpkg"_*.deb "$vm/root"
fi

if ! command -v node >/dev/null; then
  log "apt-get install nodejs"
  apt-get install -y -q nodejs >/dev/null
fi

# The eBPF toolchain is pinned: its LLVM must match bpf-linker's LLVM 22.
here=$(cd "$(dirname "$0")/.." && pwd)
ebpf_toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/uprobe-ebpf/ebpf/rust-toolchain.toml")
if ! rustup component list --toolchain "$ebpf_toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: $ebpf_toolchain with rust-src"
  rustup toolchain install "$ebpf_toolchain" --profile minimal -c rust-src >/dev/null
fi

if ! command -v bpf-linker >/dev/null && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  log "cargo install bpf-linker (LLVM 22); this takes several minutes once"
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --locked --no-default-features --features llvm-22
fi

# tracefs: uprobes registered through perf_event_open do not need it, but bpftrace does.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
log "ok"
