//! One chunk's bytes to RGB8 pixels: decompression, the TIFF predictor, and sample layout.

use std::io::Read;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::directory::{Compression, Directory, MAX_CHUNK_BYTES};

/// Decodes chunk `data` of `dir`, `rows` rows high, into RGB8 of `dir.chunk_width` x `rows`.
pub fn decode_chunk(dir: &Directory, data: &[u8], rows: u64) -> Result<Vec<u8>, String> {
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
                .map_err(|e| format!("deflate: {e}"))?;
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
                return Err(format!("lzw: {e}"));
            }
            out
        }
        Compression::Jpeg => unreachable!("handled above"),
    };
    if raw.len() < expected {
        return Err(format!(
            "decompressed to {} bytes, {width}x{rows} pixels of {samples} samples need {expected}",
            raw.len()
        ));
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
/// stream (without its start marker), then decoded to RGB.
///
/// Two decoders, each where it sees OpenSlide's (libjpeg-turbo's) pixels: zune-jpeg's IDCT
/// matches libjpeg's closely (mean 0.003 on RGB tiles, jpeg-decoder 0.014), but zune rounds
/// subsampled chroma twice while upsampling (once per direction), biasing it up by about a
/// level (blue off by a mean of 0.26 on 4:2:0 tiles); jpeg-decoder's fancy upsampling rounds
/// once, as libjpeg's does (0.09). So 4:2:0 streams go to jpeg-decoder, the rest to zune.
/// Both convert YCbCr to RGB in SIMD fixed point; an RGB stream (Adobe transform 0) is kept.
fn decode_jpeg(dir: &Directory, data: &[u8], width: usize, rows: usize) -> Result<Vec<u8>, String> {
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
    // A decoder bug must not take the process down with it: a damaged tile is an error.
    let decoded = std::panic::catch_unwind(|| {
        if dir.chroma_subsampled {
            decode_with_jpeg_decoder(bytes)
        } else {
            decode_with_zune(bytes, width, dir.chunk_height as usize)
        }
    })
    .map_err(|_| "jpeg: the decoder failed on this tile".to_string())?;
    let (mut pixels, got_width, got_height) = decoded?;
    if got_width != width || got_height < rows {
        return Err(format!(
            "jpeg tile is {got_width}x{got_height}, the directory says {width}x{rows}"
        ));
    }
    pixels.truncate(width * rows * 3);
    Ok(pixels)
}

type Decoded = Result<(Vec<u8>, usize, usize), String>;

fn decode_with_jpeg_decoder(bytes: &[u8]) -> Decoded {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(MAX_CHUNK_BYTES as usize);
    let pixels = decoder.decode().map_err(|e| format!("jpeg: {e}"))?;
    let info = decoder.info().ok_or("jpeg: no header")?;
    if info.pixel_format != jpeg_decoder::PixelFormat::RGB24 {
        return Err(format!(
            "jpeg: {:?} pixels, 3-component colour expected",
            info.pixel_format
        ));
    }
    Ok((pixels, info.width as usize, info.height as usize))
}

fn decode_with_zune(bytes: &[u8], max_width: usize, max_height: usize) -> Decoded {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(max_width)
        .set_max_height(max_height);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| format!("jpeg: {e:?}"))?;
    let info = decoder.info().ok_or("jpeg: no header")?;
    Ok((pixels, info.width as usize, info.height as usize))
}
