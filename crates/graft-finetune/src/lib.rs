//! The fine-tune stage: trains every placement of a proposals table (and the pipeline
//! file's `manual` placements) plus the baselines asked for, for every seed, with one of
//! the spec's two protocols (section 4: AdamW, warm-up + cosine; `select` trains on
//! `train`, chooses the epoch on `val` and reports `test`; `final` trains on `train` +
//! `val` for exactly `epochs` and reports the last epoch's `test`).
//!
//! Principal types: [`Finetune`] (the [`Stage`]), [`FinetuneParams`], [`run::RunSpec`] (one
//! placement and seed, the cache unit) and [`worker`] (the process fan-out). The stage's
//! `run` is three steps: [`plan`] (proposal rows, manual placements, baselines and seeds to
//! run specs; pure), [`dispatch`] (the store, then local workers or Slurm for what it lacks)
//! and [`collect`] (the tables, `summary.json`), then the console table.
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

pub mod collect;
pub mod dispatch;
pub mod plan;
pub mod run;
pub mod slurm;
pub mod workbench;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use graft_graph::{Edge, Graph, Placement};
use graft_model::{AdapterAct, LoraConfig, Precision, VitConfig};
use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, ArtifactId, Publisher};
use graft_tables::{MeanStd, Method, ProposalRow, RunMeasurement, RunRow, RunStatus, Table};
use graft_train::TrainProtocol;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use run::ProtocolKind;

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
pub const BASELINES: [&str; 5] = [
    "linear-probe",
    "full",
    "parallel-all",
    "random-init",
    "lora",
];

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
    /// `full_lr`), `parallel-all` (adapters on the 2L parallel edges), `random-init`
    /// (parallel-all on a randomly initialised backbone) and `lora` (LoRA of rank
    /// `lora_rank` on every block's query and value projections, and the head, at `lr`).
    #[serde(default = "default_baselines")]
    pub baselines: Vec<String>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Seeds of the placements that only the `single-sweep` heuristic proposes (a sweep at
    /// one seed is cheaper than at all of `seeds`); `seeds` when unset. Every other placement
    /// (baselines, budgeted heuristics, manual, and sweep edges another heuristic also
    /// chose) trains at `seeds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_seeds: Option<Vec<u64>>,
    /// How many of those sweep-only placements train at every seed of `seeds` as well,
    /// taken in the sweep's order one edge kind after another (parallel, sequential,
    /// long-range, recurrent, then again): the repeated edges whose seed-to-seed spread the
    /// report sets beside the one-seed sweep. Needs `sweep_seeds`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sweep_repeats: usize,
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
    /// `epochs`, `lr`, `batch`, `weight_decay`, `warmup_epochs`, with the protocol's
    /// defaults.
    #[serde(flatten)]
    pub train: TrainProtocol,
    /// Learning rate of full fine-tuning.
    #[serde(default = "default_full_lr")]
    pub full_lr: f64,
    /// Adapter bottleneck r.
    #[serde(default = "default_bottleneck")]
    pub bottleneck: usize,
    #[serde(default)]
    pub adapter_act: AdapterAct,
    #[serde(default = "default_scale")]
    pub adapter_scale: f64,
    /// Rank r of the `lora` baseline's updates. Left out of the key at its default, so
    /// adding it kept every existing key.
    #[serde(
        default = "default_lora_rank",
        skip_serializing_if = "is_default_lora_rank"
    )]
    pub lora_rank: usize,
    /// alpha of the `lora` baseline: its updates are scaled by alpha / r. The default 8 is
    /// PEFT's and Hu et al.'s (alpha set to the first rank tried and not tuned): s = 1 at
    /// r = 8. Left out of the key at its default.
    #[serde(
        default = "default_lora_alpha",
        skip_serializing_if = "is_default_lora_alpha"
    )]
    pub lora_alpha: f64,
    /// What the matrix products and attention compute in, with autocast's semantics
    /// (`graft_model::Precision`): `f32` (the default), `bf16`, or `fp16` (a CUDA device
    /// only, under a dynamic loss scale). A bf16 run on the CPU takes the machine's own CPU
    /// kernels (`graft_backend::numerics::native_for_bf16`). In the stage's key and every
    /// run's, except at f32 (so adding it kept every existing key).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Worker processes at once (location: not in the key).
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Train frozen-backbone runs from the first node they touch, on activations computed
    /// once per worker (the frozen-prefix activation cache; location: same results within
    /// float rounding, so not in the key).
    #[serde(default = "default_true")]
    pub activation_cache: bool,
    /// Host memory one worker's activation caches may take, in MiB (location). A split
    /// whose cache would not fit goes through the whole network, as without the cache.
    #[serde(default = "default_cache_memory_mib")]
    pub cache_memory_mib: usize,
    /// GPU memory the activation caches of the workers on one GPU may take, in MiB, shared
    /// evenly among them (location). A cache that does not fit there is kept in host memory
    /// (`cache_memory_mib`), each batch copied through pinned memory without blocking, one
    /// batch ahead. Unused on the CPU.
    #[serde(default = "default_cache_device_memory_mib")]
    pub cache_device_memory_mib: usize,
    /// `cpu`, `cuda` (with `jobs` > `workers_per_gpu`: the workers spread over GPUs
    /// `cuda:0`, `cuda:1`, ...) or `cuda:k`: a location, whose class (`cpu`, `cuda`) enters
    /// the stage's key and every run's. With `executor = "slurm"` each array task opens it on
    /// its node, among the `slurm_gpus_per_task` GPUs it is granted.
    #[serde(default = "default_device")]
    pub device: String,
    /// Workers per GPU when `device = "cuda"` spreads `jobs` workers over GPUs, for models
    /// too small to keep a GPU busy alone (location).
    #[serde(default = "default_workers_per_gpu")]
    pub workers_per_gpu: usize,
    /// CPU threads of each local worker, on the CPU or a GPU; 0: the machine's cores shared
    /// out among the `jobs` workers (location).
    #[serde(default)]
    pub worker_threads: usize,
    /// Steps between two reads of the training loss back to the host; each read waits for a
    /// GPU to finish the steps queued on it. 0: every step on the CPU, every 16th on a GPU.
    /// Only when progress is reported changes, not what is trained or recorded (location).
    #[serde(default)]
    pub loss_every: usize,
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
    /// GPUs per array task (`sbatch --gpus-per-task`, with `--ntasks=1`); 0 asks for none,
    /// and `device = "cuda:k"` needs at least k + 1. Location.
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
fn is_zero(n: &usize) -> bool {
    *n == 0
}
fn default_full_lr() -> f64 {
    1e-4
}
fn default_bottleneck() -> usize {
    8
}
fn default_scale() -> f64 {
    1.0
}
fn default_lora_rank() -> usize {
    LoraConfig::new().rank
}
fn is_default_lora_rank(r: &usize) -> bool {
    *r == default_lora_rank()
}
fn default_lora_alpha() -> f64 {
    LoraConfig::new().alpha
}
fn is_default_lora_alpha(a: &f64) -> bool {
    *a == default_lora_alpha()
}
fn default_jobs() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_cache_memory_mib() -> usize {
    workbench::CacheSettings::default().memory_mib
}
fn default_cache_device_memory_mib() -> usize {
    workbench::DEVICE_MEMORY_MIB
}
fn default_workers_per_gpu() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}

/// The stage.
pub struct Finetune;

/// What the stage binary says it does (`--help`; also `graft-front`'s).
pub const ABOUT: &str = "Fine-tune placements and baselines on a dataset artifact, one cached run per placement and seed";

impl Stage for Finetune {
    const NAME: &'static str = "finetune";
    // 2: runs.parquet has a `protocol` column, summary.json `train.protocol`.
    // 3: proposals.parquet carries each row's label, params and budgeted.
    // 4: wall times, images/s, peak memory, the device index and epoch seconds left the
    //    files for the manifest (`run_measurements`); `device` is the device class.
    // 5: the runs' version 3 (`run::RUN_VERSION`), which is not in this stage's key: bump
    //    this one with it.
    const VERSION: u32 = 5;
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
        match &p.sweep_seeds {
            Some(s) if s.is_empty() => {
                return Err("sweep_seeds must list at least one seed (or be left out)".into());
            }
            None if p.sweep_repeats > 0 => {
                return Err(format!(
                    "sweep_repeats = {} needs sweep_seeds: without it every sweep edge trains \
                     at all of seeds already",
                    p.sweep_repeats
                )
                .into());
            }
            _ => {}
        }
        if p.train.epochs == 0
            || p.train.batch == 0
            || p.jobs == 0
            || p.bottleneck == 0
            || p.lora_rank == 0
        {
            return Err("epochs, batch, jobs, bottleneck and lora_rank must be at least 1".into());
        }
        if p.workers_per_gpu == 0 {
            return Err("workers_per_gpu must be at least 1".into());
        }
        for (name, v) in [
            ("lr", p.train.lr),
            ("full_lr", p.full_lr),
            ("lora_alpha", p.lora_alpha),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("{name} = {v} must be a positive number").into());
            }
        }
        graft_train::check_base_params(p.preset.as_deref(), p.checkpoint.as_deref())?;
        graft_train::check_precision(p.precision, &p.device)?;
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
        if !EXECUTORS.contains(&p.executor.as_str()) {
            return Err(format!(
                "executor = {:?} is not an executor (known: {})",
                p.executor,
                EXECUTORS.join(", ")
            )
            .into());
        }
        match p.executor.as_str() {
            "slurm" => slurm_device(&p)?,
            _ => local_devices(&p)?,
        }
        Ok(p)
    }

    /// With the local executor this process checks the workers' CUDA devices, which only
    /// the binary's backend can; the submitter of a Slurm array checks nothing that depends
    /// on the backend.
    fn backend_decides(p: &FinetuneParams) -> bool {
        p.executor != "slurm" && graft_backend::backend_decides(&p.device)
    }

    fn before_work(p: &FinetuneParams) -> Option<fn()> {
        graft_train::before_work(p.precision, &p.device)
    }

    fn location_params() -> &'static [&'static str] {
        &[
            "checkpoint",
            "jobs",
            "activation_cache",
            "cache_memory_mib",
            "cache_device_memory_mib",
            "device",
            "workers_per_gpu",
            "worker_threads",
            "loss_every",
            "executor",
            "slurm_partition",
            "slurm_time",
            "slurm_gpus_per_task",
            "slurm_cpus_per_task",
            "slurm_args",
            "slurm_max_parallel",
        ]
    }

    fn device(p: &FinetuneParams) -> Option<&str> {
        Some(&p.device)
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
        let proposals_path = p
            .proposals
            .then(|| inputs["proposals"].file(ProposalRow::FILE));
        let proposals = match &proposals_path {
            Some(path) => Some((path.as_path(), ProposalRow::read(path)?)),
            None => None,
        };
        let mut rows = plan::rows_to_train(p, config.graph(), &config.dims(), proposals)?;
        let ctx = plan::RunContext {
            preset: preset.clone(),
            dataset: dataset.id().clone(),
            dataset_dir: dataset.dir().to_path_buf(),
            base: base_id.clone(),
            base_path,
        };
        let plan::RunPlan { specs, placements } = plan::run_specs(p, &rows, &ctx)?;

        let dispatched = dispatch::dispatch(p, out.store(), &specs, placements)?;

        let (run_rows, measurements) = collect::write_tables(out, &specs, &dispatched, &mut rows)?;
        let task = dataset
            .manifest()
            .params
            .get("task")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        collect::summary(p, task, &info, &base_id, &preset).write(out.dir())?;
        eprint!("{}", results_table(&rows, &run_rows));
        let failures = &dispatched.failures;
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
        // The most memory a worker's activation caches held, by what each run recorded
        // (runs found in the store count with the figures of the worker that trained them).
        let cache_bytes = dispatched
            .found
            .iter()
            .flatten()
            .filter_map(|a| run::read_result(a).ok()?.activation_cache)
            .map(|c| c.worker_bytes + c.bytes)
            .max()
            .unwrap_or(0);
        Ok([
            ("runs".to_owned(), json!(specs.len())),
            ("activation_cache_bytes".to_owned(), json!(cache_bytes)),
            ("trained".to_owned(), json!(dispatched.trained)),
            ("cached".to_owned(), json!(dispatched.cached)),
            ("diverged".to_owned(), json!(diverged)),
            ("placements".to_owned(), json!(placements)),
            ("backend".to_owned(), json!(graft_backend::backend_name())),
            ("device".to_owned(), json!(p.device)),
            (RunMeasurement::KEY.to_owned(), json!(measurements)),
        ]
        .into())
    }
}

/// The devices the local workers will open, opened here so that a missing one fails at
/// `--check`: `device`, and with `device = "cuda"` and `jobs` > 1 the last worker's
/// `cuda:{jobs-1}`.
fn local_devices(p: &FinetuneParams) -> Result<(), BoxError> {
    graft_backend::device(&p.device)?;
    let last = worker::Layout::of(p).device(&p.device, p.jobs - 1);
    if last != p.device {
        graft_backend::device(&last).map_err(|e| {
            format!(
                "jobs = {} with workers_per_gpu = {} puts workers on cuda:0..{last}: {e}",
                p.jobs, p.workers_per_gpu
            )
        })?;
    }
    Ok(())
}

/// What the process submitting a Slurm array can know of `device`, which its tasks open on
/// their nodes: the spec's syntax, and that each task is granted the GPUs it names
/// (`slurm_gpus_per_task` at least k + 1 for `cuda:k`; a task sees its own GPUs as cuda:0
/// on). Whether the build has CUDA and how many devices a node has are left to the tasks:
/// the submitting host (a login node) may have no GPU, and a task that cannot open its
/// device fails with the reason as a failed run.
fn slurm_device(p: &FinetuneParams) -> Result<(), BoxError> {
    if let graft_backend::DeviceSpec::Cuda(k) = p.device.parse()? {
        let needed = k + 1;
        if (p.slurm_gpus_per_task as usize) < needed {
            return Err(format!(
                "slurm_gpus_per_task = {} with device = {:?} and executor = \"slurm\": each \
                 array task must be granted {needed} GPU{} (sbatch --gpus-per-task) to open \
                 it, or it sees none; set slurm_gpus_per_task = {needed}",
                p.slurm_gpus_per_task,
                p.device,
                if needed == 1 { "" } else { "s" },
            )
            .into());
        }
    }
    Ok(())
}

pub(crate) fn slurm_options(p: &FinetuneParams) -> slurm::SlurmOptions {
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
