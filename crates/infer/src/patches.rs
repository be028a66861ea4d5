//! `infer patches DIR --out OUT`: the users' `process_patches_directory`: each PNG/JPEG patch
//! to `NAME.prob.png` (u8 `floor(255 p)`) and `NAME.overlay.png` (jet at 60 % over the patch).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use unet_core::{Predictor, RgbPatch, SIDE_MULTIPLE, is_patch_side};

use crate::output::Staged;
use crate::pictures::heatmap;
use crate::pipeline::output_stem;

/// Every patch in `dir` through `predictor`, `batch` at a time, into `out`. A patch that
/// cannot be read, or whose sides are not multiples of 16, is reported and passed over, as a
/// cohort's failing slide is; returns how many were. `stop` (Ctrl-C, a scheduler's SIGTERM)
/// ends the run between batches, leaving nothing written.
pub fn run(
    dir: &Path,
    out: &Path,
    predictor: &Predictor,
    batch: usize,
    stop: &AtomicBool,
) -> Result<usize> {
    let mut inputs: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension().is_some_and(|e| {
                ["png", "jpg", "jpeg"].contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
            })
        })
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        bail!("{}: no PNG or JPEG patches", dir.display());
    }
    // `a.png` and `a.jpg` would both write `a.prob.png`: refused before any patch runs.
    let mut stems: HashMap<String, &Path> = HashMap::new();
    for path in &inputs {
        if let Some(first) = stems.insert(output_stem(path), path) {
            bail!(
                "{} and {} would both be written as {}.prob.png: rename one",
                first.display(),
                path.display(),
                output_stem(path)
            );
        }
    }
    let mut staged = Staged::create(out)?;
    let mut failed = 0;
    for chunk in inputs.chunks(batch) {
        if stop.load(Ordering::Relaxed) {
            bail!("no output written: interrupted");
        }
        let mut images = Vec::with_capacity(chunk.len());
        for path in chunk {
            match read_patch(path) {
                Ok(image) => images.push((path, image)),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    failed += 1;
                }
            }
        }
        // One forward pass per run of same-sized patches (a batch has one size).
        for same_size in images.chunk_by(|a, b| a.1.dimensions() == b.1.dimensions()) {
            let patches: Vec<RgbPatch> = same_size
                .iter()
                .map(|(_, i)| RgbPatch::new(i.width() as usize, i.height() as usize, i.as_raw()))
                .collect();
            let maps = predictor
                .predict_batch(&patches)
                .with_context(|| format!("{}", same_size[0].0.display()))?;
            for ((path, image), map) in same_size.iter().zip(maps) {
                let stem = output_stem(path);
                let grey = image::GrayImage::from_raw(image.width(), image.height(), map.to_u8())
                    .expect("sized");
                staged.write_png(&format!("{stem}.prob.png"), &grey)?;
                staged.write_png(&format!("{stem}.overlay.png"), &heatmap(image, &grey))?;
            }
        }
    }
    let done = inputs.len() - failed;
    if done == 0 {
        bail!(
            "{}: none of the {failed} patches could be run",
            dir.display()
        );
    }
    staged.commit()?;
    let failures = match failed {
        0 => String::new(),
        _ => format!("; {failed} could not be run (see above)"),
    };
    let patches = if done == 1 { "patch" } else { "patches" };
    output_file::outln!(
        "{done} {patches}: probability maps and overlays in {}{failures}",
        out.display()
    );
    Ok(failed)
}

/// A patch as the model takes it: RGB, each side a positive multiple of 16.
fn read_patch(path: &Path) -> Result<RgbImage> {
    let image = image::open(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .to_rgb8();
    let (width, height) = image.dimensions();
    if !(is_patch_side(width.into()) && is_patch_side(height.into())) {
        bail!(
            "{}: a {width}x{height} patch; each side must be a multiple of {SIDE_MULTIPLE} (the UNet pools four times)",
            path.display()
        );
    }
    Ok(image)
}
