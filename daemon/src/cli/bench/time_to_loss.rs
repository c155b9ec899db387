//! `neural-style bench --time-to-loss`: how long neural-style takes to reach the loss PyTorch
//! reaches. The reference (`time-to-loss` in daemon/python/bench_reference.py, the venv's torch) runs the paper's
//! objective with torch.optim.LBFGS + strong Wolfe, fp32, single scale, for a fixed number of
//! evaluations from the same start image; then neural-style runs with its defaults and
//! `--max-seconds` set to fractions of the reference's time. Both final images are scored by the
//! same code: the f32 objective at the full size ([`Engine::exact_losses`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use image::DynamicImage;
use tch::{Device, Tensor};

use crate::cli::{python, samples};
use crate::engine::image_io::{DecodeLimits, Picture};
use crate::engine::targets::Inputs;
use crate::engine::weights::Weights;
use crate::engine::{device_name, Control, Engine, Job, Params, Progress, STYLE_WEIGHT_PER_STRENGTH};

const PLOT: &str = include_str!("../../../python/plot_time_to_loss.py");

/// The comparison to run.
pub struct Options {
    /// Image size (longest side).
    pub size: u32,
    /// Evaluations of the PyTorch reference run.
    pub reference_evals: usize,
    /// neural-style's time budgets as fractions of the reference's time.
    pub budgets: Vec<f64>,
    /// Content image (default: the drawn sample).
    pub content: Option<PathBuf>,
    /// Style image (default: the drawn sample).
    pub style: Option<PathBuf>,
    /// Write a PNG plot of loss against time.
    pub plot: Option<PathBuf>,
    /// Also run neural-style for the reference's number of evaluations (no time budget):
    /// default settings twice (the first run is the first at this size in the process), and
    /// single scale.
    pub same_evaluations: bool,
}

fn picture(path: Option<&Path>, draw: impl Fn() -> image::RgbImage) -> anyhow::Result<Picture> {
    match path {
        Some(p) => Ok(Picture::load(p, DecodeLimits::default())?),
        None => {
            let img = DynamicImage::ImageRgb8(draw());
            Ok(Picture { rgba: img.to_rgba32f(), has_alpha: false, high_precision: false })
        }
    }
}

/// Runs the reference on `device` (style weight `beta`, content weight `alpha` or the default
/// 1/(N·M)); returns its JSON report and final image.
fn reference(
    device: Device,
    weights: &Path,
    content: &Tensor,
    style: &Tensor,
    x0: &Tensor,
    (evals, alpha, beta): (usize, Option<f64>, f64),
    dir: &Path,
) -> anyhow::Result<(serde_json::Value, Tensor)> {
    let input = dir.join("input.safetensors");
    let output = dir.join("reference.safetensors");
    Tensor::write_safetensors(&[("content", content), ("style", style), ("x0", x0)], &input)?;
    let script = python::script_file("bench_reference", python::BENCH_REFERENCE)?;
    let py = python::interpreter();
    let out = Command::new(&py)
        .arg(&script)
        .arg("time-to-loss")
        .arg("--weights")
        .arg(weights)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&output)
        .args(["--beta", &beta.to_string(), "--evals", &evals.to_string()])
        .args(alpha.map(|a| ["--alpha".to_string(), a.to_string()]).into_iter().flatten())
        .args(["--threads", &tch::get_num_threads().to_string(), "--device", &device_name(device)])
        .output()
        .with_context(|| format!("cannot run the PyTorch reference with {}", py.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the PyTorch reference failed: {}",
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading the reference's JSON")?;
    let x = Tensor::read_safetensors(&output)?
        .into_iter()
        .find(|(k, _)| k == "x")
        .map(|(_, t)| t)
        .context("reference output without x")?;
    Ok((report, x))
}

/// A reference run scored by neural-style: its JSON report, seconds, and final objective (f32, at
/// full size, by [`Engine::exact_losses`]), with PyTorch's own value of that image.
pub(super) struct Scored {
    pub report: serde_json::Value,
    pub seconds: f64,
    pub loss: f64,
    pub own: f64,
}

/// [`reference`] for `job` from `x0` (its pictures `inputs` at the output size), scored by
/// `engine`; refused when PyTorch's own value of its final image and neural-style's differ by
/// more than 0.1% (the two sides would not compute the same objective).
pub(super) fn scored_reference(
    engine: &Engine,
    job: &Job,
    (inputs, x0): (&Inputs, &Tensor),
    weights: &Path,
    (evals, alpha, beta): (usize, Option<f64>, f64),
) -> anyhow::Result<Scored> {
    let dir = tempfile::tempdir()?;
    let (report, x) =
        reference(engine.device(), weights, &inputs.content, &inputs.styles[0], x0, (evals, alpha, beta), dir.path())?;
    let seconds = report["seconds"].as_f64().context("reference without seconds")?;
    let loss = engine.exact_losses(job, &x)?.total;
    let own = report["trace"].as_array().and_then(|t| t.last()).and_then(|p| p[1].as_f64()).unwrap_or(f64::NAN);
    let mismatch = ((own - loss) / loss).abs();
    anyhow::ensure!(
        mismatch <= 1e-3,
        "PyTorch values its final image at {own:e}, neural-style at {loss:e} ({:.3}% apart): the two sides do not \
         compute the same objective, refusing to report",
        mismatch * 100.0
    );
    Ok(Scored { report, seconds, loss, own })
}

pub fn run(args: &Options, device: Device, engine: &Engine, weights_path: &Path) -> anyhow::Result<serde_json::Value> {
    let content = picture(args.content.as_deref(), || samples::content(384, 256))?;
    let style = picture(args.style.as_deref(), || samples::style(256, 256))?;
    let base = Params { size: Some(args.size), evaluations: 1_000_000, ..Params::default() };
    let job = Job::new(content, vec![style], base.clone())?;
    // the pictures at the output size and the engine's own start image, on the CPU
    let inputs = Inputs::prepare(job.content(), job.styles(), job.params(), Device::Cpu)?;
    let (w, h) = inputs.size();
    let x0 = inputs.start(&base, w, h);
    eprintln!(
        "time to loss at {w}×{h}: PyTorch eager fp32 NCHW, L-BFGS + strong Wolfe, single scale, {} evaluations, \
         {} threads, {} …",
        args.reference_evals,
        tch::get_num_threads(),
        device_name(device)
    );
    let beta = STYLE_WEIGHT_PER_STRENGTH * base.strength;
    let scored = scored_reference(engine, &job, (&inputs, &x0), weights_path, (args.reference_evals, None, beta))?;
    let (rep, ref_seconds, ref_loss) = (scored.report, scored.seconds, scored.loss);
    eprintln!(
        "  PyTorch: {ref_seconds:.1} s, final objective {ref_loss:.4e} (f32, scored by neural-style; PyTorch's own value \
         {:.4e})",
        scored.own
    );
    let mut runs = Vec::new();
    for &fraction in &args.budgets {
        let job = job.with_params(Params { max_seconds: Some(fraction * ref_seconds), ..base.clone() })?;
        let mut trace = Vec::new();
        let r = engine.stylize(&job, &mut |p: &Progress| {
            let dims = p.image.size();
            trace.push(serde_json::json!([p.elapsed.as_secs_f64(), p.losses.total, dims[2].max(dims[3])]));
            Control::Continue
        })?;
        let ratio = r.summary.seconds / ref_seconds;
        let reached = r.summary.total_loss <= ref_loss;
        eprintln!(
            "  neural-style, budget {fraction:.2}× ({:.1} s): final objective {:.4e} = {:.3}× PyTorch's{}",
            r.summary.seconds,
            r.summary.total_loss,
            r.summary.total_loss / ref_loss,
            if reached { " — reached" } else { " — not reached" }
        );
        runs.push(serde_json::json!({
            "budget_fraction": fraction, "seconds": r.summary.seconds, "time_ratio": ratio,
            "final_loss": r.summary.total_loss, "loss_ratio": r.summary.total_loss / ref_loss,
            "reached_reference_loss": reached, "evaluations": r.summary.evaluations,
            "precision": r.summary.precision, "scales": r.summary.scales, "trace": trace,
        }));
    }
    let same = if args.same_evaluations {
        // PyTorch's own count: torch.optim.LBFGS ends at its first failed line search (a zero
        // step meets tolerance_change = 0), often short of the evaluations it was given
        let ref_evals = rep["evaluations"].as_u64().map_or(args.reference_evals, |n| n as usize);
        same_evaluations(engine, &job, &base, ref_evals, (ref_seconds, ref_loss))?
    } else {
        vec![]
    };
    let best = runs
        .iter()
        .filter(|r| r["reached_reference_loss"] == true)
        .map(|r| r["time_ratio"].as_f64().unwrap_or(f64::INFINITY))
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.min(b))));
    match best {
        Some(b) => eprintln!("  → neural-style reached PyTorch's final loss in {b:.3}× its time"),
        None => eprintln!("  → neural-style did not reach PyTorch's final loss within the budgets tried"),
    }
    let v = serde_json::json!({
        "size": [w, h], "device": device_name(device), "threads": tch::get_num_threads(),
        "pretrained": engine.weights().pretrained,
        "reference": {"seconds": ref_seconds, "final_loss": ref_loss, "evaluations": rep["evaluations"],
                      "torch": rep["torch"], "trace": rep["trace"]},
        "runs": runs, "best_time_ratio_reaching_reference": best, "same_evaluations": same,
    });
    if let Some(plot) = &args.plot {
        plot_json(&v, plot, ("plot_time_to_loss", PLOT))?;
    }
    Ok(v)
}

/// neural-style for the `evaluations` the reference spent: default settings (first and
/// repeated) and single scale, each against the reference's time and loss.
fn same_evaluations(
    engine: &Engine,
    job: &Job,
    base: &Params,
    evaluations: usize,
    (ref_seconds, ref_loss): (f64, f64),
) -> anyhow::Result<Vec<serde_json::Value>> {
    let default = Params { evaluations, ..base.clone() };
    let single = Params { multiscale: Some(false), ..default.clone() };
    let mut out = Vec::new();
    for (name, params) in [("default (first)", &default), ("default (repeated)", &default), ("single scale", &single)] {
        let r = engine.stylize(&job.with_params(params.clone())?, &mut |_: &Progress| Control::Continue)?;
        let s = &r.summary;
        eprintln!(
            "  neural-style {name}, {} evaluations ({}): {:.2} s = {:.3}× PyTorch's time, objective {:.4e} = {:.3}× PyTorch's",
            s.evaluations,
            s.precision,
            s.seconds,
            s.seconds / ref_seconds,
            s.total_loss,
            s.total_loss / ref_loss
        );
        out.push(serde_json::json!({
            "run": name, "seconds": s.seconds, "time_ratio": s.seconds / ref_seconds,
            "final_loss": s.total_loss, "loss_ratio": s.total_loss / ref_loss, "evaluations": s.evaluations,
            "precision": s.precision, "schedule": s.schedule, "stop_reason": s.stop_reason, "scales": s.scales,
        }));
    }
    Ok(out)
}

/// Draws `v` into a PNG with one of the plotting scripts (name, source; the venv's matplotlib).
pub(super) fn plot_json(v: &serde_json::Value, png: &Path, (name, source): (&str, &str)) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data.json");
    std::fs::write(&data, serde_json::to_vec(v)?)?;
    let script = python::script_file(name, source)?;
    let py = python::interpreter();
    let out = Command::new(&py).arg(&script).arg(&data).arg(png).output()?;
    anyhow::ensure!(
        out.status.success(),
        "plotting failed (is matplotlib installed in the venv? `make bench` installs it): {}",
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
    );
    eprintln!("  plot: {}", png.display());
    Ok(())
}

/// Loads the weights named on the command line, or makes seeded random ones in `dir`.
pub fn weights(explicit: Option<&Path>, dir: &Path) -> anyhow::Result<(Weights, PathBuf)> {
    match explicit {
        Some(p) => Ok((Weights::load(p)?, p.to_path_buf())),
        None => {
            let w = Weights::random(0);
            let p = dir.join("vgg19-random-seed0.safetensors");
            w.save(&p)?;
            Ok((w, p))
        }
    }
}
