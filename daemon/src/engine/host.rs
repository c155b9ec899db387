//! Reading values from the device to the host. On a GPU each read waits for every queued
//! kernel (a device sync: about 33 µs on an H100, against ~0 on a CPU), so the optimisation loop
//! reads once per evaluation: the objective's terms and the optimiser's scalars together. Every
//! read of the loop goes through [`read`], which counts them per thread, so a test can hold the
//! loop to its budget of reads on any machine.

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// The values of `t` (any shape, any float kind, any device) as f64 on the host: one read.
pub fn read(t: &Tensor) -> Vec<f64> {
    READS.with(|r| r.set(r.get() + 1));
    let cpu = t.detach().to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]);
    Vec::<f64>::try_from(cpu).expect("a float tensor converts to f64")
}

/// Reads of this thread so far.
pub fn reads() -> u64 {
    READS.with(|r| r.get())
}
