//! `neural-style bench`: performance against a PyTorch reference in the same run (benchmarks,
//! not tests). One evaluation ([`evaluation`]), the optimisation loop around it ([`overhead`]),
//! the daemon's latency ([`latency`]), time to reach PyTorch's loss ([`time_to_loss`]), and the
//! same over a suite of cases for the schedule ([`suite`]).

mod evaluation;
mod latency;
mod overhead;
mod products;
mod suite;
mod time_to_loss;
mod timing;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::args::DeviceArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Square image sizes to time (default: 256,512; with --loop: 64).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<i64>>,
    /// Timed evaluations per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Untimed evaluations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Instead: the optimisation loop per evaluation (whole single-scale runs: L-BFGS m=100,
    /// m=5, Adam) against the bare evaluation at the same --sizes, with host
    /// reads per evaluation.
    #[arg(long = "loop")]
    pub loop_overhead: bool,
    /// Evaluations of each --loop run.
    #[arg(long, default_value_t = 100)]
    pub loop_evaluations: usize,
    /// --loop: pairs of (bare evaluations, loop run) per setting; the median ratio is reported.
    #[arg(long, default_value_t = 5)]
    pub loop_runs: usize,
    /// Instead: daemon latency (warm request → first progress / result, style cache) against
    /// the one-shot CLI, with a real daemon process.
    #[arg(long)]
    pub latency: bool,
    /// Image size of the latency jobs.
    #[arg(long, default_value_t = 128)]
    pub latency_size: u32,
    /// Evaluations of the latency jobs.
    #[arg(long, default_value_t = 20)]
    pub latency_iterations: usize,
    /// Weights for the latency and time-to-loss benches (default: seeded random weights in a
    /// temporary file).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Instead: time to reach the loss of a PyTorch L-BFGS run (fp32, single scale), with
    /// neural-style's defaults under --max-seconds budgets that are fractions of PyTorch's time.
    #[arg(long)]
    pub time_to_loss: bool,
    /// Image size (longest side) of the time-to-loss comparison.
    #[arg(long, default_value_t = 256)]
    pub ttl_size: u32,
    /// Evaluations of the PyTorch reference run.
    #[arg(long, default_value_t = 300)]
    pub reference_evals: usize,
    /// --time-to-loss: also run neural-style for the reference's number of evaluations (default
    /// settings twice, then single scale) against the reference's time and loss.
    #[arg(long)]
    pub same_evaluations: bool,
    /// neural-style's time budgets as fractions of the reference's time.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2,0.35")]
    pub budgets: Vec<f64>,
    /// Content image of the time-to-loss comparison (default: the drawn sample).
    #[arg(long)]
    pub content: Option<PathBuf>,
    /// Style image of the time-to-loss comparison (default: the drawn sample).
    #[arg(long)]
    pub style: Option<PathBuf>,
    /// Write a PNG plot of loss against time (needs matplotlib in the venv).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead: the schedule suite. Per case (content × style pair, noise or content start,
    /// default or content-heavy weights, --sizes, default 128,256) PyTorch's L-BFGS for
    /// --reference-evals, then the default schedule, single scale and multi-scale under
    /// --budgets × PyTorch's time; a table (--table), a plot (--plot), JSON (--json).
    #[arg(long)]
    pub suite: bool,
    /// --suite: every pair × start × weighting at every size (default: all at the first size, a
    /// Latin square of them at the others).
    #[arg(long)]
    pub suite_full: bool,
    /// --suite: only the cases whose name contains this (e.g. "content", "256px", "tubingen").
    #[arg(long)]
    pub only: Option<String>,
    /// --suite: the folder with the pairs' images.
    #[arg(long, default_value = "../shared/images")]
    pub images: PathBuf,
    /// --suite: write the Markdown table here.
    #[arg(long)]
    pub table: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.apply()?;
    let v = if args.loop_overhead {
        let sizes = args.sizes.clone().unwrap_or_else(|| vec![64]);
        let options = overhead::Options {
            sizes,
            evaluations: args.loop_evaluations,
            repeats: args.repeats.max(20),
            runs: args.loop_runs,
        };
        Some(overhead::run(&options, device, args.device.cuda())?)
    } else if args.latency {
        let options = latency::Options { size: args.latency_size, evaluations: args.latency_iterations };
        Some(latency::run(&options, args.weights.clone())?)
    } else if args.suite {
        let dir = tempfile::tempdir()?;
        let (weights, path) = time_to_loss::weights(args.weights.as_deref(), dir.path())?;
        let engine = args.device.engine(&weights, device);
        let sizes = args.sizes.clone().unwrap_or_else(|| vec![128, 256]);
        let options = suite::Options {
            sizes: sizes.into_iter().map(|s| u32::try_from(s).unwrap_or(u32::MAX)).collect(),
            full: args.suite_full,
            reference_evals: args.reference_evals,
            budgets: args.budgets.clone(),
            images: args.images.clone(),
            only: args.only.clone(),
            plot: args.plot.clone(),
            table: args.table.clone(),
        };
        Some(suite::run(&options, device, &engine, &path)?)
    } else if args.time_to_loss {
        let dir = tempfile::tempdir()?;
        let (weights, path) = time_to_loss::weights(args.weights.as_deref(), dir.path())?;
        let engine = args.device.engine(&weights, device);
        let options = time_to_loss::Options {
            size: args.ttl_size,
            reference_evals: args.reference_evals,
            budgets: args.budgets.clone(),
            content: args.content.clone(),
            style: args.style.clone(),
            plot: args.plot.clone(),
            same_evaluations: args.same_evaluations,
        };
        Some(time_to_loss::run(&options, device, &engine, &path)?)
    } else {
        let options = evaluation::Options {
            sizes: args.sizes.clone().unwrap_or_else(|| vec![256, 512]),
            repeats: args.repeats,
            warmup: args.warmup,
            no_reference: args.no_reference,
            json: args.json,
        };
        evaluation::run(&options, device, args.device.precision.layout(device), args.device.cuda())?;
        None
    };
    if let (Some(v), true) = (v, args.json) {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
