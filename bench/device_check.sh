#!/usr/bin/env bash
# On a GPU machine: graft's device check (tch example binary, if given) and PyTorch+timm's
# vit-b16 training step at the same batch, one JSON line each.
#   bash bench/device_check.sh [path/to/device_check] [batch]
# PYTHON (default python3) names the interpreter whose PyTorch is used, as with `make PYTHON=...`.
set -uo pipefail
bin=${1:-target/release/examples/device_check}
batch=${2:-64}
python3() { "${PYTHON:-python3}" "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
echo "python torch: $(python3 -c 'import torch; print(torch.__version__)')"
if [ -x "$bin" ]; then
  LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}" "$bin" cuda "$batch" || echo "graft device_check failed (exit $?)"
fi
python3 bench/torch_vit.py --model vit_tiny_patch16_224 --batch "$batch" --device cuda
python3 bench/torch_vit.py --model vit_base_patch16_224 --batch "$batch" --device cuda
