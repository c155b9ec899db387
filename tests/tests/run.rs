//! `neural-style run` end to end on the sample images, with seeded random weights.

use std::process::Command;
use std::time::{Duration, Instant};

use image::GenericImageView;
use neural_style_e2e::{image, stderr, stylize, stylize_command, summary, weights};

#[test]
fn loss_falls_tenfold_from_noise_and_output_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let content = image("tubingen.jpg");
    let o = stylize(&content, &image("starry_night.jpg"), &out, &["--size", "64", "--iterations", "80", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    let (initial, total) = (s["initial_loss"].as_f64().unwrap(), s["total_loss"].as_f64().unwrap());
    assert!(total * 10.0 <= initial, "loss {initial:e} → {total:e}: not a 10× fall");
    assert_eq!(s["evaluations"], 80);
    assert!(s["iterations"].as_u64().unwrap() >= 1);
    assert_eq!(s["pretrained"], false);
    assert_eq!(s["weights"]["pretrained"], false);
    assert!(s["seconds"].as_f64().unwrap() <= s["total_seconds"].as_f64().unwrap());
    for k in ["content_loss", "style_loss", "total_loss", "device", "width", "height"] {
        assert!(!s[k].is_null(), "summary lacks {k}");
    }
    assert!(stderr(&o).contains("NOT PRETRAINED"), "non-pretrained weights must be announced");
    // output decodes, longest side 64, aspect of the content kept
    let img = image::open(&out).unwrap();
    let (cw, ch) = image::open(&content).unwrap().dimensions();
    let (w, h) = img.dimensions();
    assert_eq!(w.max(h), 64);
    assert_eq!((w, h), (s["width"].as_u64().unwrap() as u32, s["height"].as_u64().unwrap() as u32));
    let expected_h = (64.0 * ch as f64 / cw as f64).round() as u32;
    assert_eq!(h, expected_h);
}

/// `--preview FILE --preview-every S` in this process: the file is replaced as the image forms
/// and ends as a valid image of the output's size.
#[test]
fn preview_file_follows_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (out, preview) = (dir.path().join("out.png"), dir.path().join("preview.png"));
    let (c, s) = (image("tubingen.jpg"), image("starry_night.jpg"));
    let flags = [
        "--size",
        "64",
        "--iterations",
        "60",
        "--local",
        "--preview",
        preview.to_str().unwrap(),
        "--preview-every",
        "0.2",
    ];
    let o = stylize_command(&c, &s, &out, &flags).env("RUST_LOG", "neural_style=debug").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let writes = stderr(&o).matches("preview written").count();
    assert!(writes >= 2, "{writes} preview writes");
    assert_eq!(image::open(&preview).unwrap().dimensions(), image::open(&out).unwrap().dimensions());
    assert!(std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".tmp")));
    // a preview file of an unknown type is refused before any work
    let bad = stylize(&c, &s, &out, &["--preview", "p.gif"]);
    assert!(!bad.status.success() && stderr(&bad).contains("unsupported output format"), "{}", stderr(&bad));
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        let o = stylize(
            &image("golden_gate.jpg"),
            &image("the_scream.jpg"),
            &out,
            &["--size", "48", "--iterations", "15", "--seed", seed],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let a = run("3", "a.png");
    let b = run("3", "b.png");
    let c = run("4", "c.png");
    assert_eq!(a, b, "same seed on CPU must give identical bytes");
    assert_ne!(a, c, "another seed must give another image");
}

#[test]
fn every_option_runs() {
    let dir = tempfile::tempdir().unwrap();
    let content = image("tubingen.jpg");
    let style = image("shipwreck.jpg");
    let style2 = image("woman-with-hat-matisse.jpg");
    let s2 = style2.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--init", "content", "--optimizer", "adam", "--learning-rate", "0.05"],
        vec!["--init", "style", "--pooling", "max", "--no-line-search"],
        vec!["--style", s2, "--style-weights", "3,1", "--style-scale", "0.8", "--preserve-colors"],
        vec!["--tv-weight", "0.1", "--strength", "5", "--content-layers", "relu3_2,relu4_2"],
        vec![
            "--content-weight",
            "1e-3",
            "--style-weight",
            "10",
            "--style-layers",
            "relu1_1,relu2_1",
            "--style-layer-weights",
            "0.7,0.3",
        ],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let out = dir.path().join(format!("o{i}.jpg"));
        let mut flags = vec!["--size", "40", "--iterations", "6", "--json", "--threads", "2"];
        flags.extend(extra.iter());
        let o = stylize(&content, &style, &out, &flags);
        assert!(o.status.success(), "case {extra:?}: {}", stderr(&o));
        let s = summary(&o);
        assert!(s["total_loss"].as_f64().unwrap().is_finite(), "case {extra:?}");
        assert_eq!(image::open(&out).unwrap().dimensions().0.max(image::open(&out).unwrap().dimensions().1), 40);
    }
}

#[test]
fn preserve_colors_keeps_content_chroma() {
    let dir = tempfile::tempdir().unwrap();
    let content = image("golden_gate.jpg");
    let run = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let mut flags = vec!["--size", "48", "--iterations", "20", "--init", "content"];
        flags.extend_from_slice(extra);
        let o = stylize(&content, &image("starry_night.jpg"), &out, &flags);
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(out).unwrap().to_rgb32f()
    };
    let plain = run(&[], "plain.png");
    let kept = run(&["--preserve-colors"], "kept.png");
    let reference = image::open(&content)
        .unwrap()
        .resize_exact(plain.width(), plain.height(), image::imageops::FilterType::Lanczos3)
        .to_rgb32f();
    // chroma (I of YIQ) distance to the content
    let chroma = |img: &image::Rgb32FImage| -> Vec<f32> {
        img.pixels().map(|p| 0.596 * p[0] - 0.274 * p[1] - 0.322 * p[2]).collect()
    };
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    let (c_ref, c_plain, c_kept) = (chroma(&reference), chroma(&plain), chroma(&kept));
    assert!(
        dist(&c_kept, &c_ref) < dist(&c_plain, &c_ref),
        "--preserve-colors should move the chroma towards the content's"
    );
}

#[test]
fn ctrl_c_writes_the_current_image_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("partial.png");
    let child = neural_style_e2e::command(&[
        "run",
        "--content",
        image("tubingen.jpg").to_str().unwrap(),
        "--style",
        image("starry_night.jpg").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--weights",
        weights().to_str().unwrap(),
        "--size",
        "128",
        "--iterations",
        "100000",
    ])
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(10), "Ctrl-C took {:?}", t0.elapsed());
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    let img = image::open(&out).expect("the current image is written");
    assert_eq!(img.dimensions().0.max(img.dimensions().1), 128);
}

#[test]
fn no_resampling_when_size_equals_longest_side() {
    // A content image whose longest side is the requested size: the optimisation starts from the
    // content and runs 1 evaluation (no step), so the output equals the input pixel for pixel.
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("c.png");
    let img =
        image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, ((x * y) % 256) as u8]));
    img.save(&content).unwrap();
    let out = dir.path().join("o.png");
    let o =
        stylize(&content, &image("shipwreck.jpg"), &out, &["--size", "40", "--iterations", "1", "--init", "content"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8(), img);
}

#[test]
fn max_seconds_is_a_time_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timed.png");
    let o = stylize(
        &image("tubingen.jpg"),
        &image("starry_night.jpg"),
        &out,
        &["--size", "64", "--iterations", "100000", "--max-seconds", "3", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["time_budget_reached"], true);
    assert_eq!(s["cancelled"], false);
    let seconds = s["seconds"].as_f64().unwrap();
    // one evaluation past the budget at most (64 px: well under a second even on a loaded machine)
    assert!((3.0..6.0).contains(&seconds), "optimised for {seconds} s");
    let evaluations = s["evaluations"].as_u64().unwrap();
    assert!((2..100000).contains(&evaluations), "{evaluations} evaluations");
    assert!(s["total_loss"].as_f64().unwrap() < s["initial_loss"].as_f64().unwrap());
    assert!(image::open(&out).is_ok());
    // multi-scale: the budget is shared, so a short one still reaches the output size
    let o = stylize(
        &image("tubingen.jpg"),
        &image("starry_night.jpg"),
        &out,
        &["--size", "256", "--min-scale", "64", "--max-seconds", "8", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&o);
    let scales = s["scales"].as_array().unwrap();
    let sizes: Vec<u64> =
        scales.iter().map(|x| x["width"].as_u64().unwrap().max(x["height"].as_u64().unwrap())).collect();
    assert_eq!(sizes, [64, 128, 256], "{scales:?}");
    let per: Vec<u64> = scales.iter().map(|x| x["evaluations"].as_u64().unwrap()).collect();
    // (each scale's share of the evaluations is tested in-process, daemon/tests/time_budget.rs:
    // here the tests run side by side, and on a loaded machine a scale may get one evaluation)
    assert!(per.iter().all(|&n| n >= 1), "evaluations per scale {per:?}");
    assert!(s["total_loss"].as_f64().unwrap() < s["initial_loss"].as_f64().unwrap());
    let o = stylize(&image("tubingen.jpg"), &image("starry_night.jpg"), &out, &["--max-seconds", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("max-seconds must be a positive number"), "{}", stderr(&o));
}
