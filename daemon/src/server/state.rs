//! The daemon's state, shared by the accept loop, the connections, the watch folders and the
//! engine thread: configuration, the queue, what the engine reports of itself, counters, and
//! the shutdown flag.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use neural_style_protocol::message::{Status, PROTOCOL_VERSION};
use serde_json::{Map, Value};

use super::config::{Config, OnSignal};
use super::queue::Queue;
use crate::engine::image_io::DecodeLimits;

/// What the engine thread reports about itself.
#[derive(Clone, Debug, Default)]
pub struct EngineInfo {
    pub device: String,
    pub precision: String,
    pub weights: String,
    pub pretrained: bool,
    pub ready: bool,
}

/// The style cache's figures, as of the last finished job.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// Counters shown in `status`.
#[derive(Default)]
pub struct Stats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cache: Mutex<CacheStats>,
}

/// State shared by the accept loop, the connections, the watch folders and the engine thread.
pub struct State {
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

impl State {
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

    pub fn engine_info(&self) -> EngineInfo {
        self.engine.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        let (running, queue) = self.queue.snapshot();
        let engine = self.engine_info();
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
            rss_bytes: crate::engine::memory::rss_bytes(),
            device_memory_bytes: None,
            running,
            queue,
            clients: self.clients.load(Ordering::SeqCst),
            jobs_done: self.stats.done.load(Ordering::SeqCst),
            jobs_failed: self.stats.failed.load(Ordering::SeqCst),
            jobs_cancelled: self.stats.cancelled.load(Ordering::SeqCst),
            cache_entries: cache.entries,
            cache_bytes: cache.bytes,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
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
