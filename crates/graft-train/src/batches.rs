//! Batches made one ahead, and the losses read back every few steps (issue 25).
//!
//! [`Batches`] hands out batch k with batch k+1 already made: its rows gathered and, from a
//! host cache or images on a GPU, its copy to the device issued without blocking. A step that
//! waits for the device (a read of the losses) then finds the next batch on its way.
//!
//! [`LossReadback`] keeps each step's loss on the device and reads them back together every
//! `every` steps and at the end of an epoch: on a GPU each read waits for the device to
//! finish all it was given, so a read per step keeps the host from queueing the next step
//! while the GPU runs this one. The values, their order and the progress reported are those
//! of a read per step; only when they are reported changes.

use burn::tensor::{Device, Int, Tensor};
use graft_model::ModelInput;

use crate::{Progress, Rows, TrainError};

/// One batch: the model's input, its labels and how many rows it has.
///
/// # Shapes
/// input as [`Rows::batch`] makes it, labels `[rows]`
pub struct Batch {
    pub input: ModelInput,
    pub labels: Tensor<1, Int>,
    pub rows: usize,
}

/// The batches of `rows` in the order `order`, `batch` rows each (the last may be smaller),
/// each made when the one before it is handed out.
pub struct Batches<'a> {
    rows: Rows<'a>,
    chunks: std::slice::Chunks<'a, usize>,
    device: &'a Device,
    ahead: Option<Batch>,
}

impl<'a> Batches<'a> {
    pub fn new(rows: Rows<'a>, order: &'a [usize], batch: usize, device: &'a Device) -> Self {
        let mut batches = Batches {
            rows,
            chunks: order.chunks(batch.max(1)),
            device,
            ahead: None,
        };
        batches.ahead = batches.make();
        batches
    }

    fn make(&mut self) -> Option<Batch> {
        let idx = self.chunks.next()?;
        let (input, labels) = self.rows.batch(idx, self.device);
        Some(Batch {
            input,
            labels,
            rows: idx.len(),
        })
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.ahead.take()?;
        self.ahead = self.make();
        Some(batch)
    }
}

/// A step whose loss has not been read back yet.
struct Pending {
    /// `[1]`, without autodiff.
    loss: Tensor<1>,
    /// The step's index in the whole fit, from 0.
    step: usize,
    lr: f64,
    rows: usize,
}

/// The losses of the steps not read back yet.
pub struct LossReadback {
    every: usize,
    pending: Vec<Pending>,
}

impl LossReadback {
    /// Reads back every `every` steps (at least 1).
    pub fn new(every: usize) -> LossReadback {
        LossReadback {
            every: every.max(1),
            pending: Vec::new(),
        }
    }

    /// Keeps the loss of step `step` (from 0), trained at `lr` on `rows` rows.
    ///
    /// # Shapes
    /// loss `[1]`
    pub fn push(&mut self, loss: Tensor<1>, step: usize, lr: f64, rows: usize) {
        self.pending.push(Pending {
            loss: loss.inner(),
            step,
            lr,
            rows,
        });
    }

    /// Whether `every` steps wait to be read.
    pub fn due(&self) -> bool {
        self.pending.len() >= self.every
    }

    /// Reads the waiting losses back in one transfer and, in step order, adds each times its
    /// rows to `loss_sum` and reports it as a [`Progress::Step`] of `total`; the first that
    /// is not finite stops there with [`TrainError::NonFinite`] (of `epoch`), as a read per
    /// step would have.
    pub fn settle(
        &mut self,
        epoch: usize,
        total: usize,
        loss_sum: &mut f64,
        on_progress: &mut impl FnMut(Progress<'_>),
    ) -> Result<(), TrainError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let losses = Tensor::cat(pending.iter().map(|p| p.loss.clone()).collect(), 0);
        let values = losses
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Readback(format!("{e:?}")))?;
        for (loss, p) in values.into_iter().zip(&pending) {
            if !loss.is_finite() {
                return Err(TrainError::NonFinite {
                    loss,
                    epoch,
                    step: p.step,
                    lr: p.lr,
                });
            }
            *loss_sum += loss as f64 * p.rows as f64;
            on_progress(Progress::Step {
                step: p.step + 1,
                total,
                loss,
            });
        }
        Ok(())
    }
}
