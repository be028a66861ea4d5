//! The `openslide` feature: a vendor-named file goes through the OpenSlide C library and
//! reads the same pixels as the reference. Run with `cargo test -p wsi --features openslide`.
#![cfg(feature = "openslide")]

use std::path::Path;

use wsi::Slide;

#[test]
fn a_vendor_file_reads_through_openslide() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/slides");
    let dir = tempfile::tempdir().unwrap();
    // OpenSlide recognises formats by content: a generic pyramidal TIFF named like a
    // Hamamatsu file (Aperio's .svs is read in pure Rust).
    let path = dir.path().join("slide.ndpi");
    std::fs::copy(fixtures.join("tiny_vips_jpeg.tif"), &path).unwrap();
    let slide = Slide::open(&path).unwrap();
    assert_eq!(slide.layout(), "openslide");
    let sizes: Vec<(u64, u64)> = slide.levels().iter().map(|l| (l.width, l.height)).collect();
    assert_eq!(sizes, [(2048, 1536), (1024, 768), (512, 384)]);
    assert!((slide.mpp().unwrap() - 0.243).abs() < 1e-3);
    assert_eq!(slide.vendor(), "generic-tiff");
    assert_eq!(slide.properties()["openslide.level-count"], "3");
    let region = slide.read_region(2, 128, 96, 256, 192).unwrap();
    let reference = image::open(fixtures.join("ref/tiny_vips_jpeg__level2.png"))
        .unwrap()
        .to_rgb8();
    let worst = region
        .as_raw()
        .iter()
        .zip(reference.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 4, "max difference {worst}");
    // Partly outside the slide: white there.
    let edge = slide.read_region(0, -8, -8, 16, 16).unwrap();
    assert_eq!(edge.get_pixel(0, 0).0, [255, 255, 255]);
}
