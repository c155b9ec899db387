//! Adam (Kingma & Ba) on a flat tensor, one evaluation per step.

use tch::Tensor;

use super::super::host;
use super::{evaluate_and_read, step_and_read, FnProblem, Outcome, Problem, Step, Stop};

/// Adam's settings. The learning rate is in pixel units (the image lives in `[0,1]`).
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
/// terms) and one upload (the step's two scalars); the step and the evaluation after it are
/// one [`Step`] over the state (x, g, m, v) on the device, which the problem may capture as
/// one CUDA graph.
pub fn minimize_problem<P: Problem>(
    config: &AdamConfig,
    x0: &Tensor,
    max_evals: usize,
    problem: &mut P,
) -> Result<Outcome, P::Stop> {
    let AdamConfig { lr, beta1, beta2, eps } = *config;
    let mut x = x0.detach().copy();
    let (terms, g, _) = evaluate_and_read(problem, &x, |_| Vec::new())?;
    let mut value = terms[0];
    // the state the step updates in place: the last point and its gradient, the moments
    let state = [x.copy(), g, x.zeros_like(), x.zeros_like()];
    let [last, grad, m, v] = &state;
    // the step's scalars: its denominator's scale and offset
    let scalars = Tensor::zeros([2], (tch::Kind::Float, x.device()));
    let mut evals = 1;
    while evals < max_evals {
        let step = evals as i32;
        problem.iteration();
        let step_size = lr / (1.0 - beta1.powi(step));
        let bias2_sqrt = (1.0 - beta2.powi(step)).sqrt();
        host::upload_into(&scalars, &[(-1.0 / (step_size * bias2_sqrt)) as f32, (-eps / step_size) as f32]);
        // torch.optim.Adam's arithmetic: m ← lerp(m, g, 1 − β₁), v ← β₂ v + (1 − β₂) g²,
        // x ← x − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε), the step's sign and size
        // folded into the denominator (one addcdiv makes the new x)
        let point = || {
            let _ = m.shallow_clone().lerp_(grad, 1.0 - beta1);
            let _ = v.shallow_clone().g_mul_scalar_(beta2);
            let _ = v.shallow_clone().addcmul_(&(grad * (1.0 - beta2)), grad);
            let denominator = v.sqrt() * scalars.narrow(0, 0, 1) + scalars.narrow(0, 1, 1);
            // a new tensor (the problem may keep the points it evaluated), and the state's
            let x = last.addcdiv(m, &denominator);
            last.shallow_clone().copy_(&x);
            x
        };
        let extras = |g: &Tensor| {
            grad.shallow_clone().copy_(g);
            Vec::new()
        };
        let uses = [last, grad, m, v, &scalars];
        let step = Step { name: "adam step", uses: &uses, state: &uses[..4], point: &point, extras: &extras };
        let stepped = step_and_read(problem, &step, 0)?;
        (x, value) = (stepped.x, stepped.terms[0]);
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
