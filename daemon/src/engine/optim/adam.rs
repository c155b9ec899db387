//! Adam (Kingma & Ba) on a flat tensor, one evaluation per step.

use tch::Tensor;

use super::{evaluate_and_read, Outcome, Problem, Stop};

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

/// Runs `max_evals` evaluations of `problem`; every evaluation but the last is followed by a
/// step, so the returned point is the last one evaluated. One host read per evaluation (its
/// terms), nothing else.
pub fn minimize_problem<P: Problem>(
    config: &AdamConfig,
    x0: &Tensor,
    max_evals: usize,
    problem: &mut P,
) -> Result<Outcome, P::Stop> {
    let mut x = x0.detach().copy();
    let mut m = x.zeros_like();
    let mut v = x.zeros_like();
    let (terms, mut g, _) = evaluate_and_read(problem, &x, |_| Vec::new())?;
    let mut value = terms[0];
    let mut evals = 1;
    while evals < max_evals {
        let step = evals as i32;
        problem.iteration();
        m = &m * config.beta1 + &g * (1.0 - config.beta1);
        v = &v * config.beta2 + g.square() * (1.0 - config.beta2);
        let m_hat = &m / (1.0 - config.beta1.powi(step));
        let v_hat = &v / (1.0 - config.beta2.powi(step));
        // a new tensor, not an update in place: the problem may keep the points it evaluated
        x = &x - m_hat / (v_hat.sqrt() + config.eps) * config.lr;
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
