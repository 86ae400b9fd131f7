#!/usr/bin/env bash
# Console benchmark: a PostgreSQL store of ROWS transactions (default 10,000,000) over DAYS
# business days (default 10; the past ones cleared and approved), a gateway on it, then each
# console page and endpoint under CLIENTS concurrent clients (default 4) for SECONDS each
# (default 10): p50, p99, max latency and requests/s per route.
#   load/console.sh [ROWS] [DAYS] [CLIENTS] [SECONDS]
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-tests --example console_bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
RUST_LOG="${RUST_LOG:-warn}" exec target/release/examples/console_bench "$@"
