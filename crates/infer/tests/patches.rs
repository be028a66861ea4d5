//! `infer patches DIR --out OUT`: each patch's probability PNG is PyTorch's u8 map.

use std::path::Path;
use std::process::Command;

#[test]
fn patch_directory_gives_pytorchs_maps_and_overlays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("tests/fixtures/pytorch");
    let work = tempfile::tempdir().unwrap();
    // The w8 state-dict fixture's model, converted as `convert` does.
    let checkpoint = unet_core_checkpoint(
        &fixtures.join("unet_w8_state_dict.pth"),
        &work.path().join("w8.bpk"),
    );
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(
        fixtures.join("unet_w8_state_dict_input.png"),
        input.join("a.png"),
    )
    .unwrap();
    let out = work.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            "patches",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
        ])
        .arg(&checkpoint)
        .args(["--device", "cpu", "--precision", "f32"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ours = image::open(out.join("a.prob.png")).unwrap().to_luma8();
    let pytorch = image::open(fixtures.join("unet_w8_state_dict_expected_prob.png"))
        .unwrap()
        .to_luma8();
    let worst = ours
        .as_raw()
        .iter()
        .zip(pytorch.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "differs by {worst} levels");
    let overlay = image::open(out.join("a.overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (64, 64));
}

/// `a.png` and `a.jpg` would both be written as `a.prob.png`: refused before any patch runs,
/// naming both, and nothing written.
#[test]
fn patches_of_the_same_name_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let patch = image::RgbImage::from_pixel(32, 32, image::Rgb([150, 60, 160]));
    for name in ["a.png", "a.jpg", "b.png"] {
        patch.save(input.join(name)).unwrap();
    }
    let out = work.path().join("out");
    let output = patches_command(&input, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a.jpg and ")
            && stderr.contains("a.png would both be written as a.prob.png"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// A patch that cannot be read (cut short) or run (500 pixels, not a multiple of 16) is named
/// and passed over; the others are written, and the exit says that some failed.
#[test]
fn a_bad_patch_is_reported_and_the_others_written() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let good = input.join("good.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([150, 60, 160]))
        .save(&good)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(input.join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    image::RgbImage::from_pixel(500, 500, image::Rgb([150, 60, 160]))
        .save(input.join("odd.png"))
        .unwrap();
    let out = work.path().join("out");
    let output = patches_command(&input, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cut.png: cannot read"), "{stderr}");
    assert!(
        stderr.contains("odd.png: a 500x500 patch; each side must be a multiple of 16"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("2 could not be run"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["good.overlay.png", "good.prob.png"]);
}

/// Ctrl-C or a scheduler's SIGTERM in the middle of a directory of patches (300 of them, a
/// run of tens of seconds): exit 130 between batches, and nothing written, as a slide's run.
#[test]
fn an_interrupted_directory_of_patches_stops_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let patch = input.join("p000.png");
    image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .save(&patch)
        .unwrap();
    for i in 1..300 {
        std::fs::copy(&patch, input.join(format!("p{i:03}.png"))).unwrap();
    }
    for signal in ["-INT", "-TERM"] {
        let out = work.path().join(format!("out{signal}"));
        let child = patches_command(&input, &out)
            .args(["--batch", "1"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(!out.exists(), "{signal}: {out:?} left");
    }
}

/// `infer patches INPUT --out OUT` on the CPU.
fn patches_command(input: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infer"));
    command.arg("patches").arg(input).arg("--out").arg(out);
    command.args(["--device", "cpu"]);
    command
}

/// The checkpoint converted to a model file, as `convert` does.
fn unet_core_checkpoint(pth: &Path, out: &Path) -> std::path::PathBuf {
    let checkpoint = unet_core::Checkpoint::read(pth).unwrap();
    unet_core::model_file::save(&checkpoint.weights, "test", None, out).unwrap();
    out.to_path_buf()
}

/// `infer-bench` on a few patches of the demo slide: both paths and the augmented one in the
/// table (the optimised ones on the engine asked for, the original on the default), and a PNG
/// chart.
#[test]
fn bench_compares_both_paths_and_draws_the_chart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_infer-bench"))
        .args([
            "--device",
            "cpu",
            "--patches",
            "3",
            "--batch",
            "2",
            "--tta",
            "flips",
            "--engine",
            "burn",
        ])
        .arg("--out")
        .arg(out.path())
        .current_dir(&root)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Path, engine, device, then (after the hardware) precision, batch, TTA and patches.
    for row in [
        ["Original", "cpu", "cpu", "f32", "1", "off", "3"],
        ["Optimised", "burn", "cpu", "f32", "2", "off", "3"],
        ["Augmented", "burn", "cpu", "f32", "2", "flips", "3"],
    ] {
        let cells: Vec<&str> = table
            .lines()
            .find(|line| line.starts_with(&format!("| {} |", row[0])))
            .unwrap_or_else(|| panic!("no {} row in:\n{table}", row[0]))
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(&cells[1..4], &row[..3], "{table}");
        assert!(
            cells[4].trim_end_matches('s').ends_with(" thread"),
            "the hardware: {table}"
        );
        assert_eq!(&cells[5..9], &row[3..], "{table}");
    }
    let chart = image::open(out.path().join("bench.png")).unwrap();
    assert_eq!((chart.width(), chart.height()), (800, 480));
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).unwrap()).unwrap();
    assert!(figures[1]["ms_per_patch"].as_f64().unwrap() > 0.0);
    assert_eq!(figures[2]["tta"], "flips");
}

/// A slide `infer-bench` cannot read: the failing path and the reason, said once.
#[test]
fn bench_on_a_missing_slide_says_why_once() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_infer-bench"))
        .args(["/no/such/slide.tif", "--device", "cpu", "--patches", "1"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.starts_with("error: the original path failed: /no/such/slide.tif")
            && message.matches("error:").count() == 1,
        "{message}"
    );
}
