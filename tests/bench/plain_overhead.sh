#!/usr/bin/env bash
# What capture at the socket syscalls costs, three ways in one run each: no probes, empty
# programs on the same tracepoints (bpftrace), and sightline.
#   1. nginx serving plaintext HTTP (wrk, keep-alive, 3-byte responses): requests/s;
#   2. non-socket I/O: small reads and writes through a pipe and /dev/zero, /dev/null: blocks/s;
#   3. a bulk transfer over one TCP connection that is not HTTP (iperf3): Gbit/s.
#
#   sudo tests/bench/plain_overhead.sh [seconds-per-run] [runs]
#
# Prints a table; the README quotes its figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
runs=${2:-3}
conns=${CONNS:-16}
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline
for t in nginx wrk bpftrace iperf3 dd; do command -v $t >/dev/null || { echo "missing $t: run tests/prereqs.sh --tests" >&2; exit 1; }; done
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
iport=$((port + 1))
. tests/bench/nginx.sh
nginx_serve "$dir" "$port" http
iperf3 -s -B 127.0.0.1 -p "$iport" -D --pidfile "$dir/iperf3.pid"
cleanup() {
  nginx_stop "$dir"
  [ -f "$dir/iperf3.pid" ] && kill "$(cat "$dir/iperf3.pid")" 2>/dev/null || true
  kill "${probe_pid:-}" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
sleep 0.5

# nginx on CPU 0 (nginx.sh pins it), the load on CPU 1, so each figure is per served core.
nginx_rps() {
  taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/" 2>/dev/null |
    awk '/Requests\/sec/ {print $2}'
}

# 512-byte blocks from /dev/zero through a pipe into /dev/null: four syscalls per block.
pipe_bps() {
  local n=2000000 t0 t1
  t0=$(date +%s.%N)
  taskset -c 0 dd if=/dev/zero bs=512 count=$n status=none |
    taskset -c 1 dd of=/dev/null bs=512 status=none
  t1=$(date +%s.%N)
  awk -v n=$n -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}'
}

bulk_gbps() {
  taskset -c 1 iperf3 -c 127.0.0.1 -p "$iport" -t "$secs" -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

# Empty programs on every tracepoint sightline's socket capture uses.
empty_probes() {
  local p=""
  for s in read write recvfrom sendto readv writev recvmsg sendmsg sendfile64; do
    p="$p tracepoint:syscalls:sys_enter_$s {} tracepoint:syscalls:sys_exit_$s {}"
  done
  for s in close connect accept accept4; do p="$p tracepoint:syscalls:sys_enter_$s {}"; done
  for s in accept accept4; do p="$p tracepoint:syscalls:sys_exit_$s {}"; done
  echo "$p tracepoint:sock:inet_sock_set_state {}"
}

. tests/bench/stats.sh

declare -A res
run_all() {
  local mode=$1
  res[$mode,nginx]+=" $(nginx_rps)"
  res[$mode,pipe]+=" $(pipe_bps)"
  res[$mode,bulk]+=" $(bulk_gbps)"
}

for i in $(seq "$runs"); do
  run_all none

  bpftrace -e "$(empty_probes)" >/dev/null 2>&1 &
  probe_pid=$!
  sleep 4
  run_all empty
  kill -INT "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=

  "$bin" --output none >/dev/null 2>&1 &
  probe_pid=$!
  sleep 3
  run_all with
  kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
done

echo "runs: $runs x ${secs}s; nginx 1 worker on CPU 0, wrk -t1 -c$conns on CPU 1; dd | dd across CPUs 0 and 1; iperf3 one connection"
printf '%-10s %14s %14s %14s %12s %12s\n' "workload" "none" "empty" "sightline" "with/none" "with/empty"
for w in nginx pipe bulk; do
  n=$(printf '%s\n' ${res[none,$w]} | median)
  e=$(printf '%s\n' ${res[empty,$w]} | median)
  s=$(printf '%s\n' ${res[with,$w]} | median)
  awk -v w="$w" -v n="$n" -v e="$e" -v s="$s" 'BEGIN {
    printf "%-10s %14s %14s %14s %12.3f %12.3f\n", w, n, e, s, s/n, s/e }'
done
echo "units: nginx requests/s, pipe 512-byte blocks/s, bulk Gbit/s"
