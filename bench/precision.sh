#!/usr/bin/env bash
# The adapter fine-tuning step (MODE=step, the default) or the probe's passes (MODE=probe) in
# f32 and bf16, graft (tch, `Vit::with_precision`) against PyTorch + timm eager and under
# torch.autocast, on the same shapes, in alternating rounds.
#   step:  the preset's 2L parallel adapters, r = 8, backbone frozen, AdamW on the adapters
#          and head; `steps` timed steps per round (step_bench, torch_vit.py --mode adapters).
#   probe: per batch, one forward with a tap at every residual node, one backward and the
#          batch's share of G = Δᵀ X for all n² edges, summed in place over `steps` batches
#          as the stage sums them, after a one-batch probe as warm-up; graft reads G back to
#          the host once (probe_bench), PyTorch's G is there already (torch_vit.py --mode
#          probe). The SVDs are not timed.
# LibTorch runs its native CPU kernels here (the examples do not pin them: bf16 needs
# AVX-512 BF16 or AMX where the CPU has them). Each round runs the four, in the same order;
# the script prints each one's median, fastest and slowest round and the ratios of medians.
# Usage: [MODE=probe] bash bench/precision.sh [preset] [batch] [rounds] [steps] [threads]
#   (make bench-precision runs the step: vit-b16, batch 16, 5 rounds of 3 timed steps, 2
#   threads; make bench-precision-probe the probe: vit-b16, batch 4, 5 rounds of 2 batches)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${MODE:-step}
preset=${1:-vit-b16}
batch=${2:-16}
rounds=${3:-5}
steps=${4:-3}
threads=${5:-2}
case $mode in
  step) crate=graft-train example=step_bench torch_mode=adapters ;;
  probe) crate=graft-probe example=probe_bench torch_mode=probe ;;
  *) echo "MODE=$mode: step or probe" >&2; exit 1 ;;
esac
torch_lib=$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "lib"))')
LIBTORCH_USE_PYTORCH=1 PATH="$PWD/.venv/bin:$PATH" LD_LIBRARY_PATH="$torch_lib" \
  cargo build -q --release -p "$crate" --example "$example" --no-default-features --features tch
export OMP_NUM_THREADS=$threads
for _ in $(seq "$rounds"); do
  for p in f32 bf16; do
    case $mode in
      step) args=("$preset" "$batch" adapters cpu "$steps" "$p") ;;
      probe) args=("$preset" "$batch" cpu 1 "$steps" "$p") ;;
    esac
    echo "graft-$p $(LD_LIBRARY_PATH="$torch_lib" "target/release/examples/$example" "${args[@]}")"
  done
  for p in none bf16; do
    echo "pytorch-$p $(.venv/bin/python bench/torch_vit.py --graft "$preset" --mode "$torch_mode" --batch "$batch" --classes 12 --threads "$threads" --steps "$steps" --warmup 2 --autocast "$p")"
  done
done | .venv/bin/python -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    side, record = line.split(" ", 1)
    r = json.loads(record)
    runs.setdefault(side, []).append([r.get(k, 0.0) for k in ("step_s", "forward_s", "backward_s", "optim_s")])
med = {}
for side, rs in runs.items():
    m = [statistics.median(x[i] for x in rs) for i in range(4)]
    med[side] = m[0]
    steps = sorted(x[0] for x in rs)
    parts = f"; forward {m[1]:.3f}, backward {m[2]:.3f}, AdamW {m[3]:.3f} s" if m[2] else ""
    print(f"{side:14s} median {m[0]:.3f} s (rounds {steps[0]:.3f} to {steps[-1]:.3f}){parts}")
pt, pt_bf16, gr, gr_bf16 = (med[k] for k in ("pytorch-none", "pytorch-bf16", "graft-f32", "graft-bf16"))
print(f"graft f32 / PyTorch f32 speed (ratio of medians): {pt / gr:.2f}")
print(f"graft bf16 / PyTorch autocast bf16 speed: {pt_bf16 / gr_bf16:.2f}")
print(f"graft bf16 / graft f32 speed: {gr / gr_bf16:.2f}; PyTorch autocast / eager: {pt / pt_bf16:.2f}")
'
