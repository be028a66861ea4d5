//! `infer evaluate` against MONAI's Camelyon16 evaluation (`tests/fixtures/froc`, made by
//! `tools/make_froc_fixtures.py`): FROC, the sensitivities at the six false-positive rates,
//! the slide-level AUC and each slide's counts; and on a map `infer` wrote.

mod common;

use std::path::Path;

use common::{fixtures, infer, infer_ok, infer_slide, read_json};
use serde_json::Value;

fn evaluate_args<'a>(
    maps: &'a Path,
    truth: &'a Path,
    level: &'a str,
    out: &'a Path,
) -> [&'a std::ffi::OsStr; 8] {
    [
        "evaluate".as_ref(),
        maps.as_os_str(),
        "--truth".as_ref(),
        truth.as_os_str(),
        "--level".as_ref(),
        level.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]
}

fn evaluate(maps: &Path, truth: &Path, level: &str, out: &Path) -> Value {
    infer_ok(evaluate_args(maps, truth, level, out));
    read_json(&out.join("evaluation.json"))
}

fn close(ours: &Value, monai: &Value, what: &str) {
    let (a, b) = (ours.as_f64().unwrap(), monai.as_f64().unwrap());
    assert!((a - b).abs() <= 1e-6, "{what}: ours {a}, MONAI {b}");
}

#[test]
fn froc_and_auc_match_monai_on_three_cohorts() {
    for cohort in ["one_lesion", "tumour_absent", "several_lesions"] {
        let folder = fixtures().join("froc").join(cohort);
        let out = tempfile::tempdir().unwrap();
        let ours = evaluate(&folder.join("maps"), &folder.join("truth"), "0", out.path());
        let monai = read_json(&folder.join("monai.json"));
        close(&ours["froc"], &monai["froc"], &format!("{cohort} FROC"));
        close(&ours["auc"], &monai["auc"], &format!("{cohort} AUC"));
        for (i, expected) in monai["sensitivity_at"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            close(
                &ours["sensitivity_at"][i],
                expected,
                &format!("{cohort} sensitivity {i}"),
            );
        }
        let slides = ours["slides"].as_array().unwrap();
        let expected = monai["slides"].as_array().unwrap();
        assert_eq!(slides.len(), expected.len(), "{cohort}");
        for expected in expected {
            let slide = slides
                .iter()
                .find(|s| s["slide"] == expected["slide"])
                .unwrap_or_else(|| panic!("{cohort}: no {}", expected["slide"]));
            for key in [
                "lesions",
                "isolated_tumour_cells",
                "lesions_found",
                "detections",
                "false_positives",
            ] {
                assert_eq!(
                    slide[key], expected[key],
                    "{cohort} {}: {key}",
                    expected["slide"]
                );
            }
            close(&slide["score"], &expected["score"], "score");
        }
        assert!(out.path().join("froc.png").is_file());
        println!("{cohort}: FROC {} AUC {}", ours["froc"], ours["auc"]);
    }
}

/// The demo slide's map, as `infer` writes it, against the demo slide's ASAP annotation at
/// level 2 (the map has 4 levels): its one lesion found, reported in level-0 terms.
#[test]
fn a_map_infer_wrote_finds_the_annotated_lesion() {
    let out = tempfile::tempdir().unwrap();
    let slide = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let maps = out.path().join("maps");
    infer_slide(&slide, &maps, &[]);
    let truth = out.path().join("truth");
    std::fs::create_dir(&truth).unwrap();
    std::fs::copy(
        fixtures().join("pipeline/demo.xml"),
        truth.join("demo_vips_jpeg.xml"),
    )
    .unwrap();
    let report = evaluate(&maps, &truth, "2", out.path());
    let slide = &report["slides"][0];
    assert_eq!(slide["tumour"], true);
    assert_eq!(slide["size"], serde_json::json!([1024, 768]));
    assert!((slide["microns_per_pixel"].as_f64().unwrap() - 0.972).abs() < 1e-6);
    assert_eq!(
        (slide["lesions"].as_u64(), slide["lesions_found"].as_u64()),
        (Some(1), Some(1))
    );
    // One tumour slide: a FROC, but no AUC.
    assert!(report["froc"].as_f64().unwrap() > 0.0);
    assert!(report["auc"].is_null());
    // Level 5 does not exist in a 4-level map: said so.
    let too_deep = infer(evaluate_args(&maps, &truth, "5", out.path()));
    let message = String::from_utf8_lossy(&too_deep.stderr);
    assert!(!too_deep.status.success());
    assert!(
        message.contains("4 levels") && message.contains("--level 3"),
        "{message}"
    );
}
