//! The training protocol shared by the pretrain and fine-tune stages (spec section 4):
//! AdamW, cosine schedule with linear warm-up, batches from a dataset artifact, and one of
//! two ways to end: [`fit`] measures accuracy on a held-out split after every epoch and
//! keeps the best epoch's weights (the `select` protocol); [`fit_final`] trains for exactly
//! the configured epochs and keeps the last (the `final` protocol, with no held-out split).
//!
//! Principal types: [`TrainProtocol`] (the protocol's knobs, one set of defaults),
//! [`TrainConfig`] (a protocol and a seed), [`Split`] and [`DatasetInfo`]
//! (a dataset artifact in memory), [`fit`] / [`fit_final`] (the loop) and [`evaluate`].
//! A loss that is not finite stops the run with [`TrainError::NonFinite`].

mod base;
pub mod batches;
pub mod cache;
mod data;
pub mod hub;
pub mod progress;
pub mod scale;

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use graft_model::{Precision, Vit};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use base::{
    BaseModel, base_fingerprints, check_base_params, checkpoint_file, file_fingerprint,
    resolve_base,
};
pub use batches::{Batch, Batches, LossReadback};
pub use cache::{CachedNodes, NodeCache, Residence, Rows};
pub use data::{DatasetInfo, Preprocessing, Split};
pub use progress::Progress;
pub use scale::LossScale;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Data {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(
        "loss is {loss} at epoch {epoch}, step {step} (learning rate {lr:e}): training diverged"
    )]
    NonFinite {
        loss: f32,
        epoch: usize,
        step: usize,
        lr: f64,
    },
    #[error("empty split {0}")]
    Empty(&'static str),
    /// An activation cache that could not be read back from the device.
    #[error("activation cache: {0}")]
    Cache(String),
    /// Training losses that could not be read back from the device.
    #[error("reading the losses back from the device: {0}")]
    Readback(String),
    /// A dataset file that is missing, unreadable or not what `graft_tables` defines.
    #[error(transparent)]
    Table(#[from] graft_tables::TableError),
}

/// The knobs of the training protocol (spec section 4), declared once: the pretrain and
/// fine-tune stages flatten it into their parameters (`#[serde(flatten)]`, so a pipeline
/// names `epochs`, `lr`, `batch`, `weight_decay` and `warmup_epochs` directly), and the
/// probe's head starts from its defaults.
///
/// The defaults are those of adapter fine-tuning in the PETL literature, the stages'
/// subject: AdamW at lr 1e-3 and weight decay 1e-4, batch 64, one warm-up epoch. Training
/// a ViT from scratch wants far more weight decay (0.05, as DeiT), so the pipelines with a
/// pretrain stage set `weight_decay = 0.05` there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainProtocol {
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Peak learning rate, after the warm-up.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    /// AdamW's decoupled weight decay.
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Linear warm-up length, in epochs.
    #[serde(default = "defaults::warmup_epochs")]
    pub warmup_epochs: f64,
}

/// The one set of defaults of [`TrainProtocol`].
mod defaults {
    pub fn epochs() -> usize {
        10
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn batch() -> usize {
        64
    }
    pub fn weight_decay() -> f64 {
        1e-4
    }
    pub fn warmup_epochs() -> f64 {
        1.0
    }
}

impl Default for TrainProtocol {
    fn default() -> TrainProtocol {
        TrainProtocol {
            epochs: defaults::epochs(),
            lr: defaults::lr(),
            batch: defaults::batch(),
            weight_decay: defaults::weight_decay(),
            warmup_epochs: defaults::warmup_epochs(),
        }
    }
}

impl TrainProtocol {
    /// Learning rate at optimiser step `step` of `total`: linear warm-up, then cosine to 0.
    pub fn lr_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        let total = (self.epochs * steps_per_epoch).max(1) as f64;
        let warm = (self.warmup_epochs * steps_per_epoch as f64)
            .min(total - 1.0)
            .max(0.0);
        let s = step as f64;
        if s < warm {
            self.lr * (s + 1.0) / warm
        } else {
            let t = (s - warm) / (total - warm).max(1.0);
            0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// One training run's configuration: a [`TrainProtocol`], the seed of the data order and
/// how often the loss is read back. Reads as the protocol (`config.epochs`) through `Deref`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub protocol: TrainProtocol,
    pub seed: u64,
    /// Steps between two reads of the loss back to the host ([`LossReadback`]); `None`:
    /// [`default_loss_every`] for the device. It changes when progress is reported, never
    /// what is trained or recorded.
    pub loss_every: Option<usize>,
    /// The first loss scale of a model computing in fp16 ([`LossScale`]); `None`:
    /// [`scale::INIT_SCALE`]. Unused in f32 and bf16.
    pub loss_scale: Option<f32>,
}

/// Steps between two reads of the loss on a GPU, where each read waits for the device, when
/// the configuration leaves it open.
pub const GPU_LOSS_EVERY: usize = 16;

/// Steps between two reads of the loss on `device`: every step on the CPU, where a read
/// waits for nothing; [`GPU_LOSS_EVERY`] on a GPU.
pub fn default_loss_every(device: &Device) -> usize {
    match graft_backend::is_gpu(device) {
        true => GPU_LOSS_EVERY,
        false => 1,
    }
}

impl TrainConfig {
    /// `epochs` at `lr`, the protocol's defaults for the rest, seed 0.
    pub fn new(epochs: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            protocol: TrainProtocol {
                epochs,
                lr,
                ..TrainProtocol::default()
            },
            seed: 0,
            loss_every: None,
            loss_scale: None,
        }
    }

    pub fn with_batch(mut self, batch: usize) -> TrainConfig {
        self.protocol.batch = batch;
        self
    }

    pub fn with_weight_decay(mut self, weight_decay: f64) -> TrainConfig {
        self.protocol.weight_decay = weight_decay;
        self
    }

    pub fn with_warmup_epochs(mut self, warmup_epochs: f64) -> TrainConfig {
        self.protocol.warmup_epochs = warmup_epochs;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> TrainConfig {
        self.seed = seed;
        self
    }

    pub fn with_loss_every(mut self, every: Option<usize>) -> TrainConfig {
        self.loss_every = every;
        self
    }

    pub fn with_loss_scale(mut self, init: Option<f32>) -> TrainConfig {
        self.loss_scale = init;
        self
    }
}

impl From<&TrainProtocol> for TrainConfig {
    /// The protocol with seed 0.
    fn from(protocol: &TrainProtocol) -> TrainConfig {
        TrainConfig {
            protocol: protocol.clone(),
            seed: 0,
            loss_every: None,
            loss_scale: None,
        }
    }
}

impl std::ops::Deref for TrainConfig {
    type Target = TrainProtocol;
    fn deref(&self) -> &TrainProtocol {
        &self.protocol
    }
}

/// One epoch of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    /// `None` under [`fit_final`], which has no held-out split.
    pub val_accuracy: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}

/// Checks a stage's `precision` against its `device` (`cpu`, `cuda`, `cuda:k`): fp16 is for
/// GPUs. On the CPU LibTorch has no fast fp16 kernels (a step takes many times its f32
/// time, BENCHMARKS.md "Precision"), so a run there is refused before it starts; bf16 is
/// the CPU's low precision.
pub fn check_precision(precision: Precision, device: &str) -> Result<(), String> {
    let cpu = matches!(device.parse(), Ok(graft_backend::DeviceSpec::Cpu));
    if cpu && precision == Precision::Fp16 {
        return Err(format!(
            "precision = \"fp16\" on device = {device:?}: fp16 needs a CUDA device (the CPU has no fast fp16 kernels and runs it many times slower than f32); use \"bf16\" on the CPU, or \"f32\""
        ));
    }
    Ok(())
}

/// What a tensor stage's `Stage::before_work` gives for `precision` on `device`: a bf16 run on the CPU takes the machine's own CPU kernels
/// ([`graft_backend::numerics::native_for_bf16`]); nothing otherwise.
pub fn before_work(precision: Precision, device: &str) -> Option<fn()> {
    let cpu = matches!(device.parse(), Ok(graft_backend::DeviceSpec::Cpu));
    (cpu && precision == Precision::Bf16)
        .then_some(graft_backend::numerics::native_for_bf16 as fn())
}

/// The outcome of [`fit`] (the best epoch's model) or [`fit_final`] (the last epoch's) and
/// the curves.
#[derive(Debug)]
pub struct FitResult {
    pub model: Vit,
    /// The epoch whose weights `model` holds: the best on val, or the last.
    pub best_epoch: usize,
    /// Its accuracy on val; NaN under [`fit_final`].
    pub best_val_accuracy: f64,
    pub history: Vec<EpochRecord>,
    /// Training throughput over all epochs (forward, backward and optimiser step).
    pub images_per_second: f64,
    pub train_seconds: f64,
    /// fp16's loss scale at the end and the steps it skipped for an overflow; `None` in
    /// f32 and bf16.
    pub loss_scale: Option<LossScale>,
}

/// Trains `model` (on the autodiff version of `device`) on `train`, choosing the epoch
/// with the best accuracy on `val`. `on_progress` hears of every optimiser step and every
/// epoch ([`Progress`]).
pub fn fit(
    model: Vit,
    train: &Split,
    val: &Split,
    pre: &Preprocessing,
    config: &TrainConfig,
    device: &Device,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<FitResult, TrainError> {
    fit_rows(
        model,
        Rows::Images { split: train, pre },
        Some(Rows::Images { split: val, pre }),
        config,
        device,
        on_progress,
    )
}

/// Trains `model` on `train` for exactly `config.epochs` epochs and keeps the last epoch's
/// weights: no held-out split, no model selection, no early stopping (the `final`
/// protocol, where `train` is train + val and only test accuracy is reported).
pub fn fit_final(
    model: Vit,
    train: &Split,
    pre: &Preprocessing,
    config: &TrainConfig,
    device: &Device,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<FitResult, TrainError> {
    fit_rows(
        model,
        Rows::Images { split: train, pre },
        None,
        config,
        device,
        on_progress,
    )
}

/// [`fit`] (with `val`) or [`fit_final`] (without) on any [`Rows`]: images, or a node's
/// cached values (the frozen-prefix activation cache), which must then be the model's
/// plain values at a [`Vit::plain_start`] (its entry and reads) or below its entry. A model
/// computing in fp16 trains under a dynamic loss scale ([`LossScale`]): a step whose
/// gradients overflow is skipped.
pub fn fit_rows(
    model: Vit,
    train: Rows<'_>,
    val: Option<Rows<'_>>,
    config: &TrainConfig,
    device: &Device,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<FitResult, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Empty("train"));
    }
    if val.is_some_and(|v| v.is_empty()) {
        return Err(TrainError::Empty("val"));
    }
    let ad = device.clone().autodiff();
    // `train` moves the parameters onto the autodiff device as tracked leaves (`fork` and
    // `to_device` to an autodiff device do not); the trainable mode is then applied there.
    let mode = model.trainable;
    let mut model = model.train().with_trainable(mode);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let steps_per_epoch = train.len().div_ceil(config.batch);
    let total = steps_per_epoch * config.epochs;
    let mut scale = LossScale::for_precision(model.precision, config.loss_scale);
    let mut losses = LossReadback::new(config.loss_every.unwrap_or(default_loss_every(device)));
    let mut step = 0;
    let mut history = Vec::new();
    let mut best: Option<(usize, f64, Vit)> = None;
    let mut train_seconds = 0.0;
    for epoch in 0..config.epochs {
        let t0 = Instant::now();
        let order = epoch_order(train.len(), config.seed, epoch);
        let mut loss_sum = 0.0;
        let mut lr = 0.0;
        for batch in Batches::new(train, &order, config.batch, &ad) {
            let loss = loss_fn.forward(model.forward_input(batch.input), batch.labels);
            lr = config.lr_at(step, steps_per_epoch);
            losses.push(loss.clone(), step, lr, batch.rows);
            let loss = match &scale {
                Some(s) => loss * s.scale(),
                None => loss,
            };
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if scale.as_mut().is_none_or(|s| s.unscale(&mut grads, &model)) {
                model = optim.step(lr, model, grads);
            }
            step += 1;
            if losses.due() {
                losses.settle(epoch, total, &mut loss_sum, &mut on_progress)?;
            }
        }
        losses.settle(epoch, total, &mut loss_sum, &mut on_progress)?;
        train_seconds += t0.elapsed().as_secs_f64();
        let val_accuracy = val.map(|val| evaluate_rows(&model, val, device, config.batch));
        history.push(EpochRecord {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            val_accuracy,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        });
        on_progress(Progress::Epoch {
            record: &history[history.len() - 1],
            epochs: config.epochs,
        });
        match val_accuracy {
            Some(acc) if best.as_ref().is_none_or(|(_, best, _)| acc > *best) => {
                best = Some((epoch, acc, model.clone()));
            }
            Some(_) => {}
            // No held-out split: the last epoch is the result; no copy per epoch.
            None if epoch + 1 == config.epochs => {
                best = Some((epoch, f64::NAN, model.clone()));
            }
            None => {}
        }
    }
    let (best_epoch, best_val_accuracy, best_model) = best.ok_or(TrainError::Empty("epochs"))?;
    Ok(FitResult {
        model: best_model.valid().to_device(device),
        best_epoch,
        best_val_accuracy,
        history,
        images_per_second: (train.len() * config.epochs) as f64 / train_seconds.max(1e-9),
        train_seconds,
        loss_scale: scale,
    })
}

/// The order of the rows in `epoch`: a shuffle seeded by the run's seed and the epoch.
fn epoch_order(rows: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
    ));
    order
}

/// Top-1 accuracy of `model` on `split`, without gradients, on `device`.
pub fn evaluate(
    model: &Vit,
    split: &Split,
    pre: &Preprocessing,
    device: &Device,
    batch: usize,
) -> f64 {
    evaluate_rows(model, Rows::Images { split, pre }, device, batch)
}

/// [`evaluate`] on any [`Rows`]. The count of correct predictions stays on the device until
/// the last batch.
pub fn evaluate_rows(model: &Vit, rows: Rows<'_>, device: &Device, batch: usize) -> f64 {
    let model = model.valid().to_device(device);
    let idx: Vec<usize> = (0..rows.len()).collect();
    let mut correct: Option<Tensor<1, Int>> = None;
    for b in Batches::new(rows, &idx, batch, device) {
        let pred = model.forward_input(b.input).argmax(1).flatten::<1>(0, 1);
        let hits = pred.equal(b.labels).int().sum();
        correct = Some(match correct {
            Some(c) => c + hits,
            None => hits,
        });
    }
    let correct = correct.map_or(0, |c| c.into_scalar::<i64>() as usize);
    correct as f64 / rows.len().max(1) as f64
}

#[cfg(test)]
mod tests;
