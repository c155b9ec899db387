//! The job queue in front of the engine thread: FIFO within a priority, interactive before
//! batch (watch-folder) jobs; cancellation of waiting and running jobs; queue positions sent to
//! clients whenever they change.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use neural_style_protocol::message::JobInfo;

use super::job::{JobEvent, QueuedJob};

struct Running {
    id: u64,
    owner: u64,
    info: JobInfo,
    cancel: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<QueuedJob>,
    running: Option<Running>,
    closed: bool,
    next_id: u64,
    next_seq: u64,
}

/// Outcome of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Removed from the queue (its client was told).
    Waiting,
    /// The running job will stop after its current evaluation.
    Running,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({0} jobs waiting); try again later")]
    Full(usize),
    #[error("the daemon is shutting down")]
    Closed,
}

#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    max_waiting: usize,
}

impl Queue {
    pub fn new(max_waiting: usize) -> Self {
        Self { max_waiting, ..Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job; returns its id and queue position (0 = next).
    pub fn push(&self, mut job: QueuedJob) -> Result<(u64, usize), QueueError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(QueueError::Closed);
        }
        if inner.waiting.len() >= self.max_waiting {
            return Err(QueueError::Full(inner.waiting.len()));
        }
        inner.next_id += 1;
        inner.next_seq += 1;
        job.id = inner.next_id;
        job.info.job = job.id;
        job.seq = inner.next_seq;
        let id = job.id;
        let key = (job.info.priority, job.seq);
        let at = inner.waiting.iter().position(|j| (j.info.priority, j.seq) > key).unwrap_or(inner.waiting.len());
        job.last_position = at;
        job.send(JobEvent::Accepted { position: at });
        inner.waiting.insert(at, job);
        Self::announce_positions(&mut inner);
        self.ready.notify_one();
        Ok((id, at))
    }

    fn announce_positions(inner: &mut Inner) {
        for (pos, j) in inner.waiting.iter_mut().enumerate() {
            if j.last_position != pos {
                j.last_position = pos;
                j.send(JobEvent::Queued { position: pos });
            }
        }
    }

    /// Blocks until a job is available (and marks it running), or returns `None` once closed.
    pub fn pop(&self) -> Option<QueuedJob> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if !inner.waiting.is_empty() {
                let job = inner.waiting.remove(0);
                inner.running = Some(Running {
                    id: job.id,
                    owner: job.owner,
                    info: job.info.clone(),
                    cancel: job.cancel.clone(),
                    progress: job.progress.clone(),
                });
                Self::announce_positions(&mut inner);
                return Some(job);
            }
            inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The engine thread is done with the running job.
    pub fn finish(&self) {
        self.lock().running = None;
    }

    /// Cancels job `id`.
    pub fn cancel(&self, id: u64) -> Cancel {
        let mut inner = self.lock();
        if let Some(r) = inner.running.as_ref().filter(|r| r.id == id) {
            r.cancel.store(true, Ordering::SeqCst);
            return Cancel::Running;
        }
        if let Some(i) = inner.waiting.iter().position(|j| j.id == id) {
            let job = inner.waiting.remove(i);
            job.send(JobEvent::Cancelled(None));
            Self::announce_positions(&mut inner);
            return Cancel::Waiting;
        }
        Cancel::NotFound
    }

    /// Cancels every job of a connection (it went away). Returns how many.
    pub fn cancel_owner(&self, owner: u64) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        if let Some(r) = inner.running.as_ref().filter(|r| r.owner == owner) {
            r.cancel.store(true, Ordering::SeqCst);
            n += 1;
        }
        let before = inner.waiting.len();
        inner.waiting.retain(|j| j.owner != owner);
        n += before - inner.waiting.len();
        Self::announce_positions(&mut inner);
        n
    }

    /// Stops taking jobs: waiting ones are cancelled; the running one is cancelled too when
    /// `cancel_running`. `pop` returns `None` from now on.
    pub fn close(&self, cancel_running: bool) {
        let mut inner = self.lock();
        inner.closed = true;
        for j in inner.waiting.drain(..) {
            j.send(JobEvent::Cancelled(None));
        }
        if cancel_running {
            if let Some(r) = &inner.running {
                r.cancel.store(true, Ordering::SeqCst);
            }
        }
        self.ready.notify_all();
    }

    /// The running job and the waiting ones, in order.
    pub fn snapshot(&self) -> (Option<JobInfo>, Vec<JobInfo>) {
        let inner = self.lock();
        let running =
            inner.running.as_ref().map(|r| JobInfo { progress: r.progress.load(Ordering::SeqCst), ..r.info.clone() });
        (running, inner.waiting.iter().map(|j| j.info.clone()).collect())
    }

    /// Whether a job is waiting or running.
    pub fn is_idle(&self) -> bool {
        let inner = self.lock();
        inner.running.is_none() && inner.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::image_io::Picture;
    use crate::engine::{Job, Params};
    use crate::server::job::{Outgoing, Reply};
    use neural_style_protocol::message::{Event, PixelFormat, Priority};
    use std::sync::mpsc;

    fn job(priority: Priority) -> (QueuedJob, mpsc::Receiver<Outgoing>) {
        let pic = Picture { rgba: image::Rgba32FImage::new(16, 16), has_alpha: false, high_precision: false };
        let job = Job::new(pic.clone(), vec![pic], Params::default()).unwrap();
        let info = JobInfo { job: 0, priority, label: None, width: 16, height: 16, evaluations: 1, progress: 0 };
        let (tx, rx) = mpsc::channel();
        let reply = Reply::Client {
            events: tx,
            output: PixelFormat::Rgba8,
            preview_every: 0,
            preview_every_s: None,
            preview_size: 128,
        };
        (QueuedJob::new(job, info, reply, 1), rx)
    }

    #[test]
    fn interactive_jobs_overtake_batch_jobs_fifo_within_a_class() {
        let q = Queue::new(10);
        let (b1, rb1) = job(Priority::Batch);
        let (b2, _rb2) = job(Priority::Batch);
        let (i1, ri1) = job(Priority::Interactive);
        let (i2, _ri2) = job(Priority::Interactive);
        assert_eq!(q.push(b1).unwrap().1, 0);
        assert_eq!(q.push(b2).unwrap().1, 1);
        assert_eq!(q.push(i1).unwrap().1, 0, "interactive goes before batch");
        assert_eq!(q.push(i2).unwrap().1, 1, "after the earlier interactive job");
        // b1 was told it moved from 0 to 2
        let positions: Vec<usize> = rb1
            .try_iter()
            .filter_map(|(e, _)| match e {
                Event::Accepted { position, .. } | Event::Queued { position, .. } => Some(position),
                _ => None,
            })
            .collect();
        assert_eq!(positions, vec![0, 1, 2]);
        let order: Vec<Priority> = (0..4).map(|_| q.pop().unwrap().info.priority).collect();
        assert_eq!(order, [Priority::Interactive, Priority::Interactive, Priority::Batch, Priority::Batch]);
        assert!(matches!(ri1.try_iter().next().unwrap().0, Event::Accepted { position: 0, .. }));
        // cancelling a waiting job tells its owner; closing cancels the rest
        let (b3, rb3) = job(Priority::Batch);
        let (id, _) = q.push(b3).unwrap();
        assert_eq!(q.cancel(id), Cancel::Waiting);
        assert!(rb3.try_iter().any(|(e, _)| matches!(e, Event::Cancelled { .. })));
        assert_eq!(q.cancel(id), Cancel::NotFound);
        q.close(true);
        assert!(q.pop().is_none());
    }
}
