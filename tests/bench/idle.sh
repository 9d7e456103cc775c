#!/usr/bin/env bash
# sightline's own CPU on a host where nothing happens: started with its defaults (live view to
# /dev/null), left to settle, then its user and system time over a window, as a share of one
# core. Whatever else runs on the host during the window (cron, this script's own commands)
# is observed too, so run it on a quiet host; the figure is an upper bound.
#
#   sudo tests/bench/idle.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
window=${1:-120}
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline

"$bin" --output json >/dev/null 2>/dev/null &
agent=$!
trap 'kill $agent 2>/dev/null || true' EXIT
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
# Loading and the first look at every process are not idling.
sleep 15
a=$(cpu)
sleep "$window"
b=$(cpu)
awk -v t=$((b - a)) -v hz="$hz" -v w="$window" \
  'BEGIN { printf "sightline idle: %.3f %% of one core (%d ticks of 1/%d s in %d s)\n", 100 * t / hz / w, t, hz, w }'
