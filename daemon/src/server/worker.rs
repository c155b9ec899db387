//! The engine thread: owns the model (all tensors) and the style cache, loads and warms up once,
//! then runs queued jobs one at a time and reports their progress and outcome as [`JobEvent`]s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use neural_style_protocol::message::ErrorCode;

use super::job::{JobEvent, QueuedJob};
use super::state::{CacheStats, State};
use crate::engine::cache::StyleCache;
use crate::engine::image_io::{ImageError, Picture};
use crate::engine::memory::{default_limit, gib, Plan};
use crate::engine::params::gib_to_bytes;
use crate::engine::weights::Weights;
use crate::engine::{
    device_name, parse_device, Control, CudaOptions, Engine, EngineError, Job, Observer, Params, Progress,
};

/// A small job that touches every code path once, so the first real request is warm. On a GPU
/// it runs at the default output size (its scales and the f32 refinement load the kernels a
/// typical job uses: the first job after start-up took 4.7–6 s longer than the same job repeated
/// on an H100, docs/benchmarks.md), on a CPU at 64×48.
fn warm_up(engine: &Engine) -> Result<(), EngineError> {
    let (size, evaluations) = if engine.device().is_cuda() { (Params::default().size, 12) } else { (None, 2) };
    let pic = |f: fn(u32, u32) -> [u8; 4]| {
        let img = image::RgbaImage::from_fn(64, 48, |x, y| image::Rgba(f(x, y)));
        Picture { rgba: image::DynamicImage::ImageRgba8(img).to_rgba32f(), has_alpha: false, high_precision: false }
    };
    let job = Job::new(
        pic(|x, y| [(x * 4) as u8, (y * 5) as u8, 128, 255]),
        vec![pic(|x, y| [((x * y) % 256) as u8, 60, (x * 3) as u8, 255])],
        Params { size, evaluations, ..Params::default() },
    )?;
    engine.stylize(&job, &mut |_: &Progress| Control::Continue).map(|_| ())
}

fn error_code(e: &EngineError) -> ErrorCode {
    match e {
        EngineError::Invalid(_) => ErrorCode::InvalidParams,
        EngineError::Image(ImageError::TooLarge { .. }) => ErrorCode::TooLarge,
        EngineError::Image(_) => ErrorCode::BadImage,
        EngineError::Torch(m) if m.to_lowercase().contains("out of memory") => ErrorCode::OutOfMemory,
        EngineError::Memory(_) => ErrorCode::OutOfMemory,
        EngineError::Torch(_) => ErrorCode::Internal,
    }
}

/// Loads the model and serves the queue until it closes.
pub fn run(state: Arc<State>, weights: Weights) -> anyhow::Result<()> {
    let result = serve(&state, weights);
    if let Err(e) = &result {
        tracing::error!("engine thread failed: {e:#}");
        state.trigger_shutdown();
    }
    result
}

fn serve(state: &State, weights: Weights) -> anyhow::Result<()> {
    let cfg = &state.config;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n);
    }
    let device = parse_device(&cfg.device).map_err(anyhow::Error::msg)?;
    let layout = cfg.precision.layout(device);
    let t0 = Instant::now();
    let cuda = CudaOptions { cudnn_benchmark: cfg.cudnn_benchmark, graphs: cfg.cuda_graphs, kernels: cfg.cuda_kernels };
    let engine = Engine::with_options(&weights, device, layout, cuda);
    drop(weights);
    if cfg.warmup {
        warm_up(&engine)?;
    }
    let info = engine.weights().clone();
    {
        let mut e = state.engine.lock().unwrap_or_else(|e| e.into_inner());
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
    while let Some(mut job) = state.queue.pop() {
        // the daemon's memory limit, as of now (a client may ask for less, never for more)
        job.job.limit_memory(cfg.max_memory_gb.map(gib_to_bytes).unwrap_or_else(|| default_limit(device)));
        let event = run_job(state, &engine, &mut cache, &job);
        // Settle the bookkeeping before the requester hears the outcome, so that a status
        // request sent right after it sees this job finished.
        *state.stats.cache.lock().unwrap_or_else(|e| e.into_inner()) =
            CacheStats { entries: cache.len(), bytes: cache.bytes(), hits: cache.hits, misses: cache.misses };
        state.queue.finish();
        job.send(event);
    }
    Ok(())
}

/// Relays a running job's plan and progress to its requester, and its cancel flag back.
struct Relay<'a> {
    job: &'a QueuedJob,
}

impl Observer for Relay<'_> {
    fn planned(&mut self, plan: &Plan) {
        let job = self.job;
        let (width, height) = (job.info.width, job.info.height);
        tracing::info!(
            job = job.id,
            priority = job.info.priority.as_str(),
            width,
            height,
            estimated_gib = format!("{:.2}", gib(plan.estimated_bytes)),
            tiles = plan.tiling.map(|t| t.tile),
            "started"
        );
        job.send(JobEvent::Started { width, height, plan: plan.report() });
    }

    fn progress(&mut self, p: &Progress) -> Control {
        self.job.progress.store(p.evaluation, Ordering::SeqCst);
        self.job.send_progress(p);
        if self.job.cancel.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

/// Runs one job and returns its final event (done, cancelled or failed).
fn run_job(state: &State, engine: &Engine, cache: &mut StyleCache, job: &QueuedJob) -> JobEvent {
    let (id, stats) = (job.id, &state.stats);
    if job.cancel.load(Ordering::SeqCst) {
        stats.cancelled.fetch_add(1, Ordering::SeqCst);
        return JobEvent::Cancelled(None);
    }
    match engine.stylize_cached(&job.job, Some(cache), &mut Relay { job }) {
        Ok(out) if out.summary.cancelled => {
            tracing::info!(job = id, evaluations = out.summary.evaluations, "cancelled");
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            JobEvent::Cancelled(Some(Box::new(out)))
        }
        Ok(out) => {
            let s = &out.summary;
            tracing::info!(
                job = id,
                evaluations = s.evaluations,
                seconds = format!("{:.2}", s.seconds),
                loss = format!("{:.4e}", s.total_loss),
                "done"
            );
            stats.done.fetch_add(1, Ordering::SeqCst);
            JobEvent::Done(Box::new(out))
        }
        Err(e) => {
            match e {
                EngineError::Memory(_) => tracing::warn!(job = id, "refused: {e}"),
                _ => tracing::warn!(job = id, "failed: {e}"),
            }
            stats.failed.fetch_add(1, Ordering::SeqCst);
            JobEvent::Failed { code: error_code(&e), message: e.to_string() }
        }
    }
}
