//! The image directories of a slide, parsed once at open with the `tiff` crate, and checked so
//! that reading a tile later can neither run off the file nor allocate without bound.
//!
//! A pyramid is either the main IFD chain (Camelyon/libvips, tifffile pages) or the SubIFDs of
//! the first image (libvips `--subifd`, OME-TIFF). Strips are treated as tiles as wide as the
//! image, so every layout is one grid of chunks. Aperio's SVS is such a chain, with its
//! thumbnail, label and macro as stripped images between and after the levels.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use tiff::decoder::ifd::Value;
use tiff::decoder::{Decoder, IfdDecoder, Limits};
use tiff::tags::Tag;

use crate::error::{Result, WsiError};
use crate::metadata::{self, Metadata};
use crate::tiled_slide::Pyramid;

/// A decoded chunk is at most this many bytes: a guard against absurd declared dimensions.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Largest side a slide may declare (OpenSlide's largest vendor slides are ~200k pixels).
pub const MAX_SIDE: u64 = 1 << 24;

/// How a chunk's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lzw,
    Deflate,
    Jpeg,
    Zstd,
    /// A JPEG 2000 codestream a chunk; `ycbcr`: its components are Y, Cb and Cr, to be
    /// converted to RGB (Aperio's 33003), else the codestream's own colour transform, if any,
    /// gives RGB.
    Jpeg2000 {
        ycbcr: bool,
    },
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lzw => "lzw",
            Compression::Deflate => "deflate",
            Compression::Jpeg => "jpeg",
            Compression::Zstd => "zstd",
            Compression::Jpeg2000 { .. } => "jpeg2000",
        }
    }

    fn from_code(code: u16) -> std::result::Result<Compression, String> {
        Ok(match code {
            1 => Compression::None,
            5 => Compression::Lzw,
            8 | 32946 => Compression::Deflate,
            7 => Compression::Jpeg,
            50000 => Compression::Zstd,
            // Aperio's JPEG 2000 (YCbCr components, or RGB ones), and TIFF's own (tifffile's).
            33003 => Compression::Jpeg2000 { ycbcr: true },
            33005 | 34712 => Compression::Jpeg2000 { ycbcr: false },
            6 => return Err("old-style JPEG compression (6)".into()),
            other => {
                let name = match other {
                    34887 => "LERC ",
                    50001 => "WebP ",
                    50002 | 52546 => "JPEG XL ",
                    _ => "",
                };
                return Err(format!("{name}compression ({other})"));
            }
        })
    }
}

/// One image (a resolution level or an associated image): its size, chunk grid and where
/// each chunk lies in which file.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Index of the slide's file holding the chunks (DICOM keeps each level in its own).
    pub file: usize,
    pub width: u64,
    pub height: u64,
    /// Chunk (tile or strip) size; a strip is as wide as the image.
    pub chunk_width: u64,
    pub chunk_height: u64,
    pub tiled: bool,
    pub compression: Compression,
    pub samples_per_pixel: u16,
    /// TIFF predictor 2 (horizontal differencing) is applied.
    pub horizontal_predictor: bool,
    /// The shared JPEG tables (`JPEGTables`), spliced before each tile's stream.
    pub jpeg_tables: Option<Vec<u8>>,
    pub offsets: Vec<u64>,
    pub byte_counts: Vec<u64>,
}

impl Directory {
    pub fn chunks_across(&self) -> u64 {
        self.width.div_ceil(self.chunk_width)
    }

    pub fn chunks_down(&self) -> u64 {
        self.height.div_ceil(self.chunk_height)
    }
}

/// Reads every level's directory, largest first, and the associated images of an Aperio slide.
pub fn read_tiff(path: &Path, file: File, file_len: u64) -> Result<Pyramid> {
    let not_tiff = |err: tiff::TiffError| WsiError::NotTiff {
        path: path.to_path_buf(),
        reason: match err {
            tiff::TiffError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the file ends inside its directories (truncated?)".to_string()
            }
            err => err.to_string(),
        },
    };
    if file_len == 0 {
        return Err(WsiError::NotTiff {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    let mut limits = Limits::default();
    // A 200k x 100k slide in 256 tiles has 300k tile offsets of 8 bytes.
    limits.ifd_value_size = 64 << 20;
    let mut decoder = Decoder::new(BufReader::new(file))
        .map_err(not_tiff)?
        .with_limits(limits);
    let context = Context { path, file_len };

    let first = context.directory(&mut decoder.image_ifd())?;
    let tags = context.text_tags(&mut decoder.image_ifd())?;
    let mpp = context.mpp(&mut decoder.image_ifd())?;
    let description = tags
        .get("tiff.ImageDescription")
        .cloned()
        .unwrap_or_default();
    let mut metadata = metadata::aperio(&description).unwrap_or_else(|| Metadata {
        vendor: "generic-tiff".into(),
        mpp,
        ..Metadata::default()
    });
    metadata.properties.extend(tags);
    if !description.is_empty() {
        metadata
            .properties
            .insert("openslide.comment".into(), description);
    }
    let aperio = metadata.vendor == "aperio";

    let sub_ifds = match decoder.find_tag(Tag::SubIfd).map_err(not_tiff)? {
        Some(value) => value.into_ifd_vec().map_err(not_tiff)?,
        None => Vec::new(),
    };
    let tiled = first.tiled;
    let mut levels = vec![first];
    let mut associated = Vec::new();
    let layout = if !sub_ifds.is_empty() {
        for (index, pointer) in sub_ifds.into_iter().enumerate() {
            let dir = decoder.read_directory(pointer).map_err(not_tiff)?;
            let level = context.directory(&mut decoder.read_directory_tags(&dir))?;
            // Each level is smaller than the one before: a SubIFD that points back at IFD 0,
            // or repeats a level, is not one.
            let before = levels.last().expect("level 0 is in");
            if level.width >= before.width && level.height >= before.height {
                return Err(WsiError::Damaged {
                    path: path.to_path_buf(),
                    reason: format!(
                        "SubIFD {index} is {}x{}, not smaller than the level before it ({}x{})",
                        level.width, level.height, before.width, before.height
                    ),
                });
            }
            levels.push(level);
        }
        "subifds"
    } else {
        let mut index = 0;
        while decoder.more_images() {
            decoder.next_image().map_err(not_tiff)?;
            index += 1;
            let mut tags = decoder.image_ifd();
            // Keep full images and reduced-resolution levels; skip masks, labels, macros.
            let subfile = tags
                .find_tag_unsigned::<u32>(Tag::NewSubfileType)
                .map_err(not_tiff)?
                .unwrap_or(0);
            let stripped = tags.find_tag(Tag::TileWidth).map_err(not_tiff)?.is_none();
            if tiled && stripped {
                // Beside a tiled pyramid, a stripped image is an associated one. Aperio's
                // second image is the thumbnail; its label and macro say what they are.
                if aperio {
                    let description = context
                        .text_tags(&mut tags)?
                        .remove("tiff.ImageDescription")
                        .unwrap_or_default();
                    let name = if index == 1 {
                        Some("thumbnail")
                    } else if description.contains("label") {
                        Some("label")
                    } else if description.contains("macro") {
                        Some("macro")
                    } else {
                        None
                    };
                    // An associated image we cannot read does not stop the slide's levels.
                    if let (Some(name), Ok(image)) = (name, context.directory(&mut tags)) {
                        associated.push((name.to_string(), image));
                    }
                }
                continue;
            }
            if subfile & !1 != 0 {
                continue;
            }
            let level = context.directory(&mut tags)?;
            // A pyramid level is smaller than the one before (associated images are not).
            if level.width < levels.last().map_or(u64::MAX, |l| l.width) {
                levels.push(level);
            }
        }
        if levels.len() > 1 {
            "ifd-chain"
        } else {
            "single"
        }
    };
    levels.sort_by_key(|level| std::cmp::Reverse(level.width));
    Ok(Pyramid {
        files: vec![path.to_path_buf()],
        levels,
        associated,
        layout,
        metadata,
    })
}

struct Context<'a> {
    path: &'a Path,
    file_len: u64,
}

impl Context<'_> {
    fn damaged(&self, reason: String) -> WsiError {
        WsiError::Damaged {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn unsupported(&self, what: String) -> WsiError {
        WsiError::Unsupported {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn tag_error(&self, err: tiff::TiffError) -> WsiError {
        self.damaged(err.to_string())
    }

    fn directory(&self, tags: &mut IfdDecoder) -> Result<Directory> {
        let unsigned = |tags: &mut IfdDecoder, tag: Tag| -> Result<Option<u64>> {
            tags.find_tag_unsigned::<u64>(tag)
                .map_err(|e| self.tag_error(e))
        };
        let required = |tags: &mut IfdDecoder, tag: Tag| -> Result<u64> {
            unsigned(tags, tag)?.ok_or_else(|| self.damaged(format!("no {tag:?} tag")))
        };
        let width = required(tags, Tag::ImageWidth)?;
        let height = required(tags, Tag::ImageLength)?;
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(self.damaged(format!(
                "declared size {width}x{height} is outside 1..={MAX_SIDE} pixels a side"
            )));
        }
        let compression =
            Compression::from_code(unsigned(tags, Tag::Compression)?.unwrap_or(1) as u16)
                .map_err(|what| self.unsupported(what))?;
        let samples_per_pixel = unsigned(tags, Tag::SamplesPerPixel)?.unwrap_or(1) as u16;
        let bits = tags
            .find_tag_unsigned_vec::<u16>(Tag::BitsPerSample)
            .map_err(|e| self.tag_error(e))?
            .unwrap_or_else(|| vec![1]);
        if bits.iter().any(|&b| b != 8) {
            return Err(self.unsupported(format!("{bits:?} bits per sample (8 is supported)")));
        }
        if !matches!(samples_per_pixel, 1 | 3 | 4) {
            return Err(self.unsupported(format!("{samples_per_pixel} samples per pixel")));
        }
        if unsigned(tags, Tag::PlanarConfiguration)?.unwrap_or(1) != 1 {
            return Err(self.unsupported("separate colour planes (PlanarConfiguration 2)".into()));
        }
        let photometric = unsigned(tags, Tag::PhotometricInterpretation)?.unwrap_or(2);
        // YCbCr is read only inside JPEG and JPEG 2000 streams, converted to RGB as they decode.
        if photometric == 6
            && !matches!(
                compression,
                Compression::Jpeg | Compression::Jpeg2000 { .. }
            )
        {
            return Err(self.unsupported("YCbCr without JPEG compression".into()));
        }
        let horizontal_predictor = match unsigned(tags, Tag::Predictor)?.unwrap_or(1) {
            1 => false,
            2 => true,
            other => return Err(self.unsupported(format!("predictor {other}"))),
        };
        let jpeg_tables = match tags
            .find_tag(Tag::JPEGTables)
            .map_err(|e| self.tag_error(e))?
        {
            Some(value) => Some(value.into_u8_vec().map_err(|e| self.tag_error(e))?),
            None => None,
        };

        let tile_width = unsigned(tags, Tag::TileWidth)?;
        let (tiled, chunk_width, chunk_height, offsets, byte_counts) = match tile_width {
            Some(tile_width) => {
                let tile_height = required(tags, Tag::TileLength)?;
                let offsets = self.u64_vec(tags, Tag::TileOffsets)?;
                let counts = self.u64_vec(tags, Tag::TileByteCounts)?;
                (true, tile_width, tile_height, offsets, counts)
            }
            None => {
                let rows = unsigned(tags, Tag::RowsPerStrip)?
                    .unwrap_or(height)
                    .min(height);
                let offsets = self.u64_vec(tags, Tag::StripOffsets)?;
                let counts = self.u64_vec(tags, Tag::StripByteCounts)?;
                (false, width, rows, offsets, counts)
            }
        };
        let chunk_bytes = chunk_width
            .checked_mul(chunk_height)
            .and_then(|n| n.checked_mul(samples_per_pixel as u64));
        if chunk_width == 0 || chunk_height == 0 || chunk_bytes.is_none_or(|n| n > MAX_CHUNK_BYTES)
        {
            return Err(self.damaged(format!(
                "chunk size {chunk_width}x{chunk_height} is zero or over {MAX_CHUNK_BYTES} bytes decoded"
            )));
        }
        let directory = Directory {
            file: 0,
            width,
            height,
            chunk_width,
            chunk_height,
            tiled,
            compression,
            samples_per_pixel,
            horizontal_predictor,
            jpeg_tables,
            offsets,
            byte_counts,
        };
        let chunks = directory.chunks_across() * directory.chunks_down();
        if directory.offsets.len() as u64 != chunks || directory.byte_counts.len() as u64 != chunks
        {
            return Err(self.damaged(format!(
                "{width}x{height} in {chunk_width}x{chunk_height} chunks needs {chunks} offsets and byte counts, found {} and {}",
                directory.offsets.len(),
                directory.byte_counts.len()
            )));
        }
        for (index, (&offset, &count)) in directory
            .offsets
            .iter()
            .zip(&directory.byte_counts)
            .enumerate()
        {
            // A chunk inside the file's header is no chunk.
            if count > 0 && offset < 8 {
                return Err(self.damaged(format!(
                    "chunk {index} starts at offset {offset}, inside the file's header"
                )));
            }
            if offset
                .checked_add(count)
                .is_none_or(|end| end > self.file_len)
            {
                return Err(self.damaged(format!(
                    "chunk {index} ({count} bytes at offset {offset}) lies past the end of the file ({} bytes): is it truncated?",
                    self.file_len
                )));
            }
        }
        Ok(directory)
    }

    /// The descriptive text and resolution tags, as OpenSlide's `tiff.*` properties.
    fn text_tags(&self, tags: &mut IfdDecoder) -> Result<BTreeMap<String, String>> {
        let mut properties = BTreeMap::new();
        let text = [
            (Tag::ImageDescription, "ImageDescription"),
            (Tag::Make, "Make"),
            (Tag::Model, "Model"),
            (Tag::Software, "Software"),
            (Tag::DateTime, "DateTime"),
            (Tag::Artist, "Artist"),
            (Tag::HostComputer, "HostComputer"),
            (Tag::Copyright, "Copyright"),
            (Tag::Unknown(269), "DocumentName"),
        ];
        for (tag, name) in text {
            // Text that is not ASCII is left out rather than refusing the slide.
            if let Some(Ok(value)) = tags
                .find_tag(tag)
                .map_err(|e| self.tag_error(e))?
                .map(Value::into_string)
            {
                properties.insert(
                    format!("tiff.{name}"),
                    value.trim_end_matches('\0').to_string(),
                );
            }
        }
        for (tag, name) in [
            (Tag::XResolution, "XResolution"),
            (Tag::YResolution, "YResolution"),
        ] {
            if let Some(value) = tags
                .find_tag(tag)
                .map_err(|e| self.tag_error(e))?
                .and_then(rational)
            {
                properties.insert(format!("tiff.{name}"), value.to_string());
            }
        }
        if let Some(unit) = tags
            .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
            .map_err(|e| self.tag_error(e))?
        {
            let unit = match unit {
                1 => "none",
                2 => "inch",
                3 => "centimeter",
                _ => "unknown",
            };
            properties.insert("tiff.ResolutionUnit".into(), unit.into());
        }
        Ok(properties)
    }

    fn u64_vec(&self, tags: &mut IfdDecoder, tag: Tag) -> Result<Vec<u64>> {
        tags.find_tag_unsigned_vec::<u64>(tag)
            .map_err(|e| self.tag_error(e))?
            .ok_or_else(|| self.damaged(format!("no {tag:?} tag")))
    }

    /// Microns per pixel: 10^4 / pixels-per-cm, or 25400 / pixels-per-inch.
    fn mpp(&self, tags: &mut IfdDecoder) -> Result<Option<f64>> {
        let resolution = match tags
            .find_tag(Tag::XResolution)
            .map_err(|e| self.tag_error(e))?
        {
            Some(value) => rational(value),
            None => return Ok(None),
        };
        let unit = tags
            .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
            .map_err(|e| self.tag_error(e))?
            .unwrap_or(2);
        let microns_per_unit = match unit {
            3 => 1e4,
            2 => 25400.0,
            _ => return Ok(None),
        };
        Ok(resolution
            .filter(|r| *r > 0.0 && r.is_finite())
            .map(|r| microns_per_unit / r))
    }
}

fn rational(value: Value) -> Option<f64> {
    match value {
        Value::Rational(n, d) if d != 0 => Some(n as f64 / d as f64),
        other => other.into_f64().ok(),
    }
}
