//! The daemon (`neural-style serve`): socket → connections → [`queue`] → one engine thread
//! ([`worker`]) → events back to each job's requester.
//!
//! [`run`] binds the socket ([`listener`]: refusing a second daemon, replacing a stale socket),
//! starts the engine thread (model load + warm-up, then jobs one at a time) and the [`watch`]
//! folders, accepts connections (one thread each, [`connection`]) until SIGINT/SIGTERM or a
//! `shutdown` request, then stops cleanly: no new jobs, running job cancelled or finished per
//! `on_signal`, socket and pid file removed. Requests and watch folders both enter through
//! [`submit`]; the shared [`state`] holds the queue, the counters and the configuration.

pub mod config;
pub mod connection;
pub mod job;
pub mod listener;
pub mod queue;
pub mod state;
pub mod submit;
pub mod watch;
pub mod worker;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use interprocess::local_socket::traits::ListenerExt;

use self::config::Config;
use self::state::State;
use crate::engine::weights::Weights;

/// Runs the daemon until it is told to stop.
pub fn run(config: Config, weights: Weights) -> anyhow::Result<()> {
    let socket = neural_style_protocol::socket::socket_path(config.socket.as_deref());
    let bound = listener::bind(&socket)?;
    let state = Arc::new(State::new(config, socket.clone()));
    {
        let s = state.clone();
        ctrlc::set_handler(move || s.trigger_shutdown())?;
    }
    let worker = {
        let s = state.clone();
        std::thread::Builder::new().name("engine".into()).spawn(move || worker::run(s, weights))?
    };
    let watchers = match watch::start(state.clone(), state.config.watch.clone()) {
        Ok(w) => w,
        Err(e) => {
            state.trigger_shutdown();
            let _ = worker.join();
            return Err(e);
        }
    };
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "listening");
    for conn in bound.listener.incoming() {
        if state.shutdown.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let s = state.clone();
                let id = state.next_connection.fetch_add(1, Ordering::SeqCst);
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
    state.trigger_shutdown();
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
