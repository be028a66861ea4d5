//! Vendor formats (.svs, .ndpi, .mrxs, ...) through the OpenSlide C library (`openslide`
//! feature; Debian's libopenslide-dev 3.4.1, with libclang-dev for the bindings' build).

use std::path::{Path, PathBuf};

use image::RgbImage;
use openslide_rs::{Address, OpenSlide, Region, Size};

use crate::error::{Result, WsiError};
use crate::metadata::Metadata;
use crate::slide::Level;

pub struct VendorSlide {
    path: PathBuf,
    slide: OpenSlide,
}

impl VendorSlide {
    pub fn open(path: &Path) -> Result<VendorSlide> {
        let slide = OpenSlide::new(path).map_err(|err| WsiError::NotTiff {
            path: path.to_path_buf(),
            reason: format!("OpenSlide cannot open it: {err}"),
        })?;
        Ok(VendorSlide {
            path: path.to_path_buf(),
            slide,
        })
    }

    pub fn levels(&self) -> Vec<Level> {
        let property = |name: String| -> u64 {
            self.slide
                .property_value(&name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        self.slide
            .all_level_dimensions()
            .iter()
            .zip(self.slide.all_level_downsamples())
            .enumerate()
            .map(|(i, (size, &downsample))| Level {
                width: size.w as u64,
                height: size.h as u64,
                downsample,
                tile_width: property(format!("openslide.level[{i}].tile-width")),
                tile_height: property(format!("openslide.level[{i}].tile-height")),
            })
            .collect()
    }

    /// OpenSlide's vendor, resolution, objective and every property it reports.
    pub fn metadata(&self) -> Metadata {
        let properties = self
            .slide
            .property_names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                let value = self.slide.property_value(&name).ok()?;
                Some((name, value))
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let number = |name: &str| properties.get(name).and_then(|v| v.trim().parse().ok());
        Metadata {
            vendor: properties
                .get("openslide.vendor")
                .cloned()
                .unwrap_or_else(|| "openslide".into()),
            mpp: self.mpp(),
            objective_power: number("openslide.objective-power"),
            properties,
        }
    }

    pub fn associated_images(&self) -> Vec<(String, u64, u64)> {
        self.slide
            .associated_image_names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                let size = self.slide.associated_image_dimensions(&name).ok()?;
                Some((name, size.w as u64, size.h as u64))
            })
            .collect()
    }

    pub fn read_associated(&self, name: &str) -> Option<Result<RgbImage>> {
        let names = self.slide.associated_image_names().ok()?;
        names.iter().find(|n| *n == name)?;
        Some(
            self.slide
                .read_associated_buffer(name)
                .map_err(|err| self.damaged(err))
                .map(|(size, bgra)| {
                    let mut out = RgbImage::new(size.w, size.h);
                    composite_over_white(&bgra, size.w as usize, &mut out, 0, 0);
                    out
                }),
        )
    }

    /// `openslide.mpp-x`, or for a generic TIFF (where OpenSlide 3.4 sets none) the
    /// resolution tags OpenSlide passes through.
    fn mpp(&self) -> Option<f64> {
        let number = |name: &str| -> Option<f64> {
            self.slide.property_value(name).ok()?.trim().parse().ok()
        };
        number("openslide.mpp-x").or_else(|| {
            let unit = self.slide.property_value("tiff.ResolutionUnit").ok()?;
            let microns = match unit.as_str() {
                "centimeter" => 1e4,
                "inch" => 25400.0,
                _ => return None,
            };
            number("tiff.XResolution")
                .filter(|r| *r > 0.0)
                .map(|r| microns / r)
        })
    }

    /// OpenSlide addresses regions in level-0 pixels and returns premultiplied BGRA:
    /// composited over white here, like the TIFF backend's background.
    pub fn read_into(
        &self,
        level: usize,
        downsample: f64,
        x: i64,
        y: i64,
        out: &mut RgbImage,
    ) -> Result<()> {
        let (width, height) = out.dimensions();
        let (left, top) = (x.max(0), y.max(0));
        let (right, bottom) = (x + width as i64, y + height as i64);
        if right <= left || bottom <= top {
            return Ok(());
        }
        let region = Region {
            size: Size {
                w: (right - left) as u32,
                h: (bottom - top) as u32,
            },
            level: level as u32,
            address: Address {
                x: (left as f64 * downsample) as u32,
                y: (top as f64 * downsample) as u32,
            },
        };
        let bgra = self
            .slide
            .read_region(&region)
            .map_err(|err| self.damaged(err))?;
        let run = region.size.w as usize;
        composite_over_white(&bgra, run, out, (left - x) as u32, (top - y) as u32);
        Ok(())
    }

    fn damaged(&self, err: impl std::fmt::Display) -> WsiError {
        WsiError::Damaged {
            path: self.path.clone(),
            reason: format!("OpenSlide: {err}"),
        }
    }
}

/// OpenSlide's premultiplied BGRA, `run` pixels a row, composited over white into `out` at
/// (`left`, `top`).
fn composite_over_white(bgra: &[u8], run: usize, out: &mut RgbImage, left: u32, top: u32) {
    for (row, line) in bgra.chunks_exact(run * 4).enumerate() {
        for (col, p) in line.chunks_exact(4).enumerate() {
            let glass = 255 - p[3];
            let pixel = [p[2] + glass, p[1] + glass, p[0] + glass];
            out.put_pixel(left + col as u32, top + row as u32, image::Rgb(pixel));
        }
    }
}
