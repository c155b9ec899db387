//! Give the binary (and every test binary of this crate) an rpath to the libtorch it was built
//! against, so it runs without LD_LIBRARY_PATH, and keep libtorch linked even though nothing
//! references it directly (otherwise `tch::Cuda::is_available()` is false on CUDA machines).
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=NEURAL_STYLE_PYTHON");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let Ok(dir) = env::var("DEP_TCH_LIBTORCH_LIB") {
        if os == "linux" || os == "macos" {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
        if os == "linux" {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{dir}");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
    // The python interpreter that provided libtorch (LIBTORCH_USE_PYTORCH=1): used at run time
    // to fetch/convert weights when NEURAL_STYLE_PYTHON is not set.
    let python = env::var("NEURAL_STYLE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    println!("cargo:rustc-env=NEURAL_STYLE_BUILD_PYTHON={python}");
}
