//! The `neural-style` command line: flags (clap), logging, dispatch. Errors end here as
//! messages that say what happened and what to do, and a non-zero exit code.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod args;
mod bench;
pub mod python;
mod run;
mod samples;
mod server;
mod weights;

#[derive(Parser, Debug)]
#[command(name = "neural-style", version, about = "Gatys et al. neural style transfer (VGG19, libtorch)")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stylize one content image with one or more style images.
    Run(Box<run::RunArgs>),
    /// Manage VGG19 weights: fetch the pretrained ones, make random ones, inspect a file.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Benchmarks against PyTorch in the same run: one evaluation, the loop, the daemon, time to
    /// loss, the schedule suite.
    Bench(Box<bench::BenchArgs>),
    /// Draw a sample content and style image (for trying things out without images at hand).
    Samples(samples::SamplesArgs),
    /// Run the daemon: VGG19 stays loaded and serves jobs over a local socket.
    Serve(Box<server::ServeArgs>),
    /// Show the daemon's state: device, weights, running job, queue, cache.
    Status(server::StatusArgs),
    /// Cancel a job of the daemon.
    Cancel(server::CancelArgs),
    /// Stop the daemon.
    Stop(server::StopArgs),
    /// Print the effective daemon configuration and paths.
    Config(Box<server::ConfigArgs>),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // engine flags get their defaults (and --help shows them) from Params::default()
    let matches = args::with_param_defaults(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(*args),
        Command::Samples(args) => samples::run(args),
        Command::Serve(args) => server::serve(*args),
        Command::Status(args) => server::status(args),
        Command::Cancel(args) => server::cancel(args),
        Command::Stop(args) => server::stop(args),
        Command::Config(args) => server::show_config(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
