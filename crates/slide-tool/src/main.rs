//! `slide info FILE`, `slide region FILE LEVEL X Y W H OUT.png` and
//! `slide thumbnail FILE SIDE OUT.png`, like openslide-tools.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use image::{ImageFormat, RgbImage};
use wsi::Slide;

#[derive(Parser)]
#[command(
    version,
    about = "Inspect whole slides (TIFF, Aperio SVS, DICOM-WSI) and read regions and thumbnails from them"
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
    /// Write a region of a level (in that level's pixels; X and Y may be negative) as PNG or
    /// JPEG, as OUT's extension says; outside the image is white.
    #[command(allow_negative_numbers = true)]
    Region {
        file: PathBuf,
        level: usize,
        x: i64,
        y: i64,
        width: u32,
        height: u32,
        out: PathBuf,
    },
    /// Write the whole slide scaled to fit SIDE x SIDE (up to 16384) as PNG or JPEG, from the
    /// smallest level at least that size (read in bands: a slide without a pyramid too).
    Thumbnail {
        file: PathBuf,
        #[arg(value_parser = clap::value_parser!(u32).range(1..=16384))]
        side: u32,
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
            let format = picture_format(&out)?;
            let region = Slide::open(&file)?.read_region(level, x, y, width, height)?;
            write_picture(&region, &out, format)?;
        }
        Command::Thumbnail { file, side, out } => {
            let format = picture_format(&out)?;
            write_picture(&Slide::open(&file)?.thumbnail(side)?, &out, format)?;
        }
    }
    Ok(())
}

/// The picture format OUT's extension names: PNG or JPEG.
fn picture_format(out: &Path) -> Result<ImageFormat> {
    match ImageFormat::from_path(out) {
        Ok(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => Ok(format),
        _ => bail!("{}: write a .png or a .jpg", out.display()),
    }
}

/// Writes `picture` beside `out` and renames it when complete (removed on failure).
fn write_picture(picture: &RgbImage, out: &Path, format: ImageFormat) -> Result<()> {
    let cannot_write = || format!("{}: cannot write", out.display());
    let mut file = output_file::beside(out).with_context(cannot_write)?;
    let mut writer = std::io::BufWriter::new(&mut file);
    picture
        .write_to(&mut writer, format)
        .with_context(cannot_write)?;
    // Flushed here, where a full disk is an error, not on drop, where it would be lost.
    writer.flush().with_context(cannot_write)?;
    drop(writer);
    file.persist(out).with_context(cannot_write)?;
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
