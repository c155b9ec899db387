//! One client connection: a reader (this thread) that parses requests and a writer thread that
//! sends events. Bad frames or messages get an error event, never a crash; when the client goes
//! away, its jobs are cancelled.

use std::io::{BufReader, BufWriter};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use interprocess::local_socket::traits::StreamCommon;
use interprocess::local_socket::Stream;
use neural_style_protocol::client::SharedStream;
use neural_style_protocol::frame::{self, Limits};
use neural_style_protocol::message::{ErrorCode, Event, Request, PROTOCOL_VERSION};

use super::job::Outgoing;
use super::queue::Cancel;
use super::state::State;
use super::submit::submit;

fn error(job: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Outgoing {
    (Event::Error { job, code, message: message.into() }, Vec::new())
}

fn same_user(stream: &Stream) -> Result<(), String> {
    #[cfg(unix)]
    {
        let creds = stream.peer_creds().map_err(|e| format!("cannot read peer credentials: {e}"))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        match creds.euid() {
            Some(uid) if uid == me => Ok(()),
            Some(uid) => Err(format!("connection from uid {uid} refused: this daemon serves uid {me} only")),
            None => Err("the peer's uid is unknown".into()),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = stream;
        Ok(())
    }
}

/// Serves one connection until it closes.
pub fn serve(state: Arc<State>, stream: Stream, id: u64) {
    let clients = state.clients.fetch_add(1, Ordering::SeqCst) + 1;
    let stream = SharedStream(Arc::new(stream));
    let (tx, rx) = mpsc::channel::<Outgoing>();
    let writer = {
        let mut w = BufWriter::new(stream.clone());
        std::thread::Builder::new().name(format!("conn-{id}-w")).spawn(move || {
            for (event, payload) in rx {
                if frame::write(&mut w, &event, &payload).is_err() {
                    break;
                }
            }
        })
    };
    let Ok(writer) = writer else {
        state.clients.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    let refusal = if state.shutdown.load(Ordering::SeqCst) {
        Some((ErrorCode::ShuttingDown, "the daemon is shutting down".to_string()))
    } else if let Err(e) = same_user(&stream.0) {
        tracing::warn!(connection = id, "{e}");
        Some((ErrorCode::Forbidden, e))
    } else if clients > state.config.max_clients {
        Some((ErrorCode::Busy, format!("too many clients ({} max); try again later", state.config.max_clients)))
    } else {
        None
    };
    match refusal {
        Some((code, message)) => {
            let _ = tx.send(error(None, code, message));
        }
        None => read_requests(&state, &stream, id, &tx),
    }
    let cancelled = state.queue.cancel_owner(id);
    if cancelled > 0 {
        tracing::info!(connection = id, jobs = cancelled, "client went away: its jobs are cancelled");
    }
    drop(tx);
    let _ = writer.join();
    state.clients.fetch_sub(1, Ordering::SeqCst);
}

fn read_requests(state: &State, stream: &SharedStream, id: u64, tx: &mpsc::Sender<Outgoing>) {
    let mut reader = BufReader::new(stream.clone());
    let limits = Limits::default();
    let mut greeted = false;
    loop {
        let frame = match frame::read(&mut reader, &limits) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                // The stream is out of step (or gone): say why and close.
                let _ = tx.send(error(None, ErrorCode::BadFrame, e.to_string()));
                return;
            }
        };
        let request: Request = match frame.message() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(error(None, ErrorCode::BadRequest, e.to_string()));
                continue;
            }
        };
        if !greeted {
            match request {
                Request::Hello { protocol, client } if protocol == PROTOCOL_VERSION => {
                    greeted = true;
                    tracing::debug!(connection = id, client, "hello");
                    let e = state.engine_info();
                    let hello = Event::Hello {
                        protocol: PROTOCOL_VERSION,
                        server: format!("neural-style {}", env!("CARGO_PKG_VERSION")),
                        device: e.device,
                        pretrained: e.pretrained,
                    };
                    let _ = tx.send((hello, Vec::new()));
                }
                Request::Hello { protocol, .. } => {
                    let msg = format!(
                        "this daemon speaks protocol version {PROTOCOL_VERSION}, the client speaks {protocol}; \
                         use a client and daemon from the same neural-style release"
                    );
                    let _ = tx.send(error(None, ErrorCode::VersionMismatch, msg));
                    return;
                }
                _ => {
                    let _ = tx.send(error(None, ErrorCode::BadRequest, "the first message must be hello"));
                    return;
                }
            }
            continue;
        }
        match request {
            Request::Hello { .. } => {
                let _ = tx.send(error(None, ErrorCode::BadRequest, "hello was already sent"));
            }
            Request::Stylize(req) => {
                let label = req.label.clone();
                match submit(state, req, &frame.payload, id, tx.clone()) {
                    Ok((job, position)) => {
                        tracing::info!(
                            connection = id,
                            job,
                            position,
                            label = label.as_deref().unwrap_or(""),
                            "accepted"
                        )
                    }
                    Err((code, message)) => {
                        tracing::info!(connection = id, ?code, message, "request refused");
                        let _ = tx.send(error(None, code, message));
                    }
                }
            }
            Request::Cancel { job } => {
                let outcome = state.queue.cancel(job);
                tracing::info!(connection = id, job, ?outcome, "cancel");
                let reply = match outcome {
                    Cancel::NotFound => {
                        error(Some(job), ErrorCode::NotFound, format!("no job {job} is queued or running"))
                    }
                    _ => (Event::Cancelled { job, image: None, summary: None }, Vec::new()),
                };
                let _ = tx.send(reply);
            }
            Request::Status => {
                let _ = tx.send((Event::Status(Box::new(state.status())), Vec::new()));
            }
            Request::Shutdown => {
                let _ = tx.send((Event::ShuttingDown, Vec::new()));
                state.trigger_shutdown();
            }
        }
    }
}
