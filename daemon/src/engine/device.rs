//! Devices as users write them (`auto`, `cpu`, `cuda`, `cuda:N`) and as logs show them.

use std::sync::atomic::{AtomicBool, Ordering};

use tch::Device;

/// How the engine uses a CUDA device (ignored elsewhere). Defaults measured on an H100
/// (docs/benchmarks.md, "GPU").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// cuDNN benchmark mode: see [`set_cudnn_benchmark`].
    pub cudnn_benchmark: bool,
    /// Evaluate small scales through CUDA graphs ([`super::graph`]).
    pub graphs: bool,
    /// The L-BFGS history's products by kernels of our own ([`super::products`]).
    pub kernels: bool,
}

/// Whether cuDNN times every convolution algorithm the first time it meets a shape (benchmark
/// mode) instead of taking its heuristics' choice.
pub const CUDNN_BENCHMARK: bool = false;

/// Whether small scales are evaluated through CUDA graphs: on an H200 (2026-11-28) a replayed
/// evaluation took 0.23 / 0.35 / 0.77 of the eager one at 128 / 256 / 512 px, with the same value
/// and gradient, and the warm 512 px × 500 daemon job 1.16 s against 1.76 s.
pub const CUDA_GRAPHS: bool = true;

impl Default for CudaOptions {
    fn default() -> Self {
        Self { cudnn_benchmark: CUDNN_BENCHMARK, graphs: CUDA_GRAPHS, kernels: super::products::ENABLED }
    }
}

/// The benchmark mode the network's own convolution calls pass (they call libtorch's
/// `_convolution`, which takes the mode as an argument instead of reading the global switch).
static BENCHMARK: AtomicBool = AtomicBool::new(CUDNN_BENCHMARK);

/// Sets cuDNN's benchmark mode (process-wide; a no-op without CUDA): libtorch's switch, which
/// the convolutions' backward reads, and the forward calls' argument ([`cudnn_benchmark`]).
/// Benchmark mode can pick faster kernels, but every image size the process has not seen pays
/// the timing of every algorithm of every layer first.
pub fn set_cudnn_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
    tch::Cuda::cudnn_set_benchmark(on);
}

/// The benchmark mode set by [`set_cudnn_benchmark`].
pub fn cudnn_benchmark() -> bool {
    BENCHMARK.load(Ordering::Relaxed)
}

/// A device name as users write it.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda = |i: usize| {
        let n = tch::Cuda::device_count() as usize;
        if i < n {
            Ok(Device::Cuda(i))
        } else if n == 0 {
            Err(format!("device {s:?}: no CUDA device is visible (libtorch sees none); use --device cpu"))
        } else {
            Err(format!("device {s:?}: only {n} CUDA device(s) (0..{})", n - 1))
        }
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(format!("unknown device {s:?}; use auto, cpu, cuda or cuda:N")),
        },
    }
}
