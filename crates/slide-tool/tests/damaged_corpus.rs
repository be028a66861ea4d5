//! Every damaged slide of `tests/fixtures/bad` (made by `tools/make_bad_inputs.py`): `slide
//! info` refuses it, or, where only pixel data is damaged, `slide region` over the damage
//! does; in one line naming the file, leaving no PNG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bad_slides() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/bad");
    let mut slides: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            ["slide_", "svs_", "dicom_"]
                .iter()
                .any(|s| name.starts_with(s))
        })
        .collect();
    slides.sort();
    slides
}

fn slide(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slide"))
        .args(args)
        .output()
        .unwrap()
}

/// The one line of a refusal, which names the file.
fn refusal(output: &Output, file: &Path) -> String {
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{} was accepted", file.display());
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(message.contains(&*file.to_string_lossy()), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    message
}

#[test]
fn every_damaged_slide_is_refused_in_one_line() {
    let slides = bad_slides();
    assert!(slides.len() >= 25, "{} damaged slides", slides.len());
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("region.png");
    for file in &slides {
        let info = slide(&[Path::new("info"), file]);
        let message = if info.status.success() {
            // Only pixels are damaged: reading level 0's first 1024 x 768 meets them.
            let region = slide(&[
                Path::new("region"),
                file,
                Path::new("0"),
                Path::new("0"),
                Path::new("0"),
                Path::new("1001"),
                Path::new("753"),
                &png,
            ]);
            let message = refusal(&region, file);
            assert!(!png.exists(), "{}: a PNG was left", file.display());
            message
        } else {
            refusal(&info, file)
        };
        println!("{message}");
    }
}
