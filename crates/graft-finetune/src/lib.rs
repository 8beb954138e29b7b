//! The fine-tune stage: trains every placement of a proposals table (and the pipeline
//! file's `manual` placements) plus the baselines asked for, for every seed, with one of
//! the spec's two protocols (section 4: AdamW, warm-up + cosine; `select` trains on
//! `train`, chooses the epoch on `val` and reports `test`; `final` trains on `train` +
//! `val` for exactly `epochs` and reports the last epoch's `test`).
//!
//! Principal types: [`Finetune`] (the [`Stage`]), [`FinetuneParams`], [`run::RunSpec`] (one
//! placement and seed, the cache unit) and [`worker`] (the process fan-out).
//!
//! Decisions behind the shape:
//! - Each run is its own artifact in the store (stage `finetune-run`, keyed by the
//!   placement's edges, method, seed, protocol, dataset and base), so adding one placement
//!   to a table trains that one alone, whatever else changed around it. The stage's own
//!   artifact collects the runs into `runs.parquet`, `epochs.parquet`, `proposals.parquet`
//!   (what was trained) and the adapter-only weights, and refers to the run artifacts so
//!   `gc` keeps them.
//! - Every run trains in a worker process (`graft-finetune worker`): with `executor =
//!   "local"`, `jobs` of them at once, each with its own progress bar and its own peak
//!   memory; with `executor = "slurm"`, one Slurm array task each ([`slurm`]), the store on
//!   a filesystem the nodes share.
//! - A run whose loss goes NaN or inf is a result: its row says `diverged` and why, the
//!   others go on. A worker that fails otherwise (out of memory, killed) fails the stage
//!   after the others finish; their runs stay cached.

pub mod run;
pub mod slurm;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use graft_graph::{Edge, Graph, Placement};
use graft_model::{AdapterAct, VitConfig};
use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, ArtifactId, Publisher};
use graft_tables::{EpochRow, MeanStd, ProposalRow, RunRow, RunStatus, Table, edge_rows};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use run::ProtocolKind;
use run::{Method, Protocol, RunResult, RunSpec};

/// Errors of the fine-tune library; each names its file or field.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("{0}")]
    Spec(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error(transparent)]
    Table(#[from] graft_tables::TableError),
    #[error(transparent)]
    Train(#[from] graft_train::TrainError),
    #[error(transparent)]
    Model(#[from] graft_model::ModelError),
    #[error(transparent)]
    Graph(#[from] graft_graph::GraphError),
    #[error(transparent)]
    Backend(#[from] graft_backend::BackendError),
}

/// A placement listed in the pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualPlacement {
    /// A label for the report (the table keys runs by the placement id).
    #[serde(default)]
    pub name: Option<String>,
    /// Edges as `[i, j]` pairs.
    pub edges: Vec<[usize; 2]>,
}

/// The baselines that are not proposals.
pub const BASELINES: [&str; 4] = ["linear-probe", "full", "parallel-all", "random-init"];

/// Parameters of the fine-tune stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneParams {
    /// Take placements from a `proposals` input artifact.
    #[serde(default)]
    pub proposals: bool,
    /// Placements listed by hand.
    #[serde(default)]
    pub placements: Vec<ManualPlacement>,
    /// Of [`BASELINES`]: `linear-probe` (head only), `full` (every parameter, at
    /// `full_lr`), `parallel-all` (adapters on the 2L parallel edges) and `random-init`
    /// (parallel-all on a randomly initialised backbone).
    #[serde(default = "default_baselines")]
    pub baselines: Vec<String>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// A timm ViT safetensors file to use as the base instead of a `base` input artifact.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The base model's preset; read from the base artifact when it has one.
    #[serde(default)]
    pub preset: Option<String>,
    /// `select` (train on train, pick the epoch on val) or `final` (train on train + val
    /// for exactly `epochs`, test the last epoch): recorded in every run's row.
    #[serde(default)]
    pub protocol: ProtocolKind,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate of full fine-tuning.
    #[serde(default = "default_full_lr")]
    pub full_lr: f64,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub warmup_epochs: f64,
    /// Adapter bottleneck r.
    #[serde(default = "default_bottleneck")]
    pub bottleneck: usize,
    #[serde(default)]
    pub adapter_act: AdapterAct,
    #[serde(default = "default_scale")]
    pub adapter_scale: f64,
    /// Worker processes at once (location: not in the key).
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// `cpu`, `cuda` (with `jobs` > 1: one worker per GPU) or `cuda:k` (location).
    #[serde(default = "default_device")]
    pub device: String,
    /// Where runs train: `local` (worker processes here, `jobs` at a time) or `slurm` (one
    /// job array; the store must be an absolute path the nodes share). Location.
    #[serde(default = "default_executor")]
    pub executor: String,
    /// Slurm partition (`sbatch --partition`); the cluster's default when unset. Location.
    #[serde(default)]
    pub slurm_partition: Option<String>,
    /// Time limit per run (`sbatch --time`, e.g. `"2:00:00"`). Location.
    #[serde(default)]
    pub slurm_time: Option<String>,
    /// GPUs per array task (`sbatch --gpus-per-task`); 0 asks for none. Location.
    #[serde(default)]
    pub slurm_gpus_per_task: u32,
    /// CPUs per array task (`sbatch --cpus-per-task`), also the worker's thread count; 0
    /// leaves it to the cluster (one). Location.
    #[serde(default)]
    pub slurm_cpus_per_task: u32,
    /// More `sbatch` arguments, as they are (`["--account=lab", "--qos=short"]`). Location.
    #[serde(default)]
    pub slurm_args: Vec<String>,
    /// How many array tasks run at once (`--array=...%N`); 0 means no limit. Location.
    #[serde(default)]
    pub slurm_max_parallel: usize,
}

/// The executors of [`FinetuneParams::executor`].
pub const EXECUTORS: [&str; 2] = ["local", "slurm"];

fn default_executor() -> String {
    "local".into()
}

fn default_baselines() -> Vec<String> {
    vec!["linear-probe".into(), "full".into(), "parallel-all".into()]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_epochs() -> usize {
    10
}
fn default_lr() -> f64 {
    1e-3
}
fn default_full_lr() -> f64 {
    1e-4
}
fn default_batch() -> usize {
    64
}
fn default_wd() -> f64 {
    1e-4
}
fn default_warmup() -> f64 {
    1.0
}
fn default_bottleneck() -> usize {
    8
}
fn default_scale() -> f64 {
    1.0
}
fn default_jobs() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}

/// The stage.
pub struct Finetune;

impl Stage for Finetune {
    const NAME: &'static str = "finetune";
    // 2: runs.parquet has a `protocol` column, summary.json `train.protocol`.
    // 3: proposals.parquet carries each row's label, params and budgeted.
    const VERSION: u32 = 3;
    type Params = FinetuneParams;

    fn input_names(p: &FinetuneParams) -> Vec<String> {
        let mut v = vec!["dataset".to_owned()];
        if p.checkpoint.is_none() {
            v.push("base".into());
        }
        if p.proposals {
            v.push("proposals".into());
        }
        v
    }

    fn validate(p: FinetuneParams) -> Result<FinetuneParams, BoxError> {
        if let Some(b) = p
            .baselines
            .iter()
            .find(|b| !BASELINES.contains(&b.as_str()))
        {
            return Err(format!(
                "baselines: {b:?} is not a baseline (known: {})",
                BASELINES.join(", ")
            )
            .into());
        }
        if p.seeds.is_empty() {
            return Err("seeds must list at least one seed".into());
        }
        if p.epochs == 0 || p.batch == 0 || p.jobs == 0 || p.bottleneck == 0 {
            return Err("epochs, batch, jobs and bottleneck must be at least 1".into());
        }
        for (name, v) in [("lr", p.lr), ("full_lr", p.full_lr)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("{name} = {v} must be a positive number").into());
            }
        }
        graft_train::check_base_params(p.preset.as_deref(), p.checkpoint.as_deref())?;
        if let (Some(preset), false) = (&p.preset, p.placements.is_empty()) {
            let graph = VitConfig::preset(preset, 1).map(|c| c.graph());
            if let Some(graph) = graph {
                manual_placements(&p, graph)?;
            }
        }
        if p.placements.is_empty() && !p.proposals && p.baselines.is_empty() {
            return Err(
                "nothing to train: list placements, baselines, or set proposals = true".into(),
            );
        }
        graft_backend::device(&p.device)?;
        if !EXECUTORS.contains(&p.executor.as_str()) {
            return Err(format!(
                "executor = {:?} is not an executor (known: {})",
                p.executor,
                EXECUTORS.join(", ")
            )
            .into());
        }
        let last = worker::slot_device(&p.device, p.jobs - 1, p.jobs);
        if last != p.device {
            graft_backend::device(&last).map_err(|e| {
                format!(
                    "jobs = {} puts one worker on each of cuda:0..cuda:{}: {e}",
                    p.jobs,
                    p.jobs - 1
                )
            })?;
        }
        Ok(p)
    }

    fn location_params() -> &'static [&'static str] {
        &[
            "checkpoint",
            "jobs",
            "device",
            "executor",
            "slurm_partition",
            "slurm_time",
            "slurm_gpus_per_task",
            "slurm_cpus_per_task",
            "slurm_args",
            "slurm_max_parallel",
        ]
    }

    fn fingerprints(p: &FinetuneParams) -> Result<BTreeMap<String, ArtifactId>, BoxError> {
        Ok(graft_train::base_fingerprints(p.checkpoint.as_deref())?)
    }

    fn run(
        p: &FinetuneParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        let root = out.store().root();
        if p.executor == "slurm" && !root.is_absolute() {
            return Err(format!(
                "executor = \"slurm\": the store path {:?} is not absolute; Slurm tasks on other nodes need an absolute path to a store on a filesystem they all share",
                root.display().to_string()
            )
            .into());
        }
        let dataset = &inputs["dataset"];
        let base = graft_train::resolve_base(
            p.checkpoint.as_deref(),
            p.preset.as_deref(),
            inputs.get("base"),
        )?;
        let (base_id, base_path, preset) = (base.id, base.path, base.preset);
        let info = graft_train::DatasetInfo::read(dataset.dir())?;
        let config = VitConfig::preset(&preset, info.classes.len())
            .ok_or_else(|| format!("base preset {preset:?} is not a preset"))?;
        if config.image_size != info.preprocessing.image_size {
            return Err(format!(
                "base model {preset} takes {} px images but dataset {} has {} px (set the prep stage's image_size)",
                config.image_size,
                dataset.id().short(),
                info.preprocessing.image_size
            )
            .into());
        }
        let graph = config.graph();
        let dims = config.dims();
        let r = p.bottleneck;

        // What to train: proposal rows, then manual placements, then baselines.
        let mut rows: Vec<ProposalRow> = Vec::new();
        if p.proposals {
            let path = inputs["proposals"].file(ProposalRow::FILE);
            for row in ProposalRow::read(&path)? {
                let placement = graft_tables::placement(graph, &row.edges).map_err(|e| {
                    format!("{}: placement {}: {e}", path.display(), row.placement_id)
                })?;
                if row.method == Method::Adapters && placement.id() != row.placement_id {
                    return Err(format!(
                        "{}: placement_id {} does not match its edges (expected {})",
                        path.display(),
                        row.placement_id,
                        placement.id()
                    )
                    .into());
                }
                rows.push(row);
            }
        }
        let adapter_row = |heuristic: &str, placement: &Placement| ProposalRow {
            placement_id: placement.id(),
            heuristic: heuristic.to_owned(),
            label: heuristic.to_owned(),
            params: "{}".into(),
            budgeted: false,
            score: None,
            budget: placement.len() as i64,
            draw: 0,
            method: Method::Adapters,
            edges: edge_rows(placement),
            adapters: placement.len() as i64,
            trainable_params: dims.adapter_tuning_params(placement.len(), r) as i64,
            forward_flops: graft_graph::forward_flops(&dims, placement, r) as i64,
        };
        for placement in manual_placements(p, graph)? {
            rows.push(adapter_row("manual", &placement));
        }
        for b in &p.baselines {
            let row = match b.as_str() {
                "parallel-all" => adapter_row("parallel-all", &graph.parallel_all()),
                "random-init" => ProposalRow {
                    placement_id: format!("random-init-{}", graph.parallel_all().id()),
                    method: Method::AdaptersRandomInit,
                    label: Method::AdaptersRandomInit.name().into(),
                    ..adapter_row("baseline", &graph.parallel_all())
                },
                m => ProposalRow {
                    placement_id: m.to_owned(),
                    heuristic: "baseline".into(),
                    label: m.to_owned(),
                    params: "{}".into(),
                    budgeted: false,
                    score: None,
                    budget: 0,
                    draw: 0,
                    method: Method::parse(m)
                        .ok_or_else(|| format!("baselines: {m:?} is not a baseline"))?,
                    edges: vec![],
                    adapters: 0,
                    trainable_params: 0,
                    forward_flops: graft_graph::forward_flops(&dims, &Placement::empty(), r) as i64,
                },
            };
            rows.push(row);
        }

        // One run per distinct placement id and seed.
        let protocol = |lr: f64| Protocol {
            kind: p.protocol,
            epochs: p.epochs,
            lr,
            batch: p.batch,
            weight_decay: p.weight_decay,
            warmup_epochs: p.warmup_epochs,
            bottleneck: p.bottleneck,
            adapter_act: p.adapter_act,
            adapter_scale: p.adapter_scale,
        };
        let mut seen = BTreeSet::new();
        let mut specs = Vec::new();
        for row in &rows {
            if !seen.insert(row.placement_id.clone()) {
                continue;
            }
            let method = row.method;
            let lr = if method == Method::Full {
                p.full_lr
            } else {
                p.lr
            };
            for &seed in &p.seeds {
                specs.push(RunSpec {
                    placement_id: row.placement_id.clone(),
                    method,
                    edges: row.edges.iter().map(|e| e.edge()).collect(),
                    seed,
                    preset: preset.clone(),
                    protocol: protocol(lr),
                    dataset: dataset.id().clone(),
                    base: base_id.clone(),
                    base_path: base_path.clone(),
                    dataset_dir: dataset.dir().to_path_buf(),
                    device: p.device.clone(),
                });
            }
        }

        // Cached runs are read; the rest train in workers.
        let store = out.store();
        let mut found: Vec<Option<Artifact>> = Vec::with_capacity(specs.len());
        let mut todo = Vec::new();
        for (k, spec) in specs.iter().enumerate() {
            // The same corrupt-entry path as every lookup: warned, moved aside, retrained.
            match store.settle(&spec.key())? {
                graft_store::Lookup::Hit(a) => found.push(Some(a)),
                other => {
                    if let graft_store::Lookup::Corrupt(c) = other {
                        eprintln!("warning: {c}");
                    }
                    found.push(None);
                    todo.push(k);
                }
            }
        }
        let cached = specs.len() - todo.len();
        let workers = p.jobs.min(todo.len().max(1));
        let how = match p.executor.as_str() {
            "slurm" => "as a Slurm job array".to_owned(),
            _ => format!(
                "with {workers} worker{}",
                if workers == 1 { "" } else { "s" }
            ),
        };
        eprintln!(
            "finetune: {} runs ({} placements x {} seeds): {cached} cached, {} to train {how} on {}",
            specs.len(),
            seen.len(),
            p.seeds.len(),
            todo.len(),
            p.device
        );
        let mut failures = Vec::new();
        if !todo.is_empty() {
            let exe = std::env::current_exe()?;
            let todo_specs: Vec<RunSpec> = todo.iter().map(|&k| specs[k].clone()).collect();
            let outcomes = match p.executor.as_str() {
                "slurm" => slurm::run_array(&exe, store, &todo_specs, &slurm_options(p))?,
                _ => worker::run_all(&exe, store.root(), &todo_specs, p.jobs),
            };
            for (k, outcome) in todo.iter().zip(outcomes) {
                match outcome {
                    worker::Outcome::Published(id) => found[*k] = Some(store.artifact(&id)?),
                    worker::Outcome::Failed(msg) => failures.push((*k, msg)),
                }
            }
        }

        // Tables.
        let mut run_rows = Vec::new();
        let mut epoch_rows = Vec::new();
        let mut results: BTreeMap<String, RunResult> = BTreeMap::new();
        for (k, spec) in specs.iter().enumerate() {
            let failed = failures
                .iter()
                .find(|(f, _)| *f == k)
                .map(|(_, m)| m.clone());
            let (result, artifact) = match (&found[k], failed) {
                (Some(a), _) => (run::read_result(a)?, Some(a)),
                (None, msg) => (
                    RunResult {
                        status: RunStatus::Failed,
                        error: Some(msg.unwrap_or_else(|| "not run".into())),
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
                        device: spec.device.clone(),
                        weights: false,
                        epoch_seconds: Vec::new(),
                    },
                    None,
                ),
            };
            let mut weights_file = None;
            if let Some(a) = artifact {
                out.refer(a.id());
                for (k, mut e) in EpochRow::read(&a.file(EpochRow::FILE))?
                    .into_iter()
                    .enumerate()
                {
                    e.placement_id = spec.placement_id.clone();
                    e.seconds = result.epoch_seconds.get(k).copied().unwrap_or(0.0);
                    epoch_rows.push(e);
                }
                if result.weights {
                    let name = format!(
                        "adapters-{}-seed{}.safetensors",
                        spec.placement_id, spec.seed
                    );
                    let from = a.file(run::WEIGHTS_FILE);
                    std::fs::copy(&from, out.file(&name))
                        .map_err(|e| format!("{}: {e}", from.display()))?;
                    weights_file = Some(name);
                }
            }
            run_rows.push(RunRow {
                placement_id: spec.placement_id.clone(),
                method: spec.method,
                protocol: Some(spec.protocol.kind.name().into()),
                seed: spec.seed as i64,
                edges: spec.edges.iter().map(|&e| e.into()).collect(),
                adapters: spec.edges.len() as i64,
                trainable_params: result.trainable_params as i64,
                forward_flops: result.forward_flops as i64,
                status: result.status,
                error: result.error.clone(),
                best_epoch: result.best_epoch.map(|e| e as i64),
                val_accuracy: result.val_accuracy,
                test_accuracy: result.test_accuracy,
                train_loss: result.train_loss,
                wall_seconds: result.wall_seconds,
                images_per_second: result.images_per_second,
                peak_memory_bytes: result.peak_memory_bytes.map(|b| b as i64),
                backend: result.backend.clone(),
                device: result.device.clone(),
                run_artifact: artifact.map(|a| a.id().to_string()).unwrap_or_default(),
                weights_file,
            });
            if result.status != RunStatus::Failed {
                results.entry(spec.placement_id.clone()).or_insert(result);
            }
        }
        // Proposal rows carry the measured counts of what was trained.
        for row in &mut rows {
            if let Some(r) = results.get(&row.placement_id) {
                row.trainable_params = r.trainable_params as i64;
                row.forward_flops = r.forward_flops as i64;
            }
        }
        RunRow::write(&out.file(RunRow::FILE), &run_rows)?;
        EpochRow::write(&out.file(EpochRow::FILE), &epoch_rows)?;
        ProposalRow::write(&out.file(ProposalRow::FILE), &rows)?;
        let summary = json!({
            "task": dataset.manifest().params.get("task").cloned().unwrap_or(Value::Null),
            "preprocessing": dataset_preprocessing(dataset),
            "backend": graft_backend::backend_name(),
            "device": p.device,
            "seeds": p.seeds,
            "program_version": graft_store::PROGRAM_VERSION,
            "base": base_id.to_string(),
            "preset": preset,
            "classes": info.classes.len(),
            "train": {
                "protocol": p.protocol.name(),
                "epochs": p.epochs, "lr": p.lr, "full_lr": p.full_lr, "batch": p.batch,
                "weight_decay": p.weight_decay, "warmup_epochs": p.warmup_epochs,
                "bottleneck": p.bottleneck,
            },
        });
        std::fs::write(
            out.file("summary.json"),
            serde_json::to_string_pretty(&summary)? + "\n",
        )?;
        eprint!("{}", results_table(&rows, &run_rows));
        if !failures.is_empty() {
            let msgs: Vec<String> = failures
                .iter()
                .map(|(k, m)| format!("{}: {m}", specs[*k].label()))
                .collect();
            return Err(format!(
                "{} of {} runs failed (the others are cached; rerun to retry): {}",
                failures.len(),
                specs.len(),
                msgs.join("; ")
            )
            .into());
        }
        let diverged = run_rows
            .iter()
            .filter(|r| r.status == RunStatus::Diverged)
            .count();
        Ok([
            ("runs".to_owned(), json!(specs.len())),
            ("trained".to_owned(), json!(todo.len())),
            ("cached".to_owned(), json!(cached)),
            ("diverged".to_owned(), json!(diverged)),
            ("placements".to_owned(), json!(seen.len())),
            ("backend".to_owned(), json!(graft_backend::backend_name())),
            ("device".to_owned(), json!(p.device)),
        ]
        .into())
    }
}

fn slurm_options(p: &FinetuneParams) -> slurm::SlurmOptions {
    slurm::SlurmOptions {
        partition: p.slurm_partition.clone(),
        time: p.slurm_time.clone(),
        gpus_per_task: p.slurm_gpus_per_task,
        cpus_per_task: p.slurm_cpus_per_task,
        args: p.slurm_args.clone(),
        max_parallel: p.slurm_max_parallel,
    }
}

/// The manual placements, checked against `graph`; errors name the placement.
fn manual_placements(p: &FinetuneParams, graph: Graph) -> Result<Vec<Placement>, BoxError> {
    p.placements
        .iter()
        .enumerate()
        .map(|(k, m)| {
            if m.edges.is_empty() {
                return Err(format!("placements[{k}] has no edges").into());
            }
            Placement::new(graph, m.edges.iter().map(|&[i, j]| Edge::new(i, j))).map_err(|e| {
                format!(
                    "placements[{k}]{}: {e}",
                    m.name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                )
                .into()
            })
        })
        .collect()
}

fn dataset_preprocessing(dataset: &Artifact) -> Value {
    std::fs::read_to_string(dataset.file("dataset.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("preprocessing").cloned())
        .unwrap_or(Value::Null)
}

/// The human summary printed at the end: one line per placement, test accuracy over seeds.
pub fn results_table(rows: &[ProposalRow], runs: &[RunRow]) -> String {
    let mut s = format!(
        "{:<26} {:<14} {:>8} {:>10} {:>16} {:>16}\n",
        "placement", "from", "adapters", "params", "val %", "test %"
    );
    let mut seen = BTreeSet::new();
    for row in rows {
        if !seen.insert(&row.placement_id) {
            continue;
        }
        let mine: Vec<&RunRow> = runs
            .iter()
            .filter(|r| r.placement_id == row.placement_id)
            .collect();
        let pct = |f: fn(&RunRow) -> Option<f64>| {
            let xs = mine.iter().filter_map(|r| f(r)).map(|x| 100.0 * x);
            match graft_tables::mean_std(xs) {
                Some(MeanStd {
                    mean,
                    std: Some(sd),
                    ..
                }) => format!("{mean:.1} ± {sd:.1}"),
                Some(MeanStd { mean, .. }) => format!("{mean:.1}"),
                None => mine
                    .first()
                    .map(|r| r.status.to_string())
                    .unwrap_or_else(|| "-".into()),
            }
        };
        // Few edges read better than an id.
        let label = if (1..=3).contains(&row.edges.len()) {
            let edges: Vec<String> = row
                .edges
                .iter()
                .map(|e| format!("({}, {})", e.i, e.j))
                .collect();
            let prefix = if row.method == Method::Adapters {
                ""
            } else {
                "random-init "
            };
            format!("{prefix}{}", edges.join(" "))
        } else {
            row.placement_id.clone()
        };
        s.push_str(&format!(
            "{:<26} {:<14} {:>8} {:>10} {:>16} {:>16}\n",
            label,
            row.heuristic,
            row.adapters,
            mine.first().map(|r| r.trainable_params).unwrap_or(0),
            pct(|r| r.val_accuracy),
            pct(|r| r.test_accuracy),
        ));
    }
    s
}

#[cfg(test)]
mod tests;
