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
    /// LayerNorm epsilon (timm: 1e-6).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

/// Named presets: the timm ViTs and three small CPU models.
pub const PRESETS: &[&str] = &[
    "vit-b16",
    "vit-s16",
    "vit-ti16",
    "vit-cpu-small",
    "vit-cpu-p8",
    "vit-cpu-tiny",
];

impl VitConfig {
    /// A named preset with `classes` outputs.
    ///
    /// | preset | image | patch | d | L | heads |
    /// |---|---|---|---|---|---|
    /// | vit-b16 | 224 | 16 | 768 | 12 | 12 |
    /// | vit-s16 | 224 | 16 | 384 | 12 | 6 |
    /// | vit-ti16 | 224 | 16 | 192 | 12 | 3 |
    /// | vit-cpu-small | 32 | 4 | 192 | 6 | 3 |
    /// | vit-cpu-p8 | 32 | 8 | 64 | 4 | 2 |
    /// | vit-cpu-tiny | 16 | 4 | 64 | 2 | 2 |
    pub fn preset(name: &str, classes: usize) -> Option<VitConfig> {
        let (image, patch, dim, depth, heads) = match name {
            "vit-b16" => (224, 16, 768, 12, 12),
            "vit-s16" => (224, 16, 384, 12, 6),
            "vit-ti16" => (224, 16, 192, 12, 3),
            "vit-cpu-small" => (32, 4, 192, 6, 3),
            "vit-cpu-p8" => (32, 8, 64, 4, 2),
            "vit-cpu-tiny" => (16, 4, 64, 2, 2),
            _ => return None,
        };
        Some(VitConfig::new(image, patch, dim, depth, heads, classes))
    }

    pub fn mlp_dim(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio).round() as usize
    }

    /// Patches plus the class token.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
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
        assert!(VitConfig::preset("vit-cpu", 7).is_none());
    }

    /// The embedded default's backbone: 4 x 4 patches of 8 px, 9 nodes, 8 parallel edges.
    #[test]
    fn cpu_p8_shape() {
        let c = VitConfig::preset("vit-cpu-p8", 12).unwrap();
        assert_eq!(c.tokens(), 17);
        assert_eq!(c.graph().nodes(), 9);
        assert_eq!((c.dim, c.heads, c.mlp_dim()), (64, 2, 256));
    }
}
