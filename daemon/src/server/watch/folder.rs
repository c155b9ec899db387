//! One watch rule's folders: claiming a file, stylizing it through the daemon's queue, writing
//! its output and settling it (see the module docs of `watch` for the crash-safe sequence).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use neural_style_protocol::message::{ErrorCode, Priority};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::rule::WatchRule;
use crate::engine::image_io::{Output, OutputFormat, Picture};
use crate::engine::{Job, Params, Stylized};
use crate::server::job::{JobEvent, Reply};
use crate::server::state::State;
use crate::server::submit::{enqueue, queued};

const STATE: &str = ".neural-style";
const SETTINGS: &str = "neural-style.toml";

pub fn ignored(name: &str) -> bool {
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

#[derive(Default, Serialize)]
pub struct Counts {
    pub pending: usize,
    done: u64,
    failed: u64,
    current: Option<String>,
    last_error: Option<String>,
}

/// One rule's folders and state.
pub struct Folder {
    pub rule: WatchRule,
    pub input: PathBuf,
    pub output: PathBuf,
    processing: PathBuf,
    /// Per claimed file, the output name chosen for it (what crash recovery checks).
    outputs: PathBuf,
    done: PathBuf,
    failed: PathBuf,
    format: OutputFormat,
    pub counts: Counts,
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
    pub fn new(rule: WatchRule) -> anyhow::Result<Self> {
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

    pub fn is_own_dir(&self, p: &Path) -> bool {
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

    pub fn kept_done(&self) -> HashSet<String> {
        std::fs::read_to_string(self.done_list()).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Settles what a crash left behind (see the module docs).
    pub fn recover(&mut self) -> anyhow::Result<()> {
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

    /// Stylizes one claimed file through the daemon's queue (batch priority).
    fn stylize(&self, state: &State, claimed: &Path, name: &str) -> Outcome {
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
        let limits = state.decode_limits();
        let content = match Picture::load(claimed, limits) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e.to_string().replace(&claimed.display().to_string(), name)),
        };
        let style = match Picture::load(&style_path, limits) {
            Ok(p) => p,
            Err(e) => return Outcome::Retry(format!("the style image cannot be used: {e}")),
        };
        let job = match Job::new(content, vec![style], params) {
            Ok(j) => j,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let (tx, rx) = mpsc::channel();
        let label = Some(format!("watch: {}", self.input.join(name).display()));
        if let Err((code, message)) = enqueue(state, queued(job, Priority::Batch, label, Reply::Local(tx), 0)) {
            return match code {
                ErrorCode::ShuttingDown => Outcome::Retry(message),
                _ => Outcome::Failed(message),
            };
        }
        for event in rx {
            match event {
                JobEvent::Done(out) => return self.write_output(name, &style_path, &out),
                JobEvent::Failed { code, message } => {
                    return match code {
                        ErrorCode::OutOfMemory | ErrorCode::Internal | ErrorCode::ShuttingDown => {
                            Outcome::Retry(message)
                        }
                        _ => Outcome::Failed(message),
                    }
                }
                JobEvent::Cancelled(_) => return Outcome::Retry("cancelled (the daemon is stopping)".into()),
                _ => {}
            }
        }
        Outcome::Retry("the engine went away".into())
    }

    /// Writes a finished job's image: the name is chosen now and recorded before the output
    /// gets it (crash recovery reads the record).
    fn write_output(&self, name: &str, style: &Path, out: &Stylized) -> Outcome {
        let sixteen_bit = out.high_precision && self.format == OutputFormat::Png;
        let image = Output { rgb: &out.rgb, alpha: out.alpha.as_deref(), sixteen_bit };
        let output = self.output_for(name, style);
        if let Err(e) = write_atomic(&self.output_record(name), &output.to_string_lossy()) {
            return Outcome::Retry(format!("cannot record the output name: {e}; the input is kept and retried"));
        }
        match image.save(&output) {
            Ok(()) => Outcome::Done(output),
            Err(e) => Outcome::Retry(format!("{e}; the input is kept and retried")),
        }
    }

    pub fn process(&mut self, state: &State, name: &str) -> Option<Duration> {
        let source = self.input.join(name);
        let claimed = self.processing.join(name);
        if std::fs::rename(&source, &claimed).is_err() {
            return None; // gone meanwhile
        }
        self.counts.current = Some(name.to_string());
        let t0 = Instant::now();
        let outcome = self.stylize(state, &claimed, name);
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

    pub fn status(&self) -> Value {
        json!({
            "input": self.input, "output": self.output, "style": self.style(),
            "mode": if self.rule.poll { "poll" } else { "events" },
            "pending": self.counts.pending, "done": self.counts.done, "failed": self.counts.failed,
            "current": self.counts.current, "last_error": self.counts.last_error,
        })
    }
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
