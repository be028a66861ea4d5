//! DICOM-WSI and Aperio SVS read as OpenSlide 4.0.1 reads them: every region of
//! `tests/fixtures/slides_more/slides.json` (JPEG) and `tests/fixtures/slides_codecs/slides.json`
//! (JPEG 2000: Aperio's RGB, YCbCr and YCbCr 4:2:2, DICOM's YBR_ICT; a Zstandard TIFF) within
//! its tolerance, the levels, downsamples, mpp, objective power, associated images and vendor
//! properties as OpenSlide reported them; damaged DICOM refused with one clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wsi::Slide;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/slides_more")
}

/// The folder of the slides in other codecs than JPEG.
fn codec_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/slides_codecs")
}

#[derive(serde::Deserialize)]
struct Case {
    /// The fixture folder its paths are in (not in the JSON).
    #[serde(skip)]
    dir: PathBuf,
    file: String,
    open: String,
    #[serde(default)]
    files: Vec<String>,
    vendor: String,
    level_dimensions: Vec<[u64; 2]>,
    level_downsamples: Vec<f64>,
    tile_size: [u64; 2],
    mpp: f64,
    objective_power: Option<f64>,
    associated_images: BTreeMap<String, [u64; 2]>,
    openslide_properties: BTreeMap<String, String>,
    regions: Vec<Region>,
}

#[derive(serde::Deserialize)]
struct Region {
    name: String,
    level: usize,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    ref_png: String,
    inside: [u32; 2],
    tolerance: Tolerance,
}

#[derive(serde::Deserialize)]
struct Tolerance {
    max_abs: u8,
    p99_abs: u8,
    mean_abs: f64,
}

/// Three JPEG slides (DICOM, odd-sized DICOM, Aperio), then three JPEG 2000 Aperio ones, a
/// JPEG 2000 DICOM one and a Zstandard TIFF.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for dir in [fixtures(), codec_fixtures()] {
        let json = std::fs::read_to_string(dir.join("slides.json")).unwrap();
        let mut these: Vec<Case> = serde_json::from_str(&json).unwrap();
        for case in &mut these {
            case.dir = dir.clone();
        }
        cases.extend(these);
    }
    cases
}

/// Every way a case can be opened: the file OpenSlide opened and, for DICOM, the folder and
/// the smallest level's instance.
fn openings(case: &Case) -> Vec<PathBuf> {
    let mut paths = vec![case.dir.join(&case.open)];
    if let Some(last) = case.files.last() {
        paths.push(case.dir.join(&case.file));
        paths.push(case.dir.join(last));
    }
    paths
}

#[test]
fn levels_mpp_vendor_and_properties_as_openslide_reports() {
    let cases = cases();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        for path in openings(case) {
            let slide = Slide::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.display();
            let levels: Vec<[u64; 2]> =
                slide.levels().iter().map(|l| [l.width, l.height]).collect();
            assert_eq!(levels, case.level_dimensions, "{name}");
            for (level, expected) in slide.levels().iter().zip(&case.level_downsamples) {
                assert!(
                    (level.downsample - expected).abs() < 1e-9,
                    "{name}: downsample {} against OpenSlide's {expected}",
                    level.downsample
                );
                assert_eq!([level.tile_width, level.tile_height], case.tile_size);
            }
            assert_eq!(slide.vendor(), case.vendor, "{name}");
            let mpp = slide.mpp().expect("mpp");
            assert!((mpp - case.mpp).abs() < 1e-9, "{name}: mpp {mpp}");
            assert_eq!(slide.objective_power(), case.objective_power, "{name}");
            let associated: BTreeMap<String, [u64; 2]> = slide
                .associated_images()
                .into_iter()
                .map(|(n, w, h)| (n, [w, h]))
                .collect();
            assert_eq!(associated, case.associated_images, "{name}");
            // The vendor's own properties, and the standard ones, as OpenSlide names them.
            for (key, expected) in &case.openslide_properties {
                let ours = key.starts_with("aperio.")
                    || key.starts_with("dicom.")
                    || key == "openslide.comment"
                    || key == "openslide.icc-size"
                    || key == "openslide.vendor"
                    || key == "openslide.level-count"
                    || key.starts_with("openslide.associated.")
                    || key.starts_with("tiff.");
                if !ours {
                    continue;
                }
                let found = slide.properties().get(key);
                let numeric_match = found
                    .and_then(|v| v.parse::<f64>().ok())
                    .zip(expected.parse::<f64>().ok())
                    .is_some_and(|(a, b)| (a - b).abs() < 1e-12);
                assert!(
                    found == Some(expected) || numeric_match,
                    "{name}: {key} is {found:?}, OpenSlide says {expected:?}"
                );
            }
        }
    }
}

#[test]
fn every_region_within_tolerance_of_openslide() {
    let mut checked = 0;
    for case in cases() {
        for path in openings(&case) {
            let slide = Slide::open(&path).unwrap();
            for region in &case.regions {
                let ours = slide
                    .read_region(region.level, region.x, region.y, region.w, region.h)
                    .unwrap();
                let reference = image::open(case.dir.join(&region.ref_png))
                    .unwrap()
                    .to_rgb8();
                assert_eq!(ours.dimensions(), reference.dimensions());
                let [inside_w, inside_h] = region.inside;
                let mut differences = Vec::new();
                for (x, y, pixel) in ours.enumerate_pixels() {
                    let expected = reference.get_pixel(x, y);
                    if x < inside_w && y < inside_h {
                        differences.extend((0..3).map(|c| pixel[c].abs_diff(expected[c])));
                    } else {
                        assert_eq!(pixel, expected, "outside the image both are white");
                    }
                }
                let what = format!("{} {}", path.display(), region.name);
                let max = *differences.iter().max().unwrap();
                let mean =
                    differences.iter().map(|&d| d as f64).sum::<f64>() / differences.len() as f64;
                let mut per_pixel: Vec<u8> = differences
                    .chunks_exact(3)
                    .map(|p| *p.iter().max().unwrap())
                    .collect();
                per_pixel.sort_unstable();
                let p99 = per_pixel[(per_pixel.len() * 99).div_ceil(100) - 1];
                // OpenSlide's decoders (libjpeg-turbo, OpenJPEG) and ours agree to within 2 levels.
                let within2 =
                    per_pixel.iter().filter(|&&d| d <= 2).count() as f64 / per_pixel.len() as f64;
                assert!(
                    within2 >= 0.99,
                    "{what}: {within2:.4} of pixels within 2 levels"
                );
                let t = &region.tolerance;
                assert!(
                    max <= t.max_abs && p99 <= t.p99_abs && mean <= t.mean_abs,
                    "{what}: max {max}, p99 {p99}, mean {mean:.3} against {}/{}/{}",
                    t.max_abs,
                    t.p99_abs,
                    t.mean_abs
                );
                checked += 1;
            }
        }
    }
    // Six regions of each way to open each slide: three DICOM series three ways, four SVS and
    // a TIFF.
    assert_eq!(checked, 6 * (3 * 3 + 5));
}

/// The Aperio thumbnail is the slide seen small: against level 1 scaled to its size.
#[test]
fn aperio_thumbnail_is_the_slide_seen_small() {
    let slide = Slide::open(fixtures().join("tiny_aperio.svs")).unwrap();
    let thumbnail = slide.read_associated_image("thumbnail").unwrap();
    assert_eq!(thumbnail.dimensions(), (256, 192));
    let level = slide.levels()[1];
    let whole = slide
        .read_region(1, 0, 0, level.width as u32, level.height as u32)
        .unwrap();
    let small = image::imageops::resize(&whole, 256, 192, image::imageops::FilterType::Triangle);
    let mean = thumbnail
        .as_raw()
        .iter()
        .zip(small.as_raw())
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / thumbnail.as_raw().len() as f64;
    assert!(
        mean < 4.0,
        "thumbnail differs from the slide by {mean:.2} on average"
    );
    assert!(slide.read_associated_image("label").is_err());
}

/// A copy of the tiny DICOM series to damage.
fn dicom_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny_dicom")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn error_of(path: &Path) -> String {
    match Slide::open(path) {
        Ok(slide) => {
            let level = slide.levels()[0];
            slide
                .read_region(0, 0, 0, level.width as u32, level.height as u32)
                .err()
                .unwrap_or_else(|| panic!("{} read without error", path.display()))
                .to_string()
        }
        Err(err) => err.to_string(),
    }
}

fn assert_one_line_naming(message: &str, path: &Path, expected: &str) {
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        message.contains(&path.display().to_string()),
        "names the file: {message}"
    );
    assert!(message.contains(expected), "says {expected:?}: {message}");
}

#[test]
fn damaged_dicom_gives_one_clear_error() {
    // Truncated inside the frames.
    let dir = dicom_copy();
    let level0 = dir.path().join("level0.dcm");
    let bytes = std::fs::read(&level0).unwrap();
    std::fs::write(&level0, &bytes[..bytes.len() * 2 / 3]).unwrap();
    assert_one_line_naming(&error_of(&level0), &level0, "truncated");

    // Truncated inside the attributes.
    std::fs::write(&level0, &bytes[..600]).unwrap();
    assert_one_line_naming(&error_of(&level0), &level0, "damaged");

    // A frame's length pointing past the end: the first fragment after the offset table,
    // which follows the Pixel Data header (7FE0,0010) OB of undefined length.
    let pixel_data = find(
        &bytes,
        &[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ],
    )
    .unwrap();
    let table = pixel_data + 12;
    let table_len = u32::from_le_bytes(bytes[table + 4..table + 8].try_into().unwrap()) as usize;
    let first_frame = table + 8 + table_len;
    assert_eq!(
        bytes[first_frame..first_frame + 4],
        [0xFE, 0xFF, 0x00, 0xE0]
    );
    let mut past_end = bytes.clone();
    past_end[first_frame + 4..first_frame + 8].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    std::fs::write(&level0, &past_end).unwrap();
    assert_one_line_naming(&error_of(&level0), &level0, "past the end of the file");

    // A transfer syntax we do not read (JPEG-LS) in the file meta group.
    let mut jpeg_ls = bytes.clone();
    let at = find(&jpeg_ls, b"1.2.840.10008.1.2.4.50").unwrap();
    jpeg_ls[at..at + 22].copy_from_slice(b"1.2.840.10008.1.2.4.80");
    std::fs::write(&level0, &jpeg_ls).unwrap();
    assert_one_line_naming(&error_of(&level0), &level0, "1.2.840.10008.1.2.4.80");

    // A missing level: the others still read as a pyramid of what remains.
    std::fs::write(&level0, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("level1.dcm")).unwrap();
    let slide = Slide::open(&level0).unwrap();
    assert_eq!(slide.levels().len(), 3);
    assert_eq!(slide.levels()[1].width, 512);
}

#[test]
fn a_folder_mixing_series_is_refused_and_one_file_picks_its_series() {
    let dir = dicom_copy();
    for entry in std::fs::read_dir(fixtures().join("odd_dicom")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("odd_{}", path.file_name().unwrap().to_string_lossy());
        std::fs::copy(&path, dir.path().join(name)).unwrap();
    }
    let message = error_of(dir.path());
    assert_one_line_naming(&message, dir.path(), "mixes 2 DICOM series");
    let odd = Slide::open(dir.path().join("odd_level1.dcm")).unwrap();
    assert_eq!(odd.levels()[0].width, 1001);
    assert_eq!(odd.levels().len(), 3);
    let tiny = Slide::open(dir.path().join("level2.dcm")).unwrap();
    assert_eq!(tiny.levels()[0].width, 2048);
    assert_eq!(tiny.levels().len(), 4);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
