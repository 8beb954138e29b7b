#!/usr/bin/env bash
# A whole fine-tune sweep, graft against PyTorch + timm on the same runs (issue 10).
# Usage: make bench-sweep [TASK=ci]   (release binaries; tch when make found PyTorch)
# Runs the pipeline into an empty store, so its fine-tune stage trains every run once; the
# stage's wall time comes from its manifest. bench/sweep_torch.py then trains the same runs
# (placements, methods, seeds, data, base weights, schedule) in PyTorch and prints its own.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-ci}
# BENCH_STORE: a store this pipeline already ran into, and nothing else did (its fine-tune
# manifests keep the wall time of the run that made them); an empty temporary one otherwise.
if [ -n "${BENCH_STORE:-}" ]; then
  store=$BENCH_STORE
else
  store=$(mktemp -d)
  trap 'rm -rf "$store"' EXIT
fi
echo "machine: $(nproc) cores; pipeline: $pipeline"
target/release/graft --store "$store" run "$pipeline" >/dev/null
# Every fine-tune stage of the pipeline (the default has one per target), in turn.
graft_total=0
torch_total=0
while read -r id graft_s runs; do
  echo "graft: fine-tune stage $id: ${graft_s} s, $runs runs"
  torch=$(.venv/bin/python bench/sweep_torch.py "$store" "$id")
  echo "pytorch: $torch"
  torch_s=$(.venv/bin/python -c 'import json, sys; print(json.loads(sys.argv[1])["seconds"])' "$torch")
  awk -v g="$graft_s" -v t="$torch_s" 'BEGIN { printf "  PyTorch / graft: %.2fx\n", t / g }'
  graft_total=$(awk -v a="$graft_total" -v b="$graft_s" 'BEGIN { print a + b }')
  torch_total=$(awk -v a="$torch_total" -v b="$torch_s" 'BEGIN { print a + b }')
done < <(.venv/bin/python - "$store" <<'PY'
import json, os, sys
store = sys.argv[1]
for i in sorted(os.listdir(os.path.join(store, "objects"))):
    path = os.path.join(store, "objects", i, "manifest.json")
    if not os.path.exists(path):
        continue
    m = json.load(open(path))
    if m["stage"] == "finetune":
        print(i, m["wall_seconds"], m["extra"].get("runs", ""))
PY
)
awk -v g="$graft_total" -v t="$torch_total" \
  'BEGIN { printf "sweep wall time, all fine-tune stages: graft %.1f s, PyTorch %.1f s, PyTorch / graft: %.2fx\n", g, t, t / g }'
