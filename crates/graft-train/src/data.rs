use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
pub use graft_tables::{DatasetInfo, Preprocessing};

use crate::TrainError;

/// One split in memory: uint8 HWC images and labels.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    pub size: usize,
}

impl Split {
    /// Reads the split table `name` of the dataset artifact in `dir`
    /// (`graft_tables::read_split`: columns `label` int32, `image` binary).
    pub fn read(dir: &Path, name: &str, size: usize) -> Result<Split, TrainError> {
        let path = dir.join(graft_tables::split_file(name));
        let read = graft_tables::read_split(&path, size * size * 3)?;
        Ok(Split {
            images: read.images,
            labels: read.labels.into_iter().map(i64::from).collect(),
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
        let (mean, std) = (pre.mean.map(|m| m as f32), pre.std.map(|v| v as f32));
        let mut out = vec![0f32; idx.len() * 3 * plane];
        for (b, &row) in idx.iter().enumerate() {
            let img = &self.images[row * plane * 3..(row + 1) * plane * 3];
            for p in 0..plane {
                for c in 0..3 {
                    out[(b * 3 + c) * plane + p] =
                        (img[p * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
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
