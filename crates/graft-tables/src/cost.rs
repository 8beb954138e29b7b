//! The probe's costs: in its manifest's `extra` (probe version 2 on, so that timings do not
//! change the artifact id), or in `cost.json` inside artifacts of probe version 1. Both hold
//! the same fields: one type, [`ProbeCost`], written by the probe and read by the report.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TableError;
use crate::json::{from_json_value, read_json};

/// What the probe cost and how it was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCost {
    /// The forward and backward passes over all probe batches.
    pub forward_backward_seconds: f64,
    /// The singular values of every edge.
    pub svd_seconds: f64,
    /// The whole stage, head and model loading included.
    pub total_seconds: f64,
    /// One full fine-tuning step on one probe batch (median).
    pub train_step_seconds: f64,
    /// Forward/backward and SVD seconds in units of `train_step_seconds`.
    pub cost_in_train_steps: f64,
    pub batches: u64,
    pub batch: u64,
    /// Rows (examples × tokens) the gradients were summed over.
    pub rows: u64,
    /// `direct` (SVD of each d×d block) or `qr-core` (an m×m core per edge).
    pub method: String,
    /// `all` or `cls`.
    pub tokens: String,
    pub tolerance: f64,
    /// `relative` or `epsilon`.
    pub tol_rule: String,
    /// `linear-probe` or `random`.
    pub head: String,
    pub edges: u64,
    pub backend: String,
    pub device: String,
}

impl ProbeCost {
    /// The file probe version 1 wrote.
    pub const OLD_FILE: &'static str = "cost.json";

    /// The costs of the probe artifact in `dir`: its `cost.json` (probe version 1) when it
    /// has one, else its manifest's `extra`. `None` when neither holds any of the fields (an
    /// artifact not written by the probe); a field missing from an otherwise present record
    /// is an error naming the file and the field.
    pub fn read(dir: &Path) -> Result<Option<ProbeCost>, TableError> {
        let old = dir.join(Self::OLD_FILE);
        if old.exists() {
            return read_json(&old).map(Some);
        }
        let path = dir.join(graft_store::MANIFEST_FILE);
        let manifest: serde_json::Value = read_json(&path)?;
        let extra = manifest
            .get("extra")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let any = Self::FIELDS
            .iter()
            .any(|f| extra.get(f).is_some_and(|v| !v.is_null()));
        if !any {
            return Ok(None);
        }
        from_json_value(&path, extra).map(Some)
    }

    /// The field names, as written.
    pub const FIELDS: [&'static str; 16] = [
        "forward_backward_seconds",
        "svd_seconds",
        "total_seconds",
        "train_step_seconds",
        "cost_in_train_steps",
        "batches",
        "batch",
        "rows",
        "method",
        "tokens",
        "tolerance",
        "tol_rule",
        "head",
        "edges",
        "backend",
        "device",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{check_golden_json, json_text};

    fn example() -> ProbeCost {
        ProbeCost {
            forward_backward_seconds: 0.5,
            svd_seconds: 0.25,
            total_seconds: 1.5,
            train_step_seconds: 0.05,
            cost_in_train_steps: 15.0,
            batches: 4,
            batch: 32,
            rows: 2048,
            method: "direct".into(),
            tokens: "all".into(),
            tolerance: 1e-3,
            tol_rule: "relative".into(),
            head: "linear-probe".into(),
            edges: 25,
            backend: "flex".into(),
            device: "cpu".into(),
        }
    }

    #[test]
    fn cost_matches_its_golden_file_and_lists_its_fields() {
        check_golden_json("cost.json", &example());
        let v = serde_json::to_value(example()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut fields = ProbeCost::FIELDS.to_vec();
        keys.sort();
        fields.sort();
        assert_eq!(keys, fields);
    }

    fn manifest_with(dir: &Path, extra: serde_json::Value) {
        let m = serde_json::json!({ "stage": "probe", "extra": extra });
        std::fs::write(dir.join(graft_store::MANIFEST_FILE), m.to_string()).unwrap();
    }

    #[test]
    fn read_from_the_manifest_or_a_version_1_cost_json() {
        let dir = tempfile::tempdir().unwrap();
        // Probe version 2: the manifest's extra.
        manifest_with(dir.path(), serde_json::to_value(example()).unwrap());
        assert_eq!(ProbeCost::read(dir.path()).unwrap(), Some(example()));
        // An artifact with no costs recorded.
        manifest_with(dir.path(), serde_json::json!({}));
        assert_eq!(ProbeCost::read(dir.path()).unwrap(), None);
        // A record that lacks a field names it.
        let mut partial = serde_json::to_value(example()).unwrap();
        partial.as_object_mut().unwrap().remove("svd_seconds");
        manifest_with(dir.path(), partial);
        let err = ProbeCost::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json") && err.contains("missing field `svd_seconds`"),
            "{err}"
        );
        // Probe version 1: cost.json, as that version wrote it (the same fields).
        let v1 = r#"{
  "backend": "flex",
  "batch": 32,
  "batches": 4,
  "cost_in_train_steps": 15.0,
  "device": "cpu",
  "edges": 25,
  "forward_backward_seconds": 0.5,
  "head": "linear-probe",
  "method": "direct",
  "rows": 2048,
  "svd_seconds": 0.25,
  "tokens": "all",
  "tol_rule": "relative",
  "tolerance": 0.001,
  "total_seconds": 1.5,
  "train_step_seconds": 0.05
}
"#;
        assert_eq!(json_text(&example()).unwrap(), v1);
        std::fs::write(dir.path().join(ProbeCost::OLD_FILE), v1).unwrap();
        assert_eq!(ProbeCost::read(dir.path()).unwrap(), Some(example()));
    }
}
