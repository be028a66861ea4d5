//! Cohorts: several slides (a folder, a manifest), sharded, resumed, one bad slide failing
//! alone; `infer merge` joining the shards' summaries.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, infer, read_json, rescanned};

/// Six small slides in `dir` (four fixtures as they are, two rescanned at twice the
/// resolution, 0.1215 µm/px) and, when `with_bad`, a slide with a corrupt tile.
fn cohort_folder(dir: &Path, with_bad: bool) -> Vec<PathBuf> {
    let slides = fixtures().join("slides");
    let copies = [
        (slides.join("tiny_vips_jpeg.tif"), "a/tiny.tif"),
        (slides.join("tiny_tf_jpeg_rgb.tif"), "b/tiny.tif"),
        (slides.join("odd_vips_jpeg.tif"), "odd.tif"),
        (fixtures().join("slides_more/tiny_aperio.svs"), "aperio.svs"),
    ];
    let mut made = Vec::new();
    for (source, name) in copies {
        let dest = dir.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&source, &dest).unwrap();
        made.push(dest);
    }
    for (source, name) in [
        ("tiny_vips_jpeg.tif", "fine_tiny.tif"),
        ("odd_vips_lzw.tif", "fine_odd.tif"),
    ] {
        let dest = dir.join(name);
        rescanned(&slides.join(source), &dest, 2, Some(0.1215));
        made.push(dest);
    }
    if with_bad {
        let dest = dir.join("corrupt.tif");
        std::fs::copy(fixtures().join("bad/slide_corrupt_jpeg.tif"), &dest).unwrap();
        made.push(dest);
    }
    made.sort();
    made
}

fn run(args: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|p| p.as_os_str()).collect();
    all.extend(
        ["--device", "cpu", "--precision", "f32", "--quiet"]
            .iter()
            .chain(extra)
            .map(std::ffi::OsStr::new),
    );
    infer(all)
}

fn statuses(report: &serde_json::Value) -> Vec<(String, String)> {
    report["slides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stem"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn shards_run_every_slide_once_a_rerun_skips_and_a_bad_slide_fails_alone() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("slides");
    let slides = cohort_folder(&input, true);
    let out = work.path().join("out");

    // Three shards over the folder: the one holding the corrupt slide exits 1, the others 0.
    let mut failures = 0;
    for index in 0..3 {
        let shard = format!("{index}/3");
        let output = run(&[&input, Path::new("--out"), &out], &["--shard", &shard]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        if !output.status.success() {
            failures += 1;
            assert_eq!(output.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("corrupt.tif"), "{stderr}");
        }
        assert!(out.join(format!("cohort.shard-{index}-of-3.csv")).is_file());
    }
    assert_eq!(failures, 1);

    // Merged: every slide exactly once; the six good ones done, the corrupt one failed.
    let merged = infer([Path::new("merge"), &out]);
    assert_eq!(merged.status.code(), Some(1), "one slide failed");
    let report = read_json(&out.join("cohort.json"));
    let mut seen = statuses(&report);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("a_tiny", "done"),
            ("aperio", "done"),
            ("b_tiny", "done"),
            ("corrupt", "failed"),
            ("fine_odd", "done"),
            ("fine_tiny", "done"),
            ("odd", "done"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let failed = &report["slides"].as_array().unwrap()[3];
    assert!(
        failed["error"].as_str().unwrap().contains("damaged"),
        "{failed}"
    );
    for stem in ["a_tiny", "b_tiny", "odd", "aperio", "fine_tiny", "fine_odd"] {
        for kind in [
            "prob.tif",
            "heatmap.png",
            "tumour.geojson",
            "tumour.xml",
            "summary.json",
        ] {
            assert!(
                out.join(format!("{stem}.{kind}")).is_file(),
                "{stem}.{kind}"
            );
        }
    }
    assert!(!out.join("corrupt.prob.tif").exists());
    let csv = std::fs::read_to_string(out.join("cohort.csv")).unwrap();
    assert!(csv.starts_with(
        "slide,stem,status,error,patches,seconds,tumour_area_mm2,max_probability,dice,iou"
    ));
    assert_eq!(csv.lines().count(), 8);

    // The same six through a manifest: all skipped, nothing rewritten.
    let manifest = input.join("cohort.csv");
    let good: Vec<&PathBuf> = slides
        .iter()
        .filter(|s| !s.ends_with("corrupt.tif"))
        .collect();
    let rows: Vec<String> = good
        .iter()
        .map(|s| s.strip_prefix(&input).unwrap().display().to_string())
        .collect();
    std::fs::write(&manifest, format!("slide\n{}\n", rows.join("\n"))).unwrap();
    let written = std::fs::metadata(out.join("odd.prob.tif"))
        .unwrap()
        .modified()
        .unwrap();
    let again = run(&[&manifest, Path::new("--out"), &out], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report = read_json(&out.join("cohort.json"));
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "skipped"),
        "{report}"
    );
    assert_eq!(report["skipped"], 6);
    let after = std::fs::metadata(out.join("odd.prob.tif"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(written, after);

    // --force runs them again.
    let forced = run(&[&manifest, Path::new("--out"), &out], &["--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let report = read_json(&out.join("cohort.json"));
    assert_eq!(report["done"], 6, "{report}");

    // Other options are another result: not skipped.
    let other = run(&[&manifest, Path::new("--out"), &out], &["--overlap", "64"]);
    assert!(other.status.success());
    assert_eq!(read_json(&out.join("cohort.json"))["done"], 6);
}

#[test]
fn a_manifest_gives_truth_resolution_and_output_folder() {
    let work = tempfile::tempdir().unwrap();
    let slides = fixtures().join("slides");
    // No resolution tags: the manifest's mpp is what lets it run.
    let bare = work.path().join("bare.tif");
    rescanned(&slides.join("tiny_vips_jpeg.tif"), &bare, 1, None);
    let manifest = work.path().join("list.csv");
    let truth = slides.join("tiny.xml");
    std::fs::write(
        &manifest,
        format!(
            "slide,truth,mpp,out\nbare.tif,{},0.243,elsewhere\n\"{}\",,,\n",
            truth.display(),
            slides.join("odd_vips_jpeg.tif").display()
        ),
    )
    .unwrap();
    let out = work.path().join("out");
    let output = run(&[&manifest, Path::new("--out"), &out], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = read_json(&work.path().join("elsewhere/bare.summary.json"));
    assert!(summary["dice"].as_f64().unwrap() > 0.3, "{summary}");
    assert_eq!(summary["mpp"], 0.243);
    assert!(out.join("odd_vips_jpeg.summary.json").is_file());
    let report = read_json(&out.join("cohort.json"));
    assert_eq!(report["done"], 2);
    // Slides are in path order, which depends on where the checkout and the temporary folder lie.
    let bare_record = report["slides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stem"] == "bare")
        .unwrap();
    assert!(bare_record["dice"].as_f64().unwrap() > 0.3, "{report}");

    // Without the manifest's mpp the same slide is refused, naming --slide-mpp.
    let refused = run(&[&bare, Path::new("--out"), &out], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr.contains("--slide-mpp"), "{stderr}");

    // One slide and a folder of truth: its STEM.xml found there, as in a cohort; a folder
    // without it, or one file of truth for a cohort, refused before anything runs.
    let folder = work.path().join("annotations");
    std::fs::create_dir(&folder).unwrap();
    let with_folder = || {
        let args = [
            &bare,
            Path::new("--out"),
            &out,
            Path::new("--truth"),
            &folder,
        ];
        run(&args, &["--slide-mpp", "0.243"])
    };
    let single = with_folder();
    let stderr = String::from_utf8_lossy(&single.stderr);
    assert_eq!(single.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no ground truth of bare there"), "{stderr}");
    std::fs::copy(&truth, folder.join("bare.xml")).unwrap();
    let single = with_folder();
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let summary = read_json(&out.join("bare.summary.json"));
    assert_eq!(summary["dice"], bare_record["dice"], "{summary}");
    let one_file = run(
        &[
            &manifest,
            Path::new("--out"),
            &out,
            Path::new("--truth"),
            &truth,
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&one_file.stderr);
    assert_eq!(one_file.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a cohort's ground truth is a folder"),
        "{stderr}"
    );

    // An mpp in millimetres is named with its line before any slide runs.
    let millimetres = work.path().join("millimetres.csv");
    std::fs::write(&millimetres, "slide,mpp\nbare.tif,0.000243\n").unwrap();
    let refused = run(&[&millimetres, Path::new("--out"), &out], &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr.contains("millimetres.csv: line 2: mpp `0.000243` is not µm per pixel from 0.01"),
        "{stderr}"
    );
}

/// A scheduler's SIGTERM in the middle of a cohort: exit 130, the slides finished so far kept
/// (and in the cohort summary), the slide in progress leaving nothing; the same command then
/// finishes the cohort, skipping what was done.
#[test]
fn an_interrupted_cohort_is_finished_by_the_same_command() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("slides");
    std::fs::create_dir(&input).unwrap();
    for i in 0..3 {
        std::fs::copy(
            fixtures().join("pipeline/demo_vips_jpeg.tif"),
            input.join(format!("demo{i}.tif")),
        )
        .unwrap();
    }
    let out = work.path().join("out");
    // Every patch: a few seconds a slide.
    let args = |out: &Path| {
        let mut args: Vec<std::ffi::OsString> = vec![input.clone().into(), "--out".into()];
        args.push(out.into());
        for a in ["--tissue", "off", "--device", "cpu", "--quiet"] {
            args.push(a.into());
        }
        args
    };
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(args(&out))
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first slide is complete, the second is under way.
    let first = out.join("demo0.summary.json");
    let started = std::time::Instant::now();
    while !first.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("the same command finishes the cohort"),
        "{stderr}"
    );

    let report = read_json(&out.join("cohort.json"));
    let done = report["done"].as_u64().unwrap();
    assert!((1..3).contains(&done), "{report}");
    // Each slide: all five outputs or none, and no temporary files.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".partial")), "{names:?}");
    for i in 0..3 {
        let outputs = names
            .iter()
            .filter(|n| n.starts_with(&format!("demo{i}.")))
            .count();
        assert!(outputs == 0 || outputs == 5, "demo{i}: {names:?}");
    }

    let rerun = infer(args(&out));
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let report = read_json(&out.join("cohort.json"));
    assert_eq!(report["skipped"].as_u64(), Some(done), "{report}");
    assert_eq!(report["done"].as_u64(), Some(3 - done), "{report}");
}
