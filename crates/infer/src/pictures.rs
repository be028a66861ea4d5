//! What a person looks at: the probability map at low resolution, the heatmap overlay, and
//! the charts' font.

use image::{GrayImage, RgbImage};
use plotters::style::FontStyle;

/// The charts' font (DejaVu Sans Mono, its licence beside it).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Registers the charts' font as plotters' "sans-serif" (charts are drawn without system fonts).
pub fn register_font() -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the chart font does not load"))
}

/// The probability map at low resolution, averaged from level-0 rows as they are emitted.
pub struct LowResolutionMap {
    /// Level-0 pixels per map pixel.
    pub downsample: f64,
    width: usize,
    height: usize,
    sum: Vec<u32>,
    count: Vec<u32>,
}

impl LowResolutionMap {
    pub fn new(region_width: u64, region_height: u64, downsample: f64) -> Self {
        let width = ((region_width as f64 / downsample).ceil() as usize).max(1);
        let height = ((region_height as f64 / downsample).ceil() as usize).max(1);
        Self {
            downsample,
            width,
            height,
            sum: vec![0; width * height],
            count: vec![0; width * height],
        }
    }

    /// Adds region row `y` (level-0 pixels from the region's left edge).
    pub fn add_row(&mut self, y: u64, row: &[u8]) {
        let my = ((y as f64 / self.downsample) as usize).min(self.height - 1);
        let line = my * self.width;
        for (x, &value) in row.iter().enumerate() {
            let mx = ((x as f64 / self.downsample) as usize).min(self.width - 1);
            self.sum[line + mx] += value as u32;
            self.count[line + mx] += 1;
        }
    }

    pub fn to_image(&self) -> GrayImage {
        let pixels = self
            .sum
            .iter()
            .zip(&self.count)
            .map(|(&s, &c)| (s + c / 2).checked_div(c).unwrap_or(0) as u8)
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, pixels).expect("sized")
    }
}

/// OpenCV's `COLORMAP_JET`, as the users' pipeline applied it: blue (0) to red (255).
pub fn jet(value: u8) -> [u8; 3] {
    let x = value as f32 / 255.0;
    let channel =
        |centre: f32| ((1.5 - (4.0 * x - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The jet-coloured map at 60 % over the slide at 40 %.
pub fn heatmap(slide: &RgbImage, map: &GrayImage) -> RgbImage {
    let map = image::imageops::resize(
        map,
        slide.width(),
        slide.height(),
        image::imageops::FilterType::Triangle,
    );
    RgbImage::from_fn(slide.width(), slide.height(), |x, y| {
        let colour = jet(map.get_pixel(x, y).0[0]);
        let under = slide.get_pixel(x, y).0;
        image::Rgb(
            [0, 1, 2].map(|c| (0.6 * colour[c] as f32 + 0.4 * under[c] as f32).round() as u8),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0), [0, 0, 128]);
        assert_eq!(jet(255), [128, 0, 0]);
        let middle = jet(128);
        assert!(
            middle[1] == 255 && middle[0] > 100 && middle[2] > 100,
            "{middle:?}"
        );
    }
}
