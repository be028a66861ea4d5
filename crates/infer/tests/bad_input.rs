//! Bad input: a clear message, a non-zero exit, and no output file left behind (nor the
//! output directory, when the run would have created it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs infer on `slide` with `extra` args (on the CPU, unless they name a device) into a
/// fresh directory; returns stderr and what the directory holds afterwards.
fn fails(slide: &Path, extra: &[&str]) -> (String, Vec<String>) {
    fails_with_env(slide, extra, &[])
}

/// [`fails`] with environment variables set.
fn fails_with_env(slide: &Path, extra: &[&str], env: &[(&str, &str)]) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args: Vec<&str> = vec![slide.to_str().unwrap(), "--out", out.to_str().unwrap()];
    if !extra.contains(&"--device") {
        args.extend(["--device", "cpu"]);
    }
    args.push("--quiet");
    args.extend_from_slice(extra);
    let output = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(&args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "succeeded: {args:?}");
    assert!(!message.contains("panicked"), "{message}");
    let left = std::fs::read_dir(&out)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !out.exists(),
        "{message}: the failed run left {out:?} behind"
    );
    (message, left)
}

fn demo() -> PathBuf {
    root().join("tests/fixtures/pipeline/demo_vips_jpeg.tif")
}

#[test]
fn a_missing_slide() {
    let (message, left) = fails(Path::new("/no/such/slide.tif"), &[]);
    assert!(
        message.contains("/no/such/slide.tif") && message.contains("no such slide"),
        "{message}"
    );
    assert!(left.is_empty());
}

#[test]
fn an_unreadable_slide() {
    let dir = tempfile::tempdir().unwrap();
    let slide = dir.path().join("notes.tif");
    std::fs::write(&slide, b"this is not a slide").unwrap();
    let (message, left) = fails(&slide, &[]);
    assert!(
        message.contains("notes.tif") && message.contains("not a readable TIFF"),
        "{message}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_damaged_tile_is_reported_as_damaged_not_as_an_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let slide = dir.path().join("damaged.tif");
    let mut bytes =
        std::fs::read(root().join("tests/fixtures/slides/odd_vips_deflate.tif")).unwrap();
    // Zeros where level 0's tiles lie: no zlib stream starts with a zero byte.
    let quarter = bytes.len() / 4;
    bytes[quarter..quarter + 200_000].fill(0);
    std::fs::write(&slide, &bytes).unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([slide.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--device", "cpu", "--quiet", "--tissue", "off"])
        .current_dir(root())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("damaged.tif") && message.contains("damaged:"),
        "{message}"
    );
    assert!(!message.contains("interrupted"), "{message}");
    assert!(!out.exists(), "the failed run left its output directory");
    assert_eq!(
        message.matches("corrupt deflate stream").count(),
        1,
        "the fault said once: {message}"
    );
}

#[test]
fn a_missing_or_damaged_model() {
    let (message, left) = fails(&demo(), &["--model", "/no/such/model.bpk"]);
    assert!(message.contains("/no/such/model.bpk"), "{message}");
    assert!(left.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged.bpk");
    let good = std::fs::read(root().join("models/unet_demo_w8.bpk")).unwrap();
    std::fs::write(&damaged, &good[..good.len() / 3]).unwrap();
    let (message, left) = fails(&demo(), &["--model", damaged.to_str().unwrap()]);
    assert!(message.contains("damaged.bpk"), "{message}");
    assert!(left.is_empty(), "{left:?}");
    // The users' checkpoint itself, not converted: said so, and how to convert it.
    let checkpoint = root().join("tests/fixtures/pytorch/unet_w8_checkpoint.pth");
    let (message, left) = fails(&demo(), &["--model", checkpoint.to_str().unwrap()]);
    assert!(
        message.contains("unet_w8_checkpoint.pth: a PyTorch checkpoint, not a converted model")
            && message.contains("cargo run -p convert --"),
        "{message}"
    );
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_output_directory_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([
            demo().to_str().unwrap(),
            "--out",
            file.join("sub").to_str().unwrap(),
            "--quiet",
            "--device",
            "cpu",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.contains("cannot create the output directory"),
        "{message}"
    );
}

#[test]
fn a_patch_size_not_a_multiple_of_16() {
    let (message, left) = fails(&demo(), &["--patch", "500"]);
    assert!(
        message.contains("--patch 500") && message.contains("multiple of 16"),
        "{message}"
    );
    assert!(left.is_empty());
}

/// A patch too large for one read is refused before anything is read, naming `--patch`
/// (32768 pixels square are 3 GiB of RGB; the reader takes 1 GiB at once).
#[test]
fn a_patch_too_large_to_read() {
    let (message, left) = fails(&demo(), &["--patch", "32768"]);
    assert!(
        message.contains("--patch 32768: a patch is read whole")
            && message.contains("smaller --patch"),
        "{message}"
    );
    assert!(left.is_empty());
}

/// A mask of another shape than the slide's (another slide's, or padded) would be stretched
/// over it: refused, as ground truth and as the tissue mask.
#[test]
fn a_mask_of_another_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("tall.png");
    image::GrayImage::from_pixel(40, 400, image::Luma([255]))
        .save(&mask)
        .unwrap();
    for flag in ["--truth", "--tissue"] {
        let (message, left) = fails(&demo(), &[flag, mask.to_str().unwrap()]);
        assert!(
            message.contains(
                "the mask is 40x400 (width / height 0.100), not the shape of the slide (1.333)"
            ),
            "{flag}: {message}"
        );
        assert!(left.is_empty());
    }
}

#[test]
fn an_empty_heatmap() {
    let (message, left) = fails(&demo(), &["--heatmap-size", "0"]);
    assert!(
        message.contains("'0' for '--heatmap-size") && message.contains("not in 1.."),
        "{message}"
    );
    assert!(left.is_empty());
}

#[test]
fn no_threads() {
    let (message, left) = fails(&demo(), &["--threads", "0"]);
    assert!(
        message.contains("--threads must be at least 1"),
        "{message}"
    );
    assert!(left.is_empty());
}

#[test]
fn a_region_outside_the_slide() {
    // The second's corner plus its width wraps past u64::MAX: refused all the same.
    for region in ["4000,0,512,512", "18446744073709551615,0,10,10"] {
        let (message, left) = fails(&demo(), &["--region", region]);
        assert!(message.contains("outside the slide"), "{message}");
        assert!(left.is_empty(), "{left:?}");
    }
}

/// An engine that cannot serve the device and precision: one line naming the engine and
/// what it cannot do (the fused engine runs on CUDA; the CPU kernels in f32 and bf16; Burn's
/// modules not in bf16).
#[test]
fn an_engine_that_cannot_run_here() {
    let (message, left) = fails(&demo(), &["--engine", "fused"]);
    assert!(
        message.contains("fused engine cannot run") && message.trim_end().lines().count() == 1,
        "{message}"
    );
    assert!(left.is_empty());
    let (message, _) = fails(&demo(), &["--engine", "cpu", "--precision", "f16"]);
    assert!(
        message.contains("cpu engine cannot run on cpu in f16"),
        "{message}"
    );
    let (message, _) = fails(&demo(), &["--engine", "burn", "--precision", "bf16"]);
    assert!(
        message.contains("burn engine cannot run in bf16"),
        "{message}"
    );
    let (message, _) = fails(&demo(), &["--engine", "gpu"]);
    assert!(message.contains("unknown engine `gpu`"), "{message}");
}

/// A CPU kernel `UNET_CPU_KERNEL` names that this CPU has not: one line naming those it has.
#[test]
fn a_cpu_kernel_that_is_not_there() {
    let env = [("UNET_CPU_KERNEL", "neon")];
    let (message, left) = fails_with_env(&demo(), &["--precision", "f32"], &env);
    assert!(
        message.contains(
            "cpu engine cannot run in f32: UNET_CPU_KERNEL=neon is not one of this CPU's kernels ("
        ) && message.contains("portable)")
            && message.trim_end().lines().count() == 1,
        "{message}"
    );
    assert!(left.is_empty());
}

/// A device that is not one, or not there (this build has no CUDA; a CUDA build without
/// that GPU names how many there are): one line, and nothing written.
#[test]
fn a_device_that_is_not_there() {
    for (device, expected) in [
        (
            "gpu",
            "unknown device `gpu` (expected one of: auto, cpu, cuda, cuda:N)",
        ),
        ("cuda:x", "unknown device `cuda:x`"),
        ("cuda:1", "CUDA was asked for, but"),
    ] {
        let (message, left) = fails(&demo(), &["--device", device]);
        assert!(
            message.contains(expected) && message.trim_end().lines().count() <= 3,
            "{device}: {message}"
        );
        assert!(left.is_empty(), "{left:?}");
    }
}

/// Starts `infer` on the demo slide at a stride of 64 (some 2 400 patches, a run of minutes)
/// into `out`, and sends `signal` once it is reading and running patches.
fn signalled(out: &Path, signal: &str) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([demo().to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args([
            "--tissue",
            "off",
            "--overlap",
            "448",
            "--device",
            "cpu",
            "--quiet",
        ])
        .current_dir(root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

/// Ctrl-C (SIGINT) or a scheduler's SIGTERM mid-run: exit 130, and nothing left, not even the
/// output directory the run made.
#[test]
fn an_interrupted_run_stops_cleanly_and_leaves_nothing() {
    for signal in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let output = signalled(&out, signal);
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{signal}: {message}");
        assert!(message.contains("interrupted"), "{message}");
        assert!(!out.exists(), "{signal}: {out:?} left");
    }
}

/// SIGKILL cannot be caught: what is left is only temporary `.NAME.partial-*` files, nothing
/// under an output's name, and the same command run again completes and sweeps them.
#[test]
fn a_killed_run_leaves_nothing_that_looks_complete_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    signalled(&out, "-KILL");
    let names = |out: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(out)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let temporary = |n: &String| n.starts_with('.') && n.contains(".partial-");
    let left = names(&out);
    assert!(left.iter().all(temporary), "{left:?}");
    let rerun = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args([demo().to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--tissue", "off", "--device", "cpu", "--quiet"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let complete = names(&out);
    assert_eq!(complete.len(), 5, "{complete:?}");
    assert!(!complete.iter().any(temporary), "{complete:?}");
}

/// `infer SLIDE | true`: a reader that closes the pipe early loses the report, not the run
/// (exit 0, the outputs written, no panic). The pipe is the shell's: one made here could be
/// inherited by another test's child.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let slide = root().join("tests/fixtures/slides/odd_vips_jpeg.tif");
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"("$0" "$1" --out "$2" --device cpu --quiet; echo "exit status $?" >&2) | true"#)
        .arg(env!("CARGO_BIN_EXE_infer"))
        .arg(&slide)
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim(), "exit status 0");
    assert!(dir.path().join("odd_vips_jpeg.summary.json").is_file());
}
