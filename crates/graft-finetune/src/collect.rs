//! Collection: every run's result (from its artifact, or a `failed` row when its worker
//! failed) becomes a row of `runs.parquet` and its epochs rows of `epochs.parquet`; the
//! proposal rows get the measured counts; [`summary`] says what the runs were trained on.
//! What the runs measured (wall time, speed, memory, device index, epoch seconds) goes to the
//! stage's manifest ([`RunMeasurement`]), never into these files: retraining the same runs
//! gives the same files, hence the same artifact id.

use std::collections::BTreeMap;

use graft_stage::BoxError;
use graft_store::{Artifact, ArtifactId, Publisher};
use graft_tables::{
    DatasetInfo, EpochRow, FinetuneSummary, ProposalRow, RunMeasurement, RunRow, RunStatus, Table,
    TrainSettings,
};

use crate::FinetuneParams;
use crate::dispatch::Dispatched;
use crate::run::{self, RunResult, RunSpec};

/// Writes `runs.parquet`, `epochs.parquet`, `proposals.parquet` (`rows` with the measured
/// parameter counts and FLOPs of what was trained) and each run's adapter weights into
/// `out`, and refers to every run artifact. Returns the run rows, in spec order, and what
/// each run measured (for the manifest), in the same order.
pub fn write_tables(
    out: &Publisher,
    specs: &[RunSpec],
    dispatched: &Dispatched,
    rows: &mut [ProposalRow],
) -> Result<(Vec<RunRow>, Vec<RunMeasurement>), BoxError> {
    let mut run_rows = Vec::new();
    let mut measurements = Vec::new();
    let mut epoch_rows = Vec::new();
    let mut results: BTreeMap<String, RunResult> = BTreeMap::new();
    for (k, spec) in specs.iter().enumerate() {
        let failed = dispatched
            .failures
            .iter()
            .find(|(f, _)| *f == k)
            .map(|(_, m)| m.clone());
        let (result, artifact) = match (&dispatched.found[k], failed) {
            (Some(a), _) => (run::read_result(a)?, Some(a)),
            (None, msg) => (failed_result(spec, msg), None),
        };
        let mut weights_file = None;
        if let Some(a) = artifact {
            out.refer(a.id());
            epoch_rows.extend(epochs_of(a, spec)?);
            if result.weights {
                weights_file = Some(copy_weights(out, a, spec)?);
            }
        }
        run_rows.push(run_row(spec, &result, artifact, weights_file));
        measurements.push(measurement(spec, &result, artifact.is_some()));
        if result.status != RunStatus::Failed {
            results.entry(spec.placement_id.clone()).or_insert(result);
        }
    }
    // Proposal rows carry the measured counts of what was trained.
    for row in rows.iter_mut() {
        if let Some(r) = results.get(&row.placement_id) {
            row.trainable_params = r.trainable_params as i64;
            row.forward_flops = r.forward_flops as i64;
        }
    }
    RunRow::write(&out.file(RunRow::FILE), &run_rows)?;
    EpochRow::write(&out.file(EpochRow::FILE), &epoch_rows)?;
    ProposalRow::write(&out.file(ProposalRow::FILE), rows)?;
    Ok((run_rows, measurements))
}

/// What the run measured, from its manifest (`read_result`); nothing for a run without an
/// artifact.
fn measurement(spec: &RunSpec, result: &RunResult, trained: bool) -> RunMeasurement {
    RunMeasurement {
        placement_id: spec.placement_id.clone(),
        seed: spec.seed as i64,
        wall_seconds: trained.then_some(result.wall_seconds),
        images_per_second: result.images_per_second,
        peak_memory_bytes: result.peak_memory_bytes,
        device: trained.then(|| result.device.clone()),
        epoch_seconds: result.epoch_seconds.clone(),
    }
}

/// The result of a run whose worker failed (`msg`) or that did not run.
fn failed_result(spec: &RunSpec, msg: Option<String>) -> RunResult {
    RunResult::untrained(
        RunStatus::Failed,
        Some(msg.unwrap_or_else(|| "not run".into())),
        &spec.device,
    )
}

/// The run artifact's epochs, under the stage's placement id (their seconds stay 0: they
/// are measurements, in the manifest).
fn epochs_of(a: &Artifact, spec: &RunSpec) -> Result<Vec<EpochRow>, BoxError> {
    Ok(EpochRow::read(&a.file(EpochRow::FILE))?
        .into_iter()
        .map(|mut e| {
            e.placement_id = spec.placement_id.clone();
            e
        })
        .collect())
}

/// Copies the run's adapter weights into `out`; returns the file's name there.
fn copy_weights(out: &Publisher, a: &Artifact, spec: &RunSpec) -> Result<String, BoxError> {
    let name = format!(
        "adapters-{}-seed{}.safetensors",
        spec.placement_id, spec.seed
    );
    let from = a.file(run::WEIGHTS_FILE);
    std::fs::copy(&from, out.file(&name)).map_err(|e| format!("{}: {e}", from.display()))?;
    Ok(name)
}

fn run_row(
    spec: &RunSpec,
    result: &RunResult,
    artifact: Option<&Artifact>,
    weights_file: Option<String>,
) -> RunRow {
    RunRow {
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
        backend: result.backend.clone(),
        device: graft_stage::device_class(&spec.device).to_owned(),
        run_artifact: artifact.map(|a| a.id().to_string()).unwrap_or_default(),
        weights_file,
    }
}

/// `summary.json`: the dataset (its prep `task` parameter, when it had one, and `info`),
/// the base model and the protocol of every run.
pub fn summary(
    p: &FinetuneParams,
    task: Option<String>,
    info: &DatasetInfo,
    base: &ArtifactId,
    preset: &str,
) -> FinetuneSummary {
    FinetuneSummary {
        task,
        preprocessing: info.preprocessing.clone(),
        backend: graft_backend::backend_name().into(),
        device: graft_stage::device_class(&p.device).to_owned(),
        seeds: crate::plan::all_seeds(p),
        program_version: graft_store::PROGRAM_VERSION.into(),
        base: base.to_string(),
        preset: preset.to_owned(),
        classes: info.classes.len() as u64,
        train: TrainSettings {
            protocol: Some(p.protocol.name().into()),
            epochs: p.train.epochs as u64,
            lr: p.train.lr,
            full_lr: p.full_lr,
            batch: p.train.batch as u64,
            weight_decay: p.train.weight_decay,
            warmup_epochs: p.train.warmup_epochs,
            bottleneck: p.bottleneck as u64,
        },
    }
}
