//! The one backend-specific module: maps a `--backend` / `OPT_BACKEND` choice to a concrete Burn type.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::{AutodiffBackend, Backend, Device, DeviceId};

/// A compute backend, selected at run time among those compiled in (cargo features).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's `Flex` CPU backend (default: fastest CPU matmul here).
    Flex,
    /// Burn's `NdArray` CPU backend.
    NdArray,
    /// Burn's `Wgpu` backend (Vulkan/Metal/DX12; lavapipe on CPU-only machines).
    Wgpu,
    /// Burn's `Cuda` backend (NVIDIA GPUs).
    Cuda,
}

/// Why a backend cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown backend `{0}`; choose one of flex, ndarray, wgpu, cuda")]
    Unknown(String),
    #[error("backend `{0}` is not compiled into this build; rebuild with `--features {0}`")]
    NotCompiled(BackendKind),
    #[error("backend `{kind}` is compiled in but no usable device was found: {message}")]
    Unavailable { kind: BackendKind, message: String },
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "flex" => Ok(Self::Flex),
            "ndarray" => Ok(Self::NdArray),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(BackendError::Unknown(s.into())),
        }
    }
}

impl BackendKind {
    /// `OPT_BACKEND` from the environment (default `flex`).
    pub fn from_env() -> Result<Self, BackendError> {
        std::env::var("OPT_BACKEND").map_or(Ok(Self::Flex), |s| s.parse())
    }
}

/// Code generic over the backend, run by [`run`] on the chosen one.
pub trait BackendTask {
    type Output;
    /// A training task: on cuda built with `fusion` it runs on Burn's fused backend. Every other
    /// task (decoding, scoring) runs unfused there: fused KV-cache decoding gave wrong logits
    /// (tracel-ai/burn#4366).
    const TRAINS: bool = false;
    /// Run on backend `B` (an autodiff backend; use `.valid()` modules for inference).
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Run `task` on `kind`, after checking that the backend is compiled in and its device works.
pub fn run<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output, BackendError> {
    // The LM head's slice: larger on CUDA (fewer launches), WebGPU's binding limit elsewhere.
    crate::model::loss::set_lm_head_slice_bytes(match kind {
        BackendKind::Cuda => crate::model::loss::LM_HEAD_SLICE_BYTES_CUDA,
        _ => crate::model::loss::LM_HEAD_SLICE_BYTES,
    });
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => {
            type B = burn::backend::Autodiff<burn::backend::Flex>;
            // On CPU backends the host is the device: draw dropout masks with the host hash.
            crate::model::dropout::use_host_masks::<B>();
            Ok(task.run::<B>(Default::default()))
        }
        #[cfg(feature = "ndarray")]
        BackendKind::NdArray => {
            type B = burn::backend::Autodiff<burn::backend::NdArray>;
            crate::model::dropout::use_host_masks::<B>();
            Ok(task.run::<B>(Default::default()))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
            #[cfg(feature = "fusion")]
            type B = burn::backend::Autodiff<burn_fusion::Fusion<Wgpu>>;
            #[cfg(not(feature = "fusion"))]
            type B = burn::backend::Autodiff<Wgpu>;
            let device = burn::backend::wgpu::WgpuDevice::default();
            static POOLS: std::sync::Once = std::sync::Once::new();
            POOLS.call_once(|| init_wgpu(&device));
            probe::<B>(kind, &device)?;
            Ok(task.run::<B>(device))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
            type B = burn::backend::Autodiff<Cuda>;
            let device = burn::backend::cuda::CudaDevice::default();
            // Read when the device's server starts (vendor/cubecl-cuda, PATCHED).
            cubecl::cuda::set_memory_configuration(memory_configuration());
            #[cfg(feature = "fusion")]
            if T::TRAINS {
                type Fused = burn::backend::Autodiff<burn_fusion::Fusion<Cuda>>;
                probe::<Fused>(kind, &device)?;
                return Ok(task.run::<Fused>(device));
            }
            probe::<B>(kind, &device)?;
            Ok(task.run::<B>(device))
        }
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NotCompiled(other)),
    }
}

/// The memory pools of the GPU backends. cubecl 0.10's default preset slices every allocation
/// above a quarter of its largest page out of pages of `max_page_size` (a quarter of the device's
/// memory on CUDA: an 80 GB H100 reserves 20 GB pages for every tensor over ~2.66 GB, and fails
/// when no 20 GB are left in one piece). Here allocations up to 32 MiB are sliced out of pages of
/// 8 to 128 MiB (under WebGPU's 128 MiB binding limit), and a larger one gets a page of its own,
/// sized to it, from the pool of its power-of-two size class (a pool's first page is at least half
/// its class, so one allocation never reserves more than twice its size); pages are reused by
/// later allocations that fit and returned to the device after 10,000 allocations unused.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn memory_configuration() -> cubecl::MemoryConfiguration {
    use cubecl_runtime::memory_management::{MemoryPoolOptions, PoolType};
    const MIB: u64 = 1 << 20;
    let sliced = |page_size, max_slice_size| MemoryPoolOptions {
        pool_type: PoolType::SlicedPages {
            page_size,
            max_slice_size,
        },
        dealloc_period: None,
    };
    let exclusive = |max_alloc_size, dealloc_period| MemoryPoolOptions {
        pool_type: PoolType::ExclusivePages { max_alloc_size },
        dealloc_period,
    };
    // Below the offset alignment (as cubecl's preset: such slices cannot be offset).
    let mut pool_options = vec![exclusive(0, None)];
    pool_options.extend([
        sliced(8 * MIB, MIB),
        sliced(32 * MIB, 8 * MIB),
        sliced(128 * MIB, 32 * MIB),
    ]);
    // Size classes of 64 MiB to 1 TiB.
    pool_options.extend((26..=40).map(|k| exclusive(1u64 << k, Some(10_000))));
    cubecl::MemoryConfiguration::Custom { pool_options }
}

/// Start wgpu's `device` with our memory pools ([`memory_configuration`]); once per device,
/// before its first use.
#[cfg(feature = "wgpu")]
pub fn init_wgpu(device: &burn::backend::wgpu::WgpuDevice) {
    use burn::backend::wgpu::{graphics::AutoGraphicsApi, init_setup, RuntimeOptions};
    let options = RuntimeOptions {
        memory_config: memory_configuration(),
        ..Default::default()
    };
    init_setup::<AutoGraphicsApi>(device, options);
}

/// Bytes the device's memory pool holds (cubecl's `bytes_reserved`: what the process has taken
/// from the GPU) on the GPU backends; `None` on the CPU backends, whose memory is the process's.
pub fn device_memory_reserved<B: Backend>(device: &B::Device) -> Option<u64> {
    #[allow(unused_variables)]
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        use cubecl::Runtime;
        let usage = cubecl::wgpu::WgpuRuntime::client(d).memory_usage().ok()?;
        return Some(usage.bytes_reserved);
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<burn::backend::cuda::CudaDevice>() {
        use cubecl::Runtime;
        let usage = cubecl::cuda::CudaRuntime::client(d).memory_usage().ok()?;
        return Some(usage.bytes_reserved);
    }
    None
}

/// GPU backends panic deep inside on first use when no device/driver exists: try one op first.
#[allow(dead_code)]
fn probe<B: AutodiffBackend>(kind: BackendKind, device: &B::Device) -> Result<(), BackendError> {
    use burn::tensor::Tensor;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Tensor::<B, 1>::ones([4], device);
        t.sum()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map(|v| v[0])
    }));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(4.0)) => Ok(()),
        Ok(other) => Err(BackendError::Unavailable {
            kind,
            message: format!("a test reduction returned {other:?}"),
        }),
        Err(panic) => Err(BackendError::Unavailable {
            kind,
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the backend panicked while starting".into()),
        }),
    }
}

/// The devices of a data-parallel run: `N` workers, a list of device indices, or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `N` workers: devices 0..N on a multi-device backend, N workers sharing the CPU device.
    Count(usize),
    /// These device indices (GPUs), one worker each.
    Indices(Vec<usize>),
    /// Every device the backend sees.
    All,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("--devices `{s}`: expected a count (2), device indices (0,1,2,3) or `all`");
        if s == "all" {
            return Ok(Self::All);
        }
        if !s.contains(',') {
            return match s.parse::<usize>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(n) => Ok(Self::Count(n)),
            };
        }
        let indices = s
            .split(',')
            .map(|i| i.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != indices.len() {
            return Err(format!("--devices `{s}` names a device twice"));
        }
        Ok(Self::Indices(indices))
    }
}

/// The worker devices of `spec` on backend `B`, whose default device is `default`. A backend
/// with several devices (CUDA) gets one worker per device; one with a single device (the CPU
/// backends, wgpu) gets `N` workers sharing it, which is how the data-parallel tests run on CPU.
pub fn worker_devices<B: Backend>(
    spec: &DeviceSpec,
    default: &B::Device,
) -> Result<Vec<B::Device>, String> {
    let id = default.to_id();
    let available = B::device_count(id.type_id).max(1);
    let on = |index: usize| {
        B::Device::from_id(DeviceId {
            type_id: id.type_id,
            index_id: index as u16,
        })
    };
    match spec {
        DeviceSpec::Count(n) if available == 1 => Ok(vec![default.clone(); *n]),
        DeviceSpec::Count(n) if *n <= available => Ok((0..*n).map(on).collect()),
        DeviceSpec::Count(n) => Err(format!(
            "--devices {n}: the backend sees {available} devices"
        )),
        DeviceSpec::All => Ok((0..available).map(on).collect()),
        DeviceSpec::Indices(list) => match list.iter().find(|&&i| i >= available) {
            Some(i) => Err(format!(
                "--devices: there is no device {i}; the backend sees {available} (0..{})",
                available - 1
            )),
            None => Ok(list.iter().map(|&i| on(i)).collect()),
        },
    }
}
