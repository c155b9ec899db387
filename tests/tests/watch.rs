//! Watch folders with a real daemon and real files (random weights, tiny sizes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use neural_style_e2e::Daemon;

/// A small PNG whose pixels depend on `seed`.
fn png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([((x * 7 + seed * 13) % 256) as u8, ((y * 11 + seed * 5) % 256) as u8, ((x * y + seed) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Setup {
    input: PathBuf,
    style: PathBuf,
    _styles: tempfile::TempDir,
}

fn setup(d: &tempfile::TempDir) -> Setup {
    let input = d.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let styles = tempfile::tempdir().unwrap();
    let style = styles.path().join("brush.png");
    std::fs::write(&style, png(99, 24, 24)).unwrap();
    Setup { input, style, _styles: styles }
}

fn start(root: tempfile::TempDir, s: &Setup, extra: &[&str]) -> Daemon {
    let mut args = vec!["--watch", s.input.to_str().unwrap(), "--style", s.style.to_str().unwrap()];
    args.extend_from_slice(&["--size", "32", "--no-warmup"]);
    if !extra.contains(&"--iterations") {
        args.extend_from_slice(&["--iterations", "1"]);
    }
    args.extend_from_slice(extra);
    let socket = root.path().join("rt/neural-style/daemon.sock");
    Daemon::start_at(root, socket, &args)
}

/// The daemon's status section for the (first) watch rule.
fn rule_status(d: &Daemon) -> serde_json::Value {
    d.status().extra.get("watch").map(|w| w[0].clone()).unwrap_or_default()
}

fn wait_for(what: &str, d: &Daemon, secs: u64, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn burst(extra: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let d = start(root, &s, extra);
    for i in 0..200 {
        std::fs::write(input.join(format!("img{i:03}.png")), png(i, 24, 18)).unwrap();
    }
    let out = input.join("out");
    wait_for("200 outputs", &d, 300, || files(&out).len() >= 200 && files(&input.join("done")).len() >= 200);
    let outs = files(&out);
    assert_eq!(outs.len(), 200, "{outs:?}");
    assert!(outs.iter().all(|n| n.ends_with(".brush.png") && !n.starts_with('.')));
    assert_eq!(files(&input.join("done")).len(), 200);
    assert!(files(&input.join("failed")).is_empty());
    assert!(files(&input).is_empty(), "inputs left behind: {:?}", files(&input));
    for n in outs.iter().take(5) {
        assert_eq!(image::open(out.join(n)).unwrap().width(), 32);
    }
    // status lists the rule with its counts
    let rule = &rule_status(&d);
    assert_eq!(rule["done"], 200, "{rule}");
    assert_eq!(rule["failed"], 0);
    assert_eq!(rule["pending"], 0);
}

/// Writes a PNG in six chunks half a second apart; with `started_mid_write` the daemon starts
/// after the first chunk (the file is already there, half written, at its first scan).
fn slow_write(extra: &[&str], started_mid_write: bool) {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let bytes = png(7, 40, 30);
    let path = input.join("slow.png");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len() / 6 + 1).collect();
    let mut daemon = None;
    for (i, c) in chunks.iter().enumerate() {
        if i == usize::from(started_mid_write) {
            daemon = Some(start(tempfile::tempdir().unwrap(), &s, extra));
        }
        f.write_all(c).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(path.exists(), "taken before it was complete");
        assert!(
            files(&input.join("failed")).is_empty(),
            "a partial file was processed: {:?}",
            files(&input.join("failed"))
        );
    }
    drop(f);
    let d = daemon.expect("started");
    wait_for("the slow file's output", &d, 60, || input.join("out/slow.brush.png").exists());
    assert!(files(&input.join("failed")).is_empty());
    assert_eq!(files(&input.join("done")), vec!["slow.png"]);
}

#[test]
fn a_burst_of_200_images_gives_200_outputs() {
    burst(&[]);
}

#[test]
fn a_slowly_written_file_is_taken_only_when_complete() {
    slow_write(&[], false);
}

#[test]
fn a_file_half_written_when_the_daemon_starts_is_taken_only_when_complete() {
    slow_write(&[], true);
}

#[test]
fn poll_mode_passes_the_burst() {
    burst(&["--poll"]);
}

#[test]
fn poll_mode_waits_for_slow_writers() {
    slow_write(&["--poll"], false);
}

#[test]
fn renamed_in_files_are_taken_once() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let outside = root.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    let d = start(root, &s, &[]);
    // a download: .part while written, then renamed
    let part = input.join("download.png.part");
    std::fs::write(&part, png(1, 30, 20)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(part.exists() && files(&input.join("out")).is_empty(), ".part files are not taken");
    std::fs::rename(&part, input.join("download.png")).unwrap();
    // moved in from another folder
    std::fs::write(outside.join("moved.png"), png(2, 30, 20)).unwrap();
    std::fs::rename(outside.join("moved.png"), input.join("moved.png")).unwrap();
    wait_for("two outputs", &d, 60, || files(&input.join("out")).len() == 2 && files(&input.join("done")).len() == 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(files(&input.join("out")), vec!["download.brush.png", "moved.brush.png"]);
    assert_eq!(files(&input.join("done")), vec!["download.png", "moved.png"]);
}

#[test]
fn bad_files_go_to_failed_with_a_reason_and_the_rule_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let d = start(root, &s, &[]);
    let good = png(3, 30, 20);
    std::fs::write(input.join("broken.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(input.join("notes.txt"), "shopping list\n").unwrap();
    std::fs::write(input.join("empty.jpg"), b"").unwrap();
    wait_for("three failures", &d, 60, || files(&input.join("failed")).len() == 6);
    let failed = input.join("failed");
    for name in ["broken.png", "notes.txt", "empty.jpg"] {
        assert!(failed.join(name).exists(), "{name} kept in failed/");
        let reason = std::fs::read_to_string(failed.join(format!("{name}.error.txt"))).unwrap();
        assert!(reason.contains(name) && reason.contains("cannot decode"), "{reason}");
    }
    std::fs::write(input.join("fine.png"), &good).unwrap();
    wait_for("the good file", &d, 60, || input.join("out/fine.brush.png").exists());
    assert_eq!(rule_status(&d)["failed"], 3);
}

#[test]
fn kill_9_mid_batch_loses_and_duplicates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let socket = root.path().join("rt/neural-style/daemon.sock");
    let log = root.path().join("second.log");
    let root_path = root.path().to_owned();
    let mut d = start(root, &s, &["--iterations", "3"]);
    let names: Vec<String> = (0..50).map(|i| format!("b{i:02}.png")).collect();
    for (i, n) in names.iter().enumerate() {
        let bytes = if i % 10 == 9 { b"corrupt".to_vec() } else { png(i as u32, 24, 18) };
        std::fs::write(input.join(n), bytes).unwrap();
    }
    wait_for("a few outputs", &d, 120, || files(&input.join("out")).len() >= 8);
    d.child.kill().unwrap(); // SIGKILL mid-batch
    d.child.wait().unwrap();
    let args = ["--watch", input.to_str().unwrap(), "--style", s.style.to_str().unwrap(), "--size", "32"];
    let mut again: Vec<&str> = args.to_vec();
    again.extend_from_slice(&["--iterations", "3", "--no-warmup"]);
    d.child = Daemon::spawn(&root_path, &socket, &log, &again);
    d.log = log;
    d.wait_ready();
    wait_for("every input settled", &d, 180, || {
        files(&input.join("done")).len() + files(&input.join("failed")).len() / 2 == 50
    });
    let out = files(&input.join("out"));
    let failed = files(&input.join("failed"));
    for (i, n) in names.iter().enumerate() {
        let stem = n.trim_end_matches(".png");
        let has_out = out.contains(&format!("{stem}.brush.png"));
        let has_err = failed.contains(&format!("{n}.error.txt"));
        assert!(has_out ^ has_err, "{n}: output {has_out}, error report {has_err}");
        assert_eq!(has_err, i % 10 == 9, "{n}");
    }
    assert_eq!(out.len(), 45, "no duplicates: {out:?}");
    assert!(std::fs::read_dir(input.join("out"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")));
    assert!(files(&input.join(".neural-style/processing")).is_empty());
    assert!(files(&input.join(".neural-style/outputs")).is_empty());
    assert!(files(&input).is_empty());
}

#[test]
fn unwritable_output_keeps_inputs_and_resumes_once_fixed() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let d = start(root, &s, &[]);
    // the output folder turns into a file: nothing can be written there (even as root)
    let out = input.join("out");
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, "not a folder").unwrap();
    for i in 0..3 {
        std::fs::write(input.join(format!("k{i}.png")), png(i, 24, 18)).unwrap();
    }
    wait_for("an error report in status", &d, 60, || {
        rule_status(&d)["last_error"].as_str().map(|e| e.contains("cannot write")).unwrap_or(false)
    });
    let err = rule_status(&d)["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("the input is kept and retried"), "{err}");
    assert!(d.log_text().contains("cannot write"), "a log line per file");
    // (a file being tried sits in processing/ for the moment: wait until each is back)
    let kept = || files(&input).into_iter().filter(|n| n != "out").collect::<Vec<String>>();
    wait_for("every input tried and kept", &d, 60, || {
        kept() == ["k0.png", "k1.png", "k2.png"] && files(&input.join(".neural-style/processing")).is_empty()
    });
    assert!(files(&input.join("failed")).is_empty(), "not the files' fault: nothing in failed/");
    // fix it
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();
    wait_for("outputs after the fix", &d, 60, || files(&out).len() == 3);
    assert_eq!(files(&input.join("done")).len(), 3);
}

#[test]
fn per_folder_style_and_settings_are_picked_up_and_changes_apply_later() {
    let root = tempfile::tempdir().unwrap();
    let input = root.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let socket = root.path().join("rt/neural-style/daemon.sock");
    // no style for the rule: the folder brings its own
    let d = Daemon::start_at(
        root,
        socket,
        &["--watch", input.to_str().unwrap(), "--size", "32", "--iterations", "3", "--no-warmup"],
    );
    std::fs::write(input.join("style.png"), png(40, 24, 24)).unwrap();
    std::fs::write(input.join("neural-style.toml"), "size = 36\ninit = \"content\"\n").unwrap();
    let content = png(5, 48, 32);
    std::fs::write(input.join("a.png"), &content).unwrap();
    wait_for("a", &d, 60, || input.join("out/a.style.png").exists());
    let a = image::open(input.join("out/a.style.png")).unwrap();
    assert_eq!(a.width(), 36, "settings file applied");
    // a new style applies to later files
    std::fs::write(input.join("style.png"), png(200, 24, 24)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(input.join("b.png"), &content).unwrap();
    wait_for("b", &d, 60, || input.join("out/b.style.png").exists());
    let b = image::open(input.join("out/b.style.png")).unwrap();
    assert_ne!(a.to_rgb8(), b.to_rgb8(), "same content, changed style: a different result");
    assert!(input.join("style.png").exists(), "the style file itself is never taken");
}

#[test]
fn keep_source_leaves_inputs_in_place_and_processes_them_once() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    let d = start(root, &s, &["--keep-source"]);
    std::fs::write(input.join("stay.png"), png(8, 30, 20)).unwrap();
    wait_for("the output", &d, 60, || input.join("out/stay.brush.png").exists());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(files(&input), vec!["stay.png"], "the source stays where it was");
    assert!(files(&input.join("done")).is_empty());
    assert_eq!(files(&input.join("out")), vec!["stay.brush.png"], "processed once");
    assert_eq!(rule_status(&d)["done"], 1);
}

/// `img` encoded as JPEG.
fn jpeg(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let img = image::load_from_memory(&png(seed, w, h)).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn same_stem_and_dropped_again_never_overwrite_an_output() {
    let root = tempfile::tempdir().unwrap();
    let s = setup(&root);
    let input = s.input.clone();
    // three evaluations: a result that depends on the input (one would return the noise start)
    let d = start(root, &s, &["--iterations", "3"]);
    // a.png and a.jpg would both be "a.brush.png"
    std::fs::write(input.join("shot.png"), png(4, 30, 20)).unwrap();
    std::fs::write(input.join("shot.jpg"), jpeg(5, 30, 20)).unwrap();
    wait_for("two outputs", &d, 60, || files(&input.join("done")).len() == 2);
    assert_eq!(files(&input.join("out")), vec!["shot.brush-1.png", "shot.brush.png"]);
    let first: Vec<Vec<u8>> =
        files(&input.join("out")).iter().map(|n| std::fs::read(input.join("out").join(n)).unwrap()).collect();
    assert_ne!(first[0], first[1], "two different results");
    // the same name dropped again: a third output, the earlier ones untouched
    std::fs::write(input.join("shot.png"), png(6, 30, 20)).unwrap();
    wait_for("the third output", &d, 60, || files(&input.join("done")).len() == 3);
    assert_eq!(files(&input.join("out")), vec!["shot.brush-1.png", "shot.brush-2.png", "shot.brush.png"]);
    for (n, bytes) in ["shot.brush-1.png", "shot.brush.png"].iter().zip(&first) {
        assert_eq!(&std::fs::read(input.join("out").join(n)).unwrap(), bytes, "{n} unchanged");
    }
    assert_eq!(files(&input.join("done")), vec!["shot-1.png", "shot.jpg", "shot.png"]);
    assert!(files(&input.join(".neural-style/outputs")).is_empty(), "records are removed once settled");
}
