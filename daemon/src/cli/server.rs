//! `serve`, `status`, `cancel`, `stop`, `config`: the daemon and the CLI as its client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use neural_style_protocol::socket::socket_path;

use super::args::{request_params, EngineArgs, SocketArg, WeightsArg};
use crate::engine::vgg::Precision;
use crate::engine::weights;
use crate::server::config::{self, Config, OnSignal};
use crate::server::watch::rule::{WatchRule, DEFAULT_DEBOUNCE_MS};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Config file (default: <config dir>/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub socket: SocketArg,
    #[command(flatten)]
    pub weights: WeightsArg,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    #[arg(long)]
    pub threads: Option<i32>,
    /// cuDNN benchmark mode: time every convolution algorithm per new image size (true) or take
    /// cuDNN's heuristics (false). CUDA only.
    #[arg(long)]
    pub cudnn_benchmark: Option<bool>,
    /// Evaluate small scales through CUDA graphs (one launch per evaluation). CUDA only.
    #[arg(long)]
    pub cuda_graphs: Option<bool>,
    /// The L-BFGS history's products by CUDA kernels of our own (true) or by cuBLAS. CUDA only.
    #[arg(long)]
    pub cuda_kernels: Option<bool>,
    /// Largest output in pixels per job.
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Largest input image in pixels.
    #[arg(long)]
    pub max_input_pixels: Option<u64>,
    #[arg(long)]
    pub max_iterations: Option<usize>,
    #[arg(long)]
    pub max_clients: Option<usize>,
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Memory cap of the style-target cache in MiB.
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// On SIGINT/SIGTERM/stop: cancel the running job, or let it finish.
    #[arg(long, value_enum)]
    pub on_signal: Option<OnSignal>,
    /// Skip the warm-up pass at start-up.
    #[arg(long)]
    pub no_warmup: bool,
    /// Watch this folder: images dropped in are stylized (repeat for several rules).
    #[arg(long)]
    pub watch: Vec<PathBuf>,
    /// Style image of the n-th --watch rule (a style.* image in the folder takes precedence).
    #[arg(long)]
    pub style: Vec<PathBuf>,
    /// Output folder of the n-th --watch rule (default <folder>/out).
    #[arg(long)]
    pub out: Vec<PathBuf>,
    /// Watch by polling size and mtime (network shares) instead of file-system events.
    #[arg(long)]
    pub poll: bool,
    /// Leave processed sources in place instead of moving them to done/.
    #[arg(long)]
    pub keep_source: bool,
    /// Output format of watch rules: png or jpg.
    #[arg(long, default_value = "png")]
    pub watch_format: String,
    /// Engine parameters of the --watch rules.
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ServeArgs {
    /// The config file's values with the flags on top.
    pub fn effective(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { c.$field = v; } )* };
        }
        set!(
            device,
            precision,
            max_pixels,
            max_input_pixels,
            max_iterations,
            max_clients,
            max_queue,
            cache_mb,
            on_signal,
            cudnn_benchmark,
            cuda_graphs,
            cuda_kernels
        );
        if self.threads.is_some() {
            c.threads = self.threads;
        }
        // --max-memory is the daemon's per-job limit (clients may ask for less)
        if self.engine.max_memory.is_some() {
            c.max_memory_gb = self.engine.max_memory;
        }
        if self.socket.socket.is_some() {
            c.socket = self.socket.socket.clone();
        }
        if self.weights.weights.is_some() {
            c.weights = self.weights.weights.clone();
        }
        if self.no_warmup {
            c.warmup = false;
        }
        anyhow::ensure!(
            self.style.len() <= self.watch.len() && self.out.len() <= self.watch.len(),
            "--style and --out belong to a --watch folder: give --watch first"
        );
        let params = request_params(&self.engine.params());
        for (i, input) in self.watch.iter().enumerate() {
            c.watch.push(WatchRule {
                input: input.clone(),
                style: self.style.get(i).cloned(),
                output: self.out.get(i).cloned(),
                params: params.clone(),
                keep_source: self.keep_source,
                format: self.watch_format.clone(),
                poll: self.poll,
                debounce_ms: DEFAULT_DEBOUNCE_MS,
            });
        }
        if self.poll {
            for r in &mut c.watch {
                r.poll = true;
            }
        }
        Ok(c)
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.effective()?;
    let weights = WeightsArg { weights: config.weights.clone() }.load()?;
    crate::server::run(config, weights)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    #[arg(long)]
    pub json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = args.socket.connect()?.status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("neural-style {} (protocol {}), pid {}, up {:.0} s", s.version, s.protocol, s.pid, s.uptime_seconds);
    println!("socket:  {}", s.socket);
    println!("device:  {} ({}){}", s.device, s.precision, if s.ready { "" } else { " — loading" });
    let pre = if s.pretrained { "pretrained" } else { "NOT PRETRAINED (random init)" };
    println!("weights: {} — {pre}", s.weights);
    println!("memory:  {:.0} MiB resident", s.rss_bytes as f64 / 1048576.0);
    match &s.running {
        Some(j) => {
            println!("running: job {} {}×{} {}/{} evaluations", j.job, j.width, j.height, j.progress, j.evaluations)
        }
        None => println!("running: nothing"),
    }
    println!("queue:   {} waiting", s.queue.len());
    for (i, j) in s.queue.iter().enumerate() {
        println!("  {i}. job {} {:?} {}×{} {} evaluations", j.job, j.priority, j.width, j.height, j.evaluations);
    }
    println!(
        "jobs:    {} done, {} failed, {} cancelled; {} client(s)",
        s.jobs_done, s.jobs_failed, s.jobs_cancelled, s.clients
    );
    println!(
        "cache:   {} style(s), {:.1} MiB, {} hits, {} misses",
        s.cache_entries,
        s.cache_bytes as f64 / 1048576.0,
        s.cache_hits,
        s.cache_misses
    );
    for (k, v) in &s.extra {
        println!("{k}: {}", serde_json::to_string_pretty(v)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job id (see `neural-style status`).
    pub job: u64,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    args.socket.connect()?.cancel(args.job)?;
    eprintln!("job {} cancelled", args.job);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    args.socket.connect()?.shutdown()?;
    eprintln!("the daemon at {} is stopping", args.socket.path().display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub fn show_config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let c = args.serve.effective()?;
    let file = args.serve.config.clone().or_else(config::default_path);
    println!("# config file: {}", file.map(|p| p.display().to_string()).unwrap_or("(none)".into()));
    println!("# socket:      {}", socket_path(c.socket.as_deref()).display());
    let weights = weights::resolve(c.weights.as_deref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("(missing; expected {})", weights::default_path().unwrap_or_default().display()));
    println!("# weights:     {weights}");
    println!("# data dir:    {}", weights::data_dir().unwrap_or_default().display());
    print!("{}", c.to_toml());
    Ok(ExitCode::SUCCESS)
}
