#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md on a machine with no Rust toolchain: the vit-b16 probe and
# the adapter fine-tuning step on CUDA, graft (release binaries built elsewhere) against
# PyTorch eager on the same shapes (bench/torch_vit.py). One JSON line per measurement.
#
#   bash bench/gpu.sh [BIN_DIR] [BATCH]        (defaults: target/release, 64)
#   PRESET=vit-cpu-tiny DEVICE=cpu bash bench/gpu.sh target/release 8    (a CPU run anywhere)
#   DRY=1 bash bench/gpu.sh [BIN_DIR] [BATCH]  the checks below, then what it would run; stops
#                                              before the first CUDA call (nvidia-smi included)
#
# BIN_DIR holds graft-prep, graft-probe (tch build) and examples/step_bench (tch build), made
# where Rust is by
#   make gpu-binaries PYTHON=/path/to/python   (graft linked against that python's torch)
# which also writes BIN_DIR/torch-version: that torch's full version and CUDA version
# (`2.9.0+cu128 12.8`). The tch binaries use LibTorch from the PyTorch of $PYTHON (default
# python3) on this machine, which must be the version they were built against (LibTorch has
# no stable ABI across versions); on cuda both that torch and the one they were linked
# against must be CUDA builds (a binary linked against a CPU-only LibTorch never loads
# libtorch_cuda, and fails at its first CUDA tensor). $PYTHON also needs timm and safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
batch=${2:-64}
py=${PYTHON:-python3}
preset=${PRESET:-vit-b16}
device=${DEVICE:-cuda}
dry=${DRY:-}

die() { echo "gpu.sh: $*" >&2; exit 1; }
rebuild="rebuild them where Rust is: make gpu-binaries PYTHON=<a python with this machine's torch>"

# torch's version, its CUDA version (None for a CPU-only build) and its lib directory, read
# from torch/version.py: importing torch takes seconds, and nothing here touches CUDA.
torch_facts='import importlib.util as u, os, runpy
spec = u.find_spec("torch")
if spec is None:
    raise SystemExit("No module named torch")
d = os.path.dirname(spec.origin)
v = runpy.run_path(os.path.join(d, "version.py"))
print(v["__version__"], v["cuda"], os.path.join(d, "lib"))'
read -r have have_cuda torch_lib < <("$py" -c "$torch_facts") \
  || die "$py has no torch (set PYTHON to an interpreter with PyTorch)"
[ -f "$bin/torch-version" ] || die "$bin/torch-version is missing: the binaries' torch is unknown; $rebuild"
read -r built built_cuda <"$bin/torch-version" || true
echo "torch here: $have (CUDA $have_cuda) from $py; graft built against: $built (CUDA ${built_cuda:-unknown})"
[ "${have%%+*}" = "${built%%+*}" ] \
  || die "the tch binaries in $bin were linked against PyTorch $built, but $py has $have; $rebuild"
if [ "$device" != cpu ]; then
  [ "$have_cuda" != None ] \
    || die "$py has PyTorch $have, a build without CUDA; DEVICE=$device needs a CUDA build of torch"
  case ${built_cuda:-} in
    None) die "the tch binaries in $bin were linked against PyTorch $built, a build without CUDA: they cannot use DEVICE=$device; $rebuild" ;;
    "") die "$bin/torch-version ($built) does not say whether that torch has CUDA (an older make gpu-binaries wrote it); $rebuild" ;;
  esac
fi
for b in graft-prep graft-probe examples/step_bench; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing; make gpu-binaries builds it"
done
if [ -n "$dry" ]; then
  echo "dry run: checks passed; would run on $device:"
  [ "$device" = cpu ] || echo "  nvidia-smi"
  echo "  LD_LIBRARY_PATH=$torch_lib $bin/examples/step_bench $preset $batch adapters $device"
  echo "  $py bench/torch_vit.py --graft $preset --mode adapters --batch $batch --classes 12 --device $device"
  echo "  $bin/graft-prep, then $bin/graft-probe -p preset=$preset -p device=$device -p batch=$batch (4 batches)"
  echo "  $py bench/torch_vit.py --graft $preset --mode probe --batch $batch --classes 12 --device $device"
  exit 0
fi
[ "$device" = cpu ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The binaries' rpath names the build machine's LibTorch; here it is this python's.
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
