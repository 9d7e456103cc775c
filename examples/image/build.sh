#!/usr/bin/env bash
# Builds sightline's container image from Debian's own packages, with no registry pull: a
# minimal bookworm root file system made by debootstrap, sightline's release binary on top,
# imported by podman.
#   examples/image/build.sh [--tag NAME:TAG] [--binary PATH] [--fresh-base]
# The base is cached (debootstrap takes a minute and downloads ~40 MB); --fresh-base rebuilds
# it, for Debian's security updates. Push the result to your registry with
#   podman push NAME:TAG REGISTRY/sightline:TAG
# and set image.repository in the Helm chart (examples/kubernetes).
set -euo pipefail

die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
log() { printf '[image] %s\n' "$*" >&2; }

here=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$here/Cargo.toml" | head -n1)
tag="localhost/sightline:$version"
binary="$here/target/release/sightline"
fresh=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=${2:?--tag needs NAME:TAG}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --fresh-base) fresh=1; shift ;;
    *) die "unknown argument '$1' (--tag NAME:TAG, --binary PATH, --fresh-base)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and podman's root storage need it)"
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install $tool"
done
if [ ! -x "$binary" ]; then
  log "no binary at $binary: cargo build --release --bin sightline"
  (cd "$here" && cargo build --release --bin sightline)
fi

cache=${SIGHTLINE_IMAGE_CACHE:-/var/cache/sightline-image}
base="$cache/bookworm-minbase.tar"
mkdir -p "$cache"
if [ -n "$fresh" ] || [ ! -s "$base" ]; then
  log "debootstrap: a minimal Debian 12 root file system (ca-certificates for OTLP over TLS)"
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=ca-certificates bookworm "$root" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 ||
    die "debootstrap failed; its log is $cache/debootstrap.log"
  # What only a person at a shell needs; the image runs one program.
  rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*
  tar -C "$root" --numeric-owner -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$root"
  trap - EXIT
fi

# The base plus the binary, as one layer: podman import takes a single tarball.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$base" "$work/rootfs.tar"
install -D -m 0755 "$binary" "$work/add/usr/bin/sightline"
tar -C "$work/add" --numeric-owner --owner=0 --group=0 -rf "$work/rootfs.tar" ./usr/bin/sightline
sum=$(sha256sum "$binary" | cut -d' ' -f1)

log "podman import as $tag"
podman import \
  --change 'ENTRYPOINT ["/usr/bin/sightline"]' \
  --change "LABEL org.opencontainers.image.title=sightline" \
  --change "LABEL org.opencontainers.image.version=$version" \
  --change "LABEL org.opencontainers.image.source=https://github.com/sightline/sightline" \
  --change "LABEL io.sightline.binary.sha256=$sum" \
  --change 'EXPOSE 9464' \
  --message "sightline $version on Debian 12 (debootstrap minbase)" \
  "$work/rootfs.tar" "$tag" >/dev/null
log "built $tag ($(podman image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec))"
echo "$tag"
