//! `neural-style bench --loop`: what the optimisation loop costs beyond the network. A whole
//! single-scale run (L-BFGS with its line search, or Adam) is timed per evaluation, from its
//! first progress report to its last, against the bare evaluation (forward + backward, value
//! read) at the same size on the same network, in the same process. Host reads per evaluation
//! are counted too (each is a device sync on a GPU), and where evaluations are replayed as CUDA
//! graphs, the host's time between a read and the next replay (the GPU idles then) and the
//! seconds of graph captures per run. On a CPU the network dominates at 256 px; at 64 px it is
//! cheap enough for the loop's own cost to show. On CUDA the history's two passes are timed
//! alone first ([`super::products`]).

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::timing::{median, sync};
use crate::engine::graph::{self, Slot};
use crate::engine::image_io::Picture;
use crate::engine::objective::Objective;
use crate::engine::params::OptimizerKind;
use crate::engine::vgg::Layout;
use crate::engine::weights::Weights;
use crate::engine::{device_name, host, Control, CudaOptions, Engine, Init, Job, Params, Progress};
use crate::engine::{ops, optim};

/// What to time.
pub struct Options {
    /// Square image sizes.
    pub sizes: Vec<i64>,
    /// Evaluations of each run.
    pub evaluations: usize,
    /// Timed bare evaluations per size (the median is reported).
    pub repeats: usize,
    /// Runs per optimiser setting (the median of their per-evaluation means is reported).
    pub runs: usize,
}

/// One optimiser setting of the loop.
struct Variant {
    name: &'static str,
    optimizer: OptimizerKind,
    history: usize,
}

const VARIANTS: [Variant; 3] = [
    Variant { name: "lbfgs m=100", optimizer: OptimizerKind::Lbfgs, history: 100 },
    Variant { name: "lbfgs m=5", optimizer: OptimizerKind::Lbfgs, history: 5 },
    Variant { name: "adam", optimizer: OptimizerKind::Adam, history: 100 },
];

/// A single-scale run of `evaluations` from noise with the variant's optimiser.
fn loop_params(v: &Variant, evaluations: usize) -> Params {
    Params {
        size: None,
        evaluations,
        multiscale: Some(false),
        init: Init::Noise,
        optimizer: v.optimizer,
        lbfgs_history: v.history,
        ..Params::default()
    }
}

fn picture(size: i64, seed: i64) -> Picture {
    tch::manual_seed(seed);
    let t = Tensor::rand([size, size, 4], (Kind::Float, Device::Cpu));
    let v: Vec<f32> = Vec::<f32>::try_from(t.reshape([-1])).expect("f32 pixels");
    let rgba = image::Rgba32FImage::from_raw(size as u32, size as u32, v).expect("size matches");
    Picture { rgba, has_alpha: false, high_precision: false }
}

/// `job`'s objective on the engine's device at its pictures' size, and a seeded noise point.
fn bare_problem(engine: &Engine, job: &Job) -> (Objective, Tensor) {
    let device = engine.device();
    let content = job.content().rgb_tensor().to_device(device);
    let style = job.styles()[0].rgb_tensor().to_device(device);
    let x = crate::engine::rng::uniform(&content.size(), 0).to_device(device);
    (engine.objective(&content, &[style], job.params()), x)
}

/// Bare evaluations of `job`'s objective (value and gradient, value read), evaluated as the
/// engine's scales would: through a CUDA graph where they use one (replays from the third on).
struct Bare<'a> {
    engine: &'a Engine,
    objective: Objective,
    x: Tensor,
    slot: Slot,
}

impl<'a> Bare<'a> {
    fn new(engine: &'a Engine, job: &Job) -> Self {
        let (objective, x) = bare_problem(engine, job);
        let mut bare = Self { engine, objective, x, slot: Slot::default() };
        for _ in 0..3 {
            bare.evaluate();
        }
        bare
    }

    fn evaluate(&mut self) {
        let (engine, objective) = (self.engine, &self.objective);
        let f = |x: &Tensor| objective.evaluate_terms(engine.vgg(), x);
        let graphs = engine.cuda().graphs && engine.device().is_cuda();
        let (terms, g) = if graphs { self.slot.evaluate(&self.x, &f) } else { f(&self.x) };
        drop((host::read(&terms), g));
    }
}

/// Mean seconds of one bare evaluation ([`Bare`]): a mean, like the loop's figure, so that the
/// machine's slow moments weigh on both alike.
fn bare(engine: &Engine, job: &Job, repeats: usize) -> f64 {
    let mut bare = Bare::new(engine, job);
    sync(engine.device());
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        bare.evaluate();
        sync(engine.device());
        times.push(t0.elapsed().as_secs_f64());
    }
    times.iter().sum::<f64>() / times.len() as f64
}

/// libtorch operators per evaluation (see [`ops`]): of the bare evaluation, of a whole run
/// between its first and last progress, and of those the run's optimiser steps ran
/// ([`optim::step_operators`]: replayed as one graph where steps are captured). Counting slows
/// every operator, so this runs after all the timings.
pub fn ops_per_evaluation(engine: &Engine, job: &Job) -> anyhow::Result<(f64, f64, f64)> {
    anyhow::ensure!(ops::enable(), "this build has no operator counter");
    let count = || ops::count().unwrap_or(0);
    let mut evaluation = Bare::new(engine, job);
    let before = count();
    evaluation.evaluate();
    let bare = (count() - before) as f64;
    let mut first: Option<(usize, u64, u64)> = None;
    let mut last = (0, 0, 0);
    engine.stylize(job, &mut |p: &Progress| {
        let now = (p.evaluation, count(), optim::step_operators());
        first.get_or_insert(now);
        last = now;
        Control::Continue
    })?;
    let (n0, c0, s0) = first.expect("at least one evaluation");
    let n = (last.0 - n0).max(1) as f64;
    Ok((bare, (last.1 - c0) as f64 / n, (last.2 - s0) as f64 / n))
}

/// A whole run, between its first and last progress: per evaluation its seconds, host reads
/// and the host's time between a read and the next replay (where evaluations are replayed), its
/// evaluations, and the seconds its graph captures took in all.
struct Looped {
    seconds: f64,
    reads: f64,
    host_gap: f64,
    evaluations: usize,
    capture: f64,
}

fn looped(engine: &Engine, job: &Job) -> anyhow::Result<Looped> {
    let mut first: Option<(usize, Instant, u64, f64, f64)> = None;
    let mut last = (0, Instant::now(), 0, 0.0, 0.0);
    let out = engine.stylize(job, &mut |p: &Progress| {
        let now = (p.evaluation, Instant::now(), host::reads(), host::host_gap(), graph::capture_seconds());
        first.get_or_insert(now);
        last = now;
        Control::Continue
    })?;
    let (n0, t0, r0, h0, c0) = first.expect("at least one evaluation");
    let n = (last.0 - n0).max(1) as f64;
    Ok(Looped {
        seconds: last.1.duration_since(t0).as_secs_f64() / n,
        reads: (last.2 - r0) as f64 / n,
        host_gap: (last.3 - h0) / n,
        evaluations: out.summary.evaluations,
        capture: last.4 - c0,
    })
}

/// Runs the loop bench on `device`; fp32 throughout (a reduced-precision job ends on the f32
/// network, which would mix two networks' costs in one figure; the loop's cost is the same).
pub fn run(args: &Options, device: Device, cuda: CudaOptions) -> anyhow::Result<serde_json::Value> {
    let engine = Engine::with_options(&Weights::random(0), device, Layout::FP32, cuda);
    let graphs = device.is_cuda() && engine.cuda().graphs;
    let passes = if graphs { super::products::run(&args.sizes, device)? } else { serde_json::json!([]) };
    let replayed = if graphs { ", evaluations replayed as CUDA graphs" } else { "" };
    eprintln!(
        "the optimisation loop per evaluation against the bare evaluation (fp32, single scale, {} evaluations, {} \
         threads, {}{replayed})",
        args.evaluations,
        tch::get_num_threads(),
        device_name(device)
    );
    eprintln!(
        "{:>5} {:>12} {:>12} {:>12} {:>9} {:>15} {:>11} {:>9} {:>11}",
        "size", "optimizer", "bare ms", "loop ms", "overhead", "pairs' range", "reads/eval", "host µs", "capture ms"
    );
    let mut rows = Vec::new();
    let mut worst: Option<(f64, String)> = None;
    for &size in &args.sizes {
        anyhow::ensure!(size >= 32, "sizes must be at least 32");
        for v in &VARIANTS {
            let job = Job::new(picture(size, 1), vec![picture(size, 2)], loop_params(v, args.evaluations))?;
            // pairs of (bare block, loop run), alternating: the machine's slow spells (seconds
            // long on a shared 2-core machine) fall on both sides of a pair alike
            let mut pairs = Vec::new();
            for _ in 0..args.runs.max(1) {
                let b = bare(&engine, &job, args.repeats);
                pairs.push((b, looped(&engine, &job)?));
            }
            let t_bare = median(pairs.iter().map(|p| p.0).collect());
            let t_loop = median(pairs.iter().map(|p| p.1.seconds).collect());
            let host_gap = median(pairs.iter().map(|p| p.1.host_gap).collect());
            let capture = median(pairs.iter().map(|p| p.1.capture).collect());
            let each: Vec<f64> = pairs.iter().map(|p| p.1.seconds / p.0 - 1.0).collect();
            let overhead = median(each.clone());
            let (low, high) = each.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &o| (l.min(o), h.max(o)));
            let (reads, evaluations) = (pairs[0].1.reads, pairs[0].1.evaluations);
            if worst.as_ref().is_none_or(|w| overhead > w.0) {
                worst = Some((overhead, format!("{size} px, {}", v.name)));
            }
            eprintln!(
                "{size:>5} {:>12} {:>12.3} {:>12.3} {:>8.1}% {:>15} {reads:>11.2} {:>9.1} {:>11.2}",
                v.name,
                t_bare * 1e3,
                t_loop * 1e3,
                overhead * 100.0,
                format!("{:.1}…{:.1}%", low * 100.0, high * 100.0),
                host_gap * 1e6,
                capture * 1e3
            );
            rows.push(serde_json::json!({
                "size": size, "optimizer": v.name, "bare_s": t_bare, "loop_s_per_evaluation": t_loop,
                "overhead": overhead, "overhead_each_pair": each, "host_reads_per_evaluation": reads,
                "evaluations": evaluations, "host_gap_s_per_evaluation": host_gap, "capture_s_per_run": capture,
            }));
        }
    }
    // operator counts last: counting slows every operator
    eprintln!(
        "operators per evaluation (calls into libtorch and backward nodes: on a GPU each costs a launch, but those \
         of a captured step or evaluation are replayed as one graph; \"outside\": the loop's operators outside its \
         steps, launched one by one):"
    );
    eprintln!("{:>5} {:>12} {:>8} {:>8} {:>8} {:>8}", "size", "optimizer", "bare", "loop", "added", "outside");
    for row in &mut rows {
        let (size, name) = (row["size"].as_i64().unwrap_or(0), row["optimizer"].as_str().unwrap_or("").to_string());
        let v = VARIANTS.iter().find(|v| v.name == name).expect("a variant of the table");
        let job = Job::new(picture(size, 1), vec![picture(size, 2)], loop_params(v, args.evaluations.min(60)))?;
        let (bare, looped, stepped) = ops_per_evaluation(&engine, &job)?;
        let outside = looped - stepped.max(bare);
        eprintln!("{size:>5} {name:>12} {bare:>8.0} {looped:>8.1} {:>8.1} {outside:>8.1}", looped - bare);
        row["ops_bare"] = bare.into();
        row["ops_loop_per_evaluation"] = looped.into();
        row["ops_outside_steps_per_evaluation"] = outside.into();
    }
    if let Some((w, case)) = &worst {
        eprintln!("worst overhead: {:.1}% ({case}); overhead = median over {} pairs of (loop run's mean / the mean of {} bare evaluations just before it)", w * 100.0, args.runs, args.repeats);
    }
    Ok(serde_json::json!({
        "device": device_name(device), "threads": tch::get_num_threads(), "precision": "fp32", "results": rows,
        "cuda_graphs": graphs, "cuda_kernels": engine.cuda().kernels, "history_passes": passes,
        "worst_overhead": worst.map(|w| w.0),
    }))
}
