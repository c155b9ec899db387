//! A small seeded generator (SplitMix64) for noise images and random weights. Independent of
//! libtorch's global generator, so results do not depend on the device, on other threads using
//! libtorch's RNG, or on the libtorch version.

use tch::{Device, Kind, Tensor};

pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits (exactly representable in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A CPU f32 tensor of uniform [0,1) noise.
pub fn uniform(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut rng = SplitMix64::new(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    Tensor::from_slice(&v).view(shape).to_kind(Kind::Float).to_device(Device::Cpu)
}

/// A CPU f32 tensor of N(0, std²) samples.
pub fn normal(shape: &[i64], std: f64, seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut rng = SplitMix64::new(seed);
    let v: Vec<f32> = (0..n).map(|_| rng.normal() * std as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_and_determinism() {
        let u = uniform(&[100_000], 1);
        let mean = u.mean(Kind::Float).double_value(&[]);
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!(u.min().double_value(&[]) >= 0.0 && u.max().double_value(&[]) < 1.0);
        let g = normal(&[100_000], 2.0, 3);
        let std = g.std(true).double_value(&[]);
        assert!((std - 2.0).abs() < 0.03, "{std}");
        assert!(normal(&[10], 1.0, 3).equal(&normal(&[10], 1.0, 3)));
        assert!(!uniform(&[10], 1).equal(&uniform(&[10], 2)));
    }
}
