//! Helpers shared by the library-level tests: the venv's Python, the shared test images (paths
//! from the end-to-end tests' helpers).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use neural_style::engine::image_io::{DecodeLimits, Picture};
pub use neural_style_e2e::{image, repo_root};
use tch::Tensor;

pub fn picture(name: &str, size: u32) -> Picture {
    Picture::load(&image(name), DecodeLimits::default()).unwrap().resized_longest(size)
}

/// Runs tests/python/reference.py with the venv's Python; panics with its stderr on failure.
pub fn reference(args: &[&str]) {
    let py = neural_style::cli::python::interpreter();
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
