//! Counting the libtorch operators a thread runs (cpp/op_counter.cpp): the innermost operator
//! calls, less those that only make views or empty tensors. On a GPU each is a kernel launch or
//! a copy, a few microseconds of CPU whatever its size, so a count per evaluation shows on any
//! machine what a GPU will pay for launches (the optimisation loop's own operators, say).
//! Counting slows every operator a little: benches and tests turn it on, jobs never do.
//! Backward operators that libtorch runs on its own threads (CUDA) are not counted; on the CPU
//! they run on the caller's thread and are.

#[cfg(op_counter)]
extern "C" {
    fn ns_ops_enable();
    fn ns_ops_count() -> u64;
}

/// Starts counting (every thread, from now on); false where this build has no counter.
pub fn enable() -> bool {
    #[cfg(op_counter)]
    // SAFETY: registers a callback once; no arguments
    unsafe {
        ns_ops_enable()
    };
    cfg!(op_counter)
}

/// Operators this thread ran since [`enable`] (None where this build has no counter).
pub fn count() -> Option<u64> {
    #[cfg(op_counter)]
    // SAFETY: reads a thread-local counter
    return Some(unsafe { ns_ops_count() });
    #[cfg(not(op_counter))]
    None
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn counts_operators_that_do_work_not_views() {
        assert!(enable(), "this build has the operator counter");
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let before = count().unwrap();
        let b = &a * 2.0 + 1.0; // two kernels
        let _views = (b.view([16]), b.transpose(0, 1), b.narrow(0, 1, 2));
        let after_math = count().unwrap();
        assert_eq!(after_math - before, 2, "mul and add, the views are free");
        let _ = b.matmul(&a); // one matrix product
        assert_eq!(count().unwrap() - after_math, 1);
    }
}
