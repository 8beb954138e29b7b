"""The fine-tune stage's whole set of runs, retrained in PyTorch + timm: the reference for
`make bench-sweep` (issue 10's sweep benchmark).

  python bench/sweep_torch.py STORE [FINETUNE_ARTIFACT_ID] [--threads N] [--limit K]
  (without an id: the store's one fine-tune artifact)

It reads what graft's fine-tune artifact says it trained (runs.parquet: every placement,
method and seed; the manifest: the dataset and base artifacts and the resolved training
parameters) and trains the same runs the straightforward way a researcher would write them
in PyTorch: a timm VisionTransformer with graft's preset shapes and the base weights, the
residual stream walked node by node so that adapters sit on any edge (parallel, sequential,
long-range, and recurrent with a second pass, as graft's `Vit::nodes`), AdamW (burn's
defaults: betas 0.9/0.999, eps 1e-5) with linear warm-up and cosine decay per step, the
frozen backbone under `requires_grad = False`, the whole network run forward on every batch
of every epoch, validation after every epoch, the best epoch's weights tested.

Prints one JSON line per run (with --verbose) and a final JSON line: runs, total seconds,
seconds per method. Nothing is written.
"""
import argparse
import copy
import io
import json
import math
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

# graft's presets (crates/graft-model/src/config.rs): image, patch, dim, depth, heads.
PRESETS = {
    "vit-cpu-tiny": (16, 4, 64, 2, 2),
    "vit-cpu-small": (32, 4, 192, 6, 3),
    "vit-cpu-p8": (32, 8, 64, 4, 2),
    "vit-ti16": (224, 16, 192, 12, 3),
    "vit-s16": (224, 16, 384, 12, 6),
    "vit-b16": (224, 16, 768, 12, 12),
}


def artifact(store, ident):
    path = os.path.join(store, "objects", ident)
    if not os.path.isdir(path):
        sys.exit(f"{path}: no such artifact in the store")
    return path


def manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


def split(dataset_dir, name, size, mean, std):
    """A split as normalised float tensors [N, 3, size, size] and labels [N]."""
    t = pq.read_table(os.path.join(dataset_dir, f"{name}.parquet"))
    images = t.column("image").to_pylist()
    labels = torch.tensor(t.column("label").to_pylist(), dtype=torch.long)
    x = np.frombuffer(b"".join(images), dtype=np.uint8).reshape(len(images), size, size, 3)
    x = torch.from_numpy(x.astype(np.float32) / 255.0)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 3, 1, 2).contiguous(), labels


class Adapter(torch.nn.Module):
    """A(x) = s * W_up(act(W_down x + b_down)) + b_up, W_up and b_up zero at init."""

    def __init__(self, d, r, act, scale):
        super().__init__()
        self.down = torch.nn.Linear(d, r)
        self.up = torch.nn.Linear(r, d)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)
        self.act = torch.nn.functional.gelu if act == "gelu" else torch.nn.functional.relu
        self.scale = scale

    def forward(self, x):
        return torch.nn.functional.linear(self.act(self.down(x)), self.up.weight) * self.scale + self.up.bias


class Adapted(torch.nn.Module):
    """A timm ViT whose residual nodes 0..2L carry adapters on the given edges (i, j)."""

    def __init__(self, vit, edges, d, r, act, scale):
        super().__init__()
        self.vit = vit
        self.edges = [tuple(e) for e in edges]
        self.adapters = torch.nn.ModuleList(Adapter(d, r, act, scale) for _ in self.edges)
        self.n = 2 * len(vit.blocks) + 1
        recurrent = [j for i, j in self.edges if i > j]
        self.second = min(recurrent) if recurrent else None

    def sublayer(self, k, x):
        b = self.vit.blocks[(k - 1) // 2]
        return x + (b.attn(b.norm1(x)) if k % 2 == 1 else b.mlp(b.norm2(x)))

    def run(self, x0, nodes, start, first):
        for k in range(start, self.n):
            x = x0 if k == 0 else self.sublayer(k, nodes[k - 1])
            for (i, j), a in zip(self.edges, self.adapters):
                if j == k and j > i:
                    x = x + a(nodes[i])
                elif j == k and i > j and first is not None:
                    x = x + a(first[i])
            for (i, j), a in zip(self.edges, self.adapters):
                if i == k and j == k:
                    x = x + a(x)
            nodes.append(x)
        return nodes

    def forward(self, images):
        v = self.vit
        x0 = v.norm_pre(v._pos_embed(v.patch_embed(images)))
        nodes = self.run(x0, [], 0, None)
        if self.second is not None:
            nodes = self.run(x0, nodes[: self.second], self.second, nodes)
        return v.head(v.norm(nodes[-1])[:, 0])


def lr_at(p, step, steps_per_epoch):
    total = max(p["epochs"] * steps_per_epoch, 1)
    warm = max(min(p["warmup_epochs"] * steps_per_epoch, total - 1.0), 0.0)
    if step < warm:
        return p["lr"] * (step + 1.0) / warm
    t = (step - warm) / max(total - warm, 1.0)
    return 0.5 * p["lr"] * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def accuracy(model, x, y, batch):
    model.eval()
    correct = 0
    for s in range(0, len(y), batch):
        correct += (model(x[s : s + batch]).argmax(1) == y[s : s + batch]).sum().item()
    model.train()
    return correct / max(len(y), 1)


def train_run(run, params, preset, classes, state, data):
    size, patch, dim, depth, heads = PRESETS[preset]
    torch.manual_seed(run["seed"])
    vit = VisionTransformer(img_size=size, patch_size=patch, embed_dim=dim, depth=depth,
                            num_heads=heads, num_classes=classes, qkv_bias=True,
                            drop_path_rate=0.0, drop_rate=0.0)
    method = run["method"]
    if method != "adapters-random-init":
        vit.load_state_dict(state, strict=False)
    edges = [(e["i"], e["j"]) for e in run["edges"]]
    model = Adapted(vit, edges, dim, params["bottleneck"], params["adapter_act"],
                    params["adapter_scale"])
    full = method == "full"
    for p in model.parameters():
        p.requires_grad_(full)
    for p in list(model.adapters.parameters()) + list(vit.head.parameters()):
        p.requires_grad_(True)
    lr = params["full_lr"] if full else params["lr"]
    protocol = dict(params, lr=lr)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                              betas=(0.9, 0.999), eps=1e-5,
                              weight_decay=params["weight_decay"])
    (xt, yt), (xv, yv), (xs, ys) = data
    final = params.get("protocol", "select") == "final"
    if final:
        xt, yt = torch.cat([xt, xv]), torch.cat([yt, yv])
    batch = params["batch"]
    steps_per_epoch = math.ceil(len(yt) / batch)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(run["seed"])
    best, step = None, 0
    model.train()
    for epoch in range(params["epochs"]):
        order = torch.randperm(len(yt), generator=gen)
        for s in range(0, len(yt), batch):
            idx = order[s : s + batch]
            for g in optim.param_groups:
                g["lr"] = lr_at(protocol, step, steps_per_epoch)
            loss = loss_fn(model(xt[idx]), yt[idx])
            if not torch.isfinite(loss):
                return {"status": "diverged", "epoch": epoch}
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            step += 1
        if final:
            continue
        acc = accuracy(model, xv, yv, batch)
        if best is None or acc > best[0]:
            best = (acc, epoch, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
    return {"status": "ok", "best_epoch": None if best is None else best[1],
            "test_accuracy": accuracy(model, xs, ys, batch)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("finetune", nargs="?", help="the fine-tune stage's artifact id")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--limit", type=int, default=0, help="train only the first K runs")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.finetune is None:
        objects = os.path.join(a.store, "objects")
        found = [i for i in sorted(os.listdir(objects))
                 if manifest(os.path.join(objects, i)).get("stage") == "finetune"]
        if len(found) != 1:
            sys.exit(f"{a.store}: {len(found)} fine-tune artifacts; name one")
        a.finetune = found[0]
    ft_dir = artifact(a.store, a.finetune)
    ft = manifest(ft_dir)
    if ft["stage"] != "finetune":
        sys.exit(f"{a.finetune} is a {ft['stage']} artifact, not a fine-tune one")
    params = ft["params"]
    if params.get("checkpoint"):
        base_file, preset = params["checkpoint"], params["preset"]
    else:
        base_dir = artifact(a.store, ft["inputs"]["base"])
        base_file = os.path.join(base_dir, "model.safetensors")
        preset = params.get("preset") or manifest(base_dir)["params"]["preset"]
    dataset_dir = artifact(a.store, ft["inputs"]["dataset"])
    with open(os.path.join(dataset_dir, "dataset.json")) as f:
        info = json.load(f)
    pre = info["preprocessing"]
    t0 = time.perf_counter()
    data = [split(dataset_dir, s, pre["image_size"], pre["mean"], pre["std"])
            for s in ("train", "val", "test")]
    state = {k: v for k, v in load_file(base_file).items() if not k.startswith("head.")}
    runs = pq.read_table(os.path.join(ft_dir, "runs.parquet")).to_pylist()
    if a.limit:
        runs = runs[: a.limit]
    load_seconds = time.perf_counter() - t0
    per_method = {}
    for run in runs:
        t = time.perf_counter()
        out = train_run(run, params, preset, len(info["classes"]), state, data)
        dt = time.perf_counter() - t
        per_method[run["method"]] = per_method.get(run["method"], 0.0) + dt
        if a.verbose:
            print(json.dumps({"placement": run["placement_id"], "method": run["method"],
                              "seed": run["seed"], "seconds": round(dt, 3),
                              "graft_test_accuracy": run["test_accuracy"], **out}), flush=True)
    total = time.perf_counter() - t0
    print(json.dumps({"tool": "pytorch+timm", "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "runs": len(runs),
                      "seconds": round(total, 3), "load_seconds": round(load_seconds, 3),
                      "seconds_per_method": {k: round(v, 3) for k, v in per_method.items()}}))


if __name__ == "__main__":
    main()
