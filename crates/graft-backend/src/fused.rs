//! LayerNorm, softmax and attention as single operations with their own backward pass
//! (issue 10).
//!
//! burn-autodiff 0.22 has no LayerNorm, softmax or attention of its own: each falls back to
//! a chain of operations (nine for LayerNorm, five for softmax, two matrix products, a
//! scale and a softmax for attention), each a node of the graph with saved state and a
//! backward step of its own. Here each is one node: the forward is the backend's own kernel
//! (LibTorch's `native_layer_norm`, `softmax` and the CPU flash attention that PyTorch's
//! `scaled_dot_product_attention` runs; burn-flex's softmax), and the backward is written
//! out (LibTorch's `_softmax_backward_data` and flash-attention backward). Values agree
//! with the composed versions to float rounding (tested below and against timm in
//! graft-model).
//!
//! The operations go through burn's backend-extension mechanism: [`FusedOps`] is
//! implemented for each concrete backend this build has and for `Autodiff` over them, and
//! the [`layer_norm`], [`softmax`] and [`attention`] functions route a [`Tensor`] to the
//! right one.

// burn marks tch deprecated; it is our fastest backend here (as in `device`).
#![allow(deprecated)]

use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Shape, TensorMetadata, backend_extension};
use burn::tensor::Tensor;

/// The operations, one dispatch entry each.
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FusedOps: Backend {
    /// LayerNorm over the last axis: `(x - mean) / sqrt(var + epsilon) * gamma + beta`.
    ///
    /// # Shapes
    /// x `[..., d]`, gamma `[d]`, beta `[d]` -> `[..., d]`
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Softmax along `dim`.
    ///
    /// # Shapes
    /// `[...]` -> `[...]`
    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;

    /// Scaled dot-product attention, `softmax(q kᵀ · scale) v`, without mask or dropout.
    ///
    /// # Shapes
    /// q, k, v `[batch, heads, tokens, head_dim]` -> `[batch, heads, tokens, head_dim]`
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
}

/// What a concrete backend contributes: forward passes that keep what the backward needs,
/// and the backward passes. The defaults are written in the backend's own primitive
/// operations; a backend with better kernels overrides them.
pub trait Kernels: Backend {
    /// LayerNorm over the last axis, with the normalised input and `1 / sqrt(var + eps)`.
    ///
    /// # Shapes
    /// x `[..., d]`, gamma `[d]`, beta `[d]` -> (y `[..., d]`, x̂ `[..., d]`, rstd `[..., 1]`)
    fn layer_norm_saving(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let last = x.shape().num_dims() - 1;
        let mean = Self::float_mean_dim(x.clone(), last);
        let centred = Self::float_sub(x, mean);
        let var = Self::float_mean_dim(Self::float_mul(centred.clone(), centred.clone()), last);
        let rstd = Self::float_recip(Self::float_sqrt(Self::float_add_scalar(
            var,
            epsilon.into(),
        )));
        let xhat = Self::float_mul(centred, rstd.clone());
        let y = affine::<Self>(xhat.clone(), gamma, beta);
        (y, xhat, rstd)
    }

    /// LayerNorm's forward alone (inference, or an untracked input).
    ///
    /// # Shapes
    /// x `[..., d]`, gamma `[d]`, beta `[d]` -> `[..., d]`
    fn layer_norm_plain(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// The gradient of softmax's input from its output `y` and the output's gradient `g`:
    /// `y * (g - sum(g * y))` along `dim`.
    ///
    /// # Shapes
    /// g `[...]`, y `[...]` -> `[...]`
    fn softmax_backward(
        g: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dim: usize,
    ) -> FloatTensor<Self> {
        let gy = Self::float_mul(g, y.clone());
        let s = Self::float_sum_dim(gy.clone(), dim);
        Self::float_sub(gy, Self::float_mul(y, s))
    }

    /// Attention's forward with what its backward needs: by default the attention weights
    /// `p = softmax(q kᵀ · scale)`.
    ///
    /// # Shapes
    /// q, k, v `[b, h, t, dh]` -> (out `[b, h, t, dh]`, saved: p `[b, h, t, t]`)
    fn attention_saving(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention::<Self>(q, k, v, scale)
    }

    /// Attention's forward alone (inference, or untracked inputs).
    ///
    /// # Shapes
    /// q, k, v `[b, h, t, dh]` -> `[b, h, t, dh]`
    fn attention_plain(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::attention_saving(q, k, v, scale).0
    }

    /// The gradients of q, k and v from the output's gradient `g` and what
    /// [`Kernels::attention_saving`] returned: with p the attention weights,
    /// `dv = pᵀ g`, `ds = softmax_backward(g vᵀ, p)`, `dq = ds k · scale`, `dk = dsᵀ q · scale`.
    ///
    /// # Shapes
    /// q, k, v, out, g `[b, h, t, dh]`, saved `[b, h, t, t]` -> dq, dk, dv `[b, h, t, dh]`
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        g: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = out;
        composed_attention_backward::<Self>(q, k, v, saved, g, scale)
    }
}

/// Attention from its parts, keeping the weights p for the backward.
///
/// # Shapes
/// q, k, v `[b, h, t, dh]` -> (out `[b, h, t, dh]`, p `[b, h, t, t]`)
fn composed_attention<B: Kernels>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let kt = B::float_swap_dims(k, 2, 3);
    let scores = B::float_mul_scalar(B::float_matmul(q, kt), scale.into());
    let p = B::softmax(scores, 3);
    (B::float_matmul(p.clone(), v), p)
}

/// The backward of [`composed_attention`] from its weights p.
///
/// # Shapes
/// q, k, v, g `[b, h, t, dh]`, p `[b, h, t, t]` -> dq, dk, dv `[b, h, t, dh]`
fn composed_attention_backward<B: Kernels>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), g.clone());
    let dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
    let ds = B::float_mul_scalar(B::softmax_backward(dp, p, 3), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    (dq, dk, dv)
}

/// `xhat * gamma + beta`, the parameters broadcast over the leading axes.
///
/// # Shapes
/// xhat `[..., d]`, gamma `[d]`, beta `[d]` -> `[..., d]`
fn affine<B: Backend>(
    xhat: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
) -> FloatTensor<B> {
    let rank = xhat.shape().num_dims();
    let gamma = along_last::<B>(gamma, rank);
    let beta = along_last::<B>(beta, rank);
    B::float_add(B::float_mul(xhat, gamma), beta)
}

/// A `[d]` vector as a tensor of `rank` axes that broadcasts over all but the last.
///
/// # Shapes
/// `[d]` -> `[1, ..., 1, d]` (`rank` axes)
fn along_last<B: Backend>(v: FloatTensor<B>, rank: usize) -> FloatTensor<B> {
    let mut dims = vec![1; rank];
    dims[rank - 1] = v.shape()[0];
    B::float_reshape(v, Shape::from(dims))
}

/// The sum over every axis but the last, as a `[d]` vector.
///
/// # Shapes
/// `[..., d]` -> `[d]`
fn sum_leading<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let d = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / d.max(1);
    let x = B::float_reshape(x, Shape::from(vec![rows, d]));
    B::float_reshape(B::float_sum_dim(x, 0), Shape::from(vec![d]))
}

#[cfg(feature = "flex")]
impl Kernels for burn::backend::Flex {}

#[cfg(feature = "flex")]
impl FusedOps for burn::backend::Flex {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm_plain(x, gamma, beta, epsilon)
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        Self::softmax(x, dim)
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::attention_plain(q, k, v, scale)
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use super::*;
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;

    impl Kernels for LibTorch {
        fn layer_norm_saving(
            x: TchTensor,
            gamma: TchTensor,
            beta: TchTensor,
            epsilon: f64,
        ) -> (TchTensor, TchTensor, TchTensor) {
            let d = *x.tensor.size().last().expect("LayerNorm of a scalar");
            let (y, mean, rstd) =
                x.tensor
                    .native_layer_norm([d], Some(&gamma.tensor), Some(&beta.tensor), epsilon);
            let xhat = (&x.tensor - &mean) * &rstd;
            (
                TchTensor::new(y),
                TchTensor::new(xhat),
                TchTensor::new(rstd),
            )
        }

        fn softmax_backward(g: TchTensor, y: TchTensor, dim: usize) -> TchTensor {
            let kind = y.tensor.kind();
            TchTensor::new(tch::Tensor::internal_softmax_backward_data(
                &g.tensor, &y.tensor, dim as i64, kind,
            ))
        }

        /// On the CPU, LibTorch's flash attention (what PyTorch's
        /// `scaled_dot_product_attention` runs there); it saves the log-sum-exp of each
        /// row, `[b, h, t]`, not the weights. On a GPU, the composed attention.
        fn attention_saving(
            q: TchTensor,
            k: TchTensor,
            v: TchTensor,
            scale: f64,
        ) -> (TchTensor, TchTensor) {
            if q.tensor.device() != tch::Device::Cpu {
                return composed_attention::<Self>(q, k, v, scale);
            }
            let (out, lse) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
                &q.tensor,
                &k.tensor,
                &v.tensor,
                0.0,
                false,
                None::<tch::Tensor>,
                scale,
            );
            (TchTensor::new(out), TchTensor::new(lse))
        }

        fn attention_backward(
            q: TchTensor,
            k: TchTensor,
            v: TchTensor,
            out: TchTensor,
            saved: TchTensor,
            g: TchTensor,
            scale: f64,
        ) -> (TchTensor, TchTensor, TchTensor) {
            if q.tensor.device() != tch::Device::Cpu {
                return composed_attention_backward::<Self>(q, k, v, saved, g, scale);
            }
            let (dq, dk, dv) =
                tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
                    &g.tensor,
                    &q.tensor,
                    &k.tensor,
                    &v.tensor,
                    &out.tensor,
                    &saved.tensor,
                    0.0,
                    false,
                    None::<tch::Tensor>,
                    scale,
                );
            (TchTensor::new(dq), TchTensor::new(dk), TchTensor::new(dv))
        }
    }

    impl FusedOps for LibTorch {
        fn fused_layer_norm(
            x: TchTensor,
            gamma: TchTensor,
            beta: TchTensor,
            epsilon: f64,
        ) -> TchTensor {
            Self::layer_norm_plain(x, gamma, beta, epsilon)
        }

        fn fused_softmax(x: TchTensor, dim: usize) -> TchTensor {
            Self::softmax(x, dim)
        }

        fn fused_attention(q: TchTensor, k: TchTensor, v: TchTensor, scale: f64) -> TchTensor {
            Self::attention_plain(q, k, v, scale)
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LayerNormStep;

        impl<B: Kernels> Backward<B, 3> for LayerNormStep {
            // x̂, rstd, gamma
            type State = (
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node, gamma_node, beta_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (xhat, rstd, gamma) = ops.state;
                if let Some(node) = beta_node {
                    grads.register::<B>(node.id, sum_leading::<B>(g.clone()));
                }
                if let Some(node) = gamma_node {
                    let gx = B::float_mul(g.clone(), xhat.clone());
                    grads.register::<B>(node.id, sum_leading::<B>(gx));
                }
                if let Some(node) = x_node {
                    // dx = rstd * (gγ - mean(gγ) - x̂ mean(gγ x̂)), means along the last axis.
                    let rank = xhat.shape().num_dims();
                    let gg = B::float_mul(g, along_last::<B>(gamma, rank));
                    let m1 = B::float_mean_dim(gg.clone(), rank - 1);
                    let m2 = B::float_mean_dim(B::float_mul(gg.clone(), xhat.clone()), rank - 1);
                    let dx = B::float_sub(B::float_sub(gg, m1), B::float_mul(xhat, m2));
                    grads.register::<B>(node.id, B::float_mul(dx, rstd));
                }
            }
        }

        match LayerNormStep
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, xhat, rstd) = B::layer_norm_saving(
                    x.primitive().clone(),
                    gamma.primitive().clone(),
                    beta.primitive().clone(),
                    epsilon,
                );
                prep.finish((xhat, rstd, gamma.primitive().clone()), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::layer_norm_plain(
                x.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                epsilon,
            )),
        }
    }

    fn fused_softmax(x: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SoftmaxStep;

        impl<B: Kernels> Backward<B, 1> for SoftmaxStep {
            // The output, and the axis.
            type State = (B::FloatTensorPrimitive, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (y, dim) = ops.state;
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, B::softmax_backward(g, y, dim));
                }
            }
        }

        match SoftmaxStep
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::softmax(x.primitive().clone(), dim);
                prep.finish((y.clone(), dim), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax(x.primitive().clone(), dim)),
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionStep;

        impl<B: Kernels> Backward<B, 3> for AttentionStep {
            // q, k, v, the output, what the forward saved, the scale.
            type State = (
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [q_node, k_node, v_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (q, k, v, out, saved, scale) = ops.state;
                let (dq, dk, dv) = B::attention_backward(q, k, v, out, saved, g, scale);
                for (node, grad) in [(q_node, dq), (k_node, dk), (v_node, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        match AttentionStep
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (
                    q.primitive().clone(),
                    k.primitive().clone(),
                    v.primitive().clone(),
                );
                let (out, saved) = B::attention_saving(q.clone(), k.clone(), v.clone(), scale);
                prep.finish((q, k, v, out.clone(), saved, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_plain(
                q.primitive().clone(),
                k.primitive().clone(),
                v.primitive().clone(),
                scale,
            )),
        }
    }
}

/// LayerNorm over the last axis, one operation (and one backward step) on every backend.
///
/// # Shapes
/// x `[..., d]`, gamma `[d]`, beta `[d]` -> `[..., d]`
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// Softmax along `dim`, one operation (and one backward step) on every backend.
///
/// # Shapes
/// `[...]` -> `[...]`
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax(
        x.into_dispatch(),
        dim,
    ))
}

/// Scaled dot-product attention `softmax(q kᵀ · scale) v`, one operation (and one
/// backward step) on every backend.
///
/// # Shapes
/// q, k, v `[batch, heads, tokens, head_dim]` -> `[batch, heads, tokens, head_dim]`
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, activation};

    fn close(a: Tensor<3>, b: Tensor<3>, tol: f32) {
        let a: Vec<f32> = a.into_data().try_to_vec().unwrap();
        let b: Vec<f32> = b.into_data().try_to_vec().unwrap();
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "differ by up to {worst}");
    }

    fn close1(a: Tensor<1>, b: Tensor<1>, tol: f32) {
        let n = a.dims()[0];
        close(a.reshape([1, 1, n]), b.reshape([1, 1, n]), tol)
    }

    /// Forward and every gradient agree with burn's composed LayerNorm and softmax, on the
    /// build's CPU backend with autodiff, and the forward without autodiff.
    #[test]
    fn fused_operations_match_the_composed_ones_with_their_gradients() {
        let dev = crate::device("cpu").unwrap();
        let ad = dev.clone().autodiff();
        let x0 = Tensor::<3>::random([3, 5, 8], Distribution::Normal(0.5, 2.0), &dev);
        let g0 = Tensor::<1>::random([8], Distribution::Normal(1.0, 0.3), &dev);
        let b0 = Tensor::<1>::random([8], Distribution::Normal(0.0, 0.3), &dev);
        // A weighting so the loss's gradient is not uniform.
        let w0 = Tensor::<3>::random([3, 5, 8], Distribution::Normal(0.0, 1.0), &dev);
        let eps = 1e-6;

        // Without autodiff.
        let composed =
            burn::tensor::module::layer_norm(x0.clone(), g0.clone(), Some(b0.clone()), eps);
        close(
            layer_norm(x0.clone(), g0.clone(), b0.clone(), eps),
            composed,
            1e-5,
        );
        close(
            softmax(x0.clone(), 2),
            activation::softmax(x0.clone(), 2),
            1e-6,
        );

        // With autodiff: one run fused, one composed.
        let grads = |fused: bool| {
            let x = Tensor::<3>::from_data(x0.to_data(), &ad).require_grad();
            let g = Tensor::<1>::from_data(g0.to_data(), &ad).require_grad();
            let b = Tensor::<1>::from_data(b0.to_data(), &ad).require_grad();
            let w = Tensor::<3>::from_data(w0.to_data(), &ad);
            let y = if fused {
                softmax(layer_norm(x.clone(), g.clone(), b.clone(), eps), 1)
            } else {
                activation::softmax(
                    burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(b.clone()), eps),
                    1,
                )
            };
            let grads = (y.clone() * w).sum().backward();
            (
                y,
                x.grad(&grads).unwrap(),
                g.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            )
        };
        let (y1, dx1, dg1, db1) = grads(true);
        let (y2, dx2, dg2, db2) = grads(false);
        close(y1, y2, 1e-5);
        close(dx1, dx2, 1e-4);
        close1(dg1, dg2, 1e-4);
        close1(db1, db2, 1e-4);
    }

    /// Attention's output and the gradients of q, k and v agree with burn's composed
    /// attention, on q, k and v laid out as the ViT makes them (a `[b, t, h, dh]` tensor
    /// with its axes 1 and 2 swapped), and without autodiff; an untracked v gets none.
    #[test]
    fn fused_attention_matches_the_composed_one_with_its_gradients() {
        let dev = crate::device("cpu").unwrap();
        let ad = dev.clone().autodiff();
        let (b, t, h, dh) = (3, 5, 2, 4);
        let draw = || Tensor::<4>::random([b, t, h, dh], Distribution::Normal(0.0, 1.5), &dev);
        let (q0, k0, v0) = (draw(), draw(), draw());
        let w0 = Tensor::<4>::random([b, h, t, dh], Distribution::Normal(0.0, 1.0), &dev);
        let scale = (dh as f64).powf(-0.5);
        let composed = |q: Tensor<4>, k: Tensor<4>, v: Tensor<4>| {
            activation::softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3).matmul(v)
        };
        let heads = |x: &Tensor<4>| x.clone().swap_dims(1, 2);
        let flat = |x: Tensor<4>| x.reshape([b * h, t, dh]);
        close(
            flat(attention(heads(&q0), heads(&k0), heads(&v0), scale)),
            flat(composed(heads(&q0), heads(&k0), heads(&v0))),
            1e-5,
        );
        let grads = |fused: bool, track_v: bool| {
            let leaf = |x: &Tensor<4>| Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let (q, k) = (leaf(&q0), leaf(&k0));
            let v = if track_v {
                leaf(&v0)
            } else {
                Tensor::<4>::from_data(v0.to_data(), &ad)
            };
            let (qh, kh, vh) = (heads(&q), heads(&k), heads(&v));
            let y = if fused {
                attention(qh, kh, vh, scale)
            } else {
                composed(qh, kh, vh)
            };
            let w = Tensor::<4>::from_data(w0.to_data(), &ad);
            let grads = (y.clone() * w).sum().backward();
            (
                flat(y),
                flat(q.grad(&grads).unwrap()),
                flat(k.grad(&grads).unwrap()),
                v.grad(&grads).map(flat),
            )
        };
        let (y1, dq1, dk1, dv1) = grads(true, true);
        let (y2, dq2, dk2, dv2) = grads(false, true);
        close(y1, y2, 1e-5);
        close(dq1, dq2, 1e-4);
        close(dk1, dk2, 1e-4);
        close(dv1.unwrap(), dv2.unwrap(), 1e-4);
        let (_, dq3, _, dv3) = grads(true, false);
        assert!(dv3.is_none());
        close(dq3, grads(false, false).1, 1e-4);
    }

    /// A frozen input and bias (no gradient required, as in a frozen backbone's LayerNorm
    /// under an adapter) get no gradient; the scale alone gets its own, as composed.
    #[test]
    fn untracked_inputs_get_no_gradient() {
        let ad = crate::device("cpu").unwrap().autodiff();
        let x = Tensor::<3>::random([2, 3, 4], Distribution::Normal(0.0, 1.0), &ad);
        let w = Tensor::<3>::random([2, 3, 4], Distribution::Normal(0.0, 1.0), &ad);
        let b = Tensor::<1>::zeros([4], &ad);
        let dg = |fused: bool| {
            let g = Tensor::<1>::ones([4], &ad).require_grad();
            let y = if fused {
                layer_norm(x.clone(), g.clone(), b.clone(), 1e-6)
            } else {
                burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-6)
            };
            let grads = (y * w.clone()).sum().backward();
            assert!(x.grad(&grads).is_none());
            assert!(b.grad(&grads).is_none());
            g.grad(&grads).unwrap()
        };
        close1(dg(true), dg(false), 1e-5);
    }
}
