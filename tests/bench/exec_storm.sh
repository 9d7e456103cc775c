#!/usr/bin/env bash
# An exec storm during HTTPS load: a shell loop runs 20 000 short processes (/bin/true)
# while wrk loads nginx over HTTPS, with sightline running (no selection: it looks at every
# exec). Reports sightline's CPU per exec (its CPU during the storm less its CPU for the same
# load without the storm, over the execs) and the capture rate (nginx's requests sightline
# reported ÷ the requests wrk completed) with and without the storm.
#
#   sudo tests/bench/exec_storm.sh [execs]
set -euo pipefail
cd "$(dirname "$0")/../.."
execs=${1:-20000}
conns=${CONNS:-16}
bin=${SIGHTLINE_BIN:-target/release/sightline}
[ -x "$bin" ] || cargo build --release --bin sightline
for t in nginx wrk openssl curl; do command -v $t >/dev/null || { echo "missing $t: run tests/prereqs.sh" >&2; exit 1; }; done
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing

dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
metrics=$((port + 1))
. tests/bench/nginx.sh
nginx_serve "$dir" "$port" https
cleanup() { nginx_stop "$dir"; kill "${agent_pid:-}" "${wrk_pid:-}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

"$bin" --output none --prometheus "127.0.0.1:$metrics" >"$dir/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null && break; sleep 0.1; done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agent_pid/stat"; }
# nginx's requests sightline reported so far (its server duration histogram's count).
served() {
  curl -s "http://127.0.0.1:$metrics/metrics" |
    awk '/^http_server_request_duration_seconds_count\{.*service_name="nginx"/ {n += $NF} END {print n + 0}'
}
hz=$(getconf CLK_TCK)

# wrk until SIGINT, after which it reports what it did; `reqs` is set to the requests it
# completed (not by command substitution: a subshell cannot wait for the shell's child).
wrk_start() {
  taskset -c 1 wrk -t1 -c"$conns" -d600s "https://127.0.0.1:$port/" >"$dir/wrk.out" 2>&1 &
  wrk_pid=$!
}
wrk_stop() {
  kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true; wrk_pid=
  reqs=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
}

# With the storm.
s0=$(served); t0=$(cpu_ticks); start=$(date +%s.%N)
wrk_start
taskset -c 1 bash -c "for i in \$(seq $execs); do /bin/true; done"
wrk_stop; storm_reqs=$reqs
end=$(date +%s.%N); sleep 1
storm_secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
storm_ticks=$(($(cpu_ticks) - t0)); storm_served=$(($(served) - s0))

# The same load for as long, without it.
s0=$(served); t0=$(cpu_ticks)
wrk_start
sleep "$storm_secs"
wrk_stop; quiet_reqs=$reqs
sleep 1
quiet_ticks=$(($(cpu_ticks) - t0)); quiet_served=$(($(served) - s0))

echo "exec storm: $execs runs of /bin/true in ${storm_secs}s (CPU 1, beside wrk), wrk -t1 -c$conns HTTPS to one nginx worker"
printf '%-14s %10s %10s %10s %12s\n' "" "requests" "reported" "captured" "sightline CPU"
awk -v r="$quiet_reqs" -v s="$quiet_served" -v t="$quiet_ticks" -v hz="$hz" -v d="$storm_secs" 'BEGIN {
  printf "%-14s %10d %10d %9.4f %11.1f%%\n", "no storm", r, s, s / r, t / hz / d * 100 }'
awk -v r="$storm_reqs" -v s="$storm_served" -v t="$storm_ticks" -v hz="$hz" -v d="$storm_secs" 'BEGIN {
  printf "%-14s %10d %10d %9.4f %11.1f%%\n", "storm", r, s, s / r, t / hz / d * 100 }'
awk -v a="$storm_ticks" -v b="$quiet_ticks" -v hz="$hz" -v n="$execs" 'BEGIN {
  printf "sightline CPU per exec: %.0f us\n", (a - b) / hz * 1e6 / n }'
