//! The `slide` tool: `info` prints the levels as JSON, `region` and `thumbnail` write a PNG or
//! a JPEG.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/slides")
        .join(name)
}

fn slide(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slide"))
        .args(args)
        .output()
        .unwrap()
}

/// `slide ARGS...`, which must succeed.
fn slide_ok(args: &[&str]) {
    succeeded(slide(args));
}

/// Fails the test with what `slide` printed unless it succeeded.
fn succeeded(output: std::process::Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn info_prints_levels_mpp_compression_and_layout() {
    let file = fixture("tiny_vips_subifd.tif");
    let output = slide(&["info", file.to_str().unwrap()]);
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        info["levels"][0]["dimensions"],
        serde_json::json!([2048, 1536])
    );
    assert_eq!(
        info["levels"][2]["dimensions"],
        serde_json::json!([512, 384])
    );
    assert_eq!(info["levels"][1]["downsample"], serde_json::json!(2.0));
    assert_eq!(info["levels"][0]["tile"], serde_json::json!([512, 512]));
    assert!((info["mpp"].as_f64().unwrap() - 0.243).abs() < 1e-6);
    assert_eq!(info["compression"], "jpeg");
    assert_eq!(info["layout"], "subifds");
    assert_eq!(info["vendor"], "generic-tiff");
    assert_eq!(info["properties"]["openslide.level-count"], "3");
}

#[test]
fn region_writes_the_png_the_reader_returns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("region.png");
    let file = fixture("odd_vips_lzw.tif");
    slide_ok(&[
        "region",
        file.to_str().unwrap(),
        "1",
        "100",
        "50",
        "64",
        "48",
        out.to_str().unwrap(),
    ]);
    let written = image::open(&out).unwrap().to_rgb8();
    let read = wsi::Slide::open(&file)
        .unwrap()
        .read_region(1, 100, 50, 64, 48)
        .unwrap();
    assert!(written == read);
}

/// A region may start left of and above the image (white there, as the reader fills it, with
/// no `--` before the negative numbers); OUT's extension picks PNG or JPEG, and another is
/// refused before anything is read or written.
#[test]
fn region_takes_negative_corners_and_writes_what_its_extension_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("odd_vips_lzw.tif");
    let region = |out: &Path| {
        slide(&[
            "region",
            file.to_str().unwrap(),
            "0",
            "-10",
            "-6",
            "40",
            "30",
            out.to_str().unwrap(),
        ])
    };
    let png = dir.path().join("corner.png");
    succeeded(region(&png));
    let written = image::open(&png).unwrap().to_rgb8();
    let inside = wsi::Slide::open(&file)
        .unwrap()
        .read_region(0, 0, 0, 30, 24)
        .unwrap();
    for (x, y, pixel) in written.enumerate_pixels() {
        if x < 10 || y < 6 {
            assert_eq!(pixel.0, [255; 3], "({x}, {y}) lies outside the image");
        } else {
            assert_eq!(*pixel, *inside.get_pixel(x - 10, y - 6));
        }
    }

    let jpeg = dir.path().join("corner.jpg");
    assert!(region(&jpeg).status.success());
    assert_eq!(
        image::ImageFormat::from_path(&jpeg).unwrap(),
        image::guess_format(&std::fs::read(&jpeg).unwrap()).unwrap()
    );

    let bitmap = dir.path().join("corner.bmp");
    let output = region(&bitmap);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(".png or a .jpg"));
    assert!(!bitmap.exists());
}

/// `thumbnail` writes the reader's thumbnail: the whole slide, its aspect kept, fitting SIDE.
#[test]
fn thumbnail_writes_the_whole_slide_scaled_to_fit() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("tiny_vips_jpeg.tif");
    let out = dir.path().join("thumbnail.png");
    slide_ok(&[
        "thumbnail",
        file.to_str().unwrap(),
        "300",
        out.to_str().unwrap(),
    ]);
    let written = image::open(&out).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (300, 225));
    assert!(written == wsi::Slide::open(&file).unwrap().thumbnail(300).unwrap());
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let output = slide(&["info", "/no/such/slide.tif"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("/no/such/slide.tif") && message.contains("No such file"),
        "{message}"
    );
}

#[test]
fn info_prints_what_openslide_reports_of_an_aperio_slide() {
    let file = fixture("../slides_more/tiny_aperio.svs");
    let output = slide(&["info", file.to_str().unwrap()]);
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["vendor"], "aperio");
    assert_eq!(info["objective_power"], serde_json::json!(40.0));
    assert_eq!(
        info["associated_images"]["thumbnail"],
        serde_json::json!([256, 192])
    );
    assert_eq!(info["properties"]["aperio.AppMag"], "40");
    assert_eq!(info["levels"][2]["downsample"], serde_json::json!(16.0));
}

/// `slide info s.tif | true`: a reader that closes the pipe early is no error (and no panic).
/// The pipe is the shell's: one made here could be inherited by another test's child.
#[test]
fn info_into_a_closed_pipe_is_quiet() {
    let file = fixture("tiny_vips_subifd.tif");
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"("$0" info "$1"; echo "exit status $?" >&2) | true"#)
        .arg(env!("CARGO_BIN_EXE_slide"))
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "exit status 0");
}
