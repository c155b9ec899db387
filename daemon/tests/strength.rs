//! `--strength` is size-aware: the balance between the weighted content and style terms stays
//! put when the image size changes, unlike the paper's raw α/β (eq. 1 grows with M_l).

mod common;

use common::picture;
use neural_style::engine::weights::Weights;
use neural_style::engine::{Engine, Params};
use tch::Device;

/// α·L_content / (β·L_style) at a noise image of the given size.
fn balance(engine: &Engine, size: u32, params: &Params) -> f64 {
    let content = picture("tubingen.jpg", size).rgb_tensor();
    let style = picture("starry_night.jpg", size).rgb_tensor();
    let objective = engine.objective(&content, &[style], params);
    let x = neural_style::engine::rng::uniform(&content.size(), 9);
    let l = objective.value(engine.vgg(), &x);
    let c = objective.coefficients();
    (c.alpha * l.content) / (c.beta * l.style)
}

#[test]
fn strength_keeps_the_balance_across_sizes_raw_weights_do_not() {
    tch::set_num_threads(2);
    let engine = Engine::new(&Weights::random(8), Device::Cpu);
    let strength = Params::default();
    let raw = Params { content_weight: Some(1e-3), style_weight: Some(1.0), ..Params::default() };
    let (s_small, s_large) = (balance(&engine, 64, &strength), balance(&engine, 192, &strength));
    let (r_small, r_large) = (balance(&engine, 64, &raw), balance(&engine, 192, &raw));
    let drift = |a: f64, b: f64| (a / b).max(b / a);
    assert!(drift(s_small, s_large) < 1.6, "strength: balance {s_small:e} at 64 px vs {s_large:e} at 192 px");
    assert!(drift(r_small, r_large) > 5.0, "raw α/β: balance {r_small:e} vs {r_large:e} should drift with M (9×)");
}
