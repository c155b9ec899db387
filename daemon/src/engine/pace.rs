//! How long one evaluation takes at each image size, as this engine's jobs measured it: a job
//! with a time budget splits it between its scales by what their evaluations cost
//! (`schedule::time_share`), and a coarse evaluation's cost relative to a full one is far from
//! its pixel ratio: about 0.4 (not ¼) at 64 against 128 px on a 2-core CPU, where fixed
//! per-evaluation work weighs; close to 1 on a GPU at small sizes, where kernel launches do.
//!
//! Sizes measured are used as measured; a size not measured yet is read off the cost curve
//! through the measured ones (by pixel count), so that once a daemon has run a job (its warm-up
//! does) every new image size — a GIMP user's every image — is split by this device's costs;
//! before anything is measured, by pixels plus a fixed part that depends on the device.

use std::collections::HashMap;
use std::sync::Mutex;

use tch::Device;

/// Before anything has been measured, on a CPU: an evaluation costs as if the image had this
/// many more pixels (fixed work per evaluation). Measured on a 2-core CPU (AVX512-BF16), seeded
/// weights: a 64 px evaluation costs 0.35–0.45 of a 128 px one, (64² + 64²) / (128² + 64²) = 0.4.
pub const UNMEASURED_OVERHEAD_PIXELS: f64 = 4096.0;

/// The same on a CUDA device, where up to ~512 px an evaluation waits on kernel launches:
/// measured on an H100 (2026-11-27, fp32) 3.6 ms at 256² and 5.3 ms at 512², which a line
/// a + b·pixels fits with a = 3.0 ms, a fixed part of 3.5·10⁵ pixels (bf16: 4.4 and 5.3 ms,
/// flatter still).
pub const UNMEASURED_OVERHEAD_PIXELS_CUDA: f64 = 350_000.0;

/// Weight of a new measurement in a size's running mean.
const NEW_WEIGHT: f64 = 0.5;

/// Seconds per evaluation by image size (width, height), a running mean over the scales run.
pub struct Pace {
    seconds: Mutex<HashMap<(u32, u32), f64>>,
    overhead_pixels: f64,
}

impl Default for Pace {
    fn default() -> Self {
        Self::new(Device::Cpu)
    }
}

fn pixels((w, h): (u32, u32)) -> f64 {
    f64::from(w) * f64::from(h)
}

impl Pace {
    /// Nothing measured yet, on `device`.
    pub fn new(device: Device) -> Self {
        let overhead_pixels =
            if device.is_cuda() { UNMEASURED_OVERHEAD_PIXELS_CUDA } else { UNMEASURED_OVERHEAD_PIXELS };
        Self { seconds: Mutex::default(), overhead_pixels }
    }

    /// Records that `evaluations` at `size` took `seconds` (ignored when too few to tell).
    pub fn record(&self, size: (u32, u32), evaluations: usize, seconds: f64) {
        if evaluations < 3 || seconds.is_nan() || seconds <= 0.0 {
            return;
        }
        let per = seconds / evaluations as f64;
        let mut known = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        known.entry(size).and_modify(|s| *s += NEW_WEIGHT * (per - *s)).or_insert(per);
    }

    /// Seconds per evaluation measured at `size`, if any.
    pub fn seconds_per_evaluation(&self, size: (u32, u32)) -> Option<f64> {
        self.seconds.lock().unwrap_or_else(|e| e.into_inner()).get(&size).copied()
    }

    /// Seconds per evaluation at `size`: as measured there, else on the piecewise-linear curve
    /// (in pixels) through the measured sizes, extended beyond them by the end segments' slopes
    /// (never below half the nearest measurement when smaller, nor below it when larger). None
    /// until two sizes of different pixel counts are measured.
    fn curve(&self, size: (u32, u32)) -> Option<f64> {
        let known = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&s) = known.get(&size) {
            return Some(s);
        }
        // (pixels, seconds), one point per pixel count (the mean of sizes that share one)
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        for (&k, &s) in known.iter() {
            match points.iter_mut().find(|p| p.0 == pixels(k)) {
                Some(p) => (p.1, p.2) = (p.1 + s, p.2 + 1.0),
                None => points.push((pixels(k), s, 1.0)),
            }
        }
        let mut points: Vec<(f64, f64)> = points.into_iter().map(|(p, s, n)| (p, s / n)).collect();
        if points.len() < 2 {
            return None;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let px = pixels(size);
        let i = points.iter().position(|p| p.0 >= px).unwrap_or(points.len() - 1).clamp(1, points.len() - 1);
        let ((p0, s0), (p1, s1)) = (points[i - 1], points[i]);
        let on_line = s0 + (s1 - s0) * (px - p0) / (p1 - p0);
        let (first, last) = (points[0], points[points.len() - 1]);
        Some(if px < first.0 {
            on_line.clamp(0.5 * first.1, first.1)
        } else if px > last.0 {
            on_line.max(last.1)
        } else {
            on_line
        })
    }

    /// What an evaluation at `size` costs relative to one at `output`: from what was measured
    /// (see `Pace::curve`) once two sizes are, else from the pixel counts plus the device's
    /// fixed part ([`UNMEASURED_OVERHEAD_PIXELS`], [`UNMEASURED_OVERHEAD_PIXELS_CUDA`]).
    pub fn relative_cost(&self, size: (u32, u32), output: (u32, u32)) -> f64 {
        match (self.curve(size), self.curve(output)) {
            (Some(s), Some(o)) => (s / o).clamp(1e-3, 1.0),
            _ => ((pixels(size) + self.overhead_pixels) / (pixels(output) + self.overhead_pixels)).min(1.0),
        }
    }

    /// [`Pace::relative_cost`] of every size of a schedule relative to its last (the output).
    pub fn relative_costs(&self, sizes: &[(u32, u32)]) -> Vec<f64> {
        let output = *sizes.last().expect("a schedule has a scale");
        sizes.iter().map(|&s| self.relative_cost(s, output)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmeasured_sizes_cost_their_pixels_plus_a_fixed_part_then_what_was_measured() {
        let pace = Pace::default();
        let (coarse, output) = ((64, 64), (128, 128));
        assert!((pace.relative_cost(coarse, output) - 0.4).abs() < 1e-12);
        assert!(pace.relative_cost((256, 256), (512, 512)) < 0.27);
        assert_eq!(pace.relative_costs(&[coarse, output]).last(), Some(&1.0));
        // one size measured is not enough
        pace.record(output, 10, 2.0);
        assert!((pace.relative_cost(coarse, output) - 0.4).abs() < 1e-12);
        // both: their ratio (a GPU at small sizes: launch-bound, nearly the same)
        pace.record(coarse, 10, 1.8);
        assert!((pace.relative_cost(coarse, output) - 0.9).abs() < 1e-12);
        // a new measurement moves the mean halfway; too few evaluations are ignored
        pace.record(coarse, 10, 1.0);
        assert!((pace.seconds_per_evaluation(coarse).unwrap() - 0.14).abs() < 1e-12);
        pace.record(coarse, 2, 100.0);
        pace.record(coarse, 10, 0.0);
        assert!((pace.seconds_per_evaluation(coarse).unwrap() - 0.14).abs() < 1e-12);
        assert!((pace.relative_cost(coarse, output) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn on_a_gpu_small_sizes_cost_nearly_what_large_ones_do_until_measured() {
        let (cpu, gpu) = (Pace::new(Device::Cpu), Pace::new(Device::Cuda(0)));
        let (coarse, output) = ((256, 192), (512, 384));
        // the H100's fp32 figures (3.6 ms at 256², 5.3 at 512²) say about 0.7 for 256² against 512²
        let expected =
            (256.0 * 256.0 + UNMEASURED_OVERHEAD_PIXELS_CUDA) / (512.0 * 512.0 + UNMEASURED_OVERHEAD_PIXELS_CUDA);
        assert!((expected - 3.6 / 5.3).abs() < 0.03, "{expected}");
        assert!(gpu.relative_cost(coarse, output) > 0.6);
        assert!(cpu.relative_cost(coarse, output) < 0.3);
    }

    #[test]
    fn sizes_not_measured_are_read_off_the_curve_through_those_that_were() {
        let pace = Pace::default();
        // a launch-bound device: 4 ms up to 256², then growing with the pixels
        for (side, ms) in [(128u32, 4.0), (256, 4.0), (512, 8.0)] {
            pace.record((side, side), 10, ms * 10.0 / 1000.0);
        }
        let cost = |size, output| pace.relative_cost(size, output);
        // a new image of 600×450 and its coarse scales: between and beyond the measured sizes
        let (c1, c2, out) = ((150, 112), (300, 225), (600, 450));
        let at = |px: f64| if px <= 65536.0 { 4.0 } else { 4.0 + 4.0 * (px - 65536.0) / (262144.0 - 65536.0) };
        let output_ms = (at(262144.0) + 4.0 * (270000.0 - 262144.0) / (262144.0 - 65536.0)).max(8.0);
        for (size, px) in [(c1, 150.0 * 112.0), (c2, 300.0 * 225.0)] {
            let expected = at(px) / output_ms;
            assert!((cost(size, out) - expected).abs() < 1e-9, "{size:?}: {} vs {expected}", cost(size, out));
        }
        // far below the smallest size measured: at most the smallest's cost, at least half of it
        let tiny = cost((16, 16), (128, 128));
        assert!((0.5..=1.0).contains(&tiny), "{tiny}");
        // the pixel estimate would have said 0.27 for 300×225 against 600×450
        assert!(cost(c2, out) > 0.45);
        // a size that was measured is used as measured
        assert!((cost((256, 256), (512, 512)) - 0.5).abs() < 1e-12);
    }
}
