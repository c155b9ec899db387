//! What a job optimises towards: its pictures at the working size and at each scale, its start
//! image, and the objective built from them (content features, style Gram matrices through the
//! style cache, α β γ).

use tch::{Device, Tensor};

use super::cache::{StyleCache, StyleKey};
use super::image_io::{ImageError, Picture};
use super::objective::{ContentTerm, Objective};
use super::params::{Init, Params};
use super::schedule::style_side;
use super::tiling::{self, Tiling};
use super::vgg::Vgg19;

/// A job's pictures at the working size (content at the output size, styles at the content's
/// longest side × `style_scale`), with their tensors on the engine's device.
pub struct Inputs {
    pub content_picture: Picture,
    pub style_pictures: Vec<Picture>,
    /// RGB `[1,3,H,W]` of the content at the output size.
    pub content: Tensor,
    /// RGB `[1,3,H,W]` per style image.
    pub styles: Vec<Tensor>,
    device: Device,
}

impl Inputs {
    /// The pictures of a job (at their original sizes) for parameters `p`.
    pub fn prepare(content: &Picture, styles: &[Picture], p: &Params, device: Device) -> Result<Self, ImageError> {
        let content = match p.size {
            Some(s) => content.resized_longest(s),
            None => content.clone(),
        };
        content.check_min_size("content".as_ref())?;
        let longest = content.width().max(content.height());
        let style_size = ((f64::from(longest) * p.style_scale).round() as u32).max(1);
        let style_pictures = styles
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.resized_longest(style_size);
                s.check_min_size(format!("style #{}", i + 1).as_ref())?;
                Ok(s)
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        Ok(Self {
            content: content.rgb_tensor().to_device(device),
            styles: style_pictures.iter().map(|s| s.rgb_tensor().to_device(device)).collect(),
            content_picture: content,
            style_pictures,
            device,
        })
    }

    /// The output size.
    pub fn size(&self) -> (u32, u32) {
        (self.content_picture.width(), self.content_picture.height())
    }

    /// Content and styles for a scale of `w` × `h`: the working pictures at the output size;
    /// at a coarser scale the content resized and the styles scaled by the same factor.
    pub fn at_scale(&self, w: u32, h: u32) -> (Tensor, Vec<Tensor>) {
        if (w, h) == self.size() {
            return (self.content.shallow_clone(), self.styles.iter().map(Tensor::shallow_clone).collect());
        }
        let factor = f64::from(w) / f64::from(self.size().0);
        let styles = self
            .style_pictures
            .iter()
            .map(|s| {
                s.resized_longest(style_side(s.width().max(s.height()), factor)).rgb_tensor().to_device(self.device)
            })
            .collect();
        (self.content_picture.resized(w, h).rgb_tensor().to_device(self.device), styles)
    }

    /// The start image at `w` × `h` (paper fig. 6): seeded noise, the content or the first style.
    pub fn start(&self, p: &Params, w: u32, h: u32) -> Tensor {
        match p.init {
            Init::Noise => super::rng::uniform(&[1, 3, i64::from(h), i64::from(w)], p.seed).to_device(self.device),
            Init::Content => self.content_picture.resized(w, h).rgb_tensor().to_device(self.device),
            Init::Style => self.style_pictures[0].resized(w, h).rgb_tensor().to_device(self.device),
        }
    }

    /// The start of a finer scale of `w` × `h` from `coarse`, the previous scale's result. From
    /// noise: `coarse` upsampled. From an image: the coarse scale's *change* upsampled, over the
    /// start image at this size, so the start's fine detail (which the coarse scale never saw)
    /// is not lost to the upsampling.
    pub fn finer_start(&self, p: &Params, coarse: &Tensor, w: u32, h: u32) -> Tensor {
        let up = |t: &Tensor| t.upsample_bicubic2d([i64::from(h), i64::from(w)], false, None, None);
        let x = match p.init {
            Init::Noise => up(coarse),
            Init::Content | Init::Style => {
                let [_, _, ch, cw] = coarse.size()[..] else { unreachable!("images are [1, 3, h, w]") };
                let change = coarse - self.start(p, cw as u32, ch as u32);
                self.start(p, w, h) + up(&change)
            }
        };
        x.clamp(0.0, 1.0)
    }
}

/// The objective of `p` for `content` and `styles` on `vgg`, in tiles when `tiling` says so.
/// Style Grams come from `cache` when given (keyed by everything that changes them).
pub fn objective(
    vgg: &Vgg19,
    content: &Tensor,
    styles: &[Tensor],
    p: &Params,
    mut cache: Option<&mut StyleCache>,
    tiling: Option<Tiling>,
) -> Objective {
    let (c_idx, s_idx) = p.layer_indices();
    let content_terms = match tiling {
        None => Objective::content_targets(vgg, content, &c_idx, p.pooling),
        Some(t) => tiling::features(vgg, content, &c_idx, p.pooling, t)
            .into_iter()
            .zip(&c_idx)
            .map(|(target, &index)| ContentTerm { index, target })
            .collect(),
    };
    let elements: f64 = content_terms.iter().map(|t| t.target.numel() as f64).sum();
    let pooling = format!("{:?}", p.pooling);
    let grams: Vec<Vec<Tensor>> = styles
        .iter()
        .map(|s| {
            // a style that fits in one tile core is computed whole, as without tiles
            let (sh, sw) = (s.size()[2], s.size()[3]);
            let tiling = tiling.filter(|t| sh.max(sw) > t.tile);
            let compute = || match tiling {
                None => Objective::style_grams(vgg, s, &s_idx, p.pooling),
                Some(t) => tiling::grams(vgg, s, &s_idx, p.pooling, t, (0, 0)),
            };
            let grid = tiling.map(|t| (t.tile, t.halo));
            match cache.as_deref_mut() {
                Some(c) => c.get_or_compute(StyleKey::new(s, &s_idx, &pooling, &vgg.layout().name(), grid), compute),
                None => compute(),
            }
        })
        .collect();
    let style_terms = if s_idx.is_empty() {
        Vec::new()
    } else {
        Objective::style_targets(&grams, &p.blend(styles.len()), &s_idx, &p.layer_weights())
    };
    Objective::new(content_terms, style_terms, p.coefficients(elements), p.pooling)
}
