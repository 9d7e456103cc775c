#!/usr/bin/env bash
# Symbolizer benchmark: time and peak memory of `sightline symbols` on a Go binary of about
# 100 MB (generated here: many packages of ordinary functions linked with net/http, built by Go
# 1.23 with symbols and DWARF), and on Debian's dockerd (75 MB, stripped).
#
# Usage: tests/bench/symbolize.sh [runs]   (default 5; prints the median of each)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-5}
bin=$here/target/release/sightline
[ -x "$bin" ] || (cd "$here" && cargo build --release --bin sightline)
go=/usr/lib/go-1.23/bin/go
[ -x "$go" ] || { echo "Go 1.23 is missing: run tests/prereqs.sh" >&2; exit 1; }

big=$here/target/bench-bigbin/big
if [ ! -x "$big" ]; then
  src=$here/target/bench-bigbin/src
  rm -rf "$src" && mkdir -p "$src"
  printf 'module big\n\ngo 1.19\n' >"$src/go.mod"
  # 440 packages x 250 functions: each function does a little arithmetic, formats a string and
  # calls its neighbour, so none is inlined away and every one keeps code, pclntab and DWARF.
  python3 - "$src" <<'PY'
import os, sys
src = sys.argv[1]
P, F = 440, 250
for p in range(P):
    d = os.path.join(src, f"p{p}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f.go"), "w") as f:
        f.write(f"package p{p}\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n)\n\n")
        f.write("type T struct {\n\tA int\n\tB string\n\tC []byte\n\tD map[string]int\n}\n\n")
        for i in range(F):
            nxt = f"F{i+1}(t, n-1)" if i + 1 < F else "n"
            f.write(
                f"//go:noinline\nfunc F{i}(t *T, n int) int {{\n"
                f"\tif n <= 0 {{\n\t\treturn t.A\n\t}}\n"
                f"\ts := fmt.Sprintf(\"p{p}.F{i} %d %s\", n, t.B)\n"
                f"\tif strings.Contains(s, \"x{i}\") {{\n\t\tt.D[s] = n\n\t}}\n"
                f"\tt.C = append(t.C, s[:1]...)\n"
                f"\tfor k := 0; k < n%7; k++ {{\n\t\tt.A += k * {i + 3}\n\t}}\n"
                f"\treturn {nxt} + len(s)\n}}\n\n"
            )
with open(os.path.join(src, "main.go"), "w") as f:
    f.write("package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n")
    for p in range(P):
        f.write(f"\tp{p} \"big/p{p}\"\n")
    f.write(")\n\nfunc main() {\n\tn := 0\n")
    for p in range(P):
        f.write(f"\tn += p{p}.F0(&p{p}.T{{D: map[string]int{{}}}}, 3)\n")
    f.write("\tfmt.Println(n)\n\thttp.ListenAndServe(\"127.0.0.1:0\", nil)\n}\n")
PY
  echo "building the benchmark binary (a few minutes, once)" >&2
  (cd "$src" && GOTOOLCHAIN=local GOFLAGS=-buildvcs=false "$go" build -o "$big" .)
fi

measure() {
  local target=$1 times=() rss=()
  for _ in $(seq "$runs"); do
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    out=$( { /usr/bin/time -f '%e %M' "$bin" symbols "$target" --json >/dev/null; } 2>&1 | tail -1)
    times+=("${out% *}"); rss+=("${out#* }")
  done
  local t m
  t=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  m=$(printf '%s\n' "${rss[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  printf '%-44s %6s MB  %6.2f s  %6d MiB peak RSS (median of %d, cold cache)\n' \
    "$(basename "$target")" "$(( $(stat -c %s "$target") / 1000000 ))" "$t" "$(( m / 1024 ))" "$runs"
}

measure "$big"
debs=/var/cache/sightline-tests/debs/root
[ -x "$debs/usr/sbin/dockerd" ] && measure "$debs/usr/sbin/dockerd"
