//! L-BFGS over a flat tch tensor, following `torch.optim.LBFGS` step for step (two-loop
//! recursion, first step scaled by min(1, 1/|g|₁), optional strong-Wolfe line search ported
//! from PyTorch's `_strong_wolfe`), so that the same problem from the same start takes the
//! same path. Unlike torch, every update is followed by an evaluation, so the last point is
//! always one whose value is known, and the budget counts evaluations (forward + backward).

use tch::{Kind, Tensor};

use super::{Outcome, Stop};

/// Settings; the defaults are torch.optim.LBFGS's.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LbfgsConfig {
    pub lr: f64,
    pub history_size: usize,
    pub tolerance_grad: f64,
    pub tolerance_change: f64,
    pub strong_wolfe: bool,
    /// The first step's size in units of x: the step moves the coordinate with the largest
    /// gradient by this much. `None` is torch's min(1, 1/|g|₁)·lr, which on an objective whose
    /// gradients are small per coordinate (an image of many pixels) barely moves at all.
    pub first_step: Option<f64>,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            history_size: 100,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            strong_wolfe: false,
            first_step: None,
        }
    }
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.dot(b).double_value(&[])
}

fn abs_max(a: &Tensor) -> f64 {
    a.abs().max().double_value(&[])
}

/// Minimises `f` from `x0` with at most `max_evals` evaluations of `f`. `f` maps a flat point
/// to (value, flat gradient); an `Err` from it (e.g. cancellation) ends the run at once.
pub fn minimize<E>(
    config: &LbfgsConfig,
    x0: &Tensor,
    max_evals: usize,
    mut f: impl FnMut(&Tensor) -> Result<(f64, Tensor), E>,
) -> Result<Outcome, E> {
    let mut x = x0.detach().copy();
    let (mut loss, mut g) = f(&x)?;
    let mut evals = 1;
    let mut iterations = 0;
    let done = |x: Tensor, value, evaluations, iterations, stop| Outcome { x, value, evaluations, iterations, stop };
    if abs_max(&g) <= config.tolerance_grad {
        return Ok(done(x, loss, evals, iterations, Stop::Converged));
    }
    let mut old_dirs: Vec<Tensor> = Vec::new();
    let mut old_stps: Vec<Tensor> = Vec::new();
    let mut ro: Vec<f64> = Vec::new();
    let mut h_diag = 1.0;
    let mut d = g.neg();
    let mut t = 0.0;
    let mut prev_g: Option<Tensor> = None;
    while evals < max_evals {
        iterations += 1;
        if let Some(prev) = &prev_g {
            let y = &g - prev;
            let s = &d * t;
            let ys = dot(&y, &s);
            if ys > 1e-10 {
                if old_dirs.len() == config.history_size {
                    drop(old_dirs.remove(0));
                    drop(old_stps.remove(0));
                    ro.remove(0);
                }
                h_diag = ys / dot(&y, &y);
                old_dirs.push(y);
                old_stps.push(s);
                ro.push(1.0 / ys);
            }
            let k = old_dirs.len();
            let mut al = vec![0.0; k];
            let mut q = g.neg();
            for i in (0..k).rev() {
                al[i] = dot(&old_stps[i], &q) * ro[i];
                q -= &old_dirs[i] * al[i];
            }
            let mut r = q * h_diag;
            for i in 0..k {
                let be_i = dot(&old_dirs[i], &r) * ro[i];
                r += &old_stps[i] * (al[i] - be_i);
            }
            d = r;
        }
        prev_g = Some(g.copy());
        let prev_loss = loss;
        t = if iterations == 1 {
            match config.first_step {
                Some(step) => step / abs_max(&g).max(f64::MIN_POSITIVE),
                None => (1.0f64).min(1.0 / g.abs().sum(Kind::Float).double_value(&[])) * config.lr,
            }
        } else {
            config.lr
        };
        let gtd = dot(&g, &d);
        if gtd > -config.tolerance_change {
            return Ok(done(x, loss, evals, iterations, Stop::Converged));
        }
        if config.strong_wolfe {
            // the search's first evaluation plus at most `max_ls` more stay within the budget
            let max_ls = (max_evals - evals).min(25) - 1;
            let ls = strong_wolfe(&mut f, &x, t, &d, loss, &g, gtd, config.tolerance_change, max_ls)?;
            evals += ls.evals;
            t = ls.t;
            loss = ls.f;
            g = ls.g;
            x += &d * t;
        } else {
            x += &d * t;
            let (l, gr) = f(&x)?;
            loss = l;
            g = gr;
            evals += 1;
        }
        if abs_max(&g) <= config.tolerance_grad
            || abs_max(&(&d * t)) <= config.tolerance_change
            || (loss - prev_loss).abs() < config.tolerance_change
        {
            return Ok(done(x, loss, evals, iterations, Stop::Converged));
        }
    }
    Ok(done(x, loss, evals, iterations, Stop::Budget))
}

/// Minimiser of the cubic interpolating (x1, f1, g1), (x2, f2, g2), clamped to `bounds`.
fn cubic_interpolate(x1: f64, f1: f64, g1: f64, x2: f64, f2: f64, g2: f64, bounds: Option<(f64, f64)>) -> f64 {
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

struct LineSearch {
    f: f64,
    g: Tensor,
    t: f64,
    evals: usize,
}

/// A point on the search line: step, value, gradient, directional derivative.
struct Point {
    t: f64,
    f: f64,
    g: Tensor,
    gtd: f64,
}

/// Strong-Wolfe line search (c1 = 1e-4, c2 = 0.9), as torch.optim.lbfgs._strong_wolfe.
#[allow(clippy::too_many_arguments)]
fn strong_wolfe<E>(
    f: &mut impl FnMut(&Tensor) -> Result<(f64, Tensor), E>,
    x: &Tensor,
    mut t: f64,
    d: &Tensor,
    f0: f64,
    g0: &Tensor,
    gtd0: f64,
    tolerance_change: f64,
    max_ls: usize,
) -> Result<LineSearch, E> {
    let (c1, c2) = (1e-4, 0.9);
    let d_norm = abs_max(d);
    let mut eval = |t: f64| -> Result<Point, E> {
        let (fv, gv) = f(&(x + d * t))?;
        let gtd = dot(&gv, d);
        Ok(Point { t, f: fv, g: gv, gtd })
    };
    let mut new = eval(t)?;
    let mut evals = 1;
    let mut prev = Point { t: 0.0, f: f0, g: g0.copy(), gtd: gtd0 };
    let mut ls_iter = 0;
    let mut done = false;
    let mut bracket: Vec<Point>;
    loop {
        if ls_iter >= max_ls {
            bracket = vec![Point { t: 0.0, f: f0, g: g0.copy(), gtd: gtd0 }, new];
            break;
        }
        if new.f > f0 + c1 * new.t * gtd0 || (ls_iter > 1 && new.f >= prev.f) || new.gtd >= 0.0 {
            bracket = vec![prev, new];
            break;
        }
        if new.gtd.abs() <= -c2 * gtd0 {
            bracket = vec![new];
            done = true;
            break;
        }
        let min_step = new.t + 0.01 * (new.t - prev.t);
        let max_step = new.t * 10.0;
        t = cubic_interpolate(prev.t, prev.f, prev.gtd, new.t, new.f, new.gtd, Some((min_step, max_step)));
        prev = new;
        new = eval(t)?;
        evals += 1;
        ls_iter += 1;
    }
    // zoom
    let mut insuf_progress = false;
    let order = |b: &Vec<Point>| {
        if b[0].f <= b[b.len() - 1].f {
            (0, 1)
        } else {
            (1, 0)
        }
    };
    let (mut low, mut high) = order(&bracket);
    while !done && ls_iter < max_ls && bracket.len() == 2 {
        if (bracket[1].t - bracket[0].t).abs() * d_norm < tolerance_change {
            break;
        }
        let (b0, b1) = (&bracket[0], &bracket[1]);
        t = cubic_interpolate(b0.t, b0.f, b0.gtd, b1.t, b1.f, b1.gtd, None);
        let (bmin, bmax) = (b0.t.min(b1.t), b0.t.max(b1.t));
        let eps = 0.1 * (bmax - bmin);
        if (bmax - t).min(t - bmin) < eps {
            if insuf_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() { bmax - eps } else { bmin + eps };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        let p = eval(t)?;
        evals += 1;
        ls_iter += 1;
        if p.f > f0 + c1 * t * gtd0 || p.f >= bracket[low].f {
            bracket[high] = p;
            (low, high) = order(&bracket);
        } else {
            if p.gtd.abs() <= -c2 * gtd0 {
                done = true;
            } else if p.gtd * (bracket[high].t - bracket[low].t) >= 0.0 {
                bracket.swap(low, high);
            }
            bracket[low] = p;
        }
    }
    let best = bracket.swap_remove(if bracket.len() == 1 { 0 } else { low });
    Ok(LineSearch { f: best.f, g: best.g, t: best.t, evals })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn quadratic(x: &Tensor) -> Result<(f64, Tensor), ()> {
        // f = Σ c_i (x_i − i)², c_i = 1 + i
        let n = x.size()[0];
        let i = Tensor::arange(n, (Kind::Float, Device::Cpu));
        let c = &i + 1.0;
        let diff = x - &i;
        let f = (&c * diff.square()).sum(Kind::Float).double_value(&[]);
        Ok((f, c * diff * 2.0))
    }

    fn rosenbrock(x: &Tensor) -> Result<(f64, Tensor), ()> {
        let v: Vec<f64> = Vec::<f64>::try_from(x.to_kind(Kind::Double)).unwrap();
        let (a, b) = (v[0], v[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        let g = [-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)];
        Ok((f, Tensor::from_slice(&g).to_kind(Kind::Float)))
    }

    #[test]
    fn converges_on_a_quadratic() {
        for strong_wolfe in [false, true] {
            let cfg = LbfgsConfig { strong_wolfe, ..Default::default() };
            let x0 = Tensor::zeros([10], (Kind::Float, Device::Cpu));
            let out = minimize(&cfg, &x0, 200, quadratic).unwrap();
            let target = Tensor::arange(10, (Kind::Float, Device::Cpu));
            let err = abs_max(&(&out.x - target));
            assert!(err < 1e-3, "strong_wolfe={strong_wolfe}: error {err}, value {}", out.value);
        }
    }

    #[test]
    fn converges_on_rosenbrock() {
        let cfg = LbfgsConfig { strong_wolfe: true, ..Default::default() };
        let x0 = Tensor::from_slice(&[-1.5f32, 2.0]);
        let out = minimize(&cfg, &x0, 500, rosenbrock).unwrap();
        let v: Vec<f32> = Vec::<f32>::try_from(&out.x).unwrap();
        assert!((v[0] - 1.0).abs() < 1e-2 && (v[1] - 1.0).abs() < 2e-2, "{v:?} value {}", out.value);
        assert!(out.value < 1e-4);
    }

    #[test]
    fn budget_counts_evaluations() {
        let cfg = LbfgsConfig::default();
        let x0 = Tensor::zeros([50], (Kind::Float, Device::Cpu));
        let mut calls = 0;
        let out = minimize(&cfg, &x0, 7, |x| {
            calls += 1;
            // a badly conditioned quadratic that does not converge in 7 evaluations
            let n = x.size()[0];
            let c = Tensor::arange(n, (Kind::Float, Device::Cpu)).exp2() + 1.0;
            let diff = x - 1.0;
            Ok::<_, ()>(((&c * diff.square()).sum(Kind::Float).double_value(&[]), c * diff * 2.0))
        })
        .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(out.evaluations, 7);
        assert_eq!(out.stop, Stop::Budget);
        // with the line search too
        for budget in 1..12 {
            let cfg = LbfgsConfig { strong_wolfe: true, ..Default::default() };
            let mut calls = 0;
            let out = minimize(&cfg, &Tensor::from_slice(&[-1.5f32, 2.0]), budget, |x| {
                calls += 1;
                rosenbrock(x)
            })
            .unwrap();
            assert!(calls <= budget && out.evaluations == calls, "budget {budget}: {calls} calls");
        }
    }
}
