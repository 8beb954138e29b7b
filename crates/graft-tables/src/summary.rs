//! `summary.json` of a fine-tune artifact: what the stage's runs were trained on and how.
//! Written by the fine-tune stage, read by the report.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::TableError;
use crate::dataset::Preprocessing;
use crate::json::{read_json, write_json};

/// `summary.json` of a fine-tune artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSummary {
    /// The prep stage's `task` parameter, where it had one.
    pub task: Option<String>,
    /// The dataset's preprocessing, as its `dataset.json` states it.
    pub preprocessing: Preprocessing,
    pub backend: String,
    /// The device class of its runs (`cpu`, `cuda`); `cuda:k` in summaries of fine-tune
    /// version 3 and earlier.
    pub device: String,
    pub seeds: Vec<u64>,
    pub program_version: String,
    /// The base model: its artifact id or the fingerprint of a user's checkpoint.
    pub base: String,
    pub preset: String,
    pub classes: u64,
    pub train: TrainSettings,
}

/// `train` of a fine-tune `summary.json`: the protocol of every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// `select` or `final`; absent from summaries of fine-tune version 1 (all `select`).
    #[serde(default)]
    pub protocol: Option<String>,
    pub epochs: u64,
    pub lr: f64,
    /// The learning rate of full fine-tuning.
    pub full_lr: f64,
    pub batch: u64,
    pub weight_decay: f64,
    pub warmup_epochs: f64,
    /// Adapter bottleneck r.
    pub bottleneck: u64,
}

impl FinetuneSummary {
    pub const FILE: &'static str = "summary.json";

    /// Reads `summary.json` of the artifact directory `dir`; `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<FinetuneSummary>, TableError> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Writes `summary.json` into the artifact directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TableError> {
        write_json(&dir.join(Self::FILE), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{check_golden_json, json_text};

    fn example() -> FinetuneSummary {
        FinetuneSummary {
            task: Some("dtd".into()),
            preprocessing: Preprocessing {
                image_size: 224,
                channels: 3,
                layout: "HWC".into(),
                dtype: "uint8".into(),
                interpolation: "bilinear".into(),
                mean: [0.5, 0.5, 0.5],
                std: [0.5, 0.5, 0.5],
            },
            backend: "tch".into(),
            device: "cuda".into(),
            seeds: vec![0, 1, 2],
            program_version: "0.1.0".into(),
            base: "f".repeat(64),
            preset: "vit-b16".into(),
            classes: 47,
            train: TrainSettings {
                protocol: Some("final".into()),
                epochs: 100,
                lr: 1e-3,
                full_lr: 1e-4,
                batch: 64,
                weight_decay: 1e-4,
                warmup_epochs: 10.0,
                bottleneck: 8,
            },
        }
    }

    #[test]
    fn summary_matches_its_golden_file() {
        check_golden_json("finetune-summary.json", &example());
    }

    #[test]
    fn version_1_summaries_read_without_a_protocol_and_a_missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FinetuneSummary::read(dir.path()).unwrap(), None);
        let mut v = serde_json::to_value(example()).unwrap();
        v["train"].as_object_mut().unwrap().remove("protocol");
        std::fs::write(dir.path().join(FinetuneSummary::FILE), v.to_string()).unwrap();
        let read = FinetuneSummary::read(dir.path()).unwrap().unwrap();
        assert_eq!(read.train.protocol, None);
        assert_eq!(
            read,
            FinetuneSummary {
                train: TrainSettings {
                    protocol: None,
                    ..example().train
                },
                ..example()
            }
        );

        v["train"].as_object_mut().unwrap().remove("epochs");
        std::fs::write(dir.path().join(FinetuneSummary::FILE), v.to_string()).unwrap();
        let err = FinetuneSummary::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("summary.json") && err.contains("train: missing field `epochs`"),
            "{err}"
        );
        // The text is the sorted, pretty form.
        assert!(
            json_text(&example())
                .unwrap()
                .starts_with("{\n  \"backend\": \"tch\",\n")
        );
    }

    /// `runs.parquet` of fine-tune version 1 has no `protocol` column: it reads as null; its
    /// timing columns (there until version 4) are passed over.
    #[test]
    fn version_1_runs_read_without_a_protocol() {
        use crate::{RunRow, Table};
        use arrow::datatypes::Schema;
        let row = serde_json::json!({
            "placement_id": "p", "method": "adapters", "seed": 0, "edges": [{"i": 0, "j": 1}],
            "adapters": 1, "trainable_params": 5, "forward_flops": 6, "status": "ok",
            "error": null, "best_epoch": 0, "val_accuracy": 0.5, "test_accuracy": 0.25,
            "train_loss": 1.0, "wall_seconds": 1.5, "images_per_second": null,
            "peak_memory_bytes": null, "backend": "flex", "device": "cpu",
            "run_artifact": "f", "weights_file": null
        });
        let full = RunRow::schema();
        let mut fields: Vec<_> = full
            .fields()
            .iter()
            .filter(|f| f.name() != "protocol")
            .cloned()
            .collect();
        use arrow::datatypes::{DataType, Field};
        fields.extend([
            Field::new("wall_seconds", DataType::Float64, false).into(),
            Field::new("images_per_second", DataType::Float64, true).into(),
            Field::new("peak_memory_bytes", DataType::Int64, true).into(),
        ]);
        let schema = std::sync::Arc::new(Schema::new(fields));
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
            .build_decoder()
            .unwrap();
        decoder.serialize(std::slice::from_ref(&row)).unwrap();
        let batch = decoder.flush().unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RunRow::FILE);
        graft_store::table::write_parquet(&path, schema, &[batch], &Default::default()).unwrap();
        let read = RunRow::read(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].protocol, None);
        let mut want = row;
        want["protocol"] = serde_json::Value::Null;
        for timing in ["wall_seconds", "images_per_second", "peak_memory_bytes"] {
            want.as_object_mut().unwrap().remove(timing);
        }
        assert_eq!(serde_json::to_value(&read[0]).unwrap(), want);
    }
}
