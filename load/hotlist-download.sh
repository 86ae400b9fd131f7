#!/usr/bin/env bash
# Hot-list download benchmark: a gateway on PostgreSQL with CARDS listed cards (default
# 200,000); 8 terminals reconnect with version 0 ROUNDS times each (default 5) and
# download the full list over mTLS while a POS sends TXNs. Prints download times and the
# POS's ack latency with and without the downloads.
#   load/hotlist-download.sh [CARDS] [ROUNDS]
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-tests --example hotlist_download
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
RUST_LOG="${RUST_LOG:-warn}" exec target/release/examples/hotlist_download "$@"
