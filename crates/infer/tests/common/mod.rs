//! What `infer`'s integration tests share: the fixtures, running the binary, reading back
//! what it wrote.
#![allow(dead_code)] // each test file uses its own part

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::GrayImage;

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `infer ARGS...` from the repository's root.
pub fn infer<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap()
}

/// `infer ARGS...`, which must succeed.
pub fn infer_ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let output = infer(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `infer SLIDE --out DIR` on the CPU in f32, quietly, with `extra` options.
pub fn infer_slide(slide: &Path, dir: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![slide.as_os_str(), "--out".as_ref(), dir.as_os_str()];
    args.extend(
        ["--device", "cpu", "--precision", "f32", "--quiet"]
            .iter()
            .chain(extra)
            .map(OsStr::new),
    );
    infer_ok(args)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Level 0 of a probability map `infer` wrote, read back with our reader.
pub fn level0_map(path: &Path) -> GrayImage {
    let slide = wsi::Slide::open(path).unwrap();
    let level = slide.levels()[0];
    let rgb = slide
        .read_region(0, 0, 0, level.width as u32, level.height as u32)
        .unwrap();
    GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        image::Luma([rgb.get_pixel(x, y).0[0]])
    })
}
