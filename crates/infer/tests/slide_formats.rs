//! `infer` on the same slide stored as a generic TIFF, as a DICOM-WSI series (the folder, and
//! one instance) and as an Aperio SVS: outputs at the slide's size with its mpp, and the same
//! tumour found (Dice against the slide's mask within 0.03 of the TIFF's: the DICOM and SVS
//! copies were re-encoded, so their pixels carry extra JPEG noise).

mod common;

use std::path::Path;

use common::{fixtures, infer_slide, read_json};

struct Outcome {
    dice: f64,
    vendor: String,
}

fn run(slide: &Path, stem: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mask = fixtures().join("slides/tiny_mask.png");
    infer_slide(slide, dir.path(), &["--truth", mask.to_str().unwrap()]);
    let summary = read_json(&dir.path().join(format!("{stem}.summary.json")));
    assert!((summary["mpp"].as_f64().unwrap() - 0.243).abs() < 1e-6);
    let map = wsi::Slide::open(dir.path().join(format!("{stem}.prob.tif"))).unwrap();
    assert_eq!(
        (map.levels()[0].width, map.levels()[0].height),
        (2048, 1536),
        "{}: the map covers the slide",
        slide.display()
    );
    assert!(
        (map.mpp().unwrap() - 0.243).abs() < 1e-6,
        "the map carries the slide's mpp"
    );
    Outcome {
        dice: summary["dice"].as_f64().unwrap(),
        vendor: summary["vendor"].as_str().unwrap().to_string(),
    }
}

#[test]
fn dicom_and_svs_slides_give_the_tiffs_result() {
    let tiff = run(
        &fixtures().join("slides/tiny_vips_jpeg.tif"),
        "tiny_vips_jpeg",
    );
    assert_eq!(tiff.vendor, "generic-tiff");
    assert!(
        tiff.dice > 0.5,
        "the demo model finds the tumour: Dice {}",
        tiff.dice
    );
    for (slide, stem, vendor) in [
        ("slides_more/tiny_dicom", "tiny_dicom", "dicom"),
        ("slides_more/tiny_dicom/level0.dcm", "level0", "dicom"),
        ("slides_more/tiny_aperio.svs", "tiny_aperio", "aperio"),
    ] {
        let outcome = run(&fixtures().join(slide), stem);
        assert_eq!(outcome.vendor, vendor);
        assert!(
            (outcome.dice - tiff.dice).abs() <= 0.03,
            "{slide}: Dice {:.4}, the TIFF's {:.4}",
            outcome.dice,
            tiff.dice
        );
    }
}
