//! One fine-tuning run: a placement (or baseline) and a seed. It is the stage's cache unit:
//! [`RunSpec::key`] names it in the store (stage `finetune-run`), so a run that was trained
//! once, by any pipeline, is never trained again.
//!
//! A run's files hold only what training computed: how long it took, how fast it went, its
//! peak memory, the device and each epoch's seconds go to its manifest's `extra` (the
//! `seconds` column of its own `epochs.parquet` is 0). Retraining a run with the same spec
//! therefore reproduces its artifact id, whichever machine, executor or device ran it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use graft_graph::{Edge, Placement};
use graft_model::{AdapterAct, AdapterConfig, LoraConfig, Precision, Trainable, VitConfig};
use graft_store::{Artifact, ArtifactId, KeyInput, PublishInfo, StageKey, Store};
use graft_tables::{EpochRow, RunStatus, Table};
use graft_train::{CachedNodes, Progress, Rows, TrainConfig, TrainError, TrainProtocol};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::FinetuneError;
use crate::workbench::{CacheSettings, Workbench};

/// Stage name of a run's own artifact.
pub const RUN_STAGE: &str = "finetune-run";
/// Bump when a run's output for the same spec would change (the canary test in
/// `tests.rs` fails when it changes without one), and `Finetune::VERSION` with it: the
/// stage's key does not hold the runs' version.
/// 3: the fused LayerNorm, softmax, attention and linear operations, and the tch build's
/// CPU kernels pinned to AVX2 (`graft_backend::numerics`).
pub const RUN_VERSION: u32 = 3;
/// The run's facts inside its artifact.
pub const RUN_FILE: &str = "run.json";
/// The adapters and head of a run (adapter and linear-probe runs).
pub const WEIGHTS_FILE: &str = "adapters.safetensors";

/// What is trained: the `method` column's type, one definition in graft-tables.
pub use graft_tables::Method;

/// The parameters `method` trains.
fn trainable(method: Method) -> Trainable {
    match method {
        Method::Adapters | Method::AdaptersRandomInit | Method::Lora => Trainable::Adapters,
        Method::LinearProbe => Trainable::HeadOnly,
        Method::Full => Trainable::Full,
    }
}

/// How a run is trained and measured (spec section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolKind {
    /// Train on train, choose the epoch on val, report that epoch's test accuracy.
    #[default]
    Select,
    /// VTAB-1k's protocol in the PETL literature: train on train + val for exactly the
    /// configured epochs, report the last epoch's test accuracy; no model selection.
    Final,
}

impl ProtocolKind {
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Select => "select",
            ProtocolKind::Final => "final",
        }
    }

    /// `select` is left out of a run's key, so runs trained before the protocol was a
    /// parameter (all of them `select`) keep their keys.
    pub fn is_select(&self) -> bool {
        *self == ProtocolKind::Select
    }
}

/// The training protocol of a run (spec section 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    #[serde(default, skip_serializing_if = "ProtocolKind::is_select")]
    pub kind: ProtocolKind,
    /// The stage's protocol, `lr` being `full_lr` for full fine-tuning; flattened, so the
    /// run's key holds `epochs`, `lr`, ... beside `bottleneck` as it always did.
    #[serde(flatten)]
    pub train: TrainProtocol,
    pub bottleneck: usize,
    pub adapter_act: AdapterAct,
    pub adapter_scale: f64,
    /// LoRA's rank and alpha, for `lora` runs alone (the other runs' keys stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// What the products compute in; in the key except at f32 (the runs' keys from before
    /// it was a parameter stay as they were).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// Everything a run needs; all of it but `placement_id`, the paths and the device's index
/// enters the run's key (the device's class does: `device_class = "cuda"`, nothing for the
/// CPU, whose keys are those runs had before the class entered them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub placement_id: String,
    pub method: Method,
    pub edges: Vec<Edge>,
    pub seed: u64,
    pub preset: String,
    pub protocol: Protocol,
    /// Dataset artifact id.
    pub dataset: ArtifactId,
    /// Base checkpoint: artifact id, or the content fingerprint of a user's file.
    pub base: ArtifactId,
    /// Where the base checkpoint file is.
    pub base_path: PathBuf,
    /// Where the dataset artifact is.
    pub dataset_dir: PathBuf,
    pub device: String,
    /// The activation cache's settings (a location: not in the key).
    #[serde(default)]
    pub cache: CacheSettings,
    /// Steps between two reads of the loss back to the host; `None`: the device's default
    /// (`graft_train::default_loss_every`). A location: it changes when progress is
    /// reported, not what is trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_every: Option<usize>,
}

impl RunSpec {
    /// The parameters that enter the key.
    pub fn key_params(&self) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert("method".into(), Value::from(self.method.name()));
        m.insert(
            "edges".into(),
            Value::from(
                self.edges
                    .iter()
                    .map(|e| Value::from(vec![e.i as u64, e.j as u64]))
                    .collect::<Vec<_>>(),
            ),
        );
        m.insert("seed".into(), Value::from(self.seed));
        m.insert("preset".into(), Value::from(self.preset.clone()));
        m.insert(
            "protocol".into(),
            serde_json::to_value(&self.protocol).unwrap_or(Value::Null),
        );
        if let Some((name, class)) = graft_stage::device_key_param(&self.device) {
            m.insert(name.into(), class);
        }
        m
    }

    pub fn key_inputs(&self) -> BTreeMap<String, ArtifactId> {
        [
            ("dataset".to_owned(), self.dataset.clone()),
            ("base".to_owned(), self.base.clone()),
        ]
        .into()
    }

    pub fn key(&self) -> StageKey {
        KeyInput {
            stage: RUN_STAGE,
            stage_version: RUN_VERSION,
            params: &self.key_params(),
            inputs: &self.key_inputs(),
        }
        .key()
    }

    /// A short label for progress bars and messages.
    pub fn label(&self) -> String {
        let what = match self.method {
            Method::Adapters => format!("{} ({} adapters)", self.placement_id, self.edges.len()),
            Method::AdaptersRandomInit => format!("random-init {}", self.placement_id),
            Method::Lora => match &self.protocol.lora {
                Some(l) => format!("lora r={}", l.rank),
                None => "lora".to_owned(),
            },
            m => m.name().to_owned(),
        };
        format!("{what} seed {}", self.seed)
    }
}

/// What a run produced: its `run.json`, plus the fields marked "manifest" that are kept in
/// the manifest's `extra` instead (see the module comment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `ok` or `diverged` (`failed` only for a run that never produced a result).
    pub status: RunStatus,
    pub error: Option<String>,
    pub best_epoch: Option<usize>,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub train_loss: Option<f64>,
    pub trainable_params: usize,
    pub all_params: usize,
    pub forward_flops: u64,
    /// Manifest (its `wall_seconds`).
    #[serde(skip)]
    pub wall_seconds: f64,
    /// Manifest.
    #[serde(skip)]
    pub images_per_second: Option<f64>,
    /// Manifest.
    #[serde(skip)]
    pub peak_memory_bytes: Option<u64>,
    pub backend: String,
    /// Manifest.
    #[serde(skip)]
    pub device: String,
    /// Whether the artifact holds [`WEIGHTS_FILE`].
    pub weights: bool,
    /// Manifest: seconds of each epoch, in the order of `epochs.parquet`.
    #[serde(skip)]
    pub epoch_seconds: Vec<f64>,
    /// Manifest: the frozen-prefix activation cache the run trained from, if any.
    #[serde(skip)]
    pub activation_cache: Option<CacheUse>,
    /// An fp16 run's optimiser steps skipped for an overflow of its loss scale
    /// (`graft_train::LossScale`); absent in f32 and bf16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp16_skipped_steps: Option<usize>,
}

/// How a run used the activation cache (its manifest's `activation_cache`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheUse {
    /// The node the run trained from.
    pub node: usize,
    /// The nodes whose cached values the run read beside it ([`graft_graph::PlainStart`]).
    #[serde(default)]
    pub reads: Vec<usize>,
    /// Tokens kept per row (the pooled tokens alone for the linear probe: the class token,
    /// and the distillation token where there is one).
    pub tokens: usize,
    /// The splits served from the cache (a split too big for the budget is not).
    pub splits: Vec<String>,
    /// Bytes of this run's caches.
    pub bytes: usize,
    /// Of those, the bytes kept in the GPU's memory.
    #[serde(default)]
    pub device_bytes: usize,
    /// Bytes of all the worker's caches when the run began training.
    pub worker_bytes: usize,
}

impl RunResult {
    /// A result with nothing measured yet: no accuracies, counts or timings.
    pub fn untrained(status: RunStatus, error: Option<String>, device: &str) -> RunResult {
        RunResult {
            status,
            error,
            best_epoch: None,
            val_accuracy: None,
            test_accuracy: None,
            train_loss: None,
            trainable_params: 0,
            all_params: 0,
            forward_flops: 0,
            wall_seconds: 0.0,
            images_per_second: None,
            peak_memory_bytes: None,
            backend: graft_backend::backend_name().into(),
            device: device.to_owned(),
            weights: false,
            epoch_seconds: Vec::new(),
            activation_cache: None,
            fp16_skipped_steps: None,
        }
    }
}

/// Returns the run's artifact: from the store when it was trained before, else trains it
/// and publishes it, through [`Store::ensure`] (the key's lock makes two processes asking for
/// one run train it once; a corrupt entry is moved to `corrupt/` and retrained). The second
/// value holds the warnings about corrupt entries, each naming its file.
pub fn ensure_run(
    store: &Store,
    spec: &RunSpec,
    bench: &mut Workbench,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<(Artifact, Vec<String>), FinetuneError> {
    let key = spec.key();
    let params = spec.key_params();
    let inputs = spec.key_inputs();
    let ensured = store.ensure(&key, false, |_, out| {
        let start = Instant::now();
        reset_peak_rss();
        let result = train_run_with(spec, out.dir(), bench, on_progress)?;
        let result = RunResult {
            wall_seconds: start.elapsed().as_secs_f64(),
            peak_memory_bytes: peak_rss(),
            ..result
        };
        write_json(&out.file(RUN_FILE), &result)?;
        Ok::<_, FinetuneError>(PublishInfo {
            stage: RUN_STAGE,
            stage_version: RUN_VERSION,
            key: &key,
            params: &params,
            inputs: &inputs,
            extra: [
                ("device".to_owned(), Value::from(spec.device.clone())),
                (
                    "images_per_second".to_owned(),
                    serde_json::json!(result.images_per_second),
                ),
                (
                    "peak_memory_bytes".to_owned(),
                    serde_json::json!(result.peak_memory_bytes),
                ),
                (
                    "epoch_seconds".to_owned(),
                    serde_json::json!(result.epoch_seconds),
                ),
                (
                    "activation_cache".to_owned(),
                    serde_json::json!(result.activation_cache),
                ),
                (
                    "cpu_kernels".to_owned(),
                    serde_json::json!(graft_backend::numerics::record()),
                ),
            ]
            .into(),
            wall_seconds: result.wall_seconds,
        })
    })?;
    let warnings = ensured.warnings();
    Ok((ensured.artifact, warnings))
}

/// A dataset's splits, in the order a run's caches are kept.
const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Trains one run into `dir` (`epochs.parquet`, and the adapter weights when it has them),
/// with a workbench of its own. Divergence is a result (`status = "diverged"`), not an
/// error.
pub fn train_run(
    spec: &RunSpec,
    dir: &Path,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<RunResult, FinetuneError> {
    train_run_with(spec, dir, &mut Workbench::new(spec.cache), on_progress)
}

/// [`train_run`] with a worker's [`Workbench`]: its datasets and activation caches.
pub fn train_run_with(
    spec: &RunSpec,
    dir: &Path,
    bench: &mut Workbench,
    on_progress: impl FnMut(Progress<'_>),
) -> Result<RunResult, FinetuneError> {
    bench.begin_run();
    let data = bench.dataset(&spec.dataset_dir)?;
    let info = &data.info;
    let pre = &info.preprocessing;
    let config = VitConfig::preset(&spec.preset, info.classes.len())
        .ok_or_else(|| FinetuneError::Spec(format!("unknown preset {:?}", spec.preset)))?;
    let device = graft_backend::device(&spec.device)?;
    graft_backend::seed(&device, spec.seed);
    let mut model = config.init(&device);
    if spec.method != Method::AdaptersRandomInit {
        graft_model::checkpoint::load_timm(&mut model, &spec.base_path)?;
    }
    let placement = Placement::new(config.graph(), spec.edges.iter().copied())?;
    let adapter = AdapterConfig::new()
        .with_rank(spec.protocol.bottleneck)
        .with_act(spec.protocol.adapter_act)
        .with_scale(spec.protocol.adapter_scale);
    let mut model = model.with_placement(&placement, &adapter)?;
    if spec.method == Method::Lora {
        let lora = spec.protocol.lora.as_ref().ok_or_else(|| {
            FinetuneError::Spec(format!(
                "run {}: a lora run without protocol.lora (its rank and alpha)",
                spec.placement_id
            ))
        })?;
        model = model.with_lora(lora);
    }
    let model = model
        .with_trainable(trainable(spec.method))
        .with_precision(spec.protocol.precision);
    let count = model.param_count();
    let forward_flops = model.forward_flops();
    let p = &spec.protocol;
    let tc = TrainConfig::from(&p.train)
        .with_seed(spec.seed)
        .with_loss_every(spec.loss_every);
    let base = RunResult {
        trainable_params: count.trainable,
        all_params: count.all,
        forward_flops,
        ..RunResult::untrained(RunStatus::Ok, None, &spec.device)
    };

    // The frozen prefix: the plain values at the first node the placement writes and at the
    // nodes its adapters read without computing them (node 0, the embedding, for LoRA; the
    // last node's class token for the linear probe). Full fine-tuning trains it all.
    let entry = match spec.method {
        Method::Full => None,
        _ => Some(match model.plain_start() {
            Some(p) => (p.entry, p.reads, false),
            None => (2 * config.depth, Vec::new(), true),
        }),
    };
    // The caches' backbone: its weights and what they compute in.
    let backbone = match spec.method {
        Method::AdaptersRandomInit => format!("random-init {} seed {}", spec.preset, spec.seed),
        _ => format!("{} {}", spec.preset, spec.base),
    };
    let backbone = match spec.protocol.precision.low() {
        Some(_) => format!("{backbone} {:?}", spec.protocol.precision),
        None => backbone,
    };
    let worker_bytes = bench.cache_bytes();
    let mut caches = Vec::new();
    for name in SPLITS {
        caches.push(match &entry {
            Some((node, reads, cls)) => {
                let mut at = |node: usize, cls: bool| {
                    bench.node_cache(
                        &backbone,
                        &spec.dataset_dir,
                        name,
                        data.split(name),
                        pre,
                        node,
                        cls,
                        &model,
                        &device,
                    )
                };
                // In node order, so that each advances from the one below it.
                let mut order: Vec<usize> = reads.iter().copied().chain([*node]).collect();
                order.sort_unstable();
                let mut got = BTreeMap::new();
                for k in order {
                    got.insert(k, at(k, *cls && k == *node)?);
                }
                // All of a split's nodes, or none (it then goes through the whole network).
                let read: Option<Vec<_>> = reads.iter().map(|r| got[r].clone()).collect();
                got[node]
                    .clone()
                    .zip(read)
                    .map(|(e, r)| CachedNodes::new(e, r))
            }
            None => None,
        });
    }
    // Split k's rows: its cache, or its images.
    let rows = |k: usize| match &caches[k] {
        Some(c) => Rows::Node(c),
        None => Rows::Images {
            split: data.split(SPLITS[k]),
            pre,
        },
    };
    let used: Vec<String> = SPLITS
        .iter()
        .zip(&caches)
        .filter(|(_, c)| c.is_some())
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let activation_cache = entry
        .filter(|_| !used.is_empty())
        .map(|(node, reads, cls)| CacheUse {
            node,
            reads,
            tokens: if cls {
                config.pooled_tokens()
            } else {
                config.tokens()
            },
            splits: used,
            bytes: caches.iter().flatten().map(|c| c.bytes()).sum(),
            device_bytes: caches.iter().flatten().map(device_bytes).sum(),
            worker_bytes,
        });
    let fitted = match p.kind {
        ProtocolKind::Select => {
            graft_train::fit_rows(model, rows(0), Some(rows(1)), &tc, &device, on_progress)
        }
        ProtocolKind::Final => {
            // Train + val as one split: from the images, or the two caches joined.
            let joined_cache = match (&caches[0], &caches[1]) {
                (Some(t), Some(v)) => Some(t.concat(v)?),
                _ => None,
            };
            let joined_split;
            let train_val = match &joined_cache {
                Some(c) => Rows::Node(c),
                None => {
                    joined_split = data.train.concat(&data.val);
                    Rows::Images {
                        split: &joined_split,
                        pre,
                    }
                }
            };
            graft_train::fit_rows(model, train_val, None, &tc, &device, on_progress)
        }
    };
    let fit = match fitted {
        Ok(fit) => fit,
        Err(e @ TrainError::NonFinite { .. }) => {
            EpochRow::write(&dir.join(EpochRow::FILE), &[])?;
            return Ok(RunResult {
                status: RunStatus::Diverged,
                error: Some(e.to_string()),
                ..base
            });
        }
        Err(e) => return Err(e.into()),
    };
    let test_accuracy = graft_train::evaluate_rows(&fit.model, rows(2), &device, p.train.batch);
    let rows: Vec<EpochRow> = fit
        .history
        .iter()
        .map(|h| EpochRow {
            placement_id: spec.placement_id.clone(),
            seed: spec.seed as i64,
            epoch: h.epoch as i64,
            train_loss: h.train_loss,
            val_accuracy: h.val_accuracy,
            lr: h.lr,
            // In the manifest (`epoch_seconds`), so that the file is reproducible.
            seconds: 0.0,
        })
        .collect();
    EpochRow::write(&dir.join(EpochRow::FILE), &rows)?;
    let weights = spec.method != Method::Full;
    if weights {
        graft_model::checkpoint::save_adapters(
            &fit.model,
            &dir.join(WEIGHTS_FILE),
            &spec.preset,
            &spec.base.to_string(),
        )?;
    }
    Ok(RunResult {
        best_epoch: Some(fit.best_epoch),
        // Under `final` val is training data: no val accuracy.
        val_accuracy: (p.kind == ProtocolKind::Select).then_some(fit.best_val_accuracy),
        test_accuracy: Some(test_accuracy),
        train_loss: fit.history.get(fit.best_epoch).map(|h| h.train_loss),
        images_per_second: Some(fit.images_per_second),
        weights,
        epoch_seconds: fit.history.iter().map(|h| h.seconds).collect(),
        activation_cache,
        fp16_skipped_steps: fit.loss_scale.map(|s| s.skipped),
        ..base
    })
}

/// The bytes of a run's caches kept in the GPU's memory.
fn device_bytes(nodes: &CachedNodes) -> usize {
    let caches = std::iter::once(&nodes.entry).chain(&nodes.reads);
    let on_device = caches.filter(|c| c.residence() == graft_train::Residence::Device);
    on_device.map(|c| c.bytes()).sum()
}

/// Reads a run artifact's `run.json` and the facts its manifest keeps.
pub fn read_result(artifact: &Artifact) -> Result<RunResult, FinetuneError> {
    let path = artifact.file(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| FinetuneError::Io {
        path: path.clone(),
        source: e,
    })?;
    let result: RunResult = serde_json::from_str(&text).map_err(|e| FinetuneError::Json {
        path,
        message: e.to_string(),
    })?;
    let manifest = artifact.manifest();
    let extra = |name: &str| manifest.extra.get(name).cloned().unwrap_or(Value::Null);
    Ok(RunResult {
        wall_seconds: manifest.wall_seconds,
        images_per_second: extra("images_per_second").as_f64(),
        peak_memory_bytes: extra("peak_memory_bytes").as_u64(),
        device: extra("device").as_str().unwrap_or_default().to_owned(),
        epoch_seconds: serde_json::from_value(extra("epoch_seconds")).unwrap_or_default(),
        activation_cache: serde_json::from_value(extra("activation_cache")).unwrap_or_default(),
        ..result
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), FinetuneError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FinetuneError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| FinetuneError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Resets this process's peak resident memory (Linux: `5` into `/proc/self/clear_refs`),
/// so that [`peak_rss`] after a run is that run's, in a worker that trains several.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
