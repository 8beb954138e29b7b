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

    /// The rows `idx` as normalised images and labels. On the CPU the images are normalised
    /// here ([`Split::normalised_on_host`]); on a GPU the uint8 pixels cross, a quarter of
    /// the floats' bytes, and are normalised there ([`Split::normalised_on_device`]). Both
    /// give the same values, bit for bit.
    ///
    /// # Shapes
    /// -> images `[batch, 3, size, size]`, labels `[batch]`
    pub fn batch(
        &self,
        idx: &[usize],
        pre: &Preprocessing,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>) {
        let images = if graft_backend::is_gpu(device) {
            self.normalised_on_device(idx, pre, device)
        } else {
            self.normalised_on_host(idx, pre, device)
        };
        (images, self.labels_of(idx, device))
    }

    /// The rows `idx` as images normalised on the host: `(pixel / 255 - mean) / std` per
    /// channel, in f32.
    ///
    /// # Shapes
    /// -> `[batch, 3, size, size]`
    pub fn normalised_on_host(
        &self,
        idx: &[usize],
        pre: &Preprocessing,
        device: &Device,
    ) -> Tensor<4> {
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
        graft_backend::upload(TensorData::new(out, [idx.len(), 3, s, s]), device)
    }

    /// The rows `idx` as uint8 pixels moved to `device` and normalised there, with the same
    /// operations in the same order as [`Split::normalised_on_host`]; every operand is a
    /// tensor, so that no backend turns a division by a scalar into a product with its
    /// reciprocal (LibTorch's CUDA kernels do).
    ///
    /// # Shapes
    /// -> `[batch, 3, size, size]`
    pub fn normalised_on_device(
        &self,
        idx: &[usize],
        pre: &Preprocessing,
        device: &Device,
    ) -> Tensor<4> {
        let s = self.size;
        let pixels = TensorData::new(self.planar_pixels(idx), [idx.len(), 3, s, s]);
        let x = graft_backend::upload_int::<4>(pixels, device).float();
        let per_channel = |v: [f32; 3]| {
            graft_backend::upload::<4>(TensorData::new(v.to_vec(), [1, 3, 1, 1]), device)
        };
        let (mean, std) = (pre.mean.map(|m| m as f32), pre.std.map(|v| v as f32));
        (x / per_channel([255.0; 3]) - per_channel(mean)) / per_channel(std)
    }

    /// The pixels of rows `idx`, channels first.
    ///
    /// # Shapes
    /// -> `[batch, 3, size, size]` as a flat vector
    fn planar_pixels(&self, idx: &[usize]) -> Vec<u8> {
        let plane = self.size * self.size;
        let mut out = vec![0u8; idx.len() * 3 * plane];
        for (b, &row) in idx.iter().enumerate() {
            let img = &self.images[row * plane * 3..(row + 1) * plane * 3];
            for p in 0..plane {
                for c in 0..3 {
                    out[(b * 3 + c) * plane + p] = img[p * 3 + c];
                }
            }
        }
        out
    }

    /// # Shapes
    /// -> `[batch]`
    fn labels_of(&self, idx: &[usize], device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = idx.iter().map(|&r| self.labels[r]).collect();
        graft_backend::upload_int(TensorData::new(labels, [idx.len()]), device)
    }
}
