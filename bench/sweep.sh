#!/usr/bin/env bash
# A whole fine-tune sweep, graft against PyTorch + timm on the same runs (issue 10).
# Usage: make bench-sweep [TASK=ci]   (release binaries; tch when make found PyTorch)
# Runs the pipeline into an empty store, so its fine-tune stage trains every run once; the
# stage's wall time comes from its manifest. bench/sweep_torch.py then trains the same runs
# (placements, methods, seeds, data, base weights, schedule) in PyTorch and prints its own.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-ci}
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
echo "machine: $(nproc) cores; pipeline: $pipeline"
target/release/graft --store "$store" run "$pipeline" >/dev/null
graft=$(.venv/bin/python - "$store" <<'PY'
import json, os, sys
store = sys.argv[1]
for i in sorted(os.listdir(os.path.join(store, "objects"))):
    m = json.load(open(os.path.join(store, "objects", i, "manifest.json")))
    if m["stage"] == "finetune":
        print(i, m["wall_seconds"], m["extra"].get("runs", ""))
PY
)
read -r id graft_s _ <<<"$graft"
echo "graft: fine-tune stage $id: ${graft_s} s"
torch=$(.venv/bin/python bench/sweep_torch.py "$store" "$id")
echo "pytorch: $torch"
torch_s=$(.venv/bin/python -c 'import json, sys; print(json.loads(sys.argv[1])["seconds"])' "$torch")
awk -v g="$graft_s" -v t="$torch_s" 'BEGIN { printf "sweep wall time, PyTorch / graft: %.2fx\n", t / g }'
