//! The objective of Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
//! Networks" (CVPR 2016), in one place.
//!
//! With F^l the activations of the generated image x at layer l as an N_l × M_l matrix
//! (N_l filters, M_l = height × width positions), P^l those of the content image p and
//! A^l the Gram matrix of the style image a:
//!
//! * eq. 1: `L_content = ½ Σ_ij (F^l_ij − P^l_ij)²`, summed over the content layers
//! * eq. 3: `G^l_ij = Σ_k F^l_ik F^l_jk`
//! * eq. 4: `E_l = 1/(4 N_l² M_l²) Σ_ij (G^l_ij − A^l_ij)²`
//! * eq. 5: `L_style = Σ_l w_l E_l`, `w_l = 1/|S|` by default
//! * eq. 7: `L_total = α L_content + β L_style` (+ γ L_tv, an optional smoothness term)
//!
//! Eq. 4 is computed as `1/(4 N_l²) Σ_ij (G^l_ij/M_l − A^l_ij/M'_l)²` where M'_l is the style
//! image's own number of positions: identical to the paper when style and output have the
//! same size, and still meaningful when `--style-scale` makes them differ. Several style
//! images blend their normalised Gram matrices with weights that sum to one.
//!
//! `L_tv = Σ_c Σ_ij [(x_{i+1,j} − x_ij)² + (x_{i,j+1} − x_ij)²] / (H·W)` on the image in [0,1].
//!
//! The image is kept in [0,1] inside the objective: the network sees `clamp(x, 0, 1)`, so the
//! optimiser never gains anything from values that would be clipped away on output.
//!
//! Gradient of eq. 4, written out rather than left to autograd: with G and A normalised by M,
//! `∂E_l/∂F^l = (G^l − A^l) F^l / (N_l² M_l)`. The Gram matrices (values) are computed in f32;
//! the gradient is one matrix product `F^l C_l` in the network's precision (bf16 by default),
//! where autograd through `F Fᵀ` would take two f32 products and two precision conversions
//! ([`gradient_surrogate`]).

use tch::{Kind, Tensor};

use super::host;
use super::vgg::{Pooling, Vgg19};

/// G^l / M_l for activations of shape [1, N, H, W]: eq. 3 divided by the number of positions.
pub fn normalised_gram(features: &Tensor) -> Tensor {
    let (_, n, h, w) = features.size4().expect("activations are 4-D");
    let m = (h * w) as f64;
    let strides = features.stride();
    if strides[1] == 1 && n > 1 {
        // Channels-last storage is already the M × N matrix Fᵀ: G = (Fᵀ)ᵀ Fᵀ without a copy.
        let ft = features.permute([0, 2, 3, 1]).reshape([h * w, n]);
        ft.transpose(0, 1).matmul(&ft) / m
    } else {
        let f = features.reshape([n, h * w]);
        f.matmul(&f.transpose(0, 1)) / m
    }
}

/// A scalar whose gradient with respect to `features` ([1, N, h, w], any precision and memory
/// format) is `F C` for a symmetric N × N constant `C`: `⟨F, stop(F C)⟩`. With
/// `C = s·(G − A)/(N² M)` that gradient is `s·∂E_l/∂F` (see the module docs).
pub fn gradient_surrogate(features: &Tensor, c: &Tensor) -> Tensor {
    let (_, n, h, w) = features.size4().expect("activations are 4-D");
    let kind = features.kind();
    // F C in f32 terms: in bf16 (f32's exponent range) as C_hi + C_lo, two products in bf16,
    // because one rounded C would bias every position's gradient the same way (near a
    // minimum, where G − A is small, enough to mislead the line search); in f16, whose range
    // cannot hold C's small entries, in f32 and rounded once at the end, as autograd would
    let product = |a: &Tensor, right: bool| {
        tch::no_grad(|| {
            let mul = |a: &Tensor, b: &Tensor| if right { a.matmul(b) } else { b.matmul(a) };
            match kind {
                Kind::BFloat16 => {
                    let hi = c.to_kind(kind);
                    let lo = (c - hi.to_kind(Kind::Float)).to_kind(kind);
                    mul(a, &hi) + mul(a, &lo)
                }
                Kind::Float => mul(a, c),
                _ => mul(&a.to_kind(Kind::Float), c).to_kind(kind),
            }
        })
    };
    // ⟨F, G⟩: one dot product in f32 (its value is never used, only its gradient G)
    let inner = |a: Tensor, g: Tensor| match kind {
        Kind::Float => a.reshape([-1]).dot(&g.reshape([-1])),
        _ => (a * g).sum(Kind::Float),
    };
    if features.stride()[1] == 1 && n > 1 {
        // channels-last: the storage is Fᵀ (M × N), and Fᵀ C is the gradient's layout too
        let ft = features.permute([0, 2, 3, 1]).reshape([h * w, n]);
        let g = product(&ft, true);
        inner(ft, g)
    } else {
        let f = features.reshape([n, h * w]);
        let g = product(&f, false);
        inner(f, g)
    }
}

/// The constant of [`gradient_surrogate`] for one style layer: `C = scale·(G − A)/(N² M)`, with
/// G, A normalised Grams and M the layer's positions (the whole image's, when tiled).
pub fn style_gradient_constant(gram: &Tensor, target: &Tensor, scale: f64, positions: f64) -> Tensor {
    tch::no_grad(|| style_gradient_constant_of_difference(&(gram - target), scale, positions))
}

/// [`style_gradient_constant`] from `d = G − A`.
pub fn style_gradient_constant_of_difference(d: &Tensor, scale: f64, positions: f64) -> Tensor {
    let n = d.size()[0] as f64;
    tch::no_grad(|| d * (scale / (n * n * positions)))
}

/// The sum of scalar tensors (f32) in two operators (one for a single tensor).
fn total(parts: impl Iterator<Item = Tensor>) -> Tensor {
    let parts: Vec<Tensor> = parts.map(|t| t.to_kind(Kind::Float)).collect();
    match parts.len() {
        1 => parts.into_iter().next().expect("one part"),
        _ => Tensor::stack(&parts, 0).sum(Kind::Float),
    }
}

/// Eq. 1 for one layer: ½ Σ (F − P)².
pub fn content_loss(features: &Tensor, target: &Tensor) -> Tensor {
    (features - target).square().sum(Kind::Float) * 0.5
}

/// Eq. 4 for one layer, given normalised Gram matrices (see module docs).
pub fn style_layer_loss(gram: &Tensor, target: &Tensor) -> Tensor {
    style_layer_loss_of_difference(&(gram - target), 1.0)
}

/// `weight` × eq. 4 for one layer from `d = G − A` (N × N, normalised f32):
/// `(Σ d² / (4 N²)) · weight`.
pub fn style_layer_loss_of_difference(d: &Tensor, weight: f64) -> Tensor {
    let n = d.size()[0] as f64;
    d.square().sum(Kind::Float) / (4.0 * n * n) * weight
}

/// Total variation, mean over pixels of squared neighbour differences summed over channels.
pub fn tv_loss(image: &Tensor) -> Tensor {
    let (_, _, h, w) = image.size4().expect("image is 4-D");
    let dy = image.narrow(2, 1, h - 1) - image.narrow(2, 0, h - 1);
    let dx = image.narrow(3, 1, w - 1) - image.narrow(3, 0, w - 1);
    (dy.square().sum(Kind::Float) + dx.square().sum(Kind::Float)) / ((h * w) as f64)
}

/// One content layer with its target P^l.
pub struct ContentTerm {
    pub index: usize,
    pub target: Tensor,
}

/// One style layer with its (blended, normalised) Gram target and weight w_l.
pub struct StyleTerm {
    pub index: usize,
    pub target: Tensor,
    pub weight: f64,
}

/// α, β, γ of eq. 7.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Coefficients {
    pub alpha: f64,
    pub beta: f64,
    pub tv: f64,
}

/// The loss values at one point.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq)]
pub struct Losses {
    /// eq. 1 (unweighted)
    pub content: f64,
    /// eq. 5 (unweighted by β)
    pub style: f64,
    /// L_tv (unweighted by γ)
    pub tv: f64,
    /// eq. 7: α L_content + β L_style + γ L_tv
    pub total: f64,
}

impl Losses {
    /// From the terms [`Objective::evaluate`] leaves on the device, as read: total, content,
    /// style, tv.
    pub fn from_terms(t: &[f64]) -> Self {
        Self { total: t[0], content: t[1], style: t[2], tv: t[3] }
    }
}

/// The objective for one job: targets, coefficients and pooling.
pub struct Objective {
    pub content: Vec<ContentTerm>,
    pub style: Vec<StyleTerm>,
    pub coefficients: Coefficients,
    pub pooling: Pooling,
}

impl Objective {
    /// Content targets P^l (activations of the content image at `layers`).
    pub fn content_targets(vgg: &Vgg19, content: &Tensor, layers: &[usize], pooling: Pooling) -> Vec<ContentTerm> {
        tch::no_grad(|| {
            let feats = vgg.forward_taps(&vgg.normalise(content), layers, pooling);
            layers.iter().zip(feats).map(|(&index, target)| ContentTerm { index, target }).collect()
        })
    }

    /// Normalised Gram matrices of one style image at `layers`.
    pub fn style_grams(vgg: &Vgg19, style: &Tensor, layers: &[usize], pooling: Pooling) -> Vec<Tensor> {
        tch::no_grad(|| {
            let feats = vgg.forward_taps(&vgg.normalise(style), layers, pooling);
            feats.iter().map(normalised_gram).collect()
        })
    }

    /// Blends several styles' Gram matrices (blend weights are normalised to sum to one) into
    /// style terms with equal layer weights w_l = 1/|S| (or the given ones).
    pub fn style_targets(
        grams: &[Vec<Tensor>],
        blend: &[f64],
        layers: &[usize],
        layer_weights: &[f64],
    ) -> Vec<StyleTerm> {
        let total: f64 = blend.iter().sum();
        layers
            .iter()
            .enumerate()
            .map(|(l, &index)| {
                let mut target = grams[0][l].zeros_like();
                for (s, g) in grams.iter().enumerate() {
                    target += &g[l] * (blend[s] / total);
                }
                StyleTerm { index, target, weight: layer_weights[l] }
            })
            .collect()
    }

    fn taps(&self) -> Vec<usize> {
        self.content.iter().map(|c| c.index).chain(self.style.iter().map(|s| s.index)).collect()
    }

    /// Eq. 7 at x (shape [1,3,H,W], values meant to be in [0,1]): the loss terms on the device
    /// (total, content, style, tv; f64), and with `gradient` a scalar graph whose gradient with
    /// respect to x is eq. 7's. Written for few operators (each a kernel launch on a GPU): the
    /// surrogates are summed by one `stack` + `sum`, G − A is made once per layer, no term is
    /// computed that the coefficients zero out.
    fn graph(&self, vgg: &Vgg19, x: &Tensor, gradient: bool) -> (Option<Tensor>, Tensor) {
        let image = x.clamp(0.0, 1.0);
        let feats = vgg.forward_taps_working(&vgg.normalise(&image), &self.taps(), self.pooling);
        let (content_feats, style_feats) = feats.split_at(self.content.len());
        let c = self.coefficients;
        let content = total(
            self.content.iter().zip(content_feats).map(|(term, f)| content_loss(&f.to_kind(Kind::Float), &term.target)),
        );
        // eq. 5's value from f32 Gram matrices (summed in layer order: the values, which the line
        // search compares, are those of a running total); its gradient through the surrogates
        let mut style: Option<Tensor> = None;
        let mut surrogates = Vec::new();
        for (term, f) in self.style.iter().zip(style_feats) {
            let d = tch::no_grad(|| normalised_gram(&f.to_kind(Kind::Float)) - &term.target);
            let value = style_layer_loss_of_difference(&d, term.weight);
            style = Some(style.map_or_else(|| value.shallow_clone(), |s| s + &value));
            if gradient {
                let m = (f.size()[2] * f.size()[3]) as f64;
                surrogates
                    .push(gradient_surrogate(f, &style_gradient_constant_of_difference(&d, c.beta * term.weight, m)));
            }
        }
        let style = style.unwrap_or_else(|| Tensor::zeros([], (Kind::Float, x.device())));
        let tv = (c.tv != 0.0).then(|| tv_loss(&image));
        let zero = || Tensor::zeros([], (Kind::Float, x.device()));
        let terms = tch::no_grad(|| {
            let mut sum = &content * c.alpha + &style * c.beta;
            if let Some(tv) = &tv {
                sum += tv * c.tv;
            }
            let tv = tv.as_ref().map_or_else(zero, Tensor::detach);
            Tensor::stack(&[&sum, &content.detach(), &style, &tv], 0).to_kind(Kind::Double)
        });
        let objective = gradient.then(|| {
            let mut parts = surrogates;
            parts.push(&content * c.alpha);
            if let Some(tv) = &tv {
                parts.push(tv * c.tv);
            }
            total(parts.into_iter())
        });
        (objective, terms)
    }

    /// Value terms and gradient of eq. 7 at x, left on the device (no host read): the terms
    /// are total, content, style, tv ([`Losses::from_terms`] once read).
    pub fn evaluate_terms(&self, vgg: &Vgg19, x: &Tensor) -> (Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let (objective, terms) = self.graph(vgg, &x, true);
        objective.expect("asked for the gradient").backward();
        (terms, x.grad().detach())
    }

    /// Value and gradient of eq. 7 at x (the values read to the host).
    pub fn evaluate(&self, vgg: &Vgg19, x: &Tensor) -> (Losses, Tensor) {
        let (terms, grad) = self.evaluate_terms(vgg, x);
        (Losses::from_terms(&host::read(&terms)), grad)
    }

    /// Value of eq. 7 at x, without gradient.
    pub fn value(&self, vgg: &Vgg19, x: &Tensor) -> Losses {
        tch::no_grad(|| Losses::from_terms(&host::read(&self.graph(vgg, x, false).1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equations_on_known_tensors() {
        // F: N = 2 filters, M = 2 positions: [[1, 2], [3, 4]]
        let f = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 2, 1, 2]);
        // eq. 3: G = F Fᵀ = [[5, 11], [11, 25]], divided by M = 2
        let g = normalised_gram(&f);
        let expected = Tensor::from_slice(&[2.5f32, 5.5, 5.5, 12.5]).view([2, 2]);
        assert!(g.allclose(&expected, 1e-6, 1e-6, false));
        // eq. 4 against A = 0: Σ (G/M)² / (4 N²) = (6.25 + 2·30.25 + 156.25) / 16
        let e = style_layer_loss(&g, &g.zeros_like()).double_value(&[]);
        assert!((e - 223.0 / 16.0).abs() < 1e-5, "{e}");
        // the paper's form 1/(4 N² M²) Σ (G − A)² on the raw Gram is the same number
        let raw = (5.0f64.powi(2) + 2.0 * 11.0f64.powi(2) + 25.0f64.powi(2)) / (4.0 * 4.0 * 4.0);
        assert!((e - raw).abs() < 1e-5);
        // eq. 1: ½ Σ (F − P)² with P = 1
        let c = content_loss(&f, &f.ones_like()).double_value(&[]);
        assert!((c - 0.5 * (0.0 + 1.0 + 4.0 + 9.0)).abs() < 1e-6);
        // tv on a 2×2 single-channel ramp: dy = 2, 2; dx = 1, 1 → (8 + 2) / 4
        let img = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]).view([1, 1, 2, 2]);
        assert!((tv_loss(&img).double_value(&[]) - 2.5).abs() < 1e-6);
    }

    #[test]
    fn blended_style_targets_are_weighted_means() {
        let a = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let terms = Objective::style_targets(&[vec![a], vec![b]], &[3.0, 1.0], &[1], &[1.0]);
        assert!((terms[0].target.mean(Kind::Float).double_value(&[]) - 0.75).abs() < 1e-6);
    }
}
