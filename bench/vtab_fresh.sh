#!/usr/bin/env bash
# An all-fresh rerun of pipelines/vtab.toml: 19 matrix expansions of prep, probe, propose and
# fine-tune plus the report (77 stages), on a generated miniature VTAB-1k (4 classes, 6 tiny
# images each per task) and a tiny checkpoint, so the first run takes seconds; then the
# runner's time for a rerun in which every stage is fresh. What it measures is the runner
# and the stage processes' per-stage cost (expansion, checks, freshness), which a 19-task
# study multiplies.
# Usage: bash bench/vtab_fresh.sh [ROUNDS]   (release binaries: make bench builds them)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${GRAFT_BIN_DIR:-target/release}
rounds=${1:-10}
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store=$work/store

"$py" - "$work/vtab-1k" <<'PY'
import os, sys
from PIL import Image
root = sys.argv[1]
tasks = """caltech101 cifar dtd oxford_flowers102 oxford_iiit_pet svhn sun397 patch_camelyon
eurosat resisc45 diabetic_retinopathy clevr_count clevr_dist dmlab kitti dsprites_loc
dsprites_ori smallnorb_azi smallnorb_ele""".split()
for t, task in enumerate(tasks):
    d = os.path.join(root, task)
    os.makedirs(os.path.join(d, "images"))
    lists = {"train800": [], "val200": [], "test": []}
    for k in range(2):
        for i in range(6):
            img = Image.new("RGB", (12 + i, 10), (20 * t % 256, 90 * k, 25 * i))
            rel = f"images/{k}_{i}.png"
            img.save(os.path.join(d, rel))
            split = "train800" if i < 3 else "val200" if i == 3 else "test"
            lists[split].append(f"{rel} {k}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for name, lines in lists.items():
        with open(os.path.join(d, f"{name}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
PY

artifact() { "$py" -c 'import json, sys; print(json.loads(sys.stdin.read())["artifact"])'; }
data=$("$bin/graft-prep" --store "$store" --json -p source=procedural -p task=source \
  -p image_size=16 -p train=32 -p val=8 -p test=8 | artifact)
base=$("$bin/graft-pretrain" --store "$store" --json -p 'preset="vit-cpu-tiny"' -p epochs=1 \
  -i "dataset=$data" | artifact)
ckpt=$store/objects/$base/model.safetensors

sets=(
  -S prep.image_size=16 -S 'propose.budgets=[1]'
  -S 'propose.heuristics=[{ name = "gga", score = "rank" }, { name = "single-sweep", kinds = ["parallel"] }]'
  -S 'finetune.baselines=["linear-probe"]' -S finetune.jobs=2
  -S "vars.checkpoint=\"$ckpt\""
  -S 'probe.preset="vit-cpu-tiny"' -S 'probe.device="cpu"' -S probe.batch=4 -S probe.batches=1
  -S probe.head_epochs=1
  -S 'finetune.preset="vit-cpu-tiny"' -S 'finetune.device="cpu"' -S 'finetune.seeds=[0]'
  -S finetune.epochs=1 -S finetune.warmup_epochs=0 -S finetune.batch=8
)
export VTAB_DIR=$work/vtab-1k
t0=$(date +%s.%N)
"$bin/graft" --store "$store" run vtab "${sets[@]}" > "$work/first.out" 2>&1
t1=$(date +%s.%N)
echo "machine: $(nproc) cores; first run of the 77 stages: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"

times=()
for _ in $(seq "$rounds"); do
  "$bin/graft" --store "$store" run vtab "${sets[@]}" > "$work/rerun.out"
  if grep -qE '^\S+\s+ran\s' "$work/rerun.out"; then echo "a stage ran on the rerun"; exit 1; fi
  times+=("$(awk '/^done in/ { print $3 }' "$work/rerun.out")")
done
echo "stages: $(grep -cE '^\S+\s+fresh\s' "$work/rerun.out") fresh of $(grep -cE '^\S+\s+(fresh|ran)\s' "$work/rerun.out")"
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$rounds" '
  { t[NR] = $1; s += $1 }
  END { printf "all-fresh rerun (graft run, %d rounds): median %.3f s, min %.3f s, max %.3f s, mean %.3f s\n",
        n, t[int((n + 1) / 2)], t[1], t[n], s / n }'
