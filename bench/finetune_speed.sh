#!/usr/bin/env bash
# Fine-tuning step speed of one preset at one batch size: graft on flex, graft on tch, and
# PyTorch on the same shapes (adapters on the 2L parallel edges, r = 8, AdamW step).
# Usage: bash bench/finetune_speed.sh [preset] [batch] [mode]   (make bench runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-vit-cpu-small}
batch=${2:-64}
mode=${3:-adapters}
torch_lib=$(.venv/bin/python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
cargo build -q --release -p graft-train --example step_bench
cp target/release/examples/step_bench target/release/examples/step_bench_flex
LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH" LD_LIBRARY_PATH="$torch_lib" \
  cargo build -q --release -p graft-train --example step_bench --no-default-features --features tch
target/release/examples/step_bench_flex "$preset" "$batch" "$mode"
LD_LIBRARY_PATH="$torch_lib" target/release/examples/step_bench "$preset" "$batch" "$mode"
.venv/bin/python bench/torch_vit.py --graft "$preset" --mode "$mode" --batch "$batch" --classes 12
