//! Every parameter of a job and its default, declared once: the CLI lays its flags over
//! [`Params::default`] (and shows these defaults in `--help`), the daemon's protocol carries
//! the struct as JSON, watch folders read it from TOML.

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use super::image_io::MIN_SIDE;
use super::objective::Coefficients;
use super::optim::{AdamConfig, LbfgsConfig, Optimizer};
use super::vgg::Pooling;
use super::weights::{layer_index, vgg19_layers};

/// β per unit of `strength` (see [`Params::coefficients`]).
pub const STYLE_WEIGHT_PER_STRENGTH: f64 = 500.0;

/// L-BFGS's first step at each scale moves the pixel with the largest gradient by this much (of
/// the `[0,1]` range); the line search then adapts it. torch's default first step, min(1, 1/|g|₁),
/// is ~1e-6 of a pixel on this objective and costs a handful of evaluations per scale to grow.
pub const FIRST_STEP: f64 = 0.1;

/// A line search gives up after this many trials without a value below its start (see
/// `LbfgsConfig::patience`): a bf16 network's values carry about 0.4% of rounding noise, and
/// measured from the content at 512 px (α = 1, β = 1e5) every shorter trial stayed above the
/// start while the same search on f32 found a decrease at its second trial.
pub const SEARCH_PATIENCE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Lbfgs,
    Adam,
}

impl OptimizerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Lbfgs => "lbfgs",
            OptimizerKind::Adam => "adam",
        }
    }
}

/// The starting image (paper fig. 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// Seeded uniform white noise in `[0,1]`.
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
    /// Budget of objective evaluations (one forward + backward each). `iterations` on the wire
    /// and on the command line (`--iterations`), for compatibility.
    #[serde(rename = "iterations", alias = "evaluations")]
    pub evaluations: usize,
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
    /// of the schedule gets a share of the time (see `schedule::time_share`) and the job ends at
    /// the first evaluation past the budget with the best image evaluated at the last scale
    /// reached (the evaluation budget still applies).
    pub max_seconds: Option<f64>,
    /// Coarse-to-fine: optimise at halved sizes first (`Some(true)`), or at the output size only
    /// (`Some(false)`); `None` lets the schedule choose from the start image and the budget
    /// (see `schedule::choose`).
    pub multiscale: Option<bool>,
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
            evaluations: 500,
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
            multiscale: None,
            min_scale: 128,
            tile: None,
            max_memory: None,
        }
    }
}

impl Params {
    /// Checks everything that can be checked without images, for `styles` style images.
    pub fn validate(&self, styles: usize) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Invalid(m));
        if styles == 0 {
            return bad("at least one style image is needed".into());
        }
        if self.evaluations == 0 {
            return bad("iterations must be at least 1".into());
        }
        if let Some(s) = self.size {
            if s < MIN_SIDE {
                return bad(format!("size {s} is below the minimum of {MIN_SIDE} px"));
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
            if w.iter().any(|&w| !(w >= 0.0 && w.is_finite())) {
                return bad(format!(
                    "style layer weights must be non-negative numbers (got {w:?}); 0 leaves a layer out"
                ));
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

    /// The `features` indices of the content layers and of the style layers (names that are
    /// not VGG19 layers are left out; [`Params::validate`] refuses them).
    pub fn layer_indices(&self) -> (Vec<usize>, Vec<usize>) {
        let indices = |names: &[String]| names.iter().filter_map(|n| layer_index(n)).collect();
        (indices(&self.content_layers), indices(&self.style_layers))
    }

    /// The deepest `features` index any content or style layer taps.
    pub fn deepest_layer(&self) -> usize {
        let (c, s) = self.layer_indices();
        c.into_iter().chain(s).max().unwrap_or(0)
    }

    /// w_l per style layer: the given ones, or 1/|S| each.
    pub fn layer_weights(&self) -> Vec<f64> {
        let n = self.style_layers.len();
        self.style_layer_weights.clone().unwrap_or_else(|| vec![1.0 / n.max(1) as f64; n])
    }

    /// The optimiser and its settings, with an L-BFGS history of `history` pairs stored in bf16
    /// or f32 (the memory plan may have shortened the requested one, or halved its storage).
    pub fn optimizer(&self, history: usize, history_bf16: bool) -> Optimizer {
        match self.optimizer {
            OptimizerKind::Lbfgs => Optimizer::Lbfgs(LbfgsConfig {
                lr: self.learning_rate.unwrap_or(1.0),
                history_size: history,
                strong_wolfe: self.line_search,
                // torch's absolute tolerances (1e-9) end runs early at this objective's scale;
                // users ask for a budget, so stop only on a zero step or gradient.
                tolerance_change: 0.0,
                tolerance_grad: 0.0,
                first_step: Some(FIRST_STEP),
                patience: Some(SEARCH_PATIENCE),
                history_bf16,
            }),
            OptimizerKind::Adam => {
                Optimizer::Adam(AdamConfig { lr: self.learning_rate.unwrap_or(0.02), ..Default::default() })
            }
        }
    }

    /// Blend weight per style image: the given ones, or equal.
    pub fn blend(&self, styles: usize) -> Vec<f64> {
        if self.style_blend.is_empty() {
            vec![1.0; styles]
        } else {
            self.style_blend.clone()
        }
    }
}

/// GiB (as users write memory limits) in bytes.
pub fn gib_to_bytes(gib: f64) -> u64 {
    (gib.max(0.0) * (1u64 << 30) as f64) as u64
}
