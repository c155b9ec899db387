//! Watch folders: every image that lands in a rule's input folder is stylised with the rule's
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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use neural_style_protocol::message::{ErrorCode, Event, JobInfo, PixelFormat, Priority};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::engine::{Job, Params};
use crate::image_io::{Output, OutputFormat, Picture};
use crate::queue::QueuedJob;
use crate::server::Shared;

/// One watched folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// The folder to watch.
    pub input: PathBuf,
    /// The style image; a `style.*` image inside the input folder takes precedence.
    #[serde(default)]
    pub style: Option<PathBuf>,
    /// Where outputs go (default `<input>/out`).
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Engine parameters (as in the protocol's `params`); `neural-style.toml` in the input
    /// folder overrides them.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Leave sources in place (recorded in `.neural-style/done.list`) instead of moving them to
    /// `done/`.
    #[serde(default)]
    pub keep_source: bool,
    /// Output format: `png` or `jpg`.
    #[serde(default = "png")]
    pub format: String,
    /// Poll (size + mtime stable) instead of file-system events; for network shares.
    #[serde(default)]
    pub poll: bool,
    /// How long a file must stay unchanged before it is taken (poll mode, and files found
    /// without events), in milliseconds.
    #[serde(default = "debounce")]
    pub debounce_ms: u64,
}

fn png() -> String {
    "png".into()
}

fn debounce() -> u64 {
    1500
}

const STATE: &str = ".neural-style";
const SETTINGS: &str = "neural-style.toml";

fn ignored(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.ends_with('~')
        || [".part", ".crdownload", ".tmp", ".partial", ".download", ".error.txt"].iter().any(|s| lower.ends_with(s))
        || lower.starts_with("style.")
        || lower == SETTINGS
}

/// `dir/name`, or `dir/stem-N.ext` when that is taken.
fn unique(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        return p;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (name.to_string(), String::new()),
    };
    (1..).map(|i| dir.join(format!("{stem}-{i}{ext}"))).find(|p| !p.exists()).expect("a free name")
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

struct Candidate {
    size: u64,
    mtime: Option<SystemTime>,
    changed_at: Instant,
    /// A close-after-write or move-in event was seen since the last change (or it was there,
    /// unchanged for the debounce time, at start-up).
    complete: bool,
    /// Taken once its size and mtime stay the same for the debounce time: a file found at
    /// start-up that may still have been being written (its close may have come before the
    /// watch began). A write event clears it: from then on its close event decides.
    by_quiet: bool,
    retry_at: Option<Instant>,
}

#[derive(Default, Serialize)]
struct Counts {
    pending: usize,
    done: u64,
    failed: u64,
    current: Option<String>,
    last_error: Option<String>,
}

/// One rule's folders and state.
struct Folder {
    rule: WatchRule,
    input: PathBuf,
    output: PathBuf,
    processing: PathBuf,
    /// Per claimed file, the output name chosen for it (what crash recovery checks).
    outputs: PathBuf,
    done: PathBuf,
    failed: PathBuf,
    format: OutputFormat,
    counts: Counts,
    style_warned: bool,
}

enum Outcome {
    Done(PathBuf),
    /// The file's own fault: to `failed/` with the reason.
    Failed(String),
    /// Not the file's fault (output not writable, no style, shutting down): put it back, retry.
    Retry(String),
}

impl Folder {
    fn new(rule: WatchRule) -> anyhow::Result<Self> {
        let input = rule.input.clone();
        anyhow::ensure!(input.is_dir(), "watch folder {} does not exist; create it first", input.display());
        let output = rule.output.clone().unwrap_or_else(|| input.join("out"));
        let format = OutputFormat::from_path(Path::new(&format!("x.{}", rule.format)))
            .map_err(|_| anyhow::anyhow!("watch format {:?}: use png or jpg", rule.format))?;
        let state = input.join(STATE);
        let f = Folder {
            processing: state.join("processing"),
            outputs: state.join("outputs"),
            done: input.join("done"),
            failed: input.join("failed"),
            input,
            output,
            format,
            rule,
            counts: Counts::default(),
            style_warned: false,
        };
        for d in [&f.processing, &f.outputs, &f.done, &f.failed, &f.output] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(f)
    }

    fn is_own_dir(&self, p: &Path) -> bool {
        [&self.output, &self.done, &self.failed].iter().any(|d| d.as_path() == p)
    }

    /// The folder's `style.*` image, else the rule's.
    fn style(&self) -> Option<PathBuf> {
        let mut own: Vec<PathBuf> = std::fs::read_dir(&self.input)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .map(|n| n.to_string_lossy().to_ascii_lowercase().starts_with("style."))
                        .unwrap_or(false)
            })
            .collect();
        own.sort();
        own.into_iter().next().or_else(|| self.rule.style.clone())
    }

    fn params(&self) -> Result<Params, String> {
        let mut map = self.rule.params.clone();
        let settings = self.input.join(SETTINGS);
        if settings.exists() {
            let text = std::fs::read_to_string(&settings).map_err(|e| format!("{}: {e}", settings.display()))?;
            let table: Map<String, Value> =
                toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", settings.display()))?;
            map.extend(table);
        }
        serde_json::from_value(Value::Object(map)).map_err(|e| format!("invalid watch parameters: {e}"))
    }

    /// A free output name for `name`: `stem.style.ext`, or `stem.style-1.ext`… when taken.
    fn output_for(&self, name: &str, style: &Path) -> PathBuf {
        let stem = Path::new(name).file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let style_stem = style.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let ext = if self.format == OutputFormat::Png { "png" } else { "jpg" };
        unique(&self.output, &format!("{stem}.{style_stem}.{ext}"))
    }

    /// Where the output chosen for claimed file `name` is recorded.
    fn output_record(&self, name: &str) -> PathBuf {
        self.outputs.join(name)
    }

    /// The output recorded for claimed file `name`, if it was written.
    fn recorded_output(&self, name: &str) -> Option<PathBuf> {
        let p = PathBuf::from(std::fs::read_to_string(self.output_record(name)).ok()?);
        p.exists().then_some(p)
    }

    fn done_list(&self) -> PathBuf {
        self.input.join(STATE).join("done.list")
    }

    fn kept_done(&self) -> HashSet<String> {
        std::fs::read_to_string(self.done_list()).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Settles what a crash left behind (see the module docs).
    fn recover(&mut self) -> anyhow::Result<()> {
        for e in std::fs::read_dir(&self.output)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for e in std::fs::read_dir(&self.processing)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let report = self.failed.join(format!("{name}.error.txt"));
            if report.exists() {
                std::fs::rename(e.path(), unique(&self.failed, &name))?;
                tracing::info!(file = %name, "watch: recovered a failed file after a crash");
            } else if self.recorded_output(&name).is_some() {
                self.settle_done(&e.path(), &name)?;
                tracing::info!(file = %name, "watch: recovered a finished file after a crash");
            } else {
                std::fs::rename(e.path(), self.input.join(&name))?;
                tracing::info!(file = %name, "watch: a file interrupted by a crash will be processed again");
            }
        }
        // records of files no longer claimed are spent
        for e in std::fs::read_dir(&self.outputs)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(())
    }

    fn settle_done(&mut self, claimed: &Path, name: &str) -> std::io::Result<()> {
        if self.rule.keep_source {
            let back = self.input.join(name);
            std::fs::rename(claimed, &back)?;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.done_list())?;
            writeln!(f, "{name}")?;
        } else {
            std::fs::rename(claimed, unique(&self.done, name))?;
        }
        self.counts.done += 1;
        Ok(())
    }

    fn settle_failed(&mut self, claimed: &Path, name: &str, reason: &str) -> std::io::Result<()> {
        let target = unique(&self.failed, name);
        let report =
            target.with_file_name(format!("{}.error.txt", target.file_name().unwrap_or_default().to_string_lossy()));
        write_atomic(&report, &format!("{name}: {reason}\n"))?;
        std::fs::rename(claimed, &target)?;
        self.counts.failed += 1;
        Ok(())
    }

    /// Stylises one claimed file through the daemon's queue (batch priority).
    fn stylise(&self, shared: &Shared, claimed: &Path, name: &str) -> Outcome {
        let Some(style_path) = self.style() else {
            return Outcome::Retry(format!(
                "no style: put a style.jpg/png into {} or set the rule's style",
                self.input.display()
            ));
        };
        let params = match self.params() {
            Ok(p) => p,
            Err(e) => return Outcome::Retry(e),
        };
        let limits = shared.decode_limits();
        let content = match Picture::load(claimed, limits) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e.to_string().replace(&claimed.display().to_string(), name)),
        };
        let style = match Picture::load(&style_path, limits) {
            Ok(p) => p,
            Err(e) => return Outcome::Retry(format!("the style image cannot be used: {e}")),
        };
        let (tx, rx) = mpsc::channel();
        let info = JobInfo {
            job: 0,
            priority: Priority::Batch,
            label: Some(format!("watch: {}", self.input.join(name).display())),
            width: 0,
            height: 0,
            iterations: params.iterations,
            progress: 0,
        };
        let job = Job { content, styles: vec![style], params };
        let queued = QueuedJob::new(job, info, tx, 0, PixelFormat::Rgba32f, 0, 128);
        if let Err((code, message)) = shared.enqueue(queued) {
            return match code {
                ErrorCode::ShuttingDown => Outcome::Retry(message),
                _ => Outcome::Failed(message),
            };
        }
        for (event, payload) in rx {
            match event {
                Event::Result { image, summary, .. } => {
                    let (w, h) = (image.width.unwrap_or(0), image.height.unwrap_or(0));
                    let pic = match image.slice(&payload).and_then(|b| Picture::from_raw(image.format, w, h, b)) {
                        Ok(p) => p,
                        Err(e) => return Outcome::Retry(format!("internal: bad result pixels: {e}")),
                    };
                    let alpha = summary["has_alpha"].as_bool().unwrap_or(false).then(|| pic.alpha());
                    let sixteen =
                        summary["high_precision"].as_bool().unwrap_or(false) && self.format == OutputFormat::Png;
                    let out = Output { rgb: &pic.rgb_tensor(), alpha: alpha.as_deref(), sixteen_bit: sixteen };
                    // the name is chosen now and recorded before the output gets it (recovery)
                    let output = self.output_for(name, &style_path);
                    if let Err(e) = write_atomic(&self.output_record(name), &output.to_string_lossy()) {
                        return Outcome::Retry(format!(
                            "cannot record the output name: {e}; the input is kept and retried"
                        ));
                    }
                    return match out.save(&output) {
                        Ok(()) => Outcome::Done(output),
                        Err(e) => Outcome::Retry(format!("{e}; the input is kept and retried")),
                    };
                }
                Event::Error { code, message, .. } => {
                    return match code {
                        ErrorCode::OutOfMemory | ErrorCode::Internal | ErrorCode::ShuttingDown => {
                            Outcome::Retry(message)
                        }
                        _ => Outcome::Failed(message),
                    }
                }
                Event::Cancelled { .. } => return Outcome::Retry("cancelled (the daemon is stopping)".into()),
                _ => {}
            }
        }
        Outcome::Retry("the engine went away".into())
    }

    fn process(&mut self, shared: &Shared, name: &str) -> Option<Duration> {
        let source = self.input.join(name);
        let claimed = self.processing.join(name);
        if std::fs::rename(&source, &claimed).is_err() {
            return None; // gone meanwhile
        }
        self.counts.current = Some(name.to_string());
        let t0 = Instant::now();
        let outcome = self.stylise(shared, &claimed, name);
        self.counts.current = None;
        let record = self.output_record(name);
        let result = match outcome {
            Outcome::Done(output) => {
                tracing::info!(file = %source.display(), output = %output.display(), seconds = format!("{:.2}", t0.elapsed().as_secs_f64()), "watch: done");
                self.counts.last_error = None;
                self.settle_done(&claimed, name).map(|_| None)
            }
            Outcome::Failed(reason) => {
                tracing::warn!(file = %source.display(), reason, "watch: failed (moved to failed/)");
                self.settle_failed(&claimed, name, &reason).map(|_| None)
            }
            Outcome::Retry(reason) => {
                let quiet = reason.starts_with("no style") && self.style_warned;
                if !quiet {
                    tracing::error!(file = %source.display(), reason, "watch: cannot process now; the input stays and is retried");
                }
                self.style_warned |= reason.starts_with("no style");
                self.counts.last_error = Some(format!("{name}: {reason}"));
                std::fs::rename(&claimed, &source).map(|_| Some(Duration::from_secs(3)))
            }
        };
        // settled (or put back): the record has served its purpose (kept if settling failed:
        // the file is still claimed, and recovery needs to know its output)
        if result.is_ok() {
            let _ = std::fs::remove_file(record);
        }
        result.unwrap_or_else(|e| {
            tracing::error!(file = %source.display(), error = %e, "watch: could not move the file");
            Some(Duration::from_secs(5))
        })
    }

    fn status(&self) -> Value {
        json!({
            "input": self.input, "output": self.output, "style": self.style(),
            "mode": if self.rule.poll { "poll" } else { "events" },
            "pending": self.counts.pending, "done": self.counts.done, "failed": self.counts.failed,
            "current": self.counts.current, "last_error": self.counts.last_error,
        })
    }
}

fn publish(shared: &Shared, index: usize, status: Value) {
    let mut extra = shared.extra_status.lock().unwrap_or_else(|e| e.into_inner());
    let rules = extra.entry("watch").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = rules {
        while a.len() <= index {
            a.push(Value::Null);
        }
        a[index] = status;
    }
}

/// Starts one thread per rule. Errors in a rule's set-up are returned before anything starts.
pub fn start(shared: Arc<Shared>, rules: Vec<WatchRule>) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut folders = Vec::new();
    for rule in rules {
        let mut f = Folder::new(rule)?;
        f.recover()?;
        folders.push(f);
    }
    let mut handles = Vec::new();
    for (i, f) in folders.into_iter().enumerate() {
        let s = shared.clone();
        handles.push(std::thread::Builder::new().name(format!("watch-{i}")).spawn(move || {
            if let Err(e) = watch(&s, f, i) {
                tracing::error!("watch rule {i} stopped: {e:#}");
            }
        })?);
    }
    Ok(handles)
}

fn watch(shared: &Shared, mut folder: Folder, index: usize) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher: Box<dyn Watcher + Send> = if folder.rule.poll {
        let cfg = notify::Config::default().with_poll_interval(Duration::from_millis(250));
        Box::new(notify::PollWatcher::new(tx, cfg)?)
    } else {
        Box::new(notify::recommended_watcher(tx)?)
    };
    watcher.watch(&folder.input, RecursiveMode::NonRecursive)?;
    tracing::info!(input = %folder.input.display(), output = %folder.output.display(), mode = if folder.rule.poll { "poll" } else { "events" }, "watching");
    let debounce = Duration::from_millis(folder.rule.debounce_ms);
    let mut cands: HashMap<String, Candidate> = HashMap::new();
    let mut first_scan = true;
    while !shared.shutdown.load(Ordering::SeqCst) {
        // events: mark files complete (close-after-write, moved in) or incomplete (written to)
        while let Ok(ev) = rx.recv_timeout(Duration::from_millis(100)) {
            let Ok(ev) = ev else { continue };
            let complete = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            );
            let writing = matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)));
            let target = if matches!(ev.kind, EventKind::Modify(ModifyKind::Name(RenameMode::Both))) {
                ev.paths.last().cloned().into_iter().collect::<Vec<_>>()
            } else {
                ev.paths.clone()
            };
            for p in target {
                let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
                if let Some(c) = cands.get_mut(&name) {
                    if complete {
                        c.complete = true;
                    } else if writing && !folder.rule.poll {
                        c.complete = false;
                        c.by_quiet = false;
                    }
                } else if complete {
                    cands.insert(
                        name,
                        Candidate {
                            size: 0,
                            mtime: None,
                            changed_at: Instant::now(),
                            complete: true,
                            by_quiet: false,
                            retry_at: None,
                        },
                    );
                }
            }
        }
        // scan: discover files, track size/mtime
        let kept = if folder.rule.keep_source { folder.kept_done() } else { HashSet::new() };
        let mut present = HashSet::new();
        for e in std::fs::read_dir(&folder.input)?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() || ignored(&name) || folder.is_own_dir(&path) || kept.contains(&name) {
                continue;
            }
            present.insert(name.clone());
            let (size, mtime) = (meta.len(), meta.modified().ok());
            let now = Instant::now();
            // at start-up, a file last modified within the debounce time may still be being
            // written: it waits for its close event, or for the debounce time without change
            let settled =
                mtime.and_then(|m| SystemTime::now().duration_since(m).ok()).is_some_and(|age| age >= debounce);
            let c = cands.entry(name).or_insert(Candidate {
                size,
                mtime,
                changed_at: now,
                complete: folder.rule.poll || (first_scan && settled),
                by_quiet: first_scan && !settled,
                retry_at: None,
            });
            if c.size != size || c.mtime != mtime {
                c.size = size;
                c.mtime = mtime;
                c.changed_at = now;
            }
        }
        first_scan = false;
        cands.retain(|n, _| present.contains(n));
        folder.counts.pending = cands.len();
        publish(shared, index, folder.status());
        // the next ready file, oldest name first
        let now = Instant::now();
        let settle = if folder.rule.poll { debounce } else { Duration::from_millis(200) };
        let mut ready: Vec<&String> = cands
            .iter()
            .filter(|(_, c)| {
                let quiet = now.duration_since(c.changed_at);
                ((c.complete && quiet >= settle) || (c.by_quiet && quiet >= debounce))
                    && c.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(n, _)| n)
            .collect();
        ready.sort();
        if let Some(name) = ready.first().map(|n| n.to_string()) {
            let retry = folder.process(shared, &name);
            match retry {
                Some(after) => {
                    if let Some(c) = cands.get_mut(&name) {
                        c.retry_at = Some(Instant::now() + after);
                    }
                }
                None => {
                    cands.remove(&name);
                }
            }
            folder.counts.pending = cands.len();
            publish(shared, index, folder.status());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_never_taken() {
        for n in [
            ".hidden.jpg",
            "a.jpg.part",
            "b.crdownload",
            "c.png~",
            "d.tmp",
            "style.jpg",
            "neural-style.toml",
            "x.jpg.error.txt",
        ] {
            assert!(ignored(n), "{n}");
        }
        for n in ["photo.jpg", "IMG_0001.PNG", "notes.txt", "stylefoo.jpg"] {
            assert!(!ignored(n), "{n}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), "").unwrap();
        assert_eq!(unique(dir.path(), "a.jpg"), dir.path().join("a-1.jpg"));
        assert_eq!(unique(dir.path(), "b.jpg"), dir.path().join("b.jpg"));
    }
}
