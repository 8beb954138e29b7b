//! Host-to-device copies that do not make the host wait (issue 25).
//!
//! `Tensor::from_data` on LibTorch CUDA copies from pageable memory, and such a copy waits
//! until the device has finished everything queued before it: with one per training step
//! (the batch) the host can never queue the next step while the GPU runs this one. [`upload`]
//! copies the data into pinned (page-locked) memory and from there with a non-blocking copy,
//! as PyTorch's `DataLoader(pin_memory=True)` and `.to(device, non_blocking=True)` do.
//! LibTorch's pinned-memory allocator keeps a block until the copy from it has run, so the
//! host side can be dropped at once. On every other device [`upload`] is `Tensor::from_data`.
//!
//! tch exposes no CUDA streams, so the copy runs on the stream the kernels run on: it does
//! not overlap the GPU's computation, only the host's.

// burn marks tch deprecated; it is our fastest backend here (as in `device`).
#![allow(deprecated)]

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Whether `device` is anything but the CPU (a GPU, for the backends this build has).
pub fn is_gpu(device: &Device) -> bool {
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => false,
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(d) => *d != burn::backend::LibTorchDevice::Cpu,
        #[allow(unreachable_patterns)]
        _ => true,
    }
}

/// A float tensor from host data on `device` (its autodiff context included), copied there
/// without blocking on a LibTorch GPU.
///
/// # Shapes
/// `data.shape()` -> the same
pub fn upload<const D: usize>(data: TensorData, device: &Device) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if let Some(t) = libtorch::upload(&data, device) {
        let t = Tensor::<D>::from_primitive::<burn::backend::LibTorch>(t);
        return with_context_of(t, device);
    }
    Tensor::from_data(data, device)
}

/// [`upload`] for integer data (labels, indices, uint8 pixels), kept in its own dtype.
///
/// # Shapes
/// `data.shape()` -> the same
pub fn upload_int<const D: usize>(data: TensorData, device: &Device) -> Tensor<D, Int> {
    #[cfg(feature = "tch")]
    if let Some(t) = libtorch::upload(&data, device) {
        let t = Tensor::<D, Int>::from_primitive::<burn::backend::LibTorch>(t);
        return with_context_of(t, device);
    }
    Tensor::from_data(data, device)
}

/// `t` in `device`'s autodiff context: a batch made for an autodiff device is an untracked
/// autodiff tensor, as `Tensor::from_data` makes it.
pub fn with_context_of<const D: usize, K>(t: Tensor<D, K>, device: &Device) -> Tensor<D, K>
where
    K: burn::tensor::kind::Autodiff,
{
    if device.is_autodiff() {
        t.autodiff()
    } else {
        t
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{DispatchDevice, LibTorchDevice};
    use burn::tensor::{DType, Device, TensorData};

    /// `data` on a LibTorch `device`: on CUDA through pinned memory with a non-blocking
    /// copy, on the CPU as it is; `None` on other devices, or for a dtype not handled here.
    pub(super) fn upload(data: &TensorData, device: &Device) -> Option<TchTensor> {
        let DispatchDevice::LibTorch(target) = *device.clone().inner().as_dispatch() else {
            return None;
        };
        let kind = match data.dtype() {
            DType::F32 => tch::Kind::Float,
            DType::I64 => tch::Kind::Int64,
            DType::U8 => tch::Kind::Uint8,
            _ => return None,
        };
        let dims: Vec<i64> = data.shape().iter().map(|&d| d as i64).collect();
        let host = tch::Tensor::from_data_size(data.as_bytes(), &dims, kind);
        Some(TchTensor::new(match target {
            LibTorchDevice::Cuda(k) => {
                let cuda = tch::Device::Cuda(k);
                host.pin_memory(cuda).to_device_(cuda, kind, true, false)
            }
            LibTorchDevice::Cpu => host,
            _ => return None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    /// On the CPU an upload is exactly `from_data` (values, shape and dtype), float and
    /// integer, and follows the device's autodiff context; LibTorch keeps uint8 as uint8.
    #[test]
    fn an_upload_to_the_cpu_is_from_data() {
        let dev = crate::device("cpu").unwrap();
        assert!(!is_gpu(&dev) && !is_gpu(&dev.clone().autodiff()));
        let floats = TensorData::new(vec![0.5f32, -1.25, 3.0, 1e-7, 7.0, -0.0], [2, 3]);
        let got = upload::<2>(floats.clone(), &dev).into_data();
        assert_eq!(got, Tensor::<2>::from_data(floats, &dev).into_data());
        let pixels = TensorData::new(vec![0u8, 7, 255, 128], [4]);
        let got = upload_int::<1>(pixels.clone(), &dev);
        if cfg!(feature = "tch") {
            assert_eq!(got.dtype(), DType::U8);
        }
        let got = got.into_data();
        assert_eq!(got, Tensor::<1, Int>::from_data(pixels, &dev).into_data());
        let ad = dev.autodiff();
        let got = upload::<1>(TensorData::new(vec![1.0f32, 2.0], [2]), &ad);
        assert!(got.is_autodiff());
        let labels = upload_int::<1>(TensorData::new(vec![3i64, 1], [2]), &ad);
        assert!(labels.is_autodiff());
        let labels = labels.into_data().convert::<i64>();
        assert_eq!(labels.try_to_vec::<i64>().unwrap(), vec![3, 1]);
    }
}
