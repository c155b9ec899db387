//! Give the binary (and every test binary of this crate) an rpath to the libtorch it was built
//! against, so it runs without LD_LIBRARY_PATH, and keep libtorch linked even though nothing
//! references it directly (otherwise `tch::Cuda::is_available()` is false on CUDA machines).
//! Small C++ shims over what tch does not bind: backpropagation from several tensors with their
//! own gradients (cpp/backward.cpp, `cfg(autograd_backward)`), the operator counter
//! (cpp/op_counter.cpp, `cfg(op_counter)`), a copy that does not wait for the device
//! (cpp/copy.cpp, `cfg(copy_shim)`), and, where libtorch has CUDA and the CUDA runtime headers are at hand,
//! libtorch's CUDA graphs (cpp/cuda_graph.cpp, `cfg(cuda_graph)`) and the L-BFGS history's
//! products as CUDA kernels compiled at run time (cpp/cuda_driver.cpp, `cfg(cuda_driver)`).
use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=NEURAL_STYLE_PYTHON");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-changed=cpp/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=cpp/backward.cpp");
    println!("cargo:rerun-if-changed=cpp/op_counter.cpp");
    println!("cargo:rerun-if-changed=cpp/copy.cpp");
    println!("cargo:rerun-if-changed=cpp/guard.h");
    println!("cargo:rerun-if-changed=cpp/cuda_driver.cpp");
    println!("cargo::rustc-check-cfg=cfg(cuda_graph)");
    println!("cargo::rustc-check-cfg=cfg(op_counter)");
    println!("cargo::rustc-check-cfg=cfg(autograd_backward)");
    println!("cargo::rustc-check-cfg=cfg(copy_shim)");
    println!("cargo::rustc-check-cfg=cfg(cuda_driver)");
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
            let lib = Path::new(&dir);
            if let Some(include) = torch_include(lib) {
                shim(lib, &include, "backward", None);
                println!("cargo:rustc-cfg=autograd_backward");
                shim(lib, &include, "op_counter", None);
                println!("cargo:rustc-cfg=op_counter");
                shim(lib, &include, "copy", None);
                println!("cargo:rustc-cfg=copy_shim");
                cuda_graph_shim(lib, &include);
            }
        }
    }
    // The python interpreter that provided libtorch (LIBTORCH_USE_PYTORCH=1): used at run time
    // to fetch/convert weights when NEURAL_STYLE_PYTHON is not set.
    let python = env::var("NEURAL_STYLE_PYTHON").unwrap_or_else(|_| "python3".to_string());
    println!("cargo:rustc-env=NEURAL_STYLE_BUILD_PYTHON={python}");
}

/// CUDA runtime headers: $CUDA_HOME/include, or those of the pip wheels beside torch
/// (nvidia-cuda-runtime + nvidia-cuda-crt, which the Makefile's venv installs).
fn cuda_include(torch: &Path) -> Option<PathBuf> {
    let complete = |d: &Path| d.join("cuda_runtime_api.h").is_file() && d.join("crt/host_config.h").is_file();
    let mut candidates: Vec<PathBuf> =
        env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include")).into_iter().collect();
    if let Some(site) = torch.parent() {
        candidates.extend(["cu13", "cuda_runtime"].iter().map(|v| site.join("nvidia").join(v).join("include")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates.into_iter().find(|d| complete(d))
}

/// libtorch's headers beside its lib folder (the pip wheel's and the zip's layout).
fn torch_include(lib: &Path) -> Option<PathBuf> {
    let include = lib.parent()?.join("include");
    include.join("ATen/ATen.h").is_file().then_some(include)
}

/// Compiles cpp/NAME.cpp against libtorch (and the CUDA headers in `cuda`) into a static
/// library linked with libtorch's.
fn shim(lib: &Path, include: &Path, name: &str, cuda: Option<&Path>) {
    let abi = env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(format!("cpp/{name}.cpp"))
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .define("GLOG_USE_GLOG_EXPORT", None)
        .warnings(false);
    if let Some(cuda) = cuda {
        build.include(cuda);
    }
    build.compile(&format!("ns_{name}"));
    println!("cargo:rustc-link-search=native={}", lib.display());
    let libs: &[&str] =
        if cuda.is_some() { &["torch_cuda", "c10_cuda", "torch_cpu", "c10"] } else { &["torch_cpu", "c10"] };
    for l in libs {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}

/// Builds cpp/cuda_graph.cpp when libtorch has CUDA and its headers are at hand; says why not.
fn cuda_graph_shim(lib: &Path, include: &Path) {
    let Some(torch) = lib.parent() else { return };
    let missing = if !lib.join("libtorch_cuda.so").is_file() {
        Some("libtorch has no CUDA (no libtorch_cuda.so)".to_string())
    } else if !include.join("ATen/cuda/CUDAGraph.h").is_file() {
        Some(format!("no ATen/cuda/CUDAGraph.h under {}", include.display()))
    } else {
        None
    };
    let cuda = cuda_include(torch);
    let why = missing.or_else(|| {
        cuda.is_none().then(|| "no CUDA runtime headers (install nvidia-cuda-crt or set CUDA_HOME)".into())
    });
    match (why, cuda) {
        (None, Some(cuda)) => {
            shim(lib, include, "cuda_graph", Some(&cuda));
            println!("cargo:rustc-cfg=cuda_graph");
            // the history's products as kernels compiled at run time (NVRTC's header is among
            // the CUDA headers of the same wheels)
            if cuda.join("nvrtc.h").is_file() && cuda.join("cuda.h").is_file() {
                shim(lib, include, "cuda_driver", Some(&cuda));
                println!("cargo:rustc-cfg=cuda_driver");
            }
        }
        (why, _) => println!(
            "cargo:warning=CUDA graphs not built ({}): evaluations run eagerly on CUDA",
            why.unwrap_or_default()
        ),
    }
}
