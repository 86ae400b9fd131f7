#!/usr/bin/env bash
# Runs one load scenario (as load/run.sh does) while `perf` samples the first gateway
# process, and writes what it found as a flame graph (SVG) with inferno.
#   load/profile.sh load/scenarios/reconnect-storm.toml load/profiles/storm-after.svg
#   load/profile.sh SCENARIO OUT.svg --gateway-bin /tmp/gateway-before   # another build
# Any argument after OUT.svg goes to `wenxiao-sim bench`. Sampling: 99 Hz, call graphs
# unwound from DWARF (release builds have no frame pointers; 8 KiB of stack a sample).
# Needs perf (Debian's linux-perf) and inferno (`cargo install inferno`).
# PostgreSQL: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: load/profile.sh SCENARIO.toml OUT.svg [bench args]" >&2; exit 2; }
scenario=$1 out=$2
shift 2
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 2; }
command -v inferno-flamegraph >/dev/null || { echo "inferno is not installed: cargo install inferno" >&2; exit 2; }
cargo build --release -q -p wenxiao-gateway --bin wenxiao-gateway
cargo build --release -q -p wenxiao-simulator --bin wenxiao-sim
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/wenxiao-sim bench --scenario "$scenario" "$@" > "$work/bench.log" 2>&1 &
bench=$!
# The bench prints the gateway's pid once it listens.
pid=
for _ in $(seq 1 600); do
    pid=$(grep -o 'gateway pid [0-9]*' "$work/bench.log" | head -1 | grep -o '[0-9]*$' || true)
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { cat "$work/bench.log"; echo "the gateway did not start" >&2; exit 1; }
perf record -F 99 --call-graph dwarf,8192 -p "$pid" -o "$work/perf.data" > "$work/perf.log" 2>&1 &
perf_pid=$!
wait "$bench" || true
kill -INT "$perf_pid" 2>/dev/null || true
wait "$perf_pid" || true
grep -v '^run ' "$work/bench.log"
mkdir -p "$(dirname "$out")"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf > "$work/folded"
inferno-flamegraph --minwidth 0.5 --title "$(basename "$scenario" .toml): gateway on-CPU" < "$work/folded" > "$out"
cp "$work/folded" "/tmp/$(basename "$out" .svg).folded"
echo "flame graph: $out ($(wc -l < "$work/folded") stacks; folded stacks in /tmp/$(basename "$out" .svg).folded)"
# For RESULTS.md: on-CPU share by thread, and the frames with the most self time (`head`
# closes the pipe early: no pipefail from here).
set +o pipefail
echo "-- by thread"
awk '{n=$NF; split($1, f, ";"); w[f[1]]+=n; t+=n} END {for (g in w) printf "%5.1f %%  %s\n", 100*w[g]/t, g}' "$work/folded" | sort -rn | head -8
echo "-- self time"
awk '{n=$NF; $NF=""; k=split($0, f, ";"); g=f[k]; gsub(/^ +| +$/, "", g); w[g]+=n; t+=n} END {for (g in w) printf "%5.1f %%  %s\n", 100*w[g]/t, g}' "$work/folded" | sort -rn | head -25
