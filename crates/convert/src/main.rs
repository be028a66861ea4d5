//! `convert UNet_17.pth [--out PATH]`: a PyTorch Camelyon UNet checkpoint in, a Burn model
//! file out (`models/UNet_17.bpk` by default).
//! `convert UNet_17.pth --onnx model.onnx [--onnx-fp16]`: the same model as ONNX instead; the
//! input may also be a converted `.bpk`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use unet_core::{Checkpoint, FoldedWeights, MODEL_EXTENSION, model_file};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// A PyTorch checkpoint (a state_dict, a training dict holding one, or DataParallel's),
    /// or, with --onnx, a converted model file (.bpk).
    input: PathBuf,
    /// Where to write the Burn model, named *.bpk [default: models/<input stem>.bpk].
    #[arg(long, conflicts_with = "onnx")]
    out: Option<PathBuf>,
    /// Write the model as ONNX (opset 17) to this path instead of a Burn model.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// With --onnx: float16 weights and activations (the interface stays float32).
    #[arg(long, requires = "onnx")]
    onnx_fp16: bool,
    /// The resolution the model was trained at, µm per pixel (Camelyon's level 0: about
    /// 0.243; level 1: 0.486). Recorded in the model file: `infer` reads slides at it.
    #[arg(long, conflicts_with = "onnx", value_parser = model_file::parse_mpp)]
    mpp: Option<f64>,
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
    // The `.bpk` name also keeps the checkpoint, never a `.bpk` here, from being written over.
    if let Some(out) = args.out.as_ref()
        && out.extension().is_none_or(|e| e != MODEL_EXTENSION)
    {
        bail!(
            "--out {}: a converted model is named *.{MODEL_EXTENSION} (`convert` tells a model from a checkpoint by it)",
            out.display()
        );
    }
    if let Some(onnx) = args.onnx.as_ref()
        && is_same_file(onnx, &args.input)
    {
        bail!(
            "--onnx {}: that is the input, which it would write over",
            onnx.display()
        );
    }
    let is_model_file = args.input.extension().is_some_and(|e| e == MODEL_EXTENSION);
    let weights = if is_model_file {
        if args.onnx.is_none() {
            bail!(
                "{}: already a converted model; give --onnx PATH to export it",
                args.input.display()
            );
        }
        let weights = model_file::read_weights(&args.input)?;
        output_file::outln!("read {} (converted model)", args.input.display());
        weights
    } else {
        read_checkpoint(&args.input)?
    };
    let config = weights.config;
    output_file::outln!(
        "  Camelyon UNet: in_channels {}, out_channels {}, base width {}",
        config.in_channels,
        config.out_channels,
        config.base_width
    );

    if let Some(onnx) = &args.onnx {
        let precision = if args.onnx_fp16 {
            onnx_export::Precision::F16
        } else {
            onnx_export::Precision::F32
        };
        onnx_export::write(&weights, precision, onnx)?;
        output_file::outln!(
            "wrote {} (ONNX opset {}, {precision:?})",
            onnx.display(),
            onnx_export::OPSET
        );
        return Ok(());
    }
    let out = match args.out {
        Some(out) => out,
        None => default_output(&args.input)?,
    };
    let source = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    model_file::save(&weights, &source, args.mpp, &out)?;
    match args.mpp {
        Some(mpp) => output_file::outln!("wrote {} (trained at {mpp} µm/px)", out.display()),
        None => output_file::outln!(
            "wrote {} (no training resolution: give --mpp so that `infer` reads slides at it)",
            out.display()
        ),
    }
    Ok(())
}

/// Whether `a` and `b` are one file (`b` exists; `a` may not yet).
fn is_same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads a PyTorch checkpoint and says what it found.
fn read_checkpoint(path: &Path) -> Result<FoldedWeights> {
    let checkpoint = Checkpoint::read(path)?;
    let prefix = match checkpoint.prefix.as_str() {
        "" => "plain state_dict".to_string(),
        prefix => format!("state_dict under `{prefix}`"),
    };
    output_file::outln!("read {} ({prefix})", path.display());
    output_file::outln!(
        "  {} parameters ({} after folding BatchNorm into the convolutions)",
        checkpoint.torch_parameters,
        checkpoint.weights.config.num_params()
    );
    if !checkpoint.ignored.is_empty() {
        output_file::outln!(
            "  ignored {} keys: {}",
            checkpoint.ignored.len(),
            summarise(&checkpoint.ignored)
        );
    }
    if !checkpoint.suspicious.is_empty() {
        // Python's torch.load would call these; our reader never calls anything.
        output_file::outln!(
            "  ignored as suspicious, never called: {} (code the pickle would run in Python)",
            checkpoint.suspicious.join(", ")
        );
    }
    Ok(checkpoint.weights)
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
