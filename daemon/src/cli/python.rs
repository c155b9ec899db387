//! The Python interpreter of the project's venv (torch, torchvision, safetensors), used to fetch
//! and convert weights and to run PyTorch reference computations.

use std::path::PathBuf;

/// Environment variable naming the interpreter.
pub const PYTHON_ENV: &str = "NEURAL_STYLE_PYTHON";

/// `NEURAL_STYLE_PYTHON` > the interpreter the binary was built with (the venv that provided
/// libtorch) > `python3` on PATH.
pub fn interpreter() -> PathBuf {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("NEURAL_STYLE_BUILD_PYTHON"));
    if built.is_absolute() && built.exists() {
        return built;
    }
    PathBuf::from("python3")
}

/// Writes an embedded script to a private temporary file so it can be run.
pub fn script_file(name: &str, source: &str) -> std::io::Result<tempfile::TempPath> {
    use std::io::Write;
    let mut f = tempfile::Builder::new().prefix(name).suffix(".py").tempfile()?;
    f.write_all(source.as_bytes())?;
    Ok(f.into_temp_path())
}

/// The PyTorch reference of the benches (`evaluation` and `time-to-loss` modes).
pub const BENCH_REFERENCE: &str = include_str!("../../python/bench_reference.py");
