//! One chunk's bytes to RGB8 pixels: decompression, the TIFF predictor, and sample layout.

use std::io::Read;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::directory::{Compression, Directory};
use crate::error::DecodeError;

/// Decodes chunk `data` of `dir`, `rows` rows high, into RGB8 of `dir.chunk_width` x `rows`.
pub fn decode_chunk(dir: &Directory, data: &[u8], rows: u64) -> Result<Vec<u8>, DecodeError> {
    let width = dir.chunk_width as usize;
    let rows = rows as usize;
    let samples = dir.samples_per_pixel as usize;
    match dir.compression {
        Compression::Jpeg => return decode_jpeg(dir, data, width, rows),
        Compression::Jpeg2000 { ycbcr } => return decode_jpeg2000(dir, data, rows, ycbcr),
        _ => {}
    }
    let expected = width * rows * samples;
    let mut raw = match dir.compression {
        Compression::None => data.to_vec(),
        Compression::Deflate => {
            let mut out = Vec::with_capacity(expected);
            flate2::read::ZlibDecoder::new(data)
                .take(expected as u64)
                .read_to_end(&mut out)
                .map_err(DecodeError::Deflate)?;
            out
        }
        Compression::Zstd => {
            let mut out = Vec::with_capacity(expected);
            // The window a frame declares (at most ruzstd's 128 MiB, what libzstd's strongest
            // level asks for without a known size) is reserved, not written: the output is
            // what is bounded.
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| DecodeError::Zstd(std::io::Error::other(e)))?
                .take(expected as u64)
                .read_to_end(&mut out)
                .map_err(DecodeError::Zstd)?;
            out
        }
        Compression::Lzw => {
            let mut out = Vec::with_capacity(expected);
            let mut decoder =
                weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
            let result = decoder.into_stream(&mut out).decode_all(data);
            // Some writers end without an end-of-information code: what decoded is kept.
            if let Err(e) = result.status
                && out.len() < expected
            {
                return Err(DecodeError::Lzw(e));
            }
            out
        }
        Compression::Jpeg | Compression::Jpeg2000 { .. } => unreachable!("handled above"),
    };
    if raw.len() < expected {
        return Err(DecodeError::Short {
            found: raw.len(),
            expected,
            width,
            rows,
            samples,
        });
    }
    raw.truncate(expected);
    if dir.horizontal_predictor {
        undo_horizontal_predictor(&mut raw, width, samples);
    }
    Ok(to_rgb(raw, samples))
}

/// TIFF predictor 2 on 8-bit samples: each sample is stored as the difference to the one left of it.
fn undo_horizontal_predictor(raw: &mut [u8], width: usize, samples: usize) {
    for row in raw.chunks_exact_mut(width * samples) {
        for i in samples..row.len() {
            row[i] = row[i].wrapping_add(row[i - samples]);
        }
    }
}

/// Grey is repeated into R, G and B; alpha is dropped.
fn to_rgb(raw: Vec<u8>, samples: usize) -> Vec<u8> {
    match samples {
        3 => raw,
        1 => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        2 => raw
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        _ => raw
            .chunks_exact(samples)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    }
}

/// A TIFF JPEG tile: the shared tables (without their end marker) spliced before the tile's
/// stream (without its start marker), then decoded as libjpeg-turbo (and so OpenSlide) decodes
/// it: zune-jpeg's IDCT matches libjpeg's, its chroma upsampling is patched to libjpeg's
/// rounding (vendor/zune-jpeg/PATCHED.md), and YCbCr is converted to RGB here with libjpeg's
/// fixed-point tables. An RGB stream (Adobe transform 0) is taken as it is.
fn decode_jpeg(
    dir: &Directory,
    data: &[u8],
    width: usize,
    rows: usize,
) -> Result<Vec<u8>, DecodeError> {
    let stream;
    let bytes = match &dir.jpeg_tables {
        Some(tables) if tables.len() > 4 && data.len() > 2 => {
            let mut merged = Vec::with_capacity(tables.len() + data.len());
            merged.extend_from_slice(&tables[..tables.len() - 2]);
            merged.extend_from_slice(&data[2..]);
            stream = merged;
            &stream[..]
        }
        _ => data,
    };
    let options = DecoderOptions::default()
        .set_max_width(width)
        .set_max_height(dir.chunk_height as usize);
    // A decoder bug must not take the process down with it: a damaged tile is an error.
    let decoded = std::panic::catch_unwind(|| -> Result<_, DecodeError> {
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        decoder.decode_headers().map_err(DecodeError::Jpeg)?;
        let ycbcr = decoder.input_colorspace() == Some(ColorSpace::YCbCr);
        let out = if ycbcr {
            ColorSpace::YCbCr
        } else {
            ColorSpace::RGB
        };
        decoder.set_options(options.jpeg_set_out_colorspace(out));
        let mut pixels = decoder.decode().map_err(DecodeError::Jpeg)?;
        if ycbcr {
            ycbcr_to_rgb(&mut pixels);
        }
        let (found_width, found_height) = decoder.dimensions().unwrap_or_default();
        Ok((pixels, found_width, found_height))
    })
    .map_err(|_| DecodeError::Panicked { codec: "jpeg" })?;
    let (pixels, found_width, found_height) = decoded?;
    first_rows(pixels, (found_width, found_height), width, rows)
}

/// The chunk's `rows` rows of RGB8 `pixels` decoded at `found` (width, height), which must be
/// the chunk's width and at least `rows` high.
fn first_rows(
    mut pixels: Vec<u8>,
    found: (usize, usize),
    width: usize,
    rows: usize,
) -> Result<Vec<u8>, DecodeError> {
    if found.0 != width || found.1 < rows || pixels.len() < width * rows * 3 {
        return Err(size_error(found, width, rows));
    }
    pixels.truncate(width * rows * 3);
    Ok(pixels)
}

/// A tile that decodes to `found` (width, height) where the directory says `width` x `rows`.
fn size_error(found: (usize, usize), width: usize, rows: usize) -> DecodeError {
    DecodeError::Size {
        found_width: found.0,
        found_height: found.1,
        width,
        rows,
    }
}

/// A JPEG 2000 chunk (a raw codestream, as Aperio and DICOM store them, or a JP2 file),
/// decoded by hayro-jpeg2000. Where the codestream has a colour transform (MCT), the decoder
/// inverts it to RGB, whatever the label (DICOM's YBR_ICT names that transform). Aperio's
/// 33003 codes Y, Cb and Cr without one, the chroma often at half the width: OpenSlide takes
/// each component rounded to 8 bits, repeats the chroma across, and converts with the JFIF
/// formula, as here with libjpeg's tables (OpenSlide's own round 24 of the 65536 (Cb, Cr)
/// pairs' green the other way).
fn decode_jpeg2000(
    dir: &Directory,
    data: &[u8],
    rows: usize,
    ycbcr: bool,
) -> Result<Vec<u8>, DecodeError> {
    use hayro_jpeg2000::{ColorSpace as J2kColour, DecodeSettings, DecoderContext, Image};
    let (width, height) = (dir.chunk_width as usize, dir.chunk_height as usize);
    let codestream = codestream_of(data).ok_or(DecodeError::NotJpeg2000)?;
    // What the decoder allocates grows with the components' count and the image's size: a
    // tile has at most 4 (RGBA), and the chunk's size (checked below, before decoding).
    let components = codestream
        .get(40..42)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    if !matches!(components, Some(1..=4)) {
        return Err(DecodeError::Jpeg2000Components(components.unwrap_or(0)));
    }
    let ycbcr = ycbcr && codestream.len() == data.len() && !colour_transformed(codestream);
    let declared;
    let data = if ycbcr {
        declared = declared_as_is(data);
        &declared[..]
    } else {
        data
    };
    // A decoder bug must not take the process down with it: a damaged tile is an error.
    let decoded = std::panic::catch_unwind(|| -> Result<_, DecodeError> {
        let image = Image::new(data, &DecodeSettings::default()).map_err(DecodeError::Jpeg2000)?;
        let found = (image.width() as usize, image.height() as usize);
        if found.0 != width || found.1 < rows || found.1 > height {
            return Err(size_error(found, width, rows));
        }
        let samples = match (image.color_space(), image.has_alpha()) {
            (J2kColour::Gray, alpha) => 1 + alpha as usize,
            (J2kColour::RGB, alpha) => 3 + alpha as usize,
            (other, _) => return Err(DecodeError::Jpeg2000Colour(format!("{other:?}"))),
        };
        let mut context = DecoderContext::default();
        let image = image.decode(&mut context).map_err(DecodeError::Jpeg2000)?;
        Ok((image.data_u8(), found, samples))
    })
    .map_err(|_| DecodeError::Panicked { codec: "jpeg 2000" })?;
    let (raw, found, samples) = decoded?;
    let mut pixels = to_rgb(raw, samples);
    if ycbcr && samples >= 3 {
        ycbcr_to_rgb(&mut pixels);
    }
    first_rows(pixels, found, width, rows)
}

/// The codestream of a chunk that is one (SOC, SIZ...) or a JP2 file holding one (its
/// contiguous codestream box).
fn codestream_of(data: &[u8]) -> Option<&[u8]> {
    const CODESTREAM_START: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    if data.starts_with(&CODESTREAM_START) {
        return Some(data);
    }
    // JP2 boxes: a 32-bit length (0: to the end of the file; 1: a 64-bit one follows), a type.
    let mut at = 0;
    while let Some(header) = data.get(at..at + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let (start, end) = match length {
            0 => (at + 8, data.len()),
            1 => {
                let long = data.get(at + 8..at + 16)?;
                let long = usize::try_from(u64::from_be_bytes(long.try_into().ok()?)).ok()?;
                (at + 16, at.checked_add(long)?)
            }
            _ => (at + 8, at.checked_add(length)?),
        };
        let contents = data.get(start..end)?;
        if &header[4..8] == b"jp2c" {
            return contents.starts_with(&CODESTREAM_START).then_some(contents);
        }
        at = end;
    }
    None
}

/// Whether a raw codestream's main header says its components went through a colour
/// transform (the MCT byte of its COD marker), which the decoder inverts.
fn colour_transformed(codestream: &[u8]) -> bool {
    const COD: u8 = 0x52;
    const SOT: u8 = 0x90;
    // After SOC, marker segments (marker, 16-bit length that counts itself) up to the first
    // tile's SOT. COD: Scod, progression order, 16-bit layer count, then MCT.
    let mut at = 2;
    while let Some(&[0xFF, marker, high, low]) = codestream.get(at..at + 4) {
        match marker {
            COD => return codestream.get(at + 8) == Some(&1),
            SOT => break,
            _ => at += 2 + u16::from_be_bytes([high, low]) as usize,
        }
    }
    false
}

/// A raw codestream in a JP2 file whose colour box says sRGB, so that the decoder hands its
/// components over unconverted: of a bare codestream with subsampled chroma it would assume
/// sYCC and convert it itself, from unrounded samples (0.3 levels from OpenSlide on average).
fn declared_as_is(codestream: &[u8]) -> Vec<u8> {
    const SIGNATURE: [u8; 12] = *b"\0\0\0\x0cjP  \r\n\x87\n";
    const FILE_TYPE: [u8; 20] = *b"\0\0\0\x14ftypjp2 \0\0\0\0jp2 ";
    // A header box holding one colour box: enumerated (1), sRGB (16).
    const HEADER: [u8; 23] = *b"\0\0\0\x17jp2h\0\0\0\x0fcolr\x01\0\0\0\0\0\x10";
    // A codestream box of length 0 runs to the end of the file.
    const CODESTREAM: [u8; 8] = *b"\0\0\0\0jp2c";
    [&SIGNATURE[..], &FILE_TYPE, &HEADER, &CODESTREAM, codestream].concat()
}

/// libjpeg's YCbCr -> RGB (jdcolor.c): 16-bit fixed point, one table lookup per term.
fn ycbcr_to_rgb(pixels: &mut [u8]) {
    const T: ColourTables = ColourTables::new();
    for p in pixels.chunks_exact_mut(3) {
        let (y, cb, cr) = (p[0] as i32, p[1] as usize, p[2] as usize);
        p[0] = (y + T.cr_r[cr]).clamp(0, 255) as u8;
        p[1] = (y + ((T.cb_g[cb] + T.cr_g[cr]) >> 16)).clamp(0, 255) as u8;
        p[2] = (y + T.cb_b[cb]).clamp(0, 255) as u8;
    }
}

struct ColourTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl ColourTables {
    const fn new() -> Self {
        const fn fix(x: f64) -> i32 {
            (x * 65536.0 + 0.5) as i32
        }
        const HALF: i32 = 1 << 15;
        let mut t = ColourTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        let mut i = 0;
        while i < 256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (fix(1.40200) * x + HALF) >> 16;
            t.cb_b[i] = (fix(1.77200) * x + HALF) >> 16;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + HALF;
            i += 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Level 0 of a fixture's JPEG 2000 slide and its first tile's codestream (33005: RGB
    /// through the codestream's colour transform).
    fn first_tile() -> (Directory, Vec<u8>) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/slides_codecs/odd_aperio_j2k_rgb.svs");
        let file = std::fs::File::open(&path).unwrap();
        let length = file.metadata().unwrap().len();
        let dir = crate::directory::read_tiff(&path, file, length)
            .unwrap()
            .levels
            .remove(0);
        let bytes = std::fs::read(&path).unwrap();
        let (offset, count) = (dir.offsets[0] as usize, dir.byte_counts[0] as usize);
        let tile = bytes[offset..offset + count].to_vec();
        (dir, tile)
    }

    #[test]
    fn a_jp2_file_decodes_as_the_codestream_it_holds() {
        let (dir, codestream) = first_tile();
        let rows = dir.chunk_height;
        let bare = decode_chunk(&dir, &codestream, rows).unwrap();
        let boxed = decode_chunk(&dir, &declared_as_is(&codestream), rows).unwrap();
        assert_eq!(bare.len(), 240 * 240 * 3);
        assert!(bare == boxed);
    }

    #[test]
    fn what_would_make_the_decoder_allocate_much_is_refused_before_it_runs() {
        let (dir, codestream) = first_tile();
        let rows = dir.chunk_height;
        // SIZ's component count (Csiz) at 5000.
        let mut many = codestream.clone();
        many[40..42].copy_from_slice(&5000u16.to_be_bytes());
        let error = decode_chunk(&dir, &many, rows).unwrap_err().to_string();
        assert!(error.contains("5000 components"), "{error}");
        // SIZ's height (Ysiz) at 2^30 in a 240-row tile.
        let mut tall = codestream;
        tall[12..16].copy_from_slice(&(1u32 << 30).to_be_bytes());
        let error = decode_chunk(&dir, &tall, rows).unwrap_err().to_string();
        assert!(error.contains("decodes to 240x1073741824"), "{error}");
    }
}
