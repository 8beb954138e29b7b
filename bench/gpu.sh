#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md on a machine with no Rust toolchain: the vit-b16 probe and
# the adapter fine-tuning step on CUDA, graft (release binaries built elsewhere) against
# PyTorch eager on the same shapes (bench/torch_vit.py). One JSON line per measurement.
#
#   bash bench/gpu.sh [BIN_DIR] [BATCH]        (defaults: target/release, 64)
#   PRESET=vit-cpu-tiny DEVICE=cpu bash bench/gpu.sh target/release 8    (a dry run anywhere)
#
# BIN_DIR holds graft-prep, graft-probe (tch build) and examples/step_bench (tch build), made
# where Rust is by
#   make gpu-binaries PYTHON=/path/to/python   (graft linked against that python's torch)
# The tch binaries use LibTorch from the PyTorch of $PYTHON (default python3) on this
# machine, which must be the version they were built against (BIN_DIR/torch-version):
# LibTorch has no stable ABI across versions. $PYTHON also needs timm and safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
batch=${2:-64}
py=${PYTHON:-python3}
preset=${PRESET:-vit-b16}
device=${DEVICE:-cuda}

[ "$device" = cpu ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
have=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
built=$(cat "$bin/torch-version" 2>/dev/null || echo unknown)
echo "torch here: $have (CUDA $("$py" -c 'import torch; print(torch.version.cuda)')); graft built against: $built"
if [ "$have" != "$built" ]; then
  echo "the tch binaries in $bin were linked against PyTorch $built, but $py has $have:" >&2
  echo "rebuild them against this version (make gpu-binaries PYTHON=... where Rust is)" >&2
  exit 1
fi
# The binaries' rpath names the build machine's LibTorch; here it is this python's.
torch_lib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The adapter fine-tuning step: adapters on the 2L parallel edges, r = 8, AdamW, backbone frozen.
"$bin/examples/step_bench" "$preset" "$batch" adapters "$device"
"$py" bench/torch_vit.py --graft "$preset" --mode adapters --batch "$batch" --classes 12 --device "$device"

# The probe: the preset with random weights in timm's names, procedural images, all n² edges.
size=$("$py" bench/gpu_base.py "$preset" "$work/base.safetensors")
store=$work/store
"$bin/graft-prep" --store "$store" --json -p source=procedural -p task=textures \
  -p image_size="$size" -p seed=1 -p train=256 -p val=64 -p test=64 >"$work/prep.json"
dataset=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["artifact"])' "$work/prep.json")
start=$(date +%s.%N)
"$bin/graft-probe" --store "$store" --json -i "dataset=$dataset" -p "checkpoint=$work/base.safetensors" \
  -p preset="$preset" -p device="$device" -p batch="$batch" -p batches=4 -p head=random >"$work/probe.json"
end=$(date +%s.%N)
probe=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["artifact"])' "$work/probe.json")
"$py" bench/gpu_base.py --report "$store/objects/$probe" "$preset" "$device" "$batch" 4 "$start" "$end"
"$py" bench/torch_vit.py --graft "$preset" --mode probe --batch "$batch" --classes 12 --device "$device"
