//! What an evaluation costs, from VGG19's layer table: activation and tap sizes per input pixel
//! (the memory estimate), the network's parameter count, and convolution FLOPs (the bench).

use super::params::Params;
use super::vgg::Vgg19;
use super::weights::{vgg19_layers, LayerSpec};

/// Elements per input pixel of the activations up to `features` index `deepest`
/// (Σ channels / stride²).
pub fn activation_elements_per_pixel(deepest: usize) -> f64 {
    let mut channels = 3.0;
    let mut total = 0.0;
    for (i, l) in vgg19_layers().iter().enumerate().take(deepest + 1) {
        let s = Vgg19::stride(i) as f64;
        match l {
            LayerSpec::Conv { out_channels, .. } => {
                channels = *out_channels as f64;
                total += channels / (s * s);
            }
            LayerSpec::Pool { .. } => total += channels / (s * s),
            LayerSpec::Relu { .. } => {}
        }
    }
    total
}

/// Elements per input pixel of the activations `p`'s content and style layers tap.
pub fn tap_elements_per_pixel(p: &Params) -> f64 {
    let layers = vgg19_layers();
    let (content, style) = p.layer_indices();
    content
        .into_iter()
        .chain(style)
        .map(|i| {
            let c = layers[..=i]
                .iter()
                .rev()
                .find_map(|l| match l {
                    LayerSpec::Conv { out_channels, .. } => Some(*out_channels as f64),
                    _ => None,
                })
                .unwrap_or(3.0);
            let s = Vgg19::stride(i) as f64;
            c / (s * s)
        })
        .sum()
}

/// Weights and biases of every convolution of VGG19 `features`.
pub fn network_parameters() -> u64 {
    vgg19_layers()
        .iter()
        .map(|l| match l {
            LayerSpec::Conv { in_channels, out_channels, .. } => (in_channels * out_channels * 9 + out_channels) as u64,
            _ => 0,
        })
        .sum()
}

/// Multiply-add FLOPs of the convolutions in one evaluation of `p`'s objective at
/// `size`×`size`: the forward pass to the deepest tap, and the backward pass to the input (the
/// same count: input gradients only). Grams, pooling and losses are left out (a few percent).
pub fn evaluation_conv_flops(p: &Params, size: i64) -> f64 {
    let forward: f64 = vgg19_layers()
        .iter()
        .enumerate()
        .take(p.deepest_layer() + 1)
        .map(|(i, l)| match l {
            LayerSpec::Conv { in_channels, out_channels, .. } => {
                let side = (size / Vgg19::stride(i)) as f64;
                2.0 * (in_channels * out_channels * 9) as f64 * side * side
            }
            _ => 0.0,
        })
        .sum();
    2.0 * forward
}
