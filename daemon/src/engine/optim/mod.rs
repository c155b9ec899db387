//! Optimisers over a flat tensor. A [`Problem`] evaluates on the device; the optimiser reads
//! each evaluation's values to the host once, together with its own scalars (see
//! [`super::host`]), tells the problem ([`Problem::evaluated`]), and stops at once when the
//! problem says so (cancelled, out of time, …). Budgets count evaluations.

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
    /// The gradient (or, with positive tolerances, the change in x or in the value) fell below
    /// tolerance. A line search that finds no decrease is not convergence: L-BFGS restarts.
    Converged,
}

/// Result of a minimisation.
pub struct Outcome {
    pub x: Tensor,
    pub value: f64,
    pub evaluations: usize,
    pub iterations: usize,
    pub stop: Stop,
    /// Line searches that found no decrease (each followed by a restart).
    pub failed_searches: usize,
}

/// What an optimiser minimises.
pub trait Problem {
    /// Why the problem stops the optimiser.
    type Stop;
    /// Value terms and gradient at `x`, left on the device (no host read): `terms` is 1-D,
    /// `terms[0]` the value minimised; the rest (e.g. the loss terms a progress report shows)
    /// are read with it, before the next evaluation (which may overwrite them: a replayed CUDA
    /// graph's output). The gradient stays valid.
    fn evaluate(&mut self, x: &Tensor) -> (Tensor, Tensor);
    /// The last evaluation's terms, read to the host. `Err` stops the optimiser at once.
    fn evaluated(&mut self, terms: &[f64]) -> Result<(), Self::Stop>;
    /// A line search found no lower value along its direction (L-BFGS restarts from steepest
    /// descent). A problem may make its values more precise from now on; it returns whether it
    /// did, and the optimiser then evaluates the current point again (its value and gradient
    /// from before are not comparable any more).
    fn search_failed(&mut self) -> bool {
        false
    }
    /// An iteration (a step and its line search) begins: counted by the problem too, because
    /// an `Err` from [`Problem::evaluated`] ends the run without an [`Outcome`].
    fn iteration(&mut self) {}
    /// Whether [`Problem::evaluate_step`] captures steps (as CUDA graphs): the optimiser then
    /// keeps every step's shapes the same (L-BFGS's products run over every slot of its
    /// history, not only the slots written so far), and a step's point may be one of its `uses`
    /// (overwritten by the next step): such a problem returns copies of the point and the
    /// gradient, as it must of a replayed graph's outputs anyway.
    fn captures_steps(&self) -> bool {
        false
    }
    /// Evaluates at the point `step` makes, and takes its extras from the gradient: returns
    /// the point (the caller may keep it), the evaluation's terms followed by the extras (1-D,
    /// read before the next evaluation) and the gradient (the caller may keep it). A problem may
    /// capture the whole step with its evaluation and replay it (see [`Step`]).
    fn evaluate_step(&mut self, step: &Step) -> (Tensor, Tensor, Tensor) {
        run_step(self, step)
    }
}

/// An evaluation at a point that an optimiser makes on the device, with values it takes from
/// the gradient: the work of one step around the network, which a problem may capture with the
/// evaluation as one CUDA graph (its launches then cost one). So `point` and `extras` read and
/// write only the tensors in `uses` (the optimiser updates them in place between steps) and
/// tensors they make; the steps of one `name` run the same operators over the same `uses`
/// every time.
pub struct Step<'a> {
    pub name: &'a str,
    pub uses: &'a [&'a Tensor],
    /// Those of `uses` the step updates from their own values (so that running it twice is not
    /// running it once): a problem that runs a step again (to check a capture) restores them.
    pub state: &'a [&'a Tensor],
    /// Makes the point (flat).
    pub point: &'a dyn Fn() -> Tensor,
    /// The values read with the terms (scalars or vectors, f32), from the point's gradient
    /// (flat).
    pub extras: &'a dyn Fn(&Tensor) -> Vec<Tensor>,
}

/// [`Problem::evaluate_step`] run eagerly: the point, [`Problem::evaluate`], the extras.
pub fn run_step<P: Problem + ?Sized>(problem: &mut P, step: &Step) -> (Tensor, Tensor, Tensor) {
    step_with(step, |x| problem.evaluate(x))
}

/// The work of `step` around `evaluate` (x → terms, gradient): the point, its terms joined with
/// the extras, its gradient.
pub fn step_with(step: &Step, evaluate: impl FnOnce(&Tensor) -> (Tensor, Tensor)) -> (Tensor, Tensor, Tensor) {
    let x = (step.point)();
    let (terms, g) = evaluate(&x);
    (x, joined(&terms, (step.extras)(&g)), g)
}

thread_local! {
    static STEP_OPERATORS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Operators (see [`super::ops`]) this thread ran inside [`Problem::evaluate_step`] so far: what
/// a problem that captures its steps launches as one graph. The rest of a loop's operators are
/// launched one by one.
pub fn step_operators() -> u64 {
    STEP_OPERATORS.with(|c| c.get())
}

/// A step's results as read: the point, its terms, its gradient and the step's extras.
struct Stepped {
    x: Tensor,
    terms: Vec<f64>,
    g: Tensor,
    extras: Vec<f64>,
}

/// One step through the problem, read to the host once (`n_extras` extras after the terms).
fn step_and_read<P: Problem>(problem: &mut P, step: &Step, n_extras: usize) -> Result<Stepped, P::Stop> {
    let before = super::ops::count();
    let (x, joined, g) = problem.evaluate_step(step);
    if let (Some(a), Some(b)) = (before, super::ops::count()) {
        STEP_OPERATORS.with(|c| c.set(c.get() + b - a));
    }
    let mut values = super::host::read(&joined);
    let extras = values.split_off(values.len() - n_extras);
    problem.evaluated(&values)?;
    Ok(Stepped { x, terms: values, g, extras })
}

/// A closure `x → (value, gradient)` whose value is already on the host, as a [`Problem`].
pub struct FnProblem<F, E> {
    f: F,
    stop: Option<E>,
}

impl<F, E> FnProblem<F, E> {
    pub fn new(f: F) -> Self {
        Self { f, stop: None }
    }
}

impl<F: FnMut(&Tensor) -> Result<(f64, Tensor), E>, E> Problem for FnProblem<F, E> {
    type Stop = E;

    fn evaluate(&mut self, x: &Tensor) -> (Tensor, Tensor) {
        let (value, grad) = match (self.f)(x) {
            Ok(r) => r,
            Err(e) => {
                self.stop = Some(e);
                (f64::NAN, x.zeros_like())
            }
        };
        (Tensor::from_slice(&[value]).to_device(x.device()), grad)
    }

    fn evaluated(&mut self, _terms: &[f64]) -> Result<(), E> {
        self.stop.take().map_or(Ok(()), Err)
    }
}

/// An optimiser and its settings.
#[derive(Clone, Copy, Debug)]
pub enum Optimizer {
    Lbfgs(LbfgsConfig),
    Adam(AdamConfig),
}

/// What an optimiser learnt of the objective's curvature, handed from one scale of a job to the
/// next: L-BFGS's history (Adam keeps none).
pub type Curvature = Option<lbfgs::History>;

impl Optimizer {
    /// Minimises `problem` from `x0` with at most `max_evals` evaluations, starting from what
    /// `curvature` holds (see [`lbfgs::minimize_with_history`]) and leaving the run's in it.
    pub fn minimize<P: Problem>(
        &self,
        x0: &Tensor,
        max_evals: usize,
        problem: &mut P,
        curvature: &mut Curvature,
    ) -> Result<Outcome, P::Stop> {
        match self {
            Optimizer::Lbfgs(c) => lbfgs::minimize_with_history(c, x0, max_evals, problem, curvature),
            Optimizer::Adam(c) => adam::minimize_problem(c, x0, max_evals, problem),
        }
    }
}

/// `terms` and `extras` as one 1-D tensor, in one operator (promoting to the widest kind; none
/// without extras).
fn joined(terms: &Tensor, extras: Vec<Tensor>) -> Tensor {
    let mut parts = vec![terms.reshape([-1])];
    parts.extend(extras.into_iter().map(|t| t.reshape([-1])));
    if parts.len() == 1 {
        parts.pop().expect("the terms")
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// One evaluation through the problem, read to the host once with `extra` values (scalars or
/// vectors) computed from the gradient: returns (terms, gradient, extras flattened).
fn evaluate_and_read<P: Problem>(
    problem: &mut P,
    x: &Tensor,
    extra: impl FnOnce(&Tensor) -> Vec<Tensor>,
) -> Result<(Vec<f64>, Tensor, Vec<f64>), P::Stop> {
    let (terms, grad) = problem.evaluate(x);
    let n_terms = terms.numel();
    let mut values = super::host::read(&joined(&terms, extra(&grad)));
    let extras = values.split_off(n_terms);
    problem.evaluated(&values)?;
    Ok((values, grad, extras))
}
