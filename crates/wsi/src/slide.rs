//! `Slide`: open a pyramidal TIFF, list its levels, read regions — OpenSlide's verbs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::cache::ChunkCache;
use crate::decode::decode_chunk;
use crate::directory::{Directory, MAX_CHUNK_BYTES, PyramidLayout, read_pyramid};
use crate::error::{Result, WsiError};

/// Decoded chunks kept per open slide by default (about 340 tiles of 512x512 RGB).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;
/// The largest region one `read_region` call returns.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
/// What `read_region` puts where the image has no pixels.
pub const BACKGROUND: u8 = 255;

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

/// An open slide. `Send + Sync`: threads read regions of one `Slide` at once; the file is
/// read with positioned reads (no shared cursor) and decoded chunks are shared through a
/// byte-limited cache.
pub struct Slide {
    path: PathBuf,
    file: File,
    directories: Vec<Directory>,
    levels: Vec<Level>,
    layout: PyramidLayout,
    cache: ChunkCache,
}

impl Slide {
    /// Opens a slide with the default tile cache.
    pub fn open(path: impl AsRef<Path>) -> Result<Slide> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens a slide whose decoded-tile cache holds at most `cache_bytes`.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Slide> {
        let path = path.as_ref().to_path_buf();
        let io = |source| WsiError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let (directories, layout) = read_pyramid(&path, file.try_clone().map_err(io)?, file_len)?;
        let base_width = directories[0].width as f64;
        let levels = directories
            .iter()
            .map(|d| Level {
                width: d.width,
                height: d.height,
                downsample: base_width / d.width as f64,
                tile_width: d.chunk_width,
                tile_height: d.chunk_height,
            })
            .collect();
        Ok(Slide {
            path,
            file,
            directories,
            levels,
            layout,
            cache: ChunkCache::new(cache_bytes),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Levels, largest (level 0) first.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Level-0 microns per pixel, from the resolution tags; `None` when they do not say.
    pub fn mpp(&self) -> Option<f64> {
        self.directories[0].mpp
    }

    /// Level 0's compression: `jpeg`, `deflate`, `lzw` or `none`.
    pub fn compression(&self) -> &'static str {
        self.directories[0].compression.name()
    }

    /// Where the pyramid lives: `ifd-chain`, `subifds` or `single`.
    pub fn layout(&self) -> &'static str {
        self.layout.name()
    }

    /// Whether level 0 is tiled (rather than in strips).
    pub fn is_tiled(&self) -> bool {
        self.directories[0].tiled
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
        let dir = self.directories.get(level).ok_or_else(|| {
            self.bad_request(format!(
                "level {level} does not exist (the slide has {})",
                self.levels.len()
            ))
        })?;
        if width as u64 * height as u64 * 3 > MAX_REGION_BYTES {
            return Err(self.bad_request(format!(
                "a {width}x{height} region is over {MAX_REGION_BYTES} bytes: read it in parts"
            )));
        }
        let mut out = RgbImage::from_pixel(width, height, image::Rgb([BACKGROUND; 3]));
        // The part of the region inside the image, in level pixels.
        let left = x.max(0) as u64;
        let top = y.max(0) as u64;
        let right = (x + width as i64).clamp(0, dir.width as i64) as u64;
        let bottom = (y + height as i64).clamp(0, dir.height as i64) as u64;
        if left >= right || top >= bottom {
            return Ok(out);
        }
        let out_stride = width as usize * 3;
        for chunk_row in top / dir.chunk_height..bottom.div_ceil(dir.chunk_height) {
            for chunk_col in left / dir.chunk_width..right.div_ceil(dir.chunk_width) {
                let index = chunk_row * dir.chunks_across() + chunk_col;
                let chunk = self.chunk(level, index)?;
                let (cx, cy) = (chunk_col * dir.chunk_width, chunk_row * dir.chunk_height);
                let (x0, x1) = (left.max(cx), right.min(cx + dir.chunk_width));
                let (y0, y1) = (top.max(cy), bottom.min(cy + dir.chunk_height));
                let chunk_stride = dir.chunk_width as usize * 3;
                let run = (x1 - x0) as usize * 3;
                for row in y0..y1 {
                    let src = (row - cy) as usize * chunk_stride + (x0 - cx) as usize * 3;
                    let dst = (row as i64 - y) as usize * out_stride + (x0 as i64 - x) as usize * 3;
                    out.as_mut()[dst..dst + run].copy_from_slice(&chunk[src..src + run]);
                }
            }
        }
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
        let Level { width, height, .. } = self.levels[level];
        let whole = self.read_region(level, 0, 0, width as u32, height as u32)?;
        let scale = (max_side as f64 / width.max(height) as f64).min(1.0);
        let (w, h) = (
            ((width as f64 * scale).round() as u32).max(1),
            ((height as f64 * scale).round() as u32).max(1),
        );
        Ok(image::imageops::resize(
            &whole,
            w,
            h,
            image::imageops::FilterType::Triangle,
        ))
    }

    /// A decoded chunk as RGB8 (`chunk_width` x rows), from the cache or the file.
    fn chunk(&self, level: usize, index: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(chunk) = self.cache.get((level, index)) {
            return Ok(chunk);
        }
        let dir = &self.directories[level];
        let rows = if dir.tiled {
            dir.chunk_height
        } else {
            dir.chunk_height
                .min(dir.height - (index * dir.chunk_height))
        };
        let (offset, count) = (dir.offsets[index as usize], dir.byte_counts[index as usize]);
        let pixels = if count == 0 {
            // A sparse chunk (never written): background.
            vec![BACKGROUND; (dir.chunk_width * rows * 3) as usize]
        } else {
            if count > MAX_CHUNK_BYTES {
                return Err(self.damaged(level, index, format!("{count} compressed bytes")));
            }
            let mut data = vec![0; count as usize];
            self.file
                .read_exact_at(&mut data, offset)
                .map_err(|source| WsiError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            decode_chunk(dir, &data, rows).map_err(|reason| self.damaged(level, index, reason))?
        };
        let chunk = Arc::new(pixels);
        self.cache.insert((level, index), chunk.clone());
        Ok(chunk)
    }

    fn damaged(&self, level: usize, index: u64, reason: String) -> WsiError {
        WsiError::Damaged {
            path: self.path.clone(),
            reason: format!("level {level}, chunk {index}: {reason}"),
        }
    }

    fn bad_request(&self, reason: String) -> WsiError {
        WsiError::BadRequest {
            path: self.path.clone(),
            reason,
        }
    }
}
