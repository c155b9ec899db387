//! The coarse-to-fine schedule and how a job's budgets (evaluations, time) are shared between
//! its scales: pure functions of the parameters and the clock, unit-tested here.

use super::cost::tap_elements_per_pixel;
use super::image_io::MIN_SIDE;
use super::params::{Init, Params, STYLE_WEIGHT_PER_STRENGTH};

/// The share of the output size's evaluations (or of the time budget) that run on the f32
/// network when the working precision is reduced.
pub const REFINE_FRACTION: f64 = 0.3;

/// How a coarse scale's L-BFGS history moves to the next, finer scale (`scale::carry`): each
/// pair (s, y) is upsampled like the image (bilinear) and y is also scaled by this factor.
/// Without a carried history the finer scale restarts from steepest descent: on the suite, from
/// the content at 128 px, its first steps overshoot and it trails single scale for a dozen
/// evaluations. Measured at a fixed 50 / 80 / 130 evaluations (docs/benchmarks.md): carrying
/// beats restarting on every content start of the suite at 50 and 80 evaluations, and overall
/// from noise at 130; of the factors tried (1/4, the pixel-count ratio that an objective of
/// the downsampled image would give; 1/2; 1) 1/2 was best (1 close behind).
pub const CARRIED_GRADIENT_SCALE: f64 = 0.5;

/// Evaluations over which a coarse scale must improve by [`STALL_IMPROVEMENT`] to go on.
const STALL_WINDOW: usize = 20;
/// Relative improvement of the best value over [`STALL_WINDOW`] evaluations below which a
/// coarse scale has stalled.
const STALL_IMPROVEMENT: f64 = 1e-3;

/// One scale of the schedule: its size and its share of the evaluation budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub width: u32,
    pub height: u32,
    pub evaluations: usize,
}

/// Whether a job runs coarse-to-fine, and why: asked for, or chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub multiscale: bool,
    /// The request left it to the schedule.
    pub chosen: bool,
    pub reason: &'static str,
}

impl Choice {
    /// How a summary says it: `multi-scale (chosen: …)`.
    pub fn describe(&self) -> String {
        let what = if self.multiscale { "multi-scale" } else { "single scale" };
        let how = if self.chosen { "chosen" } else { "asked for" };
        format!("{what} ({how}: {})", self.reason)
    }
}

/// The content emphasis ([`content_emphasis`]) from which a job that starts from an image runs at
/// the output size only.
pub const SINGLE_SCALE_EMPHASIS: f64 = 100.0;

/// How much more a job's objective weighs the content than the defaults do: α·N·M ÷ (β / β₁),
/// with N·M the content layers' size at the output (α's default is 1/(N·M)) and β₁ the style
/// weight of strength 1. 1/strength with default weights; `--content-weight 1 --style-weight
/// 1e5` at 256 px is about 2000.
pub fn content_emphasis(p: &Params, w: u32, h: u32) -> f64 {
    let content_only = Params { style_layers: Vec::new(), ..p.clone() };
    let elements = tap_elements_per_pixel(&content_only) * f64::from(w) * f64::from(h);
    let c = p.coefficients(elements);
    c.alpha * elements * STYLE_WEIGHT_PER_STRENGTH / c.beta.max(f64::MIN_POSITIVE)
}

/// What the schedule does for an output of `w` × `h` when the request does not say
/// (`multiscale: None`). Measured on the suite (`neural-style bench --suite`, docs/benchmarks.md,
/// seeded random weights): coarse to fine won every case from noise (the coarse scales lay out
/// the large structures at a quarter of the cost per evaluation), and from the content with the
/// default weights (the finer scales start from the content plus the coarse scales' upsampled
/// change, see `Inputs::finer_start`); from the content with a content-heavy objective
/// (emphasis ≥ [`SINGLE_SCALE_EMPHASIS`]) the optimum is close to the start and the coarse
/// scales' share of the budget is better spent at the output size.
pub fn choose(p: &Params, w: u32, h: u32) -> Choice {
    if let Some(m) = p.multiscale {
        return Choice { multiscale: m, chosen: false, reason: "the request's multiscale" };
    }
    match p.init {
        Init::Noise => Choice {
            multiscale: true,
            chosen: true,
            reason: "noise start: coarse scales lay out the structure cheaply",
        },
        Init::Content | Init::Style if content_emphasis(p, w, h) >= SINGLE_SCALE_EMPHASIS => Choice {
            multiscale: false,
            chosen: true,
            reason: "image start, content-heavy weights: the optimum is near the start",
        },
        Init::Content | Init::Style => Choice {
            multiscale: true,
            chosen: true,
            reason: "image start, style-led weights: coarse scales move the structure cheaply",
        },
    }
}

/// The coarse-to-fine schedule for an output of w × h, coarsest first. Sizes halve from the
/// output down to `min_scale` or half the output, whichever is smaller, not below 64 px unless
/// `min_scale` is (longest side; both sides stay ≥ 16 px), at most 4 scales, and only while every
/// scale gets at least 10 evaluations. The coarser scales share [`coarse_share`] of the
/// evaluation budget equally and the output size gets the rest; a coarse evaluation costs ¼,
/// 1/16, … of a full one. Each scale starts from the
/// previous one's result (see `Inputs::finer_start`); style targets are recomputed per scale
/// from the style resized by the same factor. One scale when [`choose`] says so.
pub fn scales(p: &Params, w: u32, h: u32) -> Vec<Scale> {
    let mut sizes = vec![(w, h)];
    if choose(p, w, h).multiscale {
        // never coarser than min_scale, but at least one coarse scale (half the output) where
        // the output is small: at 128 px a 64 px scale won every noise case of the suite; not
        // below 64 px unless min_scale says so (VGG's deepest taps are 4×4 there)
        let coarsest = p.min_scale.min(w.max(h) / 2).max(p.min_scale.min(64)).max(MIN_SIDE);
        let (mut sw, mut sh) = (w, h);
        while sizes.len() < 4 && sw.max(sh) / 2 >= coarsest && sw.min(sh) / 2 >= 16 {
            sw = (sw / 2).max(1);
            sh = (sh / 2).max(1);
            sizes.push((sw, sh));
        }
        let per_coarse = |n: usize| (p.evaluations as f64 * coarse_share(p) / (n - 1) as f64) as usize;
        while sizes.len() > 1 && per_coarse(sizes.len()) < 10 {
            sizes.pop();
        }
    }
    sizes.reverse();
    let n = sizes.len();
    let coarse = if n == 1 { 0 } else { (p.evaluations as f64 * coarse_share(p) / (n - 1) as f64) as usize };
    let last = p.evaluations - coarse * (n - 1);
    sizes
        .iter()
        .enumerate()
        .map(|(i, &(width, height))| Scale { width, height, evaluations: if i + 1 == n { last } else { coarse } })
        .collect()
}

/// Evaluations for scale `k` of `schedule` when `left` of the job's budget remain: its own
/// share plus whatever earlier scales left unused, keeping the later scales' shares.
pub fn evaluation_budget(schedule: &[Scale], k: usize, left: usize) -> usize {
    let later: usize = schedule[k + 1..].iter().map(|s| s.evaluations).sum();
    left.saturating_sub(later).max(1)
}

/// The share of a job's budget (evaluations and time) that its coarser scales split: half from
/// noise, where they build the whole structure; a quarter from an image, which has it already
/// (on the suite, from the content at 128 px and 0.1× PyTorch's time, halves starved the output
/// size: 1.46–1.68× PyTorch's loss against 1.13–1.18× single scale).
pub fn coarse_share(p: &Params) -> f64 {
    match p.init {
        Init::Noise => 0.5,
        Init::Content | Init::Style => 0.25,
    }
}

/// The fraction of the remaining time budget that scale `k` gets, where an evaluation at scale
/// j costs `costs[j]` of one at the output size (the last): each scale's time weighs its
/// evaluation share (as [`scales`]: the coarser scales split `share`, the output size gets the
/// rest) times its cost, so that in time too the coarse scales get their share of the
/// *evaluations*. On the suite (docs/benchmarks.md), from the content at 128 px on a CPU where a
/// 64 px evaluation costs 0.4 of a 128 px one, a quarter of the *time* gave the coarse scale
/// 45–50% of the evaluations and ended worse than single scale; its evaluation share (12% of
/// the time) beat single scale in every run. Time a scale leaves unused (it converged or ran out
/// of evaluations) rolls over to the later ones, because each share is taken of what remains.
pub fn time_share(costs: &[f64], k: usize, share: f64) -> f64 {
    let n = costs.len();
    if k + 1 >= n {
        return 1.0;
    }
    let weight = |j: usize| if j + 1 == n { 1.0 - share } else { share / (n - 1) as f64 * costs[j] };
    weight(k) / (k..n).map(weight).sum::<f64>()
}

/// When a scale with `share` of the remaining time ([`time_share`]) must hand on, in seconds since
/// the job started, `now` seconds into a job with a time budget of `max_seconds`. The scale's
/// clock starts after its first evaluation (`now` then), which pays for first-call work
/// (autotuning, oneDNN primitives) that says nothing of what its evaluations cost.
pub fn deadline(max_seconds: Option<f64>, now: f64, share: f64) -> Option<f64> {
    max_seconds.map(|t| now + share * (t - now).max(0.0))
}

/// With a reduced-precision network, the job-wide evaluation count from which the output scale
/// runs on the f32 network: the last [`REFINE_FRACTION`] of the scale's `budget`, which starts
/// after `done` evaluations.
pub fn refine_from(done: usize, budget: usize) -> usize {
    done + budget - ((budget as f64 * REFINE_FRACTION).ceil() as usize).min(budget)
}

/// The same in time: seconds into the job after which the f32 network takes over.
pub fn refine_at(max_seconds: Option<f64>) -> Option<f64> {
    max_seconds.map(|t| t * (1.0 - REFINE_FRACTION))
}

/// Whether the best value (after each evaluation) stopped improving.
pub fn stalled(best: &[f64]) -> bool {
    let n = best.len();
    n > STALL_WINDOW && best[n - 1] > best[n - 1 - STALL_WINDOW] * (1.0 - STALL_IMPROVEMENT)
}

/// The longest side of a style image of longest side `longest` at a scale `factor` of the
/// output (styles shrink with the content; never below the minimum side).
pub fn style_side(longest: u32, factor: f64) -> u32 {
    ((f64::from(longest) * factor).round() as u32).max(MIN_SIDE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuples(s: Vec<Scale>) -> Vec<(u32, u32, usize)> {
        s.into_iter().map(|s| (s.width, s.height, s.evaluations)).collect()
    }

    #[test]
    fn coarse_to_fine_schedule() {
        let p = Params { evaluations: 500, ..Params::default() };
        // 512×384: 128×96, 256×192, 512×384; half the budget to the output size
        assert_eq!(tuples(scales(&p, 512, 384)), vec![(128, 96, 125), (256, 192, 125), (512, 384, 250)]);
        // small images: one coarse scale at half the output, below min_scale
        assert_eq!(tuples(scales(&p, 200, 150)), vec![(100, 75, 250), (200, 150, 250)]);
        assert_eq!(tuples(scales(&p, 120, 90)), vec![(120, 90, 500)], "no coarse scale below 64 px");
        let tiny = Params { min_scale: 16, ..p.clone() };
        assert_eq!(scales(&tiny, 120, 90).len(), 3, "unless min_scale says so");
        assert_eq!(tuples(scales(&tiny, 24, 20)), vec![(24, 20, 500)], "both sides stay ≥ 16");
        let few = Params { evaluations: 30, ..Params::default() };
        assert_eq!(tuples(scales(&few, 512, 512)), vec![(256, 256, 15), (512, 512, 15)]);
        let one = Params { evaluations: 1, ..Params::default() };
        assert_eq!(tuples(scales(&one, 512, 512)), vec![(512, 512, 1)]);
        // at most four scales; both sides stay ≥ 16
        let big = Params { evaluations: 1000, ..Params::default() };
        assert_eq!(scales(&big, 4096, 2048).len(), 4);
        assert_eq!(scales(&big, 2048, 40).len(), 2, "1024×20 is the last with both sides ≥ 16");
        let single = Params { multiscale: Some(false), ..Params::default() };
        assert_eq!(tuples(scales(&single, 2048, 2048)), vec![(2048, 2048, 500)]);
        // time shares where evaluations cost the same at every size: coarse scales split half
        // the budget, the output size gets the rest
        let same = [1.0; 3];
        let shares: Vec<f64> = (0..3).map(|k| time_share(&same, k, 0.5)).collect();
        assert!((shares[0] - 0.25).abs() < 1e-12 && (shares[1] - 1.0 / 3.0).abs() < 1e-12 && shares[2] == 1.0);
        assert_eq!(time_share(&[1.0], 0, 0.5), 1.0);
        // from an image the coarse scales split a quarter: 1/8 each of 3 scales, then 1/7 of the rest
        let content = Params { init: Init::Content, evaluations: 500, ..Params::default() };
        assert_eq!(coarse_share(&content), 0.25);
        assert_eq!(tuples(scales(&content, 512, 384)), vec![(128, 96, 62), (256, 192, 62), (512, 384, 376)]);
        assert!((time_share(&same, 0, 0.25) - 0.125).abs() < 1e-12);
        assert!((time_share(&same, 1, 0.25) - 1.0 / 7.0).abs() < 1e-12);
        // unused evaluations roll over, later scales keep theirs
        let s = scales(&p, 512, 384);
        assert_eq!(evaluation_budget(&s, 0, 500), 125);
        assert_eq!(evaluation_budget(&s, 1, 450), 200);
        assert_eq!(evaluation_budget(&s, 2, 300), 300);
        for s in [scales(&p, 512, 384), scales(&few, 512, 512), scales(&big, 4096, 2048)] {
            let total: usize = s.iter().map(|x| x.evaluations).sum();
            assert!(total == 500 || total == 30 || total == 1000);
        }
    }

    #[test]
    fn the_schedule_is_chosen_from_the_start_and_the_weights_unless_asked() {
        let noise = Params { init: Init::Noise, ..Params::default() };
        let content = Params { init: Init::Content, ..Params::default() };
        // the suite's content-heavy case (issue #12): α = 1, β = 1e5
        let heavy = Params { content_weight: Some(1.0), style_weight: Some(1e5), ..content.clone() };
        let (w, h) = (256, 192);
        // default weights: emphasis 1 (1/strength); α = 1, β = 1e5 at 256×192: 512·32·24/200
        assert!((content_emphasis(&content, w, h) - 1.0).abs() < 1e-9);
        assert!((content_emphasis(&Params { strength: 0.2, ..content.clone() }, w, h) - 5.0).abs() < 1e-9);
        let e = content_emphasis(&heavy, w, h);
        assert!((e - 512.0 * 32.0 * 24.0 / 200.0).abs() < 1e-6, "{e}");
        assert!(choose(&noise, w, h).multiscale && choose(&noise, w, h).chosen);
        assert!(choose(&content, w, h).multiscale);
        assert!(!choose(&heavy, w, h).multiscale && choose(&heavy, w, h).chosen);
        // from noise even content-heavy weights go coarse to fine: noise has no structure
        assert!(choose(&Params { init: Init::Noise, ..heavy.clone() }, w, h).multiscale);
        assert_eq!(scales(&content, 512, 384).len(), 3);
        assert_eq!(scales(&heavy, 512, 384).len(), 1);
        // asked for: kept whatever the start
        let asked = Params { multiscale: Some(true), ..heavy.clone() };
        assert!(choose(&asked, w, h).multiscale && !choose(&asked, w, h).chosen);
        assert_eq!(scales(&asked, 512, 384).len(), 3);
        assert!(choose(&asked, w, h).describe().starts_with("multi-scale (asked for"));
        assert!(choose(&heavy, w, h).describe().starts_with("single scale (chosen: image start, content-heavy"));
    }

    #[test]
    fn time_is_shared_so_that_each_scale_gets_its_share_of_the_evaluations() {
        // from the content (a quarter of the evaluations coarse), a 64 px evaluation at 0.4 of a
        // 128 px one: 0.25·0.4 / (0.25·0.4 + 0.75) ≈ 12% of the time
        let costs = [0.4, 1.0];
        let t = time_share(&costs, 0, 0.25);
        assert!((t - 0.1 / 0.85).abs() < 1e-12, "{t}");
        // which buys the coarse scale a quarter of the evaluations
        let (coarse, fine) = (t / 0.4, (1.0 - t) / 1.0);
        assert!((coarse / (coarse + fine) - 0.25).abs() < 1e-12);
        // three scales from noise at ¼ and 0.5 the cost: shares of what remains, rolling over
        let costs = [0.25, 0.5, 1.0];
        let first = time_share(&costs, 0, 0.5);
        assert!((first - 0.0625 / (0.0625 + 0.125 + 0.5)).abs() < 1e-12);
        assert!((time_share(&costs, 1, 0.5) - 0.125 / 0.625).abs() < 1e-12);
        // evaluations that cost what the output's do: the time split is the evaluation split
        assert!((time_share(&[1.0, 1.0], 0, 0.25) - 0.25).abs() < 1e-12);
        // deadlines: the share of what is left
        assert_eq!(deadline(Some(10.0), 2.0, time_share(&[1.0, 1.0], 0, 0.25)), Some(4.0));
    }

    #[test]
    fn deadlines_refinement_and_stalls() {
        // 10 s budget, 3 scales, 2 s already spent: the first scale gets a quarter of the 8 left
        let same = [1.0; 3];
        assert_eq!(deadline(Some(10.0), 2.0, time_share(&same, 0, 0.5)), Some(4.0));
        assert_eq!(deadline(Some(10.0), 2.0, time_share(&same, 2, 0.5)), Some(10.0));
        assert_eq!(deadline(None, 2.0, time_share(&same, 0, 0.5)), None);
        // the last 30% of a 100-evaluation output scale that starts after 50 evaluations
        assert_eq!(refine_from(50, 100), 120);
        assert_eq!(refine_from(0, 1), 0, "a one-evaluation scale refines at once");
        assert_eq!(refine_at(Some(10.0)), Some(7.0));
        // a flat trace has stalled after the window, a falling one has not
        assert!(!stalled(&[1.0; STALL_WINDOW]));
        assert!(stalled(&[1.0; STALL_WINDOW + 1]));
        let falling: Vec<f64> = (0..40).map(|i| 1.0 - 0.01 * f64::from(i)).collect();
        assert!(!stalled(&falling));
        assert_eq!(style_side(512, 0.25), 128);
        assert_eq!(style_side(40, 0.25), MIN_SIDE);
    }
}
