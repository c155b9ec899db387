//! The GIMP 3 plug-in in the real GIMP (3.0.x, headless `gimp-console-3.0` in a Debian trixie
//! root made by tests/gimp/setup-root.sh), talking to a real daemon that runs outside the root on
//! a socket inside it. Each case is a function of tests/gimp/driver.py.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use neural_style_e2e::{command, image, repo_root, weights};
use serde_json::Value;

/// The GIMP root, built once (cached in .cache/gimp-root), with the plug-in and driver copied in.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::var_os("NEURAL_STYLE_GIMP_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cache/gimp-root"));
        let st = Command::new(repo_root().join("tests/gimp/setup-root.sh")).arg(&root).status().unwrap();
        assert!(st.success(), "could not build the GIMP test root at {}", root.display());
        let ci = root.join("ci");
        std::fs::create_dir_all(ci.join("out")).unwrap();
        std::fs::copy(repo_root().join("tests/gimp/driver.py"), ci.join("driver.py")).unwrap();
        std::fs::copy(repo_root().join("tests/gimp/fake-neural-style"), ci.join("fake-neural-style")).unwrap();
        std::fs::copy(image("starry_night.jpg"), ci.join("style.jpg")).unwrap();
        root
    })
}

/// A private GIMP profile with the plug-in installed, as `make install-gimp` would.
fn profile(case: &str) -> String {
    let inside = format!("/root/profile-{case}");
    let dir = root().join(inside.trim_start_matches('/')).join("plug-ins/neural-style");
    let _ = std::fs::remove_dir_all(root().join(inside.trim_start_matches('/')));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["neural-style.py", "ns_protocol.py"] {
        std::fs::copy(repo_root().join("plugin-gimp/neural-style").join(f), dir.join(f)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("neural-style.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
    inside
}

/// The daemon outside the root, serving `/tmp/ns-<case>.sock` inside it.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn status(&self) -> neural_style_protocol::message::Status {
        neural_style_protocol::Client::connect(&self.socket, "gimp-test").unwrap().status().unwrap()
    }
}

fn serve(socket_inside: &str) -> Served {
    let socket = root().join(socket_inside.trim_start_matches('/'));
    let _ = std::fs::remove_file(&socket);
    let child = command(&["serve", "--socket", socket.to_str().unwrap(), "--threads", "2"])
        .args(["--weights", weights().to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = neural_style_protocol::Client::connect(&socket, "gimp-test") {
            if c.status().map(|s| s.ready).unwrap_or(false) {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "daemon not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served { child, socket }
}

fn gimp(case: &str, socket_inside: &str) -> Command {
    let profile = profile(case);
    let _ = std::fs::remove_file(root().join(format!("ci/out/{case}.json")));
    let mut c = Command::new("chroot");
    c.arg(root()).args(["env", "-i", "HOME=/root", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]);
    c.arg(format!("GIMP3_DIRECTORY={profile}"));
    c.arg(format!("NS_CASE={case}"));
    c.arg(format!("NEURAL_STYLE_SOCKET={socket_inside}"));
    c.args(["gimp-console-3.0", "-i", "-n", "--batch-interpreter=python-fu-eval"]);
    c.args(["-b", "exec(open('/ci/driver.py').read())", "--quit"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn result(case: &str, out: &std::process::Output) -> Value {
    let path = root().join(format!("ci/out/{case}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "GIMP wrote no result for {case} (exit {:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], true, "{case}: {}\nGIMP said:\n{}", v["exception"], String::from_utf8_lossy(&out.stderr));
    v
}

/// Runs one driver case against a fresh daemon.
fn run_case(case: &str) -> (Value, Served, String) {
    let socket = format!("/tmp/ns-{case}.sock");
    let served = serve(&socket);
    let out = gimp(case, &socket).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (result(case, &out), served, stderr)
}

#[test]
fn two_selected_layers_give_a_new_layer_above_the_content() {
    let (v, served, stderr) = run_case("two_layers");
    assert_eq!(v["name"], "photo (Neural Style)");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(40), Some(30)), "{v}");
    assert_eq!((v["x"].as_i64(), v["y"].as_i64()), (Some(5), Some(7)), "offsets kept: {v}");
    assert_eq!(v["position"].as_i64().unwrap() + 1, v["content_position"].as_i64().unwrap(), "right above the content");
    assert_eq!(v["differs_from_content"], true);
    assert_eq!(v["depends_on_style"], true);
    assert_eq!(v["layers"], 4);
    assert_eq!(served.status().jobs_done, 2);
    assert!(stderr.contains("NOT PRETRAINED"), "the user is warned about random weights:\n{stderr}");
}

#[test]
fn rectangular_and_feathered_elliptical_selections_mask_the_result() {
    let (v, _served, _) = run_case("selection");
    let rect = &v["rect"];
    assert_eq!(rect["mask_equals_selection"], true, "{v}");
    assert_eq!(rect["inside"], 300); // 20×15 selected pixels
    assert_eq!(rect["partial"], 0);
    let ell = &v["ellipse"];
    assert_eq!(ell["mask_equals_selection"], true, "{v}");
    assert!(ell["partial"].as_u64().unwrap() > 100, "feathering kept: {v}");
}

#[test]
fn sixteen_bit_images_keep_their_precision() {
    let (v, _served, _) = run_case("sixteen_bit");
    let off_grid = v["off_grid"].as_u64().unwrap();
    assert!(off_grid > v["count"].as_u64().unwrap() / 4, "result was quantised to 8 bits: {v}");
    assert_eq!(v["name"], "deep (Neural Style)");
}

#[test]
fn grayscale_images_get_a_grayscale_layer() {
    let (v, _served, _) = run_case("grayscale");
    assert_eq!(v["is_gray"], true, "{v}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(40), Some(30)));
}

#[test]
fn one_layer_with_a_style_file() {
    let (v, served, _) = run_case("style_file");
    assert_eq!(v["name"], "photo (Neural Style)");
    assert_eq!(v["no_style_status"], 0, "EXECUTION_ERROR without a style: {v}");
    assert!(v["no_style_error"].as_str().unwrap().contains("choose a style image file"), "{v}");
    assert_eq!(served.status().jobs_done, 1);
}

#[test]
fn text_layers_get_a_clear_message() {
    let (v, served, _) = run_case("text_layer");
    assert_eq!(v["status"], 0);
    assert!(v["error"].as_str().unwrap().contains("text layer; rasterize it first"), "{v}");
    assert_eq!(served.status().jobs_done, 0);
}

#[test]
fn missing_daemon_binary_is_a_clear_error_and_the_image_is_unchanged() {
    let case = "no_binary";
    let out = gimp(case, "/tmp/nobody-here.sock").output().unwrap();
    let v = result(case, &out);
    assert_eq!(v["success"], false, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("not running") && err.contains("was not found") && err.contains("neural-style serve"),
        "{err}"
    );
    assert_eq!(v["layers_before"], v["layers_after"]);
}

#[test]
fn the_plug_in_starts_the_daemon_when_none_runs() {
    let case = "autostart";
    let socket_inside = "/tmp/ns-autostart.sock";
    let _ = std::fs::remove_file(root().join("tmp/ns-autostart.sock"));
    let request = root().join(format!("ci/out/start-request-{case}"));
    let _ = std::fs::remove_file(&request);
    let mut g = gimp(case, socket_inside).spawn().unwrap();
    // the plug-in runs the binary it found with `serve --socket …`
    let t0 = Instant::now();
    while !request.exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the plug-in never started the daemon");
        assert!(g.try_wait().unwrap().is_none(), "GIMP exited before starting the daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = std::fs::read_to_string(&request).unwrap();
    assert_eq!(args.trim(), format!("serve --socket {socket_inside}"));
    // start the real one where it was asked for; the plug-in waits until it is ready
    let served = serve(socket_inside);
    let out = g.wait_with_output().unwrap();
    let v = result(case, &out);
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["layers_after"].as_u64().unwrap(), v["layers_before"].as_u64().unwrap() + 1);
    assert_eq!(served.status().jobs_done, 1);
    let _ = Command::new("pkill").args(["-f", "fake-neural-style"]).status();
}

/// Waits until the daemon's running job has made `evaluations` and `seconds` have passed since.
fn wait_for_progress(served: &Served, g: &mut Child, evaluations: usize, seconds: f64) {
    let t0 = Instant::now();
    while served.status().running.map(|j| j.progress).unwrap_or(0) < evaluations {
        assert!(t0.elapsed() < Duration::from_secs(60), "the job never started");
        assert!(g.try_wait().unwrap().is_none(), "GIMP exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs_f64(seconds));
}

#[test]
fn killing_the_plug_in_cancels_the_daemon_job_and_keeps_the_last_preview() {
    let case = "cancel";
    let socket = format!("/tmp/ns-{case}.sock");
    let served = serve(&socket);
    let mut g = gimp(case, &socket).spawn().unwrap();
    // long enough for the layer to exist and a preview to reach it (every second)
    wait_for_progress(&served, &mut g, 2, 2.5);
    // GIMP's Cancel on its progress bar kills the plug-in process; do the same
    let killed =
        Command::new("pkill").args(["-KILL", "-f", &format!("profile-{case}/plug-ins/neural-style")]).status().unwrap();
    assert!(killed.success(), "no plug-in process to kill");
    let t1 = Instant::now();
    loop {
        let st = served.status();
        if st.running.is_none() && st.jobs_cancelled == 1 {
            break;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "the daemon kept the job: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = g.wait_with_output().unwrap();
    let v = result(case, &out);
    assert_eq!(v["success"], false, "the plug-in call failed, as it was killed: {v}");
    // what GIMP's cancel leaves: the layer with the last preview (GIMP closes the undo group)
    assert_eq!(v["layers_after"].as_u64(), v["layers_before"].as_u64().map(|n| n + 1), "{v}");
}

#[test]
fn a_failure_after_the_start_leaves_no_half_made_layer() {
    let case = "daemon_dies";
    let socket = format!("/tmp/ns-{case}.sock");
    let mut served = serve(&socket);
    let mut g = gimp(case, &socket).spawn().unwrap();
    wait_for_progress(&served, &mut g, 2, 2.0);
    served.child.kill().unwrap();
    let out = g.wait_with_output().unwrap();
    let v = result(case, &out);
    assert_eq!(v["success"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("lost the connection"), "{v}");
    assert_eq!(v["layers_after"], v["layers_before"], "the live layer was removed: {v}");
}

#[test]
fn previews_update_one_new_layer_in_place() {
    let (v, served, _) = run_case("previews");
    for (name, size) in [("same_size", (40, 30)), ("scaled", (96, 72))] {
        let r = &v[name];
        assert_eq!(r["layers_added"], 1, "{name}: exactly one new layer: {r}");
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(size.0), Some(size.1)), "{name}: {r}");
        assert_eq!(r["differs_from_content"], true, "{name}: {r}");
        let info = &r["info"];
        assert!(info["previews"].as_u64().unwrap() >= 2, "{name}: the layer was updated from previews: {r}");
        assert_eq!(info["stop_reason"], "budget", "{name}: {r}");
        assert_eq!(info["evaluations"], 600, "{name}: {r}");
    }
    assert_eq!(v["scaled"]["x"], 2, "{v}");
    assert_eq!(served.status().jobs_done, 2);
}

#[test]
fn stop_keeps_the_current_image_or_discards_it() {
    let (v, served, _) = run_case("stop");
    let keep = &v["keep"];
    assert_eq!(keep["status"], v["success_status"], "{keep}");
    assert_eq!(keep["layers_added"], 1, "a stopped run with keep leaves one layer: {keep}");
    assert_eq!(keep["info"]["stop_reason"], "cancelled", "{keep}");
    assert!(keep["info"]["evaluations"].as_u64().unwrap() < 10000, "{keep}");
    assert_eq!(keep["differs_from_content"], true, "{keep}");
    let discard = &v["discard"];
    assert_eq!(discard["status"], v["cancel_status"], "{discard}");
    assert_eq!(discard["layers_added"], 0, "discard leaves nothing: {discard}");
    for r in [keep, discard] {
        assert!(r["seconds"].as_f64().unwrap() < 30.0, "stopped soon after 1.5 s: {r}");
    }
    assert_eq!(served.status().jobs_cancelled, 2);
}
