//! Adam (Kingma & Ba) on a flat tensor, one evaluation per step.

use tch::Tensor;

use super::{evaluate_and_read, FnProblem, Outcome, Problem, Stop};

/// Adam's settings. The learning rate is in pixel units (the image lives in [0,1]).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 0.02, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Runs `max_evals` evaluations of `f` (value and gradient at x), Adam stepping between them.
pub fn minimize<E>(
    config: &AdamConfig,
    x0: &Tensor,
    max_evals: usize,
    f: impl FnMut(&Tensor) -> Result<(f64, Tensor), E>,
) -> Result<Outcome, E> {
    minimize_problem(config, x0, max_evals, &mut FnProblem::new(f))
}

/// Runs `max_evals` evaluations of `problem`; every evaluation but the last is followed by a
/// step, so the returned point is the last one evaluated. One host read per evaluation (its
/// terms), nothing else; 8 operators per step (each a kernel launch on a GPU).
pub fn minimize_problem<P: Problem>(
    config: &AdamConfig,
    x0: &Tensor,
    max_evals: usize,
    problem: &mut P,
) -> Result<Outcome, P::Stop> {
    let AdamConfig { lr, beta1, beta2, eps } = *config;
    let mut x = x0.detach().copy();
    let mut m = x.zeros_like();
    let mut v = x.zeros_like();
    let (terms, mut g, _) = evaluate_and_read(problem, &x, |_| Vec::new())?;
    let mut value = terms[0];
    let mut evals = 1;
    while evals < max_evals {
        let step = evals as i32;
        problem.iteration();
        // torch.optim.Adam's arithmetic: m ← lerp(m, g, 1 − β₁), v ← β₂ v + (1 − β₂) g²,
        // x ← x − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
        let _ = m.lerp_(&g, 1.0 - beta1);
        v *= beta2;
        let _ = v.addcmul_(&(&g * (1.0 - beta2)), &g);
        let step_size = lr / (1.0 - beta1.powi(step));
        let bias2_sqrt = (1.0 - beta2.powi(step)).sqrt();
        // the step's sign and size folded into the denominator: one addcdiv makes the new x
        // (a new tensor, not an update in place: the problem may keep the points it evaluated)
        let denominator = v.sqrt() * (-1.0 / (step_size * bias2_sqrt)) + (-eps / step_size);
        x = x.addcdiv(&m, &denominator);
        let (terms, grad, _) = evaluate_and_read(problem, &x, |_| Vec::new())?;
        (value, g) = (terms[0], grad);
        evals += 1;
    }
    Ok(Outcome {
        x,
        value,
        evaluations: evals,
        iterations: evals.saturating_sub(1),
        stop: Stop::Budget,
        failed_searches: 0,
    })
}
