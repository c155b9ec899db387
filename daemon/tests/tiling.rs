//! Tiled evaluation against the whole-image objective, and seams in a tiled optimisation.

mod common;

use common::picture;
use neural_style::engine::tiling::{shift, Tiling};
use neural_style::engine::weights::Weights;
use neural_style::engine::{Control, Engine, Init, Job, Params};
use tch::{Device, Kind, Tensor};

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

/// Values and gradients, whole and tiled, on a 176×128 problem (f32 network).
#[test]
fn tiled_gradient_is_the_whole_images() {
    tch::set_num_threads(2);
    let engine = Engine::new(&Weights::random(3), Device::Cpu);
    let content = picture("tubingen.jpg", 176).rgb_tensor();
    let style = picture("starry_night.jpg", 176).rgb_tensor();
    let params = Params::default();
    let objective = engine.objective(&content, std::slice::from_ref(&style), &params);
    let x = neural_style::engine::rng::uniform(&content.size(), 5);
    let (whole, g_whole) = objective.evaluate(engine.vgg(), &x);

    // a halo that covers the image: every tile sees all the context, so tiles change nothing
    // but the order of the sums
    let full = Tiling::new(64, 192);
    for s in [(0, 0), shift(full, 3)] {
        let (tiled, g) = objective.evaluate_tiled(engine.vgg(), &x, full, s);
        assert!((tiled.total - whole.total).abs() < 1e-4 * whole.total, "{tiled:?} vs {whole:?}");
        assert!((tiled.content - whole.content).abs() < 1e-4 * whole.content);
        assert!((tiled.style - whole.style).abs() < 1e-4 * whole.style);
        let e = rel(&g, &g_whole);
        assert!(e < 1e-4, "gradient {e:e} from the whole image's");
    }

    // a real halo: features near core edges miss context beyond 32 px; the error is small and
    // the value (pass 1 uses the same windows) is close
    let small = Tiling::new(64, 32);
    let (tiled, g) = objective.evaluate_tiled(engine.vgg(), &x, small, (0, 0));
    let e = rel(&g, &g_whole);
    eprintln!("halo 32: value {:.3e} vs {:.3e}, gradient relative error {e:.3e}", tiled.total, whole.total);
    assert!((tiled.total - whole.total).abs() < 0.05 * whole.total);
    assert!(e < 0.05, "gradient {e:e} from the whole image's");
    // and not the same as the whole image's: the test can tell tiles apart
    assert!(e > 1e-6);
    // value-only path
    let v = objective.value_maybe_tiled(engine.vgg(), &x, Some(full));
    assert!((v.total - whole.total).abs() < 1e-4 * whole.total);
}

/// Mean squared horizontal and vertical image differences across the lines `at` (pixel
/// boundaries between index i−1 and i) against all other lines.
fn seam_ratio(img: &Tensor, period: i64) -> f64 {
    let (_, _, h, w) = img.size4().unwrap();
    let dx = (img.narrow(3, 1, w - 1) - img.narrow(3, 0, w - 1)).square().mean_dim(
        [0, 1, 2].as_slice(),
        false,
        Kind::Double,
    );
    let dy = (img.narrow(2, 1, h - 1) - img.narrow(2, 0, h - 1)).square().mean_dim(
        [0, 1, 3].as_slice(),
        false,
        Kind::Double,
    );
    let (mut on, mut off, mut n_on, mut n_off) = (0.0, 0.0, 0, 0);
    for (d, len) in [(dx, w), (dy, h)] {
        let v: Vec<f64> = Vec::try_from(d).unwrap();
        for (i, e) in v.iter().enumerate() {
            // v[i] is the difference across the boundary at i+1
            if (i as i64 + 1) % period == 0 && (i as i64 + 1) < len {
                on += e;
                n_on += 1;
            } else {
                off += e;
                n_off += 1;
            }
        }
    }
    (on / n_on as f64) / (off / n_off as f64)
}

/// Optimised in 64 px tiles with 32 px halos (the gradient then differs from the whole image's by ~1%),
/// the result shows no more gradient energy along the possible tile borders (every multiple of
/// 16 px, where the shifted grids cut) than elsewhere, like the untiled result. The measure does
/// see seams: the untiled image with its 16 px blocks shifted in brightness by 5% fails it.
#[test]
fn tiled_optimisation_shows_no_seams() {
    tch::set_num_threads(2);
    let engine = Engine::new(&Weights::random(3), Device::Cpu);
    let params = Params {
        size: Some(160),
        evaluations: 30,
        init: Init::Noise,
        multiscale: Some(false),
        tile: Some(64),
        ..Params::default()
    };
    let job = Job::new(picture("tubingen.jpg", 160), vec![picture("starry_night.jpg", 160)], params).unwrap();
    let tiled = engine.stylize(&job, &mut |_| Control::Continue).unwrap();
    assert!(tiled.summary.memory.tiling.is_some());
    let untiled_job = job.with_params(Params { tile: Some(0), ..job.params().clone() }).unwrap();
    let untiled = engine.stylize(&untiled_job, &mut |_| Control::Continue).unwrap();
    assert!(untiled.summary.memory.tiling.is_none());
    let r_tiled = seam_ratio(&tiled.rgb, 16);
    let r_untiled = seam_ratio(&untiled.rgb, 16);
    eprintln!(
        "seam energy ratio (16 px lines / others): tiled {r_tiled:.3}, untiled {r_untiled:.3}; loss {:.3e} vs {:.3e}",
        tiled.summary.total_loss, untiled.summary.total_loss
    );
    assert!(r_tiled < 1.02 && r_tiled < r_untiled + 0.02, "tiled {r_tiled} untiled {r_untiled}");
    assert_eq!(tiled.summary.memory.tiling.map(|t| t.halo), Some(32));
    // the measure does see seams: 5% brightness steps between 16 px blocks
    let (_, _, h, w) = untiled.rgb.size4().unwrap();
    let blocks =
        Tensor::from_slice(&(0..h * w).map(|i| (((i / w) / 16 + (i % w) / 16) % 2) as f32 * 0.05).collect::<Vec<_>>())
            .view([1, 1, h, w]);
    let seamed = seam_ratio(&(&untiled.rgb + blocks), 16);
    eprintln!("with 5% steps between 16 px blocks: {seamed:.3}");
    assert!(seamed > 1.05, "5% block seams measured only {seamed}");
    assert!(tiled.summary.total_loss < 1.2 * untiled.summary.total_loss);
}
