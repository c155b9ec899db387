//! `neural-style bench --loop` on a CUDA device, first: the L-BFGS history's two passes alone —
//! its rows times a trial's s, y and g (by the kernels of [`crate::engine::products`] and by
//! cuBLAS, chunked) and the direction's product back over the same rows — each replayed as a
//! CUDA graph of 20 calls, so that launches do not count. m = 100 pairs (202 rows) of 3·size²
//! coordinates, f32.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::timing::sync;
use crate::engine::graph::Graph;
use crate::engine::optim::lbfgs::{back_into, forward};
use crate::engine::products;

/// Calls of each pass per graph, and graph replays timed.
const CALLS: usize = 20;
const REPLAYS: usize = 10;

/// Seconds per call of `f` (replayed in a graph of [`CALLS`] calls).
fn per_call(device: Device, f: &dyn Fn() -> Tensor) -> anyhow::Result<f64> {
    let (_, graph) = Graph::capture(device, &|| (0..CALLS).map(|_| f()).collect(), None).map_err(anyhow::Error::msg)?;
    graph.replay();
    sync(device);
    let t0 = Instant::now();
    for _ in 0..REPLAYS {
        graph.replay();
    }
    sync(device);
    Ok(t0.elapsed().as_secs_f64() / (CALLS * REPLAYS) as f64)
}

/// Times the passes at each size; prints a table and returns it as JSON (empty off CUDA).
pub fn run(sizes: &[i64], device: Device) -> anyhow::Result<serde_json::Value> {
    if !device.is_cuda() {
        return Ok(serde_json::json!([]));
    }
    let was = products::enabled();
    let loaded = products::load(device);
    eprintln!(
        "the history's passes, m = 100 (202 rows × 3·size² f32), µs per call in a CUDA graph ({})",
        match &loaded {
            Ok(()) => "kernels loaded".to_string(),
            Err(e) => format!("kernels not loaded: {e}"),
        }
    );
    eprintln!(
        "{:>5} {:>10} {:>14} {:>14} {:>11} {:>11}",
        "size", "MB", "products ours", "cuBLAS chunked", "direction", "ours GB/s"
    );
    let mut rows = Vec::new();
    for &size in sizes {
        let n = 3 * size * size;
        let held = Tensor::randn([202, n], (Kind::Float, device));
        let cols = Tensor::randn([3, n], (Kind::Float, device));
        let c = Tensor::randn([202], (Kind::Float, device));
        let d = Tensor::empty([n], (Kind::Float, device));
        let columns = cols.transpose(0, 1);
        let timed = |on: bool| -> anyhow::Result<(f64, Tensor)> {
            products::set_enabled(on);
            let t = per_call(device, &|| forward(&held, &columns));
            let value = forward(&held, &columns);
            products::set_enabled(was);
            Ok((t?, value))
        };
        let (ours, a) =
            if loaded.is_ok() { timed(true)? } else { (f64::NAN, Tensor::zeros([1], (Kind::Float, device))) };
        let (cublas, b) = timed(false)?;
        let direction = per_call(device, &|| {
            back_into(&held, &c, &d);
            d.shallow_clone()
        })?;
        let err = if loaded.is_ok() {
            let diff = (&a - &b).abs().max().double_value(&[]);
            diff / b.abs().max().double_value(&[]).max(1e-30)
        } else {
            f64::NAN
        };
        let mb = (202 * n * 4) as f64 / 1e6;
        eprintln!(
            "{size:>5} {mb:>10.0} {:>14.1} {:>14.1} {:>11.1} {:>11.0}   (ours vs cuBLAS: {err:.1e})",
            ours * 1e6,
            cublas * 1e6,
            direction * 1e6,
            mb / 1e3 / ours
        );
        rows.push(serde_json::json!({
            "size": size, "history_mb": mb, "products_ours_s": ours, "products_cublas_s": cublas,
            "direction_s": direction, "ours_vs_cublas_relative": err,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}
