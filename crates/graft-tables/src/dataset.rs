//! A dataset artifact, as the prep stage writes it and the training stages read it: one
//! table per split ([`split_file`]: `train.parquet`, `val.parquet`, `test.parquet`, schema
//! [`split_schema`]) and `dataset.json` ([`DatasetInfo`]).
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `id` | utf8 | DTD: `class/file.jpg`; VTAB-1k: the listed path; image folder: `class/file`; procedural: `split/index` |
//! | `label` | int32 | index into the sorted class names |
//! | `label_name` | utf8 | class name |
//! | `image` | binary | `image_size * image_size * 3` bytes, uint8, HWC, RGB |

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int32Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::TableError;
use crate::json::{read_json, write_json};

/// The table file of split `name` (`train`, `val`, `test`).
pub fn split_file(name: &str) -> String {
    format!("{name}.parquet")
}

/// The schema every split table shares.
pub fn split_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("label", DataType::Int32, false),
        Field::new("label_name", DataType::Utf8, false),
        Field::new("image", DataType::Binary, false),
    ]))
}

/// Parquet metadata key holding the images' shape, `"<h>,<w>,3"`.
pub const IMAGE_SHAPE_KEY: &str = "graft.image_shape";

/// One split's rows, column by column, borrowed for writing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitColumns<'a> {
    pub ids: Vec<&'a str>,
    pub labels: Vec<i32>,
    pub label_names: Vec<&'a str>,
    /// `image_size * image_size * 3` bytes each.
    pub images: Vec<&'a [u8]>,
}

/// Writes one split table of `image_size` px images with the store's pinned Parquet writer.
pub fn write_split(
    path: &Path,
    columns: SplitColumns<'_>,
    image_size: usize,
) -> Result<(), TableError> {
    let batch = RecordBatch::try_new(
        split_schema(),
        vec![
            Arc::new(StringArray::from(columns.ids)),
            Arc::new(Int32Array::from(columns.labels)),
            Arc::new(StringArray::from(columns.label_names)),
            Arc::new(BinaryArray::from(columns.images)),
        ],
    )
    .map_err(|source| graft_store::StoreError::Arrow {
        path: path.to_path_buf(),
        source,
    })?;
    let meta: BTreeMap<String, String> = [(
        IMAGE_SHAPE_KEY.to_owned(),
        format!("{image_size},{image_size},3"),
    )]
    .into();
    graft_store::table::write_parquet(path, split_schema(), &[batch], &meta)?;
    Ok(())
}

/// The labels and images of one split, images concatenated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitImages {
    pub labels: Vec<i32>,
    /// `labels.len()` images of `image_bytes` bytes each, one after the other.
    pub images: Vec<u8>,
}

/// Reads the `label` and `image` columns of a split table, each image `image_bytes` long;
/// an error names the file and the column or row.
pub fn read_split(path: &Path, image_bytes: usize) -> Result<SplitImages, TableError> {
    let (batches, _) = graft_store::table::read_parquet(path)?;
    let schema = split_schema();
    let mut out = SplitImages::default();
    for b in batches {
        let column = |name: &str| {
            let want = schema
                .field_with_name(name)
                .expect("a column of the schema");
            b.column_by_name(name)
                .filter(|c| c.data_type() == want.data_type())
                .ok_or_else(|| TableError::Schema {
                    path: path.to_path_buf(),
                    column: name.to_owned(),
                    expected: want.data_type().to_string(),
                })
        };
        let label = column("label")?;
        let image = column("image")?;
        let label = label
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("checked type");
        let image = image
            .as_any()
            .downcast_ref::<BinaryArray>()
            .expect("checked type");
        for i in 0..b.num_rows() {
            let img = image.value(i);
            if img.len() != image_bytes {
                return Err(TableError::Convert {
                    path: path.to_path_buf(),
                    message: format!(
                        "row {}: image has {} bytes, expected {image_bytes}",
                        out.labels.len(),
                        img.len()
                    ),
                });
            }
            out.images.extend_from_slice(img);
            out.labels.push(label.value(i));
        }
    }
    Ok(out)
}

/// `dataset.json` of a dataset artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The prep stage's `source` (`dtd`, `vtab-1k`, `image-folder`, `procedural`).
    pub source: String,
    /// The task's name; null for VTAB-1k (not part of the key, so not of the artifact).
    pub task: Option<String>,
    /// Class names; a label is an index into them.
    pub classes: Vec<String>,
    /// Rows per split.
    pub splits: BTreeMap<String, u64>,
    pub preprocessing: Preprocessing,
    /// How the splits were drawn from data read from disk; absent for procedural data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw: Option<Draw>,
}

/// What the training stages do to a stored image: its size and layout as stored, and the
/// normalisation `(x / 255 - mean) / std` per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub image_size: usize,
    pub channels: u32,
    /// `HWC`.
    pub layout: String,
    /// `uint8`.
    pub dtype: String,
    /// The resize filter (`bilinear`, ...).
    pub interpolation: String,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// The seeded, class-stratified draw of the splits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draw {
    /// `class-stratified`.
    pub method: String,
    pub seed: Option<u64>,
    pub splits: BTreeMap<String, DrawSplit>,
}

/// One split's draw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawSplit {
    /// The list the split was drawn from (`labels/train1.txt`, `train800.txt`, `train/`).
    pub from: String,
    /// Samples the list holds.
    pub listed: u64,
    /// The ids chosen, in table order.
    pub chosen: Vec<String>,
}

impl DatasetInfo {
    pub const FILE: &'static str = "dataset.json";

    /// Reads `dataset.json` of the artifact directory `dir`.
    pub fn read(dir: &Path) -> Result<DatasetInfo, TableError> {
        read_json(&dir.join(Self::FILE))
    }

    /// Writes `dataset.json` into the artifact directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TableError> {
        write_json(&dir.join(Self::FILE), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::check_golden_json;

    fn example_preprocessing() -> Preprocessing {
        Preprocessing {
            image_size: 32,
            channels: 3,
            layout: "HWC".into(),
            dtype: "uint8".into(),
            interpolation: "bilinear".into(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    fn example() -> DatasetInfo {
        DatasetInfo {
            source: "dtd".into(),
            task: Some("dtd".into()),
            classes: vec!["banded".into(), "dotted".into()],
            splits: [("train".into(), 2), ("val".into(), 1), ("test".into(), 1)].into(),
            preprocessing: example_preprocessing(),
            draw: Some(Draw {
                method: "class-stratified".into(),
                seed: Some(0),
                splits: [(
                    "train".to_owned(),
                    DrawSplit {
                        from: "labels/train1.txt".into(),
                        listed: 4,
                        chosen: vec!["banded/a.jpg".into(), "dotted/b.jpg".into()],
                    },
                )]
                .into(),
            }),
        }
    }

    #[test]
    fn dataset_json_matches_its_golden_file() {
        check_golden_json("dataset.json", &example());
    }

    #[test]
    fn split_schema_matches_its_golden_file() {
        crate::json::check_golden_text(
            "dataset-split.schema.txt",
            &crate::schema_text(&split_schema()),
        );
    }

    #[test]
    fn procedural_data_has_no_draw_and_a_missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let info = DatasetInfo {
            task: None,
            draw: None,
            ..example()
        };
        info.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(DatasetInfo::FILE)).unwrap();
        assert!(
            !text.contains("draw") && text.contains("\"task\": null"),
            "{text}"
        );
        assert_eq!(DatasetInfo::read(dir.path()).unwrap(), info);

        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["preprocessing"].as_object_mut().unwrap().remove("std");
        std::fs::write(dir.path().join(DatasetInfo::FILE), v.to_string()).unwrap();
        let err = DatasetInfo::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dataset.json") && err.contains("preprocessing: missing field `std`"),
            "{err}"
        );
    }

    #[test]
    fn splits_round_trip_and_a_short_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(split_file("train"));
        let (a, b) = ([1u8; 12], [2u8; 12]);
        let columns = SplitColumns {
            ids: vec!["x/a", "y/b"],
            labels: vec![0, 1],
            label_names: vec!["x", "y"],
            images: vec![&a, &b],
        };
        write_split(&path, columns, 2).unwrap();
        let read = read_split(&path, 12).unwrap();
        assert_eq!(read.labels, vec![0, 1]);
        assert_eq!(read.images, [a, b].concat());
        let err = read_split(&path, 48).unwrap_err().to_string();
        assert!(
            err.contains("train.parquet") && err.contains("row 0: image has 12 bytes, expected 48"),
            "{err}"
        );
        // Another table is named by the column it lacks.
        let other = dir.path().join("e.parquet");
        <crate::EpochRow as crate::Table>::write(
            &other,
            &[crate::EpochRow {
                placement_id: "p".into(),
                seed: 0,
                epoch: 0,
                train_loss: 1.0,
                val_accuracy: None,
                lr: 0.1,
                seconds: 0.0,
            }],
        )
        .unwrap();
        let err = read_split(&other, 12).unwrap_err().to_string();
        assert!(
            err.contains("e.parquet") && err.contains("\"label\""),
            "{err}"
        );
    }
}
