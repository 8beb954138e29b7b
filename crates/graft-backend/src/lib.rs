//! The one place in the workspace that names burn backends.
//!
//! In burn 0.22 tensors carry no backend type: the backend lives in the [`Device`]. Model
//! and training code take a `Device`; this crate turns a `--device` flag (`cpu`, `cuda`,
//! `cuda:1`) into one, according to the cargo features the binary was built with:
//!
//! | features | `cpu` | `cuda[:k]` |
//! |---|---|---|
//! | `flex` (default) | burn-flex, pure Rust | error |
//! | `tch` | LibTorch CPU | LibTorch CUDA device k |
//!
//! `tch` wins over `flex` when both are enabled, so `--features tch` on top of the
//! defaults selects LibTorch. CUDA goes through LibTorch only: burn's CubeCL backends have
//! no kernels for the [`fused`] operations (burn answers them with `unimplemented!`), so
//! the `cuda` feature stops the build.
//!
//! Initial weights are drawn on the [`host`] (this build's CPU device), whatever device trains
//! them, and [`seed`] seeds its generator: LibTorch draws on a CUDA device's own generator,
//! which gives other numbers for the same seed, so a GPU run would start from other weights.

#[cfg(feature = "cuda")]
compile_error!(
    "graft-backend: the `cuda` (CubeCL) feature is not supported: the fused LayerNorm, softmax, \
     attention and linear operations (graft_backend::fused) have no CubeCL kernels, so a model \
     would stop at burn's unimplemented! on its first LayerNorm; for CUDA build with \
     `--no-default-features --features tch` (LibTorch)"
);

pub use burn::tensor::Device;

pub mod canary;
pub mod fused;
pub mod gram;
pub mod numerics;
pub mod transfer;

pub use transfer::{is_gpu, upload, upload_int};

/// Errors of device selection; each names the `device` parameter and what was found.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("device = {spec:?}: expected cpu, cuda or cuda:<index>")]
    BadSpec { spec: String },
    #[error(
        "device = {spec:?}: CUDA is not available in this build (backend {backend}); rebuild with --features tch"
    )]
    NoCuda { spec: String, backend: &'static str },
    #[error(
        "device = {spec:?}: no CUDA device {index} found: {backend} sees {found} CUDA device(s)"
    )]
    NoCudaDevice {
        spec: String,
        index: usize,
        backend: &'static str,
        found: usize,
    },
    #[error("device = \"cpu\": this build has no CPU backend (enable the flex or tch feature)")]
    NoCpu,
}

/// Name of the backend this build uses for `cuda` (or `cpu` without CUDA): `tch`, `flex` or `none`.
pub fn backend_name() -> &'static str {
    if cfg!(feature = "tch") {
        "tch"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "none"
    }
}

/// Sets the intra-op threads of this process's CPU kernels: LibTorch's (`at::set_num_threads`)
/// on `tch`; the flex backend's rayon pool reads `RAYON_NUM_THREADS` when it starts, which
/// the fine-tune stage sets for its workers. Two processes with the default thread count
/// each on two cores oversubscribe them (issue 10).
pub fn set_threads(n: usize) {
    #[cfg(feature = "tch")]
    // SAFETY: a plain setter of LibTorch's global thread pool size, called before any
    // tensor work of this process.
    unsafe {
        torch_sys::at_set_num_threads(n.max(1) as std::os::raw::c_int)
    };
    #[cfg(not(feature = "tch"))]
    let _ = n;
}

/// The heap settings [`keep_freed_memory`] gives glibc's malloc: blocks up to 32 MiB come
/// from the heap rather than fresh mappings, and up to 256 MiB freed at the heap's top stay
/// mapped.
pub const MMAP_THRESHOLD: usize = 32 << 20;
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// Keeps the memory one training step frees for the next (glibc's malloc; elsewhere this
/// does nothing). Every step allocates and frees the same activation buffers; by default
/// glibc maps blocks over 128 KiB afresh and returns the heap's free top to the system, so
/// each step page-faults its buffers in again (a `vit-cpu-p8` batch of 64 allocates
/// 0.8-1.1 MiB per linear layer's output). This sets [`MMAP_THRESHOLD`] and
/// [`TRIM_THRESHOLD`], unless the environment already sets malloc's thresholds
/// (`GLIBC_TUNABLES` naming `glibc.malloc`, or `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_`),
/// once per process; [`device`] calls it. Returns whether the settings are in effect.
pub fn keep_freed_memory() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| !malloc_set_in_environment() && set_malloc_thresholds())
}

/// Whether the environment sets malloc's thresholds itself, which then stay as they are.
fn malloc_set_in_environment() -> bool {
    let env = |k: &str| std::env::var_os(k).is_some();
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    tunables.contains("glibc.malloc.")
        || env("MALLOC_MMAP_THRESHOLD_")
        || env("MALLOC_TRIM_THRESHOLD_")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc_thresholds() -> bool {
    // SAFETY: mallopt only changes glibc's allocation policy; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc_thresholds() -> bool {
    false
}

/// A device kind parsed from a `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        let bad = || BackendError::BadSpec { spec: s.to_owned() };
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|k| k.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(bad),
        }
    }
}

/// Whether what [`device`] answers for `spec` depends on the build's backend: for a CUDA
/// device it does (a build without CUDA refuses it, one with CUDA asks how many devices it
/// sees); `cpu` and a spec that does not parse get the same answer from every build with a
/// CPU backend. Reads no device.
pub fn backend_decides(spec: &str) -> bool {
    matches!(spec.parse(), Ok(DeviceSpec::Cuda(_)))
}

/// How many CUDA devices this build's CUDA backend sees; `None` for a build without one.
/// Asks the backend (LibTorch's device count on `tch`), which never panics for want of a GPU.
#[allow(unreachable_code)]
pub fn cuda_devices() -> Option<usize> {
    #[cfg(feature = "tch")]
    return Some(burn::tensor::Device::enumerate(burn::tensor::DeviceType::LibTorch).len());
    None
}

/// This build's CPU device, without autodiff: LibTorch's CPU on `tch`, flex otherwise. Initial
/// weights are drawn here and moved to the device that trains them (`graft_model` builds
/// every randomly initialised parameter this way), so every device starts from the same
/// weights for a seed.
#[allow(deprecated, unreachable_code)] // burn marks tch deprecated; it is our fastest backend here
pub fn host() -> Device {
    #[cfg(feature = "tch")]
    return Device::libtorch();
    #[cfg(feature = "flex")]
    return Device::flex();
    Device::default()
}

/// Seeds the generators a run draws from: the [`host`]'s, which draws the initial weights,
/// and `device`'s own when it is another device (LibTorch seeds both at once; CubeCL's CUDA
/// backend has its own).
pub fn seed(device: &Device, seed: u64) {
    let host = host();
    host.seed(seed);
    if *device != host {
        device.seed(seed);
    }
}

/// The device for a `device` parameter in this build. A CUDA device that is not there is an
/// error here, before any tensor is made on it. The process's heap keeps freed memory from
/// here on ([`keep_freed_memory`]).
#[allow(deprecated, unreachable_code)] // burn marks tch deprecated; it is our fastest backend here
pub fn device(spec: &str) -> Result<Device, BackendError> {
    let parsed: DeviceSpec = spec.parse()?;
    keep_freed_memory();
    match parsed {
        DeviceSpec::Cpu if cfg!(any(feature = "tch", feature = "flex")) => Ok(host()),
        DeviceSpec::Cpu => Err(BackendError::NoCpu),
        DeviceSpec::Cuda(k) => {
            let Some(found) = cuda_devices() else {
                return Err(BackendError::NoCuda {
                    spec: spec.to_owned(),
                    backend: backend_name(),
                });
            };
            if k >= found {
                return Err(BackendError::NoCudaDevice {
                    spec: spec.to_owned(),
                    index: k,
                    backend: "LibTorch",
                    found,
                });
            }
            #[cfg(feature = "tch")]
            return Ok(Device::libtorch_cuda(k));
            unreachable!("cuda_devices() is None without a CUDA backend")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};

    /// The weights' generator is the CPU's: `device("cpu")` is the host itself, and seeding
    /// any device seeds the host, so its draws repeat for a seed.
    #[test]
    fn the_host_is_the_cpu_device_and_seeding_seeds_it() {
        let cpu = device("cpu").unwrap();
        assert_eq!(host(), cpu);
        assert!(!host().is_autodiff());
        let draw = || {
            Tensor::<1>::random([6], burn::tensor::Distribution::Default, &host())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        seed(&cpu.clone().autodiff(), 9);
        let a = draw();
        seed(&cpu, 9);
        assert_eq!(draw(), a);
    }

    #[cfg(feature = "tch")]
    #[allow(deprecated)]
    #[test]
    fn the_host_of_a_libtorch_build_is_libtorch_s_cpu() {
        assert_eq!(host(), Device::libtorch());
        assert_ne!(host(), Device::libtorch_cuda(0));
    }

    #[test]
    fn parses_device_flags() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    /// A CUDA device is the backend's to accept; `cpu` and a malformed spec are not.
    #[test]
    fn only_cuda_devices_are_decided_by_the_backend() {
        for spec in ["cuda", "cuda:0", "cuda:1", " cuda:7 "] {
            assert!(backend_decides(spec), "{spec}");
        }
        for spec in ["cpu", "gpu", "cuda:x", "cuda:-1", "cuda:", ""] {
            assert!(!backend_decides(spec), "{spec}");
            // Every build answers these alike: `cpu` is a device, the others a bad spec.
            assert_eq!(device(spec).is_ok(), spec == "cpu", "{spec}");
        }
    }

    /// One forward and backward pass on the build's CPU backend: d/dw sum(x * w) = x.
    #[test]
    fn autodiff_runs_on_the_cpu_backend() {
        let dev = device("cpu").unwrap().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &dev);
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, -1.0, 0.0, 2.0], [2, 2]), &dev)
            .require_grad();
        let loss = (x.clone() * w.clone()).sum();
        assert_eq!(loss.clone().into_scalar::<f32>(), 0.5 - 2.0 + 0.0 + 8.0);
        let grads = loss.backward();
        let g = w.grad(&grads).expect("w requires grad");
        let g: Vec<f32> = g.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(g, vec![1.0, 2.0, 3.0, 4.0]);
    }

    /// After `device`, a 1 MiB block comes from the heap (glibc's default would map it),
    /// and a block over the threshold is still mapped; unless the environment sets malloc's
    /// thresholds, which then stay as they are.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_heap_keeps_blocks_below_the_threshold() {
        device("cpu").unwrap();
        if malloc_set_in_environment() {
            assert!(!keep_freed_memory());
            return;
        }
        assert!(keep_freed_memory());
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblks;
        let before = mapped();
        let small = std::hint::black_box(vec![1u8; 1 << 20]);
        assert_eq!(mapped(), before, "a 1 MiB block was mapped");
        let large = std::hint::black_box(vec![1u8; MMAP_THRESHOLD + (1 << 20)]);
        assert_eq!(
            mapped(),
            before + 1,
            "a block over the threshold was not mapped"
        );
        drop((small, large));
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn cuda_on_a_cpu_only_build_is_a_clear_error() {
        assert_eq!(cuda_devices(), None);
        let e = device("cuda:1").unwrap_err().to_string();
        assert!(
            e.contains("device = \"cuda:1\"")
                && e.contains("CUDA is not available")
                && e.contains("flex"),
            "{e}"
        );
    }

    /// A CUDA device index past what the backend sees is an error naming both, not a panic
    /// inside the backend; on a machine without a GPU that is every index.
    #[cfg(feature = "tch")]
    #[test]
    fn missing_cuda_device_is_an_error_on_tch() {
        let found = cuda_devices().expect("tch has a CUDA backend");
        let spec = format!("cuda:{found}");
        let e = device(&spec).unwrap_err().to_string();
        assert!(
            e.contains(&format!("device = {spec:?}"))
                && e.contains(&format!("no CUDA device {found} found"))
                && e.contains(&format!("LibTorch sees {found} CUDA device(s)")),
            "{e}"
        );
        if found == 0 {
            let e = device("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA device 0 found"), "{e}");
        }
    }
}
