//! A pyramidal tiled BigTIFF writer that takes the image as a stream of tile rows.
//!
//! Only one band (a row of tiles) per level is held: when level k's band fills, its tiles are
//! deflated (in parallel) and appended to the file, and the band is halved (2x2 mean) into level
//! k+1's band. Directories are written at the end, each level with its own resolution tags,
//! reduced ones marked `NewSubfileType = 1`: all in the main IFD chain (what OpenSlide reads),
//! or, as OME-TIFF, level 0 alone in the chain carrying the OME-XML and the others as its
//! SubIFDs (what Bio-Formats reads: QuPath, Fiji, OMERO). The file is written
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

/// How the levels are stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Layout {
    /// Every level in the main IFD chain (OpenSlide, libvips, ASAP).
    #[default]
    Chained,
    /// OME-TIFF: the image and its channels named in OME-XML, the physical pixel size from
    /// `mpp`, the reduced levels as level 0's SubIFDs.
    Ome {
        image: String,
        channels: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Tile side: 256 or 512.
    pub tile: u32,
    /// Level-0 microns per pixel, written as resolution tags in pixels per cm.
    pub mpp: Option<f64>,
    /// Deflate level, 1 (fast) to 9 (small).
    pub deflate_level: u32,
    pub layout: Layout,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            tile: 512,
            mpp: None,
            deflate_level: 3,
            layout: Layout::Chained,
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
        if let Layout::Ome {
            channels: names, ..
        } = &options.layout
            && names.len() != channels as usize
        {
            return Err(bad(format!(
                "{} channel names for {} channels",
                names.len(),
                channels as usize
            )));
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
            cause: source,
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
                cause: err.error,
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
        self.patch(8, first_ifd)?;
        let io = |source| WsiError::Io {
            path: self.final_path.clone(),
            cause: source,
        };
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
                self.channels,
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

    /// Writes every level's IFD; returns level 0's, the first of the main chain.
    fn write_directories(&mut self) -> Result<u64> {
        let base_width = self.levels[0].width as f64;
        let mut entries_per_level: Vec<Vec<Entry>> = self
            .levels
            .iter()
            .enumerate()
            .map(|(index, level)| {
                let downsample = base_width / level.width as f64;
                let resolution = self.options.mpp.map(|mpp| pixels_per_cm(mpp * downsample));
                directory_entries(
                    level,
                    index > 0,
                    self.options.tile,
                    self.channels,
                    resolution,
                )
            })
            .collect();
        match self.options.layout.clone() {
            Layout::Chained => {
                let offsets = entries_per_level
                    .iter()
                    .map(|entries| self.write_directory(entries))
                    .collect::<Result<Vec<u64>>>()?;
                // Chain the directories: each one's last 8 bytes point to the next.
                for (i, window) in offsets.windows(2).enumerate() {
                    let next_field = window[0] + 8 + entries_per_level[i].len() as u64 * 20;
                    self.patch(next_field, window[1])?;
                }
                Ok(offsets[0])
            }
            Layout::Ome { image, channels } => {
                // The reduced levels first, so that level 0 can name where they are.
                let reduced = entries_per_level[1..]
                    .iter()
                    .map(|entries| self.write_directory(entries))
                    .collect::<Result<Vec<u64>>>()?;
                let base = &self.levels[0];
                let xml = ome_xml(&image, &channels, base.width, base.height, self.options.mpp);
                let first = &mut entries_per_level[0];
                first.push(ascii(270, &xml)); // ImageDescription
                if !reduced.is_empty() {
                    first.push(Entry {
                        tag: 330, // SubIFDs
                        kind: IFD8,
                        count: reduced.len() as u64,
                        data: reduced.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    });
                }
                first.sort_by_key(|entry| entry.tag);
                self.write_directory(&entries_per_level[0])
            }
        }
    }

    /// Writes one IFD (its long values just before it), its next-IFD field 0; returns its
    /// offset.
    fn write_directory(&mut self, entries: &[Entry]) -> Result<u64> {
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
        let at = self.position;
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
        ifd.extend_from_slice(&0u64.to_le_bytes());
        self.write(&ifd)?;
        Ok(at)
    }

    /// Overwrites the 8 bytes at `at` with `value`, then returns to the end of the file.
    fn patch(&mut self, at: u64, value: u64) -> Result<()> {
        let io = |source| WsiError::Io {
            path: self.final_path.clone(),
            cause: source,
        };
        self.file.seek(SeekFrom::Start(at)).map_err(io)?;
        self.file.write_all(&value.to_le_bytes()).map_err(io)?;
        self.file.seek(SeekFrom::Start(self.position)).map_err(io)?;
        Ok(())
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
            cause: source,
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

/// 2x2 mean (rounded) of `rows` rows of `width` pixels into rows of `out_width` pixels
/// (`out_width <= width / 2`).
fn halve(band: &[u8], width: usize, rows: usize, channels: Channels, out_width: usize) -> Vec<u8> {
    match channels {
        Channels::Grey => halve_pixels::<1>(band, width, rows, out_width),
        Channels::Rgb => halve_pixels::<3>(band, width, rows, out_width),
    }
}

/// [`halve`] for pixels of `N` bytes, the pixel size known to the compiler so that the loop
/// runs on whole vectors (it was a third of the probability map's writing time).
fn halve_pixels<const N: usize>(
    band: &[u8],
    width: usize,
    rows: usize,
    out_width: usize,
) -> Vec<u8> {
    let row = width * N;
    let mut out = vec![0u8; rows / 2 * out_width * N];
    for (dst, pair) in out
        .chunks_exact_mut(out_width * N)
        .zip(band.chunks_exact(2 * row))
    {
        let (top, bottom) = pair.split_at(row);
        let above = top.chunks_exact(2 * N);
        let below = bottom.chunks_exact(2 * N);
        for ((pixel, a), b) in dst.chunks_exact_mut(N).zip(above).zip(below) {
            for c in 0..N {
                let sum = a[c] as u16 + a[c + N] as u16 + b[c] as u16 + b[c + N] as u16;
                pixel[c] = ((sum + 2) / 4) as u8;
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
const IFD8: u16 = 18;
const ASCII: u16 = 2;

/// A NUL-terminated ASCII value (OME-XML is written with XML escapes only, so it is ASCII
/// when its names are).
fn ascii(tag: u16, text: &str) -> Entry {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    Entry {
        tag,
        kind: ASCII,
        count: data.len() as u64,
        data,
    }
}

/// The OME-XML of a one-plane u8 image: its size, its channels' names and, when known, its
/// physical pixel size in µm; all of it in IFD 0.
fn ome_xml(image: &str, channels: &[String], width: u64, height: u64, mpp: Option<f64>) -> String {
    let physical = mpp.map_or(String::new(), |mpp| {
        format!(
            " PhysicalSizeX=\"{mpp}\" PhysicalSizeXUnit=\"&#181;m\" PhysicalSizeY=\"{mpp}\" PhysicalSizeYUnit=\"&#181;m\""
        )
    });
    // One channel of `samples` samples: grey, or RGB interleaved as Bio-Formats reads it.
    let samples = channels.len();
    let channel = format!(
        "<Channel ID=\"Channel:0:0\" Name=\"{}\" SamplesPerPixel=\"{samples}\"/>",
        xml_escape(&channels.join(" "))
    );
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
xsi:schemaLocation=\"http://www.openmicroscopy.org/Schemas/OME/2016-06 http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd\" \
Creator=\"wsi-unet\">\
<Image ID=\"Image:0\" Name=\"{name}\">\
<Pixels ID=\"Pixels:0\" DimensionOrder=\"XYCZT\" Type=\"uint8\" SizeX=\"{width}\" SizeY=\"{height}\" \
SizeC=\"{samples}\" SizeZ=\"1\" SizeT=\"1\" Interleaved=\"true\"{physical}>\
{channel}<TiffData IFD=\"0\" PlaneCount=\"1\"/></Pixels></Image></OME>",
        name = xml_escape(image),
    )
}

/// `text` with XML's five special characters escaped and anything beyond ASCII as a
/// character reference.
fn xml_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if c.is_ascii() => c.to_string(),
            c => format!("&#{};", c as u32),
        })
        .collect()
}

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
