//! A job in the daemon: the engine's [`Job`] with its bookkeeping, the typed [`JobEvent`]s the
//! queue and the engine thread report, and where they go ([`Reply`]): a client connection gets
//! protocol events with their payloads, an in-process requester (a watch folder) the typed
//! events themselves.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use neural_style_protocol::message::{ErrorCode, Event, ImageRef, JobInfo, Losses, MemoryPlan, PixelFormat};

use crate::engine::image_io::{encode_raw, preview};
use crate::engine::{Job, Progress, Stylized};

/// A protocol event for a client, with its payload bytes.
pub type Outgoing = (Event, Vec<u8>);

/// What happens to a job, in the order it happens.
pub enum JobEvent {
    /// Queued at `position` (0 = next).
    Accepted { position: usize },
    /// Its queue position changed.
    Queued { position: usize },
    /// The engine took it, with this memory plan.
    Started { width: u32, height: u32, plan: MemoryPlan },
    /// After an evaluation.
    Progress { evaluation: usize, total: usize, losses: Losses, elapsed: f64, eta: f64, scale: [u32; 2] },
    /// Finished: the image and its summary.
    Done(Box<Stylized>),
    /// Stopped by a cancel: with the image so far when it was running.
    Cancelled(Option<Box<Stylized>>),
    /// Refused or failed.
    Failed { code: ErrorCode, message: String },
}

/// Where a job's events go.
pub enum Reply {
    /// A client connection: protocol events, the result in `output`'s pixel format, an RGBA8
    /// preview (longest side `preview_size`) with every `preview_every`-th progress event and
    /// with the first one after every `preview_every_s` seconds.
    Client {
        events: Sender<Outgoing>,
        output: PixelFormat,
        preview_every: u32,
        preview_every_s: Option<f64>,
        preview_size: u32,
    },
    /// An in-process requester: the typed events.
    Local(Sender<JobEvent>),
}

/// A job waiting for or held by the engine thread.
pub struct QueuedJob {
    pub id: u64,
    pub job: Job,
    pub info: JobInfo,
    pub reply: Reply,
    /// The connection that submitted it (0 for internal submitters).
    pub owner: u64,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<AtomicUsize>,
    /// Seconds into the job when the next time-based preview is due.
    next_preview: Cell<f64>,
    pub(super) seq: u64,
    pub(super) last_position: usize,
}

impl QueuedJob {
    pub fn new(job: Job, info: JobInfo, reply: Reply, owner: u64) -> Self {
        Self {
            id: 0,
            job,
            info,
            reply,
            owner,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(AtomicUsize::new(0)),
            next_preview: Cell::new(0.0),
            seq: 0,
            last_position: usize::MAX,
        }
    }

    /// Sends `event` to the requester. A client that went away cannot be told; its job is
    /// cancelled by the connection.
    pub fn send(&self, event: JobEvent) {
        match &self.reply {
            Reply::Local(tx) => {
                let _ = tx.send(event);
            }
            Reply::Client { events, output, .. } => {
                let _ = events.send(protocol_event(self.id, event, *output));
            }
        }
    }

    /// Reports an evaluation, with a preview when the client asked for one at this evaluation.
    pub fn send_progress(&self, p: &Progress) {
        let elapsed = p.elapsed.as_secs_f64();
        let l = p.losses;
        let event = JobEvent::Progress {
            evaluation: p.evaluation,
            total: p.max_evaluations,
            losses: Losses { content: l.content, style: l.style, tv: l.tv, total: l.total },
            elapsed,
            eta: elapsed / p.evaluation as f64 * (p.max_evaluations - p.evaluation) as f64,
            scale: {
                let dims = p.image.size();
                [dims[3] as u32, dims[2] as u32]
            },
        };
        match &self.reply {
            Reply::Client { events, output, preview_every, preview_every_s, preview_size }
                if self.preview_due(p.evaluation, elapsed, *preview_every, *preview_every_s) =>
            {
                let full = (self.info.width, self.info.height);
                let (w, h, bytes) = preview(&p.image, *preview_size, full);
                let (mut event, _) = protocol_event(self.id, event, *output);
                if let Event::Progress { preview, .. } = &mut event {
                    *preview = Some(raw_ref(&bytes, PixelFormat::Rgba8, w, h));
                }
                let _ = events.send((event, bytes));
            }
            _ => self.send(event),
        }
    }
}

impl QueuedJob {
    /// Whether evaluation `n`, `elapsed` seconds into the job, carries a preview: every
    /// `every`-th, and the first after every `every_s` seconds (the first evaluation included).
    fn preview_due(&self, n: usize, elapsed: f64, every: u32, every_s: Option<f64>) -> bool {
        let by_count = every > 0 && n.is_multiple_of(every as usize);
        let by_time = every_s.is_some_and(|s| {
            let due = elapsed >= self.next_preview.get();
            if due {
                self.next_preview.set(elapsed + s);
            }
            due
        });
        by_count || by_time
    }
}

fn raw_ref(bytes: &[u8], format: PixelFormat, width: u32, height: u32) -> ImageRef {
    ImageRef { offset: 0, length: bytes.len() as u64, format, width: Some(width), height: Some(height) }
}

/// The image of a finished or cancelled job in the client's pixel format, with its summary.
fn with_image(out: Stylized, output: PixelFormat) -> (ImageRef, Box<neural_style_protocol::message::Summary>, Vec<u8>) {
    let bytes = encode_raw(&out.rgb, out.alpha.as_deref(), output);
    let image = raw_ref(&bytes, output, out.summary.width, out.summary.height);
    (image, Box::new(out.summary), bytes)
}

/// `event` of job `job` as the protocol says it, with its payload.
fn protocol_event(job: u64, event: JobEvent, output: PixelFormat) -> Outgoing {
    let none = Vec::new();
    match event {
        JobEvent::Accepted { position } => (Event::Accepted { job, position }, none),
        JobEvent::Queued { position } => (Event::Queued { job, position }, none),
        JobEvent::Started { width, height, plan } => (Event::Started { job, width, height, memory: Some(plan) }, none),
        JobEvent::Progress { evaluation, total, losses, elapsed, eta, scale } => {
            (Event::Progress { job, evaluation, total, losses, elapsed, eta, scale: Some(scale), preview: None }, none)
        }
        JobEvent::Done(out) => {
            let (image, summary, bytes) = with_image(*out, output);
            (Event::Result { job, image, summary }, bytes)
        }
        JobEvent::Cancelled(None) => (Event::Cancelled { job, image: None, summary: None }, none),
        JobEvent::Cancelled(Some(out)) => {
            let (image, summary, bytes) = with_image(*out, output);
            (Event::Cancelled { job, image: Some(image), summary: Some(summary) }, bytes)
        }
        JobEvent::Failed { code, message } => (Event::Error { job: Some(job), code, message }, none),
    }
}
