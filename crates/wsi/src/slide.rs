//! `Slide`: open a slide, list its levels, read regions — OpenSlide's verbs over our backends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Result, WsiError};
use crate::metadata::Metadata;
use crate::tiled_slide::TiledSlide;

/// Decoded tiles kept per open slide by default (about 340 tiles of 512x512 RGB).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;
/// The largest region one `read_region` call returns.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
/// What `read_region` puts where the image has no pixels.
pub const BACKGROUND: u8 = 255;
/// The most bytes of a level's pixels [`Slide::read_scaled`] holds at once (450 rows of a
/// slide 200k pixels wide).
pub const SCALED_BAND_BYTES: u64 = 256 << 20;
/// Vendor formats that are not TIFFs we read, read through OpenSlide when built with the
/// `openslide` feature. (Aperio's `.svs` is read here; DICOM is recognised by its content.)
const VENDOR_EXTENSIONS: [&str; 6] = ["ndpi", "mrxs", "scn", "vms", "vmu", "bif"];

/// One resolution level, as OpenSlide reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Level {
    pub width: u64,
    pub height: u64,
    /// Level-0 width over this level's width (from the dimensions, not the resolution tags,
    /// which libvips copies from level 0 onto every level).
    pub downsample: f64,
    pub tile_width: u64,
    pub tile_height: u64,
}

enum Backend {
    Tiled(TiledSlide),
    #[cfg(feature = "openslide")]
    Vendor(Box<crate::vendor::VendorSlide>),
}

/// A rectangle of level 0, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u64,
    pub y: u64,
    pub width: u64,
    pub height: u64,
}

/// An open slide. `Send + Sync`: threads read regions of one `Slide` at once.
pub struct Slide {
    path: PathBuf,
    levels: Vec<Level>,
    metadata: Metadata,
    backend: Backend,
}

impl Slide {
    /// Opens a slide with the default tile cache.
    pub fn open(path: impl AsRef<Path>) -> Result<Slide> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens a slide whose decoded-tile cache holds at most `cache_bytes`.
    ///
    /// Read in pure Rust: TIFFs (`.tif`, `.tiff`, Aperio `.svs`, and anything else that is a
    /// TIFF) and DICOM-WSI (a folder holding one series' instances, or any one instance, whose
    /// siblings are found in its folder). Other vendor formats (`.ndpi`, `.mrxs`, ...) go through
    /// OpenSlide when this crate is built with the `openslide` feature, and are refused with a
    /// message saying how to read them without it.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Slide> {
        let path = path.as_ref().to_path_buf();
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let (backend, mut metadata) = if path.is_dir() || crate::dicom::is_dicom(&path) {
            tiled(crate::dicom::read_series(&path)?, cache_bytes)?
        } else if VENDOR_EXTENSIONS.contains(&extension.as_str()) {
            open_vendor(&path, &extension)?
        } else {
            open_tiff(&path, cache_bytes)?
        };
        let (levels, associated) = match &backend {
            Backend::Tiled(slide) => (slide.levels(), slide.associated_images()),
            #[cfg(feature = "openslide")]
            Backend::Vendor(slide) => (slide.levels(), slide.associated_images()),
        };
        metadata.add_standard_properties(&levels, &associated);
        Ok(Slide {
            path,
            levels,
            metadata,
            backend,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Levels, largest (level 0) first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Level-0 microns per pixel (TIFF resolution tags, Aperio's `MPP`, DICOM's pixel
    /// spacing); `None` when the slide does not say.
    pub fn mpp(&self) -> Option<f64> {
        self.metadata.mpp
    }

    /// OpenSlide's vendor name: `generic-tiff`, `aperio`, `dicom`, or OpenSlide's own.
    pub fn vendor(&self) -> &str {
        &self.metadata.vendor
    }

    /// The scanner's objective magnification, when the slide records it.
    pub fn objective_power(&self) -> Option<f64> {
        self.metadata.objective_power
    }

    /// Every property, named as OpenSlide names them (`openslide.*`, `aperio.*`, `dicom.*`,
    /// `tiff.*`).
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.metadata.properties
    }

    /// The associated images (`thumbnail`, `label`, `macro`): name, width, height.
    pub fn associated_images(&self) -> Vec<(String, u64, u64)> {
        match &self.backend {
            Backend::Tiled(slide) => slide.associated_images(),
            #[cfg(feature = "openslide")]
            Backend::Vendor(slide) => slide.associated_images(),
        }
    }

    /// The whole associated image `name`, as RGB.
    pub fn read_associated_image(&self, name: &str) -> Result<RgbImage> {
        let read = match &self.backend {
            Backend::Tiled(slide) => slide.read_associated(name),
            #[cfg(feature = "openslide")]
            Backend::Vendor(slide) => slide.read_associated(name),
        };
        read.unwrap_or_else(|| {
            Err(self.bad_request(format!("the slide has no associated image {name:?}")))
        })
    }

    /// Level 0's compression: `jpeg`, `deflate`, `lzw`, `none`, or `vendor`.
    pub fn compression(&self) -> &'static str {
        match &self.backend {
            Backend::Tiled(slide) => slide.compression(),
            #[cfg(feature = "openslide")]
            Backend::Vendor(_) => "vendor",
        }
    }

    /// Where the pyramid lives: `ifd-chain`, `subifds`, `single`, `dicom-instances`, or
    /// `openslide`.
    pub fn layout(&self) -> &'static str {
        match &self.backend {
            Backend::Tiled(slide) => slide.layout(),
            #[cfg(feature = "openslide")]
            Backend::Vendor(_) => "openslide",
        }
    }

    /// The level whose downsample is the largest not above `downsample` (OpenSlide's rule).
    pub fn best_level_for_downsample(&self, downsample: f64) -> usize {
        self.levels
            .iter()
            .rposition(|l| l.downsample <= downsample + 1e-9)
            .unwrap_or(0)
    }

    /// The `width` x `height` RGB pixels at (`x`, `y`) of `level`, in that level's pixels.
    /// Pixels outside the image are white ([`BACKGROUND`]), as a slide's glass would be;
    /// OpenSlide makes them transparent instead, which flattens to the same on white.
    pub fn read_region(
        &self,
        level: usize,
        x: i64,
        y: i64,
        width: u32,
        height: u32,
    ) -> Result<RgbImage> {
        if level >= self.levels.len() {
            return Err(self.bad_request(format!(
                "level {level} does not exist (the slide has {})",
                self.levels.len()
            )));
        }
        self.check_size("region", width, height)?;
        let mut out = RgbImage::from_pixel(width, height, image::Rgb([BACKGROUND; 3]));
        match &self.backend {
            Backend::Tiled(slide) => slide.read_into(level, x, y, &mut out)?,
            #[cfg(feature = "openslide")]
            Backend::Vendor(slide) => {
                slide.read_into(level, self.levels[level].downsample, x, y, &mut out)?
            }
        }
        Ok(out)
    }

    /// As [`Slide::read_region`], but where the region reaches past the image's right or
    /// bottom edge the edge pixels are repeated (a model with replicate padding sees a patch
    /// that overhangs the slide as a larger image). The region starts inside the image.
    pub fn read_region_extended(
        &self,
        level: usize,
        x: u64,
        y: u64,
        width: u32,
        height: u32,
    ) -> Result<RgbImage> {
        let mut out = self.read_region(level, x as i64, y as i64, width, height)?;
        let Level {
            width: level_width,
            height: level_height,
            ..
        } = self.levels[level];
        let inside = |start: u64, side: u32, limit: u64| {
            limit.saturating_sub(start).min(side as u64) as usize
        };
        let (inside_w, inside_h) = (
            inside(x, width, level_width),
            inside(y, height, level_height),
        );
        if inside_w == 0 || inside_h == 0 {
            return Err(self.bad_request(format!(
                "a region at ({x}, {y}) of level {level} starts outside its {level_width}x{level_height} pixels"
            )));
        }
        let row = 3 * width as usize;
        let rows = out.as_mut();
        for line in rows.chunks_exact_mut(row).take(inside_h) {
            let (kept, past) = line.split_at_mut(3 * inside_w);
            let edge = [
                kept[3 * inside_w - 3],
                kept[3 * inside_w - 2],
                kept[3 * inside_w - 1],
            ];
            past.chunks_exact_mut(3)
                .for_each(|pixel| pixel.copy_from_slice(&edge));
        }
        let (kept, past) = rows.split_at_mut(inside_h * row);
        let last = &kept[(inside_h - 1) * row..];
        past.chunks_exact_mut(row)
            .for_each(|line| line.copy_from_slice(last));
        Ok(out)
    }

    /// The whole of the smallest level whose long side is at least `max_side`, scaled to
    /// fit `max_side` (or the largest level, when none is that big).
    pub fn thumbnail(&self, max_side: u32) -> Result<RgbImage> {
        let level = self
            .levels
            .iter()
            .rposition(|l| l.width.max(l.height) >= max_side as u64)
            .unwrap_or(0);
        let Level { width, height, .. } = self.levels[0];
        let scale = (max_side as f64 / width.max(height) as f64).min(1.0);
        let (w, h) = (
            ((width as f64 * scale).round() as u32).max(1),
            ((height as f64 * scale).round() as u32).max(1),
        );
        let whole = Region {
            x: 0,
            y: 0,
            width,
            height,
        };
        self.read_scaled(level, whole, w, h)
    }

    /// `region` as `level` holds it, scaled to `width` x `height` ([`resize`]'s bilinear
    /// filter). The level is read in bands of at most [`SCALED_BAND_BYTES`], so that a small
    /// view of a slide without a small level (a flat TIFF of 100k pixels a side) takes the
    /// memory of a band, not of the level; a view so small that a band would not hold the
    /// rows of 16 of its rows is scaled from a finer view (within a level of the direct one).
    ///
    /// [`resize`]: crate::resize()
    pub fn read_scaled(
        &self,
        level: usize,
        region: Region,
        width: u32,
        height: u32,
    ) -> Result<RgbImage> {
        self.read_scaled_in_bands(level, region, width, height, SCALED_BAND_BYTES)
    }

    fn read_scaled_in_bands(
        &self,
        level: usize,
        region: Region,
        width: u32,
        height: u32,
        band_bytes: u64,
    ) -> Result<RgbImage> {
        self.check_size("view", width, height)?;
        // (`read_region` refuses a level that does not exist.)
        let downsample = self.levels.get(level).map_or(1.0, |l| l.downsample);
        let to_level = |v: u64| (v as f64 / downsample).round() as u64;
        let (x, y) = (to_level(region.x) as i64, to_level(region.y));
        let level_width = u32::try_from(to_level(region.width).max(1))
            .map_err(|_| self.bad_request(format!("a region {} pixels wide", region.width)))?;
        let level_height = to_level(region.height).max(1);
        // Level rows per view row.
        let scale = level_height as f64 / height.max(1) as f64;
        let rows_held = band_bytes / (3 * level_width as u64);
        // A band holds 16 times the rows one view row reads, or the view is scaled from a view
        // `factor` times its size, as from a pyramid level: else a small view of a large flat
        // level would read bands of thousands of rows, or each row three times.
        let most_scale = (rows_held / 16).max(1) as f64;
        if scale > most_scale && rows_held < level_height {
            let factor = (scale / most_scale).ceil() as u32;
            let (finer_width, finer_height) =
                (width.saturating_mul(factor), height.saturating_mul(factor));
            let finer =
                self.read_scaled_in_bands(level, region, finer_width, finer_height, band_bytes)?;
            return Ok(crate::resize(&finer, width, height));
        }
        // The rows either side of a band that the filter reaches (as many as it shrinks by, one
        // when it enlarges), read so that bands join seamlessly.
        let margin = scale.max(1.0).ceil() as u64 + 1;
        let view_rows =
            ((rows_held.saturating_sub(2 * margin) as f64 / scale) as u32).clamp(1, height.max(1));
        let read_rows = |top: u64, bottom: u64| {
            let rows = u32::try_from(bottom - top)
                .map_err(|_| self.bad_request(format!("a band of {} rows", bottom - top)))?;
            self.read_region(level, x, (y + top) as i64, level_width, rows)
        };
        if view_rows >= height {
            return Ok(crate::resize(&read_rows(0, level_height)?, width, height));
        }
        let mut out = RgbImage::new(width, height);
        for first in (0..height).step_by(view_rows as usize) {
            let last = (first + view_rows).min(height);
            let (start, end) = (first as f64 * scale, last as f64 * scale);
            let top = (start.floor() as u64).saturating_sub(margin);
            let bottom = (end.ceil() as u64 + margin).min(level_height);
            let band = read_rows(top, bottom)?;
            let scaled = crate::resize::resize_rows(
                &band,
                start - top as f64,
                end - start,
                width,
                last - first,
            );
            let row = 3 * width as usize;
            out.as_mut()[first as usize * row..last as usize * row]
                .copy_from_slice(scaled.as_raw());
        }
        Ok(out)
    }

    /// Refuses an image over [`MAX_REGION_BYTES`].
    fn check_size(&self, what: &str, width: u32, height: u32) -> Result<()> {
        if width as u64 * height as u64 * 3 > MAX_REGION_BYTES {
            return Err(self.bad_request(format!(
                "a {width}x{height} {what} is over {MAX_REGION_BYTES} bytes: read it in parts"
            )));
        }
        Ok(())
    }

    fn bad_request(&self, reason: String) -> WsiError {
        WsiError::BadRequest {
            path: self.path.clone(),
            reason,
        }
    }
}

fn tiled(pyramid: crate::tiled_slide::Pyramid, cache_bytes: usize) -> Result<(Backend, Metadata)> {
    let (slide, metadata) = TiledSlide::new(pyramid, cache_bytes)?;
    Ok((Backend::Tiled(slide), metadata))
}

fn open_tiff(path: &Path, cache_bytes: usize) -> Result<(Backend, Metadata)> {
    let io = |source| WsiError::Io {
        path: path.to_path_buf(),
        cause: source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let pyramid = crate::directory::read_tiff(path, file, file_len);
    // What the pure-Rust reader does not support (a compression it does not know) OpenSlide may.
    // When OpenSlide cannot either, our error (which names the fault) is the one to report.
    #[cfg(feature = "openslide")]
    if let Err(unsupported @ WsiError::Unsupported { .. }) = pyramid {
        return open_vendor(path, "tiff").map_err(|_| unsupported);
    }
    tiled(pyramid?, cache_bytes)
}

#[cfg(feature = "openslide")]
fn open_vendor(path: &Path, _extension: &str) -> Result<(Backend, Metadata)> {
    let slide = crate::vendor::VendorSlide::open(path)?;
    let metadata = slide.metadata();
    Ok((Backend::Vendor(Box::new(slide)), metadata))
}

#[cfg(not(feature = "openslide"))]
fn open_vendor(path: &Path, extension: &str) -> Result<(Backend, Metadata)> {
    Err(WsiError::Unsupported {
        path: path.to_path_buf(),
        what: format!(
            ".{extension} slides need OpenSlide: build with `--features wsi/openslide` (Debian: apt-get install libopenslide-dev libclang-dev)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view read in bands, each with the rows its filter reaches, is the view read at once
    /// (within one level of rounding): shrinking and enlarging, from level 0 and from a reduced
    /// level, of the whole slide and of a region off its origin, and a view so small that it
    /// is scaled from a finer one.
    #[test]
    fn a_view_read_in_bands_is_the_view_read_at_once() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/slides/odd_vips_deflate.tif");
        let slide = Slide::open(path).unwrap();
        let whole = Region {
            x: 0,
            y: 0,
            width: 1001,
            height: 753,
        };
        let off_origin = Region {
            x: 101,
            y: 57,
            width: 600,
            height: 410,
        };
        for (level, region, width, height) in [
            (0, whole, 143, 107),
            (0, whole, 37, 29),
            (1, whole, 143, 107),
            (0, off_origin, 77, 53),
            (1, off_origin, 450, 307),
        ] {
            let at_once = slide
                .read_scaled_in_bands(level, region, width, height, u64::MAX)
                .unwrap();
            // Bands of about 14 view rows, the fewest that are read from the level directly.
            let downsample = slide.levels()[level].downsample;
            let row_bytes = 3 * (region.width as f64 / downsample) as u64;
            let scale = (region.height as f64 / downsample) / height as f64;
            let rows = 16 * (scale.ceil() as u64 + 1);
            let banded = slide
                .read_scaled_in_bands(level, region, width, height, rows * row_bytes)
                .unwrap();
            assert_eq!(banded.dimensions(), (width, height));
            let most = crate::resize::tests::largest_difference(banded.as_raw(), at_once.as_raw());
            assert!(
                most <= Some(1),
                "{level} {region:?} {width}x{height}: {most:?}"
            );
        }
        // A view 107 times smaller than the level, with bands of 40 rows: scaled from a finer
        // view read in bands, and still within one level of the view read at once.
        let at_once = slide
            .read_scaled_in_bands(0, whole, 9, 7, u64::MAX)
            .unwrap();
        let two_steps = slide
            .read_scaled_in_bands(0, whole, 9, 7, 40 * 3 * 1001)
            .unwrap();
        let most = crate::resize::tests::largest_difference(two_steps.as_raw(), at_once.as_raw());
        assert!(most <= Some(1), "{most:?}");
    }
}
