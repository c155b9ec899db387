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
//! `L_tv = Σ_c Σ_ij [(x_{i+1,j} − x_ij)² + (x_{i,j+1} − x_ij)²] / (H·W)` on the image in `[0,1]`.
//!
//! The image is kept in `[0,1]` inside the objective: the network sees `clamp(x, 0, 1)`, so the
//! optimiser never gains anything from values that would be clipped away on output.
//!
//! The loss's gradients with respect to the tapped activations are written out rather than left
//! to autograd, and autograd only carries them back through the network ([`backward`], from
//! all layers at once): eq. 1's is `F^l − P^l`, and with G and A normalised by M eq. 4's is
//! `∂E_l/∂F^l = (G^l − A^l) F^l / (N_l² M_l)`. The Gram matrices (values) are computed in f32;
//! the style gradient is one matrix product `F^l C_l` in the network's precision (bf16 by
//! default), where autograd through `F Fᵀ` would take two f32 products and two precision
//! conversions ([`style_gradient`]).
//!
//! Written for few operators (each a kernel launch on a GPU, whose small scales wait on
//! launches): per style layer G/M − A is one matrix product (`baddbmm`'s α and β do the
//! division and the subtraction), scaled by `r_l = √w_l / (2 N_l)` so that eq. 5 over all
//! layers is one squared norm, `L_style = ‖[r_l (G_l − A_l)]_l‖²`; the gradient's constant is
//! that same scaled difference with the factor `2 β √w_l / (N_l M_l)` applied inside the
//! product.

use tch::{Kind, Tensor};

use super::backward::backward;
use super::host;
use super::vgg::{Pooling, Vgg19};

/// Activations `[1, N, H, W]` as a batch of one matrix, without a copy: F (N × M) when stored
/// NCHW, Fᵀ (M × N) when stored channels-last (whose storage already is that matrix).
struct Matrix {
    mat: Tensor,
    channels_last: bool,
}

impl Matrix {
    fn of(features: &Tensor) -> Self {
        let (_, n, h, w) = features.size4().expect("activations are 4-D");
        if features.stride()[1] == 1 && n > 1 {
            Self { mat: features.permute([0, 2, 3, 1]).reshape([1, h * w, n]), channels_last: true }
        } else {
            Self { mat: features.reshape([1, n, h * w]), channels_last: false }
        }
    }

    fn to_kind(&self, kind: Kind) -> Self {
        Self { mat: self.mat.to_kind(kind), channels_last: self.channels_last }
    }

    /// `beta · minus + alpha · F Fᵀ` (`[1, N, N]`; `minus` broadcasts), one matrix product.
    fn gram(&self, minus: &Tensor, beta: f64, alpha: f64) -> Tensor {
        let t = self.mat.transpose(1, 2);
        match self.channels_last {
            true => minus.baddbmm(&t, &self.mat, beta, alpha),
            false => minus.baddbmm(&self.mat, &t, beta, alpha),
        }
    }

    /// `alpha · F C (+ plus)` for a symmetric N × N `c` (`[1, N, N]`), in the matrix's layout and
    /// kind, one matrix product (with `plus`, libtorch copies it into the result first).
    fn times(&self, c: &Tensor, alpha: f64, plus: Option<&Tensor>) -> Tensor {
        // with β = 0 the input is ignored (its shape only): the matrix itself serves
        let (input, beta) = plus.map_or((&self.mat, 0.0), |p| (p, 1.0));
        match self.channels_last {
            true => input.baddbmm(&self.mat, c, beta, alpha),
            false => input.baddbmm(c, &self.mat, beta, alpha),
        }
    }
}

/// Activations (or anything shaped and stored like them) as one vector in storage order, without
/// a copy.
fn flat(t: &Tensor) -> Tensor {
    Matrix::of(t).mat.reshape([-1])
}

/// G^l / M_l for activations of shape `[1, N, H, W]`: eq. 3 divided by the number of positions.
pub fn normalised_gram(features: &Tensor) -> Tensor {
    let (_, _, h, w) = features.size4().expect("activations are 4-D");
    let f = Matrix::of(features);
    let t = f.mat.transpose(1, 2);
    let g = if f.channels_last { t.matmul(&f.mat) } else { f.mat.matmul(&t) };
    g.squeeze_dim(0) / (h * w) as f64
}

/// `r · (G/M − A)` (`[1, N, N]`) for activations `[1, N, H, W]` (in their kind) and a target A
/// (N × N): one matrix product.
pub fn scaled_gram_difference(features: &Tensor, target: &Tensor, r: f64) -> Tensor {
    let (_, _, h, w) = features.size4().expect("activations are 4-D");
    Matrix::of(features).gram(target, -r, r / (h * w) as f64)
}

/// The constant C (N × N, f32) as the parts a product with activations of `kind` takes: C
/// itself, or in bf16 (f32's exponent range) C_hi + C_lo, because one rounded C would bias
/// every position's gradient the same way (near a minimum, where G − A is small, enough to
/// mislead the line search); in f16, whose range cannot hold C's small entries, C in f32 (the
/// product is taken in f32 and rounded once, as autograd would).
pub fn constant_parts(c: &Tensor, kind: Kind) -> Vec<Tensor> {
    crate::engine::backward::no_grad(|| match kind {
        Kind::BFloat16 => {
            let hi = c.to_kind(kind);
            // c − hi in f32, rounded to bf16 by the subtraction's output
            let lo = c.sub_out(&hi.empty_like(), &hi);
            vec![hi, lo]
        }
        _ => vec![c.shallow_clone()],
    })
}

/// `scale · F C` shaped and stored like `features` (`[1, N, h, w]`, any precision and memory
/// format), for a symmetric N × N constant `C = Σ parts` ([`constant_parts`]): with
/// `scale · C = s·(G − A)/(N² M)` it is `s·∂E_l/∂F` (see the module docs), the gradient a
/// backward pass ([`backward`](super::backward)) takes from this layer.
pub fn style_gradient(features: &Tensor, parts: &[Tensor], scale: f64) -> Tensor {
    let (_, n, h, w) = features.size4().expect("activations are 4-D");
    crate::engine::backward::no_grad(|| {
        let f = Matrix::of(features);
        // (the product in the parts' kind: f32 for f16 activations; no copy when they agree)
        let f = f.to_kind(parts[0].kind());
        let parts: Vec<Tensor> = parts.iter().map(|p| p.reshape([1, p.size()[0], p.size()[1]])).collect();
        let mut g = f.times(&parts[0], scale, None);
        for p in &parts[1..] {
            g = f.times(p, scale, Some(&g));
        }
        let g = g.to_kind(features.kind());
        match f.channels_last {
            true => g.view([1, h, w, n]).permute([0, 3, 1, 2]),
            false => g.view([1, n, h, w]),
        }
    })
}

/// The constant of [`style_gradient`] (with scale 1) for one style layer:
/// `C = scale·(G − A)/(N² M)`, with G, A normalised Grams and M the layer's positions (the
/// whole image's, when tiled).
pub fn style_gradient_constant(gram: &Tensor, target: &Tensor, scale: f64, positions: f64) -> Tensor {
    let n = gram.size()[0] as f64;
    crate::engine::backward::no_grad(|| (gram - target) * (scale / (n * n * positions)))
}

/// Eq. 4 for one layer, given normalised Gram matrices (see module docs):
/// `Σ (G − A)² / (4 N²)`.
pub fn style_layer_loss(gram: &Tensor, target: &Tensor) -> Tensor {
    let n = gram.size()[0] as f64;
    (gram - target).square().sum(Kind::Float) / (4.0 * n * n)
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
    /// style and, when the objective has one, tv.
    pub fn from_terms(t: &[f64]) -> Self {
        Self { total: t[0], content: t[1], style: t[2], tv: t.get(3).copied().unwrap_or(0.0) }
    }
}

/// The objective for one job: targets, coefficients and pooling.
pub struct Objective {
    pub content: Vec<ContentTerm>,
    pub style: Vec<StyleTerm>,
    coefficients: Coefficients,
    pub pooling: Pooling,
    /// [`Self::terms`]' matrix, made on the device at the first evaluation.
    terms_matrix: std::cell::OnceCell<Tensor>,
}

impl Objective {
    pub fn new(content: Vec<ContentTerm>, style: Vec<StyleTerm>, coefficients: Coefficients, pooling: Pooling) -> Self {
        Self { content, style, coefficients, pooling, terms_matrix: Default::default() }
    }

    /// α, β, γ of eq. 7.
    pub fn coefficients(&self) -> Coefficients {
        self.coefficients
    }

    /// Content targets P^l (activations of the content image at `layers`).
    pub fn content_targets(vgg: &Vgg19, content: &Tensor, layers: &[usize], pooling: Pooling) -> Vec<ContentTerm> {
        crate::engine::backward::no_grad(|| {
            let feats = vgg.forward_taps(&vgg.normalise(content), layers, pooling);
            layers.iter().zip(feats).map(|(&index, target)| ContentTerm { index, target }).collect()
        })
    }

    /// Normalised Gram matrices of one style image at `layers`.
    pub fn style_grams(vgg: &Vgg19, style: &Tensor, layers: &[usize], pooling: Pooling) -> Vec<Tensor> {
        crate::engine::backward::no_grad(|| {
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

    /// Eq. 7 at x (shape `[1,3,H,W]`, values meant to be in `[0,1]`): the loss terms on the device
    /// (total, content, style`[, tv]`; f32), and with `gradient` the tensors its gradient flows
    /// back from, each with its gradient of eq. 7 (for [`backward`]): the content and style
    /// layers' activations F (∂L/∂F written out) and the tv term. Written for few operators
    /// (see the module docs): no term is computed that the coefficients zero out.
    fn graph(&self, vgg: &Vgg19, x: &Tensor, gradient: bool) -> (Tensor, Vec<(Tensor, Tensor)>) {
        let image = x.clamp(0.0, 1.0);
        let feats = vgg.forward_taps_working(&vgg.normalise(&image), &self.taps(), self.pooling);
        let (content_feats, style_feats) = feats.split_at(self.content.len());
        let c = self.coefficients;
        let zero = || Tensor::zeros([], (Kind::Float, x.device()));
        let mut roots = Vec::new();
        // eq. 1 over the content layers: ½‖F − P‖², gradient α (F − P)
        let content2 = crate::engine::backward::no_grad(|| {
            let mut sum: Option<Tensor> = None;
            for (term, f) in self.content.iter().zip(content_feats) {
                let d = f - &term.target;
                let d2 = flat(&d).dot(&flat(&d));
                sum = Some(sum.map_or_else(|| d2.shallow_clone(), |s| s + &d2));
                if gradient && c.alpha != 0.0 {
                    roots.push((f.shallow_clone(), &d * c.alpha));
                }
            }
            sum.unwrap_or_else(zero)
        });
        // eq. 5: each layer's r_l (G_l/M_l − A_l) in f32, all layers' in one vector
        let styled: Vec<(&StyleTerm, &Tensor)> =
            self.style.iter().zip(style_feats).filter(|(term, _)| term.weight > 0.0).collect();
        let r = |term: &StyleTerm, f: &Tensor| term.weight.sqrt() / (2.0 * f.size()[1] as f64);
        let differences = crate::engine::backward::no_grad(|| {
            let d: Vec<Tensor> = styled
                .iter()
                .map(|&(term, f)| {
                    scaled_gram_difference(&f.to_kind(Kind::Float), &term.target, r(term, f)).reshape([-1])
                })
                .collect();
            (!d.is_empty()).then(|| Tensor::cat(&d, 0))
        });
        let style = differences.as_ref().map_or_else(zero, |d| d.dot(d));
        if let (true, Some(d)) = (gradient, &differences) {
            // β ∂(w_l E_l)/∂F_l = (2β√w_l / (N_l M_l)) · F_l · r_l (G_l − A_l): that vector's
            // slices, split for the network's precision once for all layers
            let d = constant_parts(d, style_feats[0].kind());
            let mut at = 0;
            for &(term, f) in &styled {
                let (n, m) = (f.size()[1], f.size()[2] * f.size()[3]);
                let layer: Vec<Tensor> = d.iter().map(|p| p.narrow(0, at, n * n).view([n, n])).collect();
                at += n * n;
                let scale = 2.0 * c.beta * term.weight.sqrt() / (n * m) as f64;
                roots.push((f.shallow_clone(), style_gradient(f, &layer, scale)));
            }
        }
        let tv = (c.tv != 0.0).then(|| tv_loss(&image));
        if let (true, Some(tv)) = (gradient, &tv) {
            roots.push((tv.shallow_clone(), crate::engine::backward::no_grad(|| tv.full_like(c.tv))));
        }
        // eq. 7 with the terms, as one product
        let mut raw = vec![content2, style];
        raw.extend(tv.as_ref().map(Tensor::detach));
        (crate::engine::backward::no_grad(|| self.terms(&Tensor::stack(&raw, 0))), roots)
    }

    /// [total, content, style(, tv)] from [‖F − P‖², L_style(, L_tv)]: one matrix–vector product.
    fn terms(&self, raw: &Tensor) -> Tensor {
        let m = self.terms_matrix.get_or_init(|| {
            let c = self.coefficients;
            #[rustfmt::skip]
            let m = [
                0.5 * c.alpha, c.beta, c.tv,
                0.5,           0.0,    0.0,
                0.0,           1.0,    0.0,
                0.0,           0.0,    1.0,
            ];
            let once_per_objective = Tensor::from_slice(&m.map(|v| v as f32));
            once_per_objective.view([4, 3]).to_device(raw.device())
        });
        let k = raw.size()[0];
        m.narrow(0, 0, k + 1).narrow(1, 0, k).mv(raw)
    }

    /// Value terms and gradient of eq. 7 at x, left on the device (no host read): the terms
    /// are total, content, style`[, tv]` ([`Losses::from_terms`] once read).
    pub fn evaluate_terms(&self, vgg: &Vgg19, x: &Tensor) -> (Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let (terms, roots) = self.graph(vgg, &x, true);
        if roots.is_empty() {
            return (terms, x.zeros_like().detach());
        }
        backward(&roots);
        (terms, x.grad().detach())
    }

    /// Value and gradient of eq. 7 at x (the values read to the host).
    pub fn evaluate(&self, vgg: &Vgg19, x: &Tensor) -> (Losses, Tensor) {
        let (terms, grad) = self.evaluate_terms(vgg, x);
        (Losses::from_terms(&host::read(&terms)), grad)
    }

    /// Value of eq. 7 at x, without gradient.
    pub fn value(&self, vgg: &Vgg19, x: &Tensor) -> Losses {
        crate::engine::backward::no_grad(|| Losses::from_terms(&host::read(&self.graph(vgg, x, false).0)))
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
        // tv on a 2×2 single-channel ramp: dy = 2, 2; dx = 1, 1 → (8 + 2) / 4
        let img = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]).view([1, 1, 2, 2]);
        assert!((tv_loss(&img).double_value(&[]) - 2.5).abs() < 1e-6);
    }

    #[test]
    fn a_style_layer_weighted_zero_is_left_out() {
        use crate::engine::weights::Weights;
        use crate::engine::{Engine, Params};

        tch::manual_seed(3);
        let engine = Engine::new(&Weights::random(1), tch::Device::Cpu);
        let content = Tensor::rand([1, 3, 32, 40], (Kind::Float, tch::Device::Cpu));
        let style = Tensor::rand([1, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::rand([1, 3, 32, 40], (Kind::Float, tch::Device::Cpu));
        let evaluate = |layers: &[&str], weights: Vec<f64>| {
            let p = Params {
                style_layers: layers.iter().map(|l| l.to_string()).collect(),
                style_layer_weights: Some(weights),
                ..Params::default()
            };
            engine.objective(&content, &[style.shallow_clone()], &p).evaluate(engine.vgg(), &x)
        };
        let (zeroed, g0) = evaluate(&["relu1_1", "relu2_1", "relu3_1"], vec![0.5, 0.0, 0.5]);
        let (without, g1) = evaluate(&["relu1_1", "relu3_1"], vec![0.5, 0.5]);
        assert!(zeroed.style > 0.0);
        assert!((zeroed.style - without.style).abs() <= 1e-6 * without.style, "{zeroed:?} vs {without:?}");
        assert!((zeroed.total - without.total).abs() <= 1e-6 * without.total);
        assert!(g0.allclose(&g1, 1e-6, 1e-12, false));
    }

    #[test]
    fn blended_style_targets_are_weighted_means() {
        let a = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let terms = Objective::style_targets(&[vec![a], vec![b]], &[3.0, 1.0], &[1], &[1.0]);
        assert!((terms[0].target.mean(Kind::Float).double_value(&[]) - 0.75).abs() < 1e-6);
    }
}
