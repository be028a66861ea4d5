//! `synthetic_slide OUT.tif [--width 20000] [--height 20000]`: an H&E-like pyramidal TIFF
//! (deflate tiles, 0.243 um/px) made in bounded memory, for end-to-end runs on machines where
//! nothing can be generated with Python (`tools/gpu-check.sh`). Tissue is a few textured pink
//! and purple blobs on near-white glass, so tissue detection has something to find.

use std::path::PathBuf;

use clap::Parser;
use wsi::{Channels, PyramidWriter, WriterOptions};

/// An H&E-like pyramidal TIFF, made in bounded memory.
#[derive(Parser)]
struct Args {
    /// The TIFF to write.
    out: PathBuf,
    /// Its width in pixels.
    #[arg(long, default_value_t = 20_000)]
    width: u64,
    /// Its height in pixels.
    #[arg(long, default_value_t = 20_000)]
    height: u64,
}

fn main() -> anyhow::Result<()> {
    let Args { out, width, height } = Args::parse();
    let options = WriterOptions {
        tile: 512,
        mpp: Some(0.243),
        deflate_level: 1,
        ..WriterOptions::default()
    };
    let mut writer = PyramidWriter::create(&out, width, height, Channels::Rgb, options)?;
    // Blobs: centre and radii as fractions of the slide.
    let blobs = [
        (0.3, 0.35, 0.22, 0.18),
        (0.65, 0.6, 0.2, 0.25),
        (0.45, 0.8, 0.12, 0.1),
    ];
    let rows_per_band = 256;
    let mut band = Vec::with_capacity((width * rows_per_band * 3) as usize);
    for y0 in (0..height).step_by(rows_per_band as usize) {
        band.clear();
        for y in y0..(y0 + rows_per_band).min(height) {
            for x in 0..width {
                let (fx, fy) = (x as f64 / width as f64, y as f64 / height as f64);
                let inside = blobs.iter().any(|&(cx, cy, rx, ry)| {
                    ((fx - cx) / rx).powi(2) + ((fy - cy) / ry).powi(2) < 1.0
                });
                let pixel = if inside {
                    let t = ((x as f64 * 0.05).sin() * (y as f64 * 0.07).cos() + 1.0) * 0.5;
                    let nuclei = ((x / 9 + y / 7) % 11 == 0) as u8 * 60;
                    [
                        (200.0 - 40.0 * t) as u8 - nuclei,
                        (120.0 - 30.0 * t) as u8 - nuclei / 2,
                        (180.0 - 10.0 * t) as u8,
                    ]
                } else {
                    [238, 236, 240]
                };
                band.extend_from_slice(&pixel);
            }
        }
        writer.write_rows(&band)?;
    }
    writer.finish()?;
    println!("wrote {} ({width}x{height})", out.display());
    Ok(())
}
