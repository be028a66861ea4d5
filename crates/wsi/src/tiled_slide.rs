//! The pure-Rust backend: a pyramid of chunk grids (TIFF tiles or strips, DICOM frames), read
//! with positioned reads through a tile cache. The formats differ only in how their
//! directories are found (`directory` for TIFF, `dicom` for DICOM-WSI).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use crate::cache::ChunkCache;
use crate::decode::decode_chunk;
use crate::directory::{Directory, MAX_CHUNK_BYTES};
use crate::error::{Result, WsiError};
use crate::metadata::Metadata;
use crate::slide::{BACKGROUND, Level};

/// What a format's reader finds at open: the levels, the associated images, where they live.
pub struct Pyramid {
    /// The files the directories' chunks lie in (`Directory::file` indexes this).
    pub files: Vec<PathBuf>,
    /// Largest first.
    pub levels: Vec<Directory>,
    /// Label, macro, thumbnail: named images outside the pyramid.
    pub associated: Vec<(String, Directory)>,
    /// `ifd-chain`, `subifds`, `single`, `dicom-instances`.
    pub layout: &'static str,
    pub metadata: Metadata,
}

/// `Send + Sync`: the files are read with positioned reads (no shared cursor), and decoded
/// chunks are shared through a byte-limited cache.
pub struct TiledSlide {
    paths: Vec<PathBuf>,
    files: Vec<File>,
    /// The levels, then the associated images.
    directories: Vec<Directory>,
    level_count: usize,
    associated_names: Vec<String>,
    layout: &'static str,
    cache: ChunkCache,
}

impl TiledSlide {
    pub fn new(pyramid: Pyramid, cache_bytes: usize) -> Result<(TiledSlide, Metadata)> {
        let files = pyramid
            .files
            .iter()
            .map(|path| {
                File::open(path).map_err(|source| WsiError::Io {
                    path: path.clone(),
                    cause: source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let level_count = pyramid.levels.len();
        let (associated_names, associated): (Vec<_>, Vec<_>) =
            pyramid.associated.into_iter().unzip();
        let mut directories = pyramid.levels;
        directories.extend(associated);
        let slide = TiledSlide {
            paths: pyramid.files,
            files,
            directories,
            level_count,
            associated_names,
            layout: pyramid.layout,
            cache: ChunkCache::new(cache_bytes),
        };
        Ok((slide, pyramid.metadata))
    }

    /// OpenSlide's levels: the downsample is the mean of the width and height ratios.
    pub fn levels(&self) -> Vec<Level> {
        let base = &self.directories[0];
        self.directories[..self.level_count]
            .iter()
            .map(|d| Level {
                width: d.width,
                height: d.height,
                downsample: (base.width as f64 / d.width as f64
                    + base.height as f64 / d.height as f64)
                    / 2.0,
                tile_width: d.chunk_width,
                tile_height: d.chunk_height,
            })
            .collect()
    }

    /// Name, width and height of each associated image.
    pub fn associated_images(&self) -> Vec<(String, u64, u64)> {
        self.associated_names
            .iter()
            .zip(&self.directories[self.level_count..])
            .map(|(name, d)| (name.clone(), d.width, d.height))
            .collect()
    }

    /// The whole associated image `name`, or `None` when the slide has none of that name.
    pub fn read_associated(&self, name: &str) -> Option<Result<RgbImage>> {
        let index = self.associated_names.iter().position(|n| n == name)?;
        let directory = self.level_count + index;
        let d = &self.directories[directory];
        let mut out = RgbImage::from_pixel(d.width as u32, d.height as u32, image::Rgb([0; 3]));
        Some(self.read_into(directory, 0, 0, &mut out).map(|()| out))
    }

    pub fn compression(&self) -> &'static str {
        self.directories[0].compression.name()
    }

    pub fn layout(&self) -> &'static str {
        self.layout
    }

    /// Copies the part of the region inside directory `index` (a level, or an associated image
    /// after the levels) into `out`, whose top-left is (`x`, `y`).
    pub fn read_into(&self, index: usize, x: i64, y: i64, out: &mut RgbImage) -> Result<()> {
        let dir = &self.directories[index];
        let (width, height) = out.dimensions();
        let left = x.max(0) as u64;
        let top = y.max(0) as u64;
        let right = (x + width as i64).clamp(0, dir.width as i64) as u64;
        let bottom = (y + height as i64).clamp(0, dir.height as i64) as u64;
        if left >= right || top >= bottom {
            return Ok(());
        }
        let out_stride = width as usize * 3;
        for chunk_row in top / dir.chunk_height..bottom.div_ceil(dir.chunk_height) {
            for chunk_col in left / dir.chunk_width..right.div_ceil(dir.chunk_width) {
                let chunk_index = chunk_row * dir.chunks_across() + chunk_col;
                let chunk = self.chunk(index, chunk_index)?;
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
        Ok(())
    }

    /// A decoded chunk as RGB8 (`chunk_width` x rows), from the cache or the file.
    fn chunk(&self, directory: usize, index: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(chunk) = self.cache.get((directory, index)) {
            return Ok(chunk);
        }
        let dir = &self.directories[directory];
        let rows = if dir.tiled {
            dir.chunk_height
        } else {
            dir.chunk_height
                .min(dir.height - (index * dir.chunk_height))
        };
        let (offset, count) = (dir.offsets[index as usize], dir.byte_counts[index as usize]);
        let path = &self.paths[dir.file];
        let pixels = if count == 0 {
            // A sparse chunk (never written): background.
            vec![BACKGROUND; (dir.chunk_width * rows * 3) as usize]
        } else {
            if count > MAX_CHUNK_BYTES {
                return Err(WsiError::Damaged {
                    path: path.clone(),
                    reason: format!("image {directory}, chunk {index}: {count} compressed bytes"),
                });
            }
            let mut data = vec![0; count as usize];
            self.files[dir.file]
                .read_exact_at(&mut data, offset)
                .map_err(|source| WsiError::Io {
                    path: path.clone(),
                    cause: source,
                })?;
            decode_chunk(dir, &data, rows).map_err(|fault| WsiError::Chunk {
                path: path.clone(),
                level: directory,
                index,
                fault,
            })?
        };
        let chunk = Arc::new(pixels);
        self.cache.insert((directory, index), chunk.clone());
        Ok(chunk)
    }
}
