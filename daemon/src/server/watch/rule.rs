//! A watch rule: the folder to watch and what to do with what lands in it (config `[[watch]]`
//! tables, `serve --watch`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long a file must stay unchanged before it is taken, by default (milliseconds).
pub const DEFAULT_DEBOUNCE_MS: u64 = 1500;

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
    DEFAULT_DEBOUNCE_MS
}
