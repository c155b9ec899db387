//! Values crossing between the device and the host. On a GPU each read waits for every queued
//! kernel (a device sync: about 33 µs on an H100, against ~0 on a CPU), so the optimisation loop
//! reads once per evaluation: the objective's terms and the optimiser's scalars together; and
//! what it sends (L-BFGS's coefficients, once per iteration) goes from pinned memory without
//! waiting for the device. Every read and upload of the loop goes through [`read`] and
//! [`upload`], which count them per thread, so a test can hold the loop to its budget on any
//! machine.

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
    static UPLOADS: Cell<u64> = const { Cell::new(0) };
}

/// The values of `t` (any shape, any float kind, any device) as f64 on the host: one read (one
/// copy; an f32 tensor is widened on the host).
pub fn read(t: &Tensor) -> Vec<f64> {
    READS.with(|r| r.set(r.get() + 1));
    let cpu = t.detach().to_device(Device::Cpu).reshape([-1]);
    if cpu.kind() == Kind::Float {
        let values = Vec::<f32>::try_from(cpu).expect("an f32 tensor converts to f32");
        return values.into_iter().map(f64::from).collect();
    }
    Vec::<f64>::try_from(cpu.to_kind(Kind::Double)).expect("a float tensor converts to f64")
}

/// `values` as an f32 tensor on `device`: on a GPU copied from pinned memory without waiting
/// for the device (libtorch's pinned-memory cache keeps the buffer until the copy is done).
pub fn upload(values: &[f32], device: Device) -> Tensor {
    UPLOADS.with(|u| u.set(u.get() + 1));
    let host = Tensor::from_slice(values);
    match device {
        Device::Cpu => host,
        // (should pinning fail, a plain copy: it waits for the device, but the values arrive)
        // (`_pin_memory`: `pin_memory` with a device, the only form tch binds, prints a
        // deprecation warning at every call)
        _ => host
            .f_internal_pin_memory(device)
            .and_then(|pinned| pinned.f_to_device_(device, Kind::Float, true, false))
            .unwrap_or_else(|_| host.to_device(device)),
    }
}

/// Uploads of this thread so far.
pub fn uploads() -> u64 {
    UPLOADS.with(|u| u.get())
}

/// Reads of this thread so far.
pub fn reads() -> u64 {
    READS.with(|r| r.get())
}
