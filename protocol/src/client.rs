//! A blocking client: connect (with the version handshake), send requests, read events.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, GenericNamespaced, Stream};

use crate::frame::{self, FrameError, Limits};
use crate::message::{ErrorCode, Event, Request, Status, Stylize, PROTOCOL_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no neural-style daemon at {path}: {source}. Start one with `neural-style serve`")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("daemon error ({code:?}): {message}")]
    Daemon { code: ErrorCode, message: String },
    #[error("unexpected message from the daemon: {0}")]
    Unexpected(String),
}

/// The outcome of a stylize request.
pub struct JobResult {
    pub job: u64,
    pub image: crate::message::ImageRef,
    pub payload: Vec<u8>,
    pub summary: Box<crate::message::Summary>,
}

/// One end of a local-socket stream shared between a reading and a writing side (`&Stream`
/// implements `Read` and `Write`).
#[derive(Clone)]
pub struct SharedStream(pub Arc<Stream>);

impl Read for SharedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

/// A connection to the daemon.
pub struct Client {
    recv: BufReader<SharedStream>,
    send: BufWriter<SharedStream>,
    limits: Limits,
    /// What the daemon said in its hello.
    pub server: Event,
}

/// Opens the local socket at `path` (a named pipe name on Windows).
pub fn connect_stream(path: &Path) -> std::io::Result<Stream> {
    let name = if cfg!(windows) {
        let s = path.to_string_lossy();
        s.trim_start_matches(r"\\.\pipe\").to_string().to_ns_name::<GenericNamespaced>()?.into_owned()
    } else {
        path.to_fs_name::<GenericFilePath>()?.into_owned()
    };
    Stream::connect(name)
}

impl Client {
    /// Connects and performs the handshake.
    pub fn connect(path: &Path, client_name: &str) -> Result<Self, ClientError> {
        let stream = connect_stream(path).map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        let shared = SharedStream(Arc::new(stream));
        let mut c = Client {
            recv: BufReader::new(shared.clone()),
            send: BufWriter::new(shared),
            limits: Limits::default(),
            server: Event::ShuttingDown,
        };
        // A daemon that refuses the connection (another user, too many clients, shutting down)
        // answers with an error and closes at once, so our hello may fail to send: read its
        // answer anyway, and report the refusal rather than the broken pipe.
        let sent = c.send(&Request::Hello { protocol: PROTOCOL_VERSION, client: client_name.into() }, &[]);
        match c.recv() {
            Ok((hello @ Event::Hello { .. }, _)) if sent.is_ok() => c.server = hello,
            Ok((other, _)) => return Err(unexpected(other)),
            Err(e) => return Err(sent.err().unwrap_or(e)),
        }
        Ok(c)
    }

    pub fn send(&mut self, request: &Request, payload: &[u8]) -> Result<(), ClientError> {
        frame::write(&mut self.send, request, payload).map_err(|e| ClientError::Frame(e.into()))
    }

    /// The next event (daemon errors are returned as events, not as `Err`).
    pub fn recv(&mut self) -> Result<(Event, Vec<u8>), ClientError> {
        let f = frame::read(&mut self.recv, &self.limits)?.ok_or(ClientError::Closed)?;
        Ok((f.message()?, f.payload))
    }

    /// Sends a stylize request and follows it to its end; `on_event` sees every event
    /// (accepted, queued, started, progress with optional preview bytes).
    pub fn stylize(
        &mut self,
        request: Stylize,
        payload: &[u8],
        mut on_event: impl FnMut(&Event, &[u8]),
    ) -> Result<JobResult, ClientError> {
        self.send(&Request::Stylize(request), payload)?;
        loop {
            let (event, bytes) = self.recv()?;
            on_event(&event, &bytes);
            match event {
                Event::Result { job, image, summary } => return Ok(JobResult { job, image, payload: bytes, summary }),
                Event::Error { code, message, .. } => return Err(ClientError::Daemon { code, message }),
                Event::Cancelled { job, .. } => {
                    return Err(ClientError::Daemon {
                        code: ErrorCode::NotFound,
                        message: format!("job {job} was cancelled"),
                    })
                }
                _ => {}
            }
        }
    }

    pub fn status(&mut self) -> Result<Status, ClientError> {
        self.send(&Request::Status, &[])?;
        match self.recv()?.0 {
            Event::Status(s) => Ok(*s),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels a job; returns once the daemon confirmed (`cancelled`) or refused (error).
    pub fn cancel(&mut self, job: u64) -> Result<(), ClientError> {
        self.send(&Request::Cancel { job }, &[])?;
        match self.recv()?.0 {
            Event::Cancelled { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.send(&Request::Shutdown, &[])?;
        match self.recv()?.0 {
            Event::ShuttingDown => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(e: Event) -> ClientError {
    match e {
        Event::Error { code, message, .. } => ClientError::Daemon { code, message },
        other => ClientError::Unexpected(serde_json::to_string(&other).unwrap_or_default()),
    }
}
