//! A pyramidal tiled BigTIFF writer that takes the image as a stream of tile rows.
//!
//! Only one band (a row of tiles) per level is held: when level k's band fills, its tiles are
//! deflated (in parallel) and appended to the file, and the band is halved (2x2 mean) into level
//! k+1's band. Directories are written at the end, all levels in the main IFD chain, reduced
//! ones marked `NewSubfileType = 1`, each with its own resolution tags. The file is written
//! as a temporary file beside its destination and renamed by [`PyramidWriter::finish`];
//! dropped unfinished, the temporary file is removed.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use output_file::NamedTempFile;
use rayon::prelude::*;

use crate::error::{Result, WsiError};

/// Grey (1 sample) or RGB (3 samples) u8 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Grey = 1,
    Rgb = 3,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Tile side: 256 or 512.
    pub tile: u32,
    /// Level-0 microns per pixel, written as resolution tags in pixels per cm.
    pub mpp: Option<f64>,
    /// Deflate level, 1 (fast) to 9 (small).
    pub deflate_level: u32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            tile: 512,
            mpp: None,
            deflate_level: 3,
        }
    }
}

struct LevelState {
    width: u64,
    height: u64,
    /// The band being filled: up to `tile` rows of `width` pixels.
    band: Vec<u8>,
    band_rows: u64,
    rows_done: u64,
    offsets: Vec<u64>,
    byte_counts: Vec<u64>,
}

pub struct PyramidWriter {
    final_path: PathBuf,
    file: BufWriter<NamedTempFile>,
    position: u64,
    channels: Channels,
    options: WriterOptions,
    levels: Vec<LevelState>,
}

impl PyramidWriter {
    /// Starts a `width` x `height` image at `path`, with levels halving until both sides fit
    /// in one tile.
    pub fn create(
        path: impl AsRef<Path>,
        width: u64,
        height: u64,
        channels: Channels,
        options: WriterOptions,
    ) -> Result<PyramidWriter> {
        let final_path = path.as_ref().to_path_buf();
        let bad = |reason: String| WsiError::BadRequest {
            path: final_path.clone(),
            reason,
        };
        if !matches!(options.tile, 256 | 512) {
            return Err(bad(format!(
                "tile size {} (256 or 512 are written)",
                options.tile
            )));
        }
        if width == 0 || height == 0 {
            return Err(bad(format!("image size {width}x{height}")));
        }
        let tile = options.tile as u64;
        let mut levels = Vec::new();
        let (mut w, mut h) = (width, height);
        loop {
            levels.push(LevelState {
                width: w,
                height: h,
                band: Vec::with_capacity((w * tile) as usize * channels as usize),
                band_rows: 0,
                rows_done: 0,
                offsets: Vec::new(),
                byte_counts: Vec::new(),
            });
            if w.max(h) <= tile || w < 2 || h < 2 {
                break;
            }
            // Floor, as libvips does (1001 -> 500).
            (w, h) = (w / 2, h / 2);
        }
        let file = output_file::beside(&final_path).map_err(|source| WsiError::Io {
            path: final_path.clone(),
            source,
        })?;
        let mut writer = PyramidWriter {
            final_path,
            file: BufWriter::with_capacity(1 << 20, file),
            position: 0,
            channels,
            options,
            levels,
        };
        // BigTIFF header; the first IFD's offset is patched in by `finish`.
        writer.write(&[b'I', b'I', 43, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        Ok(writer)
    }

    /// Appends rows of level 0: whole rows, `width * channels` bytes each, any number at a time.
    pub fn write_rows(&mut self, rows: &[u8]) -> Result<()> {
        let row_bytes = (self.levels[0].width * self.channels as u64) as usize;
        if !rows.len().is_multiple_of(row_bytes) {
            return Err(self.bad(format!(
                "{} bytes is not a whole number of {row_bytes}-byte rows",
                rows.len()
            )));
        }
        let level = &self.levels[0];
        let incoming = (rows.len() / row_bytes) as u64;
        if level.rows_done + level.band_rows + incoming > level.height {
            return Err(self.bad(format!(
                "more than the image's {} rows were written",
                level.height
            )));
        }
        self.push_rows(0, rows)
    }

    /// Writes the remaining bands and the directories, then renames the file into place.
    pub fn finish(self) -> Result<()> {
        let path = self.final_path.clone();
        self.finish_temporary()?
            .persist(&path)
            .map_err(|err| WsiError::Io {
                path,
                source: err.error,
            })?;
        Ok(())
    }

    /// Writes the remaining bands and the directories, and hands back the complete file still
    /// under its temporary name, for a caller that renames several outputs together.
    pub fn finish_temporary(mut self) -> Result<NamedTempFile> {
        let base = &self.levels[0];
        if base.rows_done + base.band_rows != base.height {
            return Err(self.bad(format!(
                "finished after {} of {} rows",
                base.rows_done + base.band_rows,
                base.height
            )));
        }
        for level in 0..self.levels.len() {
            if self.levels[level].band_rows > 0 {
                self.flush_band(level)?;
            }
        }
        let first_ifd = self.write_directories()?;
        let io = |source| WsiError::Io {
            path: self.final_path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(8)).map_err(io)?;
        self.file.write_all(&first_ifd.to_le_bytes()).map_err(io)?;
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.as_file().sync_all().map_err(io)?;
        Ok(file)
    }

    fn push_rows(&mut self, level: usize, mut rows: &[u8]) -> Result<()> {
        let tile = self.options.tile as u64;
        let row_bytes = (self.levels[level].width * self.channels as u64) as usize;
        while !rows.is_empty() {
            let state = &mut self.levels[level];
            let room = (tile - state.band_rows) as usize;
            let take = room.min(rows.len() / row_bytes);
            state.band.extend_from_slice(&rows[..take * row_bytes]);
            state.band_rows += take as u64;
            rows = &rows[take * row_bytes..];
            let complete = state.rows_done + state.band_rows == state.height;
            if state.band_rows == tile || complete {
                self.flush_band(level)?;
            }
        }
        Ok(())
    }

    /// Deflates and writes the band's tiles, then passes its 2x2 mean to the next level.
    fn flush_band(&mut self, level: usize) -> Result<()> {
        let tile = self.options.tile as usize;
        let channels = self.channels as usize;
        let deflate_level = self.options.deflate_level;
        let state = &mut self.levels[level];
        let width = state.width as usize;
        let rows = state.band_rows as usize;
        let band = std::mem::take(&mut state.band);
        let tiles_across = width.div_ceil(tile);
        let tiles: Vec<Vec<u8>> = (0..tiles_across)
            .into_par_iter()
            .map(|col| {
                // Edge tiles are padded with zeros to the full tile size, as TIFF requires.
                let mut pixels = vec![0u8; tile * tile * channels];
                let x0 = col * tile;
                let run = (width - x0).min(tile) * channels;
                for row in 0..rows {
                    let src = (row * width + x0) * channels;
                    pixels[row * tile * channels..][..run].copy_from_slice(&band[src..src + run]);
                }
                deflate(&pixels, deflate_level)
            })
            .collect();
        for data in tiles {
            let offset = self.position;
            self.write(&data)?;
            let state = &mut self.levels[level];
            state.offsets.push(offset);
            state.byte_counts.push(data.len() as u64);
        }
        let state = &mut self.levels[level];
        state.rows_done += state.band_rows;
        state.band_rows = 0;
        let mut reused = band;
        if level + 1 < self.levels.len() {
            let next_width = self.levels[level + 1].width as usize;
            let halved = halve(
                &reused[..rows * width * channels],
                width,
                rows,
                channels,
                next_width,
            );
            reused.clear();
            self.levels[level].band = reused;
            let next = &self.levels[level + 1];
            let room = (next.height - next.rows_done - next.band_rows) as usize;
            let keep = (halved.len() / (next_width * channels)).min(room) * next_width * channels;
            self.push_rows(level + 1, &halved[..keep])?;
        } else {
            reused.clear();
            self.levels[level].band = reused;
        }
        Ok(())
    }

    /// Writes every level's IFD (level 0 first, chained); returns the first one's offset.
    fn write_directories(&mut self) -> Result<u64> {
        let base_width = self.levels[0].width as f64;
        let mut ifd_offsets = Vec::new();
        let mut entries_per_level = Vec::new();
        for (index, level) in self.levels.iter().enumerate() {
            let downsample = base_width / level.width as f64;
            let resolution = self.options.mpp.map(|mpp| pixels_per_cm(mpp * downsample));
            entries_per_level.push(directory_entries(
                level,
                index > 0,
                self.options.tile,
                self.channels,
                resolution,
            ));
        }
        for entries in &entries_per_level {
            // Values that do not fit in an entry go before the directory.
            let mut placed = Vec::new();
            for entry in entries {
                let offset = if entry.data.len() > 8 {
                    self.align()?;
                    let at = self.position;
                    self.write(&entry.data)?;
                    Some(at)
                } else {
                    None
                };
                placed.push(offset);
            }
            self.align()?;
            ifd_offsets.push(self.position);
            let mut ifd = Vec::with_capacity(8 + entries.len() * 20 + 8);
            ifd.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            for (entry, offset) in entries.iter().zip(&placed) {
                ifd.extend_from_slice(&entry.tag.to_le_bytes());
                ifd.extend_from_slice(&entry.kind.to_le_bytes());
                ifd.extend_from_slice(&entry.count.to_le_bytes());
                let mut value = [0u8; 8];
                match offset {
                    Some(at) => value.copy_from_slice(&at.to_le_bytes()),
                    None => value[..entry.data.len()].copy_from_slice(&entry.data),
                }
                ifd.extend_from_slice(&value);
            }
            ifd.extend_from_slice(&0u64.to_le_bytes()); // next IFD, patched below
            self.write(&ifd)?;
        }
        // Chain the directories: each one's last 8 bytes point to the next.
        let io = |source| WsiError::Io {
            path: self.final_path.clone(),
            source,
        };
        for (i, window) in ifd_offsets.windows(2).enumerate() {
            let next_field = window[0] + 8 + entries_per_level[i].len() as u64 * 20;
            self.file.seek(SeekFrom::Start(next_field)).map_err(io)?;
            self.file.write_all(&window[1].to_le_bytes()).map_err(io)?;
        }
        self.file.seek(SeekFrom::Start(self.position)).map_err(io)?;
        Ok(ifd_offsets[0])
    }

    fn align(&mut self) -> Result<()> {
        if !self.position.is_multiple_of(2) {
            self.write(&[0])?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(|source| WsiError::Io {
            path: self.final_path.clone(),
            source,
        })?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn bad(&self, reason: String) -> WsiError {
        WsiError::BadRequest {
            path: self.final_path.clone(),
            reason,
        }
    }
}

fn deflate(pixels: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(pixels.len() / 4),
        flate2::Compression::new(level),
    );
    encoder
        .write_all(pixels)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// 2x2 mean (rounded) of `rows` rows of `width` pixels into rows of `out_width` pixels.
fn halve(band: &[u8], width: usize, rows: usize, channels: usize, out_width: usize) -> Vec<u8> {
    let out_rows = rows / 2;
    let mut out = vec![0u8; out_rows * out_width * channels];
    for r in 0..out_rows {
        let top = &band[(2 * r) * width * channels..][..width * channels];
        let bottom = &band[(2 * r + 1) * width * channels..][..width * channels];
        let dst = &mut out[r * out_width * channels..][..out_width * channels];
        for x in 0..out_width {
            for c in 0..channels {
                let i = 2 * x * channels + c;
                let j = i + channels;
                let sum = top[i] as u32 + top[j] as u32 + bottom[i] as u32 + bottom[j] as u32;
                dst[x * channels + c] = ((sum + 2) / 4) as u8;
            }
        }
    }
    out
}

/// Pixels per cm as a rational with the largest power-of-ten denominator that fits.
fn pixels_per_cm(mpp: f64) -> (u32, u32) {
    let value = 1e4 / mpp;
    let mut denominator = 1u32;
    while denominator < 1_000_000 && value * (denominator as f64 * 10.0) < u32::MAX as f64 {
        denominator *= 10;
    }
    ((value * denominator as f64).round() as u32, denominator)
}

struct Entry {
    tag: u16,
    kind: u16,
    count: u64,
    data: Vec<u8>,
}

const SHORT: u16 = 3;
const LONG: u16 = 4;
const RATIONAL: u16 = 5;
const LONG8: u16 = 16;

fn short(tag: u16, values: &[u16]) -> Entry {
    Entry {
        tag,
        kind: SHORT,
        count: values.len() as u64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn long(tag: u16, value: u32) -> Entry {
    Entry {
        tag,
        kind: LONG,
        count: 1,
        data: value.to_le_bytes().to_vec(),
    }
}

fn long8(tag: u16, values: &[u64]) -> Entry {
    Entry {
        tag,
        kind: LONG8,
        count: values.len() as u64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn rational(tag: u16, (numerator, denominator): (u32, u32)) -> Entry {
    let mut data = numerator.to_le_bytes().to_vec();
    data.extend_from_slice(&denominator.to_le_bytes());
    Entry {
        tag,
        kind: RATIONAL,
        count: 1,
        data,
    }
}

/// A level's tags, in ascending tag order as TIFF requires.
fn directory_entries(
    level: &LevelState,
    reduced: bool,
    tile: u32,
    channels: Channels,
    resolution: Option<(u32, u32)>,
) -> Vec<Entry> {
    let samples = channels as u16;
    let mut entries = vec![
        long(254, reduced as u32),                       // NewSubfileType
        long(256, level.width as u32),                   // ImageWidth
        long(257, level.height as u32),                  // ImageLength
        short(258, &vec![8; samples as usize]),          // BitsPerSample
        short(259, &[8]),                                // Compression: deflate
        short(262, &[if samples == 1 { 1 } else { 2 }]), // Photometric: grey or RGB
        short(277, &[samples]),                          // SamplesPerPixel
    ];
    if let Some(resolution) = resolution {
        entries.push(rational(282, resolution)); // XResolution
        entries.push(rational(283, resolution)); // YResolution
    }
    entries.push(short(284, &[1])); // PlanarConfiguration: contiguous
    if resolution.is_some() {
        entries.push(short(296, &[3])); // ResolutionUnit: cm
    }
    entries.extend([
        long(322, tile),                // TileWidth
        long(323, tile),                // TileLength
        long8(324, &level.offsets),     // TileOffsets
        long8(325, &level.byte_counts), // TileByteCounts
    ]);
    entries
}
