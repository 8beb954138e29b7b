"""Reference outputs from timm for graft-model's equivalence tests.

  timm_reference.py make CONFIG_JSON OUT_DIR   random-weight timm ViT -> model.safetensors,
                                              io.safetensors (input, logits), nohead.safetensors
  timm_reference.py load CONFIG_JSON CKPT INPUT OUT
                                              load a graft-written checkpoint strictly into timm
                                              and write its logits for INPUT's "input"
  timm_reference.py keys CLASSES OUT MODEL...  the state dicts' keys and shapes of timm's registered
                                              MODELs at their own sizes (on the meta device), as
                                              JSON {model: {key: shape}}

CONFIG_JSON: {"image_size", "patch_size", "dim", "depth", "heads", "classes", "seed"}, and
optionally "timm": a registered timm model name whose family options (distillation token,
registers, layer scale, pre-norm, activation, LayerNorm epsilon) are kept while the sizes above
replace its own.
"""
import json
import sys

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer


def build(c):
    if "timm" in c:
        return timm.create_model(
            c["timm"], pretrained=False, img_size=c["image_size"], patch_size=c["patch_size"],
            embed_dim=c["dim"], depth=c["depth"], num_heads=c["heads"], num_classes=c["classes"],
        ).eval()
    return VisionTransformer(
        img_size=c["image_size"], patch_size=c["patch_size"], in_chans=3,
        num_classes=c["classes"], embed_dim=c["dim"], depth=c["depth"],
        num_heads=c["heads"], mlp_ratio=4.0, qkv_bias=True, class_token=True,
        global_pool="token",
    ).eval()


def keys(classes, out, names):
    shapes = {}
    for name in names:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=classes)
        shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    with open(out, "w") as f:
        json.dump(shapes, f)


def main():
    if sys.argv[1] == "keys":
        keys(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    mode, c = sys.argv[1], json.loads(sys.argv[2])
    torch.manual_seed(c["seed"])
    model = build(c)
    if mode == "make":
        out = sys.argv[3]
        with torch.no_grad():
            # Non-trivial values everywhere, norms included.
            for name, p in model.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
            x = torch.randn(3, 3, c["image_size"], c["image_size"])
            logits = model(x)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, f"{out}/model.safetensors", metadata={"format": "pt"})
        save_file({k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}, f"{out}/nohead.safetensors")
        save_file({"input": x.contiguous(), "logits": logits.contiguous()}, f"{out}/io.safetensors")
    elif mode == "load":
        ckpt, inp, out = sys.argv[3], sys.argv[4], sys.argv[5]
        model.load_state_dict(load_file(ckpt), strict=True)
        with torch.no_grad():
            logits = model(load_file(inp)["input"])
        save_file({"logits": logits.contiguous()}, out)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
