//! Values crossing between the device and the host. On a GPU each read waits for every queued
//! kernel (a device sync: about 33 µs on an H100, against ~0 on a CPU), so the optimisation loop
//! reads once per evaluation: the objective's terms and the optimiser's scalars together; and
//! what it sends (a step's scalars, and L-BFGS's coefficients once per line) goes from pinned
//! memory without waiting for the device, into a buffer that stays where it is (a captured step
//! reads it by address). Every read and upload of the loop goes through [`read`], [`upload`] and
//! [`upload_into`], which count them per thread, so a test can hold the loop to its budget on
//! any machine.

use std::cell::Cell;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
    static UPLOADS: Cell<u64> = const { Cell::new(0) };
    static READ_END: Cell<Option<Instant>> = const { Cell::new(None) };
    static HOST_GAP: Cell<f64> = const { Cell::new(0.0) };
}

/// The values of `t` (any shape, any float kind, any device) as f64 on the host: one read (one
/// copy; an f32 tensor is widened on the host).
pub fn read(t: &Tensor) -> Vec<f64> {
    READS.with(|r| r.set(r.get() + 1));
    let cpu = t.detach().to_device(Device::Cpu).reshape([-1]);
    if cpu.kind() == Kind::Float {
        let values = Vec::<f32>::try_from(cpu).expect("an f32 tensor converts to f32");
        READ_END.with(|r| r.set(Some(Instant::now())));
        return values.into_iter().map(f64::from).collect();
    }
    let values = Vec::<f64>::try_from(cpu.to_kind(Kind::Double)).expect("a float tensor converts to f64");
    READ_END.with(|r| r.set(Some(Instant::now())));
    values
}

/// Called where the device gets its next work after a read (a CUDA graph's replay): adds the
/// time since the read's end to this thread's host gap ([`host_gap`]). The device has nothing to
/// do over that time unless work was queued before the read.
pub fn device_resumes() {
    if let Some(t) = READ_END.with(|r| r.take()) {
        HOST_GAP.with(|g| g.set(g.get() + t.elapsed().as_secs_f64()));
    }
}

/// Seconds this thread spent between a read and the next replay so far (see
/// [`device_resumes`]): the host's share of a captured loop, while the GPU waits.
pub fn host_gap() -> f64 {
    HOST_GAP.with(|g| g.get())
}

/// `values` as an f32 tensor on `device`: on a GPU copied from pinned memory without waiting
/// for the device. The pinned buffer is this thread's, filled again only when a read has come
/// between (a read waits for every copy queued before it, the last one from this buffer
/// included); two uploads with no read between take a new buffer (libtorch's pinned-memory
/// cache keeps the old one until its copy is done). So an upload is one operator, not four.
pub fn upload(values: &[f32], device: Device) -> Tensor {
    UPLOADS.with(|u| u.set(u.get() + 1));
    if device == Device::Cpu {
        return Tensor::from_slice(values);
    }
    // (should pinning fail, a plain copy: it waits for the device, but the values arrive)
    STAGING
        .with(|staging| staged(&mut staging.borrow_mut(), values, device))
        .and_then(|pinned| pinned.narrow(0, 0, values.len() as i64).f_to_device_(device, Kind::Float, true, false))
        .unwrap_or_else(|_| Tensor::from_slice(values).to_device(device))
}

/// Writes `values` into the first elements of `dst` (a contiguous 1-D f32 tensor, on any
/// device), as [`upload`] sends them, without a wait for the device: on a GPU the CUDA driver's
/// copy from the pinned buffer (no libtorch operator: its copy costs 10–30 µs of host time per
/// call on the GPU machine measured), else one operator.
pub fn upload_into(dst: &Tensor, values: &[f32]) {
    UPLOADS.with(|u| u.set(u.get() + 1));
    assert!(
        dst.dim() == 1 && dst.kind() == Kind::Float && values.len() <= dst.numel(),
        "an f32 vector that holds the values"
    );
    let device = dst.device();
    let src = match device {
        Device::Cpu => Ok(Tensor::from_slice(values)),
        _ => STAGING.with(|staging| staged(&mut staging.borrow_mut(), values, device)),
    };
    let len = values.len() as i64;
    // on CUDA the driver's copy from the pinned buffer (no operator at all), else libtorch's
    // copy without a wait; should both fail, a plain copy (it waits, but the values arrive)
    let queued = src.is_ok_and(|src| {
        (device.is_cuda() && dst.is_contiguous() && copy_to_device(dst, &src, values.len()))
            || copy_nonblocking(
                &dst.narrow(0, 0, len),
                &if src.numel() == values.len() { src } else { src.narrow(0, 0, len) },
            )
    });
    if !queued {
        dst.narrow(0, 0, len).copy_(&Tensor::from_slice(values).to_device(device));
    }
}

/// Queues the copy of the first `len` f32 of `src` (pinned host memory) into `dst` (contiguous,
/// on a CUDA device) through the CUDA driver (cpp/cuda_driver.cpp); false where it failed or this
/// build has no shim.
#[cfg(cuda_driver)]
fn copy_to_device(dst: &Tensor, src: &Tensor, len: usize) -> bool {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        fn ns_copy_to_device(dst: *mut c_void, src: *const c_void, bytes: usize, device: c_int) -> *const c_char;
    }
    let Device::Cuda(index) = dst.device() else { return false };
    // SAFETY: `dst` holds at least `len` f32 on the device, `src` at least `len` on the host,
    // pinned and owned by this thread until a read has waited for the copy (see `staged`)
    unsafe { ns_copy_to_device(dst.data_ptr(), src.data_ptr(), len * 4, index as c_int).is_null() }
}

#[cfg(not(cuda_driver))]
fn copy_to_device(_dst: &Tensor, _src: &Tensor, _len: usize) -> bool {
    false
}

/// `dst.copy_(src, non_blocking = true)` (cpp/copy.cpp); false where it failed or this build
/// has no shim.
#[cfg(copy_shim)]
fn copy_nonblocking(dst: &Tensor, src: &Tensor) -> bool {
    use std::ffi::{c_char, c_void};
    extern "C" {
        fn ns_copy_nonblocking(dst: *const c_void, src: *const c_void) -> *const c_char;
    }
    // SAFETY: both are live at::Tensor handles for the whole call (copy_ writes the elements,
    // not the handle); the shim catches every C++ exception (its message is not needed here:
    // the caller copies plainly)
    unsafe { ns_copy_nonblocking(dst.as_ptr() as *const c_void, src.as_ptr() as *const c_void).is_null() }
}

#[cfg(not(copy_shim))]
fn copy_nonblocking(_dst: &Tensor, _src: &Tensor) -> bool {
    false
}

/// A pinned host buffer for uploads to `device`, and the reads count when it was last filled.
struct Staging {
    buffer: Tensor,
    device: Device,
    filled_at: u64,
}

thread_local! {
    static STAGING: std::cell::RefCell<Option<Staging>> = const { std::cell::RefCell::new(None) };
}

/// `values` at the start of this thread's pinned buffer for `device` (the whole buffer).
fn staged(staging: &mut Option<Staging>, values: &[f32], device: Device) -> Result<Tensor, tch::TchError> {
    let now = reads();
    let reusable = |s: &Staging| s.device == device && s.buffer.numel() >= values.len() && s.filled_at < now;
    if !staging.as_ref().is_some_and(reusable) {
        // (`_pin_memory`: `pin_memory` with a device, the only form tch binds, prints a
        // deprecation warning at every call)
        let buffer =
            Tensor::empty([values.len().max(256) as i64], (Kind::Float, Device::Cpu)).f_internal_pin_memory(device)?;
        *staging = Some(Staging { buffer, device, filled_at: now });
    }
    let s = staging.as_mut().expect("set above");
    // SAFETY: `buffer` is a contiguous f32 host tensor of at least `values.len()` elements,
    // owned by this thread, and no copy from it is in flight (a read has come since the last)
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), s.buffer.data_ptr() as *mut f32, values.len()) };
    s.filled_at = now;
    Ok(s.buffer.shallow_clone())
}

/// Uploads of this thread so far.
pub fn uploads() -> u64 {
    UPLOADS.with(|u| u.get())
}

/// Reads of this thread so far.
pub fn reads() -> u64 {
    READS.with(|r| r.get())
}
