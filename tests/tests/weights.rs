//! Weights management: resolution order, clear errors for bad files, conversion of the
//! torchvision and the author's (`vgg_conv.pth`, Caffe preprocessing) checkpoints, and the
//! download path's checksum verification against a local HTTP server.

use std::path::Path;
use std::process::{Command, Stdio};

use neural_style_e2e::{command, image, ns, python, stderr, weights};

fn run_with(env_weights: Option<&Path>, data_home: &Path, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let c = image("tubingen.jpg");
    let s = image("starry_night.jpg");
    let mut args = vec!["run", "-c", c.to_str().unwrap(), "-s", s.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(&["--size", "32", "--iterations", "2", "--json"]);
    args.extend_from_slice(extra);
    let mut cmd = command(&args);
    cmd.env("XDG_DATA_HOME", data_home).env("HOME", data_home);
    if let Some(w) = env_weights {
        cmd.env("NEURAL_STYLE_WEIGHTS", w);
    }
    cmd.output().unwrap()
}

#[test]
fn resolution_order_and_missing_weights() {
    let home = tempfile::tempdir().unwrap();
    // nothing anywhere: a clear error with the fetch command
    let o = run_with(None, home.path(), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("no VGG19 weights found") && err.contains("neural-style weights fetch"), "{err}");
    // the environment variable
    let o = run_with(Some(weights()), home.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // --weights wins over the environment
    let o =
        run_with(Some(Path::new("/nonexistent.safetensors")), home.path(), &["--weights", weights().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // the data directory
    let data = home.path().join("neural-style");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(weights(), data.join("vgg19-features.safetensors")).unwrap();
    let o = run_with(None, home.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["weights"]["path"].as_str().unwrap().ends_with("neural-style/vgg19-features.safetensors"));
}

#[test]
fn bad_weights_files_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(weights()).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let text = dir.path().join("text.safetensors");
    std::fs::write(&text, "not weights").unwrap();
    // a valid safetensors file with a wrong shape
    let wrong = dir.path().join("wrong.safetensors");
    let script = format!(
        "import torch; from safetensors.torch import load_file, save_file; t = load_file({w:?}); \
         t['features.0.weight'] = torch.zeros(64, 3, 5, 5); save_file(t, {o:?})",
        w = weights().to_str().unwrap(),
        o = wrong.to_str().unwrap()
    );
    assert!(Command::new(python()).args(["-c", &script]).status().unwrap().success());
    let missing = dir.path().join("missing.safetensors");
    let script = format!(
        "from safetensors.torch import load_file, save_file; t = load_file({w:?}); del t['features.34.bias']; save_file(t, {o:?})",
        w = weights().to_str().unwrap(),
        o = missing.to_str().unwrap()
    );
    assert!(Command::new(python()).args(["-c", &script]).status().unwrap().success());
    let home = tempfile::tempdir().unwrap();
    for (file, needle) in [
        (&truncated, "not a valid safetensors"),
        (&text, "not a valid safetensors"),
        (&wrong, "features.0.weight has shape [64, 3, 5, 5]"),
        (&missing, "lacks tensor features.34.bias"),
    ] {
        let o = run_with(None, home.path(), &["--weights", file.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(file.to_str().unwrap()) && err.contains(needle), "{needle}: {err}");
        assert!(err.contains("weights fetch"), "{err}");
    }
}

#[test]
fn random_weights_are_labelled_everywhere() {
    let o = ns(&["weights", "info", "--json", weights().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pretrained"], false);
    assert_eq!(v["metadata"]["seed"], "0");
    let o = ns(&["weights", "info", weights().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("NO (random init)"));
}

/// Writes a checkpoint like the real ones from the test weights: torchvision's state dict (with
/// a classifier, which is dropped) or the author's `conv1_1.weight` names.
fn fake_checkpoint(dir: &Path, format: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{format}.pth"));
    let script = format!(
        r#"
import torch
from safetensors.torch import load_file
t = load_file({w:?})
if {format:?} == "vgg_conv":
    names, i = {{}}, 0
    for b, n in enumerate([2, 2, 4, 4, 4]):
        for c in range(n):
            names[f"features.{{i}}"] = f"conv{{b+1}}_{{c+1}}"
            i += 2
        i += 1
    t = {{names[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in t.items()}}
else:
    t["classifier.0.weight"] = torch.zeros(4, 4)
torch.save(t, {o:?})
"#,
        w = weights().to_str().unwrap(),
        o = out.to_str().unwrap()
    );
    let st = Command::new(python()).args(["-c", &script]).status().unwrap();
    assert!(st.success());
    out
}

#[test]
fn convert_torchvision_and_vgg_conv_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    for (format, preprocessing) in [("torchvision", "torchvision"), ("vgg_conv", "caffe")] {
        let pth = fake_checkpoint(dir.path(), format);
        let out = dir.path().join(format!("{format}.safetensors"));
        let o = ns(&[
            "weights",
            "convert",
            "--input",
            pth.to_str().unwrap(),
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = ns(&["weights", "info", "--json", out.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["preprocessing"], preprocessing);
        assert_eq!(v["pretrained"], true);
        assert_eq!(v["metadata"]["sha256"].as_str().unwrap().len(), 64);
        // the converted file runs (Caffe preprocessing for vgg_conv)
        let home = tempfile::tempdir().unwrap();
        let o = run_with(None, home.path(), &["--weights", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(s["weights"]["preprocessing"], preprocessing);
    }
    // a checkpoint of the wrong format is refused with a reason
    let pth = fake_checkpoint(dir.path(), "torchvision");
    let out = dir.path().join("bad.safetensors");
    let o = ns(&[
        "weights",
        "convert",
        "--input",
        pth.to_str().unwrap(),
        "--format",
        "vgg_conv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no tensor conv1_1.weight"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn fetch_downloads_and_verifies_the_checksum() {
    // Serve a file that is not the real checkpoint over local HTTP: the download works (with a
    // progress bar), the checksum check refuses it, nothing is written.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vgg19-dcbb9e9d.pth"), vec![7u8; 300_000]).unwrap();
    let mut server = Command::new(python())
        .args(["-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        line.split_whitespace().nth(5).unwrap().to_string()
    };
    let out = dir.path().join("fetched.safetensors");
    let o = command(&["weights", "fetch", "--out", out.to_str().unwrap()])
        .env("NEURAL_STYLE_WEIGHTS_URL", format!("http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth"))
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("checksum mismatch") && err.contains("dcbb9e9d"), "{err}");
    assert!(!out.exists());
    // unreachable host: says so, exit 2
    let o = command(&["weights", "fetch", "--out", out.to_str().unwrap()])
        .env("NEURAL_STYLE_WEIGHTS_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("could not download"));
}
