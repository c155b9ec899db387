//! The engine thread: owns the model (all tensors) and the style cache, loads and warms up once,
//! then runs queued jobs one at a time and turns their progress and outcome into events.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use neural_style_protocol::message::{ErrorCode, Event, ImageRef, Losses, PixelFormat};

use crate::cache::StyleCache;
use crate::engine::{device_name, parse_device, Control, Engine, EngineError, Job, Params, Progress};
use crate::image_io::{encode_raw, preview, Picture};
use crate::queue::QueuedJob;
use crate::server::{priority_name, Shared};
use crate::weights::Weights;

/// A tiny job that touches every code path once, so the first real request is warm.
fn warm_up(engine: &Engine) -> Result<(), EngineError> {
    let pic = |f: fn(u32, u32) -> [u8; 4]| {
        let img = image::RgbaImage::from_fn(64, 48, |x, y| image::Rgba(f(x, y)));
        Picture { rgba: image::DynamicImage::ImageRgba8(img).to_rgba32f(), has_alpha: false, high_precision: false }
    };
    let job = Job {
        content: pic(|x, y| [(x * 4) as u8, (y * 5) as u8, 128, 255]),
        styles: vec![pic(|x, y| [((x * y) % 256) as u8, 60, (x * 3) as u8, 255])],
        params: Params { size: None, iterations: 2, ..Params::default() },
    };
    engine.stylize(&job, &mut |_| Control::Continue).map(|_| ())
}

fn error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::Invalid(_) => ErrorCode::InvalidParams,
        EngineError::Image(crate::image_io::ImageError::TooLarge { .. }) => ErrorCode::TooLarge,
        EngineError::Image(_) => ErrorCode::BadImage,
        EngineError::Torch(m) if m.to_lowercase().contains("out of memory") => ErrorCode::OutOfMemory,
        EngineError::Memory(_) => ErrorCode::OutOfMemory,
        EngineError::Torch(_) => ErrorCode::Internal,
    }
}

/// Loads the model and serves the queue until it closes.
pub fn run(shared: Arc<Shared>, weights: Weights) -> anyhow::Result<()> {
    let result = serve(&shared, weights);
    if let Err(e) = &result {
        tracing::error!("engine thread failed: {e:#}");
        shared.trigger_shutdown();
    }
    result
}

fn serve(shared: &Shared, weights: Weights) -> anyhow::Result<()> {
    let cfg = &shared.config;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n);
    }
    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    let layout = cfg.precision.layout(device);
    let t0 = Instant::now();
    let engine = Engine::with_layout(&weights, device, layout);
    drop(weights);
    if cfg.warmup {
        warm_up(&engine)?;
    }
    let info = engine.weights().clone();
    {
        let mut e = shared.engine.lock().unwrap_or_else(|e| e.into_inner());
        e.device = device_name(device);
        e.precision = layout.name();
        e.weights = info.path.display().to_string();
        e.pretrained = info.pretrained;
        e.ready = true;
    }
    if !info.pretrained {
        tracing::warn!(weights = %info.path.display(), "serving with NOT PRETRAINED weights (random init): results will not look like the styles");
    }
    tracing::info!(
        device = %device_name(device), precision = %layout.name(), weights = %info.path.display(),
        pretrained = info.pretrained, seconds = format!("{:.2}", t0.elapsed().as_secs_f64()),
        "ready"
    );
    let mut cache = StyleCache::new(cfg.cache_mb * 1024 * 1024);
    while let Some(mut job) = shared.queue.pop() {
        let (event, payload) = run_job(shared, &engine, &mut cache, &mut job);
        // Settle the bookkeeping before the client hears the outcome, so that a status request
        // sent right after it sees this job finished.
        *shared.stats.cache.lock().unwrap_or_else(|e| e.into_inner()) =
            (cache.len(), cache.bytes(), cache.hits, cache.misses);
        shared.queue.finish();
        job.send(event, payload);
    }
    Ok(())
}

/// Runs one job and returns its final event (result, cancelled or error) with its payload.
fn run_job(shared: &Shared, engine: &Engine, cache: &mut StyleCache, job: &mut QueuedJob) -> (Event, Vec<u8>) {
    let id = job.id;
    let stats = &shared.stats;
    if job.cancel.load(Ordering::SeqCst) {
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
        return (Event::Cancelled { job: id, image: None, summary: None }, Vec::new());
    }
    // The memory plan, under the daemon's limit (a client may ask for less, never for more).
    let limit = shared
        .config
        .max_memory_gb
        .map(|g| (g.max(0.0) * (1u64 << 30) as f64) as u64)
        .unwrap_or_else(|| crate::memory::default_limit(engine.device()));
    let params = &mut job.job.params;
    params.max_memory = Some(params.max_memory.map_or(limit, |m| m.min(limit)));
    let job = &*job;
    let plan = match engine.plan(&job.job) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::warn!(job = id, "refused: {e}");
            stats.failed.fetch_add(1, Ordering::SeqCst);
            return (Event::Error { job: Some(id), code: error_code(&e), message: e.to_string() }, Vec::new());
        }
    };
    let memory = serde_json::to_value(&plan).ok();
    job.send(Event::Started { job: id, width: job.info.width, height: job.info.height, memory }, Vec::new());
    tracing::info!(
        job = id,
        priority = priority_name(job.info.priority),
        width = job.info.width,
        height = job.info.height,
        estimated_gib = format!("{:.2}", crate::memory::gib(plan.estimated_bytes)),
        tiles = plan.tiling.map(|t| t.tile),
        "started"
    );
    let mut observe = |p: &Progress| {
        job.progress.store(p.evaluation, Ordering::SeqCst);
        let elapsed = p.elapsed.as_secs_f64();
        let eta = elapsed / p.evaluation as f64 * (p.max_evaluations - p.evaluation) as f64;
        let (preview_ref, payload) = if job.preview_every > 0 && p.evaluation.is_multiple_of(job.preview_every as usize)
        {
            let (w, h, bytes) = preview(&p.image, job.preview_size);
            let r = ImageRef {
                offset: 0,
                length: bytes.len() as u64,
                format: PixelFormat::Rgba8,
                width: Some(w),
                height: Some(h),
            };
            (Some(r), bytes)
        } else {
            (None, Vec::new())
        };
        let l = p.losses;
        job.send(
            Event::Progress {
                job: id,
                iteration: p.evaluation,
                total: p.max_evaluations,
                losses: Losses { content: l.content, style: l.style, tv: l.tv, total: l.total },
                elapsed,
                eta,
                preview: preview_ref,
            },
            payload,
        );
        if job.cancel.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let outcome =
        std::panic::catch_unwind(AssertUnwindSafe(|| engine.stylize_cached(&job.job, Some(cache), &mut observe)));
    match outcome {
        Ok(Ok(out)) => {
            let bytes = encode_raw(&out.rgb, out.alpha.as_deref(), job.output);
            let image = ImageRef {
                offset: 0,
                length: bytes.len() as u64,
                format: job.output,
                width: Some(out.summary.width),
                height: Some(out.summary.height),
            };
            if out.summary.cancelled {
                tracing::info!(job = id, evaluations = out.summary.evaluations, "cancelled");
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                let summary = serde_json::to_value(&out.summary).ok();
                return (Event::Cancelled { job: id, image: Some(image), summary }, bytes);
            }
            let s = &out.summary;
            tracing::info!(
                job = id,
                evaluations = s.evaluations,
                seconds = format!("{:.2}", s.seconds),
                loss = format!("{:.4e}", s.total_loss),
                "done"
            );
            stats.done.fetch_add(1, Ordering::SeqCst);
            let summary = serde_json::to_value(&out.summary).unwrap_or_default();
            (Event::Result { job: id, image, summary }, bytes)
        }
        Ok(Err(e)) => {
            tracing::warn!(job = id, "failed: {e}");
            stats.failed.fetch_add(1, Ordering::SeqCst);
            (Event::Error { job: Some(id), code: error_code(&e), message: e.to_string() }, Vec::new())
        }
        Err(_) => {
            tracing::error!(job = id, "the job panicked");
            stats.failed.fetch_add(1, Ordering::SeqCst);
            let message = "internal error while running the job; the daemon goes on".to_string();
            (Event::Error { job: Some(id), code: ErrorCode::Internal, message }, Vec::new())
        }
    }
}
