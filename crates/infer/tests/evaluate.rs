//! `infer evaluate` against MONAI's Camelyon16 evaluation (`tests/fixtures/froc`, made by
//! `tools/make_froc_fixtures.py`): FROC, the sensitivities at the six false-positive rates,
//! the slide-level AUC, each slide's counts and its detections; on maps `infer` wrote, of a
//! whole slide and of a region of it; and Camelyon17's staging against scikit-image and
//! scikit-learn (`tests/fixtures/staging`), with annotations and without.

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
    assert!((a - b).abs() <= 1e-6, "{what}: ours {a}, the reference {b}");
}

/// `infer` failed, saying each of `words`.
fn refused(output: std::process::Output, words: &[&str]) {
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{message}");
    for word in words {
        assert!(message.contains(word), "{word:?} not said: {message}");
    }
}

/// `detections/STEM.csv` in `out`: `(probability, x, y)` a line.
fn detections(out: &Path, stem: &str) -> Vec<(f64, u64, u64)> {
    let csv = std::fs::read_to_string(out.join("detections").join(format!("{stem}.csv")))
        .unwrap_or_else(|e| panic!("{stem}: {e}"));
    csv.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 3, "{stem}: {line}");
            (
                fields[0].parse().unwrap(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Our detections of `stem` against MONAI's `[probability, x, y]` list: the same places in
/// the same order.
fn same_detections(out: &Path, stem: &str, monai: &Value) {
    let ours = detections(out, stem);
    let monai = monai.as_array().unwrap();
    assert_eq!(ours.len(), monai.len(), "{stem}: {ours:?}");
    for (ours, monai) in ours.iter().zip(monai) {
        let place = (monai[1].as_u64().unwrap(), monai[2].as_u64().unwrap());
        assert_eq!((ours.1, ours.2), place, "{stem}");
        close(&ours.0.into(), &monai[0], stem);
    }
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
            let stem = expected["slide"].as_str().unwrap();
            same_detections(out.path(), stem, &expected["detected"]);
        }
        assert!(out.path().join("froc.png").is_file());
        println!("{cohort}: FROC {} AUC {}", ours["froc"], ours["auc"]);
    }
}

/// Camelyon16's masks come as pyramidal TIFFs of the slide's size (`STEM_mask.tif`, which
/// its evaluation reads at level 5): written here at 4 times the maps' size, each pixel of
/// the PNG masks 4 x 4 (a pyramid of four levels, the third the maps' size), they score as
/// MONAI scored the PNGs.
#[test]
fn camelyon_mask_tiffs_score_as_monai_scored_their_pngs() {
    let folder = fixtures().join("froc/several_lesions");
    let work = tempfile::tempdir().unwrap();
    let truth = work.path().join("truth");
    std::fs::create_dir(&truth).unwrap();
    for entry in std::fs::read_dir(folder.join("truth")).unwrap() {
        let png = entry.unwrap().path();
        let mask = image::open(&png).unwrap().to_luma8();
        let (width, height) = (mask.width() * 4, mask.height() * 4);
        let stem = png.file_stem().unwrap().to_string_lossy();
        let options = wsi::WriterOptions {
            tile: 256,
            ..wsi::WriterOptions::default()
        };
        let mut tiff = wsi::PyramidWriter::create(
            truth.join(format!("{stem}_mask.tif")),
            width.into(),
            height.into(),
            wsi::Channels::Grey,
            options,
        )
        .unwrap();
        let rows: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| mask.get_pixel(x / 4, y / 4).0[0])
            .collect();
        tiff.write_rows(&rows).unwrap();
        tiff.finish().unwrap();
    }
    let ours = evaluate(&folder.join("maps"), &truth, "0", work.path());
    let monai = read_json(&folder.join("monai.json"));
    close(&ours["froc"], &monai["froc"], "FROC");
    close(&ours["auc"], &monai["auc"], "AUC");
    for expected in monai["slides"].as_array().unwrap() {
        let slide = ours["slides"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slide"] == expected["slide"])
            .unwrap();
        for key in ["lesions", "isolated_tumour_cells", "false_positives"] {
            assert_eq!(slide[key], expected[key], "{}: {key}", expected["slide"]);
        }
    }
}

/// Maps that are a slide's level 6, as their summaries say: the detections are placed in
/// the slide's level-0 pixels as MONAI places them (`PathologyProbNMS` at resolution level
/// 6), and the score is unchanged.
#[test]
fn detections_are_placed_in_the_slide_the_summary_names() {
    let folder = fixtures().join("froc").join("several_lesions");
    let maps = tempfile::tempdir().unwrap();
    let monai = read_json(&folder.join("monai.json"));
    for entry in std::fs::read_dir(folder.join("maps")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        std::fs::copy(&path, maps.path().join(name)).unwrap();
        let stem = name.strip_suffix(".prob.tif").unwrap();
        let level = wsi::Slide::open(&path).unwrap().levels()[0];
        let (width, height) = (level.width, level.height);
        // What infer records for a 0.243 µm/px slide read for a 15.552 µm/px model.
        let summary = serde_json::json!({
            "resolution": {
                "slide_mpp": 0.243, "model_mpp": 15.552, "level": 0, "resample": 64.0,
                "scale": 64.0, "width": width, "height": height,
            },
            "region": [0, 0, width * 64, height * 64],
        });
        std::fs::write(
            maps.path().join(format!("{stem}.summary.json")),
            summary.to_string(),
        )
        .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let ours = evaluate(maps.path(), &folder.join("truth"), "0", out.path());
    close(&ours["froc"], &monai["froc"], "FROC");
    for expected in monai["slides"].as_array().unwrap() {
        let stem = expected["slide"].as_str().unwrap();
        same_detections(out.path(), stem, &expected["detected_in_slide"]);
    }

    // A summary that places the map nowhere is named, not trusted.
    let odd = maps.path().join("odd.summary.json");
    let mut summary = read_json(&odd);
    summary["resolution"]["scale"] = 0.0.into();
    std::fs::write(&odd, summary.to_string()).unwrap();
    refused(
        infer(evaluate_args(
            maps.path(),
            &folder.join("truth"),
            "0",
            out.path(),
        )),
        &["odd.summary.json", "scale 0"],
    );
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
    let whole_slide = &report["slides"][0];
    assert_eq!(whole_slide["tumour"], true);
    assert_eq!(whole_slide["size"], serde_json::json!([1024, 768]));
    assert!((whole_slide["microns_per_pixel"].as_f64().unwrap() - 0.972).abs() < 1e-6);
    assert_eq!(
        (
            whole_slide["lesions"].as_u64(),
            whole_slide["lesions_found"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // One tumour slide: a FROC, but no AUC.
    assert!(report["froc"].as_f64().unwrap() > 0.0);
    assert!(report["auc"].is_null());

    // A run over the lesion's corner of the slide (on the patch grid, so its pixels are the
    // whole map's): the annotation and the detections placed where the region lies.
    let region_maps = out.path().join("region");
    infer_slide(&slide, &region_maps, &["--region", "1024,2048,1536,1024"]);
    let region_out = out.path().join("region_evaluation");
    let region_report = evaluate(&region_maps, &truth, "2", &region_out);
    let region_slide = &region_report["slides"][0];
    assert_eq!(region_slide["size"], serde_json::json!([384, 256]));
    assert_eq!(
        (
            region_slide["lesions"].as_u64(),
            region_slide["lesions_found"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (whole, region) = (
        detections(out.path(), "demo_vips_jpeg"),
        detections(&region_out, "demo_vips_jpeg"),
    );
    let highest = whole[0];
    assert!(
        (1024..2560).contains(&highest.1) && (2048..3072).contains(&highest.2),
        "the whole map's highest detection {highest:?} lies outside the region"
    );
    assert_eq!(region[0], highest);
    // The whole slide's map beside the region's, as a run with the other --prob-format leaves
    // one: the region's summary names its own map, and that is the one evaluated.
    std::fs::copy(
        maps.join("demo_vips_jpeg.prob.tif"),
        region_maps.join("demo_vips_jpeg.prob.ome.tif"),
    )
    .unwrap();
    let again_out = out.path().join("again");
    let again = infer(evaluate_args(&region_maps, &truth, "2", &again_out));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("demo_vips_jpeg.prob.ome.tif left out"),
        "{stderr}"
    );
    let again = read_json(&again_out.join("evaluation.json"));
    assert_eq!(again["slides"], region_report["slides"]);
    // Without the summary neither can be told from the other: refused, naming both.
    std::fs::remove_file(region_maps.join("demo_vips_jpeg.summary.json")).unwrap();
    refused(
        infer(evaluate_args(&region_maps, &truth, "2", &again_out)),
        &[
            "prob.ome.tif and",
            "prob.tif are both maps of demo_vips_jpeg",
        ],
    );
    // Level 5 does not exist in a 4-level map: said so.
    refused(
        infer(evaluate_args(&maps, &truth, "5", out.path())),
        &["4 levels", "--level 3"],
    );
}

/// Camelyon17's task on seven patients' nodes (`tests/fixtures/staging`, made by
/// `tools/make_staging_fixtures.py`): each node's largest metastasis as scikit-image measures
/// it, its class and each patient's stage by the challenge's definitions, and the kappa as
/// scikit-learn computes it against a reference that disagrees on four patients and three
/// nodes and names one more patient; the slides that reference calls metastatic but no
/// annotation outlines are left out of the FROC, and its labels make the AUC's.
#[test]
fn patients_are_staged_and_scored_as_camelyon17() {
    let folder = fixtures().join("staging");
    let expected = read_json(&folder.join("expected.json"));
    let truth = folder.join("truth");
    let out = tempfile::tempdir().unwrap();
    let maps = folder.join("maps");
    let reference = folder.join("stage_labels.csv");
    let with_stages = |reference: &Path| {
        let mut args = evaluate_args(&maps, &truth, "0", out.path()).to_vec();
        args.extend(["--stages".as_ref(), reference.as_os_str()]);
        infer(args)
    };
    let ran = with_stages(&reference);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let report = read_json(&out.path().join("evaluation.json"));
    let slides = report["slides"].as_array().unwrap();
    assert_eq!(slides.len(), 35);
    for slide in slides {
        let stem = slide["slide"].as_str().unwrap();
        let want = &expected["slides"][stem];
        for key in ["finding", "in_froc", "tumour"] {
            assert_eq!(slide[key], want[key], "{stem}: {key}");
        }
        match want["largest_metastasis_mm"].as_f64() {
            Some(mm) => close(&slide["largest_metastasis_mm"], &mm.into(), stem),
            None => assert!(slide["largest_metastasis_mm"].is_null(), "{stem}"),
        }
    }
    let staging = &report["staging"];
    close(&staging["kappa"], &expected["kappa"], "kappa");
    assert_eq!(staging["missing"], expected["missing"]);
    for key in ["nodes_compared", "nodes_agreeing"] {
        assert_eq!(staging[key], expected[key], "{key}");
    }
    close(&report["auc"], &expected["auc"], "AUC");

    // What is left out of the FROC counts as if its maps were not there.
    let counted = tempfile::tempdir().unwrap();
    for slide in slides.iter().filter(|s| s["in_froc"] == true) {
        let name = format!("{}.prob.tif", slide["slide"].as_str().unwrap());
        std::fs::copy(maps.join(&name), counted.path().join(&name)).unwrap();
    }
    let alone = evaluate(counted.path(), &truth, "0", &counted.path().join("out"));
    assert!(report["froc"].as_f64().is_some());
    assert_eq!(report["froc"], alone["froc"]);
    assert_eq!(report["sensitivity_at"], alone["sensitivity_at"]);

    stages_as_expected(out.path(), &expected);

    // A reference with a stage the challenge does not have is named, line and all.
    let elsewhere = tempfile::tempdir().unwrap();
    let bad = elsewhere.path().join("stage_labels.csv");
    std::fs::write(
        &bad,
        "patient,stage\npatient_000.zip,pN0\npatient_001.zip,pN3\n",
    )
    .unwrap();
    refused(with_stages(&bad), &["line 3", "\"pN3\" is not a stage"]);
}

/// A test set's maps, without annotations: no FROC, the same stages and kappa, and the AUC
/// over the reference's findings (the labels the fixture's AUC was computed with); without
/// the reference either, no slide's tumour is known and there is no AUC, but the submission
/// files are written all the same.
#[test]
fn a_cohort_without_annotations_is_staged_and_scored_by_the_reference() {
    let folder = fixtures().join("staging");
    let expected = read_json(&folder.join("expected.json"));
    let maps = folder.join("maps");
    let reference = folder.join("stage_labels.csv");
    let without_truth = |extra: &[&std::ffi::OsStr]| {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "evaluate".as_ref(),
            maps.as_os_str(),
            "--level".as_ref(),
            "0".as_ref(),
            "--out".as_ref(),
            out.path().as_os_str(),
        ];
        args.extend(extra);
        infer_ok(args);
        let report = read_json(&out.path().join("evaluation.json"));
        assert!(report["froc"].is_null() && report["curve"].is_null());
        assert!(!out.path().join("froc.png").exists());
        stages_as_expected(out.path(), &expected);
        for slide in report["slides"].as_array().unwrap() {
            let stem = slide["slide"].as_str().unwrap();
            assert_eq!(slide["in_froc"], false, "{stem}");
            assert!(out.path().join(format!("detections/{stem}.csv")).exists());
        }
        report
    };

    let staged = without_truth(&["--stages".as_ref(), reference.as_os_str()]);
    for slide in staged["slides"].as_array().unwrap() {
        let stem = slide["slide"].as_str().unwrap();
        assert_eq!(
            slide["tumour"], expected["slides"][stem]["tumour"],
            "{stem}"
        );
    }
    close(&staged["auc"], &expected["auc"], "AUC");
    close(&staged["staging"]["kappa"], &expected["kappa"], "kappa");

    let bare = without_truth(&[]);
    assert!(
        bare["slides"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["tumour"].is_null())
    );
    assert!(bare["auc"].is_null() && bare["staging"]["kappa"].is_null());

    // A mistyped --truth is refused, not taken for a cohort without tumour.
    let out = tempfile::tempdir().unwrap();
    refused(
        infer(evaluate_args(
            &maps,
            &folder.join("lesion_annotations"),
            "0",
            out.path(),
        )),
        &["not a folder of annotations"],
    );
}

/// `stages.csv` in `out`, in the challenge's format: each patient's stage, then its nodes'
/// findings, as `expected` has them.
fn stages_as_expected(out: &Path, expected: &Value) {
    let csv = std::fs::read_to_string(out.join("stages.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("patient,stage"));
    let mut patients = 0;
    for line in lines {
        let (name, class) = line.split_once(',').unwrap();
        if let Some(patient) = name.strip_suffix(".zip") {
            assert_eq!(expected["patients"][patient], class, "{line}");
            patients += 1;
        } else {
            let stem = name.strip_suffix(".tif").unwrap();
            assert_eq!(expected["slides"][stem]["finding"], class, "{line}");
        }
    }
    assert_eq!(patients, 7);
}
