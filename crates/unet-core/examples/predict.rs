//! `predict MODEL INPUT.png OUT.npy [--device cpu|cuda|auto] [--precision f32|f16|bf16|auto]
//! [--engine auto|burn|fused|cpu]`
//!
//! Runs one RGB patch through a converted model and writes the raw sigmoid output as a
//! float32 `.npy` of shape `[C, H, W]`, to compare with PyTorch's output for the same patch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use npyz::WriterBuilder;
use unet_core::{DeviceChoice, EngineChoice, Precision, Predictor, RgbPatch};

#[derive(Parser)]
struct Args {
    /// A converted model file (`cargo run -p convert -- CHECKPOINT.pth`).
    model: PathBuf,
    /// An RGB patch (PNG or JPEG), height and width multiples of 16.
    input: PathBuf,
    /// Where to write the float32 `[C, H, W]` sigmoid output.
    output: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long, default_value = "auto")]
    precision: Precision,
    #[arg(long, default_value = "auto")]
    engine: EngineChoice,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let predictor = Predictor::load(&args.model, args.device, args.precision, args.engine)?;
    let image = image::open(&args.input)
        .with_context(|| format!("{}: cannot read the image", args.input.display()))?
        .to_rgb8();
    let (width, height) = (image.width() as usize, image.height() as usize);
    let patch = RgbPatch::new(width, height, image.as_raw());
    let output = predictor.predict_raw(&[patch])?;
    let channels = predictor.config().out_channels;

    // Written beside OUT.npy and renamed when complete; removed on failure.
    let write = || -> Result<()> {
        let mut file = output_file::beside(&args.output)?;
        let shape = [channels as u64, height as u64, width as u64];
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(std::io::BufWriter::new(&mut file))
            .begin_nd()?;
        writer.extend(output.iter().copied())?;
        writer.finish()?;
        file.persist(&args.output)?;
        Ok(())
    };
    write().with_context(|| format!("{}: cannot write", args.output.display()))?;
    println!(
        "{}: [{channels}, {height}, {width}] sigmoid output on {} ({}, {})",
        args.output.display(),
        predictor.device_name(),
        predictor.precision(),
        predictor.kernel_name()
    );
    Ok(())
}
