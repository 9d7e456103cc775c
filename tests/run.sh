#!/usr/bin/env bash
# Every test sightline has, as root on Debian 12: installs what is missing, builds once in
# release (the e2e tests run the release binary, and unit tests share its artifacts), then runs
# unit, property and end-to-end tests. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

"./tests/prereqs.sh"

export PATH="$HOME/.cargo/bin:$PATH"
echo "== format and lints"
cargo fmt --all --check
cargo clippy --release --all-targets -- -D warnings

echo "== build"
cargo build --release --bin sightline

echo "== tests (unit, property, end to end)"
# The e2e tests load probes that see the whole host; one at a time keeps them independent.
cargo test --release -- --test-threads=1
