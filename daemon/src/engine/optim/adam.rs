//! Adam (Kingma & Ba) on a flat tensor, one evaluation per step.

use tch::Tensor;

use super::super::host;
use super::{evaluate_and_read, step_and_read, FnProblem, Outcome, Problem, Step, Stop};

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

/// Adam's state on the device: the point, its gradient and the two moments. A step reads one
/// state and writes the other (so it leaves the same when run twice, as a captured step must),
/// and the two swap roles after each step.
struct State {
    x: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
}

impl State {
    fn zeros(like: &Tensor) -> Self {
        Self { x: like.zeros_like(), g: like.zeros_like(), m: like.zeros_like(), v: like.zeros_like() }
    }
}

/// Runs `max_evals` evaluations of `problem`; every evaluation but the last is followed by a
/// step, so the returned point is the last one evaluated. One host read per evaluation (its
/// terms) and one upload (the step's two scalars); the step and the evaluation after it are
/// one [`Step`], which the problem may capture as one CUDA graph.
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
    let mut states = [State::zeros(&x), State::zeros(&x)];
    states[0].x.copy_(&x);
    states[0].g.copy_(&g);
    // the step's scalars: its denominator's scale and offset
    let scalars = Tensor::zeros([2], (tch::Kind::Float, x.device()));
    let mut evals = 1;
    while evals < max_evals {
        let step = evals as i32;
        problem.iteration();
        // torch.optim.Adam's arithmetic: m ← lerp(m, g, 1 − β₁), v ← β₂ v + (1 − β₂) g²,
        // x ← x − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε), the step's sign and size
        // folded into the denominator (one addcdiv makes the new x)
        let step_size = lr / (1.0 - beta1.powi(step));
        let bias2_sqrt = (1.0 - beta2.powi(step)).sqrt();
        host::upload_into(&scalars, &[(-1.0 / (step_size * bias2_sqrt)) as f32, (-eps / step_size) as f32]);
        let (now, next) = (&states[(evals - 1) % 2], &states[evals % 2]);
        let point = || {
            let _ = now.m.lerp_scalar_out(&next.m, &now.g, 1.0 - beta1);
            let _ = now.v.mul_scalar_out(&next.v, beta2);
            let _ = next.v.shallow_clone().addcmul_(&(&now.g * (1.0 - beta2)), &now.g);
            let denominator = next.v.sqrt() * scalars.narrow(0, 0, 1) + scalars.narrow(0, 1, 1);
            // a new tensor (the problem may keep the points it evaluated), and the next state's
            let x = now.x.addcdiv(&next.m, &denominator);
            next.x.shallow_clone().copy_(&x);
            x
        };
        let extras = |g: &Tensor| {
            next.g.shallow_clone().copy_(g);
            Tensor::empty([0], (tch::Kind::Float, g.device()))
        };
        let uses = [&now.x, &now.g, &now.m, &now.v, &next.x, &next.g, &next.m, &next.v, &scalars];
        let name = if evals % 2 == 0 { "adam step (even)" } else { "adam step (odd)" };
        let stepped = step_and_read(problem, &Step { name, uses: &uses, point: &point, extras: &extras }, 0)?;
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
