//! How long one evaluation takes at each image size, as this engine's jobs measured it: a job
//! with a time budget splits it between its scales by what their evaluations cost
//! (`schedule::time_share`), and a coarse evaluation's cost relative to a full one is far from
//! its pixel ratio: about 0.4 (not ¼) at 64 against 128 px on a 2-core CPU, where fixed
//! per-evaluation work weighs; close to 1 on a GPU at small sizes, where kernel launches do.

use std::collections::HashMap;
use std::sync::Mutex;

/// Before a size has been measured: an evaluation costs as if the image had this many more
/// pixels (fixed work per evaluation). Measured on a 2-core CPU (AVX512-BF16), seeded weights:
/// a 64 px evaluation costs 0.35–0.45 of a 128 px one, (64² + 64²) / (128² + 64²) = 0.4.
pub const UNMEASURED_OVERHEAD_PIXELS: f64 = 4096.0;

/// Weight of a new measurement in a size's running mean.
const NEW_WEIGHT: f64 = 0.5;

/// Seconds per evaluation by image size (width, height), a running mean over the scales run.
#[derive(Default)]
pub struct Pace {
    seconds: Mutex<HashMap<(u32, u32), f64>>,
}

impl Pace {
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

    /// What an evaluation at `size` costs relative to one at `output`: measured where both
    /// sizes were, else from the pixel counts with [`UNMEASURED_OVERHEAD_PIXELS`].
    pub fn relative_cost(&self, size: (u32, u32), output: (u32, u32)) -> f64 {
        match (self.seconds_per_evaluation(size), self.seconds_per_evaluation(output)) {
            (Some(s), Some(o)) => (s / o).clamp(1e-3, 1.0),
            _ => {
                let pixels = |(w, h): (u32, u32)| f64::from(w) * f64::from(h) + UNMEASURED_OVERHEAD_PIXELS;
                (pixels(size) / pixels(output)).min(1.0)
            }
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
}
