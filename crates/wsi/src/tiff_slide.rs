//! The pure-Rust backend: pyramidal TIFFs, read with positioned reads through a tile cache.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use crate::cache::ChunkCache;
use crate::decode::decode_chunk;
use crate::directory::{Directory, MAX_CHUNK_BYTES, PyramidLayout, read_pyramid};
use crate::error::{Result, WsiError};
use crate::slide::{BACKGROUND, Level};

/// `Send + Sync`: the file is read with positioned reads (no shared cursor), and decoded
/// chunks are shared through a byte-limited cache.
pub struct TiffSlide {
    path: PathBuf,
    file: File,
    directories: Vec<Directory>,
    layout: PyramidLayout,
    cache: ChunkCache,
}

impl TiffSlide {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<TiffSlide> {
        let io = |source| WsiError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let (directories, layout) = read_pyramid(path, file.try_clone().map_err(io)?, file_len)?;
        Ok(TiffSlide {
            path: path.to_path_buf(),
            file,
            directories,
            layout,
            cache: ChunkCache::new(cache_bytes),
        })
    }

    pub fn levels(&self) -> Vec<Level> {
        let base_width = self.directories[0].width as f64;
        self.directories
            .iter()
            .map(|d| Level {
                width: d.width,
                height: d.height,
                downsample: base_width / d.width as f64,
                tile_width: d.chunk_width,
                tile_height: d.chunk_height,
            })
            .collect()
    }

    pub fn mpp(&self) -> Option<f64> {
        self.directories[0].mpp
    }

    pub fn compression(&self) -> &'static str {
        self.directories[0].compression.name()
    }

    pub fn layout(&self) -> &'static str {
        self.layout.name()
    }

    /// Copies the part of the region inside `level` into `out`, whose top-left is (`x`, `y`).
    pub fn read_into(&self, level: usize, x: i64, y: i64, out: &mut RgbImage) -> Result<()> {
        let dir = &self.directories[level];
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
        Ok(())
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
            decode_chunk(dir, &data, rows).map_err(|source| WsiError::Chunk {
                path: self.path.clone(),
                level,
                index,
                source,
            })?
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
}
