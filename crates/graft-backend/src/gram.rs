//! A product `G = Σ aᵀ b` summed over batches and read on the host: the probe's
//! `G = Δᵀ X` for all n² edges, `[n·d, n·d]` (1.5 GB at ViT-B/16).
//!
//! On LibTorch's CPU the sum lives in host memory from the start: LibTorch writes the first
//! batch's product into it (`mm_out`) and adds the others in place (`addmm_`), so reading
//! it back is no copy, and no `[p, q]` temporary is made per batch (reading a 1.5 GB tensor
//! back through `into_data` is a copy into freshly mapped memory; BENCHMARKS.md,
//! "Precision", has what it cost). Elsewhere (flex, a GPU) the sum is a tensor on the
//! device, added into in place where the backend can ([`crate::fused::add_at_b`]) and
//! copied to the host once at the end.

use std::ops::{Deref, DerefMut};

use burn::tensor::{Device, Tensor};

/// f32 values in host memory whose first one is 64-byte aligned, read as a slice. LibTorch
/// aligns its own CPU tensors so, and MKL's GEMM writes into memory that is not more slowly
/// (BENCHMARKS.md, "Precision").
pub struct HostMatrix {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl HostMatrix {
    /// `len` zeros (memory the system maps on first touch).
    pub fn zeros(len: usize) -> HostMatrix {
        let buf = vec![0f32; len + 15];
        let start = match buf.as_ptr().align_offset(64) {
            k if k < 16 => k,
            _ => 0,
        };
        HostMatrix { buf, start, len }
    }
}

impl PartialEq for HostMatrix {
    fn eq(&self, other: &HostMatrix) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for HostMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = &self[..self.len.min(8)];
        write!(f, "HostMatrix {{ len: {}, first: {head:?} }}", self.len)
    }
}

impl From<Vec<f32>> for HostMatrix {
    fn from(buf: Vec<f32>) -> HostMatrix {
        let len = buf.len();
        HostMatrix { buf, start: 0, len }
    }
}

impl Deref for HostMatrix {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl DerefMut for HostMatrix {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// `G = Σ aᵀ b` over [`GramSum::add`]'s calls, in f32.
pub struct GramSum {
    sum: Sum,
}

enum Sum {
    #[cfg(feature = "tch")]
    Host(libtorch::HostSum),
    Device(Option<Tensor<2>>),
}

impl GramSum {
    /// An empty sum of `[p, q]` products for batches on `device`.
    pub fn new(p: usize, q: usize, device: &Device) -> GramSum {
        #[cfg(feature = "tch")]
        if libtorch::is_cpu(device) {
            return GramSum {
                sum: Sum::Host(libtorch::HostSum::new(p, q)),
            };
        }
        let _ = (p, q, device);
        GramSum {
            sum: Sum::Device(None),
        }
    }

    /// Adds `aᵀ b`. No gradient flows through the sum.
    ///
    /// # Shapes
    /// a `[rows, p]`, b `[rows, q]`
    pub fn add(&mut self, a: Tensor<2>, b: Tensor<2>) {
        match &mut self.sum {
            #[cfg(feature = "tch")]
            Sum::Host(sum) => sum.add(a, b),
            Sum::Device(acc) => {
                *acc = Some(match acc.take() {
                    Some(g) => crate::fused::add_at_b(g, a, b),
                    None => a.transpose().matmul(b),
                })
            }
        }
    }

    /// The sum on the host, row-major `[p, q]`; `None` when nothing was added.
    pub fn into_host(self) -> Result<Option<HostMatrix>, String> {
        match self.sum {
            #[cfg(feature = "tch")]
            Sum::Host(sum) => Ok(sum.into_host()),
            Sum::Device(None) => Ok(None),
            Sum::Device(Some(g)) => g
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map(|g| Some(g.into()))
                .map_err(|e| format!("{e:?}")),
        }
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    #![allow(deprecated)]

    use super::HostMatrix;
    use burn::backend::{DispatchDevice, LibTorch, LibTorchDevice};
    use burn::tensor::{Device, Tensor};

    /// Whether `device` is LibTorch's CPU.
    pub(super) fn is_cpu(device: &Device) -> bool {
        matches!(
            device.clone().inner().as_dispatch(),
            DispatchDevice::LibTorch(LibTorchDevice::Cpu)
        )
    }

    /// A `[p, q]` f32 sum in a host buffer that a LibTorch tensor views.
    pub(super) struct HostSum {
        // Declared before `buf`, so dropped before it: the view never outlives the memory.
        view: tch::Tensor,
        buf: HostMatrix,
        added: bool,
    }

    impl HostSum {
        pub(super) fn new(p: usize, q: usize) -> HostSum {
            let mut buf = HostMatrix::zeros(p * q);
            let data = buf.as_mut_ptr().cast::<u8>();
            let (p, q) = (p as i64, q as i64);
            // SAFETY: `buf` holds p·q f32 values, contiguous, row stride q; its heap memory
            // stays where it is while `view` lives (it is neither grown nor read nor dropped
            // before `view` is: see `into_host` and the field order), and no other
            // tensor keeps a reference to it (the handles LibTorch's in-place operations
            // return are dropped at once).
            let view = unsafe {
                tch::Tensor::from_blob(data, &[p, q], &[q, 1], tch::Kind::Float, tch::Device::Cpu)
            };
            HostSum {
                view,
                buf,
                added: false,
            }
        }

        pub(super) fn add(&mut self, a: Tensor<2>, b: Tensor<2>) {
            let a = cpu_f32(a);
            let b = cpu_f32(b);
            let at = a.tr();
            if self.added {
                let _ = self.view.addmm_(&at, &b);
            } else {
                let _ = at.mm_out(&self.view, &b);
                self.added = true;
            }
        }

        pub(super) fn into_host(self) -> Option<HostMatrix> {
            let HostSum { view, buf, added } = self;
            drop(view);
            added.then_some(buf)
        }
    }

    /// `t`'s LibTorch tensor (its autodiff record dropped), in f32.
    fn cpu_f32(t: Tensor<2>) -> tch::Tensor {
        let t = t
            .inner()
            .try_into_primitive::<LibTorch>()
            .expect("a tch build's CPU tensor is a LibTorch tensor")
            .tensor;
        if t.kind() == tch::Kind::Float {
            t
        } else {
            t.to_kind(tch::Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The sum of three products equals the products added up, with and without autodiff,
    /// and an empty sum reads back as `None`.
    #[test]
    fn the_sum_is_the_products_added_up() {
        let dev = crate::device("cpu").unwrap();
        for device in [dev.clone(), dev.autodiff()] {
            let draw = |dims: [usize; 2]| {
                Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), &device)
            };
            let mut sum = GramSum::new(3, 4, &device);
            let mut want = Tensor::<2>::zeros([3, 4], &device);
            for rows in [6, 1, 9] {
                let (a, b) = (draw([rows, 3]), draw([rows, 4]));
                want = want + a.clone().transpose().matmul(b.clone());
                sum.add(a, b);
            }
            let got = sum.into_host().unwrap().unwrap();
            let want: Vec<f32> = want.into_data().try_into_vec().unwrap();
            assert_eq!(got.len(), 12);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{got:?} against {want:?}");
            }
            assert_eq!(GramSum::new(3, 4, &device).into_host().unwrap(), None);
        }
    }

    #[test]
    fn a_host_matrix_starts_64_byte_aligned() {
        for len in [1, 15, 16, 1000] {
            let m = HostMatrix::zeros(len);
            assert_eq!(m.len(), len);
            assert_eq!(m.as_ptr() as usize % 64, 0);
            assert!(m.iter().all(|&v| v == 0.0));
        }
        assert_eq!(&*HostMatrix::from(vec![1.0, 2.0]), &[1.0, 2.0]);
    }
}
