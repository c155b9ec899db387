//! Tiled evaluation of the objective, for images whose activations do not fit in memory.
//!
//! The style loss is global (one Gram matrix per layer over all positions), so tiles cannot be
//! optimised independently. Instead one evaluation makes two passes over overlapping tiles:
//!
//! 1. without gradients, each tile's *core* positions add `F Fᵀ` to per-layer sums, giving the
//!    whole image's normalised Gram `G_l` (and the exact style loss E_l);
//! 2. with gradients, each tile's core activations get their true gradient, backpropagated
//!    through the tile: `α (F − P)` over the core (the content loss is local) plus, per style
//!    layer, `F_core C_l` with the constant `C_l = β w_l (G_l − A_l) / (N_l² M_l)`,
//!    because `∂E_l/∂F = (G_l − A_l) F / (N_l² M_l)` (eq. 4 with G normalised by M; the same
//!    written-out gradient as the untiled objective). Its input gradient, halo included, is added
//!    into the image's gradient.
//!
//! Every feature position belongs to exactly one core, so the sum is the exact gradient except
//! that a feature near a core edge sees only `halo` pixels of context beyond it (the network's
//! zero padding stands in for the rest). Tile corners are multiples of 16 px (VGG19's stride at
//! relu5_1), so tile features line up with the whole image's. The grid is shifted by a varying
//! multiple of 16 px at every evaluation, so the little error that remains never sits at the
//! same place twice and no seams build up.

use tch::{Kind, Tensor};

use super::backward::backward;
use super::host;
use super::objective::{
    constant_parts, normalised_gram, style_gradient, style_gradient_constant, style_layer_loss, tv_loss, Losses,
    Objective,
};
use super::vgg::{Pooling, Vgg19};

/// Tile corners and sizes are multiples of this (2⁴: four poolings before relu5_1).
pub const ALIGN: i64 = 16;

/// Tile geometry in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Tiling {
    /// Side of a tile's core (a multiple of [`ALIGN`]).
    pub tile: i64,
    /// Context added on each side of a core (a multiple of [`ALIGN`]).
    pub halo: i64,
}

/// A tile: the core it is responsible for and the window it is computed on, [y0, y1) × [x0, x1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub core: [i64; 4],
    pub window: [i64; 4],
}

impl Tiling {
    pub fn new(tile: i64, halo: i64) -> Self {
        let up = |v: i64| ((v.max(1) + ALIGN - 1) / ALIGN) * ALIGN;
        Self { tile: up(tile), halo: up(halo.max(0)) }
    }

    /// Tiles covering h × w with the grid shifted by `shift` (reduced to a multiple of ALIGN).
    pub fn tiles(&self, h: i64, w: i64, shift: (i64, i64)) -> Vec<Tile> {
        let cuts = |len: i64, shift: i64| {
            let s = (shift.rem_euclid(self.tile) / ALIGN) * ALIGN;
            let mut v = vec![0];
            let mut c = if s == 0 { self.tile } else { s };
            while c < len {
                v.push(c);
                c += self.tile;
            }
            v.push(len);
            v
        };
        let (ys, xs) = (cuts(h, shift.0), cuts(w, shift.1));
        let mut out = Vec::new();
        for y in ys.windows(2) {
            for x in xs.windows(2) {
                let core = [y[0], y[1], x[0], x[1]];
                let window = [
                    (y[0] - self.halo).max(0),
                    (y[1] + self.halo).min(h),
                    (x[0] - self.halo).max(0),
                    (x[1] + self.halo).min(w),
                ];
                out.push(Tile { core, window });
            }
        }
        out
    }
}

fn crop(t: &Tensor, r: [i64; 4]) -> Tensor {
    t.narrow(2, r[0], r[1] - r[0]).narrow(3, r[2], r[3] - r[2])
}

/// The core of `tile` in the features of its window at stride `stride`.
fn core_in_features(tile: &Tile, stride: i64, feature: &Tensor) -> Tensor {
    let (fh, fw) = (feature.size()[2], feature.size()[3]);
    let y0 = (tile.core[0] - tile.window[0]) / stride;
    let x0 = (tile.core[2] - tile.window[2]) / stride;
    let y1 = ((tile.core[1] - tile.window[0]) / stride).min(fh);
    let x1 = ((tile.core[3] - tile.window[2]) / stride).min(fw);
    feature.narrow(2, y0, (y1 - y0).max(0)).narrow(3, x0, (x1 - x0).max(0))
}

/// F Fᵀ (not normalised) of `[1, N, h, w]` features, in f32.
fn gram_sum(f: &Tensor) -> Tensor {
    let (_, n, h, w) = f.size4().expect("4-D");
    if h * w == 0 {
        // a core thinner than the layer's stride at the image's edge has no positions there
        return Tensor::zeros([n, n], (Kind::Float, f.device()));
    }
    normalised_gram(f) * ((h * w) as f64)
}

/// Positions of a layer at stride `s` for an h × w image (floor at every pooling, as the network).
fn positions(h: i64, w: i64, s: i64) -> i64 {
    (h / s) * (w / s)
}

/// Tap activations of the whole image at `layers`, stitched from tile cores (no gradient).
pub fn features(vgg: &Vgg19, image: &Tensor, layers: &[usize], pooling: Pooling, tiling: Tiling) -> Vec<Tensor> {
    crate::engine::backward::no_grad(|| {
        let (_, _, h, w) = image.size4().expect("4-D");
        let strides: Vec<i64> = layers.iter().map(|&l| Vgg19::stride(l)).collect();
        let mut rows: Vec<Vec<Vec<Tensor>>> = layers.iter().map(|_| Vec::new()).collect();
        let tiles = tiling.tiles(h, w, (0, 0));
        let mut last_y = -1;
        for tile in &tiles {
            let feats = vgg.forward_taps(&vgg.normalise(&crop(image, tile.window)), layers, pooling);
            for (k, f) in feats.iter().enumerate() {
                if tile.core[0] != last_y {
                    rows[k].push(Vec::new());
                }
                rows[k].last_mut().expect("a row").push(core_in_features(tile, strides[k], f));
            }
            last_y = tile.core[0];
        }
        rows.into_iter()
            .map(|r| Tensor::cat(&r.into_iter().map(|row| Tensor::cat(&row, 3)).collect::<Vec<_>>(), 2))
            .collect()
    })
}

/// Normalised Gram matrices of the whole image at `layers`, accumulated over tile cores.
pub fn grams(
    vgg: &Vgg19,
    image: &Tensor,
    layers: &[usize],
    pooling: Pooling,
    tiling: Tiling,
    shift: (i64, i64),
) -> Vec<Tensor> {
    crate::engine::backward::no_grad(|| {
        let (_, _, h, w) = image.size4().expect("4-D");
        let mut sums: Vec<Option<Tensor>> = layers.iter().map(|_| None).collect();
        for tile in tiling.tiles(h, w, shift) {
            let feats = vgg.forward_taps(&vgg.normalise(&crop(image, tile.window)), layers, pooling);
            for (k, f) in feats.iter().enumerate() {
                let g = gram_sum(&core_in_features(&tile, Vgg19::stride(layers[k]), f));
                sums[k] = Some(match sums[k].take() {
                    Some(s) => s + g,
                    None => g,
                });
            }
        }
        sums.into_iter()
            .zip(layers)
            .map(|(s, &l)| s.expect("at least one tile") / (positions(h, w, Vgg19::stride(l)) as f64))
            .collect()
    })
}

/// The grid shift for evaluation number `n`: a different multiple of [`ALIGN`] on each axis,
/// cycling through every offset inside a tile.
pub fn shift(tiling: Tiling, n: usize) -> (i64, i64) {
    let steps = (tiling.tile / ALIGN).max(1);
    let n = n as i64;
    ((n * 5 % steps) * ALIGN, (n * 3 % steps) * ALIGN)
}

impl Objective {
    /// Value terms (total, content, style, tv, left on the device) and gradient of eq. 7 at x,
    /// computed tile by tile (see the module docs).
    pub fn evaluate_tiled_terms(&self, vgg: &Vgg19, x: &Tensor, tiling: Tiling, shift: (i64, i64)) -> (Tensor, Tensor) {
        let (terms, grad) = self.tiled(vgg, x, tiling, shift, true);
        (terms, grad.expect("asked for the gradient"))
    }

    /// Value and gradient of eq. 7 at x, computed tile by tile (the values read to the host).
    pub fn evaluate_tiled(&self, vgg: &Vgg19, x: &Tensor, tiling: Tiling, shift: (i64, i64)) -> (Losses, Tensor) {
        let (terms, grad) = self.evaluate_tiled_terms(vgg, x, tiling, shift);
        (Losses::from_terms(&host::read(&terms)), grad)
    }

    /// Value of eq. 7 at x, whole or in tiles.
    pub fn value_maybe_tiled(&self, vgg: &Vgg19, x: &Tensor, tiling: Option<Tiling>) -> Losses {
        match tiling {
            None => self.value(vgg, x),
            Some(t) => Losses::from_terms(&host::read(&crate::engine::backward::no_grad(|| {
                self.tiled(vgg, x, t, (0, 0), false).0
            }))),
        }
    }

    fn tiled(
        &self,
        vgg: &Vgg19,
        x: &Tensor,
        tiling: Tiling,
        shift: (i64, i64),
        want_grad: bool,
    ) -> (Tensor, Option<Tensor>) {
        let x = x.detach();
        let (_, _, h, w) = x.size4().expect("4-D");
        let image = x.clamp(0.0, 1.0);
        let c = self.coefficients();
        let zero = || Tensor::zeros([], (Kind::Double, x.device()));
        let style_layers: Vec<usize> = self.style.iter().map(|s| s.index).collect();
        // pass 1: the whole image's Gram matrices, the style loss and the constants C_l
        let g = if style_layers.is_empty() {
            Vec::new()
        } else {
            grams(vgg, &image, &style_layers, self.pooling, tiling, shift)
        };
        let mut style = zero();
        let mut consts = Vec::new();
        for (term, g) in self.style.iter().zip(&g) {
            style += style_layer_loss(g, &term.target).to_kind(Kind::Double) * term.weight;
            let m = positions(h, w, Vgg19::stride(term.index)) as f64;
            let k = style_gradient_constant(g, &term.target, c.beta * term.weight, m);
            consts.push(constant_parts(&k, vgg.layout().kind()));
        }
        // pass 2: per tile, the cores' gradients backpropagated and summed into the image's
        // without a gradient, pass 2 only has the content loss left to compute: no style taps
        let pass2_style: &[usize] = if want_grad { &style_layers } else { &[] };
        let taps: Vec<usize> = self.content.iter().map(|t| t.index).chain(pass2_style.iter().copied()).collect();
        let grad = x.zeros_like();
        let mut content = zero();
        for tile in Tiling::tiles(&tiling, h, w, shift) {
            let window = crop(&x, tile.window).copy().set_requires_grad(want_grad);
            let feats = vgg.forward_taps_working(&vgg.normalise(&window.clamp(0.0, 1.0)), &taps, self.pooling);
            let (cf, sf) = feats.split_at(self.content.len());
            // each core's activations with their gradient of eq. 7 (the content loss is local)
            let mut roots = Vec::new();
            for (term, f) in self.content.iter().zip(cf) {
                let s = Vgg19::stride(term.index);
                let core = core_in_features(&tile, s, f);
                let r = [
                    tile.core[0] / s,
                    tile.core[0] / s + core.size()[2],
                    tile.core[2] / s,
                    tile.core[2] / s + core.size()[3],
                ];
                // eq. 1 over the core, ½‖F − P‖², and its gradient α (F − P)
                let d = crate::engine::backward::no_grad(|| &core - &crop(&term.target, r));
                content += d.square().sum(Kind::Float).to_kind(Kind::Double) * 0.5;
                if want_grad && c.alpha != 0.0 {
                    roots.push((core, &d * c.alpha));
                }
            }
            for ((term, f), k) in self.style.iter().zip(sf).zip(&consts) {
                // C_l F at the core's positions (see objective::style_gradient)
                let core = core_in_features(&tile, Vgg19::stride(term.index), f);
                let g = style_gradient(&core, k, 1.0);
                roots.push((core, g));
            }
            if want_grad && !roots.is_empty() {
                backward(&roots);
                let mut dst = crop(&grad, tile.window);
                dst += window.grad();
            }
        }
        let tv = if c.tv != 0.0 && !want_grad {
            tv_loss(&image).to_kind(Kind::Double)
        } else if c.tv != 0.0 {
            // three channels at full size: cheap, no tiles needed
            let xv = x.copy().set_requires_grad(true);
            let t = tv_loss(&xv.clamp(0.0, 1.0));
            (&t * c.tv).backward();
            let mut g = grad.shallow_clone();
            g += xv.grad();
            t.detach().to_kind(Kind::Double)
        } else {
            zero()
        };
        let total = &content * c.alpha + &style * c.beta + &tv * c.tv;
        (Tensor::stack(&[total, content, style, tv], 0), want_grad.then_some(grad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_pixel_once_and_stay_aligned() {
        let t = Tiling::new(64, 32);
        for shift in [(0, 0), (16, 48), (100, 7)] {
            let (h, w) = (150, 230);
            let mut cover = vec![0u8; (h * w) as usize];
            for tile in t.tiles(h, w, shift) {
                for y in tile.core[0]..tile.core[1] {
                    for x in tile.core[2]..tile.core[3] {
                        cover[(y * w + x) as usize] += 1;
                    }
                }
                assert!(tile.core[0] % ALIGN == 0 && tile.core[2] % ALIGN == 0);
                assert!(tile.window[0] % ALIGN == 0 && tile.window[2] % ALIGN == 0);
                assert!(tile.window[0] <= tile.core[0] && tile.window[1] >= tile.core[1]);
                assert!(tile.core[1] - tile.core[0] <= 64 && tile.window[1] - tile.window[0] <= 64 + 2 * 32);
            }
            assert!(cover.iter().all(|&c| c == 1), "shift {shift:?}");
        }
        assert_eq!(Tiling::new(100, 20), Tiling { tile: 112, halo: 32 });
        assert_eq!(Tiling::new(64, 200), Tiling { tile: 64, halo: 208 });
    }
}
