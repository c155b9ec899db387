//! Jobs enter the daemon here, from a client's `stylize` request or from a watch folder: images
//! decoded (in the requester's thread, so bad input never reaches the engine thread), the job
//! checked once ([`Job::new`] and this daemon's limits), then queued.

use neural_style_protocol::message::{ErrorCode, ImageRef, JobInfo, PixelFormat, Stylize};
use serde_json::Value;

use super::job::{QueuedJob, Reply};
use super::queue::QueueError;
use super::state::State;
use crate::engine::image_io::{ImageError, Picture};
use crate::engine::{Job, Params};

/// A refusal to send back to a requester.
pub type Refusal = (ErrorCode, String);

/// Checks a job against this daemon's limits and queues it; returns its id and queue position.
pub fn enqueue(state: &State, mut job: QueuedJob) -> Result<(u64, usize), Refusal> {
    let p = job.job.params();
    if p.evaluations > state.config.max_iterations {
        return Err((
            ErrorCode::TooLarge,
            format!("{} iterations exceed this daemon's limit of {}", p.evaluations, state.config.max_iterations),
        ));
    }
    let (w, h) = job.job.output_size();
    if u64::from(w) * u64::from(h) > state.config.max_pixels {
        return Err((
            ErrorCode::TooLarge,
            format!(
                "the output would be {w}×{h}, over this daemon's limit of {} pixels; use a smaller size",
                state.config.max_pixels
            ),
        ));
    }
    job.info.width = w;
    job.info.height = h;
    job.info.evaluations = p.evaluations;
    state.queue.push(job).map_err(|e| match e {
        QueueError::Full(_) => (ErrorCode::TooLarge, e.to_string()),
        QueueError::Closed => (ErrorCode::ShuttingDown, e.to_string()),
    })
}

/// A job for the queue (ids and sizes are filled in by [`enqueue`]).
pub fn queued(
    job: Job,
    priority: neural_style_protocol::message::Priority,
    label: Option<String>,
    reply: Reply,
    owner: u64,
) -> QueuedJob {
    let info =
        JobInfo { job: 0, priority, label, width: 0, height: 0, evaluations: job.params().evaluations, progress: 0 };
    QueuedJob::new(job, info, reply, owner)
}

/// Turns a client's `stylize` request into a queued job.
pub fn submit(
    state: &State,
    req: Stylize,
    payload: &[u8],
    owner: u64,
    events: std::sync::mpsc::Sender<super::job::Outgoing>,
) -> Result<(u64, usize), Refusal> {
    if req.output == PixelFormat::Encoded {
        return Err((ErrorCode::InvalidParams, "output must be rgba8, rgba16 or rgba32f".into()));
    }
    if let Some(s) = req.preview_every_s.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err((
            ErrorCode::InvalidParams,
            format!("preview_every_s must be a positive number of seconds, got {s}"),
        ));
    }
    let content = picture(state, &req.content, payload, "content")?;
    let styles = req
        .styles
        .iter()
        .enumerate()
        .map(|(i, s)| picture(state, &s.image, payload, &format!("style #{}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params: Params = serde_json::from_value(Value::Object(req.params))
        .map_err(|e| (ErrorCode::InvalidParams, format!("invalid parameters: {e}")))?;
    params.style_blend = req.styles.iter().map(|s| s.weight).collect();
    let job = Job::new(content, styles, params).map_err(|e| (ErrorCode::InvalidParams, e.to_string()))?;
    let reply = Reply::Client {
        events,
        output: req.output,
        preview_every: req.preview_every.unwrap_or(0),
        // a preview costs a device-to-host copy: not more often than every 50 ms
        preview_every_s: req.preview_every_s.map(|s| s.max(0.05)),
        preview_size: req.preview_size.unwrap_or(128).clamp(16, 1024),
    };
    enqueue(state, queued(job, req.priority, req.label, reply, owner))
}

fn picture(state: &State, r: &ImageRef, payload: &[u8], what: &str) -> Result<Picture, Refusal> {
    let bytes = r.slice(payload).map_err(|e| (ErrorCode::BadRequest, format!("{what}: {e}")))?;
    let limits = state.decode_limits();
    match r.format {
        PixelFormat::Encoded => Picture::from_bytes(bytes, what.as_ref(), limits).map_err(|e| {
            let code = if matches!(e, ImageError::TooLarge { .. }) { ErrorCode::TooLarge } else { ErrorCode::BadImage };
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
