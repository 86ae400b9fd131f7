#!/usr/bin/env bash
# Clearing benchmark: one city day of ROWS transactions (default 10,000,000) in a fresh
# PostgreSQL schema, cleared with `clear_day`; prints the time of each step and the total.
#   load/clearing.sh [ROWS]
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-tests --example clearing_bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
RUST_LOG="${RUST_LOG:-wenxiao_gateway=debug}" exec target/release/examples/clearing_bench "$@"
