//! Products of a few hundred rows with a few columns over a long dimension on a CUDA device
//! (`[r, n]` × `[k, n]`ᵀ, k ≤ 4): the L-BFGS history's rows times a trial's s, y and g, the
//! largest read of the loop around the network (0.6 GB at 512 px with 100 pairs). cuBLAS reads
//! those rows at half the memory's speed on an H200 (docs/benchmarks.md, "GPU"); two kernels
//! of our own (cpp/cuda_driver.cpp, compiled at run time with NVRTC from libtorch's CUDA wheels)
//! read them once at full speed, and sum the blocks' partial products in double in a fixed
//! order.
//!
//! The kernels are loaded per device on first use outside a graph capture ([`load`]) and
//! checked there against libtorch's product; where they cannot be loaded, or disagree, or
//! [`set_enabled`] turned them off, [`products`] answers `None` and the caller takes libtorch's
//! way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

/// Whether [`products`] uses the kernels (where they load): see [`set_enabled`].
pub const ENABLED: bool = true;

static ON: AtomicBool = AtomicBool::new(ENABLED);

/// Per device index: whether the kernels loaded and passed their check (the error otherwise).
static LOADED: Mutex<Option<HashMap<usize, Result<(), String>>>> = Mutex::new(None);

/// Turns the kernels on or off for the process (off: libtorch's products everywhere).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether the kernels are turned on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

#[cfg(cuda_driver)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    extern "C" {
        pub fn ns_products_load(device: c_int) -> *const c_char;
        pub fn ns_products_compile(major: c_int, minor: c_int, bytes: *mut usize) -> *const c_char;
        pub fn ns_products(held: *const c_void, cols: *const c_void, out: *const c_void) -> *const c_char;
    }
}

/// The shim's error message, where `message` is not null.
#[cfg(cuda_driver)]
fn result(message: *const std::ffi::c_char) -> Result<(), String> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated message owned by the shim's thread
    let text = unsafe { std::ffi::CStr::from_ptr(message) };
    Err(text.to_string_lossy().lines().next().unwrap_or_default().to_string())
}

/// `out` ([r, k]) = `held` ([r, n]) × `cols` ([k, n])ᵀ by the kernels, on the current stream.
#[cfg(cuda_driver)]
fn launch(held: &Tensor, cols: &Tensor, out: &Tensor) -> Result<(), String> {
    use std::ffi::c_void;
    // SAFETY: the pointers are live tensors for the duration of the call; the shim checks
    // their devices, kinds and shapes
    result(unsafe {
        ffi::ns_products(held.as_ptr() as *const c_void, cols.as_ptr() as *const c_void, out.as_ptr() as *const c_void)
    })
}

#[cfg(not(cuda_driver))]
fn launch(_held: &Tensor, _cols: &Tensor, _out: &Tensor) -> Result<(), String> {
    Err("this build has no CUDA kernels of its own (libtorch without CUDA, or no CUDA headers at build time)".into())
}

/// Compiles the kernels for compute capability `major.minor` with NVRTC (no device needed):
/// the size of the machine code.
pub fn compile(major: i32, minor: i32) -> Result<usize, String> {
    #[cfg(cuda_driver)]
    {
        let mut bytes = 0usize;
        // SAFETY: plain C call writing one usize
        result(unsafe { ffi::ns_products_compile(major, minor, &mut bytes) })?;
        Ok(bytes)
    }
    #[cfg(not(cuda_driver))]
    {
        let _ = (major, minor);
        Err("this build has no CUDA driver shim".into())
    }
}

/// Compiles and loads the kernels for `device`, and checks them against libtorch's product on
/// random rows (shapes with a ragged last chunk and block): must run outside a graph capture.
/// Remembered per device; a failure is returned again without a second try.
pub fn load(device: Device) -> Result<(), String> {
    let Device::Cuda(index) = device else { return Err("not a CUDA device".into()) };
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let map = loaded.get_or_insert_with(HashMap::new);
    if let Some(r) = map.get(&index) {
        return r.clone();
    }
    let r = load_and_check(device);
    match &r {
        Ok(()) => tracing::debug!(device = index, "history products: CUDA kernels loaded"),
        Err(e) => tracing::warn!(
            device = index,
            "history products: the CUDA kernels are not used ({e}); cuBLAS computes them"
        ),
    }
    map.insert(index, r.clone());
    r
}

fn load_and_check(device: Device) -> Result<(), String> {
    #[cfg(cuda_driver)]
    {
        let Device::Cuda(index) = device else { unreachable!() };
        // SAFETY: plain C call
        result(unsafe { ffi::ns_products_load(index as std::ffi::c_int) })?;
    }
    // a ragged chunk and block (scalar loads), then whole ones (16-byte loads)
    for (rows, k, n) in [(37, 3, 5003), (202, 1, 70_001), (70, 3, 8192), (6, 4, 1000)] {
        let held = Tensor::randn([rows, n], (Kind::Float, device));
        let cols = Tensor::randn([k, n], (Kind::Float, device));
        let out = Tensor::empty([rows, k], (Kind::Float, device));
        launch(&held, &cols, &out)?;
        let exact = held.to_kind(Kind::Double).matmul(&cols.to_kind(Kind::Double).transpose(0, 1));
        let scale = exact.abs().max().double_value(&[]).max(1e-30);
        let err = (out.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]) / scale;
        if err.is_nan() || err > 1e-5 {
            return Err(format!(
                "they disagree with libtorch's product ([{rows}, {n}] × [{n}, {k}]: relative error {err:.1e})"
            ));
        }
    }
    Ok(())
}

/// `held` ([r, n], rows contiguous, f32) times `cols` ([k, n], rows contiguous, f32, k ≤ 4)
/// transposed, as `[r, k]` f32, by the kernels: `None` where they are off, not loaded for the
/// device (see [`load`]: this does not load them, so it is safe inside a graph capture), or
/// the operands are not theirs.
pub fn products(held: &Tensor, cols: &Tensor) -> Option<Tensor> {
    let device = held.device();
    let Device::Cuda(index) = device else { return None };
    if !enabled() || held.kind() != Kind::Float || cols.kind() != Kind::Float || cols.size()[0] > 4 {
        return None;
    }
    if held.stride()[1] != 1 || cols.stride()[1] != 1 {
        return None;
    }
    let ready = LOADED.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(&index).cloned());
    if !matches!(ready, Some(Ok(()))) {
        return None;
    }
    let out = Tensor::empty([held.size()[0], cols.size()[0]], (Kind::Float, device));
    match launch(held, cols, &out) {
        Ok(()) => Some(out),
        Err(e) => panic!("the history's products failed on the device: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// The kernels' source compiles (on any machine: NVRTC needs no device) for the GPUs the
    /// daemon targets: Hopper (H100, H200), Ampere (A100), Ada (L4) and Blackwell.
    #[cfg(cuda_driver)]
    #[test]
    fn the_kernels_compile_for_the_targeted_gpus() {
        for (major, minor) in [(9, 0), (8, 0), (8, 9), (10, 0)] {
            match super::compile(major, minor) {
                Ok(bytes) => assert!(bytes > 1000, "sm_{major}{minor}: {bytes} bytes of machine code"),
                Err(e) => panic!("sm_{major}{minor}: {e}"),
            }
        }
    }
}
