//! What a running job tells its caller: the memory plan once, before any work
//! ([`Observer::planned`]), then [`Progress`] after every evaluation; the caller answers with a
//! [`Control`] (go on, or stop and keep the best image so far).

use std::time::Duration;

use tch::Tensor;

use super::memory::Plan;
use super::objective::Losses;

/// Progress after each evaluation.
#[derive(Debug)]
pub struct Progress {
    /// Evaluations done so far in the job (all scales).
    pub evaluation: usize,
    /// The job's evaluation budget.
    pub max_evaluations: usize,
    pub losses: Losses,
    pub elapsed: Duration,
    /// The image just evaluated, `[1,3,H,W]` on the engine's device (values may leave `[0,1]`).
    pub image: Tensor,
}

/// What the observer wants after a progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Receives a job's reports. Any `FnMut(&Progress) -> Control` is an observer that ignores the
/// plan.
pub trait Observer {
    /// The job's memory plan at its output size, before the optimisation starts (a job refused
    /// for memory ends with an error instead and never reports a plan).
    fn planned(&mut self, _plan: &Plan) {}
    /// After every evaluation.
    fn progress(&mut self, progress: &Progress) -> Control;
}

impl<F: FnMut(&Progress) -> Control + ?Sized> Observer for F {
    fn progress(&mut self, progress: &Progress) -> Control {
        self(progress)
    }
}
