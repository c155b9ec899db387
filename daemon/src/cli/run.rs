//! `neural-style run`: one stylization, through a running daemon when there is one (its model is
//! already loaded), in this process otherwise (`--local` forces it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use neural_style_protocol::client::ClientError;
use neural_style_protocol::message::{Event, ImageRef, PixelFormat, Request, Stylize, Summary};
use neural_style_protocol::Client;
use tch::Tensor;

use super::args::{request_params, DeviceArgs, EngineArgs, SocketArg, WeightsArg};
use crate::engine::image_io::{DecodeLimits, Output, OutputFormat, Picture};
use crate::engine::{device_name, Control, Job, Progress};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The content image (photo).
    #[arg(long, short = 'c')]
    pub content: PathBuf,
    /// A style image (painting); repeat for several, blended with --style-weights.
    #[arg(long, short = 's', required = true)]
    pub style: Vec<PathBuf>,
    /// Output file (.png or .jpg).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Bits per channel of PNG output: 8 or 16 (default: 16 when the content has more than 8).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["8", "16"]))]
    pub output_depth: Option<String>,
    /// Refuse input images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,
    /// Print a JSON summary on stdout when done.
    #[arg(long)]
    pub json: bool,
    /// Write the image as it forms to this file (.png or .jpg), replaced atomically every
    /// --preview-every seconds (in this process at the output size; through a daemon up to 1024 px).
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Seconds between --preview writes.
    #[arg(long, default_value_t = 2.0, requires = "preview")]
    pub preview_every: f64,
    /// Run in this process even when a daemon is running.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub socket: SocketArg,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub weights: WeightsArg,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The bar's message: the objective and the scale being optimised.
fn progress_message(total: f64, scale: Option<[u32; 2]>) -> String {
    match scale {
        Some([w, h]) => format!("{total:.4e} at {w}×{h}"),
        None => format!("{total:.4e}"),
    }
}

fn progress_bar(total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} evals  loss {msg}  ETA {eta}")
            .expect("valid template"),
    );
    bar
}

fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    Ok(flag)
}

/// What either path produced.
struct Produced {
    rgb: Tensor,
    alpha: Option<Vec<f32>>,
    summary: Summary,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let total_start = Instant::now();
    // Check the parameters, the output and the inputs before spending minutes on the
    // optimisation.
    let format = OutputFormat::from_path(&args.output)?;
    if let Some(p) = &args.preview {
        OutputFormat::from_path(p)?;
        anyhow::ensure!(
            args.preview_every.is_finite() && args.preview_every > 0.0,
            "--preview-every must be a positive number of seconds"
        );
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        anyhow::ensure!(dir.is_dir(), "output folder {} does not exist; create it first", dir.display());
    }
    let limits = DecodeLimits { max_pixels: args.max_pixels, ..Default::default() };
    let content = Picture::load(&args.content, limits)?;
    let styles = args.style.iter().map(|s| Picture::load(s, limits)).collect::<Result<Vec<_>, _>>()?;
    let job = Job::new(content, styles, args.engine.params())?;
    let interrupted = ctrl_c_flag()?;

    let remote = if args.local {
        None
    } else {
        match args.socket.connect() {
            Ok(c) => Some(c),
            Err(e) if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::Connect { .. })) => {
                tracing::info!(socket = %args.socket.path().display(), "no daemon running: stylizing in this process");
                None
            }
            Err(e) => return Err(e),
        }
    };
    let local = remote.is_none();
    let produced = match remote {
        Some(client) => run_remote(&args, client, &job, &interrupted)?,
        None => run_local(&args, &job, &interrupted)?,
    };

    let s = &produced.summary;
    let sixteen_bit = match args.output_depth.as_deref() {
        Some("16") => true,
        Some(_) => false,
        None => s.high_precision && format == OutputFormat::Png,
    };
    anyhow::ensure!(!sixteen_bit || format == OutputFormat::Png, "16-bit output needs a .png file name");
    Output { rgb: &produced.rgb, alpha: produced.alpha.as_deref(), sixteen_bit }.save(&args.output)?;
    let cancelled = s.cancelled;
    if args.json {
        let mut v = serde_json::to_value(s)?;
        v["total_seconds"] = total_start.elapsed().as_secs_f64().into();
        if local {
            // this process did the work: its memory high-water mark is the job's peak
            v["peak_rss_bytes"] = crate::engine::memory::peak_rss_bytes().into();
        }
        v["output"] = args.output.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    let weights_note = if s.pretrained { "pretrained weights" } else { "NOT PRETRAINED weights (random init)" };
    eprintln!(
        "{} {} ({}×{}) — {} evaluations, {} iterations, loss {:.4e} → {:.4e}, {:.1} s on {} ({}), {}",
        if cancelled { "interrupted: wrote the current image to" } else { "wrote" },
        args.output.display(),
        s.width,
        s.height,
        s.evaluations,
        s.iterations,
        s.initial_loss,
        s.total_loss,
        s.seconds,
        s.device,
        s.precision,
        weights_note
    );
    Ok(if cancelled { ExitCode::from(130) } else { ExitCode::SUCCESS })
}

fn run_local(args: &RunArgs, job: &Job, interrupted: &AtomicBool) -> anyhow::Result<Produced> {
    let device = args.device.apply()?;
    let weights = args.weights.load()?;
    let layout = args.device.precision.layout(device);
    let engine = args.device.engine(&weights, device);
    drop(weights);
    tracing::info!(device = %device_name(device), precision = %layout.name(), "model loaded");
    let bar = progress_bar(job.params().evaluations);
    let mut previews = Previews::new(args, job.output_size());
    let result = engine.stylize(job, &mut |p: &Progress| {
        previews.offer(p.elapsed.as_secs_f64(), || p.image.shallow_clone());
        bar.set_position(p.evaluation as u64);
        let dims = p.image.size();
        bar.set_message(progress_message(p.losses.total, Some([dims[3] as u32, dims[2] as u32])));
        if interrupted.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    });
    bar.finish_and_clear();
    let out = result?;
    Ok(Produced { rgb: out.rgb, alpha: out.alpha, summary: out.summary })
}

fn run_remote(args: &RunArgs, mut client: Client, job: &Job, interrupted: &AtomicBool) -> anyhow::Result<Produced> {
    tracing::info!(socket = %args.socket.path().display(), "using the running daemon");
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    let content = read(&args.content)?;
    let styles = args.style.iter().map(read).collect::<anyhow::Result<Vec<_>>>()?;
    let params = job.params();
    let styles: Vec<(&[u8], f64)> = styles.iter().map(Vec::as_slice).zip(params.blend(args.style.len())).collect();
    let (mut request, payload) = Stylize::encoded(&content, &styles, request_params(params));
    request.output = PixelFormat::Rgba32f;
    request.label = Some(args.content.display().to_string());
    if args.preview.is_some() {
        let (w, h) = job.output_size();
        request.preview_every_s = Some(args.preview_every);
        request.preview_size = Some(w.max(h).min(1024));
    }
    let previews = Previews::new(args, job.output_size());
    client.send(&Request::Stylize(request), &payload)?;
    let bar = progress_bar(params.evaluations);
    let mut job_id = None;
    let mut cancel_sent = false;
    loop {
        let (event, bytes) = client.recv()?;
        match event {
            Event::Accepted { job, position } | Event::Queued { job, position } => {
                job_id = Some(job);
                if position > 0 {
                    bar.set_message(format!("queued, {position} job(s) ahead"));
                }
            }
            Event::Started { .. } => bar.set_message("started"),
            Event::Progress { evaluation, losses, preview, scale, .. } => {
                if let Some(r) = preview {
                    let pic = Picture::from_raw(
                        r.format,
                        r.width.unwrap_or(0),
                        r.height.unwrap_or(0),
                        r.slice(&bytes).map_err(anyhow::Error::msg)?,
                    )
                    .map_err(anyhow::Error::msg)?;
                    previews.write(&pic.rgb_tensor());
                }
                bar.set_position(evaluation as u64);
                bar.set_message(progress_message(losses.total, scale));
            }
            Event::Result { image, summary, .. } => {
                bar.finish_and_clear();
                return produced(&image, &bytes, *summary);
            }
            Event::Cancelled { image: Some(image), summary: Some(summary), .. } => {
                bar.finish_and_clear();
                return produced(&image, &bytes, *summary);
            }
            Event::Cancelled { job, .. } => anyhow::bail!("job {job} was cancelled before it started"),
            Event::Error { code, message, .. } => {
                bar.finish_and_clear();
                anyhow::bail!("the daemon refused the job ({code:?}): {message}")
            }
            _ => {}
        }
        if let (Some(job), false) = (job_id, cancel_sent) {
            if interrupted.load(Ordering::SeqCst) {
                client.send(&Request::Cancel { job }, &[])?;
                cancel_sent = true;
            }
        }
    }
}

/// `--preview`: the image as it forms, written atomically (temporary file, then rename) every
/// `--preview-every` seconds, at the output size.
struct Previews {
    path: Option<PathBuf>,
    every: f64,
    next: f64,
    size: (u32, u32),
}

impl Previews {
    fn new(args: &RunArgs, size: (u32, u32)) -> Self {
        Self { path: args.preview.clone(), every: args.preview_every, next: 0.0, size }
    }

    /// In this process: after an evaluation `elapsed` seconds into the job; `image` is the
    /// evaluated image at the current scale.
    fn offer(&mut self, elapsed: f64, image: impl FnOnce() -> Tensor) {
        if self.path.is_some() && elapsed >= self.next {
            self.next = elapsed + self.every;
            self.write(&image());
        }
    }

    fn write(&self, image: &Tensor) {
        let Some(path) = &self.path else { return };
        let (w, h) = self.size;
        let rgb = crate::engine::backward::no_grad(|| {
            image
                .to_kind(tch::Kind::Float)
                .upsample_bilinear2d([i64::from(h), i64::from(w)], false, None, None)
                .clamp(0.0, 1.0)
                .to_device(tch::Device::Cpu)
        });
        match (Output { rgb: &rgb, alpha: None, sixteen_bit: false }).save(path) {
            Ok(()) => tracing::debug!(preview = %path.display(), "preview written"),
            Err(e) => tracing::warn!(preview = %path.display(), "cannot write the preview: {e}"),
        }
    }
}

fn produced(image: &ImageRef, bytes: &[u8], summary: Summary) -> anyhow::Result<Produced> {
    let (w, h) = (image.width.unwrap_or(0), image.height.unwrap_or(0));
    let pic = Picture::from_raw(image.format, w, h, image.slice(bytes).map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let alpha = summary.has_alpha.then(|| pic.alpha());
    Ok(Produced { rgb: pic.rgb_tensor(), alpha, summary })
}
