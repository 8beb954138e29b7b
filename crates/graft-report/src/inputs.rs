//! Reading a task's probe and fine-tune artifacts, through the types `graft_tables` defines
//! for them (the ones their stages write with). A file that is absent (`summary.json`, the
//! probe's costs, `model.json`) shows as "not recorded"; a file that is there but lacks a
//! field is an error naming the file and the field. Timings are read from the manifests (the
//! probe's costs, the fine-tune runs' measurements), where their stages keep them.

use std::path::Path;

use graft_tables::{
    EpochRow, FinetuneSummary, ModelInfo, ProbeCost, ProbeRow, ProposalRow, RunMeasurement, RunRow,
    Table,
};

use crate::ReportError;

/// Which replicate a task's artifacts belong to, when the report pools over an axis other
/// than the task (the backbone of `pipelines/replicates.toml`): `textures` of `backbone 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicate {
    /// The axis, as the report's `replicates.axis` names it (`backbone`).
    pub axis: String,
    /// This replicate's value on it (`3`).
    pub value: String,
    /// The task without the replicate (`textures`).
    pub task: String,
}

impl Replicate {
    /// `backbone 3`.
    pub fn label(&self) -> String {
        format!("{} {}", self.axis, self.value)
    }
}

/// Everything the report reads for one task.
#[derive(Debug, Clone, Default)]
pub struct TaskData {
    /// The name the report shows: the task, or `textures (backbone 3)` for a task of one
    /// replicate.
    pub task: String,
    /// `None` when the task is its own replicate.
    pub replicate: Option<Replicate>,
    pub probe: Vec<ProbeRow>,
    /// `None` when the probe artifact has no `model.json`.
    pub model: Option<ModelInfo>,
    /// `None` when the probe artifact recorded no costs.
    pub cost: Option<ProbeCost>,
    pub runs: Vec<RunRow>,
    /// What the runs measured (wall time, epoch seconds), from the fine-tune manifest; empty
    /// when it records none.
    pub measurements: Vec<RunMeasurement>,
    pub epochs: Vec<EpochRow>,
    pub proposals: Vec<ProposalRow>,
    /// `None` when the fine-tune artifact has no `summary.json`.
    pub summary: Option<FinetuneSummary>,
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
            replicate: None,
            probe: read_table_opt(&probe_dir.join(ProbeRow::FILE))?,
            model: read_model(&probe_dir.join(ModelInfo::FILE))?,
            cost: ProbeCost::read(probe_dir)?,
            runs: RunRow::read(&runs_path)?,
            measurements: if finetune_dir.join(graft_store::MANIFEST_FILE).exists() {
                RunMeasurement::read(finetune_dir)?
            } else {
                Vec::new()
            },
            epochs: read_table_opt(&finetune_dir.join(EpochRow::FILE))?,
            proposals: read_table_opt(&finetune_dir.join(ProposalRow::FILE))?,
            summary: FinetuneSummary::read(finetune_dir)?,
        })
    }

    /// The same task marked as replicate `value` on `axis`, named `task (axis value)`.
    pub fn of_replicate(mut self, axis: &str, value: &str) -> TaskData {
        let r = Replicate {
            axis: axis.to_owned(),
            value: value.to_owned(),
            task: self.task.clone(),
        };
        self.task = format!("{} ({})", r.task, r.label());
        self.replicate = Some(r);
        self
    }

    /// The task without its replicate (`textures` of `textures (backbone 3)`).
    pub fn base_task(&self) -> &str {
        self.replicate.as_ref().map_or(&self.task, |r| &r.task)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_files_are_not_recorded_and_a_missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (probe, finetune) = (dir.path().join("p"), dir.path().join("f"));
        for d in [&probe, &finetune] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(probe.join(graft_store::MANIFEST_FILE), r#"{"extra": {}}"#).unwrap();
        RunRow::write(&finetune.join(RunRow::FILE), &[]).unwrap();
        let t = TaskData::read("t", &probe, &finetune).unwrap();
        assert_eq!((t.cost, t.summary, t.model), (None, None, None));

        std::fs::write(
            finetune.join(FinetuneSummary::FILE),
            r#"{"task": "dtd", "backend": "flex", "seeds": [0]}"#,
        )
        .unwrap();
        let err = TaskData::read("t", &probe, &finetune)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("summary.json") && err.contains("missing field `preprocessing`"),
            "{err}"
        );
    }
}
