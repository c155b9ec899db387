//! `neural-style weights …`: fetch the pretrained VGG19, make seeded random weights, convert the
//! author's `vgg_conv.pth`, inspect a file.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Subcommand;

use super::python;
use crate::engine::weights::{self, Weights};

/// The fetch/convert script (runs in the venv's Python with torch and safetensors).
const FETCH_SCRIPT: &str = include_str!("../../../weights/fetch_vgg19.py");

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Download torchvision's pretrained VGG19 (IMAGENET1K_V1), verify its checksum, keep
    /// `features.*` and write safetensors (default: the data directory).
    Fetch {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Download again even when the file exists.
        #[arg(long)]
        force: bool,
        /// Download from another address (a mirror); the checksum is still verified.
        #[arg(long, env = "NEURAL_STYLE_WEIGHTS_URL")]
        url: Option<String>,
    },
    /// Convert a local file: torchvision's `vgg19-dcbb9e9d.pth` or the author's `vgg_conv.pth`
    /// (Caffe preprocessing, recorded in the metadata).
    Convert {
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_parser = ["torchvision", "vgg_conv"], default_value = "torchvision")]
        format: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write torchvision's default initialisation, seeded (labelled pretrained=false).
    Random {
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Do nothing when the file exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Show a weights file's metadata (default: the file that would be used).
    Info {
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the default weights path.
    Path,
}

fn default_out(out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    out.or_else(weights::default_path).context("no home directory to put the weights in; pass --out FILE")
}

fn run_script(args: &[String]) -> anyhow::Result<ExitCode> {
    let script = python::script_file("fetch_vgg19", FETCH_SCRIPT)?;
    let py = python::interpreter();
    let status = Command::new(&py).arg(&script).args(args).status().with_context(|| {
        format!("cannot start {} (set NEURAL_STYLE_PYTHON to the venv's python, or run `make setup`)", py.display())
    })?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

pub fn run(cmd: WeightsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WeightsCommand::Fetch { out, force, url } => {
            let out = default_out(out)?;
            if out.exists() && !force {
                let w = Weights::load(&out)?;
                eprintln!(
                    "weights already present: {} (pretrained={}); --force downloads again",
                    out.display(),
                    w.pretrained
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut args = vec!["--out".to_string(), out.display().to_string()];
            if let Some(url) = url {
                args.extend(["--url".to_string(), url]);
            }
            run_script(&args)
        }
        WeightsCommand::Convert { input, format, out } => {
            let out = default_out(out)?;
            run_script(&[
                "--out".into(),
                out.display().to_string(),
                "--from-file".into(),
                input.display().to_string(),
                "--format".into(),
                format,
            ])
        }
        WeightsCommand::Random { seed, out, if_missing } => {
            if if_missing && out.exists() {
                Weights::load(&out)?;
                eprintln!("random weights already present: {}", out.display());
                return Ok(ExitCode::SUCCESS);
            }
            Weights::random(seed).save(&out)?;
            eprintln!("wrote NOT PRETRAINED VGG19 weights (seed {seed}) to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Info { file, json } => {
            let path = weights::resolve(file.as_deref())?;
            let w = Weights::load(&path)?;
            if json {
                let mut v = serde_json::to_value(w.info())?;
                v["metadata"] = serde_json::to_value(&w.metadata)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("file: {}", path.display());
                println!("pretrained: {}", if w.pretrained { "yes" } else { "NO (random init)" });
                let mut keys: Vec<_> = w.metadata.iter().collect();
                keys.sort();
                for (k, v) in keys {
                    println!("{k}: {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Path => {
            println!("{}", default_out(None)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
