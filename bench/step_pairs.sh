#!/usr/bin/env bash
# The adapter fine-tuning step, graft (tch) against PyTorch + timm on the same shapes, in
# alternating rounds: this machine's speed drifts by several percent over minutes, so one
# run of each says little. Each round runs graft's step_bench, then bench/torch_vit.py, one
# intra-op thread each (the fine-tune stage's workers run one), 50 timed steps after 3
# warm-up steps; the script prints each side's median, fastest and slowest round and the
# ratio of the medians.
# Usage: bash bench/step_pairs.sh [preset] [batch] [rounds]   (make bench-step runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-vit-cpu-p8}
batch=${2:-64}
rounds=${3:-10}
torch_lib=$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "lib"))')
LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH" LD_LIBRARY_PATH="$torch_lib" \
  cargo build -q --release -p graft-train --example step_bench --no-default-features --features tch
export OMP_NUM_THREADS=1
for _ in $(seq "$rounds"); do
  echo "graft $(LD_LIBRARY_PATH="$torch_lib" target/release/examples/step_bench "$preset" "$batch" adapters cpu 50)"
  echo "pytorch $(.venv/bin/python bench/torch_vit.py --graft "$preset" --mode adapters --batch "$batch" --classes 12 --threads 1 --steps 50)"
done | .venv/bin/python -c '
import json, statistics, sys
runs = {"graft": [], "pytorch": []}
for line in sys.stdin:
    side, record = line.split(" ", 1)
    r = json.loads(record)
    runs[side].append((r["step_s"] * 1e3, r["forward_s"] * 1e3, r["backward_s"] * 1e3, r["optim_s"] * 1e3))
med = {}
for side, rs in runs.items():
    m = [statistics.median(x[i] for x in rs) for i in range(4)]
    med[side] = m[0]
    steps = sorted(x[0] for x in rs)
    print(f"{side:8s} step median {m[0]:.1f} ms (rounds {steps[0]:.1f} to {steps[-1]:.1f}); forward {m[1]:.1f}, backward {m[2]:.1f}, AdamW {m[3]:.1f} ms")
ratio = med["pytorch"] / med["graft"]
print(f"graft / PyTorch speed (ratio of medians): {ratio:.2f}")
'
