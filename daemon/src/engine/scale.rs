//! One scale of a job: the optimiser run at one size, each evaluation reported to the observer,
//! and the reasons a scale (or the whole job) stops early as a [`StopReason`].

use std::time::Instant;

use tch::Tensor;

use super::events::{Control, Observer, Progress};
use super::graph::{Slot, Steps};
use super::memory::release_freed;
use super::objective::{Losses, Objective};
use super::optim::{run_step, step_with, Curvature, Optimizer, Problem, Step, Stop};
use super::params::Params;
use super::schedule::{deadline, stalled, CARRIED_GRADIENT_SCALE};
use super::tiling::{self, Tiling};
use super::vgg::Vgg19;

/// Why a scale stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Its evaluation budget is spent.
    Budget,
    /// The optimiser found nothing left to do.
    Converged,
    /// The observer asked to stop (Ctrl-C, cancel): the job ends.
    Cancelled,
    /// The job's time budget is spent: the job ends.
    OutOfTime,
    /// This scale's share of the time budget is spent: the next scale starts.
    Deadline,
    /// A coarse scale no longer improves: the next scale starts with its budget.
    Stalled,
}

impl StopReason {
    /// Whether the whole job ends here (no later scale runs).
    pub fn ends_job(self) -> bool {
        matches!(self, StopReason::Cancelled | StopReason::OutOfTime)
    }
}

/// What the scales of one job share: the clock, the evaluation count and the observer.
pub struct JobRun<'o> {
    start: Instant,
    max_seconds: Option<f64>,
    pub max_evaluations: usize,
    /// Evaluations so far, all scales.
    pub evaluations: usize,
    /// Optimiser iterations so far, all scales.
    pub iterations: usize,
    /// Line searches that found no decrease, all scales (each followed by a restart).
    pub failed_searches: usize,
    observer: &'o mut dyn Observer,
}

impl<'o> JobRun<'o> {
    pub fn new(p: &Params, observer: &'o mut dyn Observer) -> Self {
        Self {
            start: Instant::now(),
            max_seconds: p.max_seconds,
            max_evaluations: p.evaluations,
            evaluations: 0,
            iterations: 0,
            failed_searches: 0,
            observer,
        }
    }

    /// Seconds since the job started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether the job's evaluation budget is spent.
    pub fn budget_spent(&self) -> bool {
        self.evaluations >= self.max_evaluations
    }
}

/// The precision refinement: from an evaluation count or a time on, the scale evaluates on the
/// f32 network (close to a minimum, reduced-precision values and gradients are too coarse for
/// the line search: it needs more evaluations per step and ends a few percent higher).
pub struct Refinement<'a> {
    pub net: &'a Vgg19,
    pub objective: &'a Objective,
    pub from_evaluation: usize,
    pub from_second: Option<f64>,
}

/// A coarser scale's `curvature` (its L-BFGS history, images of shape `from`) carried to a
/// scale of shape `to` for an optimiser that keeps `m` pairs (bf16 storage when `bf16`): see
/// [`CARRIED_GRADIENT_SCALE`].
pub fn carry(curvature: Curvature, from: &[i64], to: &[i64], (m, bf16): (usize, bool)) -> Curvature {
    let (h, w) = (to[2], to[3]);
    let up = |v: &Tensor| v.view(from).upsample_bilinear2d([h, w], false, None, None).view([-1]);
    curvature.map(|history| history.mapped((m, to.iter().product(), bf16), up, CARRIED_GRADIENT_SCALE))
}

/// One scale's run.
pub struct ScaleRun<'a> {
    pub net: &'a Vgg19,
    pub objective: &'a Objective,
    pub refinement: Option<Refinement<'a>>,
    pub tiling: Option<Tiling>,
    /// Hand freed memory back after every evaluation (see `memory::Plan::tight`).
    pub tight: bool,
    /// A coarse scale (it may stop when it stalls).
    pub coarse: bool,
    /// Evaluate through CUDA graphs (untiled CUDA scales up to [`super::graph::MAX_PIXELS`]).
    pub graphs: bool,
    /// Evaluations this scale may use.
    pub budget: usize,
    /// The share of the job's remaining time (after this scale's first evaluation) this scale may
    /// use before it hands on (`schedule::time_share`; 1 at the output size).
    pub time_share: f64,
    pub optimizer: Optimizer,
}

/// The best point evaluated: what an interrupted scale hands on (a line search's last trial
/// point can be worse than where it started), and the best value after each evaluation. The
/// optimisers never change a point they evaluated, so keeping it costs no copy.
#[derive(Default)]
struct Best {
    value: f64,
    x: Option<Tensor>,
    trace: Vec<f64>,
}

impl Best {
    fn offer(&mut self, value: f64, x: &Tensor) {
        if self.x.is_none() || value < self.value {
            self.value = value;
            self.x = Some(x.shallow_clone());
        }
        self.trace.push(self.value);
    }
}

/// A scale's objective as the optimiser sees it: evaluations on the device, then per read
/// evaluation the bookkeeping (best point, progress, stop).
struct Evaluations<'s, 'j, 'o> {
    scale: &'s ScaleRun<'s>,
    job: &'j mut JobRun<'o>,
    shape: Vec<i64>,
    best: Best,
    /// The point being evaluated (flat).
    current: Option<Tensor>,
    /// A line search failed: evaluate on the f32 network from now on (when there is one).
    precise: bool,
    /// CUDA graphs of the working and the f32 network's evaluation, and of the optimiser's
    /// steps with them.
    graphs: [Slot; 2],
    steps: [Steps; 2],
    /// Whether the working and the f32 network have evaluated this scale's objective (its lazy
    /// set-up is done: a step may be captured without a warm-up run, see [`Steps::run`]).
    warm: [bool; 2],
    /// The job's evaluation count and clock after this scale's first evaluation (which pays for
    /// first-call work: cuDNN autotuning, oneDNN primitives, graph capture).
    first: Option<(usize, f64)>,
}

impl Problem for Evaluations<'_, '_, '_> {
    type Stop = StopReason;

    fn evaluate(&mut self, flat: &Tensor) -> (Tensor, Tensor) {
        let x = flat.view(self.shape.as_slice());
        let (net, objective, refined) = self.scale.network(self.job, self.precise);
        let (terms, grad) = match self.scale.tiling {
            None if self.scale.graphs => {
                if refined {
                    // the working network's graph is done with: free its memory
                    self.graphs[0] = Slot::Eager;
                }
                self.graphs[usize::from(refined)].evaluate(&x, &|x| objective.evaluate_terms(net, x))
            }
            None => objective.evaluate_terms(net, &x),
            Some(t) => objective.evaluate_tiled_terms(net, &x, t, tiling::shift(t, self.job.evaluations)),
        };
        self.current = Some(flat.shallow_clone());
        self.warm[usize::from(refined)] = true;
        (terms, grad.view([-1]))
    }

    fn captures_steps(&self) -> bool {
        self.scale.graphs && self.scale.tiling.is_none()
    }

    fn evaluate_step(&mut self, step: &Step) -> (Tensor, Tensor, Tensor) {
        if !self.captures_steps() {
            return run_step(self, step);
        }
        let (net, objective, refined) = self.scale.network(self.job, self.precise);
        if refined {
            // the working network's graphs are done with: free their memory
            self.graphs[0] = Slot::Eager;
            self.steps[0] = Steps::default();
        }
        let shape = self.shape.as_slice();
        let run = || {
            let (x, joined, g) = step_with(step, |x| {
                let (terms, g) = objective.evaluate_terms(net, &x.view(shape));
                (terms, g.view([-1]))
            });
            vec![x, joined, g]
        };
        let i = usize::from(refined);
        let network = (&net.layout() as &dyn std::fmt::Debug, self.warm[i]);
        let [x, joined, g]: [Tensor; 3] = self.steps[i]
            .run(step.name, (step.uses, step.state), net.device(), network, &run)
            .try_into()
            .expect("three outputs");
        self.warm[i] = true;
        // the point and the gradient outlive the next step; the joined values are read at once
        let (x, g) = (x.copy(), g.copy());
        self.current = Some(x.shallow_clone());
        (x, joined, g)
    }

    fn evaluated(&mut self, terms: &[f64]) -> Result<(), StopReason> {
        let losses = Losses::from_terms(terms);
        let job = &mut *self.job;
        job.evaluations += 1;
        if self.scale.tight {
            release_freed();
        }
        let x = self.current.take().expect("evaluated after evaluate");
        let progress = Progress {
            evaluation: job.evaluations,
            max_evaluations: job.max_evaluations,
            losses,
            elapsed: job.start.elapsed(),
            image: x.view(self.shape.as_slice()),
        };
        self.best.offer(losses.total, &x);
        let (_, first) = *self.first.get_or_insert((job.evaluations, progress.elapsed.as_secs_f64()));
        // this scale's clock starts after its first evaluation
        let deadline = deadline(job.max_seconds, first, self.scale.time_share);
        let control = job.observer.progress(&progress);
        self.scale.go_on(control, (job.elapsed(), deadline), job.max_seconds, &self.best.trace)
    }

    fn iteration(&mut self) {
        self.job.iterations += 1;
    }

    fn search_failed(&mut self) -> bool {
        self.job.failed_searches += 1;
        // on a reduced-precision network, the likely cause is the values' rounding: go on with
        // the f32 network (the refinement's) from here
        let switch = !self.precise && self.scale.refinement.is_some();
        self.precise |= switch;
        tracing::trace!(evaluations = self.job.evaluations, switch, "line search failed");
        switch
    }
}

impl ScaleRun<'_> {
    /// Optimises from `x0` (`[1,3,h,w]`) and what `curvature` holds (a coarser scale's, carried);
    /// returns the scale's image, why it stopped and its pace (evaluations after the first, and
    /// their seconds), and leaves this scale's curvature in `curvature`.
    pub fn run(&self, x0: &Tensor, job: &mut JobRun, curvature: &mut Curvature) -> (Tensor, StopReason, (usize, f64)) {
        let shape = x0.size();
        let mut problem = Evaluations {
            scale: self,
            job,
            shape: shape.clone(),
            best: Best::default(),
            current: None,
            precise: false,
            graphs: Default::default(),
            steps: Default::default(),
            warm: [false; 2],
            first: None,
        };
        let outcome = self.optimizer.minimize(&x0.view([-1]), self.budget, &mut problem, curvature);
        let pace = problem.first.map_or((0, 0.0), |(n, t)| (problem.job.evaluations - n, problem.job.elapsed() - t));
        let (x, stop) = match outcome {
            Ok(o) => {
                let stop = if o.stop == Stop::Converged { StopReason::Converged } else { StopReason::Budget };
                (o.x, stop)
            }
            Err(stop) => (problem.best.x.expect("an evaluation happened before the stop"), stop),
        };
        (x.view(shape.as_slice()), stop, pace)
    }

    /// The network and objective of the next evaluation: the f32 ones once the refinement
    /// starts (or a line search failed), else the working ones; and whether they are the f32
    /// refinement's.
    fn network(&self, job: &JobRun, precise: bool) -> (&Vgg19, &Objective, bool) {
        match &self.refinement {
            Some(r)
                if precise
                    || job.evaluations >= r.from_evaluation
                    || r.from_second.is_some_and(|t| job.elapsed() >= t) =>
            {
                (r.net, r.objective, true)
            }
            _ => (self.net, self.objective, false),
        }
    }

    /// `Err(reason)` when the scale must stop after this evaluation.
    fn go_on(
        &self,
        control: Control,
        (now, deadline): (f64, Option<f64>),
        max_seconds: Option<f64>,
        trace: &[f64],
    ) -> Result<(), StopReason> {
        if control == Control::Stop {
            Err(StopReason::Cancelled)
        } else if max_seconds.is_some_and(|t| now >= t) {
            Err(StopReason::OutOfTime)
        } else if deadline.is_some_and(|d| now >= d) {
            Err(StopReason::Deadline)
        } else if self.coarse && stalled(trace) {
            Err(StopReason::Stalled)
        } else {
            Ok(())
        }
    }
}
