//! Reading a task's probe and fine-tune artifacts. The JSON files are read leniently: every
//! field is optional, so a field an older stage did not write shows as "not recorded"
//! instead of failing the report.

use std::path::Path;

use graft_tables::{EpochRow, ModelInfo, ProbeRow, ProposalRow, RunRow, Table};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ReportError;

/// The probe's costs, from its manifest's `extra` (probe version 2 on), or from `cost.json`
/// in artifacts an earlier probe wrote.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ProbeCost {
    pub forward_backward_seconds: Option<f64>,
    pub svd_seconds: Option<f64>,
    pub total_seconds: Option<f64>,
    pub train_step_seconds: Option<f64>,
    pub cost_in_train_steps: Option<f64>,
    pub batches: Option<i64>,
    pub batch: Option<i64>,
    pub tokens: Option<String>,
    pub tolerance: Option<f64>,
    pub head: Option<String>,
}

/// `preprocessing` of a fine-tune `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Preprocessing {
    pub image_size: Option<i64>,
    pub interpolation: Option<String>,
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
}

/// `train` of a fine-tune `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct TrainSettings {
    pub protocol: Option<String>,
    pub epochs: Option<i64>,
    pub lr: Option<f64>,
    pub batch: Option<i64>,
    pub weight_decay: Option<f64>,
    pub warmup_epochs: Option<f64>,
    pub bottleneck: Option<i64>,
}

/// `summary.json` of a fine-tune artifact.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct FinetuneSummary {
    pub task: Option<String>,
    pub preprocessing: Option<Preprocessing>,
    pub backend: Option<String>,
    pub device: Option<String>,
    pub seeds: Option<Vec<i64>>,
    pub program_version: Option<String>,
    pub base: Option<String>,
    pub train: Option<TrainSettings>,
    pub classes: Option<i64>,
}

/// Everything the report reads for one task.
#[derive(Debug, Clone, Default)]
pub struct TaskData {
    pub task: String,
    pub probe: Vec<ProbeRow>,
    /// `None` when the probe artifact has no `model.json`.
    pub model: Option<ModelInfo>,
    pub cost: ProbeCost,
    pub runs: Vec<RunRow>,
    pub epochs: Vec<EpochRow>,
    pub proposals: Vec<ProposalRow>,
    pub summary: FinetuneSummary,
}

impl TaskData {
    /// Reads task `task` from the directories of its probe and fine-tune artifacts.
    /// `runs.parquet` must exist; every other file may be missing.
    pub fn read(
        task: &str,
        probe_dir: &Path,
        finetune_dir: &Path,
    ) -> Result<TaskData, ReportError> {
        let runs_path = finetune_dir.join(RunRow::FILE);
        if !runs_path.exists() {
            return Err(ReportError::Missing {
                task: task.to_owned(),
                path: runs_path,
            });
        }
        Ok(TaskData {
            task: task.to_owned(),
            probe: read_table_opt(&probe_dir.join(ProbeRow::FILE))?,
            model: read_model(&probe_dir.join(ModelInfo::FILE))?,
            cost: read_probe_cost(probe_dir)?,
            runs: RunRow::read(&runs_path)?,
            epochs: read_table_opt(&finetune_dir.join(EpochRow::FILE))?,
            proposals: read_table_opt(&finetune_dir.join(ProposalRow::FILE))?,
            summary: read_json_opt(&finetune_dir.join("summary.json"))?,
        })
    }

    /// Nodes of the residual graph, n = 2L + 1: from `model.json`, else from the largest
    /// node any table names.
    pub fn nodes(&self) -> usize {
        if let Some(m) = &self.model {
            return 2 * m.dims.layers + 1;
        }
        let probe = self.probe.iter().flat_map(|r| [r.i, r.j]);
        let runs = self
            .runs
            .iter()
            .flat_map(|r| r.edges.iter().flat_map(|e| [e.i, e.j]));
        let max = probe.chain(runs).max().unwrap_or(0).max(0) as usize;
        // Round up to an odd count: nodes are 0..=2L.
        if max.is_multiple_of(2) {
            max + 1
        } else {
            max + 2
        }
    }
}

/// The probe keeps its timings in the manifest only, so that its artifact id does not change
/// with them; the manifest's `extra` holds the same fields `cost.json` once did.
fn read_probe_cost(probe_dir: &Path) -> Result<ProbeCost, ReportError> {
    let old = probe_dir.join("cost.json");
    if old.exists() {
        return read_json_opt(&old);
    }
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct ManifestExtra {
        extra: ProbeCost,
    }
    let m: ManifestExtra = read_json_opt(&probe_dir.join(graft_store::MANIFEST_FILE))?;
    Ok(m.extra)
}

fn read_table_opt<T: Table>(path: &Path) -> Result<Vec<T>, ReportError> {
    if path.exists() {
        Ok(T::read(path)?)
    } else {
        Ok(Vec::new())
    }
}

fn read_model(path: &Path) -> Result<Option<ModelInfo>, ReportError> {
    if path.exists() {
        Ok(Some(ModelInfo::read(path)?))
    } else {
        Ok(None)
    }
}

fn read_json_opt<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => {
            return Err(ReportError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| ReportError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_leniently() {
        let s: FinetuneSummary =
            serde_json::from_str(r#"{"task": "dtd", "train": {"bottleneck": 8}, "extra": 1}"#)
                .unwrap();
        assert_eq!(s.task.as_deref(), Some("dtd"));
        assert_eq!(s.train.unwrap().bottleneck, Some(8));
        assert_eq!(s.backend, None);
        let c: ProbeCost = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ProbeCost::default());
    }
}
