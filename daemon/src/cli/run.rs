//! `neural-style run`: one-shot stylisation in this process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{DeviceArgs, EngineArgs, WeightsArg};
use crate::engine::{Control, Engine, Job};
use crate::image_io::{DecodeLimits, Output, OutputFormat, Picture};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The content image (photo).
    #[arg(long, short = 'c')]
    pub content: PathBuf,
    /// A style image (painting); repeat for several, blended with --style-weights.
    #[arg(long, short = 's', required = true)]
    pub style: Vec<PathBuf>,
    /// Output file (.png or .jpg).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Bits per channel of PNG output: 8 or 16 (default: 16 when the content has more than 8).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["8", "16"]))]
    pub output_depth: Option<String>,
    /// Refuse input images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_pixels: u64,
    /// Print a JSON summary on stdout when done.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let total_start = Instant::now();
    let params = args.engine.params();
    params.validate(args.style.len())?;
    // Check the output before spending minutes on the optimisation.
    let format = OutputFormat::from_path(&args.output)?;
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(dir.is_dir(), "output folder {} does not exist; create it first", dir.display());
    }
    let limits = DecodeLimits { max_pixels: args.max_pixels, ..Default::default() };
    let content = Picture::load(&args.content, limits)?;
    let styles = args.style.iter().map(|s| Picture::load(s, limits)).collect::<Result<Vec<_>, _>>()?;
    let device = args.device.apply()?;
    let weights = args.weights.load()?;
    let layout = args.device.precision.layout(device);
    let engine = Engine::with_layout(&weights, device, layout);
    drop(weights);
    tracing::info!(device = %crate::engine::device_name(device), precision = %layout.name(), "model loaded");

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(params.iterations as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} evals  loss {msg}  ETA {eta}")
            .expect("valid template"),
    );
    let job = Job { content, styles, params };
    let result = engine.stylize(&job, &mut |p| {
        bar.set_position(p.evaluation as u64);
        bar.set_message(format!("{:.4e}", p.losses.total));
        if interrupted.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    bar.finish_and_clear();
    let out = result?;
    let sixteen_bit = match args.output_depth.as_deref() {
        Some("16") => true,
        Some(_) => false,
        None => out.high_precision && format == OutputFormat::Png,
    };
    if sixteen_bit && format != OutputFormat::Png {
        anyhow::bail!("16-bit output needs a .png file name");
    }
    Output { rgb: &out.rgb, alpha: out.alpha.as_deref(), sixteen_bit }.save(&args.output)?;
    let s = &out.summary;
    let total_seconds = total_start.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::to_value(s)?;
        v["total_seconds"] = total_seconds.into();
        v["output"] = args.output.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let weights_note = if s.pretrained { "pretrained weights" } else { "NOT PRETRAINED weights (random init)" };
    eprintln!(
        "{} {} ({}×{}) — {} evaluations, {} iterations, loss {:.4e} → {:.4e}, {:.1} s on {}, {}",
        if s.cancelled { "interrupted: wrote the current image to" } else { "wrote" },
        args.output.display(),
        s.width,
        s.height,
        s.evaluations,
        s.iterations,
        s.initial_loss,
        s.total_loss,
        s.seconds,
        s.device,
        weights_note
    );
    Ok(if s.cancelled { ExitCode::from(130) } else { ExitCode::SUCCESS })
}
