//! What `infer`'s integration tests share: the fixtures, running the binary, reading back
//! what it wrote, a stand-in for the model.
#![allow(dead_code)] // each test file uses its own part

pub mod stand_in;

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
    infer_command().args(args).output().unwrap()
}

/// `infer`, run from the repository root.
pub fn infer_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infer"));
    command
        // A job scheduler's shard and threads, should the tests run inside one, are not
        // theirs.
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_CPUS_PER_TASK")
        .env_remove("RAYON_NUM_THREADS")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    command
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

/// `source`'s level 0 written again with every pixel repeated `factor` x `factor`, losslessly
/// (deflate), at `mpp` µm per pixel (None: without resolution tags): the same tissue scanned
/// at a finer resolution, whose `factor` x `factor` averaging gives `source` back exactly.
pub fn rescanned(source: &Path, dest: &Path, factor: u32, mpp: Option<f64>) {
    let slide = wsi::Slide::open(source).unwrap();
    let level = slide.levels()[0];
    let (width, height) = (level.width as u32, level.height as u32);
    let options = wsi::WriterOptions {
        mpp,
        deflate_level: 1,
        ..wsi::WriterOptions::default()
    };
    let (big_width, big_height) = ((width * factor) as u64, (height * factor) as u64);
    let mut writer =
        wsi::PyramidWriter::create(dest, big_width, big_height, wsi::Channels::Rgb, options)
            .unwrap();
    let band = 64;
    for top in (0..height).step_by(band) {
        let rows = band.min((height - top) as usize) as u32;
        let pixels = slide.read_region(0, 0, top as i64, width, rows).unwrap();
        let mut out = Vec::with_capacity((big_width * 3) as usize * (rows * factor) as usize);
        for row in pixels.as_raw().chunks_exact(width as usize * 3) {
            let wide: Vec<u8> = row
                .chunks_exact(3)
                .flat_map(|p| std::iter::repeat_n(p, factor as usize).flatten().copied())
                .collect();
            for _ in 0..factor {
                out.extend_from_slice(&wide);
            }
        }
        writer.write_rows(&out).unwrap();
    }
    writer.finish().unwrap();
}
