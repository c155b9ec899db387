//! The evaluation bench: one objective evaluation (forward + backward to the input) timed here
//! and in PyTorch eager (the venv's torch, same objective, same sizes, same thread count) in
//! the same run; prints the ratios, the convolutions' FLOPs and rates, and the precision
//! ceiling (one large convolution per precision).

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use super::timing::{median, sync};
use crate::cli::python;
use crate::engine::cost::evaluation_conv_flops;
use crate::engine::graph::{self, Captured};
use crate::engine::host;
use crate::engine::objective::Objective;
use crate::engine::vgg::{to_layout, Layout, NetDtype};
use crate::engine::weights::Weights;
use crate::engine::{device_name, CudaOptions, Engine, Params};

/// What to time.
pub struct Options {
    /// Square image sizes.
    pub sizes: Vec<i64>,
    /// Timed evaluations per size (the median is reported).
    pub repeats: usize,
    /// Untimed evaluations first.
    pub warmup: usize,
    /// Skip the PyTorch reference.
    pub no_reference: bool,
    /// Print the results as JSON on stdout.
    pub json: bool,
}

/// The objective of the timed evaluations at `size`×`size` (seeded images) and the point x.
fn problem(engine: &Engine, size: i64) -> (Objective, Tensor) {
    let device = engine.device();
    tch::manual_seed(1);
    let opts = (Kind::Float, Device::Cpu);
    let content = Tensor::rand([1, 3, size, size], opts).to_device(device);
    let style = Tensor::rand([1, 3, size, size], opts).to_device(device);
    let x = Tensor::rand([1, 3, size, size], opts).to_device(device);
    (engine.objective(&content, &[style], &Params::default()), x)
}

/// Median seconds of one evaluation at `size`×`size` in this process.
fn time_engine(engine: &Engine, size: i64, args: &Options) -> f64 {
    let device = engine.device();
    let (objective, x) = problem(engine, size);
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

/// The same evaluation captured as a CUDA graph ([`graph::Captured`]): median seconds of a
/// replay (input copied in, outputs copied out, value read), and how far its value and
/// gradient are from an eager evaluation's (relative: |Δ value| / |value|, max |Δ g| / max |g|).
fn time_graph(engine: &Engine, size: i64, args: &Options) -> anyhow::Result<(f64, f64, f64)> {
    let device = engine.device();
    let (objective, x) = problem(engine, size);
    let f = |x: &Tensor| objective.evaluate_terms(engine.vgg(), x);
    let eager = f(&x);
    let (_, graph) = Captured::capture(&x, &f).map_err(anyhow::Error::msg)?;
    let (value_diff, grad_diff) = graph.disagreement(&x, &eager);
    let mut times = Vec::new();
    for i in 0..args.warmup + args.repeats {
        let t0 = Instant::now();
        let (terms, g) = graph.replay(&x);
        drop((host::read(&terms), g));
        sync(device);
        if i >= args.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((median(times), value_diff, grad_diff))
}

/// Throughput in GFLOP/s of one large 3×3 convolution (256 → 256 channels at 128², the bulk of
/// VGG19's work) in `layout` on `device`, best of 5: the rate the network's kernels reach in
/// that precision here. Its ratio between precisions bounds what precision alone can gain.
fn conv_gflops(layout: Layout, device: Device) -> f64 {
    let (c, side) = (256, 128);
    let x = to_layout(&Tensor::randn([1, c, side, side], (Kind::Float, device)), layout);
    let w = to_layout(&(Tensor::randn([c, c, 3, 3], (Kind::Float, device)) * 0.02), layout);
    let mut best = f64::INFINITY;
    for i in 0..6 {
        let t0 = Instant::now();
        drop(crate::engine::backward::no_grad(|| x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1)));
        sync(device);
        if i > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    2.0 * (c * c * 9 * side * side) as f64 / best / 1e9
}

fn time_reference(size: i64, device: Device, layout: Layout, args: &Options) -> anyhow::Result<f64> {
    let script = python::script_file("bench_reference", python::BENCH_REFERENCE)?;
    let py = python::interpreter();
    let mut cmd = Command::new(&py);
    cmd.arg(&script)
        .arg("evaluation")
        .args(["--size", &size.to_string(), "--repeats", &args.repeats.to_string()])
        .args(["--warmup", &args.warmup.to_string(), "--device", &device_name(device)])
        .args(["--threads", &tch::get_num_threads().to_string()]);
    match layout.dtype {
        NetDtype::F32 => {}
        NetDtype::Bf16 => {
            cmd.arg("--bf16");
        }
        NetDtype::F16 => {
            cmd.arg("--fp16");
        }
    }
    if layout.channels_last {
        cmd.arg("--channels-last");
    }
    let out = cmd.output().with_context(|| format!("cannot run the PyTorch reference with {}", py.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the PyTorch reference failed: {}",
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the reference's JSON")?;
    v["median"].as_f64().context("reference JSON without median")
}

/// Runs the evaluation bench on `device` with the network in `layout`.
pub fn run(args: &Options, device: Device, layout: Layout, cuda: CudaOptions) -> anyhow::Result<()> {
    let weights = Weights::random(0);
    let ours = Engine::with_options(&weights, device, layout, cuda);
    let fp32 = (layout != Layout::FP32).then(|| Engine::with_options(&weights, device, Layout::FP32, cuda));
    eprintln!(
        "one objective evaluation (VGG19 to relu5_1, avg pooling, 5 Grams + content, backward to the input); \
         {} threads, {}, median of {}; neural-style default precision: {}",
        tch::get_num_threads(),
        device_name(device),
        args.repeats,
        layout.name()
    );
    eprintln!(
        "{:>5} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "size", "ours s", "ours fp32 s", "torch fp32 s", "torch same s", "ratio", "fp32 ratio", "same ratio"
    );
    let mut rows = Vec::new();
    // per size: convolution GFLOP, and the GFLOP/s of our default and fp32 paths
    let mut rates = Vec::new();
    let fmt = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
    for &size in &args.sizes {
        anyhow::ensure!(size >= 32, "sizes must be at least 32");
        let t_ours = time_engine(&ours, size, args);
        let t_fp32 = fp32.as_ref().map(|e| time_engine(e, size, args)).unwrap_or(t_ours);
        let (t_torch, t_torch_same) = if args.no_reference {
            (None, None)
        } else {
            let base = time_reference(size, device, Layout::FP32, args)?;
            let same = if layout == Layout::FP32 { base } else { time_reference(size, device, layout, args)? };
            (Some(base), Some(same))
        };
        let ratio = t_torch.map(|r| t_ours / r);
        let ratio_fp32 = t_torch.map(|r| t_fp32 / r);
        let ratio_same = t_torch_same.map(|r| t_ours / r);
        eprintln!(
            "{size:>5} {t_ours:>12.4} {t_fp32:>12.4} {:>12} {:>12} {:>9} {:>9} {:>9}",
            fmt(t_torch, 4),
            fmt(t_torch_same, 4),
            fmt(ratio, 3),
            fmt(ratio_fp32, 3),
            fmt(ratio_same, 3)
        );
        let graphed = if device.is_cuda() && graph::AVAILABLE {
            let (t, dv, dg) = time_graph(&ours, size, args)?;
            eprintln!(
                "       CUDA graph replay {t:.4} s = {:.3}× the eager evaluation; against eager: value {dv:.1e}, \
                 gradient {dg:.1e} (relative)",
                t / t_ours
            );
            Some(serde_json::json!({"seconds": t, "over_eager": t / t_ours, "value_rel_diff": dv, "grad_rel_diff": dg}))
        } else {
            None
        };
        let gflop = evaluation_conv_flops(&Params::default(), size) / 1e9;
        let (ours_rate, fp32_rate) = (gflop / t_ours, gflop / t_fp32);
        rates.push((size, gflop, ours_rate, fp32_rate));
        rows.push(serde_json::json!({
            "size": size, "neural_style_s": t_ours, "neural_style_fp32_s": t_fp32,
            "pytorch_fp32_s": t_torch, "pytorch_same_layout_s": t_torch_same,
            "ratio": ratio, "ratio_fp32": ratio_fp32, "ratio_same_layout": ratio_same,
            "conv_gflop": gflop, "neural_style_gflops": ours_rate, "neural_style_fp32_gflops": fp32_rate,
            "cuda_graph": graphed,
        }));
    }
    eprintln!("ratio = ours (default precision) / PyTorch eager fp32 NCHW; fp32 ratio = ours fp32 / the same; same ratio = ours / PyTorch with our layout");
    // The ceiling: an evaluation is convolutions, so at equal FLOPs the reduced precision's
    // advantage is its convolution throughput over f32's here.
    let conv_f32 = conv_gflops(Layout::FP32, device);
    let conv_working = if layout == Layout::FP32 { conv_f32 } else { conv_gflops(layout, device) };
    eprintln!(
        "one 256→256 3×3 convolution at 128² here: fp32 {conv_f32:.0} GFLOP/s, {} {conv_working:.0} GFLOP/s \
         ({:.2}x): the same FLOPs in {} take about {:.2} of the fp32 time at best",
        layout.name(),
        conv_working / conv_f32,
        layout.name(),
        conv_f32 / conv_working
    );
    for (size, gflop, ours, ours_fp32) in rates {
        eprintln!(
            "{size:>5}: {gflop:.1} GFLOP of convolutions; ours {ours:.0} GFLOP/s ({:.0}% of that {} convolution's \
             rate), ours fp32 {ours_fp32:.0} GFLOP/s ({:.0}% of fp32's)",
            100.0 * ours / conv_working,
            layout.name(),
            100.0 * ours_fp32 / conv_f32
        );
    }
    if args.json {
        let v = serde_json::json!({
            "device": device_name(device), "threads": tch::get_num_threads(),
            "precision": layout.name(), "results": rows,
            "conv_256x256_128px_gflops": { "fp32": conv_f32, "working": conv_working },
            "lowest_ratio_at_equal_flops": conv_f32 / conv_working,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
