//! Optimisers over a flat tensor. Both call `f(x) -> (value, gradient)` once per evaluation,
//! count evaluations against a budget, and stop at once when `f` returns an error (the caller's
//! reason to stop: cancelled, out of time, …).

pub mod adam;
pub mod lbfgs;

use tch::Tensor;

pub use adam::AdamConfig;
pub use lbfgs::LbfgsConfig;

/// Why a minimisation ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The evaluation budget is spent.
    Budget,
    /// The gradient (or the change in x or in the value) fell below tolerance.
    Converged,
}

/// Result of a minimisation.
pub struct Outcome {
    pub x: Tensor,
    pub value: f64,
    pub evaluations: usize,
    pub iterations: usize,
    pub stop: Stop,
}

/// An optimiser and its settings.
#[derive(Clone, Copy, Debug)]
pub enum Optimizer {
    Lbfgs(LbfgsConfig),
    Adam(AdamConfig),
}

impl Optimizer {
    /// Minimises `f` from `x0` with at most `max_evals` evaluations of `f`.
    pub fn minimize<E>(
        &self,
        x0: &Tensor,
        max_evals: usize,
        f: impl FnMut(&Tensor) -> Result<(f64, Tensor), E>,
    ) -> Result<Outcome, E> {
        match self {
            Optimizer::Lbfgs(c) => lbfgs::minimize(c, x0, max_evals, f),
            Optimizer::Adam(c) => adam::minimize(c, x0, max_evals, f),
        }
    }
}
