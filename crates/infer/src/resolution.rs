//! The resolution a slide is analysed at: the model's. A model trained on 0.5 µm/px patches
//! must see 0.5 µm/px patches whatever the scanner wrote, so each slide is read from the
//! pyramid level just finer than the model's resolution and area-averaged down to it. The
//! analysis grid is that resampled image; everything written is placed back in level-0
//! coordinates through [`Analysis::scale`].

use anyhow::{Result, bail};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use tiling::Rect;
use wsi::Slide;

/// Resolutions within this ratio of each other are treated as equal (scanners round their
/// mpp, and 0.243 vs 0.25 µm/px is the same model input for every practical purpose).
const SAME_RESOLUTION: f64 = 1.1;

/// How one slide is read for the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// The slide's level-0 resolution, µm per pixel (None: unknown, and the model records
    /// none either).
    pub slide_mpp: Option<f64>,
    /// The model's training resolution, µm per pixel (None: the model file records none;
    /// the slide is read at level 0 as it is).
    pub model_mpp: Option<f64>,
    /// The pyramid level read.
    pub level: usize,
    /// Level pixels per analysis pixel: 1 when the level is read as it is, above 1 when it is
    /// area-averaged down.
    pub resample: f64,
    /// Level-0 pixels per analysis pixel.
    pub scale: f64,
    /// The whole slide in analysis pixels.
    pub width: u64,
    pub height: u64,
}

impl Analysis {
    /// Where `slide` is read from for a model trained at `model_mpp`; `slide_mpp` overrides
    /// the slide's own. Refuses a slide without a resolution and a slide coarser than the
    /// model's (upsampling would invent detail the model never saw).
    pub fn plan(slide: &Slide, slide_mpp: Option<f64>, model_mpp: Option<f64>) -> Result<Analysis> {
        let levels = slide.levels();
        let base = levels[0];
        let from_file = slide_mpp.is_none();
        let slide_mpp = slide_mpp.or(slide.mpp());
        let level0 = Analysis {
            slide_mpp,
            model_mpp,
            level: 0,
            resample: 1.0,
            scale: 1.0,
            width: base.width,
            height: base.height,
        };
        let Some(model_mpp) = model_mpp else {
            return Ok(level0);
        };
        let Some(slide_mpp) = slide_mpp else {
            bail!(
                "the slide records no resolution (µm per pixel) and the model was trained at {} µm/px: give the slide's with --slide-mpp (or the manifest's `mpp` column)",
                microns(model_mpp)
            );
        };
        // Level-0 pixels per model pixel.
        let wanted = model_mpp / slide_mpp;
        if wanted < 1.0 / SAME_RESOLUTION {
            // Image editors write 72 or 96 dpi (353 or 265 µm/px) when they know no better.
            let wrong_file = if from_file {
                "; if the file's resolution is wrong (an image editor's 72 or 96 dpi is 353 or 265 µm/px), give the slide's with --slide-mpp"
            } else {
                ""
            };
            bail!(
                "the slide is {} µm/px, coarser than the model's {} µm/px by more than {:.0} %: upsampling would invent detail the model never saw (a model trained at this resolution, or --model-mpp, is needed){wrong_file}",
                microns(slide_mpp),
                microns(model_mpp),
                (SAME_RESOLUTION - 1.0) * 100.0
            );
        }
        if wanted <= SAME_RESOLUTION {
            return Ok(level0);
        }
        // The coarsest level still at least as fine as the model (within the tolerance).
        let level = (0..levels.len())
            .rev()
            .find(|&l| levels[l].downsample <= wanted * SAME_RESOLUTION)
            .unwrap_or(0);
        let read = levels[level];
        let resample = wanted / read.downsample;
        if resample <= SAME_RESOLUTION {
            return Ok(Analysis {
                level,
                scale: read.downsample,
                width: read.width,
                height: read.height,
                ..level0
            });
        }
        let side = |level_side: u64| ((level_side as f64 / resample).floor() as u64).max(1);
        Ok(Analysis {
            level,
            resample,
            scale: read.downsample * resample,
            width: side(read.width),
            height: side(read.height),
            ..level0
        })
    }

    /// Refuses a `side` x `side` patch whose read is over the slide reader's limit
    /// ([`wsi::MAX_REGION_BYTES`]): a patch side far beyond any model's, or a model far
    /// coarser than the slide's coarsest level (mostly a slip of units in an mpp).
    pub fn check_patch(&self, side: u64) -> Result<()> {
        // As `read_patch` reads: whole level pixels around the fractional extent.
        let span = if self.resample == 1.0 {
            side
        } else {
            (side as f64 * self.resample).ceil() as u64 + 1
        };
        let limit = wsi::MAX_REGION_BYTES;
        if span.saturating_mul(span).saturating_mul(3) <= limit {
            return Ok(());
        }
        let mib = limit >> 20;
        match (self.slide_mpp, self.model_mpp) {
            (Some(slide_mpp), Some(model_mpp)) if self.resample != 1.0 => bail!(
                "a {side}-pixel patch at the model's {} µm/px covers {span}x{span} pixels of level {} ({} µm/px, the slide's level nearest it), more than the slide reader takes at once ({mib} MiB): check --model-mpp and --slide-mpp (µm per pixel), or use a smaller --patch",
                microns(model_mpp),
                self.level,
                microns(slide_mpp * self.scale / self.resample),
            ),
            _ => bail!(
                "--patch {side}: a patch is read whole, and {side}x{side} pixels are more than the slide reader takes at once ({mib} MiB): use a smaller --patch"
            ),
        }
    }

    /// The resolution of the analysis grid (and of the probability map), µm per pixel.
    pub fn mpp(&self) -> Option<f64> {
        self.slide_mpp.map(|mpp| mpp * self.scale)
    }

    /// A rectangle of analysis pixels in level-0 pixels.
    pub fn to_level0(&self, rect: Rect) -> Rect {
        let at = |v: u64| (v as f64 * self.scale).round() as u64;
        Rect {
            x: at(rect.x),
            y: at(rect.y),
            width: at(rect.width).max(1),
            height: at(rect.height).max(1),
        }
    }

    /// A rectangle of level-0 pixels in analysis pixels (within the analysis image).
    pub fn from_level0(&self, rect: Rect) -> Rect {
        let at = |v: u64| (v as f64 / self.scale).round() as u64;
        let (x, y) = (
            at(rect.x).min(self.width - 1),
            at(rect.y).min(self.height - 1),
        );
        Rect {
            x,
            y,
            width: at(rect.width).clamp(1, self.width - x),
            height: at(rect.height).clamp(1, self.height - y),
        }
    }

    /// The `side` x `side` analysis patch at (`x`, `y`); past the slide's edge its edge pixels
    /// repeat.
    pub fn read_patch(&self, slide: &Slide, x: u64, y: u64, side: u32) -> Result<RgbImage> {
        if self.resample == 1.0 {
            return Ok(slide.read_region_extended(self.level, x, y, side, side)?);
        }
        // The level pixels under the patch, whole pixels around its fractional extent.
        let r = self.resample;
        let (x0, y0) = (x as f64 * r, y as f64 * r);
        let (left, top) = (x0.floor() as u64, y0.floor() as u64);
        let span = |start: f64| ((start + side as f64 * r).ceil() - start.floor()) as u32;
        let source = slide.read_region_extended(self.level, left, top, span(x0), span(y0))?;
        Ok(area_average(
            &source,
            (x0 - left as f64, y0 - top as f64),
            r,
            side,
        ))
    }
}

/// µm per pixel for a message: 0.243 rather than 0.24300000977695352.
fn microns(mpp: f64) -> String {
    if mpp < 0.01 {
        return format!("{mpp:e}");
    }
    let text = format!("{mpp:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `side` x `side` pixels, each the mean of the `r` x `r` source area it covers (fractions of
/// source pixels weighted by the fraction covered), the first starting at `origin` in `source`.
fn area_average(source: &RgbImage, origin: (f64, f64), r: f64, side: u32) -> RgbImage {
    let columns = coverage(origin.0, r, side, source.width());
    let rows = coverage(origin.1, r, side, source.height());
    // Horizontal pass: every source row to `side` columns.
    let width = source.width() as usize;
    let mut across = vec![0f32; source.height() as usize * side as usize * 3];
    for (y, row) in source.as_raw().chunks_exact(width * 3).enumerate() {
        let out = &mut across[y * side as usize * 3..][..side as usize * 3];
        for (i, weights) in columns.iter().enumerate() {
            for &(k, w) in weights {
                for c in 0..3 {
                    out[i * 3 + c] += w * row[k * 3 + c] as f32;
                }
            }
        }
    }
    // Vertical pass.
    let mut out = RgbImage::new(side, side);
    let stride = side as usize * 3;
    for (j, weights) in rows.iter().enumerate() {
        let mut sum = vec![0f32; stride];
        for &(k, w) in weights {
            for (s, v) in sum.iter_mut().zip(&across[k * stride..][..stride]) {
                *s += w * v;
            }
        }
        let row = &mut out.as_mut()[j * stride..][..stride];
        for (o, s) in row.iter_mut().zip(sum) {
            *o = s.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// For each of `count` output pixels covering [start + i r, start + (i + 1) r) of a source
/// of `len` pixels: the source pixels it covers and their weights, the fraction of it each
/// covers (summing to 1; where the source ends early, over the part it has).
fn coverage(start: f64, r: f64, count: u32, len: u32) -> Vec<Vec<(usize, f32)>> {
    (0..count)
        .map(|i| {
            let (from, to) = (start + i as f64 * r, start + (i + 1) as f64 * r);
            let last = (to.ceil() as u32).min(len);
            let covered: Vec<(usize, f64)> = (from.floor() as u32..last)
                .map(|k| {
                    let part = to.min(k as f64 + 1.0) - from.max(k as f64);
                    (k as usize, part)
                })
                .filter(|&(_, part)| part > 0.0)
                .collect();
            let total: f64 = covered.iter().map(|&(_, part)| part).sum();
            covered
                .into_iter()
                .map(|(k, part)| (k, (part / total) as f32))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pixel repeated 2 x 2, averaged 2 x 2: the original exactly.
    #[test]
    fn averaging_a_doubled_image_gives_it_back() {
        let original = RgbImage::from_fn(5, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 7]));
        let doubled = RgbImage::from_fn(10, 10, |x, y| *original.get_pixel(x / 2, y / 2));
        assert_eq!(area_average(&doubled, (0.0, 0.0), 2.0, 5), original);
    }

    /// A fractional ratio weights the pixels it half covers by half: 1.5 source pixels per
    /// output pixel over 0, 90, 180: (0 + 45) / 1.5 = 30, then (45 + 180) / 1.5 = 150.
    #[test]
    fn fractional_coverage_weights_partial_pixels() {
        let source = RgbImage::from_fn(3, 1, |x, _| image::Rgb([x as u8 * 90; 3]));
        let averaged = area_average(&source, (0.0, 0.0), 1.5, 1);
        assert_eq!(averaged.get_pixel(0, 0).0, [30; 3]);
        let weights = coverage(0.0, 1.5, 2, 3);
        assert_eq!(weights[1], vec![(1, 1.0 / 3.0), (2, 2.0 / 3.0)]);
    }
}
