//! fp16's dynamic loss scale, as PyTorch's `torch.amp.GradScaler` keeps it.
//!
//! fp16 holds values up to 65504 and loses gradients below about 6e-8, so the loss is
//! multiplied by a scale before the backward pass and the trained parameters' gradients are
//! divided by it again before AdamW sees them. A step whose gradients hold an inf or NaN
//! (the scale pushed a product past fp16's range) is skipped and the scale halved; after
//! [`GROWTH_INTERVAL`] steps in a row without one it doubles. bf16 has f32's range and needs
//! none of this ([`LossScale::for_precision`] gives none).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor};
use graft_model::Precision;

/// GradScaler's first scale, 2^16.
pub const INIT_SCALE: f32 = 65536.0;
/// Steps without an overflow before the scale doubles (GradScaler's default).
pub const GROWTH_INTERVAL: usize = 2000;

/// The scale and what it has done so far.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScale {
    scale: f32,
    good_steps: usize,
    /// Steps skipped for an overflow.
    pub skipped: usize,
}

impl LossScale {
    /// A scale starting at `init`.
    pub fn new(init: f32) -> LossScale {
        LossScale {
            scale: init,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// A scale for a model computing in `precision`: fp16 only, starting at `init` or
    /// [`INIT_SCALE`].
    pub fn for_precision(precision: Precision, init: Option<f32>) -> Option<LossScale> {
        (precision == Precision::Fp16).then(|| LossScale::new(init.unwrap_or(INIT_SCALE)))
    }

    /// What the loss is multiplied by now.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Divides the gradients of `model`'s parameters in `grads` by the scale and says
    /// whether the step may be taken: `false` when any of them holds an inf or NaN, which
    /// also halves the scale (the step is to be skipped). Reads one value back from the
    /// device.
    pub fn unscale<M: Module>(&mut self, grads: &mut GradientsParams, model: &M) -> bool {
        let mut visitor = Unscale {
            grads,
            inv: 1.0 / self.scale,
            bad: None,
        };
        model.visit(&mut visitor);
        let bad = visitor.bad.is_some_and(|b| b.into_scalar::<i64>() > 0);
        if bad {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// Unscales each parameter's gradient and counts the non-finite values, on the device.
struct Unscale<'a> {
    grads: &'a mut GradientsParams,
    inv: f32,
    bad: Option<Tensor<1, Int>>,
}

impl ModuleVisitor for Unscale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let count = g.clone().is_finite().bool_not().int().sum();
        self.bad = Some(match self.bad.take() {
            Some(b) => b + count,
            None => count,
        });
        self.grads.register::<D>(param.id, g * self.inv);
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Tensor, TensorData};

    use super::*;

    /// A 3 -> 2 linear layer on the CPU's autodiff device and its gradients for one input.
    fn layer_and_grads() -> (Linear, GradientsParams, Vec<f32>) {
        let dev = graft_backend::device("cpu").unwrap().autodiff();
        let layer = LinearConfig::new(3, 2).init(&dev);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [1, 3]), &dev);
        let grads = layer.forward(x).sum().backward();
        let grads = GradientsParams::from_grads(grads, &layer);
        let weight: Tensor<2> = grads.get(layer.weight.id).unwrap();
        let raw = weight.into_data().try_to_vec::<f32>().unwrap();
        (layer, grads, raw)
    }

    #[test]
    fn finite_gradients_are_divided_by_the_scale_and_the_step_taken() {
        let (layer, mut grads, raw) = layer_and_grads();
        let mut s = LossScale::new(4.0);
        assert!(s.unscale(&mut grads, &layer));
        let weight: Tensor<2> = grads.get(layer.weight.id).unwrap();
        let got = weight.into_data().try_to_vec::<f32>().unwrap();
        let want: Vec<f32> = raw.iter().map(|g| g / 4.0).collect();
        assert_eq!(got, want);
        assert_eq!((s.scale(), s.skipped), (4.0, 0));
    }

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let (layer, mut grads, mut raw) = layer_and_grads();
            raw[4] = bad;
            let dev = graft_backend::device("cpu").unwrap();
            grads.register::<2>(
                layer.weight.id,
                Tensor::from_data(TensorData::new(raw, [3, 2]), &dev),
            );
            let mut s = LossScale::new(1024.0);
            assert!(!s.unscale(&mut grads, &layer), "{bad}");
            assert_eq!((s.scale(), s.skipped), (512.0, 1), "{bad}");
        }
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval_without_an_overflow() {
        let mut s = LossScale::new(8.0);
        s.good_steps = GROWTH_INTERVAL - 2;
        let (layer, mut grads, _) = layer_and_grads();
        assert!(s.unscale(&mut grads, &layer));
        assert_eq!(s.scale(), 8.0);
        let (layer, mut grads, _) = layer_and_grads();
        assert!(s.unscale(&mut grads, &layer));
        assert_eq!((s.scale(), s.good_steps), (16.0, 0));
    }

    #[test]
    fn only_fp16_has_a_scale() {
        assert_eq!(LossScale::for_precision(Precision::F32, None), None);
        assert_eq!(LossScale::for_precision(Precision::Bf16, Some(2.0)), None);
        let s = LossScale::for_precision(Precision::Fp16, None).unwrap();
        assert_eq!(s.scale(), INIT_SCALE);
    }
}
