"""Times a timm ViT forward+backward in PyTorch, the reference for graft's benchmarks.

  python bench/torch_vit.py --model vit_base_patch16_224 --batch 64 --device cuda
Prints one JSON line: model, batch, device, threads, seconds per step (median), images/s.
"""
import argparse
import json
import statistics
import time

import timm
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = timm.create_model(a.model, pretrained=False, num_classes=47).to(a.device).train()
    size = model.default_cfg["input_size"][-1]
    x = torch.randn(a.batch, 3, size, size, device=a.device)
    y = torch.randint(0, 47, (a.batch,), device=a.device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    print(json.dumps({"impl": "pytorch+timm", "torch": torch.__version__, "model": a.model, "batch": a.batch,
                      "device": a.device, "threads": torch.get_num_threads(), "step_s": round(s, 5),
                      "images_per_s": round(a.batch / s, 1)}))


if __name__ == "__main__":
    main()
