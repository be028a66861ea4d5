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

/// A slide without a pyramid (one level, in strips, as ImageJ and some exporters write it),
/// whose level 0 is over what one read may return (1 GiB): the tissue detector and the
/// heatmap see it scaled down, read in bands, and only the patches over its tissue run. The
/// slide is glass (near-white) with the demo slide's tissue pasted at one place.
#[test]
fn a_slide_without_a_pyramid_is_read_in_bands() {
    const WIDTH: u32 = 20480;
    const HEIGHT: u32 = 18432;
    const PASTED_AT: (u32, u32) = (8192, 8192);
    let dir = tempfile::tempdir().unwrap();
    let slide_path = dir.path().join("flat.tif");
    let tissue = wsi::Slide::open(fixtures().join("slides/tiny_vips_jpeg.tif"))
        .unwrap()
        .read_region(0, 0, 0, 2048, 1536)
        .unwrap();
    let mut encoder = tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(
        std::fs::File::create(&slide_path).unwrap(),
    ))
    .unwrap();
    // Uncompressed (1.1 GB), as ImageJ writes it: the `tiff` crate (0.11) compresses only
    // whole images, and writes strips given one by one raw whatever its compression tag says.
    let mut image = encoder
        .new_image::<tiff::encoder::colortype::RGB8>(WIDTH, HEIGHT)
        .unwrap();
    image.rows_per_strip(64).unwrap();
    let glass = [236u8, 236, 238].repeat(WIDTH as usize);
    let mut strip = Vec::with_capacity(glass.len() * 64);
    for top in (0..HEIGHT).step_by(64) {
        strip.clear();
        for y in top..top + 64 {
            let start = strip.len();
            strip.extend_from_slice(&glass);
            if let Some(row) = y
                .checked_sub(PASTED_AT.1)
                .filter(|&row| row < tissue.height())
            {
                let line = &tissue.as_raw()[(3 * row * tissue.width()) as usize..]
                    [..3 * tissue.width() as usize];
                let x = start + 3 * PASTED_AT.0 as usize;
                strip[x..x + line.len()].copy_from_slice(line);
            }
        }
        image.write_strip(&strip).unwrap();
    }
    image.finish().unwrap();
    drop(encoder); // flushes the file

    let out = dir.path().join("out");
    infer_slide(
        &slide_path,
        &out,
        &["--overlap", "0", "--slide-mpp", "0.243"],
    );
    let summary = read_json(&out.join("flat.summary.json"));
    // The pasted tissue is 31 % of 2048 x 1536 (tiny_meta.json): 0.26 % of this slide.
    let tissue = summary["tissue"].as_str().unwrap();
    let percent: f64 = tissue
        .strip_prefix("auto (")
        .and_then(|rest| rest.strip_suffix(" % of the slide)"))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{tissue}"));
    assert!((0.15..=0.5).contains(&percent), "{tissue}");
    // Of the 4 x 3 patches under the pasted tissue (aligned with the grid), those its tissue
    // reaches, and at most those that border them (the mask is dilated).
    let run = summary["patches_run"].as_u64().unwrap();
    assert!((6..=30).contains(&run), "{run} patches ran");
    let heatmap = image::open(out.join("flat.heatmap.png")).unwrap();
    assert_eq!((heatmap.width(), heatmap.height()), (4096, 3687));
}
