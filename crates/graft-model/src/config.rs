use burn::config::Config;
use graft_graph::Dims;
use serde::{Deserialize, Serialize};

/// Shape of a ViT (timm's `VisionTransformer` with class-token pooling).
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    /// Token width d.
    pub dim: usize,
    /// Number of blocks L.
    pub depth: usize,
    pub heads: usize,
    /// Classes of the linear head.
    pub classes: usize,
    #[config(default = 3)]
    pub channels: usize,
    /// MLP hidden width = dim * mlp_ratio.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// LayerNorm epsilon (timm: 1e-6; CLIP towers, built with `nn.LayerNorm`: 1e-5).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// DeiT's distillation token after the class token, with its own head `head_dist`; the
    /// logits are the mean of both heads' (timm's `VisionTransformerDistilled` in eval mode).
    #[config(default = false)]
    pub dist_token: bool,
    /// Register tokens (DINOv2 with registers) after the class (and distillation) token.
    #[config(default = 0)]
    pub reg_tokens: usize,
    /// The position embedding covers the patches only, not the class and register tokens
    /// (timm's `no_embed_class`, DINOv2 with registers).
    #[config(default = false)]
    pub no_embed_class: bool,
    /// Layer scale: each sub-layer's output is multiplied by a learned per-channel `gamma`
    /// before the residual addition (timm's `init_values`, DINOv2 and DeiT III).
    #[config(default = false)]
    pub layer_scale: bool,
    /// A LayerNorm `norm_pre` on the embedded tokens, and a patch embedding without bias
    /// (timm's `pre_norm`, the CLIP image towers).
    #[config(default = false)]
    pub pre_norm: bool,
    /// The MLP's non-linearity.
    #[config(default = "MlpAct::Gelu")]
    pub mlp_act: MlpAct,
}

/// The MLP's non-linearity: exact GELU, or OpenAI CLIP's QuickGELU `x·sigmoid(1.702·x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlpAct {
    #[default]
    Gelu,
    QuickGelu,
}

/// The ViT families graft loads from timm's state dicts, with the timm models each preset
/// of theirs is checked against (`python/timm_reference.py`).
pub const FAMILIES: &[&str] = &[
    "vit (timm VisionTransformer: ViT, DeiT)",
    "deit-distilled (distillation token and head)",
    "dinov2 (layer scale, optional register tokens)",
    "clip (pre-norm, no patch bias, optional QuickGELU; the projection is the head)",
];

/// Named presets: the timm ViT families and three small CPU models.
pub const PRESETS: &[&str] = &[
    "vit-l16",
    "vit-b16",
    "vit-s16",
    "vit-ti16",
    "deit-b16",
    "deit-s16",
    "deit-ti16",
    "deit-b16-distilled",
    "deit-s16-distilled",
    "dinov2-s14",
    "dinov2-b14",
    "dinov2-l14",
    "dinov2-s14-reg4",
    "dinov2-b14-reg4",
    "clip-b16",
    "clip-b16-quickgelu",
    "clip-l14",
    "clip-l14-quickgelu",
    "vit-cpu-small",
    "vit-cpu-p8",
    "vit-cpu-tiny",
];

impl VitConfig {
    /// A named preset with `classes` outputs, and the timm model it has the layout of.
    ///
    /// | preset | timm model | image | patch | d | L | heads |
    /// |---|---|---|---|---|---|---|
    /// | vit-l16 | vit_large_patch16_224 | 224 | 16 | 1024 | 24 | 16 |
    /// | vit-b16 | vit_base_patch16_224 | 224 | 16 | 768 | 12 | 12 |
    /// | vit-s16 | vit_small_patch16_224 | 224 | 16 | 384 | 12 | 6 |
    /// | vit-ti16 | vit_tiny_patch16_224 | 224 | 16 | 192 | 12 | 3 |
    /// | deit-{b,s,ti}16 | deit_{base,small,tiny}_patch16_224 | as vit-{b,s,ti}16 |
    /// | deit-{b,s}16-distilled | deit_{base,small}_distilled_patch16_224 | as vit-{b,s}16, plus the distillation token |
    /// | dinov2-{s,b,l}14 | vit_{small,base,large}_patch14_dinov2 | 518 | 14 | 384, 768, 1024 | 12, 12, 24 | 6, 12, 16 |
    /// | dinov2-{s,b}14-reg4 | vit_{small,base}_patch14_reg4_dinov2 | as dinov2-{s,b}14, plus 4 registers |
    /// | clip-b16 | vit_base_patch16_clip_224 | 224 | 16 | 768 | 12 | 12 |
    /// | clip-b16-quickgelu | vit_base_patch16_clip_quickgelu_224 | as clip-b16, QuickGELU |
    /// | clip-l14 | vit_large_patch14_clip_224 | 224 | 14 | 1024 | 24 | 16 |
    /// | clip-l14-quickgelu | vit_large_patch14_clip_quickgelu_224 | as clip-l14, QuickGELU |
    /// | vit-cpu-small | | 32 | 4 | 192 | 6 | 3 |
    /// | vit-cpu-p8 | | 32 | 8 | 64 | 4 | 2 |
    /// | vit-cpu-tiny | | 16 | 4 | 64 | 2 | 2 |
    ///
    /// DINOv2's presets keep timm's 518 px position embedding (graft does not resample it).
    pub fn preset(name: &str, classes: usize) -> Option<VitConfig> {
        let shape = |image, patch, dim, depth, heads| {
            VitConfig::new(image, patch, dim, depth, heads, classes)
        };
        let (l16, b16, s16, ti16) = (
            shape(224, 16, 1024, 24, 16),
            shape(224, 16, 768, 12, 12),
            shape(224, 16, 384, 12, 6),
            shape(224, 16, 192, 12, 3),
        );
        let (s14, b14, l14) = (
            shape(518, 14, 384, 12, 6),
            shape(518, 14, 768, 12, 12),
            shape(518, 14, 1024, 24, 16),
        );
        let l14_224 = shape(224, 14, 1024, 24, 16);
        let clip = |c: VitConfig, act| c.with_pre_norm(true).with_norm_eps(1e-5).with_mlp_act(act);
        let dinov2 = |c: VitConfig| c.with_layer_scale(true);
        let reg4 = |c| dinov2(c).with_reg_tokens(4).with_no_embed_class(true);
        Some(match name {
            "vit-l16" => l16,
            "vit-b16" | "deit-b16" => b16,
            "vit-s16" | "deit-s16" => s16,
            "vit-ti16" | "deit-ti16" => ti16,
            "deit-b16-distilled" => b16.with_dist_token(true),
            "deit-s16-distilled" => s16.with_dist_token(true),
            "dinov2-s14" => dinov2(s14),
            "dinov2-b14" => dinov2(b14),
            "dinov2-l14" => dinov2(l14),
            "dinov2-s14-reg4" => reg4(s14),
            "dinov2-b14-reg4" => reg4(b14),
            "clip-b16" => clip(b16, MlpAct::Gelu),
            "clip-b16-quickgelu" => clip(b16, MlpAct::QuickGelu),
            "clip-l14" => clip(l14_224, MlpAct::Gelu),
            "clip-l14-quickgelu" => clip(l14_224, MlpAct::QuickGelu),
            "vit-cpu-small" => shape(32, 4, 192, 6, 3),
            "vit-cpu-p8" => shape(32, 8, 64, 4, 2),
            "vit-cpu-tiny" => shape(16, 4, 64, 2, 2),
            _ => return None,
        })
    }

    /// The family this shape belongs to (for messages), one of [`FAMILIES`]' names.
    pub fn family(&self) -> &'static str {
        if self.dist_token {
            "deit-distilled"
        } else if self.layer_scale || self.reg_tokens > 0 {
            "dinov2"
        } else if self.pre_norm {
            "clip"
        } else {
            "vit"
        }
    }

    /// Tokens before the patches: the class token, the distillation token, the registers.
    pub fn prefix_tokens(&self) -> usize {
        1 + usize::from(self.dist_token) + self.reg_tokens
    }

    /// Tokens the head reads: the class token, and the distillation token when there is one.
    pub fn pooled_tokens(&self) -> usize {
        1 + usize::from(self.dist_token)
    }

    /// Tokens the position embedding covers.
    pub fn embedded_tokens(&self) -> usize {
        if self.no_embed_class {
            self.patches()
        } else {
            self.tokens()
        }
    }

    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    pub fn mlp_dim(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio).round() as usize
    }

    /// Patches plus the prefix tokens (the class token, and the distillation token and
    /// registers where the family has them).
    pub fn tokens(&self) -> usize {
        self.patches() + self.prefix_tokens()
    }

    pub fn graph(&self) -> graft_graph::Graph {
        graft_graph::Graph::new(self.depth)
    }

    pub fn dims(&self) -> Dims {
        Dims {
            image_size: self.image_size,
            patch_size: self.patch_size,
            channels: self.channels,
            dim: self.dim,
            layers: self.depth,
            mlp_dim: self.mlp_dim(),
            classes: self.classes,
        }
    }
}

/// Non-linearity inside an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterAct {
    #[default]
    Gelu,
    Relu,
}

/// A(x) = s * W_up(act(W_down x + b_down)) + b_up.
#[derive(Config, Debug, PartialEq)]
pub struct AdapterConfig {
    /// Bottleneck width r.
    #[config(default = 8)]
    pub rank: usize,
    #[config(default = "AdapterAct::Gelu")]
    pub act: AdapterAct,
    /// Output scale s.
    #[config(default = 1.0)]
    pub scale: f64,
}

/// LoRA on the query and value projections of every block (Hu et al.'s configuration for
/// ViTs): q += s·B_q A_q x and v += s·B_v A_v x inside the fused `qkv` projection, A
/// Kaiming-uniform (PyTorch's `Linear` default, as PEFT), B zero, s = alpha / rank.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r of each update.
    #[config(default = 8)]
    pub rank: usize,
    /// alpha: the scale is alpha / r. PEFT's default and Hu et al.'s practice (alpha fixed at
    /// the first rank tried, not tuned) give s = 1 at r = 8.
    #[config(default = 8.0)]
    pub alpha: f64,
}

impl LoraConfig {
    /// s = alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The dtype the model's matrix products and attention compute in, as under PyTorch's
/// `torch.autocast`: in `bf16` or `fp16` the linear layers (the blocks', the adapters', LoRA's
/// and the head's) and attention run in that dtype, while the residual stream, LayerNorm, layer
/// scale, the loss, the trained parameters and their gradients stay f32. The patch
/// embedding stays f32 too (about 1% of a ViT-B/16's FLOPs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Fp16,
}

impl Precision {
    /// Whether this is f32, the default: the stages leave it out of their keys then, so the
    /// keys of runs from before precision was a parameter stay as they were.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The low dtype the products run in; `None` for f32.
    pub fn low(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(burn::tensor::FloatDType::BF16),
            Precision::Fp16 => Some(burn::tensor::FloatDType::F16),
        }
    }
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trainable {
    /// Adapters (bottleneck adapters and LoRA factors) and head; the backbone is frozen.
    #[default]
    Adapters,
    /// Everything.
    Full,
    /// The head only (linear probe).
    HeadOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_exists_and_no_other() {
        for name in PRESETS {
            let c = VitConfig::preset(name, 7).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.image_size % c.patch_size, 0, "{name}");
            assert_eq!(c.dim % c.heads, 0, "{name}");
            assert_eq!(c.classes, 7);
        }
        for bad in [
            "vit-cpu",
            "vit-cpu-huge",
            "vit-b16-distilled",
            "deit-ti16-distilled",
            "dinov2-l14-reg4",
            "clip-s16",
            "swin-b16",
            "",
        ] {
            assert!(VitConfig::preset(bad, 7).is_none(), "{bad}");
        }
    }

    /// The embedded default's backbone: 4 x 4 patches of 8 px, 9 nodes, 8 parallel edges.
    #[test]
    fn cpu_p8_shape() {
        let c = VitConfig::preset("vit-cpu-p8", 12).unwrap();
        assert_eq!(c.tokens(), 17);
        assert_eq!(c.graph().nodes(), 9);
        assert_eq!((c.dim, c.heads, c.mlp_dim()), (64, 2, 256));
    }

    /// The family options each preset sets, and the tokens they add.
    #[test]
    fn family_presets_set_their_options() {
        let p = |n| VitConfig::preset(n, 10).unwrap();
        assert_eq!(p("vit-b16"), p("deit-b16"));
        assert_eq!(p("vit-b16").family(), "vit");
        let d = p("deit-b16-distilled");
        assert_eq!(
            (d.family(), d.tokens(), d.pooled_tokens()),
            ("deit-distilled", 198, 2)
        );
        let r = p("dinov2-s14-reg4");
        assert_eq!(
            (r.family(), r.tokens(), r.embedded_tokens()),
            ("dinov2", 1374, 1369)
        );
        assert!(r.layer_scale && !p("dinov2-b14").no_embed_class);
        let c = p("clip-b16-quickgelu");
        assert_eq!(
            (c.family(), c.norm_eps, c.mlp_act),
            ("clip", 1e-5, MlpAct::QuickGelu)
        );
        assert_eq!(p("clip-b16").mlp_act, MlpAct::Gelu);
        assert_eq!(p("vit-l16").graph().nodes(), 49);
    }
}
