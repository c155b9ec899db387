//! The messages: what clients send ([`Request`]) and what the daemon sends ([`Event`]).
//! JSON objects tagged by `"type"`; images travel in the frame's payload and are referenced by
//! byte ranges ([`ImageRef`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Protocol version spoken by this build. The daemon refuses a `hello` with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// How an image's bytes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// An encoded file (PNG, JPEG, WebP, TIFF, …); width and height come from the file.
    Encoded,
    /// Raw RGBA, 8 bits per sample, row-major, no padding.
    Rgba8,
    /// Raw RGBA, 16-bit little-endian samples.
    Rgba16,
    /// Raw RGBA, 32-bit little-endian float samples in `[0,1]`.
    Rgba32f,
}

impl PixelFormat {
    /// Bytes per pixel of a raw format.
    pub fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Encoded => None,
            PixelFormat::Rgba8 => Some(4),
            PixelFormat::Rgba16 => Some(8),
            PixelFormat::Rgba32f => Some(16),
        }
    }
}

/// An image inside the frame's payload: bytes `offset .. offset + length`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub offset: u64,
    pub length: u64,
    pub format: PixelFormat,
    /// Required for raw formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

impl ImageRef {
    /// An encoded image file at `offset .. offset + length` of the payload.
    pub fn encoded(offset: usize, length: usize) -> Self {
        Self { offset: offset as u64, length: length as u64, format: PixelFormat::Encoded, width: None, height: None }
    }

    /// The referenced bytes, checked against the payload and, for raw formats, the dimensions.
    pub fn slice<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], String> {
        let end = self.offset.checked_add(self.length).ok_or("image range overflows")?;
        if end > payload.len() as u64 {
            return Err(format!("image bytes {}..{end} lie outside the {}-byte payload", self.offset, payload.len()));
        }
        if let Some(bpp) = self.format.bytes_per_pixel() {
            let (w, h) = match (self.width, self.height) {
                (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
                _ => return Err(format!("raw {:?} pixels need a positive width and height", self.format)),
            };
            let expected = u64::from(w) * u64::from(h) * bpp as u64;
            if expected != self.length {
                return Err(format!("{w}×{h} {:?} needs {expected} bytes, got {}", self.format, self.length));
            }
        }
        Ok(&payload[self.offset as usize..end as usize])
    }
}

/// A style image and its blend weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StyleRef {
    pub image: ImageRef,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// Queue class: interactive requests run before watch-folder (batch) ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

impl Priority {
    /// The name on the wire (`interactive`, `batch`), for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// A style-transfer request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stylize {
    pub content: ImageRef,
    pub styles: Vec<StyleRef>,
    /// Engine parameters (see the README's table; unknown names are rejected).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Pixel format of the result (raw formats only).
    #[serde(default = "rgba8")]
    pub output: PixelFormat,
    #[serde(default)]
    pub priority: Priority,
    /// Send a small RGBA8 preview with every K-th progress event (0/absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_every: Option<u32>,
    /// Also send a preview with the first progress event after every S seconds (rate-based:
    /// the same cadence whatever the image size and device). Either trigger sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_every_s: Option<f64>,
    /// Longest side of previews (default 128; at most the output's). A preview always shows the
    /// whole image at the output's proportions, whichever scale the job is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_size: Option<u32>,
    /// Free text shown in status and logs (e.g. the GIMP image name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

fn rgba8() -> PixelFormat {
    PixelFormat::Rgba8
}

impl Stylize {
    /// A request for encoded image files (content, then `(style bytes, blend weight)`), with
    /// defaults for everything else (RGBA8 result, interactive, no previews); returns the
    /// request and its payload.
    pub fn encoded(content: &[u8], styles: &[(&[u8], f64)], params: Map<String, Value>) -> (Self, Vec<u8>) {
        let mut payload = content.to_vec();
        let content = ImageRef::encoded(0, content.len());
        let styles = styles
            .iter()
            .map(|(bytes, weight)| {
                let image = ImageRef::encoded(payload.len(), bytes.len());
                payload.extend_from_slice(bytes);
                StyleRef { image, weight: *weight }
            })
            .collect();
        let request = Stylize {
            content,
            styles,
            params,
            output: PixelFormat::Rgba8,
            priority: Priority::Interactive,
            preview_every: None,
            preview_every_s: None,
            preview_size: None,
            label: None,
        };
        (request, payload)
    }
}

/// Client → daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message on every connection.
    Hello {
        protocol: u32,
        client: String,
    },
    Stylize(Stylize),
    /// Cancel a job (any job of the same user).
    Cancel {
        job: u64,
    },
    Status,
    /// Stop the daemon (running job per its `--on-signal` setting).
    Shutdown,
}

/// Loss values (the paper's eq. 1, 5, TV and eq. 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub content: f64,
    pub style: f64,
    pub tv: f64,
    pub total: f64,
}

/// Tile geometry of a tiled job, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileGrid {
    /// Side of a tile's core.
    pub tile: i64,
    /// Context added on each side of a core.
    pub halo: i64,
}

/// The daemon's memory plan for a job at its output size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Predicted peak bytes.
    pub estimated_bytes: u64,
    /// The limit it was checked against.
    pub limit_bytes: u64,
    /// Tiles, when the whole image does not fit.
    pub tiling: Option<TileGrid>,
    /// The L-BFGS history actually used (reduced when the history alone would not fit).
    pub lbfgs_history: usize,
    /// The part of the estimate that is the L-BFGS history.
    pub history_bytes: u64,
    /// How the history's pairs are stored: `f32`, or `bf16` when the device is tight and the
    /// network runs in reduced precision (absent from older daemons: `f32`).
    #[serde(default = "f32_name")]
    pub history_precision: String,
}

fn f32_name() -> String {
    "f32".into()
}

/// One scale of a finished job's coarse-to-fine schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleReport {
    pub width: u32,
    pub height: u32,
    pub evaluations: usize,
    pub seconds: f64,
    /// L-BFGS pairs carried over from the coarser scale (0 at the first scale, with Adam, and
    /// from older daemons).
    #[serde(default)]
    pub carried_pairs: usize,
}

/// The VGG19 weights a job ran with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsSummary {
    pub path: String,
    /// False for seeded random weights: results will not look like the style.
    pub pretrained: bool,
    /// `torchvision` or `caffe`.
    pub preprocessing: String,
    pub source: String,
}

/// Why a job's optimisation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The evaluation budget (`iterations`) is spent.
    Budget,
    /// The time budget (`max_seconds`) is spent.
    Time,
    /// Cancelled (a client's cancel, Ctrl-C, the daemon stopping).
    Cancelled,
    /// The gradient vanished: nothing left to do.
    Converged,
}

/// Final figures of a job (the `summary` of `result` and of a running job's `cancelled`, and
/// what `neural-style run --json` prints). Losses are f32 values at the output size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub content_loss: f64,
    pub style_loss: f64,
    pub tv_loss: f64,
    /// eq. 7 at the result.
    pub total_loss: f64,
    /// eq. 7 at the initial image.
    pub initial_loss: f64,
    /// Optimiser iterations (an L-BFGS iteration may take several evaluations).
    pub iterations: usize,
    /// Objective evaluations (forward + backward), the unit of the budget.
    pub evaluations: usize,
    /// The optimisation loop alone.
    pub seconds: f64,
    pub device: String,
    pub pretrained: bool,
    pub weights: WeightsSummary,
    pub width: u32,
    pub height: u32,
    pub alpha: f64,
    pub beta: f64,
    pub tv_weight: f64,
    /// `lbfgs` or `adam`.
    pub optimizer: String,
    /// Network precision and layout the optimisation ran with (losses are f32 regardless).
    pub precision: String,
    pub converged: bool,
    /// Why the optimisation ended.
    pub stop_reason: StopReason,
    /// L-BFGS line searches that found no lower value; each was followed by a restart from
    /// steepest descent (and, with a reduced-precision network, a switch to the f32 one).
    pub line_search_restarts: usize,
    /// Stopped early by request (Ctrl-C, cancel).
    pub cancelled: bool,
    /// Stopped by `max_seconds`.
    pub time_budget_reached: bool,
    /// The content had an alpha channel (carried to the output).
    pub has_alpha: bool,
    /// What each scale of the schedule got, coarsest first (scales never reached are absent).
    pub scales: Vec<ScaleReport>,
    /// The schedule and why, e.g. `single scale (chosen: image start: …)` (absent from older
    /// daemons).
    #[serde(default)]
    pub schedule: String,
    /// The memory estimate at the output size and what it decided (tiles, L-BFGS history).
    pub memory: MemoryPlan,
    /// The content had more than 8 bits per channel.
    pub high_precision: bool,
}

/// Stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    VersionMismatch,
    /// A frame could not be read (bad magic, sizes over the limits, truncated).
    BadFrame,
    /// The frame was fine but the message was not (bad JSON, unknown type, missing fields).
    BadRequest,
    /// An engine parameter is invalid.
    InvalidParams,
    /// An image could not be decoded.
    BadImage,
    /// Over a configured limit (pixels, iterations, clients, queue).
    TooLarge,
    /// Too many clients connected.
    Busy,
    /// Unknown job.
    NotFound,
    /// Another user's connection.
    Forbidden,
    /// The device ran out of memory; try a smaller size.
    OutOfMemory,
    /// The daemon is stopping.
    ShuttingDown,
    Internal,
}

/// A job in the status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: u64,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub width: u32,
    pub height: u32,
    /// The evaluation budget (`iterations` on the wire, for compatibility).
    #[serde(rename = "iterations")]
    pub evaluations: usize,
    /// Evaluations done (running job).
    #[serde(default)]
    pub progress: usize,
}

/// The daemon's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub socket: String,
    pub device: String,
    pub precision: String,
    pub weights: String,
    pub pretrained: bool,
    pub ready: bool,
    pub uptime_seconds: f64,
    pub rss_bytes: u64,
    #[serde(default)]
    pub device_memory_bytes: Option<u64>,
    pub running: Option<JobInfo>,
    pub queue: Vec<JobInfo>,
    pub clients: usize,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub jobs_cancelled: u64,
    pub cache_entries: usize,
    pub cache_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Extra sections (e.g. watch folders).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// Daemon → client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Answer to the client's hello.
    Hello {
        protocol: u32,
        server: String,
        device: String,
        pretrained: bool,
    },
    /// The request is queued; `position` 0 = next to run.
    Accepted {
        job: u64,
        position: usize,
    },
    /// The job's queue position changed.
    Queued {
        job: u64,
        position: usize,
    },
    /// The job left the queue and runs now.
    Started {
        job: u64,
        width: u32,
        height: u32,
        /// The daemon's memory plan for the job.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory: Option<MemoryPlan>,
    },
    /// After each objective evaluation. `preview`, when present, is RGBA8 in the payload.
    Progress {
        job: u64,
        /// Evaluations done so far (`iteration` on the wire, for compatibility).
        #[serde(rename = "iteration")]
        evaluation: usize,
        total: usize,
        losses: Losses,
        elapsed: f64,
        eta: f64,
        /// `[width, height]` of the scale being optimised (coarse-to-fine: smaller than the
        /// output's until the last scale; absent from older daemons).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale: Option<[u32; 2]>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<ImageRef>,
    },
    /// The stylized image in the payload, and the run's summary.
    Result {
        job: u64,
        image: ImageRef,
        summary: Box<Summary>,
    },
    /// The job stopped early. A job cancelled while running carries its current image (in the
    /// requested format, in the payload) and summary; one cancelled while waiting has neither.
    Cancelled {
        job: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<Box<Summary>>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Status(Box<Status>),
    /// The daemon is stopping (answer to shutdown).
    ShuttingDown,
}
