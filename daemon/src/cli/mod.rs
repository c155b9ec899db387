//! The `neural-style` command line: flags (clap), logging, dispatch. Errors end here as
//! messages that say what happened and what to do, and a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine::{Init, OptimizerKind, Params};
use crate::vgg::Pooling;

mod bench;
mod daemon;
mod latency;
mod run;
mod samples;
mod time_to_loss;
mod weights;

#[derive(Parser, Debug)]
#[command(name = "neural-style", version, about = "Gatys et al. neural style transfer (VGG19, libtorch)")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stylise one content image with one or more style images.
    Run(Box<run::RunArgs>),
    /// Manage VGG19 weights: fetch the pretrained ones, make random ones, inspect a file.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Time one objective evaluation against PyTorch eager (the venv's torch) in the same run.
    Bench(bench::BenchArgs),
    /// Draw a sample content and style image (for trying things out without images at hand).
    Samples(samples::SamplesArgs),
    /// Run the daemon: VGG19 stays loaded and serves jobs over a local socket.
    Serve(Box<daemon::ServeArgs>),
    /// Show the daemon's state: device, weights, running job, queue, cache.
    Status(daemon::StatusArgs),
    /// Cancel a job of the daemon.
    Cancel(daemon::CancelArgs),
    /// Stop the daemon.
    Stop(daemon::StopArgs),
    /// Print the effective daemon configuration and paths.
    Config(Box<daemon::ConfigArgs>),
}

/// Where the model runs.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice, usually the number of cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Network precision: auto (bf16 + channels-last where the hardware has fast bf16), fp32,
    /// bf16. The image, Gram matrices and loss sums are always f32.
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: crate::vgg::Precision,
}

impl DeviceArgs {
    pub fn apply(&self) -> anyhow::Result<tch::Device> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n >= 1, "--threads must be at least 1");
            tch::set_num_threads(n);
        }
        crate::engine::parse_device(&self.device).map_err(anyhow::Error::msg)
    }
}

/// Engine parameters shared by every command that stylises.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Longest side of the output in pixels (0 keeps the content's size).
    #[arg(long, default_value_t = 512)]
    pub size: u32,
    /// Budget of objective evaluations (forward + backward each).
    #[arg(long, default_value_t = 500)]
    pub iterations: usize,
    #[arg(long, value_enum, default_value = "lbfgs")]
    pub optimizer: OptimizerKind,
    /// L-BFGS history size.
    #[arg(long, default_value_t = 100)]
    pub lbfgs_history: usize,
    /// Fixed steps (lr) instead of L-BFGS's strong-Wolfe line search (torch.optim.LBFGS's
    /// default; fewer evaluations per iteration but it can diverge or stall).
    #[arg(long)]
    pub no_line_search: bool,
    /// Step size (L-BFGS lr, default 1; Adam learning rate, default 0.02).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Starting image.
    #[arg(long, value_enum, default_value = "noise")]
    pub init: Init,
    /// Seed of the noise init (same seed, same device ⇒ same result).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "avg")]
    pub pooling: Pooling,
    /// Content layers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "relu4_2")]
    pub content_layers: Vec<String>,
    /// Style layers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1")]
    pub style_layers: Vec<String>,
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
    #[arg(long, default_value_t = 1.0)]
    pub strength: f64,
    /// Weight of the total-variation smoothness term.
    #[arg(long, default_value_t = 0.0)]
    pub tv_weight: f64,
    /// Blend weights of the style images, comma-separated, one per --style.
    #[arg(long, value_delimiter = ',')]
    pub style_weights: Option<Vec<f64>>,
    /// Resize style images to the content's longest side times this.
    #[arg(long, default_value_t = 1.0)]
    pub style_scale: f64,
    /// Keep the content's colours (luminance-only transfer in YIQ).
    #[arg(long)]
    pub preserve_colors: bool,
    /// Time budget in seconds: the scales share it (coarse half, output size half) and the job
    /// ends at the first evaluation past it with the best image so far.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Optimise at the output size only (default: coarse-to-fine, sizes halving down to
    /// --min-scale).
    #[arg(long)]
    pub single_scale: bool,
    /// Longest side of the coarsest scale.
    #[arg(long, default_value_t = 128)]
    pub min_scale: u32,
    /// Tile core side in px for images too large to optimise whole: 0 never tiles; default:
    /// tiles only when the memory estimate exceeds --max-memory.
    #[arg(long)]
    pub tile: Option<u32>,
    /// Memory a job may use, in GiB (default: 80% of the available RAM; on CUDA 90% of the
    /// device's memory). Larger jobs are tiled, or refused when even tiles do not fit.
    #[arg(long)]
    pub max_memory: Option<f64>,
}

impl EngineArgs {
    pub fn params(&self) -> Params {
        Params {
            size: (self.size != 0).then_some(self.size),
            iterations: self.iterations,
            optimizer: self.optimizer,
            lbfgs_history: self.lbfgs_history,
            line_search: !self.no_line_search,
            learning_rate: self.learning_rate,
            init: self.init,
            seed: self.seed,
            pooling: self.pooling,
            content_layers: self.content_layers.clone(),
            style_layers: self.style_layers.clone(),
            style_layer_weights: self.style_layer_weights.clone(),
            content_weight: self.content_weight,
            style_weight: self.style_weight,
            strength: self.strength,
            tv_weight: self.tv_weight,
            style_blend: self.style_weights.clone().unwrap_or_default(),
            style_scale: self.style_scale,
            preserve_colors: self.preserve_colors,
            max_seconds: self.max_seconds,
            multiscale: !self.single_scale,
            min_scale: self.min_scale,
            tile: self.tile,
            max_memory: self.max_memory.map(|g| (g.max(0.0) * (1u64 << 30) as f64) as u64),
        }
    }
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
    pub fn load(&self) -> anyhow::Result<crate::weights::Weights> {
        let path = crate::weights::resolve(self.weights.as_deref())?;
        let w = crate::weights::Weights::load(&path)?;
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Samples(args) => samples::run(args),
        Command::Serve(args) => daemon::serve(*args),
        Command::Status(args) => daemon::status(args),
        Command::Cancel(args) => daemon::cancel(args),
        Command::Stop(args) => daemon::stop(args),
        Command::Config(args) => daemon::config(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
