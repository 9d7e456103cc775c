#!/usr/bin/env bash
# Every test sightline has, as root on Debian 12: installs what is missing, builds once in
# release (the e2e tests run the release binary, and unit tests share its artifacts), then runs
# unit, property and end-to-end tests. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="${HOME:-/root}/.cargo/bin:$PATH"
"./tests/prereqs.sh" --tests

echo "== format and lints"
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings

echo "== build"
cargo build --release --bin sightline

echo "== tests (unit, property, end to end)"
# The e2e tests load probes that see the whole host; one at a time keeps them independent.
log=$(mktemp)
set +e
cargo test --release -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo ends on its last binary's, often doc tests' 0).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
