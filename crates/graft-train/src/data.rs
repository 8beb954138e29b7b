use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, Int32Array};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::TrainError;

/// What `dataset.json` of a dataset artifact says.
#[derive(Debug, Clone, Deserialize)]
pub struct DatasetInfo {
    pub classes: Vec<String>,
    pub preprocessing: Preprocessing,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Preprocessing {
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl DatasetInfo {
    pub fn read(dir: &Path) -> Result<DatasetInfo, TrainError> {
        let path = dir.join("dataset.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Data {
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| TrainError::Data {
            path,
            message: e.to_string(),
        })
    }
}

/// One split in memory: uint8 HWC images and labels.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    pub size: usize,
}

impl Split {
    /// Reads `<dir>/<name>.parquet` (columns `label` int32, `image` binary).
    pub fn read(dir: &Path, name: &str, size: usize) -> Result<Split, TrainError> {
        let path: PathBuf = dir.join(format!("{name}.parquet"));
        let bad = |message: String| TrainError::Data {
            path: path.clone(),
            message,
        };
        let (batches, _) =
            graft_store::table::read_parquet(&path).map_err(|e| bad(e.to_string()))?;
        let pixels = size * size * 3;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for b in batches {
            let label = b
                .column_by_name("label")
                .and_then(|c| c.as_any().downcast_ref::<Int32Array>().cloned());
            let image = b
                .column_by_name("image")
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>().cloned());
            let (Some(label), Some(image)) = (label, image) else {
                return Err(bad(
                    "expected columns label (int32) and image (binary)".into()
                ));
            };
            for i in 0..b.num_rows() {
                let img = image.value(i);
                if img.len() != pixels {
                    return Err(bad(format!(
                        "row {i}: image has {} bytes, expected {pixels}",
                        img.len()
                    )));
                }
                images.extend_from_slice(img);
                labels.push(label.value(i) as i64);
            }
        }
        Ok(Split {
            images,
            labels,
            size,
        })
    }

    /// `self` followed by `other` (train + val for the final protocol): two splits of one
    /// dataset, read at its image size.
    pub fn concat(&self, other: &Split) -> Split {
        assert_eq!(self.size, other.size, "splits of one dataset share a size");
        let mut images = self.images.clone();
        images.extend_from_slice(&other.images);
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        Split {
            images,
            labels,
            size: self.size,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows `idx` as normalised images and labels.
    ///
    /// # Shapes
    /// -> images `[batch, 3, size, size]`, labels `[batch]`
    pub fn batch(
        &self,
        idx: &[usize],
        pre: &Preprocessing,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let s = self.size;
        let plane = s * s;
        let mut out = vec![0f32; idx.len() * 3 * plane];
        for (b, &row) in idx.iter().enumerate() {
            let img = &self.images[row * plane * 3..(row + 1) * plane * 3];
            for p in 0..plane {
                for c in 0..3 {
                    out[(b * 3 + c) * plane + p] =
                        (img[p * 3 + c] as f32 / 255.0 - pre.mean[c]) / pre.std[c];
                }
            }
        }
        let labels: Vec<i64> = idx.iter().map(|&r| self.labels[r]).collect();
        (
            Tensor::from_data(TensorData::new(out, [idx.len(), 3, s, s]), device),
            Tensor::from_data(TensorData::new(labels, [idx.len()]), device),
        )
    }
}
