//! Helpers for the end-to-end tests: the real `neural-style` binary, the venv's Python, the
//! shared test images, throwaway weights.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The binary under test: $NEURAL_STYLE_BIN, else target/release/neural-style.
pub fn bin() -> PathBuf {
    let p = std::env::var_os("NEURAL_STYLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/neural-style"));
    assert!(p.exists(), "{} missing: run `cargo build --release` (or `make test`)", p.display());
    p
}

/// The venv's Python ($NEURAL_STYLE_PYTHON, else .venv/bin/python).
pub fn python() -> PathBuf {
    std::env::var_os("NEURAL_STYLE_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

/// A test image from ../shared/images (or $NEURAL_STYLE_TEST_IMAGES).
pub fn image(name: &str) -> PathBuf {
    let dir = std::env::var_os("NEURAL_STYLE_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/images"));
    let p = dir.join(name);
    assert!(p.exists(), "test image {} missing (set NEURAL_STYLE_TEST_IMAGES)", p.display());
    p
}

/// Seeded random weights, written once per test process.
pub fn weights() -> &'static Path {
    static W: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vgg19-random.safetensors");
        let out = ns(&["weights", "random", "--seed", "0", "--out", p.to_str().unwrap()]);
        assert!(out.status.success(), "weights random failed: {}", stderr(&out));
        (dir, p)
    })
    .1
}

/// A `neural-style` command with a clean environment (no inherited weights or socket).
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env_remove("NEURAL_STYLE_WEIGHTS").env("RUST_LOG", "info");
    c
}

pub fn ns(args: &[&str]) -> Output {
    command(args).output().expect("start neural-style")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a one-shot stylization with the test weights; `extra` are more flags.
pub fn stylize(content: &Path, style: &Path, out: &Path, extra: &[&str]) -> Output {
    stylize_command(content, style, out, extra).output().expect("start neural-style")
}

/// The command [`stylize`] runs, to adjust before running it.
pub fn stylize_command(content: &Path, style: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "run",
        "--content",
        content.to_str().unwrap(),
        "--style",
        style.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--weights",
        weights().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    command(&args)
}

/// The JSON summary printed by `run --json`.
pub fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr:\n{}", stderr(o)))
}

/// A real `neural-style serve` process on a private socket, with the test weights.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with its runtime directory in a fresh temp dir and waits until ready.
    pub fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("rt/neural-style/daemon.sock");
        Self::start_at(dir, socket, extra)
    }

    pub fn start_at(dir: tempfile::TempDir, socket: PathBuf, extra: &[&str]) -> Daemon {
        let log = dir.path().join(format!("daemon-{}.log", std::process::id()));
        let child = Self::spawn(dir.path(), &socket, &log, extra);
        let d = Daemon { child, dir, socket, log };
        d.wait_ready();
        d
    }

    /// Spawns `serve` (runtime dir under `root`) without waiting.
    pub fn spawn(root: &Path, socket: &Path, log: &Path, extra: &[&str]) -> std::process::Child {
        let mut args = vec!["serve", "--threads", "2", "--weights", weights().to_str().unwrap()];
        args.extend_from_slice(extra);
        let rt = root.join("rt");
        std::fs::create_dir_all(&rt).unwrap();
        command(&args)
            .env("XDG_RUNTIME_DIR", &rt)
            .env("NEURAL_STYLE_SOCKET", socket)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    pub fn wait_ready(&self) {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(mut c) = self.try_client() {
                if c.status().map(|s| s.ready).unwrap_or(false) {
                    return;
                }
            }
            assert!(t0.elapsed().as_secs() < 60, "daemon not ready after 60 s:\n{}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn try_client(&self) -> Result<neural_style_protocol::Client, neural_style_protocol::ClientError> {
        neural_style_protocol::Client::connect(&self.socket, "e2e-test")
    }

    pub fn client(&self) -> neural_style_protocol::Client {
        self.try_client().unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log_text()))
    }

    pub fn status(&self) -> neural_style_protocol::message::Status {
        self.client().status().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A CLI command talking to this daemon.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = command(args);
        c.env("NEURAL_STYLE_SOCKET", &self.socket);
        c
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (up to `secs`), returning its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed().as_secs() < secs, "daemon did not exit:\n{}", self.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stylize request for encoded image files, with parameters.
pub fn stylize_files(
    content: &Path,
    style: &Path,
    params: serde_json::Value,
) -> (neural_style_protocol::message::Stylize, Vec<u8>) {
    let c = std::fs::read(content).unwrap();
    let s = std::fs::read(style).unwrap();
    let (req, payload) = neural_style_protocol::message::Stylize::encoded(
        &c,
        &[(&s, 1.0)],
        params.as_object().cloned().unwrap_or_default(),
    );
    (req, payload)
}
