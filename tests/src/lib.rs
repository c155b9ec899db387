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

/// Runs a one-shot stylisation with the test weights; `extra` are more flags.
pub fn stylise(content: &Path, style: &Path, out: &Path, extra: &[&str]) -> Output {
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
    ns(&args)
}

/// The JSON summary printed by `run --json`.
pub fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr:\n{}", stderr(o)))
}
