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
    if dir.compression == Compression::Jpeg {
        return decode_jpeg(dir, data, width, rows);
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
        Compression::Jpeg => unreachable!("handled above"),
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
    .map_err(|_| DecodeError::JpegPanicked)?;
    let (mut pixels, found_width, found_height) = decoded?;
    if found_width != width || found_height < rows || pixels.len() < width * rows * 3 {
        return Err(DecodeError::JpegSize {
            found_width,
            found_height,
            width,
            rows,
        });
    }
    pixels.truncate(width * rows * 3);
    Ok(pixels)
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
