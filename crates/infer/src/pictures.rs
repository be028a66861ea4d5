//! What a person looks at: the probability map at low resolution, the heatmap overlay, and
//! the charts' font.

use std::io::Write;
use std::ops::Range;

use anyhow::Context;
use image::{GrayImage, RgbImage};
use plotters::style::FontStyle;

/// The charts' font (DejaVu Sans Mono, its licence beside it).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Registers the charts' font as plotters' "sans-serif" (charts are drawn without system fonts).
pub fn register_font() -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the chart font does not load"))
}

/// The probability map at low resolution, averaged from level-0 rows as they are emitted,
/// and the highest level-0 value behind each of its pixels (what the contours report).
pub struct LowResolutionMap {
    /// Level-0 pixels per map pixel.
    pub downsample: f64,
    width: usize,
    height: usize,
    region_height: u64,
    /// The map, row-major: each map row is written once, when its last region row arrives.
    pixels: Vec<u8>,
    /// The highest region pixel of each map pixel, written with it.
    peaks: Vec<u8>,
    /// Where each map column's run of region columns starts, and past the last one's end.
    runs: Vec<usize>,
    /// The region rows of the map row being built, summed and maxed column by column (two
    /// vector passes a row; the runs are reduced once a map row).
    rows: Vec<u32>,
    row_peaks: Vec<u8>,
    rows_added: u32,
    /// Map rows final so far (handed out by `add_row`).
    finished: usize,
}

impl LowResolutionMap {
    pub fn new(region_width: u64, region_height: u64, downsample: f64) -> Self {
        let width = ((region_width as f64 / downsample).ceil() as usize).max(1);
        let height = ((region_height as f64 / downsample).ceil() as usize).max(1);
        // Column x falls in map column floor(x / downsample), the last one taking the rest;
        // the columns never decrease along a row, so each map column takes one run.
        let mut runs = vec![0usize; width + 1];
        for x in 0..region_width {
            runs[((x as f64 / downsample) as usize).min(width - 1) + 1] += 1;
        }
        for mx in 1..=width {
            runs[mx] += runs[mx - 1];
        }
        Self {
            downsample,
            width,
            height,
            region_height,
            pixels: vec![0; width * height],
            peaks: vec![0; width * height],
            runs,
            rows: vec![0; region_width as usize],
            row_peaks: vec![0; region_width as usize],
            rows_added: 0,
            finished: 0,
        }
    }

    /// The map row of region row `y`: `floor(y / downsample)`, the last one taking the rest.
    fn map_row(&self, y: u64) -> usize {
        ((y as f64 / self.downsample) as usize).min(self.height - 1)
    }

    /// Adds region row `y` (the region's width of level-0 pixels from its left edge); rows
    /// come top to bottom, each once. Returns the map rows now final (usually none): the one
    /// it completed, after any that no region row falls in (they stay 0), and after the
    /// region's last row, all the rest.
    pub fn add_row(&mut self, y: u64, row: &[u8]) -> Range<usize> {
        for (sum, &value) in self.rows.iter_mut().zip(row) {
            *sum += value as u32;
        }
        for (peak, &value) in self.row_peaks.iter_mut().zip(row) {
            *peak = (*peak).max(value);
        }
        self.rows_added += 1;
        let my = self.map_row(y);
        if y + 1 < self.region_height && self.map_row(y + 1) == my {
            return self.finished..self.finished;
        }
        let line = &mut self.pixels[my * self.width..][..self.width];
        let peaks = &mut self.peaks[my * self.width..][..self.width];
        for ((pixel, peak), run) in line.iter_mut().zip(peaks).zip(self.runs.windows(2)) {
            // One pass over the run for both: at a few region columns a map pixel (two on the
            // contours' map of a region under 8192 pixels), a loop's overhead is most of it.
            let (sum, highest) = (self.rows[run[0]..run[1]].iter())
                .zip(&self.row_peaks[run[0]..run[1]])
                .fold((0u32, 0u8), |(sum, highest), (&value, &peak)| {
                    (sum + value, highest.max(peak))
                });
            // The rounded mean; a map pixel no region pixel falls in stays 0.
            let count = (run[1] - run[0]) as u32 * self.rows_added;
            *pixel = (sum + count / 2).checked_div(count).unwrap_or(0) as u8;
            *peak = highest;
        }
        self.rows.fill(0);
        self.row_peaks.fill(0);
        self.rows_added = 0;
        let start = self.finished;
        self.finished = if y + 1 == self.region_height {
            self.height
        } else {
            my + 1
        };
        start..self.finished
    }

    /// Map row `index`.
    pub fn row(&self, index: usize) -> &[u8] {
        &self.pixels[index * self.width..][..self.width]
    }

    /// The whole map, row-major (complete once the region's last row is added).
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The highest region pixel behind each map pixel, row-major as [`Self::pixels`].
    pub fn peaks(&self) -> &[u8] {
        &self.peaks
    }

    /// The map's width and height in its pixels.
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }
}

/// OpenCV's `COLORMAP_JET`, as the users' pipeline applied it: blue (0) to red (255).
pub fn jet(value: u8) -> [u8; 3] {
    let x = value as f32 / 255.0;
    let channel =
        |centre: f32| ((1.5 - (4.0 * x - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The jet-coloured map at 60 % over the slide at 40 % (the map scaled to the slide's size
/// where it has another).
pub fn heatmap(slide: &RgbImage, map: &GrayImage) -> RgbImage {
    let map = wsi::resize(map, slide.width(), slide.height());
    let mut out = RgbImage::new(slide.width(), slide.height());
    blend(&jet_colours(), map.as_raw(), slide.as_raw(), &mut out);
    out
}

/// [`heatmap`]'s PNG, encoded row by row as the map's rows are finished, so that it is ready
/// when the last one is: `map_rows` gives every row of a map the slide's size, in order.
pub fn heatmap_png(
    slide: &RgbImage,
    map_rows: impl IntoIterator<Item = Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let (width, height) = slide.dimensions();
    let mut png = Vec::new();
    // image's PNG encoder's own settings, with which `Staged::write_png` writes the others.
    let mut encoder = png::Encoder::new(&mut png, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    encoder.set_filter(png::Filter::Adaptive);
    let mut header = encoder.write_header()?;
    let mut stream = header.stream_writer()?;
    let colours = jet_colours();
    let row_bytes = 3 * width as usize;
    let mut rows = slide.as_raw().chunks_exact(row_bytes);
    let mut pixels = vec![0; row_bytes];
    for map_row in map_rows {
        let under = rows
            .next()
            .with_context(|| format!("more map rows than the heatmap's {height}"))?;
        anyhow::ensure!(
            map_row.len() == width as usize,
            "a map row {} wide for a heatmap {width} wide",
            map_row.len()
        );
        blend(&colours, &map_row, under, &mut pixels);
        stream.write_all(&pixels)?;
    }
    anyhow::ensure!(
        rows.len() == 0,
        "the map ended {} rows short of the heatmap's {height}",
        rows.len()
    );
    stream.finish()?;
    header.finish()?;
    Ok(png)
}

/// OpenCV's jet for every level.
fn jet_colours() -> Vec<[u8; 3]> {
    (0..=255).map(jet).collect()
}

/// `out` (RGB) = the colour of each of `map`'s levels at 60 % over `under` (RGB) at 40 %.
fn blend(colours: &[[u8; 3]], map: &[u8], under: &[u8], out: &mut [u8]) {
    for ((pixel, under), &value) in out.chunks_exact_mut(3).zip(under.chunks_exact(3)).zip(map) {
        let colour = colours[value as usize];
        for c in 0..3 {
            // round(0.6 colour + 0.4 under), in integers: (6 colour + 4 under) is even, so
            // never halfway, and the float formula's rounding errors cannot change it.
            pixel[c] = ((6 * colour[c] as u16 + 4 * under[c] as u16 + 5) / 10) as u8;
        }
    }
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

    /// The heatmap's integer blend is `round(0.6 colour + 0.4 under)` for every pair of levels.
    #[test]
    fn heatmap_blends_sixty_forty() {
        let under = RgbImage::from_fn(256, 256, |x, _| image::Rgb([x as u8; 3]));
        let map = GrayImage::from_fn(256, 256, |_, y| image::Luma([y as u8]));
        let blended = heatmap(&under, &map);
        for (x, y, pixel) in blended.enumerate_pixels() {
            let colour = jet(y as u8);
            for c in 0..3 {
                let expected = (0.6 * colour[c] as f32 + 0.4 * x as f32).round() as u8;
                assert_eq!(pixel.0[c], expected, "colour {colour:?} over {x}");
            }
        }
    }

    /// The heatmap encoded from streamed map rows decodes to `heatmap` of the whole map; too
    /// few rows, too many, or one of another width are an error, not a picture.
    #[test]
    fn streamed_heatmap_png_is_the_heatmap() {
        let (width, height) = (37, 11);
        let under = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(7 * x + y) as u8, (3 * y) as u8, (x * y) as u8])
        });
        let map = GrayImage::from_fn(width, height, |x, y| image::Luma([(x * 29 + y * 53) as u8]));
        let rows = || {
            map.as_raw()
                .chunks_exact(width as usize)
                .map(<[u8]>::to_vec)
        };
        let png = heatmap_png(&under, rows()).unwrap();
        let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
            .unwrap()
            .into_rgb8();
        assert_eq!(decoded, heatmap(&under, &map));
        assert!(heatmap_png(&under, rows().take(10)).is_err());
        assert!(heatmap_png(&under, rows().chain([vec![0; width as usize]])).is_err());
        assert!(heatmap_png(&under, [vec![0; 5]]).is_err());
    }

    /// Each map pixel is the rounded mean of the region pixels `floor(x / downsample)` and
    /// `floor(y / downsample)` put in it (the last column and row taking the rest; one that
    /// none falls in is 0), and its peak their highest.
    #[test]
    fn low_resolution_map_averages_the_pixels_that_fall_in_it() {
        let (width, height, downsample) = (103u64, 41u64, 4.88);
        let value = |x: u64, y: u64| ((x * 31 + y * 17) % 256) as u8;
        let mut map = LowResolutionMap::new(width, height, downsample);
        let mut finished = Vec::new();
        for y in 0..height {
            let row: Vec<u8> = (0..width).map(|x| value(x, y)).collect();
            for index in map.add_row(y, &row) {
                finished.push(map.row(index).to_vec());
            }
        }
        let (map_width, map_height) = map.dimensions();
        let image = GrayImage::from_raw(map_width, map_height, finished.concat()).unwrap();
        // Each map row is handed out once, in order, as it stays in the map.
        for (index, row) in finished.iter().enumerate() {
            assert_eq!(row, map.row(index));
        }
        let (map_width, map_height) = (image.width() as usize, image.height() as usize);
        assert_eq!((map_width, map_height), (22, 9));
        let mut sum = vec![0u32; map_width * map_height];
        let mut count = vec![0u32; map_width * map_height];
        let mut peak = vec![0u8; map_width * map_height];
        for y in 0..height {
            for x in 0..width {
                let mx = ((x as f64 / downsample) as usize).min(map_width - 1);
                let my = ((y as f64 / downsample) as usize).min(map_height - 1);
                sum[my * map_width + mx] += value(x, y) as u32;
                count[my * map_width + mx] += 1;
                peak[my * map_width + mx] = peak[my * map_width + mx].max(value(x, y));
            }
        }
        let expected: Vec<u8> = sum
            .iter()
            .zip(&count)
            .map(|(&s, &c)| (s + c / 2).checked_div(c).unwrap_or(0) as u8)
            .collect();
        assert_eq!(image.as_raw(), &expected);
        assert_eq!(map.pixels(), &expected);
        assert_eq!(map.peaks(), &peak);
    }

    /// A map row no region row falls in (10 rows at 3.3 a map row: rows 0-3, 4-6, 7-9 and
    /// none for the fourth) is handed out with the last, as 0.
    #[test]
    fn every_map_row_is_handed_out_once_in_order() {
        let mut map = LowResolutionMap::new(1, 10, 3.3);
        let finished: Vec<(u64, Vec<usize>)> = (0..10)
            .map(|y| (y, map.add_row(y, &[200]).collect::<Vec<_>>()))
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        assert_eq!(finished, [(3, vec![0]), (6, vec![1]), (9, vec![2, 3])]);
        assert_eq!(map.row(2), [200]);
        assert_eq!(map.row(3), [0]);
    }
}
