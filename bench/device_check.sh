#!/usr/bin/env bash
# On a GPU machine: graft's device check (tch example binary, if given) and PyTorch+timm's
# vit-b16 training step at the same batch, one JSON line each.
#   bash bench/device_check.sh [path/to/device_check] [batch]
#   DRY=1 bash bench/device_check.sh ...   checks the interpreter's PyTorch (CUDA build) and
#                                          the binary, prints what it would run, and stops
#                                          before the first CUDA call (nvidia-smi included)
# PYTHON (default python3) names the interpreter whose PyTorch is used, as with `make PYTHON=...`.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-target/release/examples/device_check}
batch=${2:-64}
py=${PYTHON:-python3}
dry=${DRY:-}

die() { echo "device_check.sh: $*" >&2; exit 1; }

# torch's version, its CUDA version (None for a CPU-only build) and its lib directory, read
# from torch/version.py: importing torch takes seconds, and nothing here touches CUDA.
torch_facts='import importlib.util as u, os, runpy
spec = u.find_spec("torch")
if spec is None:
    raise SystemExit("No module named torch")
d = os.path.dirname(spec.origin)
v = runpy.run_path(os.path.join(d, "version.py"))
print(v["__version__"], v["cuda"], os.path.join(d, "lib"))'
read -r version cuda torch_lib < <("$py" -c "$torch_facts") \
  || die "$py has no torch (set PYTHON to an interpreter with PyTorch)"
echo "python torch: $version (CUDA $cuda) from $py"
[ "$cuda" != None ] \
  || die "$py has PyTorch $version, a build without CUDA: the steps below run on cuda (install a CUDA build of torch, or set PYTHON)"
graft=()
if [ -x "$bin" ]; then
  graft=("$bin" cuda "$batch")
else
  echo "no graft device_check binary at $bin: PyTorch's steps only"
fi
models=(vit_tiny_patch16_224 vit_base_patch16_224)
if [ -n "$dry" ]; then
  echo "dry run: would run nvidia-smi, then"
  [ ${#graft[@]} = 0 ] || echo "  LD_LIBRARY_PATH=$torch_lib ${graft[*]}"
  for m in "${models[@]}"; do echo "  $py $here/torch_vit.py --model $m --batch $batch --device cuda"; done
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ${#graft[@]} -gt 0 ]; then
  LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}" "${graft[@]}" || echo "graft device_check failed (exit $?)"
fi
for m in "${models[@]}"; do
  "$py" "$here/torch_vit.py" --model "$m" --batch "$batch" --device cuda
done
