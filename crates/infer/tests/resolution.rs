//! Slides read at the model's resolution: a finer scan is averaged down to it, a model
//! trained at half the resolution reads level 1 (or level 0 halved), outputs stay in level-0
//! coordinates, and slides that cannot be read at the model's resolution are refused.

mod common;

use std::path::Path;

use common::{fixtures, infer, infer_slide, level0_map, read_json, rescanned};
use image::GrayImage;

/// Share of pixels within `levels` of each other.
fn agreement(a: &GrayImage, b: &GrayImage, levels: u8) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let close = a
        .pixels()
        .zip(b.pixels())
        .filter(|(p, q)| p.0[0].abs_diff(q.0[0]) <= levels)
        .count();
    close as f64 / (a.width() * a.height()) as f64
}

/// Dice of the polygons of an ASAP XML, scaled down by `factor`, against `mask`.
fn dice_on_mask(xml: &Path, factor: f64, mask: &GrayImage) -> f64 {
    let (width, height) = mask.dimensions();
    let polygons = infer::truth::Truth::load(xml, width as f64, height as f64)
        .unwrap()
        .downscaled(factor);
    let (mut both, mut total) = (0u64, 0u64);
    let mut row = Vec::new();
    for y in 0..height {
        polygons.row(0.0, y as f64, width as usize, &mut row);
        for (x, &inside) in row.iter().enumerate() {
            let tumour = mask.get_pixel(x as u32, y).0[0] > 0;
            both += (inside && tumour) as u64;
            total += inside as u64 + tumour as u64;
        }
    }
    2.0 * both as f64 / total as f64
}

/// The area (pixels²) and centroid of the outlines of a QuPath GeoJSON (shoelace sums).
fn outline_area_and_centroid(geojson: &serde_json::Value) -> (f64, [f64; 2]) {
    let (mut area, mut cx, mut cy) = (0.0, 0.0, 0.0);
    for feature in geojson["features"].as_array().unwrap() {
        let outline = &feature["geometry"]["coordinates"][0];
        let points: Vec<(f64, f64)> = outline
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        for (a, b) in points.iter().zip(points.iter().cycle().skip(1)) {
            let cross = a.0 * b.1 - b.0 * a.1;
            area += cross / 2.0;
            cx += (a.0 + b.0) * cross / 6.0;
            cy += (a.1 + b.1) * cross / 6.0;
        }
    }
    (area.abs(), [cx / area, cy / area])
}

#[test]
fn a_slide_scanned_at_twice_the_resolution_gives_the_same_map_in_its_own_coordinates() {
    let work = tempfile::tempdir().unwrap();
    let demo = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let fine = work.path().join("fine.tif");
    rescanned(&demo, &fine, 2, Some(0.1215));
    let out = work.path().join("out");
    infer_slide(&demo, &out, &[]);
    infer_slide(&fine, &out, &[]);

    let summary = read_json(&out.join("fine.summary.json"));
    let resolution = &summary["resolution"];
    assert_eq!(resolution["model_mpp"], 0.243, "{summary}");
    assert_eq!(resolution["level"], 1, "{summary}");
    assert_eq!(resolution["scale"], 2.0, "{summary}");
    assert!((summary["analysis_mpp"].as_f64().unwrap() - 0.243).abs() < 1e-6);

    // The map is at the model's resolution: the demo slide's map, pixel for pixel.
    let map = level0_map(&out.join("fine.prob.tif"));
    let reference = level0_map(&out.join("demo_vips_jpeg.prob.tif"));
    let share = agreement(&map, &reference, 2);
    assert!(share >= 0.99, "{share}");
    // Its resolution tags say so: 0.243 µm/px.
    let written = wsi::Slide::open(out.join("fine.prob.tif")).unwrap();
    assert!((written.mpp().unwrap() - 0.243).abs() < 1e-4);

    // Contours in the fine slide's level-0 pixels: the demo's scaled by 2, on the tumour of
    // the demo's mask scaled by 2, with the same area in µm².
    let fine_contours = read_json(&out.join("fine.tumour.geojson"));
    let demo_contours = read_json(&out.join("demo_vips_jpeg.tumour.geojson"));
    let (fine_pixels, fine_centre) = outline_area_and_centroid(&fine_contours);
    let (demo_pixels, demo_centre) = outline_area_and_centroid(&demo_contours);
    assert!((fine_pixels / (4.0 * demo_pixels) - 1.0).abs() < 0.02);
    for (f, d) in fine_centre.iter().zip(demo_centre) {
        assert!(
            (f - 2.0 * d).abs() <= 8.0,
            "{fine_centre:?} vs 2 x {demo_centre:?}"
        );
    }
    // On the tumour: the outlines, read back as ASAP polygons and laid on the demo mask
    // (the fine slide's level 0 halved), overlap it as the demo's own outlines do.
    let mask = image::open(fixtures().join("pipeline/demo_mask.png"))
        .unwrap()
        .to_luma8();
    let fine_dice = dice_on_mask(&out.join("fine.tumour.xml"), 2.0, &mask);
    let demo_dice = dice_on_mask(&out.join("demo_vips_jpeg.tumour.xml"), 1.0, &mask);
    assert!(fine_dice > 0.6, "{fine_dice}");
    assert!(
        (fine_dice - demo_dice).abs() < 0.01,
        "{fine_dice} vs {demo_dice}"
    );
    let area = |geojson: &serde_json::Value| -> f64 {
        geojson["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                f["properties"]["measurements"]["Area µm^2"]
                    .as_f64()
                    .unwrap()
            })
            .sum()
    };
    let (fine_area, demo_area) = (area(&fine_contours), area(&demo_contours));
    assert!(
        (fine_area / demo_area - 1.0).abs() < 0.02,
        "{fine_area} vs {demo_area}"
    );

    // `infer evaluate` places the fine slide's annotation (its level-0 pixels, so twice the
    // demo's coordinates) on the map through the summary's scale: the same evaluation.
    let truth = work.path().join("truth");
    std::fs::create_dir(&truth).unwrap();
    let demo_xml = std::fs::read_to_string(fixtures().join("pipeline/demo.xml")).unwrap();
    std::fs::write(truth.join("demo_vips_jpeg.xml"), &demo_xml).unwrap();
    std::fs::write(truth.join("fine.xml"), doubled_coordinates(&demo_xml)).unwrap();
    let evaluated = infer([
        "evaluate".as_ref(),
        out.as_os_str(),
        "--truth".as_ref(),
        truth.as_os_str(),
        "--level".as_ref(),
        "2".as_ref(),
    ]);
    assert!(
        evaluated.status.success(),
        "{}",
        String::from_utf8_lossy(&evaluated.stderr)
    );
    let report = read_json(&out.join("evaluation.json"));
    let (demo, fine) = (&report["slides"][0], &report["slides"][1]);
    assert_eq!(fine["slide"], "fine");
    for key in ["lesions", "lesions_found", "size"] {
        assert_eq!(fine[key], demo[key], "{key}: {report}");
    }
    assert_eq!(demo["lesions"], 1);
}

/// An ASAP XML with every X and Y doubled.
fn doubled_coordinates(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(at) = rest.find(['X', 'Y']) {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        if let Some(value) = tail[1..].strip_prefix("=\"") {
            let end = value.find('"').unwrap();
            let doubled = 2.0 * value[..end].parse::<f64>().unwrap();
            out.push_str(&format!("{}=\"{doubled}\"", &tail[..1]));
            rest = &value[end + 1..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn a_model_trained_at_half_the_resolution_reads_level_1_or_level_0_halved() {
    let work = tempfile::tempdir().unwrap();
    // The demo model, as `convert --mpp 0.486` would record it.
    let model = work.path().join("half.bpk");
    let demo_model = fixtures().join("../../models/unet_demo_w8.bpk");
    let weights = unet_core::model_file::read_weights(&demo_model).unwrap();
    unet_core::model_file::save(&weights, "unet_demo_w8.pth", Some(0.486), &model).unwrap();
    let model_arg = ["--model", model.to_str().unwrap()];
    let out = work.path().join("out");
    let slides = fixtures().join("slides");

    // A pyramid with a level at 0.486 µm/px: that level, as it is.
    let pyramid = slides.join("odd_vips_lzw.tif");
    infer_slide(&pyramid, &out, &model_arg);
    let summary = read_json(&out.join("odd_vips_lzw.summary.json"));
    assert_eq!(summary["resolution"]["level"], 1, "{summary}");
    assert_eq!(summary["resolution"]["resample"], 1.0, "{summary}");
    // 1001 / 500: libvips's level 1 is 500 pixels wide.
    let scale = summary["resolution"]["scale"].as_f64().unwrap();
    assert!((scale - 2.0).abs() < 0.01, "{summary}");

    // One level only: level 0 averaged 2 x 2, which gives what libvips's level 1 holds.
    let single = slides.join("odd_tf_strips.tif");
    infer_slide(&single, &out, &model_arg);
    let summary = read_json(&out.join("odd_tf_strips.summary.json"));
    assert_eq!(summary["resolution"]["level"], 0, "{summary}");
    assert_eq!(summary["resolution"]["resample"], 2.0, "{summary}");
    let halved = level0_map(&out.join("odd_tf_strips.prob.tif"));
    assert_eq!(halved.dimensions(), (500, 376));
    let level1 = level0_map(&out.join("odd_vips_lzw.prob.tif"));
    let share = agreement(&halved, &level1, 2);
    assert!(share >= 0.99, "{share}");
    // The summary's region is the whole slide in level-0 pixels.
    assert_eq!(summary["region"], serde_json::json!([0, 0, 1000, 752]));
}

#[test]
fn slides_that_cannot_be_read_at_the_models_resolution_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let demo = fixtures().join("pipeline/demo_vips_jpeg.tif");
    // The model wants 0.2 µm/px; the slide is 0.243: coarser by more than 10 %.
    let coarse = infer([
        demo.as_os_str(),
        "--out".as_ref(),
        work.path().as_os_str(),
        "--model-mpp".as_ref(),
        "0.2".as_ref(),
    ]);
    let stderr = String::from_utf8_lossy(&coarse.stderr);
    assert_eq!(coarse.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("coarser than the model"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // A file whose resolution is an image editor's 72 dpi (352.8 µm/px): the message says
    // that it may be wrong, and how to give the right one.
    let editor = work.path().join("editor.tif");
    rescanned(&demo, &editor, 1, Some(25400.0 / 72.0));
    let run = |slide: &Path, flags: &[&str]| {
        let output = infer(
            [slide.as_os_str(), "--out".as_ref(), work.path().as_os_str()]
                .into_iter()
                .chain(flags.iter().map(std::ffi::OsStr::new)),
        );
        assert_eq!(output.status.code(), Some(1), "{flags:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&editor, &[]);
    assert!(
        stderr.contains("the slide is 352.7778 µm/px")
            && stderr.contains("if the file's resolution is wrong")
            && stderr.contains("--slide-mpp"),
        "{stderr}"
    );
    // A model 4000 times coarser than the slide (999 µm/px, a slip of units): a patch would
    // read 263 113 pixels square of the demo's coarsest level; refused, naming the flags.
    let stderr = run(&demo, &["--model-mpp", "999"]);
    assert!(
        stderr.contains("covers 263113x263113 pixels of level 3")
            && stderr.contains("check --model-mpp and --slide-mpp"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // Outside 0.01 to 1000 µm/px (Camelyon's 0.243 in millimetres): refused as it is read.
    for flag in ["--model-mpp", "--slide-mpp"] {
        let output = infer([
            demo.as_os_str(),
            "--out".as_ref(),
            work.path().as_os_str(),
            flag.as_ref(),
            "0.000243".as_ref(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("is not µm per pixel from 0.01 to 1000"),
            "{stderr}"
        );
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        1,
        "nothing written"
    );
    // No resolution recorded: refused, naming --slide-mpp; given, it runs.
    let bare = work.path().join("bare.tif");
    rescanned(&fixtures().join("slides/odd_vips_jpeg.tif"), &bare, 1, None);
    let out = work.path().join("out");
    let unknown = infer([bare.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--slide-mpp"), "{stderr}");
    assert!(!out.exists(), "nothing written");
    infer_slide(&bare, &out, &["--slide-mpp", "0.243"]);
    assert!(Path::new(&out.join("bare.prob.tif")).is_file());
}
