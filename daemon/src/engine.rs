//! One style-transfer job from decoded pictures to a stylised image: sizes, targets, init,
//! optimisation with progress and cancellation, colour preservation, summary.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::cache::{StyleCache, StyleKey};
use crate::image_io::{ImageError, Picture};
use crate::lbfgs::{LbfgsConfig, Outcome, Stop};
use crate::memory::Plan;
use crate::objective::{Coefficients, Losses, Objective};
use crate::tiling::Tiling;
use crate::vgg::{Layout, Pooling, Vgg19};
use crate::weights::{layer_index, vgg19_layers, Weights, WeightsInfo};
use crate::{adam, color, lbfgs};

/// β per unit of `--strength` (see [`Params::coefficients`]).
pub const STYLE_WEIGHT_PER_STRENGTH: f64 = 500.0;

/// L-BFGS's first step at each scale moves the pixel with the largest gradient by this much (of
/// the [0,1] range); the line search then adapts it. torch's default first step, min(1, 1/|g|₁),
/// is ~1e-6 of a pixel on this objective and costs a handful of evaluations per scale to grow.
pub const FIRST_STEP: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Lbfgs,
    Adam,
}

/// The starting image (paper fig. 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Seeded uniform white noise in [0,1].
    Noise,
    Content,
    /// The first style image, resized to the output size.
    Style,
}

/// Every engine parameter of a job. Serialisable: the daemon's protocol carries it as is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Longest side of the output in pixels; `None` keeps the content's size.
    pub size: Option<u32>,
    /// Budget of objective evaluations (one forward + backward each).
    pub iterations: usize,
    pub optimizer: OptimizerKind,
    /// L-BFGS history size.
    pub lbfgs_history: usize,
    /// Strong-Wolfe line search for L-BFGS (default on: without it, L-BFGS at lr = 1 can
    /// diverge or stall on this objective).
    pub line_search: bool,
    /// Step size: L-BFGS `lr` (default 1) or Adam's learning rate (default 0.02).
    pub learning_rate: Option<f64>,
    pub init: Init,
    pub seed: u64,
    pub pooling: Pooling,
    pub content_layers: Vec<String>,
    pub style_layers: Vec<String>,
    /// w_l per style layer; default 1/|S| each.
    pub style_layer_weights: Option<Vec<f64>>,
    /// α; default size-aware 1/Σ(N_l·M_l) over the content layers.
    pub content_weight: Option<f64>,
    /// β; default `strength` × [`STYLE_WEIGHT_PER_STRENGTH`].
    pub style_weight: Option<f64>,
    pub strength: f64,
    /// γ of the total-variation term.
    pub tv_weight: f64,
    /// Blend weights of the style images (normalised to sum 1); default equal.
    pub style_blend: Vec<f64>,
    /// Style images are resized to the content's longest side times this.
    pub style_scale: f64,
    /// Luminance-only transfer: the output keeps the content's colours.
    pub preserve_colors: bool,
    /// Time budget in seconds (from the first scale's setup to the last evaluation): each scale
    /// of the schedule gets a share of the time (see [`scale_time_share`]) and the job ends at
    /// the first evaluation past the budget with the best image evaluated at the last scale
    /// reached (the iteration budget still applies).
    pub max_seconds: Option<f64>,
    /// Coarse-to-fine: optimise at halved sizes first (see [`Params::schedule`]).
    pub multiscale: bool,
    /// The coarsest scale's longest side.
    pub min_scale: u32,
    /// Tile core side in px: `None` tiles only when the memory estimate exceeds the limit,
    /// `Some(0)` never tiles, `Some(n)` always tiles.
    pub tile: Option<u32>,
    /// Memory a job may use, in bytes (default: 80% of the available RAM on the CPU).
    pub max_memory: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            size: Some(512),
            iterations: 500,
            optimizer: OptimizerKind::Lbfgs,
            lbfgs_history: 100,
            line_search: true,
            learning_rate: None,
            init: Init::Noise,
            seed: 0,
            pooling: Pooling::Avg,
            content_layers: vec!["relu4_2".into()],
            style_layers: ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"].map(String::from).to_vec(),
            style_layer_weights: None,
            content_weight: None,
            style_weight: None,
            strength: 1.0,
            tv_weight: 0.0,
            style_blend: Vec::new(),
            style_scale: 1.0,
            preserve_colors: false,
            max_seconds: None,
            multiscale: true,
            min_scale: 128,
            tile: None,
            max_memory: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the computation failed: {0}. If this is an out-of-memory error, use a smaller --size")]
    Torch(String),
    #[error("not enough memory: {0}")]
    Memory(String),
}

impl Params {
    /// Checks everything that can be checked without images.
    pub fn validate(&self, styles: usize) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Invalid(m));
        if styles == 0 {
            return bad("at least one style image is needed".into());
        }
        if self.iterations == 0 {
            return bad("iterations must be at least 1".into());
        }
        if let Some(s) = self.size {
            if s < crate::image_io::MIN_SIDE {
                return bad(format!("size {s} is below the minimum of {} px", crate::image_io::MIN_SIDE));
            }
        }
        let known = || vgg19_layers().iter().map(|l| l.name().to_string()).collect::<Vec<_>>().join(", ");
        for name in self.content_layers.iter().chain(&self.style_layers) {
            if layer_index(name).is_none() {
                return bad(format!("unknown layer {name:?}; known layers: {}", known()));
            }
        }
        if self.content_layers.is_empty() && self.style_layers.is_empty() {
            return bad("no content and no style layers".into());
        }
        if let Some(w) = &self.style_layer_weights {
            if w.len() != self.style_layers.len() {
                return bad(format!("{} style layer weights for {} style layers", w.len(), self.style_layers.len()));
            }
        }
        if !self.style_blend.is_empty() {
            if self.style_blend.len() != styles {
                return bad(format!("{} style blend weights for {styles} style images", self.style_blend.len()));
            }
            if self.style_blend.iter().any(|&w| !(w >= 0.0 && w.is_finite()))
                || self.style_blend.iter().sum::<f64>() <= 0.0
            {
                return bad("style blend weights must be non-negative and not all zero".into());
            }
        }
        if let Some(t) = self.max_seconds {
            if !(t > 0.0 && t.is_finite()) {
                return bad(format!("max-seconds must be a positive number of seconds, got {t}"));
            }
        }
        for (name, v) in [("strength", self.strength), ("tv-weight", self.tv_weight)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        if !(self.style_scale > 0.0 && self.style_scale <= 8.0) {
            return bad(format!("style-scale must be in (0, 8], got {}", self.style_scale));
        }
        if self.lbfgs_history == 0 {
            return bad("lbfgs-history must be at least 1".into());
        }
        Ok(())
    }

    /// The coarse-to-fine schedule for an output of w × h: `(width, height, evaluations)` per
    /// scale, coarsest first. Sizes halve from the output down to `min_scale` (longest side;
    /// both sides stay ≥ 16 px), at most 4 scales, and only while every scale gets at least 10
    /// evaluations. The coarser scales share half of the evaluation budget equally and the
    /// output size gets the other half; a coarse evaluation costs ¼, 1/16, … of a full one.
    /// Each scale starts from the previous result upsampled (bicubic); style targets are
    /// recomputed per scale from the style resized by the same factor. `multiscale = false`
    /// (`--single-scale`) gives one scale.
    pub fn schedule(&self, w: u32, h: u32) -> Vec<(u32, u32, usize)> {
        let mut sizes = vec![(w, h)];
        if self.multiscale {
            let (mut sw, mut sh) = (w, h);
            while sizes.len() < 4
                && sw.max(sh) / 2 >= self.min_scale.max(crate::image_io::MIN_SIDE)
                && sw.min(sh) / 2 >= 16
            {
                sw = (sw / 2).max(1);
                sh = (sh / 2).max(1);
                sizes.push((sw, sh));
            }
            while sizes.len() > 1 && self.iterations / (2 * (sizes.len() - 1)).max(1) < 10 {
                sizes.pop();
            }
        }
        sizes.reverse();
        let n = sizes.len();
        if n == 1 {
            return vec![(w, h, self.iterations)];
        }
        let coarse = self.iterations / (2 * (n - 1));
        let last = self.iterations - coarse * (n - 1);
        sizes.iter().enumerate().map(|(i, &(a, b))| (a, b, if i + 1 == n { last } else { coarse })).collect()
    }

    /// α, β, γ. Unless given explicitly: α = 1/Σ_l(N_l·M_l) over the content layers (so α·L_content
    /// is half the mean squared feature difference, independent of image size), β = strength ×
    /// [`STYLE_WEIGHT_PER_STRENGTH`] (E_l is already size-independent). The same strength thus
    /// gives the same balance at any resolution.
    pub fn coefficients(&self, content_elements: f64) -> Coefficients {
        Coefficients {
            alpha: self.content_weight.unwrap_or(1.0 / content_elements.max(1.0)),
            beta: self.style_weight.unwrap_or(self.strength * STYLE_WEIGHT_PER_STRENGTH),
            tv: self.tv_weight,
        }
    }
}

/// A job: decoded content and style pictures at their original sizes, and parameters.
#[derive(Clone)]
pub struct Job {
    pub content: Picture,
    pub styles: Vec<Picture>,
    pub params: Params,
}

/// Progress after each evaluation.
#[derive(Debug)]
pub struct Progress {
    pub evaluation: usize,
    pub max_evaluations: usize,
    pub losses: Losses,
    pub elapsed: Duration,
    /// The image just evaluated, [1,3,H,W] on the engine's device (values may leave [0,1]).
    pub image: Tensor,
}

/// What the observer wants after a progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Final figures of a job.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub content_loss: f64,
    pub style_loss: f64,
    pub tv_loss: f64,
    pub total_loss: f64,
    /// eq. 7 at the initial image.
    pub initial_loss: f64,
    pub iterations: usize,
    pub evaluations: usize,
    /// The optimisation loop alone.
    pub seconds: f64,
    pub device: String,
    pub pretrained: bool,
    pub weights: WeightsInfo,
    pub width: u32,
    pub height: u32,
    pub alpha: f64,
    pub beta: f64,
    pub tv_weight: f64,
    pub optimizer: OptimizerKind,
    /// Network precision and layout the optimisation ran with (losses are f32 regardless).
    pub precision: String,
    pub converged: bool,
    /// Stopped early by request (Ctrl-C, cancel).
    pub cancelled: bool,
    /// Stopped by `max_seconds`.
    pub time_budget_reached: bool,
    /// The content had an alpha channel (carried to the output).
    pub has_alpha: bool,
    /// What each scale of the schedule got, coarsest first (scales never reached are absent).
    pub scales: Vec<ScaleReport>,
    /// The memory estimate at the output size and what it decided (tiles, L-BFGS history).
    pub memory: Plan,
    /// The content had more than 8 bits per channel.
    pub high_precision: bool,
}

/// One scale of a finished job.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub width: u32,
    pub height: u32,
    pub evaluations: usize,
    pub seconds: f64,
}

/// The result: RGB [1,3,H,W] in [0,1] on the CPU, the content's alpha if it had one.
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
}

/// A device name as users write it.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    let cuda = |i: usize| {
        let n = tch::Cuda::device_count() as usize;
        if i < n {
            Ok(Device::Cuda(i))
        } else if n == 0 {
            Err(format!("device {s:?}: no CUDA device is visible (libtorch sees none); use --device cpu"))
        } else {
            Err(format!("device {s:?}: only {n} CUDA device(s) (0..{})", n - 1))
        }
    };
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(format!("unknown device {s:?}; use auto, cpu, cuda or cuda:N")),
        },
    }
}

impl Engine {
    pub fn new(weights: &Weights, device: Device) -> Self {
        Self::with_layout(weights, device, Layout::FP32)
    }

    pub fn with_layout(weights: &Weights, device: Device, layout: Layout) -> Self {
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let reference = (layout != Layout::FP32).then(|| Vgg19::load(weights, device, Layout::FP32));
        Self { vgg: Vgg19::load(weights, device, layout), reference, weights: weights.info() }
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

    /// Runs a job. libtorch errors (including out-of-memory) come back as [`EngineError::Torch`].
    pub fn stylize(&self, job: &Job, observe: &mut dyn FnMut(&Progress) -> Control) -> Result<Stylized, EngineError> {
        self.stylize_cached(job, None, observe)
    }

    /// [`Engine::stylize`] with a style-target cache (the daemon keeps one across jobs).
    pub fn stylize_cached(
        &self,
        job: &Job,
        cache: Option<&mut StyleCache>,
        observe: &mut dyn FnMut(&Progress) -> Control,
    ) -> Result<Stylized, EngineError> {
        job.params.validate(job.styles.len())?;
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.run(job, cache, observe))) {
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

    /// The working pictures: content at the output size, styles at content size × style_scale.
    pub fn prepare(&self, job: &Job) -> Result<(Picture, Vec<Picture>), EngineError> {
        let p = &job.params;
        let content = match p.size {
            Some(s) => job.content.resized_longest(s),
            None => job.content.clone(),
        };
        content.check_min_size("content".as_ref())?;
        let longest = content.width().max(content.height());
        let style_size = ((f64::from(longest) * p.style_scale).round() as u32).max(1);
        let styles = job
            .styles
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.resized_longest(style_size);
                s.check_min_size(format!("style #{}", i + 1).as_ref())?;
                Ok(s)
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        Ok((content, styles))
    }

    /// The objective of a job at its working size.
    pub fn objective(&self, content: &Tensor, styles: &[Tensor], p: &Params) -> Objective {
        Self::objective_on(&self.vgg, content, styles, p, None, None)
    }

    fn objective_on(
        vgg: &Vgg19,
        content: &Tensor,
        styles: &[Tensor],
        p: &Params,
        mut cache: Option<&mut StyleCache>,
        tiling: Option<Tiling>,
    ) -> Objective {
        let c_idx: Vec<usize> = p.content_layers.iter().filter_map(|n| layer_index(n)).collect();
        let s_idx: Vec<usize> = p.style_layers.iter().filter_map(|n| layer_index(n)).collect();
        let content_terms = match tiling {
            None => Objective::content_targets(vgg, content, &c_idx, p.pooling),
            Some(t) => crate::tiling::features(vgg, content, &c_idx, p.pooling, t)
                .into_iter()
                .zip(&c_idx)
                .map(|(target, &index)| crate::objective::ContentTerm { index, target })
                .collect(),
        };
        let elements: f64 = content_terms.iter().map(|t| t.target.numel() as f64).sum();
        let pooling = format!("{:?}", p.pooling);
        let grams: Vec<Vec<Tensor>> = styles
            .iter()
            .map(|s| {
                // a style that fits in one tile core is computed whole, as without tiles
                let (sh, sw) = (s.size()[2], s.size()[3]);
                let tiling = tiling.filter(|t| sh.max(sw) > t.tile);
                let compute = || match tiling {
                    None => Objective::style_grams(vgg, s, &s_idx, p.pooling),
                    Some(t) => crate::tiling::grams(vgg, s, &s_idx, p.pooling, t, (0, 0)),
                };
                let grid = tiling.map(|t| (t.tile, t.halo));
                match cache.as_deref_mut() {
                    Some(c) => {
                        c.get_or_compute(StyleKey::new(s, &s_idx, &pooling, &vgg.layout().name(), grid), compute)
                    }
                    None => compute(),
                }
            })
            .collect();
        let blend = if p.style_blend.is_empty() { vec![1.0; styles.len()] } else { p.style_blend.clone() };
        let layer_weights =
            p.style_layer_weights.clone().unwrap_or_else(|| vec![1.0 / s_idx.len().max(1) as f64; s_idx.len()]);
        let style_terms = if s_idx.is_empty() {
            Vec::new()
        } else {
            Objective::style_targets(&grams, &blend, &s_idx, &layer_weights)
        };
        Objective {
            content: content_terms,
            style: style_terms,
            coefficients: p.coefficients(elements),
            pooling: p.pooling,
        }
    }

    /// The objective at the output size on the f32 network: what summaries report.
    fn exact_objective(
        &self,
        content: &Tensor,
        styles: &[Tensor],
        p: &Params,
        tiling: Option<Tiling>,
    ) -> (&Vgg19, Objective) {
        let reporter = self.reference.as_ref().unwrap_or(&self.vgg);
        (reporter, Self::objective_on(reporter, content, styles, p, None, tiling))
    }

    /// The memory plan of a job at its output size: the estimate, tiles, L-BFGS history.
    pub fn plan(&self, job: &Job) -> Result<Plan, EngineError> {
        let p = &job.params;
        let (w, h) = match p.size {
            Some(s) => crate::image_io::longest_side_dims(job.content.width(), job.content.height(), s),
            None => (job.content.width(), job.content.height()),
        };
        let limit = p.max_memory.unwrap_or_else(|| crate::memory::default_limit(self.device()));
        crate::memory::plan(w, h, p, self.layout(), limit, p.tile.map(i64::from))
    }

    /// The f32 objective of any image `x` ([1,3,H,W] at the job's output size) for `job`: the
    /// figure a [`Summary`] reports, so results from elsewhere (a PyTorch run) can be compared.
    pub fn exact_losses(&self, job: &Job, x: &Tensor) -> Result<Losses, EngineError> {
        let (content, styles) = self.prepare(job)?;
        let device = self.device();
        let styles: Vec<Tensor> = styles.iter().map(|s| s.rgb_tensor().to_device(device)).collect();
        let tiling = self.plan(job)?.tiling;
        let (reporter, exact) =
            self.exact_objective(&content.rgb_tensor().to_device(device), &styles, &job.params, tiling);
        Ok(exact.value_maybe_tiled(reporter, &x.to_device(device), tiling))
    }

    fn run(
        &self,
        job: &Job,
        mut cache: Option<&mut StyleCache>,
        observe: &mut dyn FnMut(&Progress) -> Control,
    ) -> Result<Stylized, EngineError> {
        let p = &job.params;
        let device = self.device();
        let (content_pic, style_pics) = self.prepare(job)?;
        let (w, h) = (content_pic.width(), content_pic.height());
        let content = content_pic.rgb_tensor().to_device(device);
        let styles: Vec<Tensor> = style_pics.iter().map(|s| s.rgb_tensor().to_device(device)).collect();
        let init_at = |sw: u32, sh: u32| match p.init {
            Init::Noise => crate::rng::uniform(&[1, 3, i64::from(sh), i64::from(sw)], p.seed).to_device(device),
            Init::Content => content_pic.resized(sw, sh).rgb_tensor().to_device(device),
            Init::Style => style_pics[0].resized(sw, sh).rgb_tensor().to_device(device),
        };
        // refuse before any work when even tiles cannot fit
        let memory = self.plan(job)?;
        let limit = memory.limit_bytes;
        let schedule = p.schedule(w, h);
        let start = Instant::now();
        let mut evaluations = 0;
        let mut iterations = 0;
        let mut converged = false;
        let mut stopped = false;
        let mut out_of_time = false;
        let mut x: Option<Tensor> = None;
        let mut scales = Vec::new();
        // the f32 objective at the output size, when refinement built it: reused for reporting
        let mut exact_at_output: Option<Objective> = None;
        for (k, &(sw, sh, _)) in schedule.iter().enumerate() {
            let (scale_start, evaluations_before) = (start.elapsed().as_secs_f64(), evaluations);
            let last_scale = k + 1 == schedule.len();
            let budget = scale_budget(&schedule, k, p.iterations - evaluations);
            let deadline = p.max_seconds.map(|t| {
                let now = start.elapsed().as_secs_f64();
                now + scale_time_share(schedule.len(), k) * (t - now).max(0.0)
            });
            // coarser scales: content resized, styles scaled by the same factor
            let (content_k, styles_k) = if last_scale {
                (content.shallow_clone(), styles.iter().map(|s| s.shallow_clone()).collect::<Vec<_>>())
            } else {
                let f = f64::from(sw) / f64::from(w);
                let st = style_pics
                    .iter()
                    .map(|s| {
                        let l =
                            ((f64::from(s.width().max(s.height())) * f).round() as u32).max(crate::image_io::MIN_SIDE);
                        s.resized_longest(l).rgb_tensor().to_device(device)
                    })
                    .collect();
                (content_pic.resized(sw, sh).rgb_tensor().to_device(device), st)
            };
            let plan = if last_scale {
                memory.clone()
            } else {
                crate::memory::plan(sw, sh, p, self.layout(), limit, p.tile.map(i64::from))?
            };
            let tiling = plan.tiling;
            let tight = plan.tight();
            let objective = Self::objective_on(&self.vgg, &content_k, &styles_k, p, cache.as_deref_mut(), tiling);
            // Precision refinement: with a reduced-precision network, the last REFINE_FRACTION of
            // the output size's evaluations (or of the time budget) run on the f32 copy. Close
            // to a minimum, bf16 values and gradients are too coarse for the line search (it
            // needs more evaluations per step and ends a few percent higher; measured in
            // docs/benchmarks.md).
            let refine = match (&self.reference, last_scale) {
                (Some(r), true) => Some((r, Self::objective_on(r, &content_k, &styles_k, p, None, tiling))),
                _ => None,
            };
            let refine_from = evaluations + budget - ((budget as f64 * REFINE_FRACTION).ceil() as usize).min(budget);
            let refine_at = p.max_seconds.map(|t| t * (1.0 - REFINE_FRACTION));
            let x0 = match &x {
                None => init_at(sw, sh),
                Some(prev) => {
                    prev.upsample_bicubic2d([i64::from(sh), i64::from(sw)], false, None, None).clamp(0.0, 1.0)
                }
            };
            let shape = x0.size();
            // The best point evaluated at this scale: what an interrupted scale hands on (a
            // line search's last trial point can be worse than where it started).
            let mut best: Option<(f64, Tensor)> = None;
            // best value after each evaluation of this scale, to see a coarse scale stall
            let mut best_trace: Vec<f64> = Vec::new();
            let mut eval = |flat: &Tensor| -> Result<(f64, Tensor), ()> {
                let xv = flat.view(shape.as_slice());
                let refining =
                    evaluations >= refine_from || refine_at.is_some_and(|t| start.elapsed().as_secs_f64() >= t);
                let (net, obj) = match &refine {
                    Some((r, o)) if refining => (*r, o),
                    _ => (&self.vgg, &objective),
                };
                let (losses, grad) = match tiling {
                    None => obj.evaluate(net, &xv),
                    Some(t) => obj.evaluate_tiled(net, &xv, t, crate::tiling::shift(t, evaluations)),
                };
                evaluations += 1;
                if tight {
                    crate::memory::release_freed();
                }
                if best.as_ref().is_none_or(|(v, _)| losses.total < *v) {
                    best = Some((losses.total, flat.copy()));
                }
                best_trace.push(best.as_ref().map_or(f64::INFINITY, |b| b.0));
                let progress = Progress {
                    evaluation: evaluations,
                    max_evaluations: p.iterations,
                    losses,
                    elapsed: start.elapsed(),
                    image: xv.shallow_clone(),
                };
                if observe(&progress) == Control::Stop {
                    stopped = true;
                    return Err(());
                }
                let now = start.elapsed().as_secs_f64();
                if p.max_seconds.is_some_and(|t| now >= t) {
                    out_of_time = true;
                    return Err(());
                }
                if deadline.is_some_and(|d| now >= d) {
                    // this scale's share of the time is spent: go on to the next scale
                    return Err(());
                }
                if !last_scale && stalled(&best_trace) {
                    // a coarse scale that no longer improves hands its budget to the next one
                    return Err(());
                }
                Ok((losses.total, grad.view([-1])))
            };
            let flat0 = x0.view([-1]);
            let outcome: Result<Outcome, ()> = match p.optimizer {
                OptimizerKind::Lbfgs => {
                    let cfg = LbfgsConfig {
                        lr: p.learning_rate.unwrap_or(1.0),
                        history_size: plan.lbfgs_history,
                        strong_wolfe: p.line_search,
                        // torch's absolute tolerances (1e-9) end runs early at this objective's
                        // scale; users ask for a budget, so stop only on a zero step or gradient.
                        tolerance_change: 0.0,
                        tolerance_grad: 0.0,
                        first_step: Some(FIRST_STEP),
                    };
                    lbfgs::minimize(&cfg, &flat0, budget, &mut eval)
                }
                OptimizerKind::Adam => {
                    let cfg = adam::AdamConfig { lr: p.learning_rate.unwrap_or(0.02), ..Default::default() };
                    adam::minimize(&cfg, &flat0, budget, &mut eval)
                }
            };
            let flat = match outcome {
                Ok(o) => {
                    iterations += o.iterations;
                    converged = o.stop == Stop::Converged;
                    o.x
                }
                Err(()) => best.take().expect("an evaluation happened before the stop").1,
            };
            x = Some(flat.view(shape.as_slice()));
            exact_at_output = refine.map(|(_, o)| o);
            scales.push(ScaleReport {
                width: sw,
                height: sh,
                evaluations: evaluations - evaluations_before,
                seconds: start.elapsed().as_secs_f64() - scale_start,
            });
            if stopped || out_of_time || evaluations >= p.iterations {
                break;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut x = x.expect("at least one scale");
        if x.size()[2..] != [i64::from(h), i64::from(w)] {
            // stopped at a coarser scale
            x = x.upsample_bicubic2d([i64::from(h), i64::from(w)], false, None, None);
        }
        // Report f32 figures at the output size, comparable across precisions and schedules.
        let (reporter, exact) = match exact_at_output {
            Some(o) => (self.reference.as_ref().unwrap_or(&self.vgg), o),
            None => self.exact_objective(&content, &styles, p, memory.tiling),
        };
        let losses = exact.value_maybe_tiled(reporter, &x, memory.tiling);
        let initial = exact.value_maybe_tiled(reporter, &init_at(w, h), memory.tiling).total;
        let c = exact.coefficients;
        let mut rgb = x.clamp(0.0, 1.0);
        if p.preserve_colors {
            rgb = color::luminance_transfer(&rgb, &content);
        }
        Ok(Stylized {
            rgb: rgb.to_device(Device::Cpu),
            alpha: content_pic.has_alpha.then(|| content_pic.alpha()),
            high_precision: content_pic.high_precision,
            summary: Summary {
                content_loss: losses.content,
                style_loss: losses.style,
                tv_loss: losses.tv,
                total_loss: losses.total,
                initial_loss: initial,
                iterations,
                evaluations,
                seconds,
                device: device_name(device),
                pretrained: self.weights.pretrained,
                weights: self.weights.clone(),
                width: w,
                height: h,
                alpha: c.alpha,
                beta: c.beta,
                tv_weight: c.tv,
                optimizer: p.optimizer,
                precision: self.vgg.layout().name(),
                converged,
                cancelled: stopped,
                time_budget_reached: out_of_time,
                has_alpha: content_pic.has_alpha,
                scales,
                memory,
                high_precision: content_pic.high_precision,
            },
        })
    }
}

/// The share of the output size's evaluations (or of the time budget) that run on the f32
/// network when the working precision is reduced.
pub const REFINE_FRACTION: f64 = 0.3;

/// Evaluations over which a coarse scale must improve by [`STALL_IMPROVEMENT`] to go on.
const STALL_WINDOW: usize = 20;
/// Relative improvement of the best value over [`STALL_WINDOW`] evaluations below which a
/// coarse scale has stalled.
const STALL_IMPROVEMENT: f64 = 1e-3;

/// Whether the best value (after each evaluation) stopped improving.
fn stalled(best: &[f64]) -> bool {
    let n = best.len();
    n > STALL_WINDOW && best[n - 1] > best[n - 1 - STALL_WINDOW] * (1.0 - STALL_IMPROVEMENT)
}

/// Evaluations for scale `k` of `schedule` when `left` of the job's budget remain: its own
/// share plus whatever earlier scales left unused, keeping the later scales' shares.
fn scale_budget(schedule: &[(u32, u32, usize)], k: usize, left: usize) -> usize {
    let later: usize = schedule[k + 1..].iter().map(|s| s.2).sum();
    left.saturating_sub(later).max(1)
}

/// The fraction of the remaining time budget that scale `k` of `n` gets: the coarser scales
/// share half of the budget equally and the output size gets the other half, as with
/// evaluations; time a scale leaves unused (it converged or ran out of evaluations) rolls over
/// to the later ones, because each share is taken of what remains.
fn scale_time_share(n: usize, k: usize) -> f64 {
    if k + 1 >= n {
        return 1.0;
    }
    let coarse = 0.5 / (n - 1) as f64;
    let remaining_weight = coarse * (n - 1 - k) as f64 + 0.5;
    coarse / remaining_weight
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_to_fine_schedule() {
        let p = Params { iterations: 500, ..Params::default() };
        // 512×384: 128×96, 256×192, 512×384; half the budget to the output size
        assert_eq!(p.schedule(512, 384), vec![(128, 96, 125), (256, 192, 125), (512, 384, 250)]);
        // small images and small budgets: one scale
        assert_eq!(p.schedule(200, 150), vec![(200, 150, 500)]);
        let few = Params { iterations: 30, ..Params::default() };
        assert_eq!(few.schedule(512, 512), vec![(256, 256, 15), (512, 512, 15)]);
        let one = Params { iterations: 1, ..Params::default() };
        assert_eq!(one.schedule(512, 512), vec![(512, 512, 1)]);
        // at most four scales; both sides stay ≥ 16
        let big = Params { iterations: 1000, ..Params::default() };
        assert_eq!(big.schedule(4096, 2048).len(), 4);
        assert_eq!(big.schedule(2048, 40).len(), 2, "1024×20 is the last with both sides ≥ 16");
        let single = Params { multiscale: false, ..Params::default() };
        assert_eq!(single.schedule(2048, 2048), vec![(2048, 2048, 500)]);
        // time shares: coarse scales split half the budget, the output size gets the rest
        let shares: Vec<f64> = (0..3).map(|k| scale_time_share(3, k)).collect();
        assert!((shares[0] - 0.25).abs() < 1e-12 && (shares[1] - 1.0 / 3.0).abs() < 1e-12 && shares[2] == 1.0);
        assert_eq!(scale_time_share(1, 0), 1.0);
        // unused evaluations roll over, later scales keep theirs
        let s = p.schedule(512, 384);
        assert_eq!(scale_budget(&s, 0, 500), 125);
        assert_eq!(scale_budget(&s, 1, 450), 200);
        assert_eq!(scale_budget(&s, 2, 300), 300);
        for s in [p.schedule(512, 384), few.schedule(512, 512), big.schedule(4096, 2048)] {
            let total: usize = s.iter().map(|x| x.2).sum();
            assert!(total == 500 || total == 30 || total == 1000);
        }
    }
}
