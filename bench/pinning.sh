#!/usr/bin/env bash
# What pinning LibTorch's CPU kernels to AVX2 costs (issue 27; graft_backend::numerics).
# Usage: make bench-pinning [ROUNDS=2]   (release tch binaries)
# 1. The embedded default's pretrain stage (its prep-source made once), ROUNDS alternating
#    rounds of graft's default (pinned) and GRAFT_CPU_KERNELS=native, each into a copy of
#    the store holding only the source data.
# 2. The whole embedded default, once pinned and once native, each into an empty store:
#    every stage's wall time, from the runner's table.
# Prints the machine's CPU, whether it has AVX-512, and each figure.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
bin=target/release/graft
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), AVX-512: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# The default's prep-source and pretrain stages, as a pipeline of their own.
pipe="$work/pretrain.toml"
section() { # the tables [stages.<name>] and [stages.<name>.*] of the default
  awk -v s="$1" '/^\[/ { p = (index($0, "[stages." s "]") == 1 || index($0, "[stages." s ".") == 1) } p' pipelines/default.toml
}
section prep-source > "$work/source.part"
section pretrain > "$work/pretrain.part"
{ echo 'description = "the embedded default'"'"'s pretrain"'; cat "$work/source.part" "$work/pretrain.part"; } > "$pipe"
{ echo 'description = "the embedded default'"'"'s source data"'; cat "$work/source.part"; } > "$work/source.toml"
"$bin" --store "$work/source" run "$work/source.toml" >/dev/null

stage_seconds() { # store, stage kind -> wall seconds of that stage's artifact
  .venv/bin/python - "$1" "$2" <<'PY'
import json, os, sys
store, kind = sys.argv[1], sys.argv[2]
for i in os.listdir(os.path.join(store, "objects")):
    p = os.path.join(store, "objects", i, "manifest.json")
    if os.path.exists(p):
        m = json.load(open(p))
        if m["stage"] == kind:
            print(f'{m["wall_seconds"]:.1f}')
PY
}

for r in $(seq "$rounds"); do
  for mode in avx2 native; do
    s="$work/pretrain-$mode-$r"
    cp -a "$work/source" "$s"
    GRAFT_CPU_KERNELS=$mode "$bin" --store "$s" run "$pipe" >/dev/null
    echo "round $r, $mode: pretrain $(stage_seconds "$s" pretrain) s"
    rm -rf "$s"
  done
done

for mode in avx2 native; do
  s="$work/default-$mode"
  echo "the embedded default, GRAFT_CPU_KERNELS=$mode:"
  GRAFT_CPU_KERNELS=$mode "$bin" --store "$s" run default | grep -E '^\S+\s+(ran|fresh)\s|stage wall time|done in' || true
  rm -rf "$s"
done
