//! `convert UNet_17.pth [--out PATH]`: a PyTorch Camelyon UNet checkpoint in, a Burn model
//! file out (`models/UNet_17.bpk` by default).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::{DType, Device};
use clap::Parser;
use unet_core::{Checkpoint, MODEL_EXTENSION, Unet, model_file};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The PyTorch checkpoint: a state_dict, a training dict holding one, or DataParallel's.
    checkpoint: PathBuf,
    /// Where to write the Burn model [default: models/<checkpoint stem>.bpk].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let checkpoint = Checkpoint::read(&args.checkpoint)?;
    let config = checkpoint.weights.config;
    let prefix = match checkpoint.prefix.as_str() {
        "" => "plain state_dict".to_string(),
        prefix => format!("state_dict under `{prefix}`"),
    };
    println!("read {} ({prefix})", args.checkpoint.display());
    println!(
        "  Camelyon UNet: in_channels {}, out_channels {}, base width {}",
        config.in_channels, config.out_channels, config.base_width
    );
    println!(
        "  {} parameters ({} after folding BatchNorm into the convolutions)",
        checkpoint.torch_parameters,
        config.num_params()
    );
    if !checkpoint.ignored.is_empty() {
        println!(
            "  ignored {} keys: {}",
            checkpoint.ignored.len(),
            summarise(&checkpoint.ignored)
        );
    }

    let out = match args.out {
        Some(out) => out,
        None => default_output(&args.checkpoint)?,
    };
    let model = Unet::from_weights(&checkpoint.weights, &Device::flex(), DType::F32);
    let source = args
        .checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    model_file::save(&model, &config, &source, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `models/<stem>.bpk`, creating `models/` if needed.
fn default_output(checkpoint: &Path) -> Result<PathBuf> {
    let stem = checkpoint
        .file_stem()
        .with_context(|| format!("{}: no file name", checkpoint.display()))?;
    let dir = PathBuf::from("models");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir.join(stem).with_extension(MODEL_EXTENSION))
}

/// A few ignored keys by kind, so optimizer state does not flood the terminal.
fn summarise(keys: &[String]) -> String {
    let batches = keys
        .iter()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    let others: Vec<&str> = keys
        .iter()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .map(|k| k.as_str())
        .collect();
    let mut parts = Vec::new();
    if batches > 0 {
        parts.push(format!("{batches} x num_batches_tracked"));
    }
    if !others.is_empty() {
        let shown = others
            .iter()
            .take(4)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = others.len().saturating_sub(4);
        parts.push(if more > 0 {
            format!("{shown} and {more} more")
        } else {
            shown
        });
    }
    parts.join("; ")
}
