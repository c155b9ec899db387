//! `neural-style bench --latency`: a real daemon process against the one-shot CLI, in one run.
//! Warm request → first progress event and → result, and the style cache's effect, versus
//! `run --local` (process start + model load + the same job).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use neural_style_protocol::message::{Event, Request, Stylize};
use neural_style_protocol::Client;
use serde_json::json;

use crate::cli::samples;
use crate::engine::weights::Weights;

/// The jobs to time.
pub struct Options {
    /// Longest side of the jobs.
    pub size: u32,
    /// Evaluations of the jobs.
    pub evaluations: usize,
}

fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("PNG encodes");
    out.into_inner()
}

struct Timing {
    first_progress: f64,
    result: f64,
}

fn job(client: &mut Client, content: &[u8], style: &[u8], size: u32, iterations: usize) -> anyhow::Result<Timing> {
    let params = json!({"size": size, "iterations": iterations}).as_object().cloned().unwrap_or_default();
    let (mut req, payload) = Stylize::encoded(content, &[(style, 1.0)], params);
    req.label = Some("latency bench".into());
    let t0 = Instant::now();
    client.send(&Request::Stylize(req), &payload)?;
    let mut first = None;
    loop {
        match client.recv()?.0 {
            Event::Progress { .. } => {
                first.get_or_insert(t0.elapsed().as_secs_f64());
            }
            Event::Result { .. } => {
                return Ok(Timing { first_progress: first.unwrap_or(f64::NAN), result: t0.elapsed().as_secs_f64() })
            }
            Event::Error { message, .. } => anyhow::bail!("daemon error: {message}"),
            _ => {}
        }
    }
}

fn wait_ready(socket: &Path) -> anyhow::Result<Client> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect(socket, "latency-bench") {
            if c.status().map(|s| s.ready).unwrap_or(false) {
                return Ok(c);
            }
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(120), "the daemon did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(args: &Options, weights: Option<PathBuf>) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let weights = match weights {
        Some(w) => w,
        None => {
            let w = dir.path().join("w.safetensors");
            Weights::random(0).save(&w)?;
            w
        }
    };
    let (size, iterations) = (args.size, args.evaluations);
    let content = samples::content(384, 256);
    let style = samples::style(256, 256);
    let style_b = image::imageops::flip_horizontal(&style);
    let (content_png, style_png, style_b_png) = (png(&content), png(&style), png(&style_b));
    let (cp, sp) = (dir.path().join("content.png"), dir.path().join("style.png"));
    std::fs::write(&cp, &content_png)?;
    std::fs::write(&sp, &style_png)?;
    let threads = tch::get_num_threads().to_string();
    let w = weights.display().to_string();

    // one-shot CLI: process start, model load, the job
    let mut oneshot = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let st = Command::new(&exe)
            .args(["run", "--local", "-c", cp.to_str().unwrap(), "-s", sp.to_str().unwrap()])
            .args(["-o", dir.path().join("o.png").to_str().unwrap(), "--weights", &w, "--threads", &threads])
            .args(["--size", &size.to_string(), "--iterations", &iterations.to_string()])
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "one-shot run failed");
        oneshot.push(t0.elapsed().as_secs_f64());
    }

    let socket = dir.path().join("bench.sock");
    let mut daemon = Command::new(&exe)
        .args(["serve", "--socket", socket.to_str().unwrap(), "--weights", &w, "--threads", &threads])
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    let t_start = Instant::now();
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let mut client = wait_ready(&socket)?;
        let ready = t_start.elapsed().as_secs_f64();
        let first = job(&mut client, &content_png, &style_png, size, iterations)?; // style: cache miss
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(job(&mut client, &content_png, &style_png, size, iterations)?);
            // cache hits
        }
        let new_style = job(&mut client, &content_png, &style_b_png, size, iterations)?; // miss again
        let st = client.status()?;
        let med = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let warm_first = med(warm.iter().map(|t| t.first_progress).collect());
        let warm_result = med(warm.iter().map(|t| t.result).collect());
        let oneshot_s = med(oneshot.clone());
        eprintln!("{size} px, {iterations} evaluations, {threads} threads, {}:", st.device);
        eprintln!("  one-shot CLI (start + load + job), median of 3:    {oneshot_s:.3} s");
        eprintln!("  daemon start → ready (load + warm-up):             {ready:.3} s");
        eprintln!("  warm daemon, request → first progress (median 5):  {warm_first:.3} s");
        eprintln!(
            "  warm daemon, request → result (median 5):          {warm_result:.3} s   ({:.2}× the one-shot)",
            warm_result / oneshot_s
        );
        eprintln!(
            "  first job of a style (cache miss) → first progress {:.3} s, result {:.3} s",
            first.first_progress, first.result
        );
        eprintln!(
            "  new style again (miss) → first progress {:.3} s; same style (hit) {warm_first:.3} s",
            new_style.first_progress
        );
        eprintln!("  cache: {} hits, {} misses", st.cache_hits, st.cache_misses);
        Ok(json!({
            "size": size, "iterations": iterations, "device": st.device, "threads": threads,
            "oneshot_s": oneshot, "daemon_ready_s": ready,
            "warm_first_progress_s": warm.iter().map(|t| t.first_progress).collect::<Vec<_>>(),
            "warm_result_s": warm.iter().map(|t| t.result).collect::<Vec<_>>(),
            "cache_miss_first_progress_s": first.first_progress, "cache_miss_result_s": first.result,
            "new_style_first_progress_s": new_style.first_progress, "new_style_result_s": new_style.result,
            "cache_hits": st.cache_hits, "cache_misses": st.cache_misses,
        }))
    })();
    if let Ok(mut c) = Client::connect(&socket, "latency-bench") {
        let _ = c.shutdown();
    }
    let _ = daemon.wait();
    result
}
