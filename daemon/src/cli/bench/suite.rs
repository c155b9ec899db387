//! `neural-style bench --suite`: the default schedule against neural-style's own single-scale and
//! multi-scale paths and against PyTorch's torch.optim.LBFGS, on a suite of cases rather than one.
//!
//! A case is a content × style pair, a start (noise or the content), a weighting (the default, or
//! a content-heavy one) and a size. Per case, PyTorch runs 300 evaluations from neural-style's
//! own start image (written out and loaded by the reference): time T, loss L. Then neural-style
//! runs under `--max-seconds` = 0.1T, 0.2T, 0.35T with the default schedule, single scale and
//! multi-scale; a variant whose schedule is the same as another's at that size (the default
//! chooses one of them; at 128 px multi-scale has one scale) is run once and reported for both.
//! Every final image is scored by one f32 objective ([`Engine::exact_losses`] via the summary);
//! a case whose two sides disagree on the value of the same image by more than 0.1% is refused.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::Device;

use super::time_to_loss::{plot_json, scored_reference};
use crate::engine::image_io::{DecodeLimits, Picture};
use crate::engine::schedule;
use crate::engine::targets::Inputs;
use crate::engine::{device_name, Control, Engine, Init, Job, Params, Progress, STYLE_WEIGHT_PER_STRENGTH};

const PLOT: &str = include_str!("../../../python/plot_suite.py");

/// Content × style pairs from ../shared/images: each image is a content once and a style at
/// most once, two photographs and two paintings as contents.
pub const PAIRS: [(&str, &str); 4] = [
    ("tubingen.jpg", "starry_night.jpg"),
    ("golden_gate.jpg", "the_scream.jpg"),
    ("woman-with-hat-matisse.jpg", "shipwreck.jpg"),
    ("starry_night.jpg", "woman-with-hat-matisse.jpg"),
];
/// The weightings: the defaults (strength 1), and the content-heavy α = 1, β = 1e5 of the
/// case that showed the single-scale path beating the default (issue #12: ~2000× the defaults'
/// content emphasis at 256 px).
pub const WEIGHTINGS: [Weighting; 2] =
    [Weighting { label: "default", weights: None }, Weighting { label: "α1 β1e5", weights: Some((1.0, 1e5)) }];

/// Content and style weights of a case: `None` is the defaults (α = 1/(N·M), β = 500).
#[derive(Clone, Copy, Debug)]
pub struct Weighting {
    pub label: &'static str,
    pub weights: Option<(f64, f64)>,
}
const STARTS: [Init; 2] = [Init::Noise, Init::Content];

/// The suite to run.
pub struct Options {
    /// Sizes (longest side): every pair × start × strength at the first; at the others one
    /// (start, strength) per pair, each start and strength twice (a Latin square), unless `full`.
    pub sizes: Vec<u32>,
    pub full: bool,
    pub reference_evals: usize,
    pub budgets: Vec<f64>,
    /// The folder with the pairs' images.
    pub images: PathBuf,
    /// Only the cases whose name contains this.
    pub only: Option<String>,
    pub plot: Option<PathBuf>,
    /// Write the Markdown table here.
    pub table: Option<PathBuf>,
}

#[derive(Clone, Debug)]
struct Case {
    content: &'static str,
    style: &'static str,
    init: Init,
    weighting: Weighting,
    size: u32,
}

impl Case {
    fn name(&self) -> String {
        let stem = |f: &str| f.split(['.', '-']).next().unwrap_or(f).to_string();
        let start = if self.init == Init::Noise { "noise" } else { "content" };
        format!("{}×{} {start} {} {}px", stem(self.content), stem(self.style), self.weighting.label, self.size)
    }
}

fn cases(o: &Options) -> Vec<Case> {
    let mut out = Vec::new();
    for (i, &size) in o.sizes.iter().enumerate() {
        for (p, &(content, style)) in PAIRS.iter().enumerate() {
            for (s, &init) in STARTS.iter().enumerate() {
                for (k, &weighting) in WEIGHTINGS.iter().enumerate() {
                    // Latin square: pair p gets start p % 2 and weighting (p / 2) % 2
                    if i == 0 || o.full || (s == p % 2 && k == (p / 2) % 2) {
                        out.push(Case { content, style, init, weighting, size });
                    }
                }
            }
        }
    }
    out.retain(|c| o.only.as_ref().is_none_or(|f| c.name().contains(f.as_str())));
    out
}

/// The schedule variants compared: the default (chosen), and the two it chooses between.
const VARIANTS: [(&str, Option<bool>); 3] = [("default", None), ("single", Some(false)), ("multi", Some(true))];

pub fn run(o: &Options, device: Device, engine: &Engine, weights: &Path) -> anyhow::Result<serde_json::Value> {
    let cases = cases(o);
    anyhow::ensure!(!cases.is_empty(), "no suite case matches --only {:?}", o.only);
    eprintln!(
        "suite: {} cases, PyTorch eager fp32 L-BFGS + strong Wolfe {} evaluations each, then neural-style ({}, {}) \
         at {:?} of its time, {} threads",
        cases.len(),
        o.reference_evals,
        device_name(device),
        engine.layout().name(),
        o.budgets,
        tch::get_num_threads()
    );
    let precision = engine.layout().name();
    // the budget by which the default must reach PyTorch's loss: 0.2T on a bf16 network, 0.35T on fp32
    let target_budget = if precision.starts_with("fp32") { 0.35 } else { 0.2 };
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, cases.len(), case.name());
        results.push(run_case(o, case, engine, weights)?);
        // the table so far, rewritten after every case (a long run stopped early keeps its cases)
        if let Some(path) = &o.table {
            let table = table(&results, &o.budgets, target_budget);
            std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    eprintln!("\n{}", table(&results, &o.budgets, target_budget));
    let v = serde_json::json!({
        "device": device_name(device), "precision": precision, "threads": tch::get_num_threads(),
        "pretrained": engine.weights().pretrained, "reference_evals": o.reference_evals, "budgets": o.budgets,
        "target_budget": target_budget, "cases": results,
    });
    if let Some(plot) = &o.plot {
        plot_json(&v, plot, ("plot_suite", PLOT))?;
    }
    Ok(v)
}

fn load(dir: &Path, name: &str) -> anyhow::Result<Picture> {
    let path = dir.join(name);
    Picture::load(&path, DecodeLimits::default()).with_context(|| format!("suite image {}", path.display()))
}

fn run_case(o: &Options, case: &Case, engine: &Engine, weights: &Path) -> anyhow::Result<serde_json::Value> {
    let base = Params {
        size: Some(case.size),
        evaluations: 1_000_000,
        init: case.init,
        content_weight: case.weighting.weights.map(|w| w.0),
        style_weight: case.weighting.weights.map(|w| w.1),
        ..Params::default()
    };
    let job = Job::new(load(&o.images, case.content)?, vec![load(&o.images, case.style)?], base.clone())?;
    let inputs = Inputs::prepare(job.content(), job.styles(), job.params(), Device::Cpu)?;
    let (w, h) = inputs.size();
    let x0 = inputs.start(&base, w, h);
    let alpha = case.weighting.weights.map(|w| w.0);
    let beta = case.weighting.weights.map_or(STYLE_WEIGHT_PER_STRENGTH, |w| w.1);
    let scored = scored_reference(engine, &job, (&inputs, &x0), weights, (o.reference_evals, alpha, beta))
        .with_context(|| case.name())?;
    let (rep, t, loss, own) = (scored.report, scored.seconds, scored.loss, scored.own);
    eprintln!("  PyTorch: {t:.1} s, {} evaluations, objective {loss:.5e}", rep["evaluations"]);
    let mut runs: Vec<serde_json::Value> = Vec::new();
    for &fraction in &o.budgets {
        // the runs made at this budget: (scale sizes, result) to reuse for identical schedules
        let mut done: Vec<(Vec<(u32, u32)>, serde_json::Value)> = Vec::new();
        for (variant, multiscale) in VARIANTS {
            let params = Params { multiscale, max_seconds: Some(fraction * t), ..base.clone() };
            let sizes: Vec<(u32, u32)> = schedule::scales(&params, w, h).iter().map(|s| (s.width, s.height)).collect();
            let mut r = match done.iter().find(|(s, _)| *s == sizes) {
                Some((_, r)) => {
                    let mut r = r.clone();
                    r["same_run_as"] = r["variant"].clone();
                    r
                }
                None => {
                    let mut r = ours(engine, &job.with_params(params)?, fraction, t, loss)?;
                    r["variant"] = variant.into();
                    done.push((sizes, r.clone()));
                    r
                }
            };
            r["variant"] = variant.into();
            eprintln!(
                "  {variant:>7} {fraction:.2}T: {:.1} s, {} evaluations, objective {:.5e} = {:.3}× PyTorch's{}",
                r["seconds"].as_f64().unwrap_or(0.0),
                r["evaluations"],
                r["final_loss"].as_f64().unwrap_or(f64::NAN),
                r["loss_ratio"].as_f64().unwrap_or(f64::NAN),
                r.get("same_run_as").map(|s| format!(" (same schedule as {s})")).unwrap_or_default()
            );
            runs.push(r);
        }
    }
    Ok(serde_json::json!({
        "name": case.name(), "content": case.content, "style": case.style,
        "start": if case.init == Init::Noise { "noise" } else { "content" }, "weighting": case.weighting.label,
        "content_weight": alpha, "style_weight": beta,
        "size": [w, h],
        "reference": {"seconds": t, "final_loss": loss, "own_value": own, "evaluations": rep["evaluations"],
                      "torch": rep["torch"], "trace": rep["trace"]},
        "runs": runs,
    }))
}

/// One neural-style run under `fraction` × the reference's `t` seconds.
fn ours(engine: &Engine, job: &Job, fraction: f64, t: f64, ref_loss: f64) -> anyhow::Result<serde_json::Value> {
    let mut trace = Vec::new();
    let r = engine.stylize(job, &mut |p: &Progress| {
        let dims = p.image.size();
        trace.push(serde_json::json!([p.elapsed.as_secs_f64(), p.losses.total, dims[2].max(dims[3])]));
        Control::Continue
    })?;
    let s = &r.summary;
    Ok(serde_json::json!({
        "variant": "", "budget_fraction": fraction, "seconds": s.seconds, "time_ratio": s.seconds / t,
        "final_loss": s.total_loss, "loss_ratio": s.total_loss / ref_loss, "evaluations": s.evaluations,
        "schedule": s.schedule, "scales": s.scales, "precision": s.precision, "trace": trace,
    }))
}

/// `variant`'s run at `fraction` in a case's runs.
fn find_run<'c>(case: &'c serde_json::Value, variant: &str, fraction: f64) -> Option<&'c serde_json::Value> {
    case["runs"].as_array()?.iter().find(|r| r["variant"] == variant && r["budget_fraction"].as_f64() == Some(fraction))
}

/// The loss ratio (to PyTorch's) of `variant` at `fraction` in a case's runs.
fn ratio(case: &serde_json::Value, variant: &str, fraction: f64) -> f64 {
    find_run(case, variant, fraction).and_then(|r| r["loss_ratio"].as_f64()).unwrap_or(f64::NAN)
}

/// `variant`'s run at `fraction`: its evaluations, and PyTorch's best loss after as many of its
/// own evaluations ÷ its 300-evaluation loss (does ours progress as fast per evaluation, and is
/// the shortfall the number of evaluations?).
fn per_evaluation(case: &serde_json::Value, variant: &str, fraction: f64) -> Option<(u64, f64)> {
    let n = find_run(case, variant, fraction)?["evaluations"].as_u64()?;
    let reference = &case["reference"];
    let best = reference["trace"]
        .as_array()?
        .iter()
        .take(n as usize)
        .filter_map(|e| e[1].as_f64())
        .fold(f64::INFINITY, f64::min);
    Some((n, best / reference["final_loss"].as_f64()?))
}

/// The Markdown table: per case the loss ratios to PyTorch's 300-evaluation loss at each budget,
/// the default against the better of single and multi (worst budget), and whether the default
/// reached PyTorch's loss by `target` × T, with the evaluations it made by then and PyTorch's
/// loss after as many.
fn table(cases: &[serde_json::Value], budgets: &[f64], target: f64) -> String {
    let cell = |c: &serde_json::Value, v: &str| {
        budgets.iter().map(|&b| format!("{:.3}", ratio(c, v, b))).collect::<Vec<_>>().join(" / ")
    };
    let fractions = budgets.iter().map(|b| format!("{b}T")).collect::<Vec<_>>().join(" / ");
    let mut out = format!(
        "| case | T (s) | default: loss ÷ PyTorch's at {fractions} | single scale | multi-scale | default vs better of \
         single, multi (worst budget) | default reaches PyTorch by {target}T | evaluations by {target}T: ours (PyTorch's \
         loss after as many) |\n|---|---|---|---|---|---|---|---|\n"
    );
    let (mut worst_gap, mut worst_case, mut reached, mut ratios) = (f64::MIN, String::new(), 0, Vec::new());
    for c in cases {
        let gap = budgets
            .iter()
            .map(|&b| ratio(c, "default", b) / ratio(c, "single", b).min(ratio(c, "multi", b)) - 1.0)
            .fold(f64::MIN, f64::max);
        if gap > worst_gap {
            worst_gap = gap;
            worst_case = c["name"].as_str().unwrap_or_default().to_string();
        }
        let at_target = ratio(c, "default", target);
        ratios.push((at_target, c["name"].as_str().unwrap_or_default().to_string()));
        let ok = at_target <= 1.0;
        reached += usize::from(ok);
        let counted = per_evaluation(c, "default", target).map_or("–".to_string(), |(n, r)| format!("{n} ({r:.3}×)"));
        out += &format!(
            "| {} | {:.1} | {} | {} | {} | {:+.1}% | {} | {counted} |\n",
            c["name"].as_str().unwrap_or_default(),
            c["reference"]["seconds"].as_f64().unwrap_or(0.0),
            cell(c, "default"),
            cell(c, "single"),
            cell(c, "multi"),
            gap * 100.0,
            if ok { "yes".to_string() } else { format!("**no** ({at_target:.3}×)") }
        );
    }
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some(best), Some(worst)) = (ratios.first(), ratios.last()) {
        out += &format!(
            "\nDefault vs the better of our single- and multi-scale runs, worst case: **{:+.1}%** ({worst_case}; target \
             ≤ +2%). Reached PyTorch's 300-evaluation loss by {target}T: **{reached} of {}** cases; at {target}T the \
             default's loss is {:.3}× PyTorch's at best ({}) and {:.3}× at worst ({}).\n",
            worst_gap * 100.0,
            cases.len(),
            best.0,
            best.1,
            worst.0,
            worst.1
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compares_per_evaluation_with_pytorchs_trace() {
        // PyTorch: 4 evaluations, loss 8 → 2 (its final loss); ours at 0.2T: 3 evaluations, loss 3
        let run = |variant: &str, fraction: f64, loss: f64, evaluations: u64| {
            serde_json::json!({"variant": variant, "budget_fraction": fraction, "loss_ratio": loss / 2.0,
                               "evaluations": evaluations})
        };
        let case = serde_json::json!({
            "name": "a×b content default 128px",
            "reference": {"seconds": 10.0, "final_loss": 2.0, "trace": [[1.0, 8.0], [2.0, 3.0], [3.0, 4.0], [4.0, 2.0]]},
            "runs": [run("default", 0.2, 3.0, 3), run("single", 0.2, 3.2, 3), run("multi", 0.2, 3.0, 3)],
        });
        assert_eq!(per_evaluation(&case, "default", 0.2), Some((3, 1.5)), "PyTorch's best of its first 3");
        assert_eq!(per_evaluation(&case, "default", 0.1), None);
        let t = table(&[case], &[0.2], 0.2);
        let row = t.lines().nth(2).unwrap();
        assert!(row.ends_with("| **no** (1.500×) | 3 (1.500×) |"), "{row}");
        assert!(row.contains("| +0.0% |"), "{row}");
    }
}
