#!/usr/bin/env bash
# What the network signals cost, in one run each of: no probes, empty programs on the same
# TCP tracepoints (bpftrace), sightline with everything it captures, and sightline with the
# network signals turned off (capture.network: false), whose difference is theirs.
#   1. a bulk transfer over one TCP connection (iperf3): Gbit/s; tcp_probe fires per segment;
#   2. a connection storm: nginx answering short requests, each on a new connection (wrk with
#      `Connection: close`): requests/s;
#   3. 100 000 idle connections held open while sightline runs: its memory, and the kernel
#      flow table's.
#
#   sudo tests/bench/net_overhead.sh [seconds-per-run] [runs] [idle-connections]
#
# Prints a table; the README quotes its figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-8}
runs=${2:-3}
idle=${3:-100000}
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline
for t in nginx wrk bpftrace iperf3 bpftool python3; do command -v $t >/dev/null || { echo "missing $t: run tests/prereqs.sh --tests" >&2; exit 1; }; done
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
iport=$((port + 1))
. tests/bench/nginx.sh
nginx_serve "$dir" "$port" close
iperf3 -s -B 127.0.0.1 -p "$iport" -D --pidfile "$dir/iperf3.pid"
cleanup() {
  nginx_stop "$dir"
  [ -f "$dir/iperf3.pid" ] && kill "$(cat "$dir/iperf3.pid")" 2>/dev/null || true
  kill ${probe_pid:-} ${holder_pid:-} 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
sleep 0.5
# Short connections leave TIME_WAIT sockets; reuse them, or the storm runs out of ports.
sysctl -qw net.ipv4.tcp_tw_reuse=1

bulk_gbps() {
  taskset -c 1 iperf3 -c 127.0.0.1 -p "$iport" -t "$secs" -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

storm_rps() {
  taskset -c 1 wrk -t1 -c16 -d"${secs}s" -H "Connection: close" "http://127.0.0.1:$port/" 2>/dev/null |
    awk '/Requests\/sec/ {print $2}'
}

# Empty programs on every tracepoint the network signals use. bookworm's bpftrace has no raw
# tracepoints, so tcp_probe's is the classic one, which fills its record per segment: the
# empty case costs more there than sightline's raw program does.
empty_probes() {
  echo "tracepoint:sock:inet_sock_set_state {} tracepoint:tcp:tcp_retransmit_skb {}
        tracepoint:tcp:tcp_send_reset {} tracepoint:tcp:tcp_receive_reset {}
        tracepoint:tcp:tcp_destroy_sock {} tracepoint:tcp:tcp_probe {}"
}

. tests/bench/stats.sh

declare -A res
run_all() {
  local mode=$1
  res[$mode,bulk]+=" $(bulk_gbps)"
  res[$mode,storm]+=" $(storm_rps)"
}

printf 'capture:\n  network: false\n' >"$dir/no-network.yaml"
start_sightline() {
  "$bin" --output none "$@" >/dev/null 2>"$dir/sightline.log" &
  probe_pid=$!
  for _ in $(seq 100); do grep -q "sightline is running" "$dir/sightline.log" 2>/dev/null && return; sleep 0.1; done
  echo "sightline did not start: $(cat "$dir/sightline.log")" >&2; exit 1
}

for i in $(seq "$runs"); do
  run_all none

  bpftrace -e "$(empty_probes)" >/dev/null 2>&1 &
  probe_pid=$!
  sleep 4
  run_all empty
  kill -INT "$probe_pid" 2>/dev/null || { echo "bpftrace failed" >&2; exit 1; }
  wait "$probe_pid" 2>/dev/null || true; probe_pid=

  start_sightline
  run_all with
  kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=

  start_sightline --config "$dir/no-network.yaml"
  run_all nonet
  kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
done

echo "runs: $runs x ${secs}s; iperf3 one connection (client on CPU 1); nginx 1 worker on CPU 0, wrk -t1 -c16 Connection: close on CPU 1"
printf '%-8s %11s %11s %11s %11s %10s %10s %12s\n' "workload" "none" "empty" "sightline" "no-network" "with/none" "with/empty" "with/no-net"
for w in bulk storm; do
  n=$(printf '%s\n' ${res[none,$w]} | median)
  e=$(printf '%s\n' ${res[empty,$w]} | median)
  s=$(printf '%s\n' ${res[with,$w]} | median)
  o=$(printf '%s\n' ${res[nonet,$w]} | median)
  awk -v w="$w" -v n="$n" -v e="$e" -v s="$s" -v o="$o" 'BEGIN {
    printf "%-8s %11s %11s %11s %11s %10.3f %10.3f %12.3f\n", w, n, e, s, o, s/n, s/e, s/o }'
done
echo "units: bulk Gbit/s, storm requests/s (each on a new connection)"

# Idle connections: opened while sightline runs (so it follows each), held, then measured.
[ "$idle" -gt 0 ] || exit 0
cat >"$dir/hold.py" <<'PY'
import resource, socket, sys, time
n, base = int(sys.argv[1]), int(sys.argv[2])
# Both ends of each connection are this process's: two descriptors each.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
listeners = []
for k in range(4):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", base + k)); ls.listen(4096); ls.setblocking(False); listeners.append(ls)
held = []
for i in range(n):
    c = socket.socket(); c.connect(("127.0.0.1", base + i % 4)); held.append(c)
    if i % 512 == 511 or i == n - 1:
        for ls in listeners:
            while True:
                try: held.append(ls.accept()[0])
                except BlockingIOError: break
print("held", len(held) // 2, flush=True)
time.sleep(3600)
PY
# A process may hold only as many descriptors as its hard limit allows (no CAP_SYS_RESOURCE
# to raise it): the connections are spread over as many holders as that takes.
per=$(( ($(ulimit -Hn) - 64) / 2 ))
# Listening ports below the ephemeral range, which the holders' own connections draw from.
idle_base=$((10000 + RANDOM % 10000))
start_sightline
rss0=$(awk '/VmRSS/ {print $2}' /proc/$probe_pid/status)
holders=()
left=$idle; k=0
while [ "$left" -gt 0 ]; do
  n=$(( left < per ? left : per ))
  python3 "$dir/hold.py" "$n" $((idle_base + 4 * k)) >"$dir/hold.$k.out" &
  holders+=($!)
  left=$((left - n)); k=$((k + 1))
done
holder_pid="${holders[*]}"
for _ in $(seq 1200); do
  [ "$(cat "$dir"/hold.*.out 2>/dev/null | grep -c held)" -eq "$k" ] && break; sleep 0.5
done
sleep 5
held=$(cat "$dir"/hold.*.out | awk '{s += $2} END {print s}')
rss1=$(awk '/VmRSS/ {print $2}' /proc/$probe_pid/status)
flows_kb=$(bpftool map show name FLOWS 2>/dev/null | awk '/memlock/ { for (i = 1; i <= NF; i++) if ($i == "memlock") print int($(i+1) / 1024) }' | head -1)
echo "idle: $held connections held by $k processes (both ends on this host: $((2 * held)) followed ends); sightline RSS ${rss0} KiB before, ${rss1} KiB with them; kernel flow table (FLOWS) ${flows_kb:-?} KiB charged"
kill ${holders[*]} 2>/dev/null || true
