//! The engine: one style-transfer job from decoded pictures to a stylized image. It knows
//! nothing of sockets, queues or flags (the rule is checked by `tests/architecture.rs`).
//!
//! [`Engine::stylize`] prepares the job's [`targets::Inputs`], plans its memory
//! ([`memory`]), and runs the coarse-to-fine [`schedule`]: each scale builds its
//! [`objective`] (targets through the style [`cache`]) and optimises it ([`scale`],
//! [`optim`]), reporting to an [`Observer`]. The result is reported with f32 losses at the
//! output size as a typed [`Summary`].

pub mod backward;
pub mod cache;
pub mod color;
pub mod cost;
pub mod device;
pub mod error;
pub mod events;
pub mod graph;
pub mod host;
pub mod image_io;
pub mod memory;
pub mod objective;
pub mod ops;
pub mod optim;
pub mod pace;
pub mod params;
pub mod products;
pub mod rng;
pub mod scale;
pub mod schedule;
pub mod targets;
pub mod tiling;
pub mod vgg;
pub mod weights;

use std::panic::AssertUnwindSafe;

use neural_style_protocol::message::{self as protocol, ScaleReport, Summary};
use tch::{Device, Tensor};

use self::cache::StyleCache;
use self::image_io::Picture;
use self::memory::Plan;
use self::objective::{Losses, Objective};
use self::optim::{Curvature, Optimizer};
use self::pace::Pace;
use self::scale::{JobRun, Refinement, ScaleRun, StopReason};
use self::schedule::Scale;
use self::targets::Inputs;
use self::vgg::{Layout, Vgg19};
use self::weights::{Weights, WeightsInfo};

pub use self::device::{device_name, parse_device, CudaOptions};
pub use self::error::EngineError;
pub use self::events::{Control, Observer, Progress};
pub use self::params::{Init, OptimizerKind, Params, STYLE_WEIGHT_PER_STRENGTH};

/// A job: decoded content and style pictures at their original sizes, and parameters that
/// [`Job::new`] has checked (a `Job` is valid by construction).
#[derive(Clone)]
pub struct Job {
    content: Picture,
    styles: Vec<Picture>,
    params: Params,
}

impl Job {
    /// Checks `params` against the pictures (see [`Params::validate`]).
    pub fn new(content: Picture, styles: Vec<Picture>, params: Params) -> Result<Self, EngineError> {
        params.validate(styles.len())?;
        Ok(Self { content, styles, params })
    }

    /// The same pictures with other parameters.
    pub fn with_params(&self, params: Params) -> Result<Self, EngineError> {
        Self::new(self.content.clone(), self.styles.clone(), params)
    }

    pub fn content(&self) -> &Picture {
        &self.content
    }

    pub fn styles(&self) -> &[Picture] {
        &self.styles
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The output size: the content's longest side scaled to `size`.
    pub fn output_size(&self) -> (u32, u32) {
        let (w, h) = (self.content.width(), self.content.height());
        self.params.size.map_or((w, h), |s| image_io::longest_side_dims(w, h, s))
    }

    /// Caps the memory the job may use at `limit` bytes (it may ask for less, never for more).
    pub fn limit_memory(&mut self, limit: u64) {
        self.params.max_memory = Some(self.params.max_memory.map_or(limit, |m| m.min(limit)));
    }
}

/// The result: RGB `[1,3,H,W]` in `[0,1]` on the CPU, the content's alpha if it had one.
pub struct Stylized {
    pub rgb: Tensor,
    pub alpha: Option<Vec<f32>>,
    pub high_precision: bool,
    pub summary: Summary,
}

/// The model on its device; runs jobs one at a time.
pub struct Engine {
    /// The network the optimisation runs on (possibly bf16 / channels-last).
    vgg: Vgg19,
    /// An f32 copy when `vgg` is reduced-precision: reported losses are always f32.
    reference: Option<Vgg19>,
    weights: WeightsInfo,
    cuda: CudaOptions,
    /// Seconds per evaluation by size, from the jobs run so far: how time budgets are split.
    pace: Pace,
}

/// A job ready to run: its parameters, pictures, memory plan and schedule.
struct Prepared<'a> {
    params: &'a Params,
    inputs: Inputs,
    plan: Plan,
    schedule: Vec<Scale>,
}

/// What one scale of a job ends with.
struct ScaleOut {
    x: Tensor,
    stop: StopReason,
    /// The f32 objective when this is the output size.
    exact: Option<Objective>,
    /// L-BFGS pairs it started with (carried from the coarser scale).
    carried_pairs: usize,
}

/// Where a job's optimisation ended.
struct Ended {
    x: Tensor,
    stop: StopReason,
    /// The f32 objective at the output size when the last scale built one (reused to report).
    exact: Option<Objective>,
    evaluations: usize,
    iterations: usize,
    failed_searches: usize,
    seconds: f64,
    scales: Vec<ScaleReport>,
}

impl Engine {
    pub fn new(weights: &Weights, device: Device) -> Self {
        Self::with_layout(weights, device, Layout::FP32)
    }

    pub fn with_layout(weights: &Weights, device: Device, layout: Layout) -> Self {
        Self::with_options(weights, device, layout, CudaOptions::default())
    }

    /// [`Engine::with_layout`] with its CUDA settings (cuDNN benchmark mode is process-wide:
    /// see [`device::set_cudnn_benchmark`]).
    pub fn with_options(weights: &Weights, device: Device, layout: Layout, cuda: CudaOptions) -> Self {
        if device.is_cuda() {
            device::set_cudnn_benchmark(cuda.cudnn_benchmark);
            products::set_enabled(cuda.kernels);
            if cuda.kernels {
                // compiled and checked now, outside any graph capture (a failure is logged and
                // leaves libtorch's products)
                let _ = products::load(device);
            }
        }
        let reference = (layout != Layout::FP32).then(|| Vgg19::load(weights, device, Layout::FP32));
        Self {
            vgg: Vgg19::load(weights, device, layout),
            reference,
            weights: weights.info(),
            cuda,
            pace: Pace::new(device),
        }
    }

    /// How the engine uses a CUDA device.
    pub fn cuda(&self) -> CudaOptions {
        self.cuda
    }

    /// The network's precision and memory layout.
    pub fn layout(&self) -> Layout {
        self.vgg.layout()
    }

    pub fn vgg(&self) -> &Vgg19 {
        &self.vgg
    }

    pub fn weights(&self) -> &WeightsInfo {
        &self.weights
    }

    pub fn device(&self) -> Device {
        self.vgg.device()
    }

    /// The f32 network: what summaries report with.
    fn reporter(&self) -> &Vgg19 {
        self.reference.as_ref().unwrap_or(&self.vgg)
    }

    /// Runs a job, calling `on_progress` after every evaluation. libtorch errors (including
    /// out-of-memory) come back as [`EngineError::Torch`].
    pub fn stylize(
        &self,
        job: &Job,
        mut on_progress: &mut dyn FnMut(&Progress) -> Control,
    ) -> Result<Stylized, EngineError> {
        self.stylize_cached(job, None, &mut on_progress)
    }

    /// [`Engine::stylize`] with a style-target cache (the daemon keeps one across jobs) and an
    /// [`Observer`] that also hears the memory plan. A panic inside libtorch (a failed op)
    /// becomes [`EngineError::Torch`]: the caller goes on.
    pub fn stylize_cached(
        &self,
        job: &Job,
        cache: Option<&mut StyleCache>,
        observer: &mut dyn Observer,
    ) -> Result<Stylized, EngineError> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.run(job, cache, observer))) {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown error".into());
                Err(EngineError::Torch(msg.lines().next().unwrap_or_default().to_string()))
            }
        }
    }

    /// The job, top-down: prepare and plan, run the scales coarsest first, report.
    fn run(
        &self,
        job: &Job,
        mut cache: Option<&mut StyleCache>,
        observer: &mut dyn Observer,
    ) -> Result<Stylized, EngineError> {
        let p = &job.params;
        let inputs = Inputs::prepare(&job.content, &job.styles, p, self.device())?;
        // refuse before any work when even tiles cannot fit
        let plan = self.plan(job)?;
        observer.planned(&plan);
        let (w, h) = inputs.size();
        let prepared = Prepared { params: p, schedule: schedule::scales(p, w, h), inputs, plan };
        let mut run = JobRun::new(p, observer);
        let mut x: Option<Tensor> = None;
        let (mut stop, mut exact) = (StopReason::Budget, None);
        let mut scales = Vec::new();
        let mut curvature: Curvature = None;
        for (k, scale) in prepared.schedule.iter().enumerate() {
            let (seconds, evaluations) = (run.elapsed(), run.evaluations);
            let out = self.run_scale(&prepared, k, x.as_ref(), &mut curvature, cache.as_deref_mut(), &mut run)?;
            (x, stop, exact) = (Some(out.x), out.stop, out.exact);
            scales.push(ScaleReport {
                width: scale.width,
                height: scale.height,
                evaluations: run.evaluations - evaluations,
                seconds: run.elapsed() - seconds,
                carried_pairs: out.carried_pairs,
            });
            if stop.ends_job() || run.budget_spent() {
                break;
            }
        }
        let ended = Ended {
            x: x.expect("at least one scale"),
            stop,
            exact,
            evaluations: run.evaluations,
            iterations: run.iterations,
            failed_searches: run.failed_searches,
            seconds: run.elapsed(),
            scales,
        };
        Ok(self.report(job, &prepared, ended))
    }

    /// Scale `k` of the schedule: its memory plan, targets and optimiser, run from the previous
    /// scale's result upsampled (or the start image) and its optimiser's `curvature` carried
    /// (left as this scale's for the next).
    fn run_scale(
        &self,
        job: &Prepared,
        k: usize,
        previous: Option<&Tensor>,
        curvature: &mut Curvature,
        cache: Option<&mut StyleCache>,
        run: &mut JobRun,
    ) -> Result<ScaleOut, EngineError> {
        let p = job.params;
        let Scale { width: w, height: h, .. } = job.schedule[k];
        let last = k + 1 == job.schedule.len();
        let budget = schedule::evaluation_budget(&job.schedule, k, p.evaluations - run.evaluations);
        let sizes: Vec<(u32, u32)> = job.schedule.iter().map(|s| (s.width, s.height)).collect();
        let costs = self.pace.relative_costs(&sizes);
        let time_share = schedule::time_share(&costs, k, schedule::coarse_share(p));
        let plan = if last {
            job.plan.clone()
        } else {
            memory::plan(w, h, p, self.layout(), job.plan.limit_bytes, p.tile.map(i64::from))?
        };
        let (content, styles) = job.inputs.at_scale(w, h);
        let objective = targets::objective(&self.vgg, &content, &styles, p, cache, plan.tiling);
        // reduced precision: the output size ends on the f32 network (see scale::Refinement)
        let refined = match (&self.reference, last) {
            (Some(r), true) => Some(targets::objective(r, &content, &styles, p, None, plan.tiling)),
            _ => None,
        };
        let x0 = match previous {
            None => job.inputs.start(p, w, h),
            Some(prev) => job.inputs.finer_start(p, prev, w, h),
        };
        let optimizer = p.optimizer(plan.lbfgs_history, plan.history_bf16);
        *curvature = match (previous, optimizer) {
            (Some(prev), Optimizer::Lbfgs(c)) => {
                scale::carry(curvature.take(), &prev.size(), &x0.size(), (c.history_size, c.history_bf16))
            }
            _ => None,
        };
        let carried_pairs = curvature.as_ref().map_or(0, |h| h.len());
        let (x, stop, (evaluations, seconds)) = ScaleRun {
            net: &self.vgg,
            objective: &objective,
            refinement: refined.as_ref().map(|o| Refinement {
                net: self.reporter(),
                objective: o,
                from_evaluation: schedule::refine_from(run.evaluations, budget),
                from_second: schedule::refine_at(p.max_seconds),
            }),
            tiling: plan.tiling,
            tight: plan.tight(),
            graphs: self.cuda.graphs
                && self.device().is_cuda()
                && plan.tiling.is_none()
                && !plan.tight()
                && i64::from(w) * i64::from(h) <= graph::MAX_PIXELS,
            coarse: !last,
            budget,
            time_share,
            optimizer,
        }
        .run(&x0, run, curvature);
        self.pace.record((w, h), evaluations, seconds);
        if last {
            // the output size's history has no next scale: free it before the report's evaluation
            *curvature = None;
        }
        // at the output size the f32 objective is the refinement's, or this one on an f32 network
        let exact = match (last, refined) {
            (true, Some(o)) => Some(o),
            (true, None) => Some(objective),
            _ => None,
        };
        Ok(ScaleOut { x, stop, exact, carried_pairs })
    }

    /// The image at the output size with its f32 figures.
    fn report(&self, job: &Job, prepared: &Prepared, ended: Ended) -> Stylized {
        let p = &job.params;
        let inputs = &prepared.inputs;
        let (w, h) = inputs.size();
        let tiling = prepared.plan.tiling;
        // a job stopped at a coarser scale is brought to the output size as a next scale would be
        let x = if ended.x.size()[2..] != [i64::from(h), i64::from(w)] {
            inputs.finer_start(p, &ended.x, w, h)
        } else {
            ended.x
        };
        // f32 figures at the output size, comparable across precisions and schedules
        let exact = ended
            .exact
            .unwrap_or_else(|| targets::objective(self.reporter(), &inputs.content, &inputs.styles, p, None, tiling));
        let losses = exact.value_maybe_tiled(self.reporter(), &x, tiling);
        let initial = exact.value_maybe_tiled(self.reporter(), &inputs.start(p, w, h), tiling).total;
        let mut rgb = x.clamp(0.0, 1.0);
        if p.preserve_colors {
            rgb = color::luminance_transfer(&rgb, &inputs.content);
        }
        let c = exact.coefficients();
        let content = &job.content;
        let summary = Summary {
            content_loss: losses.content,
            style_loss: losses.style,
            tv_loss: losses.tv,
            total_loss: losses.total,
            initial_loss: initial,
            iterations: ended.iterations,
            evaluations: ended.evaluations,
            seconds: ended.seconds,
            device: device_name(self.device()),
            pretrained: self.weights.pretrained,
            weights: self.weights.summary(),
            width: w,
            height: h,
            alpha: c.alpha,
            beta: c.beta,
            tv_weight: c.tv,
            optimizer: p.optimizer.as_str().into(),
            precision: self.vgg.layout().name(),
            converged: ended.stop == StopReason::Converged,
            stop_reason: match ended.stop {
                StopReason::Converged => protocol::StopReason::Converged,
                StopReason::Cancelled => protocol::StopReason::Cancelled,
                StopReason::OutOfTime => protocol::StopReason::Time,
                // a scale's own budget or deadline ends the job only when the job's budget is spent
                StopReason::Budget | StopReason::Deadline | StopReason::Stalled => protocol::StopReason::Budget,
            },
            line_search_restarts: ended.failed_searches,
            cancelled: ended.stop == StopReason::Cancelled,
            time_budget_reached: ended.stop == StopReason::OutOfTime,
            has_alpha: content.has_alpha,
            scales: ended.scales,
            schedule: schedule::choose(p, w, h).describe(),
            memory: prepared.plan.report(),
            high_precision: content.high_precision,
        };
        Stylized {
            rgb: rgb.to_device(Device::Cpu),
            alpha: content.has_alpha.then(|| content.alpha()),
            high_precision: content.high_precision,
            summary,
        }
    }

    /// The objective of a job at its working size, on the working network, without tiles.
    pub fn objective(&self, content: &Tensor, styles: &[Tensor], p: &Params) -> Objective {
        targets::objective(&self.vgg, content, styles, p, None, None)
    }

    /// The memory plan of a job at its output size: the estimate, tiles, L-BFGS history.
    pub fn plan(&self, job: &Job) -> Result<Plan, EngineError> {
        let p = &job.params;
        let (w, h) = job.output_size();
        let limit = p.max_memory.unwrap_or_else(|| memory::default_limit(self.device()));
        memory::plan(w, h, p, self.layout(), limit, p.tile.map(i64::from))
    }

    /// The f32 objective of any image `x` (`[1,3,H,W]` at the job's output size) for `job`: the
    /// figure a [`Summary`] reports, so results from elsewhere (a PyTorch run) can be compared.
    pub fn exact_losses(&self, job: &Job, x: &Tensor) -> Result<Losses, EngineError> {
        let inputs = Inputs::prepare(&job.content, &job.styles, &job.params, self.device())?;
        let tiling = self.plan(job)?.tiling;
        let exact = targets::objective(self.reporter(), &inputs.content, &inputs.styles, &job.params, None, tiling);
        Ok(exact.value_maybe_tiled(self.reporter(), &x.to_device(self.device()), tiling))
    }
}
