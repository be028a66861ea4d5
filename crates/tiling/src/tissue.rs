//! Which parts of a slide hold tissue, from a low-resolution view of it.
//!
//! H&E tissue is coloured and glass is grey-white, so saturation separates them well:
//! `S = (max - min) / max` per pixel, thresholded by Otsu's method (with a floor, so that an
//! empty slide's noise is not called tissue), then a 3x3 opening removes specks and a 3x3
//! dilation keeps the tissue border. A patch runs when its footprint holds any tissue.

use image::{GrayImage, RgbImage};

use crate::grid::Rect;

/// Saturations below this (of 255) are never tissue, whatever Otsu says.
const MIN_THRESHOLD: u8 = 20;

#[derive(Debug, Clone)]
pub struct TissueMask {
    mask: GrayImage,
    /// Level-0 pixels per mask pixel, across and down.
    scale: (f64, f64),
}

impl TissueMask {
    /// Detects tissue on `view`, an image of the whole slide (`slide_width` x `slide_height`
    /// level-0 pixels) at low resolution.
    pub fn detect(view: &RgbImage, slide_width: u64, slide_height: u64) -> TissueMask {
        let saturation = GrayImage::from_fn(view.width(), view.height(), |x, y| {
            let [r, g, b] = view.get_pixel(x, y).0;
            let (max, min) = (r.max(g).max(b), r.min(g).min(b));
            let s = if max == 0 {
                0
            } else {
                (max - min) as u32 * 255 / max as u32
            };
            image::Luma([s as u8])
        });
        let threshold = otsu(&saturation).max(MIN_THRESHOLD);
        let binary = GrayImage::from_fn(view.width(), view.height(), |x, y| {
            image::Luma([if saturation.get_pixel(x, y).0[0] > threshold {
                255
            } else {
                0
            }])
        });
        let cleaned = dilate(&dilate(&erode(&binary)));
        Self::from_mask(cleaned, slide_width, slide_height)
    }

    /// A mask given by the user (any size, scaled to the slide): non-zero pixels are tissue.
    pub fn from_mask(mask: GrayImage, slide_width: u64, slide_height: u64) -> TissueMask {
        let scale = (
            slide_width as f64 / mask.width().max(1) as f64,
            slide_height as f64 / mask.height().max(1) as f64,
        );
        TissueMask { mask, scale }
    }

    /// Whether the level-0 rectangle holds any tissue.
    pub fn holds_tissue(&self, rect: Rect) -> bool {
        let (w, h) = (self.mask.width() as u64, self.mask.height() as u64);
        let x0 = ((rect.x as f64 / self.scale.0).floor() as u64).min(w);
        let y0 = ((rect.y as f64 / self.scale.1).floor() as u64).min(h);
        let x1 = (((rect.x + rect.width) as f64 / self.scale.0).ceil() as u64).min(w);
        let y1 = (((rect.y + rect.height) as f64 / self.scale.1).ceil() as u64).min(h);
        (y0..y1).any(|y| (x0..x1).any(|x| self.mask.get_pixel(x as u32, y as u32).0[0] != 0))
    }

    /// Fraction of the mask that is tissue.
    pub fn fraction(&self) -> f64 {
        let tissue = self.mask.pixels().filter(|p| p.0[0] != 0).count();
        tissue as f64 / (self.mask.width() as f64 * self.mask.height() as f64).max(1.0)
    }
}

/// Otsu's threshold: the grey level that maximises the between-class variance.
fn otsu(image: &GrayImage) -> u8 {
    let mut histogram = [0u64; 256];
    for p in image.pixels() {
        histogram[p.0[0] as usize] += 1;
    }
    let total: u64 = histogram.iter().sum();
    let sum_all: f64 = histogram
        .iter()
        .enumerate()
        .map(|(i, &n)| i as f64 * n as f64)
        .sum();
    let (mut weight_below, mut sum_below) = (0u64, 0f64);
    let (mut best, mut best_variance) = (0u8, -1f64);
    for (level, &count) in histogram.iter().enumerate() {
        weight_below += count;
        sum_below += level as f64 * count as f64;
        let weight_above = total - weight_below;
        if weight_below == 0 || weight_above == 0 {
            continue;
        }
        let mean_below = sum_below / weight_below as f64;
        let mean_above = (sum_all - sum_below) / weight_above as f64;
        let variance =
            weight_below as f64 * weight_above as f64 * (mean_below - mean_above).powi(2);
        if variance > best_variance {
            (best, best_variance) = (level as u8, variance);
        }
    }
    best
}

/// 3x3 minimum (the border counts as set, so edges do not erode inward).
fn erode(image: &GrayImage) -> GrayImage {
    neighbourhood(image, |a, b| a.min(b), 255)
}

/// 3x3 maximum.
fn dilate(image: &GrayImage) -> GrayImage {
    neighbourhood(image, |a, b| a.max(b), 0)
}

fn neighbourhood(image: &GrayImage, combine: fn(u8, u8) -> u8, outside: u8) -> GrayImage {
    let (w, h) = (image.width() as i64, image.height() as i64);
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let mut value = image.get_pixel(x, y).0[0];
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                let neighbour = if nx < 0 || ny < 0 || nx >= w || ny >= h {
                    outside
                } else {
                    image.get_pixel(nx as u32, ny as u32).0[0]
                };
                value = combine(value, neighbour);
            }
        }
        image::Luma([value])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stained_blob_on_glass_is_tissue_and_specks_are_not() {
        // Glass (near-white grey) with a pink 20x20 blob and a single pink speck.
        let mut view = RgbImage::from_pixel(100, 80, image::Rgb([236, 236, 238]));
        for y in 30..50 {
            for x in 40..60 {
                view.put_pixel(x, y, image::Rgb([200, 120, 170]));
            }
        }
        view.put_pixel(5, 5, image::Rgb([200, 120, 170]));
        let mask = TissueMask::detect(&view, 1000, 800);
        let rect = |x, y| Rect {
            x,
            y,
            width: 100,
            height: 100,
        };
        assert!(mask.holds_tissue(rect(450, 350)));
        assert!(!mask.holds_tissue(rect(0, 0)), "the speck is cleaned away");
        assert!(!mask.holds_tissue(rect(800, 600)));
        assert!(
            mask.fraction() > 0.04 && mask.fraction() < 0.1,
            "{}",
            mask.fraction()
        );
    }
}
