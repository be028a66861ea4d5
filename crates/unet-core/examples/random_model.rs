//! `random_model OUT.bpk [--width 64] [--out-channels 3]`: a model file with random weights,
//! for benchmarks of the full-width architecture (`convert OUT.bpk --onnx ...` exports it).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use unet_core::{FoldedWeights, UnetConfig, model_file};

#[derive(Parser)]
struct Args {
    out: PathBuf,
    #[arg(long, default_value_t = 64)]
    width: usize,
    #[arg(long, default_value_t = 3)]
    out_channels: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let config = UnetConfig::new(3, args.out_channels, args.width);
    model_file::save(
        &FoldedWeights::random(config, 17),
        "random weights",
        None,
        &args.out,
    )?;
    println!(
        "wrote {} ({} parameters)",
        args.out.display(),
        config.num_params()
    );
    Ok(())
}
