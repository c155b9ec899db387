//! Daemon configuration: `<config dir>/config.toml` (e.g. `~/.config/neural-style/config.toml`),
//! overridden by command-line flags. `neural-style config` prints the effective values.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::watch::rule::WatchRule;
use crate::engine::image_io::DecodeLimits;
use crate::engine::vgg::Precision;

/// What happens to the running job on SIGINT/SIGTERM or a shutdown request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSignal {
    /// Stop the running job at once (its client gets `cancelled`).
    Cancel,
    /// Let the running job finish; queued jobs are cancelled.
    Finish,
}

/// Every daemon setting.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket path (default: the shared rule, see `neural-style config`).
    pub socket: Option<PathBuf>,
    /// VGG19 weights file (default: $NEURAL_STYLE_WEIGHTS, then the data directory).
    pub weights: Option<PathBuf>,
    pub device: String,
    pub precision: Precision,
    pub threads: Option<i32>,
    /// cuDNN benchmark mode (CUDA): time every convolution algorithm per new image size, or
    /// take cuDNN's heuristics.
    pub cudnn_benchmark: bool,
    /// Evaluate small scales through CUDA graphs (CUDA).
    pub cuda_graphs: bool,
    /// The L-BFGS history's products by CUDA kernels of our own, or by cuBLAS (CUDA).
    pub cuda_kernels: bool,
    /// Largest working image (output) in pixels.
    pub max_pixels: u64,
    /// Largest input image (decode limit) in pixels.
    pub max_input_pixels: u64,
    pub max_iterations: usize,
    pub max_clients: usize,
    /// Largest number of waiting jobs.
    pub max_queue: usize,
    /// Memory cap of the style-target cache, MiB.
    pub cache_mb: u64,
    /// Memory one job may use, GiB (default: 80% of the available RAM, 90% of a CUDA device's).
    /// Larger jobs are tiled, or refused when even tiles do not fit.
    pub max_memory_gb: Option<f64>,
    pub on_signal: OnSignal,
    /// Run one small job at start-up so the first request is warm (on a GPU at the default
    /// output size).
    pub warmup: bool,
    /// Watch folders (`[[watch]]` tables).
    pub watch: Vec<WatchRule>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: None,
            weights: None,
            device: "auto".into(),
            precision: Precision::Auto,
            threads: None,
            cudnn_benchmark: crate::engine::device::CUDNN_BENCHMARK,
            cuda_graphs: crate::engine::device::CUDA_GRAPHS,
            cuda_kernels: crate::engine::products::ENABLED,
            max_pixels: 4096 * 4096,
            max_input_pixels: DecodeLimits::default().max_pixels,
            max_iterations: 10_000,
            max_clients: 32,
            max_queue: 256,
            cache_mb: 256,
            max_memory_gb: None,
            on_signal: OnSignal::Cancel,
            warmup: true,
            watch: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {reason}. `neural-style config` shows the accepted keys")]
    Parse { path: PathBuf, reason: String },
}

/// `<config dir>/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "neural-style").map(|d| d.config_dir().join("config.toml"))
}

impl Config {
    /// Reads `path` (or the default file); a missing default file means all defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_owned(), true),
            None => match default_path() {
                Some(p) => (p, false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path, reason: e.to_string() })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "max_clients = 3\non_signal = \"finish\"\nprecision = \"fp32\"\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!((c.max_clients, c.on_signal, c.precision), (3, OnSignal::Finish, Precision::Fp32));
        assert_eq!(c.max_queue, Config::default().max_queue);
        std::fs::write(&p, "max_clientz = 3\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("max_clientz") && e.contains("c.toml"), "{e}");
        // round trip of the printed config
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.max_clients, 3);
        assert!(Config::load(Some(&dir.path().join("none.toml"))).is_err());
    }
}
