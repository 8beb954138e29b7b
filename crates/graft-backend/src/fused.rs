//! LayerNorm, softmax, attention and the biased linear map as single operations with their
//! own backward pass (issue 10).
//!
//! burn-autodiff 0.22 has no LayerNorm, softmax or attention of its own: each falls back to
//! a chain of operations (nine for LayerNorm, five for softmax; for attention, three slices
//! of the qkv projection, two matrix products, a scale and a softmax), each a node of the
//! graph with saved state and a backward step of its own (a slice's backward fills a zero
//! tensor of the whole projection's size and writes its part into it). Here each is one
//! node: the forward is the backend's own kernel (LibTorch's `native_layer_norm`, `softmax`
//! and the attention kernels that PyTorch's `scaled_dot_product_attention` runs, on q, k
//! and v as views of the projection: flash attention on the CPU, memory-efficient attention
//! on CUDA (`fused/tch_attention.rs`); burn-flex's softmax), and the backward is written out
//! (LibTorch's `_softmax_backward_data` and the attention kernels' own backward). Values
//! agree with the composed versions to float rounding (tested below and against timm in
//! graft-model; the CUDA kernels by an ignored test that needs a GPU).
//!
//! burn's linear map is a matrix product and then a separate bias addition; on tch the
//! product writes (zeroes) its output and the addition reads and writes it again. PyTorch's
//! `nn.Linear` is one `addmm`: the bias is laid into the output and the product adds onto
//! it. [`linear`] is that `addmm` on tch.
//!
//! The operations go through burn's backend-extension mechanism: [`FusedOps`] is
//! implemented for each concrete backend this build has and for `Autodiff` over them, and
//! the [`layer_norm`], [`softmax`], [`attention`] and [`linear`] functions route a
//! [`Tensor`] to the right one.

// burn marks tch deprecated; it is our fastest backend here (as in `device`).
#![allow(deprecated)]

use burn::backend::Backend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Dispatch, Shape, Slice, TensorMetadata, backend_extension,
};
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

    /// Multi-head scaled dot-product attention `softmax(q kᵀ · scale) v`, without mask or
    /// dropout, from timm's fused qkv projection: its last axis is laid out as (3, heads,
    /// head_dim); the heads' outputs are concatenated along the last axis.
    ///
    /// # Shapes
    /// qkv `[batch, tokens, 3·heads·head_dim]` -> `[batch, tokens, heads·head_dim]`
    fn fused_attention(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self>;

    /// The biased linear map `x w + b`.
    ///
    /// # Shapes
    /// x `[rows, in]`, w `[in, out]`, b `[out]` -> `[rows, out]`
    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x + y` in `x`'s dtype, with `y` read in its own: a low-precision branch joining the
    /// f32 residual stream as PyTorch's type promotion adds it, in one pass. `y`'s gradient
    /// is `x`'s cast to `y`'s dtype.
    ///
    /// # Shapes
    /// x `[...]`, y `[...]` (the same) -> `[...]`
    fn fused_add_promoted(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `acc + aᵀ b`, written into `acc` where the backend can. Without a gradient: on
    /// `Autodiff` the result is untracked.
    ///
    /// # Shapes
    /// acc `[p, q]`, a `[rows, p]`, b `[rows, q]` -> `[p, q]`
    fn fused_add_at_b(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
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

    /// Attention's forward ([`FusedOps::fused_attention`]) with what its backward needs:
    /// by default the attention weights `p = softmax(q kᵀ · scale)`.
    ///
    /// # Shapes
    /// qkv `[b, t, 3·h·dh]` -> (out `[b, t, h·dh]`, saved: p `[b, h, t, t]`)
    fn attention_saving(
        qkv: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention::<Self>(qkv, heads, scale)
    }

    /// Attention's forward alone (inference, or an untracked input).
    ///
    /// # Shapes
    /// qkv `[b, t, 3·h·dh]` -> `[b, t, h·dh]`
    fn attention_plain(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        Self::attention_saving(qkv, heads, scale).0
    }

    /// The gradient of qkv from the output's gradient `g` and what
    /// [`Kernels::attention_saving`] returned: with p the attention weights,
    /// `dv = pᵀ g`, `ds = softmax_backward(g vᵀ, p)`, `dq = ds k · scale`, `dk = dsᵀ q · scale`,
    /// laid out as qkv.
    ///
    /// # Shapes
    /// qkv `[b, t, 3·h·dh]`, out, g `[b, t, h·dh]`, saved `[b, h, t, t]` -> `[b, t, 3·h·dh]`
    fn attention_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        g: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        let _ = out;
        composed_attention_backward::<Self>(qkv, saved, g, heads, scale)
    }

    /// `x w + b`: by default the backend's linear map (a product, then the bias added).
    ///
    /// # Shapes
    /// x `[rows, in]`, w `[in, out]`, b `[out]` -> `[rows, out]`
    fn linear_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear(x, w, Some(b))
    }

    /// `x + y` in `x`'s dtype: `y` cast, then added.
    ///
    /// # Shapes
    /// x `[...]`, y `[...]` -> `[...]`
    fn add_promoted(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = x.dtype().into();
        Self::float_add(x, Self::float_cast(y, dtype))
    }

    /// `acc + aᵀ b`: a product and an addition.
    ///
    /// # Shapes
    /// acc `[p, q]`, a `[rows, p]`, b `[rows, q]` -> `[p, q]`
    fn add_at_b(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::float_add(acc, Self::float_matmul(Self::float_swap_dims(a, 0, 1), b))
    }
}

/// q, k and v, each `[b, h, t, dh]`, as views of timm's fused projection where the backend
/// allows.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> 3 x `[b, h, t, dh]`
fn split_qkv<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [FloatTensor<B>; 3] {
    let [b, t, e] = qkv.shape().dims();
    let dh = e / (3 * heads);
    let x = B::float_reshape(qkv, Shape::from(vec![b, t, 3, heads, dh]));
    let x = B::float_permute(x, &[2, 0, 3, 1, 4]); // [3, b, h, t, dh]
    [0, 1, 2].map(|i| {
        let part = B::float_slice(
            x.clone(),
            &[
                Slice::from(i..i + 1),
                Slice::from(0..b),
                Slice::from(0..heads),
                Slice::from(0..t),
                Slice::from(0..dh),
            ],
        );
        B::float_reshape(part, Shape::from(vec![b, heads, t, dh]))
    })
}

/// The inverse of [`split_qkv`]: the three heads-first parts laid out as the projection.
///
/// # Shapes
/// 3 x `[b, h, t, dh]` -> `[b, t, 3·h·dh]`
fn join_qkv<B: Backend>(parts: [FloatTensor<B>; 3]) -> FloatTensor<B> {
    let [b, h, t, dh] = parts[0].shape().dims();
    let parts = parts
        .into_iter()
        .map(|p| B::float_reshape(p, Shape::from(vec![1, b, h, t, dh])))
        .collect();
    let x = B::float_permute(B::float_cat(parts, 0), &[1, 3, 0, 2, 4]); // [b, t, 3, h, dh]
    B::float_reshape(x, Shape::from(vec![b, t, 3 * h * dh]))
}

/// The heads' outputs side by side, as the projection after attention reads them.
///
/// # Shapes
/// `[b, h, t, dh]` -> `[b, t, h·dh]`
fn merge_heads<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [b, h, t, dh] = x.shape().dims();
    B::float_reshape(B::float_swap_dims(x, 1, 2), Shape::from(vec![b, t, h * dh]))
}

/// The inverse of [`merge_heads`].
///
/// # Shapes
/// `[b, t, h·dh]` -> `[b, h, t, dh]`
fn split_heads<B: Backend>(x: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let [b, t, e] = x.shape().dims();
    let x = B::float_reshape(x, Shape::from(vec![b, t, heads, e / heads]));
    B::float_swap_dims(x, 1, 2)
}

/// Attention from its parts, keeping the weights p for the backward.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> (out `[b, t, h·dh]`, p `[b, h, t, t]`)
fn composed_attention<B: Kernels>(
    qkv: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split_qkv::<B>(qkv, heads);
    let kt = B::float_swap_dims(k, 2, 3);
    let scores = B::float_mul_scalar(B::float_matmul(q, kt), scale.into());
    let p = B::softmax(scores, 3);
    (merge_heads::<B>(B::float_matmul(p.clone(), v)), p)
}

/// The backward of [`composed_attention`] from its weights p.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]`, p `[b, h, t, t]`, g `[b, t, h·dh]` -> `[b, t, 3·h·dh]`
fn composed_attention_backward<B: Kernels>(
    qkv: FloatTensor<B>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> FloatTensor<B> {
    let [q, k, v] = split_qkv::<B>(qkv, heads);
    let g = split_heads::<B>(g, heads);
    let dv = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), g.clone());
    let dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
    let ds = B::float_mul_scalar(B::softmax_backward(dp, p, 3), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    join_qkv::<B>([dq, dk, dv])
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

    fn fused_attention(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        Self::attention_plain(qkv, heads, scale)
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::linear_forward(x, w, b)
    }

    fn fused_add_promoted(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::add_promoted(x, y)
    }

    fn fused_add_at_b(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::add_at_b(acc, a, b)
    }
}

#[cfg(feature = "tch")]
mod tch_attention;

#[cfg(feature = "tch")]
mod libtorch {
    use super::tch_attention::{self, Kernel};
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

        /// The kernel [`Kernel::for_qkv`] picks (tch_attention.rs has the table): the CPU's
        /// flash attention, CUDA's memory-efficient attention or the composed one. The first
        /// two save the log-sum-exp of each row, `[b, h, t]`, not the weights.
        fn attention_saving(qkv: TchTensor, heads: usize, scale: f64) -> (TchTensor, TchTensor) {
            let forward = match Kernel::for_qkv(&qkv.tensor, heads) {
                Kernel::CpuFlash => tch_attention::cpu_flash_forward,
                Kernel::CudaEfficient => tch_attention::cuda_efficient_forward,
                Kernel::Composed => return composed_attention::<Self>(qkv, heads, scale),
            };
            let (out, lse) = forward(&qkv.tensor, heads, scale);
            (TchTensor::new(out), TchTensor::new(lse))
        }

        /// On CUDA `scaled_dot_product_attention`, which picks the kernel for a forward pass
        /// alone (flash for f16 and bf16); elsewhere what [`Kernels::attention_saving`] runs.
        fn attention_plain(qkv: TchTensor, heads: usize, scale: f64) -> TchTensor {
            match Kernel::for_qkv(&qkv.tensor, heads) {
                Kernel::CudaEfficient => {
                    TchTensor::new(tch_attention::sdpa_forward(&qkv.tensor, heads, scale))
                }
                _ => Self::attention_saving(qkv, heads, scale).0,
            }
        }

        /// The gradients of q, k and v from the backward of the kernel the forward ran,
        /// stacked into the projection's layout (one copy).
        fn attention_backward(
            qkv: TchTensor,
            out: TchTensor,
            saved: TchTensor,
            g: TchTensor,
            heads: usize,
            scale: f64,
        ) -> TchTensor {
            let backward = match Kernel::for_qkv(&qkv.tensor, heads) {
                Kernel::CpuFlash => tch_attention::cpu_flash_backward,
                Kernel::CudaEfficient => tch_attention::cuda_efficient_backward,
                Kernel::Composed => {
                    return composed_attention_backward::<Self>(qkv, saved, g, heads, scale);
                }
            };
            let (qkv, out, lse, g) = (&qkv.tensor, &out.tensor, &saved.tensor, &g.tensor);
            TchTensor::new(backward(qkv, out, lse, g, heads, scale))
        }

        /// One `addmm`, as PyTorch's `nn.Linear`: the bias broadcast into the output, the
        /// product added onto it.
        fn linear_forward(x: TchTensor, w: TchTensor, b: TchTensor) -> TchTensor {
            TchTensor::new(b.tensor.addmm(&x.tensor, &w.tensor))
        }

        /// One addition with LibTorch's type promotion, into `x` when its storage is not
        /// shared.
        fn add_promoted(mut x: TchTensor, y: TchTensor) -> TchTensor {
            x.mut_ops(|x| x.g_add_(&y.tensor))
                .unwrap_or_else(|| TchTensor::new(x.tensor.g_add(&y.tensor)))
        }

        /// One `addmm_` into `acc` when its storage is not shared (the product accumulates
        /// in place, no `[p, q]` temporary), else one `addmm`.
        fn add_at_b(mut acc: TchTensor, a: TchTensor, b: TchTensor) -> TchTensor {
            let at = a.tensor.tr();
            acc.mut_ops(|acc| acc.addmm_(&at, &b.tensor))
                .unwrap_or_else(|| TchTensor::new(acc.tensor.addmm(&at, &b.tensor)))
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

        fn fused_attention(qkv: TchTensor, heads: usize, scale: f64) -> TchTensor {
            Self::attention_plain(qkv, heads, scale)
        }

        fn fused_linear(x: TchTensor, w: TchTensor, b: TchTensor) -> TchTensor {
            Self::linear_forward(x, w, b)
        }

        fn fused_add_promoted(x: TchTensor, y: TchTensor) -> TchTensor {
            Self::add_promoted(x, y)
        }

        fn fused_add_at_b(acc: TchTensor, a: TchTensor, b: TchTensor) -> TchTensor {
            Self::add_at_b(acc, a, b)
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

    fn fused_attention(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionStep;

        impl<B: Kernels> Backward<B, 1> for AttentionStep {
            // qkv, the output, what the forward saved, the heads, the scale.
            type State = (
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                B::FloatTensorPrimitive,
                usize,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [qkv_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (qkv, out, saved, heads, scale) = ops.state;
                if let Some(node) = qkv_node {
                    let dqkv = B::attention_backward(qkv, out, saved, g, heads, scale);
                    grads.register::<B>(node.id, dqkv);
                }
            }
        }

        match AttentionStep
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = qkv.primitive().clone();
                let (out, saved) = B::attention_saving(qkv.clone(), heads, scale);
                prep.finish((qkv, out.clone(), saved, heads, scale), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::attention_plain(qkv.primitive().clone(), heads, scale))
            }
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LinearStep;

        impl<B: Kernels> Backward<B, 3> for LinearStep {
            // x when w's gradient is needed, w when x's is.
            type State = (
                Option<B::FloatTensorPrimitive>,
                Option<B::FloatTensorPrimitive>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node, w_node, b_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (x, w) = ops.state;
                if let (Some(node), Some(w)) = (x_node, w) {
                    // dx = g wᵀ
                    let dx = B::float_matmul(g.clone(), B::float_swap_dims(w, 0, 1));
                    grads.register::<B>(node.id, dx);
                }
                if let (Some(node), Some(x)) = (w_node, x) {
                    // dw = xᵀ g
                    let dw = B::float_matmul(B::float_swap_dims(x, 0, 1), g.clone());
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = b_node {
                    grads.register::<B>(node.id, sum_leading::<B>(g));
                }
            }
        }

        let x_tracked = x.is_tracked();
        let w_tracked = w.is_tracked();
        match LinearStep
            .prepare::<C>([x.node(), w.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (x.primitive().clone(), w.primitive().clone());
                let y = B::linear_forward(xp.clone(), wp.clone(), b.primitive().clone());
                let state = (w_tracked.then_some(xp), x_tracked.then_some(wp));
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_forward(
                x.primitive().clone(),
                w.primitive().clone(),
                b.primitive().clone(),
            )),
        }
    }

    fn fused_add_promoted(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AddPromotedStep;

        impl<B: Kernels> Backward<B, 2> for AddPromotedStep {
            // y's dtype.
            type State = burn::tensor::FloatDType;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [x_node, y_node] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                if let Some(node) = y_node {
                    grads.register::<B>(node.id, B::float_cast(g.clone(), ops.state));
                }
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, g);
                }
            }
        }

        let y_dtype = y.primitive().dtype().into();
        match AddPromotedStep
            .prepare::<C>([x.node(), y.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(y_dtype, B::add_promoted(Self::inner(x), Self::inner(y)))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::add_promoted(Self::inner(x), Self::inner(y)))
            }
        }
    }

    fn fused_add_at_b(
        acc: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::add_at_b(
            Self::inner(acc),
            Self::inner(a),
            Self::inner(b),
        ))
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

/// Multi-head scaled dot-product attention `softmax(q kᵀ · scale) v` from timm's fused qkv
/// projection (its last axis laid out as (3, heads, head_dim)), one operation (and one
/// backward step) on every backend; the heads' outputs side by side.
///
/// # Shapes
/// qkv `[batch, tokens, 3·heads·head_dim]` -> `[batch, tokens, heads·head_dim]`
pub fn attention(qkv: Tensor<3>, heads: usize, scale: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
        qkv.into_dispatch(),
        heads,
        scale,
    ))
}

/// The biased linear map `x w + b`, one operation (and one backward step) on every
/// backend: on tch one `addmm`, as PyTorch's `nn.Linear`.
///
/// # Shapes
/// x `[rows, in]`, w `[in, out]`, b `[out]` -> `[rows, out]`
pub fn linear(x: Tensor<2>, w: Tensor<2>, b: Tensor<1>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        w.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// `x + y` in `x`'s dtype, `y` read in its own, one operation: where a bf16 or fp16 branch
/// joins the f32 residual stream, as PyTorch adds them under autocast (on tch one promoting
/// addition, written into `x` when nothing else holds it; elsewhere a cast and an addition).
/// `y`'s gradient arrives in `y`'s dtype.
///
/// # Shapes
/// x `[...]`, y `[...]` (the same) -> `[...]`
pub fn add_promoted<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_add_promoted(
        x.into_dispatch(),
        y.into_dispatch(),
    ))
}

/// `acc + aᵀ b`, accumulated into `acc` where the backend can: on tch one in-place
/// `addmm_` when nothing else holds `acc` (the probe sums G = Δᵀ X over batches with it, so
/// no `[p, q]` product is allocated per batch). No gradient flows through it: the result
/// is untracked.
///
/// # Shapes
/// acc `[p, q]`, a `[rows, p]`, b `[rows, q]` -> `[p, q]`
pub fn add_at_b(acc: Tensor<2>, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_add_at_b(
        acc.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
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

    /// `add_promoted` of an f32 `x` and a bf16 `y` is the cast and the addition, to the bit,
    /// with its gradients (`y`'s in bf16), and leaves an `x` that something else holds as it
    /// was.
    #[test]
    fn add_promoted_is_a_cast_and_an_addition() {
        let dev = crate::device("cpu").unwrap();
        let ad = dev.autodiff();
        let x0 = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &ad);
        let y0 = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &ad)
            .cast(burn::tensor::DType::BF16);
        let w = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &ad);
        let run = |fused: bool| {
            let (x, y) = (x0.clone().require_grad(), y0.clone().require_grad());
            let before = x.to_data();
            let z = if fused {
                add_promoted(x.clone(), y.clone())
            } else {
                x.clone() + y.clone().cast(burn::tensor::DType::F32)
            };
            assert_eq!(x.to_data(), before, "a shared x was written");
            let grads = (z.clone() * w.clone()).sum().backward();
            let (gx, gy) = (x.grad(&grads).unwrap(), y.grad(&grads).unwrap());
            (z.into_data(), gx.into_data(), gy)
        };
        let (z, gx, gy) = run(true);
        let (z_ref, gx_ref, gy_ref) = run(false);
        assert_eq!(z, z_ref);
        assert_eq!(gx, gx_ref);
        assert_eq!(gy.dtype(), burn::tensor::DType::BF16);
        assert_eq!(gy.into_data(), gy_ref.into_data());
        let own = x0.clone() * 1.0; // a tensor of its own: written in place on tch
        let sum = add_promoted(own, y0.clone());
        assert_eq!(
            sum.into_data(),
            (x0 + y0.cast(burn::tensor::DType::F32)).into_data()
        );
    }

    /// `add_at_b` gives `acc + aᵀ b` with and without autodiff, in place (an accumulator
    /// nothing else holds) and not (one that is shared), and leaves a shared one as it was.
    #[test]
    fn add_at_b_accumulates_and_leaves_a_shared_accumulator_alone() {
        let dev = crate::device("cpu").unwrap();
        for device in [dev.clone(), dev.autodiff()] {
            let draw = |dims: [usize; 2]| {
                Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), &device)
            };
            let (a, b, acc) = (draw([6, 3]), draw([6, 4]), draw([3, 4]));
            let product = a.clone().transpose().matmul(b.clone());
            let want = acc.clone() + product.clone();
            let before = acc.to_data();
            let shared = add_at_b(acc.clone(), a.clone(), b.clone());
            assert_eq!(acc.to_data(), before, "a shared accumulator was written");
            close(shared.clone().unsqueeze(), want.clone().unsqueeze(), 1e-5);
            let own = acc.clone() * 1.0; // a tensor of its own
            let twice = add_at_b(add_at_b(own, a.clone(), b.clone()), a, b);
            close(twice.unsqueeze(), (want + product).unsqueeze(), 1e-5);
            assert_eq!(acc.to_data(), before);
        }
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

    /// Attention's output and the gradient of qkv agree with attention composed from burn's
    /// tensor operations (timm's split of the projection into heads, two products, a
    /// softmax), with autodiff and without; an untracked projection gets no gradient.
    #[test]
    fn fused_attention_matches_the_composed_one_with_its_gradients() {
        attention_matches_the_composed_one(crate::device("cpu").unwrap(), 1e-5, 1e-4);
    }

    /// The same on a GPU (LibTorch's memory-efficient attention for the backward,
    /// `scaled_dot_product_attention` for a forward alone); fails without one.
    #[cfg(feature = "tch")]
    #[test]
    #[ignore = "needs a CUDA GPU: cargo test -p graft-backend --features tch -- --ignored"]
    fn cuda_attention_matches_the_composed_one_with_its_gradients() {
        use tch_attention::Kernel;
        let dev = crate::device("cuda").expect("this test needs a CUDA device");
        let qkv = Tensor::<3>::zeros([3, 5, 3 * 2 * 8], &dev)
            .try_into_primitive::<burn::backend::LibTorch>()
            .unwrap();
        assert_eq!(Kernel::for_qkv(&qkv.tensor, 2), Kernel::CudaEfficient);
        attention_matches_the_composed_one(dev, 1e-4, 1e-4);
    }

    /// [`fused_attention_matches_the_composed_one_with_its_gradients`] on `dev`, with the
    /// largest differences allowed in values and gradients.
    fn attention_matches_the_composed_one(dev: burn::tensor::Device, tol: f32, grad_tol: f32) {
        let ad = dev.clone().autodiff();
        // A head size of 8, which every LibTorch kernel takes.
        let (b, t, h, dh) = (3, 5, 2, 8);
        let qkv0 = Tensor::<3>::random([b, t, 3 * h * dh], Distribution::Normal(0.0, 1.5), &dev);
        let w0 = Tensor::<3>::random([b, t, h * dh], Distribution::Normal(0.0, 1.0), &dev);
        let scale = (dh as f64).powf(-0.5);
        // timm: qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4); x.transpose(1, 2).reshape(B, N, C)
        let composed = |qkv: Tensor<3>| {
            let mut parts = qkv.chunk(3, 2);
            let heads = |p: Tensor<3>| p.reshape([b, t, h, dh]).swap_dims(1, 2);
            let v = heads(parts.pop().unwrap());
            let k = heads(parts.pop().unwrap());
            let q = heads(parts.pop().unwrap());
            let p = activation::softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3);
            p.matmul(v).swap_dims(1, 2).reshape([b, t, h * dh])
        };
        close(
            attention(qkv0.clone(), h, scale),
            composed(qkv0.clone()),
            tol,
        );
        let grads = |fused: bool, track: bool| {
            let mut qkv = Tensor::<3>::from_data(qkv0.to_data(), &ad);
            if track {
                qkv = qkv.require_grad();
            }
            let y = if fused {
                attention(qkv.clone(), h, scale)
            } else {
                composed(qkv.clone())
            };
            // A tracked weighting, so that the loss has a gradient when qkv has none.
            let w = Tensor::<3>::from_data(w0.to_data(), &ad).require_grad();
            let grads = (y.clone() * w).sum().backward();
            (y, qkv.grad(&grads))
        };
        let (y1, d1) = grads(true, true);
        let (y2, d2) = grads(false, true);
        close(y1, y2, tol);
        close(d1.unwrap(), d2.unwrap(), grad_tol);
        let (y3, d3) = grads(true, false);
        assert!(d3.is_none());
        close(y3, grads(false, false).0, tol);
    }

    /// The kernel is chosen by device, dtype and head size: CUDA's memory-efficient kernel
    /// for f32, f16 and bf16 with heads of a multiple of 8 rows, the composed attention for
    /// the rest, the CPU's flash attention on the CPU.
    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_attention_kernels_follow_device_dtype_and_head_size() {
        use tch::{Device, Kind};
        use tch_attention::Kernel;
        let cuda = Device::Cuda(0);
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            assert_eq!(Kernel::choose(cuda, kind, 64), Kernel::CudaEfficient);
        }
        assert_eq!(Kernel::choose(cuda, Kind::Double, 64), Kernel::Composed);
        assert_eq!(Kernel::choose(cuda, Kind::Float, 12), Kernel::Composed);
        assert_eq!(
            Kernel::choose(Device::Mps, Kind::Float, 64),
            Kernel::Composed
        );
        assert_eq!(
            Kernel::choose(Device::Cpu, Kind::Float, 12),
            Kernel::CpuFlash
        );
    }

    /// The forward alone that CUDA runs (`scaled_dot_product_attention`, around the same
    /// views and head merging) gives, on the CPU, exactly the CPU flash attention's output:
    /// there both run the same kernel.
    #[cfg(feature = "tch")]
    #[test]
    fn scaled_dot_product_attention_on_the_cpu_is_the_flash_path_bit_for_bit() {
        let dev = crate::device("cpu").unwrap();
        let (b, t, h, dh) = (3, 7, 2, 8);
        let qkv = Tensor::<3>::random([b, t, 3 * h * dh], Distribution::Normal(0.0, 1.5), &dev)
            .try_into_primitive::<burn::backend::LibTorch>()
            .unwrap()
            .tensor;
        let scale = (dh as f64).powf(-0.5);
        let (flash, _) = tch_attention::cpu_flash_forward(&qkv, h, scale);
        let sdpa = tch_attention::sdpa_forward(&qkv, h, scale);
        assert_eq!(flash.size(), vec![b as i64, t as i64, (h * dh) as i64]);
        let values = |x: &tch::Tensor| Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
        assert_eq!(values(&flash), values(&sdpa));
    }

    /// The linear map's output and the gradients of x, w and b agree with burn's `Linear`
    /// (product, then bias), with autodiff and without; a frozen weight and bias (the
    /// backbone's, under an adapter) get none while x still gets its own.
    #[test]
    fn fused_linear_matches_burns_with_its_gradients() {
        let dev = crate::device("cpu").unwrap();
        let ad = dev.clone().autodiff();
        let (rows, din, dout) = (7, 5, 3);
        let x0 = Tensor::<2>::random([rows, din], Distribution::Normal(0.0, 1.0), &dev);
        let w0 = Tensor::<2>::random([din, dout], Distribution::Normal(0.0, 1.0), &dev);
        let b0 = Tensor::<1>::random([dout], Distribution::Normal(0.0, 1.0), &dev);
        let r0 = Tensor::<2>::random([rows, dout], Distribution::Normal(0.0, 1.0), &dev);
        let flat = |t: Tensor<2>| {
            let [a, c] = t.dims();
            t.reshape([1, a, c])
        };
        close(
            flat(linear(x0.clone(), w0.clone(), b0.clone())),
            flat(burn::tensor::module::linear(
                x0.clone(),
                w0.clone(),
                Some(b0.clone()),
            )),
            1e-5,
        );
        let grads = |fused: bool, frozen: bool| {
            let x = Tensor::<2>::from_data(x0.to_data(), &ad).require_grad();
            let (mut w, mut b) = (
                Tensor::<2>::from_data(w0.to_data(), &ad),
                Tensor::<1>::from_data(b0.to_data(), &ad),
            );
            if !frozen {
                (w, b) = (w.require_grad(), b.require_grad());
            }
            let y = if fused {
                linear(x.clone(), w.clone(), b.clone())
            } else {
                burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()))
            };
            let r = Tensor::<2>::from_data(r0.to_data(), &ad);
            let grads = (y.clone() * r).sum().backward();
            (
                flat(y),
                flat(x.grad(&grads).unwrap()),
                w.grad(&grads).map(flat),
                b.grad(&grads),
            )
        };
        let (y1, dx1, dw1, db1) = grads(true, false);
        let (y2, dx2, dw2, db2) = grads(false, false);
        close(y1, y2, 1e-5);
        close(dx1, dx2, 1e-5);
        close(dw1.unwrap(), dw2.unwrap(), 1e-5);
        close1(db1.unwrap(), db2.unwrap(), 1e-5);
        let (_, dx3, dw3, db3) = grads(true, true);
        assert!(dw3.is_none() && db3.is_none());
        close(dx3, grads(false, true).1, 1e-5);
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

    /// ‖a − b‖ / ‖b‖ (Frobenius), both read as f32.
    fn relative<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let f = |t: Tensor<D>| -> Vec<f32> {
            let t = t.cast(burn::tensor::FloatDType::F32);
            t.into_data().try_to_vec().unwrap()
        };
        let (a, b) = (f(a), f(b));
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
        norm(&mut a.iter().zip(&b).map(|(x, y)| x - y)) / norm(&mut b.iter().copied())
    }

    /// A fixed `[rows, cols]` input, the same on every run and backend: `scale` times a
    /// quasi-random sequence in (-1, 1).
    fn fixed(
        rows: usize,
        cols: usize,
        scale: f32,
        salt: f32,
        dev: &burn::tensor::Device,
    ) -> Tensor<2> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| scale * ((i as f32 * 0.618_034 + salt).fract() * 2.0 - 1.0))
            .collect();
        Tensor::from_data(burn::tensor::TensorData::new(v, [rows, cols]), dev)
    }

    /// The fused operations graft runs in bf16 under autocast (`graft_model::Precision`): the
    /// linear layer and attention, on bf16 inputs, against the same operation in f32, forward
    /// and the gradients of every input (through the casts, so they arrive in f32), on fixed
    /// inputs. bf16 keeps 8 significant bits (each rounded input is off by up to 2^-9 = 2e-3
    /// relative); the errors are relative Frobenius norms, with tolerances about twice those
    /// measured (flex, tch: linear 4.0e-3, 3.6e-3; its gradients 1.6e-3 to 1.9e-3 on both;
    /// attention 3.5e-3, 2.9e-3; its gradient 4.4e-3, 3.5e-3). They must not be zero: the
    /// bf16 kernels ran.
    #[test]
    fn linear_and_attention_in_bf16_are_their_f32_results_within_its_rounding() {
        let bf16 = burn::tensor::FloatDType::BF16;
        let f32 = burn::tensor::FloatDType::F32;
        let dev = crate::device("cpu").unwrap();
        let ad = dev.clone().autodiff();
        let leaf = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &ad).require_grad();
        let x0 = fixed(40, 96, 1.0, 0.1, &dev);
        let w0 = fixed(96, 48, 0.1, 0.2, &dev);
        let b0 = fixed(1, 48, 0.1, 0.3, &dev);
        let r0 = fixed(40, 48, 1.0, 0.4, &dev);
        let run_linear = |low: bool| {
            let (x, w, b) = (leaf(&x0), leaf(&w0), leaf(&b0));
            let cast = |t: Tensor<2>| if low { t.cast(bf16) } else { t };
            let b1: Tensor<1> = cast(b.clone()).reshape([48]);
            let y = linear(cast(x.clone()), cast(w.clone()), b1).cast(f32);
            let r = Tensor::<2>::from_data(r0.to_data(), &ad);
            let grads = (y.clone() * r).sum().backward();
            let g = |t: &Tensor<2>| t.grad(&grads).unwrap();
            (y, g(&x), g(&w), g(&b))
        };
        let (y, dx, dw, db) = run_linear(false);
        let (yl, dxl, dwl, dbl) = run_linear(true);
        let mut errors = vec![
            ("linear", relative(yl, y), 8e-3),
            ("linear dx", relative(dxl, dx), 4e-3),
            ("linear dw", relative(dwl, dw), 4e-3),
            ("linear db", relative(dbl, db), 4e-3),
        ];

        let (b, t, h, dh) = (3, 5, 2, 8);
        let q0 = fixed(b * t, 3 * h * dh, 1.5, 0.5, &dev).reshape([b, t, 3 * h * dh]);
        let r0 = fixed(b * t, h * dh, 1.0, 0.6, &dev).reshape([b, t, h * dh]);
        let run_attention = |low: bool| {
            let qkv = Tensor::<3>::from_data(q0.to_data(), &ad).require_grad();
            let input = if low {
                qkv.clone().cast(bf16)
            } else {
                qkv.clone()
            };
            let y = attention(input, h, (dh as f64).powf(-0.5)).cast(f32);
            let r = Tensor::<3>::from_data(r0.to_data(), &ad);
            let grads = (y.clone() * r).sum().backward();
            (y, qkv.grad(&grads).unwrap())
        };
        let (y, dq) = run_attention(false);
        let (yl, dql) = run_attention(true);
        errors.push(("attention", relative(yl, y), 8e-3));
        errors.push(("attention dqkv", relative(dql, dq), 8e-3));
        for (what, err, tol) in errors {
            assert!(
                err > 0.0 && err < tol,
                "{what} off by {err:.2e} (tolerance {tol:e})"
            );
        }
    }
}
