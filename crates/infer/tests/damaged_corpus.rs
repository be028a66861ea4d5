//! `infer` on the damaged-input corpus (`tests/fixtures/bad`, made by
//! `tools/make_bad_inputs.py` and `tools/make_bad_checkpoints.py`): every damaged slide, model
//! file and annotation file is refused with exit status 1, in one line naming the file, and
//! the run leaves nothing behind, not even its output directory.

mod common;

use std::path::Path;

use common::{fixtures, infer};
use test_fixtures::damaged;

/// Runs `infer SLIDE --out OUT EXTRA...` (OUT not yet there); checks the refusal.
fn refused(slide: &Path, extra: &[&Path], named: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args: Vec<&Path> = vec![slide, Path::new("--out"), &out];
    args.extend([
        Path::new("--device"),
        Path::new("cpu"),
        Path::new("--quiet"),
    ]);
    args.extend_from_slice(extra);
    let output = infer(&args);
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}: {message}",
        named.display()
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(message.contains(&*named.to_string_lossy()), "{message}");
    assert!(!out.exists(), "{}: {out:?} was left", named.display());
    message
}

#[test]
fn damaged_slides_are_refused() {
    let slides = damaged(&["slide_", "svs_", "dicom_"]);
    assert!(slides.len() >= 25);
    for slide in &slides {
        println!(
            "{}",
            refused(slide, &[Path::new("--tissue"), Path::new("off")], slide)
        );
    }
}

#[test]
fn damaged_models_and_annotations_are_refused() {
    let demo = fixtures().join("slides/odd_vips_jpeg.tif");
    for model in damaged(&["model_"]) {
        println!(
            "{}",
            refused(&demo, &[Path::new("--model"), &model], &model)
        );
    }
    for truth in damaged(&["annotations_"]) {
        println!(
            "{}",
            refused(&demo, &[Path::new("--truth"), &truth], &truth)
        );
    }
}
