//! Every region of `tests/fixtures/slides/slides.json` read as OpenSlide (or tifffile, where
//! OpenSlide cannot) read it, within the fixture's tolerance, and every level reported as there.

use std::path::{Path, PathBuf};

use wsi::Slide;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/slides")
}

#[derive(serde::Deserialize)]
struct SlideCase {
    file: String,
    levels: Vec<[u64; 2]>,
    mpp: f64,
    tolerance: Tolerance,
    regions: Vec<Region>,
}

#[derive(serde::Deserialize)]
struct Tolerance {
    max_abs: u8,
    mean_abs: f64,
}

#[derive(serde::Deserialize)]
struct Region {
    name: String,
    level: usize,
    x: i64,
    y: i64,
    w: u32,
    h: u32,
    png: String,
}

fn cases() -> Vec<SlideCase> {
    let json = std::fs::read_to_string(fixtures().join("slides.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

#[test]
fn levels_and_mpp_as_reported_by_the_fixtures() {
    let cases = cases();
    assert!(cases.len() >= 8, "eight layouts");
    for case in cases {
        let slide = Slide::open(fixtures().join(&case.file)).unwrap();
        let levels: Vec<[u64; 2]> = slide.levels().iter().map(|l| [l.width, l.height]).collect();
        assert_eq!(levels, case.levels, "{}", case.file);
        let mpp = slide.mpp().unwrap();
        assert!((mpp - case.mpp).abs() < 1e-3, "{}: mpp {mpp}", case.file);
        // OpenSlide's downsample: the mean of the width and height ratios (openslide.c).
        for level in slide.levels() {
            let expected = (case.levels[0][0] as f64 / level.width as f64
                + case.levels[0][1] as f64 / level.height as f64)
                / 2.0;
            assert!((level.downsample - expected).abs() < 1e-9);
        }
    }
}

#[test]
fn every_region_within_tolerance_of_the_reference_reader() {
    let mut checked = 0;
    for case in cases() {
        let slide = Slide::open(fixtures().join(&case.file)).unwrap();
        for region in &case.regions {
            let ours = slide
                .read_region(region.level, region.x, region.y, region.w, region.h)
                .unwrap();
            let reference = image::open(fixtures().join(&region.png)).unwrap().to_rgb8();
            assert_eq!(ours.dimensions(), reference.dimensions());
            for channel in 0..3 {
                let differences: Vec<u8> = ours
                    .pixels()
                    .zip(reference.pixels())
                    .map(|(a, b)| a[channel].abs_diff(b[channel]))
                    .collect();
                let max = *differences.iter().max().unwrap();
                let mean =
                    differences.iter().map(|&d| d as f64).sum::<f64>() / differences.len() as f64;
                assert!(
                    max <= case.tolerance.max_abs && mean <= case.tolerance.mean_abs,
                    "{} {} channel {channel}: max {max}, mean {mean:.3} (tolerance {}, {})",
                    case.file,
                    region.name,
                    case.tolerance.max_abs,
                    case.tolerance.mean_abs
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked} regions");
}

/// The thumbnail fits the asked size, keeps the aspect ratio, and shows what the smallest
/// level shows.
#[test]
fn thumbnail_is_the_whole_slide_scaled_down() {
    let slide = Slide::open(fixtures().join("tiny_vips_jpeg.tif")).unwrap();
    let thumbnail = slide.thumbnail(256).unwrap();
    assert_eq!(thumbnail.dimensions(), (256, 192));
    let level2 = slide.read_region(2, 0, 0, 512, 384).unwrap();
    let mean = |image: &image::RgbImage| {
        image.pixels().map(|p| p.0[0] as f64).sum::<f64>() / (image.width() * image.height()) as f64
    };
    assert!((mean(&thumbnail) - mean(&level2)).abs() < 2.0);
}
