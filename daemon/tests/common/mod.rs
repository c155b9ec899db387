//! Helpers shared by the library-level tests: the venv's Python, the shared test images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use neural_style::image_io::{DecodeLimits, Picture};
use tch::Tensor;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The test images (../shared/images next to the repository, or $NEURAL_STYLE_TEST_IMAGES).
pub fn image(name: &str) -> PathBuf {
    let dir = std::env::var_os("NEURAL_STYLE_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/images"));
    let p = dir.join(name);
    assert!(p.exists(), "test image {} missing (set NEURAL_STYLE_TEST_IMAGES)", p.display());
    p
}

pub fn picture(name: &str, size: u32) -> Picture {
    Picture::load(&image(name), DecodeLimits::default()).unwrap().resized_longest(size)
}

/// Runs tests/python/reference.py with the venv's Python; panics with its stderr on failure.
pub fn reference(args: &[&str]) {
    let py = neural_style::python::interpreter();
    let script = repo_root().join("tests/python/reference.py");
    let out = Command::new(&py).arg(&script).args(args).output().expect("start python");
    assert!(
        out.status.success(),
        "{} reference.py {:?} failed:\n{}",
        py.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[0])
}
