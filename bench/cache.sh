#!/usr/bin/env bash
# The fine-tune stage with and without the frozen-prefix activation cache, and one worker
# with every core against one worker per core (issue 10), on the same upstream artifacts.
# Usage: make bench-cache [TASK=ci]   (release binaries; tch when make found PyTorch)
#
# The pipeline's stages before its fine-tune stages run once into a store; each variant
# then runs the whole pipeline on its own copy of that store, so its fine-tune stages train
# every run. The stage wall times come from the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
pipeline=${1:-ci}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
  variants=("activation_cache=false jobs=2" "activation_cache=true jobs=2" "activation_cache=true jobs=1")
fi
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
case $pipeline in
  */*|*.toml) file=$pipeline ;;
  *) file=pipelines/$pipeline.toml ;;
esac
echo "machine: $(nproc) cores; pipeline: $pipeline"
# The upstream part: the same file without its finetune and report stages.
.venv/bin/python - "$file" "$base/upstream.toml" <<'PY'
import json, sys, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
def val(v):
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, (int, float)): return repr(v)
    if isinstance(v, str): return json.dumps(v)
    if isinstance(v, list): return "[" + ", ".join(val(x) for x in v) + "]"
    if isinstance(v, dict): return "{ " + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + " }"
    raise SystemExit(f"cannot write {v!r}")
out = [f"description = {val(doc.get('description', 'upstream'))}"]
for name, st in doc["stages"].items():
    if st["kind"] in ("finetune", "report"):
        continue
    out.append(f"[stages.{json.dumps(name)}]")
    for k, v in st.items():
        out.append(f"{k} = {val(v)}")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
target/release/graft --store "$base/store" run "$base/upstream.toml" >/dev/null 2>&1
for v in "${variants[@]}"; do
  rm -rf "$base/run"
  cp -a "$base/store" "$base/run"
  sets=()
  for kv in $v; do
    for st in $(.venv/bin/python -c 'import sys, tomllib; d = tomllib.load(open(sys.argv[1], "rb")); print(" ".join(n for n, s in d["stages"].items() if s["kind"] == "finetune"))' "$file"); do
      sets+=(-S "$st.$kv")
    done
  done
  start=$(date +%s.%N)
  target/release/graft --store "$base/run" run "$file" "${sets[@]}" >/dev/null 2>&1
  end=$(date +%s.%N)
  .venv/bin/python - "$base/run" "$v" "$start" "$end" <<'PY'
import json, os, sys
store, what, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
stages, runs, peak, cache = 0.0, 0, 0, 0
per_method = {}
for i in os.listdir(os.path.join(store, "objects")):
    m = json.load(open(os.path.join(store, "objects", i, "manifest.json")))
    if m["stage"] == "finetune":
        stages += m["wall_seconds"]
    if m["stage"] == "finetune-run":
        runs += 1
        per_method.setdefault(m["params"]["method"], []).append(m["wall_seconds"])
        peak = max(peak, m["extra"].get("peak_memory_bytes") or 0)
        c = m["extra"].get("activation_cache") or {}
        cache = max(cache, (c.get("worker_bytes") or 0) + (c.get("bytes") or 0))
print(f"{what}: fine-tune stages {stages:.1f} s for {runs} runs ({stages / max(runs, 1):.2f} s per run); "
      f"whole run {end - start:.1f} s; peak memory per run {peak / 2**20:.0f} MiB; "
      f"largest cache of a worker {cache / 2**20:.0f} MiB")
print("  seconds per run (worker wall time), mean by method: " + ", ".join(
    f"{k} {sum(v) / len(v):.2f} ({len(v)})" for k, v in sorted(per_method.items())))
PY
done
