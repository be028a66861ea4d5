//! `slide info FILE` and `slide region FILE LEVEL X Y W H OUT.png`, like openslide-tools.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use wsi::Slide;

#[derive(Parser)]
#[command(
    version,
    about = "Inspect whole slides (TIFF, Aperio SVS, DICOM-WSI) and read regions from them"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the slide's vendor, levels, mpp, objective power, associated images, compression,
    /// layout and properties as JSON.
    Info { file: PathBuf },
    /// Write a region of a level (in that level's pixels) as PNG; outside the image is white.
    Region {
        file: PathBuf,
        level: usize,
        x: i64,
        y: i64,
        width: u32,
        height: u32,
        out: PathBuf,
    },
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
    match args.command {
        Command::Info { file } => {
            let slide = Slide::open(&file)?;
            let levels: Vec<_> = slide
                .levels()
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "dimensions": [l.width, l.height],
                        "downsample": l.downsample,
                        "tile": [l.tile_width, l.tile_height],
                    })
                })
                .collect();
            let associated: serde_json::Map<_, _> = slide
                .associated_images()
                .into_iter()
                .map(|(name, width, height)| (name, serde_json::json!([width, height])))
                .collect();
            let info = serde_json::json!({
                "vendor": slide.vendor(),
                "levels": levels,
                "mpp": slide.mpp(),
                "objective_power": slide.objective_power(),
                "associated_images": associated,
                "compression": slide.compression(),
                "layout": slide.layout(),
                "properties": slide.properties(),
            });
            print_json(&info)?;
        }
        Command::Region {
            file,
            level,
            x,
            y,
            width,
            height,
            out,
        } => {
            let slide = Slide::open(&file)?;
            let region = slide.read_region(level, x, y, width, height)?;
            // Written beside OUT and renamed when complete; removed on failure.
            let mut file = output_file::beside(&out)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            region
                .write_to(
                    &mut std::io::BufWriter::new(&mut file),
                    image::ImageFormat::Png,
                )
                .with_context(|| format!("{}: cannot write", out.display()))?;
            file.persist(&out)
                .with_context(|| format!("{}: cannot write", out.display()))?;
        }
    }
    Ok(())
}

/// Prints `value`; a reader that stopped early (`slide info s.tif | head`) is not an error.
fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", serde_json::to_string_pretty(value)?).and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}
