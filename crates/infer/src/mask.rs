//! Mask images (non-zero = tumour, or tissue) that cover a whole slide at any size: PNG or
//! JPEG, or a pyramidal TIFF such as Camelyon16's `_mask.tif`, which is level-0 sized and
//! read at the level nearest the grid it is used on (Camelyon16's evaluation reads its
//! masks' level 5 through OpenSlide).

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::{DynamicImage, GrayImage};
use wsi::Slide;

/// The most pixels read of a TIFF mask: Camelyon's level 5 (~3 000 x 7 000) and more.
const MAX_MASK_PIXELS: u64 = 1 << 25;

/// The mask at `path`, for a grid of `width` x `height` pixels that it covers whole (the
/// mask is scaled to it where it is used). A mask whose shape is not the grid's, beyond its
/// own pixels' rounding, is refused: it is another slide's, or padded, and scaled to this
/// slide it would put tumour or tissue where there is none.
pub fn read(path: &Path, width: f64, height: f64) -> Result<GrayImage> {
    let is_tiff = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"));
    let mask = if is_tiff {
        read_level(path, width, height)?
    } else {
        image::open(path)
            .with_context(|| format!("{}: cannot read the mask image", path.display()))?
            .to_luma8()
    };
    if mask.width() == 0 || mask.height() == 0 {
        bail!("{}: the mask image is empty", path.display());
    }
    let (mask_width, mask_height) = (mask.width() as f64, mask.height() as f64);
    // A mask of the same slide at any downsample rounds each side by under a pixel.
    let tolerance = 1.0 / mask_width + 1.0 / mask_height + 0.01;
    let (mask_aspect, aspect) = (mask_width / mask_height, width / height);
    if (mask_aspect / aspect).ln().abs() > tolerance {
        bail!(
            "{}: the mask is {}x{} (width / height {mask_aspect:.3}), not the shape of the slide ({aspect:.3}): another slide's mask, or one padded?",
            path.display(),
            mask.width(),
            mask.height()
        );
    }
    Ok(mask)
}

/// A pyramidal TIFF mask's coarsest level still as fine as the grid, or the finest level
/// within [`MAX_MASK_PIXELS`] where that one is larger.
fn read_level(path: &Path, width: f64, height: f64) -> Result<GrayImage> {
    let slide = Slide::open(path)
        .with_context(|| format!("{}: cannot read the mask image", path.display()))?;
    let levels = slide.levels();
    let fine_enough = levels
        .iter()
        .rposition(|l| l.width as f64 >= width && l.height as f64 >= height)
        .unwrap_or(0);
    let Some(level) = (fine_enough..levels.len())
        .find(|&l| levels[l].width.saturating_mul(levels[l].height) <= MAX_MASK_PIXELS)
    else {
        let coarsest = levels[levels.len() - 1];
        bail!(
            "{}: the mask's coarsest level is {}x{}, over the {MAX_MASK_PIXELS} pixels a mask is read at: give a pyramidal mask, or a smaller image",
            path.display(),
            coarsest.width,
            coarsest.height
        );
    };
    let size = levels[level];
    let pixels = slide.read_region(level, 0, 0, size.width as u32, size.height as u32)?;
    Ok(DynamicImage::ImageRgb8(pixels).to_luma8())
}
