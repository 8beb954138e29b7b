"""Helpers of bench/gpu.sh.

  python bench/gpu_base.py PRESET OUT.safetensors
      writes the preset (bench/torch_vit.py's shapes) with random weights in timm's names and
      prints its image size
  python bench/gpu_base.py --report PROBE_DIR PRESET DEVICE BATCH BATCHES START END
      prints one JSON line with the probe artifact's timings (cost.json, or its manifest's extra)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def base(preset, out):
    import torch
    from safetensors.torch import save_file
    from torch_vit import PRESETS, graft_model

    torch.manual_seed(0)
    model = graft_model(preset, 12, "full")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    print(PRESETS[preset][0])


def report(art, preset, device, batch, batches, start, end):
    facts = {}
    manifest = os.path.join(art, "manifest.json")
    if os.path.exists(manifest):
        facts.update(json.load(open(manifest)).get("extra", {}))
    cost = os.path.join(art, "cost.json")
    if os.path.exists(cost):
        facts.update(json.load(open(cost)))
    fb = facts.get("forward_backward_seconds")
    out = {"impl": "graft-probe", "backend": facts.get("backend"), "model": f"{preset} (probe)",
           "batch": batch, "batches": batches, "device": device, "forward_backward_s": fb,
           "svd_s": facts.get("svd_seconds"), "stage_wall_s": round(end - start, 2)}
    if fb:
        out["images_per_s"] = round(batches * batch / fb, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "--report":
        report(a[1], a[2], a[3], int(a[4]), int(a[5]), float(a[6]), float(a[7]))
    else:
        base(a[0], a[1])
