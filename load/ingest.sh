#!/usr/bin/env bash
# Gateway ingest benchmarks on PostgreSQL: builds the gateway and the driver in release
# mode and runs one mode of tests/examples/ingest_load.rs (closed | open | idle), printing
# figures beside the raw INSERT limit of the same PostgreSQL measured in the same run.
#   load/ingest.sh open --devices 1000 --rate 20000 --seconds 20
#   load/ingest.sh closed --devices 200 --seconds 10 --window 32
#   load/ingest.sh idle --devices 10000
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-gateway --bin wenxiao-gateway
cargo build --release -q -p wenxiao-tests --example ingest_load
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
exec target/release/examples/ingest_load --gateway-bin target/release/wenxiao-gateway "$@"
