//! A Vision Transformer whose residual stream is a graph: nodes 0..=2L (see
//! `graft_graph`), with one bottleneck [`Adapter`] per edge of a placement.
//!
//! Principal types: [`VitConfig`] (shape and presets) builds a [`Vit`];
//! [`Vit::with_placement`] attaches adapters (parallel, sequential, long-range and
//! recurrent edges; recurrent ones run the spec's two-pass forward);
//! [`Vit::with_lora`] adds LoRA on the query and value projections of every block (the
//! baseline every PETL table compares against); [`Vit::with_trainable`] freezes the backbone; [`Vit::trace`] records every node's
//! activation and, after one backward pass, every node's gradient, which is all the probe
//! needs. [`checkpoint`] reads and writes timm's safetensors names and adapter-only files.
//!
//! Model code takes a burn `Device`; `graft-backend` picks it. Adapters start with
//! W_up = 0 and b_up = 0, and LoRA with B = 0, so any placement (and LoRA) gives exactly the
//! pretrained logits at init. Every randomly initialised parameter (the ViT's, the
//! adapters') is drawn on the CPU ([`on_host`]) and moved to the device: a CUDA run starts
//! from the weights a CPU run with the same seed starts from.

pub mod checkpoint;
mod config;
mod vit;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

pub use config::{
    AdapterAct, AdapterConfig, FAMILIES, LoraConfig, MlpAct, PRESETS, Precision, Trainable,
    VitConfig,
};
pub use vit::{Adapter, Attention, Block, Mlp, ModelInput, NodeTrace, PatchEmbed, QvLora, Vit};

/// Errors of the model crate. Every variant names the file, edge or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Graph(#[from] graft_graph::GraphError),
    #[error("trace needs a placement without recurrent edges (the probe traces the plain network)")]
    TraceRecurrent,
    #[error("unknown preset {0:?} (known: {list})", list = PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("{path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error(
        "{path}: key {key:?} belongs to none of the ViT families graft knows ({known}); \
         graft loads timm's VisionTransformer state dicts of these families only",
        known = FAMILIES.join("; ")
    )]
    UnknownFamily { path: String, key: String },
    #[error("{0}")]
    Mismatch(Box<KeyMismatch>),
}

/// A checkpoint whose keys or shapes do not fit the model: every difference at once.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} ({layout}) does not fit {model}:{missing}{unexpected}{shapes}{hint}",
    hint = if fits.is_empty() {
        String::new()
    } else {
        format!("\n  the file fits preset {}", fits.join(" or "))
    },
    missing = list("missing keys", missing),
    unexpected = list("unexpected keys", unexpected),
    shapes = list("shape mismatches", shapes)
)]
pub struct KeyMismatch {
    pub path: String,
    /// The model's family and sizes.
    pub model: String,
    /// The family and options the file's keys show.
    pub layout: String,
    /// The presets the file's keys and shapes fit.
    pub fits: Vec<&'static str>,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub shapes: Vec<String>,
}

fn list(what: &str, items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("\n  {what} ({}): {}", items.len(), items.join(", "))
    }
}

/// Touches every parameter so lazily initialised weights are drawn now, in module order.
pub(crate) fn materialize<M: Module>(module: M) -> M {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// Builds a module on `graft_backend::host()` (the CPU, without autodiff), draws every
/// parameter there now ([`materialize`], in module order) and moves it to `device` (`fork`:
/// fresh leaves), onto its autodiff backend when it has one (`Module::train`; a moved tensor
/// keeps the autodiff context it was made in). So the initial weights for a seed
/// (`graft_backend::seed`) are the CPU generator's draws, whatever device trains them.
pub fn on_host<M: Module>(device: &Device, build: impl FnOnce(&Device) -> M) -> M {
    let host = graft_backend::host();
    let module = materialize(build(&host));
    let module = if *device == host {
        module
    } else {
        module.fork(&device.clone().without_autodiff())
    };
    if device.is_autodiff() {
        module.train()
    } else {
        module
    }
}

/// Parameter counts in the style of PEFT's `print_trainable_parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    pub trainable: usize,
    pub all: usize,
}

impl std::fmt::Display for ParamCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            self.trainable,
            self.all,
            100.0 * self.trainable as f64 / self.all.max(1) as f64
        )
    }
}

impl Vit {
    /// Trainable and total parameters for the current [`Trainable`] mode.
    pub fn param_count(&self) -> ParamCount {
        let all = self.num_params();
        let heads = self.head.num_params() + self.head_dist.as_ref().map_or(0, Module::num_params);
        let trainable = match self.trainable {
            Trainable::Full => all,
            Trainable::HeadOnly => heads,
            Trainable::Adapters => {
                heads
                    + self.adapters.iter().map(Module::num_params).sum::<usize>()
                    + self.lora.iter().map(Module::num_params).sum::<usize>()
            }
        };
        ParamCount { trainable, all }
    }

    /// Analytic forward FLOPs per image of this model with its placement and LoRA.
    pub fn forward_flops(&self) -> u64 {
        let rank = self
            .adapters
            .first()
            .map(|a| a.down.weight.val().dims()[1])
            .unwrap_or(0);
        let dims = self.config.dims();
        let lora = self.lora.first().map_or(0, |l| dims.lora_flops(l.rank()));
        graft_graph::forward_flops(&dims, &self.placement(), rank) + lora
    }
}

#[cfg(test)]
mod tests;
