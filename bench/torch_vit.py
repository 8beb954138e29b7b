"""Times a timm ViT training step in PyTorch, the reference for graft's benchmarks.

  python bench/torch_vit.py --model vit_base_patch16_224 --batch 64 --device cuda
  python bench/torch_vit.py --graft vit-cpu-small --mode adapters   (graft's preset shapes,
      adapters on the 2L parallel edges, r = 8, backbone frozen, AdamW step included: the
      same step as `cargo run --example step_bench`)
  python bench/torch_vit.py --graft vit-b16 --mode probe --device cuda   (the probe's passes,
      as graft-probe makes them: backbone frozen, per batch one forward with a zero tap at
      every residual node, one backward, and G = Δᵀ X for all n² edges as one [n·d, n·d]
      product, summed in place over --steps batches (addmm_); the time is the probe's over
      its batches, after a one-batch probe as warm-up, G ending on the host (on the CPU it is
      there already))
  python bench/torch_vit.py --graft vit-b16 --mode adapters --autocast bf16   (the forward and
      the loss under torch.autocast in bf16, as timm's train.py --amp; with --mode probe the
      probe's forward and loss)
Prints one JSON line: model, batch, device, threads, seconds per step (median), images/s.
"""
import argparse
import json
import statistics
import time

import timm
import torch
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


class Adapter(torch.nn.Module):
    """A(x) = W_up(GELU(W_down x + b_down)) + b_up, W_up and b_up zero."""

    def __init__(self, d, r=8):
        super().__init__()
        self.down = torch.nn.Linear(d, r)
        self.up = torch.nn.Linear(r, d)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(torch.nn.functional.gelu(self.down(x)))


def parallel_block_forward(self, x):
    x = x + self.attn(self.norm1(x)) + self.ad1(x)
    return x + self.mlp(self.norm2(x)) + self.ad2(x)


def probe_forward(model, x):
    """Logits, and the zero taps and activations of the n = 2L + 1 residual nodes."""
    taps, acts = [], []

    def node(v):
        z = torch.zeros_like(v, requires_grad=True)
        taps.append(z)
        acts.append(v.detach())
        return v + z

    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    x = node(x)
    for b in model.blocks:
        x = node(x + b.attn(b.norm1(x)))
        x = node(x + b.mlp(b.norm2(x)))
    return model.head(model.norm(x)[:, 0]), taps, acts


def graft_model(preset, classes, mode):
    size, patch, dim, depth, heads = PRESETS[preset]
    model = VisionTransformer(img_size=size, patch_size=patch, embed_dim=dim, depth=depth,
                              num_heads=heads, num_classes=classes, qkv_bias=True)
    if mode == "probe":
        for p in model.parameters():
            p.requires_grad_(False)
    if mode == "adapters":
        for p in model.parameters():
            p.requires_grad_(False)
        for b in model.blocks:
            b.ad1, b.ad2 = Adapter(dim), Adapter(dim)
            b.forward = parallel_block_forward.__get__(b)
        for p in model.head.parameters():
            p.requires_grad_(True)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--graft", default=None, help="a graft preset instead of a timm model name")
    ap.add_argument("--mode", default="full", choices=["full", "adapters", "probe"])
    ap.add_argument("--classes", type=int, default=47)
    ap.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"],
                    help="run the training step's (or the probe's) forward and loss under torch.autocast")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.graft:
        model = graft_model(a.graft, a.classes, a.mode).to(a.device).train()
        size = PRESETS[a.graft][0]
        a.model = f"{a.graft} ({a.mode})"
    else:
        model = timm.create_model(a.model, pretrained=False, num_classes=a.classes).to(a.device).train()
        size = model.default_cfg["input_size"][-1]
    x = torch.randn(a.batch, 3, size, size, device=a.device)
    y = torch.randint(0, a.classes, (a.batch,), device=a.device)
    loss_fn = torch.nn.CrossEntropyLoss()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-4) if trainable else None

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def autocast():
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.autocast)
        return torch.autocast(a.device.split(":")[0], dtype=dtype, enabled=dtype is not None)

    def probe_batch(g):
        # Under autocast the residual stream, and so the taps, the activations and G, stay f32.
        with autocast():
            logits, taps, acts = probe_forward(model, x)
            loss = loss_fn(logits, y)
        loss.backward()
        d = x.shape[0] * acts[0].shape[1]
        deltas = torch.cat([t.grad.reshape(d, -1) for t in taps], 1)
        xs = torch.cat([a.reshape(d, -1) for a in acts], 1)
        return deltas.T @ xs if g is None else g.addmm_(deltas.T, xs)

    def probe(batches):
        """Seconds per batch of one probe summing G over `batches` batches."""
        t = time.perf_counter()
        g = None
        for _ in range(batches):
            g = probe_batch(g)
        g = g.cpu()
        return (time.perf_counter() - t) / batches


    def step():
        """Seconds of the forward (to the loss), the backward and the optimiser step."""
        t0 = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.item()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        optim.step()
        sync()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    if a.mode == "probe":
        probe(1)
        parts = [(probe(a.steps), 0.0, 0.0)]
    else:
        for _ in range(a.warmup):
            step()
        parts = [step() for _ in range(a.steps)]
    s = statistics.median(sum(p) for p in parts)
    fwd, bwd, opt = (statistics.median(p[k] for p in parts) for k in range(3))
    print(json.dumps({"impl": "pytorch+timm", "torch": torch.__version__, "model": a.model, "autocast": a.autocast, "batch": a.batch,
                      "device": a.device, "threads": torch.get_num_threads(), "step_s": round(s, 5),
                      "forward_s": round(fwd, 5), "backward_s": round(bwd, 5), "optim_s": round(opt, 5),
                      "images_per_s": round(a.batch / s, 1)}))


if __name__ == "__main__":
    main()
