#!/usr/bin/env bash
# Runs one load scenario (load/scenarios/*.toml) against a gateway process on PostgreSQL
# and prints the figures beside the raw batched INSERT limit of that PostgreSQL measured
# in the same run. Builds the gateway and the simulator in release mode first.
#   load/run.sh load/scenarios/evening-peak.toml
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: load/run.sh SCENARIO.toml [--keep]" >&2; exit 2; }
scenario=$1; shift
cargo build --release -q -p wenxiao-gateway --bin wenxiao-gateway
cargo build --release -q -p wenxiao-simulator --bin wenxiao-sim
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
exec target/release/wenxiao-sim bench --scenario "$scenario" "$@"
