#!/usr/bin/env bash
# Throughput overhead of sightline on nginx over HTTPS (keep-alive, tiny responses), measured
# on the same machine in one run: no probes, empty probes on the same OpenSSL points
# (bpftrace), and sightline. Also sightline's peak and steady RSS under that load. Then the
# minimal floor, what any agent needs (empty probes at SSL_write's entry and SSL_read's entry
# and return, and their _ex forms), against sightline exporting its spans over OTLP (to a
# receiver that accepts and drops them, on the load generator's core).
#
#   sudo tests/bench/overhead.sh [seconds-per-run] [runs]
#
# Prints a table; the README quotes its figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
runs=${2:-3}
conns=${CONNS:-16}
# SIGHTLINE_BIN compares another build (say, the previous commit's) in the same run.
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline
for t in nginx wrk bpftrace openssl; do command -v $t >/dev/null || { echo "missing $t: run tests/prereqs.sh" >&2; exit 1; }; done
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

libssl=$(ldconfig -p | awk '/libssl.so.3 .*x86-64/ {print $NF; exit}')
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
. tests/bench/nginx.sh
nginx_serve "$dir" "$port" https
cleanup() { nginx_stop "$dir"; kill "${probe_pid:-}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

measure() {
  taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "https://127.0.0.1:$port/" 2>/dev/null |
    awk '/Requests\/sec/ {print $2}'
}

. tests/bench/stats.sh

empty_probes() {
  local p=""
  for f in SSL_read SSL_write SSL_read_ex SSL_write_ex; do
    p="$p uprobe:$libssl:$f {} uretprobe:$libssl:$f {}"
  done
  echo "$p"
}

minimal_probes() {
  local p=""
  for f in SSL_read SSL_read_ex; do
    p="$p uprobe:$libssl:$f {} uretprobe:$libssl:$f {}"
  done
  for f in SSL_write SSL_write_ex; do
    p="$p uprobe:$libssl:$f {}"
  done
  echo "$p"
}

# An OTLP/HTTP receiver that answers every export with an empty (valid) response.
sink_port=$((port + 1))
taskset -c 1 python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
' "$sink_port" &
sink_pid=$!
trap 'cleanup; kill "$sink_pid" 2>/dev/null || true' EXIT

none=(); empty=(); with=(); minimal=(); exported=(); rss_peak=0; rss_steady=0
for i in $(seq "$runs"); do
  none+=("$(measure)")

  bpftrace -e "$(empty_probes)" >/dev/null 2>&1 &
  probe_pid=$!
  sleep 3
  empty+=("$(measure)")
  kill -INT "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=

  "$bin" --output none >/dev/null 2>&1 &
  probe_pid=$!
  sleep 3
  cpu0=$(awk '{print $14 + $15}' "/proc/$probe_pid/stat")
  with+=("$(measure)")
  cpu1=$(awk '{print $14 + $15}' "/proc/$probe_pid/stat")
  cpu_pct=$(awk -v a="$cpu0" -v b="$cpu1" -v s="$secs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz / s * 100}')
  steady=$(awk '/VmRSS/ {print $2}' "/proc/$probe_pid/status")
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$probe_pid/status")
  kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
  [ "$peak" -gt "$rss_peak" ] && rss_peak=$peak
  [ "$steady" -gt "$rss_steady" ] && rss_steady=$steady

  bpftrace -e "$(minimal_probes)" >/dev/null 2>&1 &
  probe_pid=$!
  sleep 3
  minimal+=("$(measure)")
  kill -INT "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=

  OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port" "$bin" --output none >/dev/null 2>&1 &
  probe_pid=$!
  sleep 3
  exported+=("$(measure)")
  kill -TERM "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=
done

echo "runs: $runs x ${secs}s, wrk -t1 -c$conns, nginx 1 worker pinned to CPU 0, wrk on CPU 1"
three_way_table "empty probes (bpftrace)"
echo "sightline CPU under load: ${cpu_pct}% of one core (last run)"
echo "sightline RSS: peak $((rss_peak / 1024)) MiB, steady $((rss_steady / 1024)) MiB (under load)"
n=$(printf '%s\n' "${none[@]}" | median)
m=$(printf '%s\n' "${minimal[@]}" | median)
x=$(printf '%s\n' "${exported[@]}" | median)
printf '%-26s %12s\n' "minimal floor (bpftrace)" "$m" "sightline, OTLP export on" "$x"
awk -v m="$m" -v x="$x" -v n="$n" 'BEGIN {
  printf "exporting/minimal-floor %.3f\nminimal-floor/none      %.3f\n", x/m, m/n }'
