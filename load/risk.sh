#!/usr/bin/env bash
# Fraud-rule benchmark: the rule engine fed FACTS (default 2,000,000) city-mix
# transactions at a simulated RATE per second (default 20,000); prints the latency
# quantiles of one evaluation, one core's throughput, and the alerts raised.
#   load/risk.sh [FACTS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wenxiao-tests --example risk_bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%F)"
exec target/release/examples/risk_bench "$@"
