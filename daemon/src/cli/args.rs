//! Flags shared by several commands, and how they become library configuration: engine flags
//! are laid over [`Params::default`] (every flag optional), and `--help` shows the defaults of
//! that one source ([`with_param_defaults`]). The libraries never see clap: the value enums of
//! the engine and the daemon get their [`ValueEnum`] implementations here.

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, ValueEnum};
use neural_style_protocol::socket::socket_path;
use neural_style_protocol::Client;
use serde_json::{Map, Value};

use crate::engine::params::gib_to_bytes;
use crate::engine::vgg::{Pooling, Precision};
use crate::engine::weights::{self, Weights};
use crate::engine::{parse_device, Init, OptimizerKind, Params};
use crate::server::config::{Config, OnSignal};

/// `impl ValueEnum` for a library enum: variant, name, optional help.
macro_rules! value_enum {
    ($ty:ty { $($variant:path => $name:literal $(: $help:literal)?),* $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($variant),*]
            }
            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self { $($variant => PossibleValue::new($name)$(.help($help))?),* })
            }
        }
    };
}

value_enum!(OptimizerKind { OptimizerKind::Lbfgs => "lbfgs", OptimizerKind::Adam => "adam" });
value_enum!(Init {
    Init::Noise => "noise": "Seeded uniform white noise in [0,1]",
    Init::Content => "content",
    Init::Style => "style": "The first style image, resized to the output size",
});
value_enum!(Pooling { Pooling::Avg => "avg", Pooling::Max => "max" });
value_enum!(Precision {
    Precision::Auto => "auto": "bf16 + channels-last where the hardware has fast bf16 (CUDA; CPUs with AVX512-BF16 or AMX), f32 elsewhere",
    Precision::Fp32 => "fp32",
    Precision::Bf16 => "bf16",
    Precision::Fp16 => "fp16": "IEEE half precision + channels-last (for GPUs; slow on most CPUs)",
});
value_enum!(OnSignal {
    OnSignal::Cancel => "cancel": "Stop the running job at once (its client gets `cancelled`)",
    OnSignal::Finish => "finish": "Let the running job finish; queued jobs are cancelled",
});

/// Where the model runs.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = Config::default().device)]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice, usually the number of cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Network precision: auto (bf16 + channels-last where the hardware has fast bf16), fp32,
    /// bf16. The image, Gram matrices and loss sums are always f32.
    #[arg(long, value_enum, default_value_t = Config::default().precision)]
    pub precision: Precision,
    /// cuDNN benchmark mode (CUDA): time every convolution algorithm per new image size (true)
    /// or take cuDNN's heuristics (false).
    #[arg(long, default_value_t = Config::default().cudnn_benchmark, action = clap::ArgAction::Set)]
    pub cudnn_benchmark: bool,
    /// Evaluate small scales through CUDA graphs (one launch per evaluation).
    #[arg(long, default_value_t = Config::default().cuda_graphs, action = clap::ArgAction::Set)]
    pub cuda_graphs: bool,
    /// The L-BFGS history's products by CUDA kernels of our own, compiled at start-up (true), or
    /// by cuBLAS (false).
    #[arg(long, default_value_t = Config::default().cuda_kernels, action = clap::ArgAction::Set)]
    pub cuda_kernels: bool,
}

impl DeviceArgs {
    pub fn apply(&self) -> anyhow::Result<tch::Device> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n >= 1, "--threads must be at least 1");
            tch::set_num_threads(n);
        }
        parse_device(&self.device).map_err(anyhow::Error::msg)
    }

    /// The engine for these flags (device from [`DeviceArgs::apply`]).
    pub fn engine(&self, weights: &Weights, device: tch::Device) -> crate::engine::Engine {
        crate::engine::Engine::with_options(weights, device, self.precision.layout(device), self.cuda())
    }

    /// The CUDA settings of these flags.
    pub fn cuda(&self) -> crate::engine::CudaOptions {
        crate::engine::CudaOptions {
            cudnn_benchmark: self.cudnn_benchmark,
            graphs: self.cuda_graphs,
            kernels: self.cuda_kernels,
        }
    }
}

/// Engine parameters shared by every command that stylizes. Each one is optional: what is not
/// given keeps [`Params::default`] (shown in `--help` by [`with_param_defaults`]).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Longest side of the output in pixels (0 keeps the content's size).
    #[arg(long)]
    pub size: Option<u32>,
    /// Budget of objective evaluations (forward + backward each).
    #[arg(long)]
    pub iterations: Option<usize>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// L-BFGS history size.
    #[arg(long)]
    pub lbfgs_history: Option<usize>,
    /// Fixed steps (lr) instead of L-BFGS's strong-Wolfe line search (torch.optim.LBFGS's
    /// default; fewer evaluations per iteration but it can diverge or stall).
    #[arg(long)]
    pub no_line_search: bool,
    /// Step size (L-BFGS lr, default 1; Adam learning rate, default 0.02).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Starting image.
    #[arg(long, value_enum)]
    pub init: Option<Init>,
    /// Seed of the noise init (same seed, same device ⇒ same result).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, value_enum)]
    pub pooling: Option<Pooling>,
    /// Content layers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub content_layers: Option<Vec<String>>,
    /// Style layers, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub style_layers: Option<Vec<String>>,
    /// Weights w_l of the style layers, comma-separated (default 1/|layers| each).
    #[arg(long, value_delimiter = ',')]
    pub style_layer_weights: Option<Vec<f64>>,
    /// α of eq. 7 (default: size-aware, 1/(N·M) of the content layers).
    #[arg(long)]
    pub content_weight: Option<f64>,
    /// β of eq. 7 (default: strength × 500).
    #[arg(long)]
    pub style_weight: Option<f64>,
    /// Style strength, size-independent (used when --content-weight/--style-weight are not given).
    #[arg(long)]
    pub strength: Option<f64>,
    /// Weight of the total-variation smoothness term.
    #[arg(long)]
    pub tv_weight: Option<f64>,
    /// Blend weights of the style images, comma-separated, one per --style.
    #[arg(long, value_delimiter = ',')]
    pub style_weights: Option<Vec<f64>>,
    /// Resize style images to the content's longest side times this.
    #[arg(long)]
    pub style_scale: Option<f64>,
    /// Keep the content's colours (luminance-only transfer in YIQ).
    #[arg(long)]
    pub preserve_colors: bool,
    /// Time budget in seconds: the scales share it (coarse half, output size half) and the job
    /// ends at the first evaluation past it with the best image so far.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Optimise at the output size only (default: the schedule chooses from the start image;
    /// the summary says what it chose).
    #[arg(long, conflicts_with = "multi_scale")]
    pub single_scale: bool,
    /// Coarse-to-fine whatever the start: sizes halving down to --min-scale first.
    #[arg(long)]
    pub multi_scale: bool,
    /// Longest side of the coarsest scale.
    #[arg(long)]
    pub min_scale: Option<u32>,
    /// Tile core side in px for images too large to optimise whole: 0 never tiles; default:
    /// tiles only when the memory estimate exceeds --max-memory.
    #[arg(long)]
    pub tile: Option<u32>,
    /// Memory a job may use, in GiB (default: 80% of the available RAM; on CUDA 90% of the
    /// device's memory). Larger jobs are tiled, or refused when even tiles do not fit.
    #[arg(long)]
    pub max_memory: Option<f64>,
}

/// The engine flags whose defaults `--help` shows, and their [`Params`] field (JSON name).
const PARAM_FLAGS: &[(&str, &str)] = &[
    ("size", "size"),
    ("iterations", "iterations"),
    ("optimizer", "optimizer"),
    ("lbfgs_history", "lbfgs_history"),
    ("learning_rate", "learning_rate"),
    ("init", "init"),
    ("seed", "seed"),
    ("pooling", "pooling"),
    ("content_layers", "content_layers"),
    ("style_layers", "style_layers"),
    ("style_layer_weights", "style_layer_weights"),
    ("content_weight", "content_weight"),
    ("style_weight", "style_weight"),
    ("strength", "strength"),
    ("tv_weight", "tv_weight"),
    ("style_scale", "style_scale"),
    ("max_seconds", "max_seconds"),
    ("min_scale", "min_scale"),
    ("tile", "tile"),
];

/// A default as a flag value: numbers as Rust prints them (`1`, not `1.0`), lists
/// comma-separated; `None` where the default is "not set".
fn flag_value(v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Bool(_) | Value::Object(_) => None,
        Value::Number(n) => Some(match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => f.to_string(),
            _ => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(a.iter().filter_map(flag_value).collect::<Vec<_>>().join(",")),
    }
}

/// The default of each engine flag, from [`Params::default`]: `(flag id, value)`.
pub fn param_defaults() -> Vec<(&'static str, String)> {
    let defaults = serde_json::to_value(Params::default()).expect("params serialise");
    PARAM_FLAGS.iter().filter_map(|&(flag, field)| flag_value(&defaults[field]).map(|v| (flag, v))).collect()
}

/// Gives every engine flag of `cmd` and its subcommands its default from [`Params::default`],
/// so `--help` shows it and a flag not given parses to it.
pub fn with_param_defaults(mut cmd: clap::Command) -> clap::Command {
    let has = |cmd: &clap::Command, id: &str| cmd.get_arguments().any(|a| a.get_id() == id);
    for (flag, value) in param_defaults() {
        if has(&cmd, flag) {
            // once per command at start-up: clap keeps defaults as 'static strings
            let value: &'static str = Box::leak(value.into_boxed_str());
            cmd = cmd.mut_arg(flag, |a| a.default_value(value));
        }
    }
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, with_param_defaults);
    }
    cmd
}

impl EngineArgs {
    /// The flags laid over [`Params::default`].
    pub fn params(&self) -> Params {
        let d = Params::default();
        Params {
            size: match self.size {
                Some(0) => None,
                Some(s) => Some(s),
                None => d.size,
            },
            evaluations: self.iterations.unwrap_or(d.evaluations),
            optimizer: self.optimizer.unwrap_or(d.optimizer),
            lbfgs_history: self.lbfgs_history.unwrap_or(d.lbfgs_history),
            line_search: d.line_search && !self.no_line_search,
            learning_rate: self.learning_rate.or(d.learning_rate),
            init: self.init.unwrap_or(d.init),
            seed: self.seed.unwrap_or(d.seed),
            pooling: self.pooling.unwrap_or(d.pooling),
            content_layers: self.content_layers.clone().unwrap_or(d.content_layers),
            style_layers: self.style_layers.clone().unwrap_or(d.style_layers),
            style_layer_weights: self.style_layer_weights.clone().or(d.style_layer_weights),
            content_weight: self.content_weight.or(d.content_weight),
            style_weight: self.style_weight.or(d.style_weight),
            strength: self.strength.unwrap_or(d.strength),
            tv_weight: self.tv_weight.unwrap_or(d.tv_weight),
            style_blend: self.style_weights.clone().unwrap_or(d.style_blend),
            style_scale: self.style_scale.unwrap_or(d.style_scale),
            preserve_colors: d.preserve_colors || self.preserve_colors,
            max_seconds: self.max_seconds.or(d.max_seconds),
            multiscale: match (self.single_scale, self.multi_scale) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => d.multiscale,
            },
            min_scale: self.min_scale.unwrap_or(d.min_scale),
            tile: self.tile.or(d.tile),
            max_memory: self.max_memory.map(gib_to_bytes).or(d.max_memory),
        }
    }
}

/// `params` as a request's (or a watch rule's) `params` object: the style blend travels with
/// each style image instead.
pub fn request_params(params: &Params) -> Map<String, Value> {
    let Value::Object(mut map) = serde_json::to_value(params).expect("params serialise") else {
        unreachable!("params serialise to an object")
    };
    map.remove("style_blend");
    map
}

/// Which weights file to use.
#[derive(Args, Debug, Clone)]
pub struct WeightsArg {
    /// VGG19 weights (safetensors). Default: $NEURAL_STYLE_WEIGHTS, then the data directory.
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

impl WeightsArg {
    /// Resolves and loads, logging loudly when the weights are not pretrained.
    pub fn load(&self) -> anyhow::Result<Weights> {
        let path = weights::resolve(self.weights.as_deref())?;
        let w = Weights::load(&path)?;
        if w.pretrained {
            tracing::info!(path = %path.display(), source = %w.source, "weights: pretrained VGG19");
        } else {
            tracing::warn!(
                path = %path.display(), source = %w.source,
                "weights are NOT PRETRAINED (random init): results will not look like the style; run `neural-style weights fetch`"
            );
        }
        Ok(w)
    }
}

/// `--socket` for every command that talks to the daemon.
#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// The daemon's socket (default: $NEURAL_STYLE_SOCKET, then the runtime directory).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    pub fn path(&self) -> PathBuf {
        socket_path(self.socket.as_deref())
    }

    pub fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.path(), concat!("neural-style-cli/", env!("CARGO_PKG_VERSION")))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn parse(args: &[&str]) -> Params {
        let cmd = with_param_defaults(<Flags as clap::CommandFactory>::command());
        let m = cmd.try_get_matches_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        <Flags as clap::FromArgMatches>::from_arg_matches(&m).unwrap().engine.params()
    }

    #[test]
    fn flags_lay_over_the_one_set_of_defaults() {
        let d = serde_json::to_value(Params::default()).unwrap();
        assert_eq!(serde_json::to_value(parse(&[])).unwrap(), d, "no flags: exactly Params::default()");
        let p = parse(&["--size", "0", "--iterations", "7", "--single-scale", "--style-layers", "relu1_1,relu2_1"]);
        assert_eq!((p.size, p.evaluations, p.multiscale), (None, 7, Some(false)));
        assert_eq!(p.style_layers, ["relu1_1", "relu2_1"]);
        // the defaults --help shows are Params::default()'s
        let shown: std::collections::HashMap<_, _> = param_defaults().into_iter().collect();
        assert_eq!(shown["size"], "512");
        assert_eq!(shown["iterations"], d["iterations"].to_string());
        assert_eq!(shown["strength"], "1");
        assert_eq!(shown["style_layers"], "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1");
        assert!(!shown.contains_key("content_weight"), "no default: not shown");
    }
}
