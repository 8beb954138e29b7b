#!/usr/bin/env bash
# Pipeline overhead and prep throughput on the embedded default, with release binaries.
# Usage: make bench   (builds target/release first)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/graft
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"

# The default's two prep stages alone: the runner's own overhead without training.
pipe="$store/prep-only.toml"
cat > "$pipe" <<'TOML'
description = "the embedded default's prep stages"
[stages.prep-source]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 32, seed = 0, train = 4000, val = 500, test = 500 }
[stages.prep]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 32, seed = 1, train = 800, val = 200, test = 1000 }
TOML
t0=$(now); "$bin" --store "$store" run "$pipe" >/dev/null; t1=$(now)
echo "cold run of the default's prep stages (5000 + 2000 procedural images at 32 px): $(elapsed "$t0" "$t1") s"

runs=20
t0=$(now)
for _ in $(seq $runs); do "$bin" --store "$store" run "$pipe" >/dev/null; done
t1=$(now)
echo "fresh rerun, mean of $runs: $(awk -v a="$t0" -v b="$t1" -v n=$runs 'BEGIN { printf "%.3f", (b - a) / n }') s"

t0=$(now)
for _ in $(seq $runs); do "$bin" --version >/dev/null; done
t1=$(now)
echo "process start-up alone (graft --version), mean of $runs: $(awk -v a="$t0" -v b="$t1" -v n=$runs 'BEGIN { printf "%.4f", (b - a) / n }') s"

for size in 32 64 224; do
  t0=$(now)
  target/release/graft-prep --store "$store" -p source=procedural -p task=textures -p image_size=$size \
    -p train=800 -p val=200 -p test=1000 -p seed=$size >/dev/null
  t1=$(now)
  s=$(elapsed "$t0" "$t1")
  echo "prep 2000 procedural images at $size px: $s s ($(awk -v s="$s" 'BEGIN { printf "%.0f", 2000 / s }') images/s)"
done
