//! `neural-style bench`: one objective evaluation (forward + backward to the input) timed here
//! and in PyTorch eager (the venv's torch, same objective, same sizes, same thread count) in
//! the same run; prints the ratios.

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tch::{Device, Kind, Tensor};

use super::DeviceArgs;
use crate::engine::{device_name, Engine, Params};
use crate::python;
use crate::vgg::Layout;
use crate::weights::Weights;

const REFERENCE: &str = include_str!("../../python/bench_reference.py");

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Square image sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "256,512")]
    pub sizes: Vec<i64>,
    /// Timed evaluations per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Untimed evaluations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// bfloat16 network (image, Grams and sums stay f32).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last (NHWC-strided) activations and weights.
    #[arg(long)]
    pub channels_last: bool,
    /// Skip the PyTorch reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of one evaluation at `size`×`size` in this process.
fn time_engine(engine: &Engine, size: i64, args: &BenchArgs) -> f64 {
    let device = engine.device();
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let content = Tensor::rand([1, 3, size, size], opts).to_device(device);
    let style = Tensor::rand([1, 3, size, size], opts).to_device(device);
    let x = Tensor::rand([1, 3, size, size], opts).to_device(device);
    let objective = engine.objective(&content, &[style], &Params::default());
    let mut times = Vec::new();
    for i in 0..args.warmup + args.repeats {
        let t0 = Instant::now();
        let (_, g) = objective.evaluate(engine.vgg(), &x);
        drop(g);
        sync(device);
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    median(times)
}

fn time_reference(size: i64, device: Device, args: &BenchArgs) -> anyhow::Result<f64> {
    let script = python::script_file("bench_reference", REFERENCE)?;
    let py = python::interpreter();
    let mut cmd = Command::new(&py);
    cmd.arg(&script)
        .args([
            "--size",
            &size.to_string(),
            "--repeats",
            &args.repeats.to_string(),
        ])
        .args([
            "--warmup",
            &args.warmup.to_string(),
            "--device",
            &device_name(device),
        ])
        .args(["--threads", &tch::get_num_threads().to_string()]);
    if args.bf16 {
        cmd.arg("--bf16");
    }
    if args.channels_last {
        cmd.arg("--channels-last");
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run the PyTorch reference with {}", py.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the PyTorch reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the reference's JSON")?;
    v["median"]
        .as_f64()
        .context("reference JSON without median")
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.apply()?;
    let layout = Layout {
        bf16: args.bf16,
        channels_last: args.channels_last,
    };
    let engine = Engine::with_layout(&Weights::random(0), device, layout);
    let mut rows = Vec::new();
    eprintln!(
        "one evaluation (VGG19 to relu5_1, avg pooling, 5 Grams + content, backward to input), {} threads, {}, median of {}",
        tch::get_num_threads(),
        device_name(device),
        args.repeats
    );
    eprintln!(
        "{:>6}  {:>14}  {:>14}  {:>7}",
        "size", "neural-style s", "pytorch s", "ratio"
    );
    for &size in &args.sizes {
        anyhow::ensure!(size >= 32, "sizes must be at least 32");
        let ours = time_engine(&engine, size, &args);
        let reference = if args.no_reference {
            None
        } else {
            Some(time_reference(size, device, &args)?)
        };
        let ratio = reference.map(|r| ours / r);
        eprintln!(
            "{size:>6}  {ours:>14.4}  {:>14}  {:>7}",
            reference.map(|r| format!("{r:.4}")).unwrap_or("-".into()),
            ratio.map(|r| format!("{r:.3}")).unwrap_or("-".into())
        );
        rows.push(serde_json::json!({"size": size, "neural_style_s": ours, "pytorch_s": reference, "ratio": ratio}));
    }
    if args.json {
        let v = serde_json::json!({
            "device": device_name(device), "threads": tch::get_num_threads(),
            "bf16": args.bf16, "channels_last": args.channels_last, "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
