//! `neural-style serve`: socket → connections → [`Queue`] → one engine thread → events.
//!
//! [`run`] binds the socket (refusing a second daemon, replacing a stale socket), starts the
//! engine thread (model load + warm-up, then jobs one at a time), accepts connections (one
//! thread each) until SIGINT/SIGTERM or a `shutdown` request, then stops cleanly: no new jobs,
//! running job cancelled or finished per `on_signal`, socket and pid file removed.

mod connection;
pub mod listener;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use interprocess::local_socket::traits::ListenerExt;
use neural_style_protocol::message::{ErrorCode, JobInfo, PixelFormat, Status, Stylize, PROTOCOL_VERSION};
use neural_style_protocol::message::{ImageRef, Priority};
use serde_json::{Map, Value};

use crate::config::{Config, OnSignal};
use crate::engine::{Job, Params};
use crate::image_io::{DecodeLimits, Picture};
use crate::queue::{Outgoing, Queue, QueueError, QueuedJob};
use crate::weights::Weights;

/// What the engine thread reports about itself.
#[derive(Clone, Debug, Default)]
pub struct EngineInfo {
    pub device: String,
    pub precision: String,
    pub weights: String,
    pub pretrained: bool,
    pub ready: bool,
}

/// Counters shown in `status`.
#[derive(Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cache: Mutex<(usize, u64, u64, u64)>,
}

/// State shared by the accept loop, the connections and the engine thread.
pub struct Shared {
    pub config: Config,
    pub socket: PathBuf,
    pub queue: Queue,
    pub started: Instant,
    pub shutdown: AtomicBool,
    pub clients: AtomicUsize,
    pub next_connection: AtomicU64,
    pub engine: Mutex<EngineInfo>,
    pub stats: Stats,
    /// Extra status sections (watch folders).
    pub extra_status: Mutex<Map<String, Value>>,
}

/// A refusal to send back to a client.
pub type Refusal = (ErrorCode, String);

impl Shared {
    pub fn new(config: Config, socket: PathBuf) -> Self {
        Self {
            queue: Queue::new(config.max_queue),
            config,
            socket,
            started: Instant::now(),
            shutdown: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            engine: Mutex::new(EngineInfo::default()),
            stats: Stats::default(),
            extra_status: Mutex::new(Map::new()),
        }
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits { max_pixels: self.config.max_input_pixels, ..Default::default() }
    }

    /// Checks a job against the configured limits and queues it.
    pub fn enqueue(&self, mut job: QueuedJob) -> Result<(u64, usize), Refusal> {
        let p = &job.job.params;
        p.validate(job.job.styles.len()).map_err(|e| (ErrorCode::InvalidParams, e.to_string()))?;
        if p.iterations > self.config.max_iterations {
            return Err((
                ErrorCode::TooLarge,
                format!("{} iterations exceed this daemon's limit of {}", p.iterations, self.config.max_iterations),
            ));
        }
        let (w, h) = working_size(&job.job.content, p.size);
        if u64::from(w) * u64::from(h) > self.config.max_pixels {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "the output would be {w}×{h}, over this daemon's limit of {} pixels; use a smaller size",
                    self.config.max_pixels
                ),
            ));
        }
        job.info.width = w;
        job.info.height = h;
        job.info.iterations = p.iterations;
        self.queue.push(job).map_err(|e| match e {
            QueueError::Full(_) => (ErrorCode::TooLarge, e.to_string()),
            QueueError::Closed => (ErrorCode::ShuttingDown, e.to_string()),
        })
    }

    /// Turns a `stylize` request into a queued job (images decoded here, in the connection's
    /// thread, so bad input never reaches the engine thread).
    pub fn submit(
        &self,
        req: Stylize,
        payload: &[u8],
        owner: u64,
        events: std::sync::mpsc::Sender<Outgoing>,
    ) -> Result<(u64, usize), Refusal> {
        if req.styles.is_empty() {
            return Err((ErrorCode::InvalidParams, "at least one style image is needed".into()));
        }
        if req.output == PixelFormat::Encoded {
            return Err((ErrorCode::InvalidParams, "output must be rgba8, rgba16 or rgba32f".into()));
        }
        let content = self.picture(&req.content, payload, "content")?;
        let styles = req
            .styles
            .iter()
            .enumerate()
            .map(|(i, s)| self.picture(&s.image, payload, &format!("style #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut params: Params = serde_json::from_value(Value::Object(req.params))
            .map_err(|e| (ErrorCode::InvalidParams, format!("invalid parameters: {e}")))?;
        params.style_blend = req.styles.iter().map(|s| s.weight).collect();
        let info = JobInfo {
            job: 0,
            priority: req.priority,
            label: req.label,
            width: 0,
            height: 0,
            iterations: params.iterations,
            progress: 0,
        };
        let job = Job { content, styles, params };
        let preview_every = req.preview_every.unwrap_or(0);
        let preview_size = req.preview_size.unwrap_or(128).clamp(16, 1024);
        self.enqueue(QueuedJob::new(job, info, events, owner, req.output, preview_every, preview_size))
    }

    fn picture(&self, r: &ImageRef, payload: &[u8], what: &str) -> Result<Picture, Refusal> {
        let bytes = r.slice(payload).map_err(|e| (ErrorCode::BadRequest, format!("{what}: {e}")))?;
        let limits = self.decode_limits();
        match r.format {
            PixelFormat::Encoded => Picture::from_bytes(bytes, what.as_ref(), limits).map_err(|e| {
                let code = if matches!(e, crate::image_io::ImageError::TooLarge { .. }) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::BadImage
                };
                (code, e.to_string())
            }),
            format => {
                let (w, h) = (r.width.unwrap_or(0), r.height.unwrap_or(0));
                if u64::from(w) * u64::from(h) > limits.max_pixels {
                    return Err((ErrorCode::TooLarge, format!("{what} is {w}×{h}, over the input limit")));
                }
                Picture::from_raw(format, w, h, bytes).map_err(|e| (ErrorCode::BadImage, format!("{what}: {e}")))
            }
        }
    }

    pub fn status(&self) -> Status {
        let (running, queue) = self.queue.snapshot();
        let engine = self.engine.lock().map(|e| e.clone()).unwrap_or_default();
        let cache = *self.stats.cache.lock().unwrap_or_else(|e| e.into_inner());
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            socket: self.socket.display().to_string(),
            device: engine.device,
            precision: engine.precision,
            weights: engine.weights,
            pretrained: engine.pretrained,
            ready: engine.ready,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            rss_bytes: crate::memory::rss_bytes(),
            device_memory_bytes: None,
            running,
            queue,
            clients: self.clients.load(Ordering::SeqCst),
            jobs_done: self.stats.done.load(Ordering::SeqCst),
            jobs_failed: self.stats.failed.load(Ordering::SeqCst),
            jobs_cancelled: self.stats.cancelled.load(Ordering::SeqCst),
            cache_entries: cache.0,
            cache_bytes: cache.1,
            cache_hits: cache.2,
            cache_misses: cache.3,
            extra: self.extra_status.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }

    /// Stops accepting and taking jobs; wakes the accept loop.
    pub fn trigger_shutdown(&self) {
        if self.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(on_signal = ?self.config.on_signal, "shutting down");
        self.queue.close(self.config.on_signal == OnSignal::Cancel);
        // wake the blocking accept()
        let _ = neural_style_protocol::client::connect_stream(&self.socket);
    }
}

/// The size a content picture will be optimised at.
pub fn working_size(content: &Picture, size: Option<u32>) -> (u32, u32) {
    let (w, h) = (content.width(), content.height());
    size.map_or((w, h), |s| crate::image_io::longest_side_dims(w, h, s))
}

/// Runs the daemon until it is told to stop.
pub fn run(config: Config, weights: Weights) -> anyhow::Result<()> {
    let socket = neural_style_protocol::socket::socket_path(config.socket.as_deref());
    let bound = listener::bind(&socket)?;
    let shared = Arc::new(Shared::new(config, socket.clone()));
    {
        let s = shared.clone();
        ctrlc::set_handler(move || s.trigger_shutdown())?;
    }
    let worker = {
        let s = shared.clone();
        std::thread::Builder::new().name("engine".into()).spawn(move || crate::worker::run(s, weights))?
    };
    let watchers = match crate::watch::start(shared.clone(), shared.config.watch.clone()) {
        Ok(w) => w,
        Err(e) => {
            shared.trigger_shutdown();
            let _ = worker.join();
            return Err(e);
        }
    };
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "listening");
    for conn in bound.listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let s = shared.clone();
                let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
                std::thread::Builder::new()
                    .name(format!("conn-{id}"))
                    .spawn(move || connection::serve(s, stream, id))?;
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
        if worker.is_finished() {
            break;
        }
    }
    shared.trigger_shutdown();
    for w in watchers {
        let _ = w.join();
    }
    let result = worker.join();
    drop(bound);
    tracing::info!("stopped");
    match result {
        Ok(r) => r,
        Err(_) => anyhow::bail!("the engine thread panicked"),
    }
}

pub(crate) fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Interactive => "interactive",
        Priority::Batch => "batch",
    }
}
