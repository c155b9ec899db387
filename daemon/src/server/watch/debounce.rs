//! When a file in a watch folder is complete: on Linux at close-after-write or when it is moved
//! in (inotify through `notify`), elsewhere and in poll mode when its size and mtime stayed the
//! same for the debounce time. A file found at start-up that may still be being written waits
//! for its close event, or for the debounce time without change.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::EventKind;

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

/// A file found in the folder: name, size, mtime.
pub struct Seen {
    pub name: String,
    pub size: u64,
    pub mtime: Option<SystemTime>,
}

/// The files of one folder that are waiting to be taken.
pub struct Candidates {
    files: HashMap<String, Candidate>,
    poll: bool,
    debounce: Duration,
    first_scan: bool,
}

impl Candidates {
    pub fn new(poll: bool, debounce: Duration) -> Self {
        Self { files: HashMap::new(), poll, debounce, first_scan: true }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// A file-system event: marks files complete (close-after-write, moved in) or incomplete
    /// (written to).
    pub fn on_event(&mut self, ev: &notify::Event) {
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
            if let Some(c) = self.files.get_mut(&name) {
                if complete {
                    c.complete = true;
                } else if writing && !self.poll {
                    c.complete = false;
                    c.by_quiet = false;
                }
            } else if complete {
                self.files.insert(
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

    /// A scan of the folder: discovers files, tracks their size and mtime, forgets files gone.
    pub fn scan(&mut self, seen: impl IntoIterator<Item = Seen>) {
        let mut present = HashSet::new();
        for Seen { name, size, mtime } in seen {
            present.insert(name.clone());
            let now = Instant::now();
            // at start-up, a file last modified within the debounce time may still be being
            // written: it waits for its close event, or for the debounce time without change
            let settled =
                mtime.and_then(|m| SystemTime::now().duration_since(m).ok()).is_some_and(|age| age >= self.debounce);
            let c = self.files.entry(name).or_insert(Candidate {
                size,
                mtime,
                changed_at: now,
                complete: self.poll || (self.first_scan && settled),
                by_quiet: self.first_scan && !settled,
                retry_at: None,
            });
            if c.size != size || c.mtime != mtime {
                c.size = size;
                c.mtime = mtime;
                c.changed_at = now;
            }
        }
        self.first_scan = false;
        self.files.retain(|n, _| present.contains(n));
    }

    /// The next file ready to be taken, oldest name first.
    pub fn next_ready(&self) -> Option<String> {
        let now = Instant::now();
        let settle = if self.poll { self.debounce } else { Duration::from_millis(200) };
        self.files
            .iter()
            .filter(|(_, c)| {
                let quiet = now.duration_since(c.changed_at);
                ((c.complete && quiet >= settle) || (c.by_quiet && quiet >= self.debounce))
                    && c.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(n, _)| n)
            .min()
            .cloned()
    }

    /// `name` could not be processed now: try again after `after`.
    pub fn retry_later(&mut self, name: &str, after: Duration) {
        if let Some(c) = self.files.get_mut(name) {
            c.retry_at = Some(Instant::now() + after);
        }
    }

    /// `name` is settled (done or failed).
    pub fn remove(&mut self, name: &str) {
        self.files.remove(name);
    }
}
