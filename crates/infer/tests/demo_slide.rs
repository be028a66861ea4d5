//! `infer` on the demo slide against PyTorch's whole-slide result for the users' pipeline
//! (`tests/fixtures/pipeline`, made by `ref_pipeline.py` with OpenSlide and PyTorch).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{fixtures, infer_command};
use image::GrayImage;

/// One run of the demo slide and its outputs.
struct Run {
    dir: PathBuf,
    summary: serde_json::Value,
    /// Removes `dir` with the run; `None` for a run the tests share, which a static holds and
    /// so never drops (its directory is in cargo's target, replaced by the next test run).
    _removed_on_drop: Option<tempfile::TempDir>,
}

impl Run {
    fn new(extra: &[&str]) -> Run {
        Run::with_env(extra, &[])
    }

    /// With environment variables set.
    fn with_env(extra: &[&str], env: &[(&str, &str)]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        Run {
            dir: dir.path().to_owned(),
            summary: run_infer(dir.path(), extra, env),
            _removed_on_drop: Some(dir),
        }
    }

    /// A run for every test that looks at it: its outputs in `CARGO_TARGET_TMPDIR/NAME`.
    fn shared(name: &str, extra: &[&str]) -> Run {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
        }
        std::fs::create_dir_all(&dir).unwrap();
        Run {
            summary: run_infer(&dir, extra, &[]),
            dir,
            _removed_on_drop: None,
        }
    }

    /// Level 0 of `demo_vips_jpeg.prob.tif`, read back with our reader.
    fn map(&self) -> GrayImage {
        common::level0_map(&self.dir.join("demo_vips_jpeg.prob.tif"))
    }
}

/// `infer` on the demo slide, its outputs into `out`; its summary.
fn run_infer(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let slide = fixtures().join("pipeline/demo_vips_jpeg.tif");
    let mask = fixtures().join("pipeline/demo_mask.png");
    let mut args = vec![
        slide.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--blend",
        "mean",
        "--device",
        "cpu",
        "--truth",
        mask.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--precision") {
        args.extend(["--precision", "f32"]);
    }
    let output = infer_command()
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = std::fs::read(out.join("demo_vips_jpeg.summary.json")).unwrap();
    serde_json::from_slice(&summary).unwrap()
}

fn overlap_0() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| Run::shared("demo-overlap-0", &["--overlap", "0", "--tissue", "off"]))
}

fn overlap_64() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| Run::shared("demo-overlap-64", &["--overlap", "64", "--tissue", "off"]))
}

fn grey(name: &str) -> GrayImage {
    image::open(fixtures().join("pipeline").join(name))
        .unwrap()
        .to_luma8()
}

/// Dice of `map >= 128` against `mask >= 128`, counting only `map` inside `extent` (PyTorch's
/// map is 0 beyond its grid, so ours is taken as 0 there too).
fn dice(map: &GrayImage, mask: &GrayImage, extent: (u32, u32)) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (x, y, m) in mask.enumerate_pixels() {
        let inside = x < extent.0 && y < extent.1;
        let predicted = inside && map.get_pixel(x, y).0[0] >= 128;
        let truth = m.0[0] >= 128;
        tp += (predicted && truth) as u64;
        fp += (predicted && !truth) as u64;
        fn_ += (!predicted && truth) as u64;
    }
    2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
}

fn check_against_pytorch(run: &Run, name: &str, extent: (u32, u32), pytorch_dice: f64) {
    let map = run.map();
    let reference = grey(name);
    assert_eq!(map.dimensions(), reference.dimensions());
    let (mut close, mut total) = (0u64, 0u64);
    for (x, y, r) in reference.enumerate_pixels() {
        if x < extent.0 && y < extent.1 {
            total += 1;
            close += (map.get_pixel(x, y).0[0].abs_diff(r.0[0]) <= 2) as u64;
        }
    }
    let fraction = close as f64 / total as f64;
    assert!(
        fraction >= 0.99,
        "{reference:?}: only {:.4} of pixels within 2 levels",
        fraction
    );
    let ours = dice(&map, &grey("demo_mask.png"), extent);
    assert!(
        (ours - pytorch_dice).abs() <= 0.005,
        "Dice {ours:.4}, PyTorch {pytorch_dice}"
    );
}

#[test]
fn overlap_0_reproduces_pytorch() {
    check_against_pytorch(
        overlap_0(),
        "demo_ref_prob_overlap0.png",
        (4096, 3072),
        0.7322,
    );
    assert_eq!(overlap_0().summary["patches_in_grid"], 48);
}

#[test]
fn overlap_64_reproduces_pytorch_where_its_grid_reaches() {
    // PyTorch's 9 x 6 grid at stride 448 covers 4096 x 2752; ours adds a seventh row.
    check_against_pytorch(
        overlap_64(),
        "demo_ref_prob_overlap64.png",
        (4096, 2752),
        0.6198,
    );
    assert_eq!(overlap_64().summary["patches_in_grid"], 63);
}

/// `--precision bf16` (our CPU engine): the demo slide's map within 2 levels of the f32 map
/// on 99 % of its pixels, and the same Dice within 0.001. On a CPU without AVX-512-BF16, the
/// portable bf16 kernel (`UNET_CPU_KERNEL=portable`), the same arithmetic.
#[test]
fn bf16_map_is_the_f32_map_within_2_levels() {
    #[cfg(target_arch = "x86_64")]
    let has_bf16 = std::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let has_bf16 = false;
    let args = ["--overlap", "0", "--tissue", "off", "--precision", "bf16"];
    let (bf16, kernels) = if has_bf16 {
        (Run::new(&args), &["avx512-bf16", "amx-bf16"][..])
    } else {
        let portable = [("UNET_CPU_KERNEL", "portable")];
        (Run::with_env(&args, &portable), &["portable-bf16"][..])
    };
    let f32 = overlap_0();
    assert_eq!(bf16.summary["precision"], "bf16");
    let kernel = bf16.summary["kernel"].as_str().unwrap_or_default();
    assert!(kernels.contains(&kernel), "{kernel}");
    let (a, b) = (bf16.map(), f32.map());
    assert_eq!(a.dimensions(), b.dimensions());
    let close = a
        .pixels()
        .zip(b.pixels())
        .filter(|(p, q)| p.0[0].abs_diff(q.0[0]) <= 2)
        .count();
    let fraction = close as f64 / (a.width() * a.height()) as f64;
    println!("bf16 against f32: {fraction:.5} of pixels within 2 levels");
    assert!(fraction >= 0.99, "only {fraction:.4} within 2 levels");
    let dice = |run: &Run| run.summary["dice"].as_f64().unwrap();
    println!("Dice: bf16 {:.5}, f32 {:.5}", dice(&bf16), dice(f32));
    assert!((dice(&bf16) - dice(f32)).abs() <= 0.001);
}

/// `UNET_CPU_KERNEL` names each f32 kernel this CPU has: the summary records that one, and
/// the demo slide's map is the default kernel's within 1 level on every pixel (the kernels
/// sum in other orders).
#[test]
fn every_f32_kernel_named_gives_the_same_map() {
    let kernels = [
        ("portable", true),
        #[cfg(target_arch = "x86_64")]
        (
            "avx2",
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        ),
        #[cfg(target_arch = "x86_64")]
        ("avx512", std::is_x86_feature_detected!("avx512f")),
    ];
    let kernels = kernels
        .into_iter()
        .filter(|(_, runs)| *runs)
        .map(|(kernel, _)| kernel);
    let default = overlap_0();
    let expected = default.map();
    for kernel in kernels {
        let args = ["--overlap", "0", "--tissue", "off"];
        let run = Run::with_env(&args, &[("UNET_CPU_KERNEL", kernel)]);
        assert_eq!(run.summary["kernel"], kernel);
        let map = run.map();
        let off = map
            .pixels()
            .zip(expected.pixels())
            .map(|(p, q)| p.0[0].abs_diff(q.0[0]))
            .max();
        println!(
            "{kernel}: at most {off:?} levels from {}",
            default.summary["kernel"]
        );
        assert!(off.is_some_and(|off| off <= 1), "{kernel}: {off:?} levels");
    }
}

#[test]
fn written_map_is_what_was_computed() {
    // The summary's Dice was counted on the rows as they were stitched; the same count on the
    // map read back from the pyramid must agree exactly.
    let run = overlap_0();
    let read_back = dice(&run.map(), &grey("demo_mask.png"), (4096, 3072));
    let streamed = run.summary["dice"].as_f64().unwrap();
    assert!(
        (read_back - streamed).abs() < 1e-12,
        "{read_back} vs {streamed}"
    );
    let slide = wsi::Slide::open(run.dir.join("demo_vips_jpeg.prob.tif")).unwrap();
    let sizes: Vec<(u64, u64)> = slide.levels().iter().map(|l| (l.width, l.height)).collect();
    assert_eq!(sizes, [(4096, 3072), (2048, 1536), (1024, 768), (512, 384)]);
    assert!((slide.mpp().unwrap() - 0.243).abs() < 1e-6);
}

#[test]
fn tissue_detection_runs_fewer_patches_for_the_same_dice() {
    let auto = Run::new(&["--overlap", "0", "--tissue", "auto"]);
    let run = auto.summary["patches_run"].as_u64().unwrap();
    assert!(run < 48, "{run} of 48 patches ran");
    let (with, without) = (
        auto.summary["dice"].as_f64().unwrap(),
        overlap_0().summary["dice"].as_f64().unwrap(),
    );
    assert!(
        (with - without).abs() <= 0.005,
        "Dice {with:.4} with tissue detection, {without:.4} without"
    );
}

#[test]
fn heatmap_geojson_and_summary_are_written() {
    let run = overlap_0();
    let heatmap = image::open(run.dir.join("demo_vips_jpeg.heatmap.png")).unwrap();
    // From level 1 (not level 0): 2048 x 1536.
    assert_eq!((heatmap.width(), heatmap.height()), (2048, 1536));
    let geojson: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.dir.join("demo_vips_jpeg.tumour.geojson")).unwrap(),
    )
    .unwrap();
    assert_eq!(geojson["type"], "FeatureCollection");
    let features = geojson["features"].as_array().unwrap();
    assert!(!features.is_empty());
    // Every vertex in level-0 pixels, inside the slide; each area in µm², as QuPath names it;
    // each polygon valid by OGC's rules (geo's, as GEOS and QuPath's JTS judge them).
    for feature in features {
        let measurements = &feature["properties"]["measurements"];
        let area = measurements["Area µm^2"].as_f64().unwrap();
        assert!(area > 0.0, "{area}");
        // Each region's pixels at the contours' resolution are at or above 0.5, and the
        // highest of the level-0 pixels behind them is at most the map's.
        let mean = measurements["Mean probability"].as_f64().unwrap();
        let max = measurements["Max probability"].as_f64().unwrap();
        let map_max = run.summary["max_probability"].as_f64().unwrap();
        assert!(
            0.5 <= mean && mean <= max && max <= map_max,
            "{mean} {max} {map_max}"
        );
        assert_eq!(feature["geometry"]["type"], "Polygon");
        let rings: Vec<geo::LineString> = feature["geometry"]["coordinates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ring| {
                let points = ring.as_array().unwrap().iter();
                points
                    .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
                    .collect()
            })
            .collect();
        for point in rings[0].points() {
            assert!((0.0..=4096.0).contains(&point.x()) && (0.0..=3072.0).contains(&point.y()));
        }
        let polygon = geo::Polygon::new(rings[0].clone(), rings[1..].to_vec());
        let errors = geo::Validation::validation_errors(&polygon);
        assert!(errors.is_empty(), "{errors:?}");
    }
    // Highest probability first: the largest pixel, then the mean.
    let keys: Vec<(f64, f64)> = features
        .iter()
        .map(|feature| {
            let measurements = &feature["properties"]["measurements"];
            let value = |key: &str| measurements[key].as_f64().unwrap();
            (value("Max probability"), value("Mean probability"))
        })
        .collect();
    assert!(keys.windows(2).all(|pair| pair[0] >= pair[1]), "{keys:?}");
    // The ASAP XML's outlines, in the same order, have the same names and probabilities.
    let xml = std::fs::read_to_string(run.dir.join("demo_vips_jpeg.tumour.xml")).unwrap();
    let xml = roxmltree::Document::parse(&xml).unwrap();
    let outlines: Vec<&str> = xml
        .descendants()
        .filter(|n| n.has_tag_name("Annotation") && n.attribute("PartOfGroup") == Some("Tumor"))
        .map(|n| n.attribute("Name").unwrap())
        .collect();
    let named: Vec<String> = features
        .iter()
        .enumerate()
        .map(|(index, feature)| {
            let measurements = &feature["properties"]["measurements"];
            let [mean, max] = ["Mean probability", "Max probability"]
                .map(|key| measurements[key].as_f64().unwrap());
            let name = &feature["properties"]["name"];
            assert_eq!(*name, format!("Tumor {}", index + 1));
            format!(
                "{}: mean p {mean:.3}, max p {max:.3}",
                name.as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(outlines, named);
    for key in [
        "seconds",
        "patches_per_second",
        "ms_per_patch",
        "device",
        "precision",
        "batch",
        "model",
    ] {
        assert!(!run.summary[key].is_null(), "summary lacks {key}");
    }
    // What the seconds were measured on: the CPU's name as Linux gives it, and its threads.
    let hardware = run.summary["hardware"].as_str().unwrap();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(name) = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
    {
        assert!(hardware.starts_with(name.1.trim()), "{hardware}");
    }
    assert!(
        hardware.trim_end_matches('s').ends_with(" thread"),
        "{hardware}"
    );
    // Nothing else is left in the output directory (no temporary files).
    let mut names: Vec<String> = std::fs::read_dir(&run.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "demo_vips_jpeg.heatmap.png",
            "demo_vips_jpeg.prob.tif",
            "demo_vips_jpeg.summary.json",
            "demo_vips_jpeg.tumour.geojson",
            "demo_vips_jpeg.tumour.xml"
        ]
    );
}

/// The contours are traced on a map of their own, two level-0 pixels a pixel on this slide:
/// a smaller heatmap (256 pixels wide, 16 a pixel) leaves them as they are.
#[test]
fn contours_do_not_depend_on_the_heatmap_size() {
    let small = Run::new(&["--overlap", "0", "--tissue", "off", "--heatmap-size", "256"]);
    let heatmap = image::open(small.dir.join("demo_vips_jpeg.heatmap.png")).unwrap();
    assert_eq!((heatmap.width(), heatmap.height()), (256, 192));
    for run in [&small, overlap_0()] {
        assert_eq!(run.summary["contour_downsample"], 2.0);
    }
    for kind in ["tumour.geojson", "tumour.xml"] {
        let read = |run: &Run| std::fs::read(run.dir.join(format!("demo_vips_jpeg.{kind}")));
        assert!(
            read(&small).unwrap() == read(overlap_0()).unwrap(),
            "{kind} differs"
        );
    }
}

/// OpenSlide opens the probability map with its levels and mpp (Python's openslide; `.ci/run`
/// installs it; skipped outside CI when missing).
#[test]
fn openslide_opens_the_probability_map() {
    let path = overlap_0().dir.join("demo_vips_jpeg.prob.tif");
    let script = "import sys, openslide; s = openslide.OpenSlide(sys.argv[1]); print(s.level_count, s.dimensions, round(float(s.properties['openslide.mpp-x']), 4))";
    match Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
    {
        Ok(output) if output.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&output.stdout).trim(),
                "4 (4096, 3072) 0.243"
            );
        }
        other if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: no Python openslide: {other:?}")
        }
        other => panic!("OpenSlide could not open the map: {other:?}"),
    }
}
