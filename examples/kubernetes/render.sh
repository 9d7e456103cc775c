#!/bin/sh
# Renders the chart with its default values into daemonset.yaml, the manifest for
# `kubectl apply -f`. tests/kubernetes.rs renders the same way and compares the bytes, so run
# this after any change to the chart. Usage: render.sh [OUTPUT] (default: daemonset.yaml here).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/daemonset.yaml}

# helm on PATH, else the pinned one tests/prereqs.sh --tests installs. Another helm version
# may lay the output out differently.
helm=$(command -v helm || true)
if [ -z "$helm" ]; then
  helm=/var/cache/sightline-tests/venv/bin/helm
fi
if [ ! -x "$helm" ]; then
  echo "render.sh: no helm on PATH or at $helm; install helm 3 (tests/prereqs.sh --tests installs 3.17.3)" >&2
  exit 1
fi

# Into a temporary file first: a failed render leaves the old manifest in place.
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"$helm" template sightline "$here/chart" --namespace sightline >"$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
