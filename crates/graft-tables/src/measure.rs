//! What a fine-tune stage's runs measured: wall time, speed, peak memory, where each ran and
//! each epoch's seconds. They are in the stage's manifest (`extra.run_measurements`, one per
//! row of `runs.parquet`, in its order), never in its files, so that retraining the same runs
//! (after `gc`, on another executor, on another machine) reproduces the stage's artifact id
//! and everything downstream stays fresh. Written by the fine-tune stage, read by the report.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TableError;
use crate::json::{from_json_value, read_json};

/// What one run (a row of `runs.parquet`) measured, from the run's own manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeasurement {
    pub placement_id: String,
    pub seed: i64,
    /// Seconds the run took to train; null for a run that produced no artifact (failed).
    pub wall_seconds: Option<f64>,
    /// Training images per second.
    pub images_per_second: Option<f64>,
    /// Peak resident memory of the process that trained the run.
    pub peak_memory_bytes: Option<u64>,
    /// The device it trained on (`cpu`, `cuda:1`); null for a run that failed.
    pub device: Option<String>,
    /// Seconds of each epoch, in the order of `epochs.parquet`.
    pub epoch_seconds: Vec<f64>,
}

impl RunMeasurement {
    /// The key of the fine-tune manifest's `extra` that holds them.
    pub const KEY: &'static str = "run_measurements";

    /// The measurements in the manifest of the fine-tune artifact in `dir`; empty when it
    /// records none (fine-tune version 3 and earlier kept them in `runs.parquet`). A record
    /// that lacks a field is an error naming the manifest and the field.
    pub fn read(dir: &Path) -> Result<Vec<RunMeasurement>, TableError> {
        let path = dir.join(graft_store::MANIFEST_FILE);
        let manifest: serde_json::Value = read_json(&path)?;
        match manifest.get("extra").and_then(|e| e.get(Self::KEY)) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(v) => from_json_value(&path, v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> RunMeasurement {
        RunMeasurement {
            placement_id: "p".into(),
            seed: 1,
            wall_seconds: Some(2.5),
            images_per_second: Some(400.0),
            peak_memory_bytes: Some(1 << 30),
            device: Some("cuda:1".into()),
            epoch_seconds: vec![1.0, 1.25],
        }
    }

    fn manifest_with(dir: &Path, extra: serde_json::Value) {
        let m = serde_json::json!({ "stage": "finetune", "extra": extra });
        std::fs::write(dir.join(graft_store::MANIFEST_FILE), m.to_string()).unwrap();
    }

    #[test]
    fn read_from_the_manifest_none_when_absent_and_a_missing_field_named() {
        let dir = tempfile::tempdir().unwrap();
        manifest_with(
            dir.path(),
            serde_json::json!({ RunMeasurement::KEY: [example()] }),
        );
        assert_eq!(RunMeasurement::read(dir.path()).unwrap(), vec![example()]);
        manifest_with(dir.path(), serde_json::json!({ "runs": 3 }));
        assert_eq!(RunMeasurement::read(dir.path()).unwrap(), vec![]);
        let mut bad = serde_json::to_value(example()).unwrap();
        bad.as_object_mut().unwrap().remove("seed");
        manifest_with(
            dir.path(),
            serde_json::json!({ RunMeasurement::KEY: [bad] }),
        );
        let e = RunMeasurement::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("missing field `seed`"),
            "{e}"
        );
    }
}
