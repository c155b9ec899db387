//! Watch folders: every image that lands in a rule's input folder is stylized with the rule's
//! (or the folder's own `style.*`) style and written to the output folder, never losing or
//! corrupting a file.
//!
//! A file is taken once it is completely written: on Linux at close-after-write or when it is
//! moved in (inotify through `notify`), elsewhere and in `--poll` mode when its size and mtime
//! stayed the same for the debounce time. Hidden and temporary names (`.x`, `*.part`,
//! `*.crdownload`, `*.tmp`, `*~`) and the rule's own folders are ignored.
//!
//! Crash safety comes from atomic renames within the input folder's file system:
//!
//! 1. claim: `IN/a.jpg` → `IN/.neural-style/processing/a.jpg`
//! 2. output: the name is chosen (`OUT/a.style.png`, or `a.style-1.png`… when that exists: an
//!    `a.png` after an `a.jpg`, or the same name dropped again, never overwrites an earlier
//!    output) and recorded in `IN/.neural-style/outputs/a.jpg`; then
//!    `OUT/.a.style.png.<pid>.tmp` → `OUT/a.style.png` (rename)
//! 3. settle: `processing/a.jpg` → `IN/done/a.jpg` (or back to `IN`, recorded in
//!    `.neural-style/done.list`, with `keep_source`); on failure `IN/failed/a.jpg` plus
//!    `IN/failed/a.jpg.error.txt` (written first).
//!
//! At start-up, a file left in `processing/` is settled as done when its recorded output exists, as
//! failed when its error report exists, and otherwise put back to be processed again; stray
//! temporary outputs are removed. So after `kill -9` every input ends with exactly one output or
//! one error report, and no half-written output ever has a final name.

pub mod debounce;
pub mod folder;
pub mod rule;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use self::debounce::{Candidates, Seen};
use self::folder::{ignored, Folder};
use self::rule::WatchRule;
use super::state::State;

fn publish(state: &State, index: usize, status: Value) {
    let mut extra = state.extra_status.lock().unwrap_or_else(|e| e.into_inner());
    let rules = extra.entry("watch").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = rules {
        while a.len() <= index {
            a.push(Value::Null);
        }
        a[index] = status;
    }
}

/// Starts one thread per rule. Errors in a rule's set-up are returned before anything starts.
pub fn start(state: Arc<State>, rules: Vec<WatchRule>) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut folders = Vec::new();
    for rule in rules {
        let mut f = Folder::new(rule)?;
        f.recover()?;
        folders.push(f);
    }
    let mut handles = Vec::new();
    for (i, f) in folders.into_iter().enumerate() {
        let s = state.clone();
        handles.push(std::thread::Builder::new().name(format!("watch-{i}")).spawn(move || {
            if let Err(e) = watch(&s, f, i) {
                tracing::error!("watch rule {i} stopped: {e:#}");
            }
        })?);
    }
    Ok(handles)
}

/// The files in the folder that may be inputs.
fn scan(folder: &Folder) -> anyhow::Result<Vec<Seen>> {
    let kept = if folder.rule.keep_source { folder.kept_done() } else { Default::default() };
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&folder.input)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() || ignored(&name) || folder.is_own_dir(&e.path()) || kept.contains(&name) {
            continue;
        }
        seen.push(Seen { name, size: meta.len(), mtime: meta.modified().ok() });
    }
    Ok(seen)
}

fn watch(state: &State, mut folder: Folder, index: usize) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher: Box<dyn Watcher + Send> = if folder.rule.poll {
        let cfg = notify::Config::default().with_poll_interval(Duration::from_millis(250));
        Box::new(notify::PollWatcher::new(tx, cfg)?)
    } else {
        Box::new(notify::recommended_watcher(tx)?)
    };
    watcher.watch(&folder.input, RecursiveMode::NonRecursive)?;
    tracing::info!(input = %folder.input.display(), output = %folder.output.display(), mode = if folder.rule.poll { "poll" } else { "events" }, "watching");
    let mut candidates = Candidates::new(folder.rule.poll, Duration::from_millis(folder.rule.debounce_ms));
    while !state.shutdown.load(Ordering::SeqCst) {
        while let Ok(ev) = rx.recv_timeout(Duration::from_millis(100)) {
            if let Ok(ev) = ev {
                candidates.on_event(&ev);
            }
        }
        candidates.scan(scan(&folder)?);
        folder.counts.pending = candidates.len();
        publish(state, index, folder.status());
        if let Some(name) = candidates.next_ready() {
            match folder.process(state, &name) {
                Some(after) => candidates.retry_later(&name, after),
                None => candidates.remove(&name),
            }
            folder.counts.pending = candidates.len();
            publish(state, index, folder.status());
        }
    }
    Ok(())
}
