//! Damaged input gives an error naming the file and what is wrong: never a panic, never an
//! unbounded allocation. Each case is made from a good classic TIFF by editing its first IFD.

use std::path::{Path, PathBuf};

use wsi::Slide;

fn good() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/slides/odd_vips_deflate.tif");
    std::fs::read(path).unwrap()
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Position of the 12-byte entry of `tag` in the first IFD of a little-endian classic TIFF.
fn entry(bytes: &[u8], tag: u16) -> usize {
    assert_eq!(&bytes[..4], b"II*\0");
    let ifd = u32_at(bytes, 4) as usize;
    (0..u16_at(bytes, ifd) as usize)
        .map(|i| ifd + 2 + 12 * i)
        .find(|&at| u16_at(bytes, at) == tag)
        .unwrap_or_else(|| panic!("no tag {tag}"))
}

/// Sets a tag to one LONG value.
fn set_long(bytes: &mut [u8], tag: u16, value: u32) {
    let at = entry(bytes, tag);
    bytes[at + 2..at + 4].copy_from_slice(&4u16.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
    bytes[at + 8..at + 12].copy_from_slice(&value.to_le_bytes());
}

fn open_bytes(bytes: &[u8], name: &str) -> (PathBuf, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let message = match Slide::open(&path) {
        Ok(slide) => {
            // Opening may succeed when only tile data is bad: reading must then fail.
            let level = slide.levels()[0];
            slide
                .read_region(0, 0, 0, level.width as u32, level.height as u32)
                .err()
                .unwrap_or_else(|| panic!("{name} read without error"))
                .to_string()
        }
        Err(err) => err.to_string(),
    };
    (path, message, dir)
}

fn assert_fails(bytes: &[u8], name: &str, expected: &[&str]) {
    let (path, message, _dir) = open_bytes(bytes, name);
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    for part in expected {
        assert!(message.contains(part), "{name}: `{part}` not in: {message}");
    }
}

#[test]
fn zero_length_file() {
    assert_fails(&[], "empty.tif", &["empty"]);
}

#[test]
fn truncated_file() {
    let bytes = good();
    assert_fails(
        &bytes[..bytes.len() * 3 / 5],
        "truncated.tif",
        &["truncated"],
    );
}

#[test]
fn not_a_tiff() {
    assert_fails(
        b"\x89PNG\r\n\x1a\n not really",
        "picture.tif",
        &["not a readable TIFF"],
    );
}

#[test]
fn tile_offset_past_the_end() {
    let mut bytes = good();
    let offsets = u32_at(&bytes, entry(&bytes, 324) + 8) as usize;
    bytes[offsets..offsets + 4].copy_from_slice(&0xF000_0000u32.to_le_bytes());
    assert_fails(
        &bytes,
        "offset.tif",
        &["chunk 0", "past the end of the file"],
    );
}

#[test]
fn absurd_declared_dimensions() {
    let mut bytes = good();
    set_long(&mut bytes, 256, 4_000_000_000);
    // The tiff crate checks the tile count against the size before we see it.
    assert_fails(
        &bytes,
        "huge.tif",
        &["not a readable TIFF", "inconsistent sizes"],
    );
    // Plausible but not what the tile offsets cover.
    let mut bytes = good();
    set_long(&mut bytes, 256, 10_000_000);
    assert_fails(
        &bytes,
        "wide.tif",
        &["not a readable TIFF", "inconsistent sizes"],
    );
}

/// Sets the compression tag.
fn set_compression(bytes: &mut [u8], code: u16) {
    let at = entry(bytes, 259);
    bytes[at + 8..at + 10].copy_from_slice(&code.to_le_bytes());
}

#[test]
fn an_unsupported_compression_is_named() {
    let mut bytes = good();
    set_compression(&mut bytes, 50001);
    assert_fails(
        &bytes,
        "webp.tif",
        &["unsupported", "WebP compression (50001)"],
    );
}

#[test]
fn tiles_said_to_be_jpeg_2000_that_are_not_are_named() {
    let mut bytes = good();
    set_compression(&mut bytes, 33003);
    assert_fails(&bytes, "aperio_j2k.tif", &["level 0, chunk 0", "jpeg 2000"]);
}

#[test]
fn corrupt_tile_data() {
    let mut bytes = good();
    let offsets = u32_at(&bytes, entry(&bytes, 324) + 8) as usize;
    let first_tile = u32_at(&bytes, offsets) as usize;
    bytes[first_tile..first_tile + 64].fill(0xAB);
    assert_fails(&bytes, "corrupt.tif", &["level 0, chunk 0", "deflate"]);
}

#[test]
fn regions_outside_levels_and_too_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.tif");
    std::fs::write(&path, good()).unwrap();
    let slide = Slide::open(&path).unwrap();
    let no_level = slide.read_region(7, 0, 0, 10, 10).unwrap_err().to_string();
    assert!(no_level.contains("level 7 does not exist"), "{no_level}");
    let huge = slide
        .read_region(0, 0, 0, 100_000, 100_000)
        .unwrap_err()
        .to_string();
    assert!(huge.contains("read it in parts"), "{huge}");
    // Partly outside: white there, pixels inside.
    let region = slide.read_region(0, -10, -10, 20, 20).unwrap();
    assert_eq!(region.get_pixel(0, 0).0, [255, 255, 255]);
    let inside = slide.read_region(0, 0, 0, 10, 10).unwrap();
    assert_eq!(region.get_pixel(10, 10), inside.get_pixel(0, 0));
}

/// A SubIFD that points back at IFD 0 (a mutation probe's finding: it was read as a second
/// full-size level) is damage, named.
#[test]
fn a_subifd_pointing_back_at_ifd_0() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/slides/tiny_vips_subifd.tif");
    let mut bytes = std::fs::read(path).unwrap();
    // BigTIFF: IFD 0's offset at 8; its entries (20 bytes: tag, type, count, value) after an
    // 8-byte count; SubIFDs (330) holds two IFD8 offsets, stored out of line.
    assert_eq!(&bytes[..4], b"II+\0");
    let u64_at =
        |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let ifd0 = u64_at(&bytes, 8) as usize;
    let sub_ifds = (0..u64_at(&bytes, ifd0) as usize)
        .map(|i| ifd0 + 8 + 20 * i)
        .find(|&at| u16_at(&bytes, at) == 330)
        .expect("a SubIFDs tag");
    let pointers = u64_at(&bytes, sub_ifds + 12) as usize;
    bytes[pointers..pointers + 8].copy_from_slice(&(ifd0 as u64).to_le_bytes());
    assert_fails(
        &bytes,
        "loop.tif",
        &[
            "damaged",
            "SubIFD 0 is 2048x1536, not smaller than the level before it",
        ],
    );
}
