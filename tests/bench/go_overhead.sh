#!/usr/bin/env bash
# Throughput overhead of sightline on a Go net/http server (HTTP/1.1 keep-alive, tiny
# responses), three ways in one run: no probes, empty probes on exactly the points sightline
# uses (the same entry and RET-site uprobes, attached by `sightline probe-go --empty`: bpftrace
# refuses uprobes inside functions), and sightline. Also the probe hits per request, counted
# by the empty probes. Then the same for the client path: a Go client (tests/go/load) on CPU 0
# calling an unprobed Go server on CPU 1.
#
# The server runs on CPU 0 and the load generator on CPU 1. sightline's own user-space work
# (reading records, building spans) runs on CPU 1 too, as it would on any core the service
# does not saturate, so the ratio is what the probes cost the service; that work is reported
# separately, as CPU time per request. AGENT_CPU=0 puts it on the server's core instead.
#
#   sudo tests/bench/go_overhead.sh [seconds-per-run] [runs]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
runs=${2:-3}
conns=${CONNS:-16}
agent_cpu=${AGENT_CPU:-1}
# SIGHTLINE_BIN compares another build (say, the previous commit's) in the same run.
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline
for t in wrk; do command -v $t >/dev/null || { echo "missing $t: run tests/prereqs.sh" >&2; exit 1; }; done
go=/usr/lib/go-1.23/bin/go
[ -x "$go" ] || { echo "missing Go 1.23: run tests/prereqs.sh" >&2; exit 1; }
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

dir=$(mktemp -d)
svc=$dir/svc
load=$dir/load
(cd tests/go/probe && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$go" build -o "$svc" .)
(cd tests/go/load && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$go" build -o "$load" .)
port=$((20000 + RANDOM % 20000))
# One P on one core: the figure is per served core, as for nginx.
GOMAXPROCS=1 taskset -c 0 "$svc" -listen "127.0.0.1:$port" >/dev/null 2>&1 &
svc_pid=$!
cleanup() { kill "$svc_pid" "${svc2_pid:-}" "${probe_pid:-}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
sleep 0.5

measure() {
  taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/items/1" 2>/dev/null |
    awk '/Requests\/sec/ {print $2} /requests in/ {print "total", $1 > "/dev/stderr"}'
}
. tests/bench/stats.sh

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# `runs` rounds of MEASURE (it prints requests/s, and "total N" on stderr) with no probes,
# with empty probes on TARGET's points, and with sightline selecting TARGET only (another
# process's side of each request, which the socket syscall probes would report too, is not
# the Go path measured here). Sets none, empty, with, agent_us and hits_per_req.
three_ways() {
  local measure=$1 target=$2 t0 t1 total hits
  none=(); empty=(); with=(); agent_us=(); hits_per_req=
  for i in $(seq "$runs"); do
    none+=("$($measure 2>/dev/null)")

    "$bin" probe-go --empty "$target" >"$dir/empty.out" 2>&1 &
    probe_pid=$!
    sleep 2
    empty+=("$($measure 2>"$dir/total")")
    kill -INT "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
    total=$(awk '/total/ {print $2}' "$dir/total")
    hits=$(awk '/^hits/ {print $2}' "$dir/empty.out")
    hits_per_req=$(awk -v h="${hits:-0}" -v t="${total:-1}" 'BEGIN {printf "%.2f", h / t}')

    taskset -c "$agent_cpu" "$bin" --output none --exe "$(basename "$target")" >/dev/null 2>&1 &
    probe_pid=$!
    sleep 3
    t0=$(cpu_ticks "$probe_pid")
    with+=("$($measure 2>"$dir/total")")
    t1=$(cpu_ticks "$probe_pid")
    total=$(awk '/total/ {print $2}' "$dir/total")
    agent_us+=("$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="${total:-1}" \
      'BEGIN {printf "%.2f", t / hz * 1e6 / n}')")
    kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
  done
}

# The medians of what three_ways measured, under the heading given.
report() {
  local a
  a=$(printf '%s\n' "${agent_us[@]}" | median)
  echo "$1"
  three_way_table "empty probes (same points)"
  echo "probe hits per request: $hits_per_req (empty probes, last run)"
  echo "sightline user-space CPU per request: $a us (median)"
}

three_ways measure "$svc"
report "runs: $runs x ${secs}s, wrk -t1 -c$conns, Go 1.23 server GOMAXPROCS=1 pinned to CPU 0, wrk on CPU 1, sightline on CPU $agent_cpu"

# The client path: the Go client is the one pinned to a core of its own, the server on the
# other with the load generator's share of it.
port2=$((port + 1))
GOMAXPROCS=1 taskset -c 1 "$svc" -listen "127.0.0.1:$port2" >/dev/null 2>&1 &
svc2_pid=$!
sleep 0.5
client() {
  GOMAXPROCS=1 taskset -c 0 "$load" -url "http://127.0.0.1:$port2/items/1" -c "$conns" \
    -d "${secs}s" -wait 2s >"$dir/load.out"
  awk '/^requests/ {print "total", $2 > "/dev/stderr"} /^rps/ {print $2}' "$dir/load.out"
}
three_ways client "$load"
echo
report "client path: Go 1.23 client (tests/go/load, -c$conns) GOMAXPROCS=1 on CPU 0, unprobed Go server on CPU 1"
