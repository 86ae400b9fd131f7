#!/usr/bin/env bash
# Takeover benchmark: two gateway nodes on one PostgreSQL (a fresh schema), DEVICES devices
# (default 100) each moved MOVES times (default 100) from one node to the other over new
# mTLS connections: takeover and event latency, and every TXN stored exactly once.
#   load/takeover.sh [DEVICES] [MOVES]
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-tests --example takeover_bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
RUST_LOG="${RUST_LOG:-warn}" exec target/release/examples/takeover_bench "$@"
