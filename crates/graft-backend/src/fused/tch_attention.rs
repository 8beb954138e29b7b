//! Attention's kernels on LibTorch, and the layouts around them (issues 10 and 25).
//!
//! Which kernel runs, by the projection's device, dtype and head size ([`Kernel::choose`]):
//!
//! | qkv | with a backward (training) | forward alone (inference) |
//! |---|---|---|
//! | CPU | flash attention for CPU (`_scaled_dot_product_flash_attention_for_cpu` and its backward) | the same |
//! | CUDA, f32 / f16 / bf16, head size a multiple of 8 | memory-efficient attention (`_scaled_dot_product_efficient_attention`, `_efficient_attention_backward`) | `scaled_dot_product_attention`, which picks flash, memory-efficient, cuDNN or math itself |
//! | anything else | the composed attention of `fused.rs` | the same |
//!
//! On CPU and CUDA these are what PyTorch's `scaled_dot_product_attention` runs. Neither
//! keeps the `[b, h, t, t]` attention weights for the backward, only the log-sum-exp of each
//! row. tch 0.22 binds no forward of the CUDA flash kernel (`_scaled_dot_product_flash_attention`
//! returns sizes, which its generator skips), so training on CUDA takes the memory-efficient
//! kernel, which PyTorch also picks for f32, where flash does not run.
//!
//! Layouts: q, k and v are views of timm's fused projection `[b, t, 3·h·dh]` as `[b, h, t, dh]`
//! ([`qkv_views`]); the output goes back as `[b, t, h·dh]` ([`merge_heads`]); the three
//! gradients, each `[b, t, h, dh]`, are stacked into the projection's layout ([`join_grads`]).

use tch::{Device, Kind, Tensor};

/// The attention kernel for a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    CpuFlash,
    CudaEfficient,
    /// Composed from matrix products and a softmax (`fused::composed_attention`).
    Composed,
}

impl Kernel {
    /// The kernel for a projection on `device` of dtype `kind` with heads of `head_dim`:
    /// the memory-efficient CUDA kernel takes f32, f16 and bf16 with a head size that is a
    /// multiple of 8 (PyTorch asks 4 for f32 and 8 for the others).
    pub(super) fn choose(device: Device, kind: Kind, head_dim: i64) -> Kernel {
        match device {
            Device::Cpu => Kernel::CpuFlash,
            Device::Cuda(_)
                if matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16)
                    && head_dim > 0
                    && head_dim % 8 == 0 =>
            {
                Kernel::CudaEfficient
            }
            _ => Kernel::Composed,
        }
    }

    /// The kernel for `qkv` `[b, t, 3·h·dh]` with `heads` heads.
    pub(super) fn for_qkv(qkv: &Tensor, heads: usize) -> Kernel {
        let e = *qkv.size().last().expect("qkv has axes");
        Kernel::choose(qkv.device(), qkv.kind(), e / (3 * heads as i64))
    }
}

/// q, k and v as views of the projection.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> 3 x `[b, h, t, dh]`
pub(super) fn qkv_views(qkv: &Tensor, heads: usize) -> [Tensor; 3] {
    let [b, t, e] = qkv.size()[..] else {
        panic!("qkv must have three axes, has {:?}", qkv.size())
    };
    let h = heads as i64;
    let x = qkv
        .reshape([b, t, 3, h, e / (3 * h)])
        .permute([2, 0, 3, 1, 4]);
    [0, 1, 2].map(|i| x.select(0, i))
}

/// The heads side by side; a view when the kernel laid its output out `[b, t, h, dh]`.
///
/// # Shapes
/// `[b, h, t, dh]` -> `[b, t, h·dh]`
pub(super) fn merge_heads(out: &Tensor) -> Tensor {
    let [b, h, t, dh] = dims4(out);
    out.transpose(1, 2).reshape([b, t, h * dh])
}

/// The inverse of [`merge_heads`], as a view.
///
/// # Shapes
/// `[b, t, h·dh]` -> `[b, h, t, dh]`
fn heads_first(x: &Tensor, [b, h, t, dh]: [i64; 4]) -> Tensor {
    x.reshape([b, t, h, dh]).transpose(1, 2)
}

/// The gradients of q, k and v stacked into the projection's layout (one copy).
///
/// # Shapes
/// 3 x `[b, t, h, dh]` -> `[b, t, 3·h·dh]`
pub(super) fn join_grads(parts: [Tensor; 3]) -> Tensor {
    let [b, t, h, dh] = dims4(&parts[0]);
    Tensor::stack(&parts, 2).reshape([b, t, 3 * h * dh])
}

fn dims4(x: &Tensor) -> [i64; 4] {
    let [a, b, c, d] = x.size()[..] else {
        panic!("expected four axes, got {:?}", x.size())
    };
    [a, b, c, d]
}

/// The CPU flash attention's forward, with the log-sum-exp its backward needs.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> (out `[b, t, h·dh]`, lse `[b, h, t]`)
pub(super) fn cpu_flash_forward(qkv: &Tensor, heads: usize, scale: f64) -> (Tensor, Tensor) {
    let [q, k, v] = qkv_views(qkv, heads);
    let (out, lse) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
        &q,
        &k,
        &v,
        0.0,
        false,
        None::<Tensor>,
        scale,
    );
    (merge_heads(&out), lse)
}

/// The CPU flash attention's backward: the gradient of qkv.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]`, out and g `[b, t, h·dh]`, lse `[b, h, t]` -> `[b, t, 3·h·dh]`
pub(super) fn cpu_flash_backward(
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    heads: usize,
    scale: f64,
) -> Tensor {
    let [q, k, v] = qkv_views(qkv, heads);
    let dims = dims4(&q);
    let (dq, dk, dv) = Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
        &heads_first(g, dims),
        &q,
        &k,
        &v,
        &heads_first(out, dims),
        lse,
        0.0,
        false,
        None::<Tensor>,
        scale,
    );
    join_grads([dq, dk, dv].map(|d| d.transpose(1, 2)))
}

/// The CUDA memory-efficient attention's forward, with the log-sum-exp its backward needs
/// (without dropout the kernel's random seed and offset are unused).
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> (out `[b, t, h·dh]`, lse `[b, h, t rounded up to 32]`)
pub(super) fn cuda_efficient_forward(qkv: &Tensor, heads: usize, scale: f64) -> (Tensor, Tensor) {
    let [q, k, v] = qkv_views(qkv, heads);
    let (out, lse, _seed, _offset) = Tensor::internal_scaled_dot_product_efficient_attention(
        &q,
        &k,
        &v,
        None::<Tensor>,
        true,
        0.0,
        false,
        scale,
    );
    (merge_heads(&out), lse)
}

/// The CUDA memory-efficient attention's backward, called as PyTorch's
/// `_scaled_dot_product_efficient_attention_backward` calls it: every tensor tokens-first
/// `[b, t, h, dh]` (q, k and v as views of the projection, the gradients as the kernel
/// writes them). Without dropout the seed and offset are not read; they are the empty
/// scalars the forward returns then.
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]`, out and g `[b, t, h·dh]`, lse `[b, h, t']` -> `[b, t, 3·h·dh]`
pub(super) fn cuda_efficient_backward(
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    heads: usize,
    scale: f64,
) -> Tensor {
    let [q, k, v] = qkv_views(qkv, heads).map(|x| x.transpose(1, 2));
    let [b, t, h, dh] = dims4(&q);
    let tokens_first = |x: &Tensor| x.reshape([b, t, h, dh]).contiguous();
    let unused = || Tensor::empty(Vec::<i64>::new(), (Kind::Int64, Device::Cpu));
    let (dq, dk, dv, _dbias) = Tensor::internal_efficient_attention_backward(
        &tokens_first(g),
        &q,
        &k,
        &v,
        None::<Tensor>,
        &tokens_first(out),
        None::<Tensor>,
        None::<Tensor>,
        t,
        t,
        lse,
        0.0,
        &unused(),
        &unused(),
        0, // no causal mask
        false,
        scale,
        None,
        None,
        false,
    );
    join_grads([dq, dk, dv])
}

/// Attention's forward alone through `scaled_dot_product_attention`, which picks its kernel
/// by device and dtype (on the CPU, the flash attention of [`cpu_flash_forward`]).
///
/// # Shapes
/// qkv `[b, t, 3·h·dh]` -> `[b, t, h·dh]`
pub(super) fn sdpa_forward(qkv: &Tensor, heads: usize, scale: f64) -> Tensor {
    let [q, k, v] = qkv_views(qkv, heads);
    let out =
        Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, scale, false);
    merge_heads(&out)
}
