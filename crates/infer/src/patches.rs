//! `infer patches DIR --out OUT`: the users' `process_patches_directory`: each PNG/JPEG patch
//! to `NAME.prob.png` (u8 `floor(255 p)`) and `NAME.overlay.png` (jet at 60 % over the patch).

use std::path::Path;

use anyhow::{Context, Result, bail};
use unet_core::{Predictor, RgbPatch};

use crate::output::Staged;
use crate::pictures::heatmap;

pub fn run(dir: &Path, out: &Path, predictor: &Predictor, batch: usize) -> Result<()> {
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
    let mut staged = Staged::create(out)?;
    for chunk in inputs.chunks(batch) {
        let images = chunk
            .iter()
            .map(|path| {
                Ok(image::open(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?
                    .to_rgb8())
            })
            .collect::<Result<Vec<_>>>()?;
        // One forward pass per run of same-sized patches (a batch has one size).
        let mut start = 0;
        while start < images.len() {
            let size = images[start].dimensions();
            let end = start
                + images[start..]
                    .iter()
                    .take_while(|i| i.dimensions() == size)
                    .count();
            let patches: Vec<RgbPatch> = images[start..end]
                .iter()
                .map(|i| RgbPatch::new(i.width() as usize, i.height() as usize, i.as_raw()))
                .collect();
            let maps = predictor
                .predict_batch(&patches)
                .with_context(|| format!("{}", chunk[start].display()))?;
            for ((path, image), map) in chunk[start..end].iter().zip(&images[start..end]).zip(maps)
            {
                let stem = crate::pipeline::output_stem(path);
                let grey = image::GrayImage::from_raw(image.width(), image.height(), map.to_u8())
                    .expect("sized");
                staged.write_png(&format!("{stem}.prob.png"), &grey)?;
                staged.write_png(&format!("{stem}.overlay.png"), &heatmap(image, &grey))?;
            }
            start = end;
        }
    }
    let count = inputs.len();
    staged.commit()?;
    output_file::outln!(
        "{count} patches: probability maps and overlays in {}",
        out.display()
    );
    Ok(())
}
