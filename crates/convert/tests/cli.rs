//! `convert` end to end: the three checkpoint shapes in, a loadable model out; bad input
//! out with a message that names what is wrong, and no file left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unet_core::{DeviceChoice, EngineChoice, Precision, Predictor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn convert(args: &[&Path], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convert"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn each_checkpoint_shape_converts_to_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    for (name, width, out_channels, wrapper) in [
        ("unet_w8_state_dict", 8, 3, "plain state_dict"),
        ("unet_w8_checkpoint", 8, 3, "`model_state_dict.`"),
        ("unet_w4_out1_dataparallel", 4, 1, "`state_dict.module.`"),
    ] {
        let checkpoint = fixtures().join(format!("pytorch/{name}.pth"));
        let model = dir.path().join(format!("{name}.bpk"));
        let output = convert(&[&checkpoint, Path::new("--out"), &model], dir.path());
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let printed = stdout(&output);
        assert!(printed.contains(wrapper), "{printed}");
        assert!(
            printed.contains(&format!(
                "in_channels 3, out_channels {out_channels}, base width {width}"
            )),
            "{printed}"
        );
        assert!(printed.contains("18 x num_batches_tracked"), "{printed}");
        let predictor = Predictor::load(
            &model,
            DeviceChoice::Cpu,
            Precision::F32,
            EngineChoice::Auto,
        )
        .unwrap();
        assert_eq!(predictor.config().base_width, width);
    }
}

#[test]
fn default_output_is_models_slash_stem() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = fixtures().join("pytorch/unet_w8_state_dict.pth");
    let output = convert(&[&checkpoint], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(dir.path().join("models/unet_w8_state_dict.bpk").is_file());
}

/// Every bad checkpoint: non-zero exit, the message, and nothing left in the output directory.
#[test]
fn bad_checkpoints_fail_clearly_and_leave_no_file() {
    let cases: [(&str, &[&str]); 7] = [
        (
            "bad/truncated.pth",
            &["truncated.pth", "truncated or damaged"],
        ),
        (
            "bad/not_a_checkpoint.pth",
            &["not_a_checkpoint.pth", "not a PyTorch checkpoint"],
        ),
        (
            "bad/other_network.pth",
            &["not a Camelyon UNet checkpoint", "conv1.conv.0.weight"],
        ),
        (
            "bad/missing_key.pth",
            &[
                "state_dict.module.conv5.conv.4.running_var",
                "missing",
                "[64]",
            ],
        ),
        (
            "bad/wrong_shape.pth",
            &[
                "state_dict.module.conv2.conv.0.weight",
                "[16, 8, 3, 3]",
                "[8, 4, 3, 3]",
            ],
        ),
        (
            "bad/nan_weights.pth",
            &[
                "nan_weights.pth",
                "state_dict.module.conv1.conv.0.weight",
                "NaN at index 0",
            ],
        ),
        (
            "bad/no_such_file.pth",
            &["no_such_file.pth", "No such file"],
        ),
    ];
    for (file, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.bpk");
        let output = convert(
            &[&fixtures().join(file), Path::new("--out"), &out],
            dir.path(),
        );
        let message = stderr(&output);
        assert!(!output.status.success(), "{file} converted");
        for part in expected {
            assert!(message.contains(part), "{file}: `{part}` not in: {message}");
        }
        assert!(!message.contains("panicked"), "{message}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{file} left {left:?}");
    }
}

/// `--mpp` is recorded in the model file for `infer` to read slides at; a resolution no
/// scanner has (0, or Camelyon's 0.243 µm in millimetres) is refused, and nothing written.
#[test]
fn the_training_resolution_is_recorded_and_a_slip_of_units_refused() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = fixtures().join("pytorch/unet_w8_checkpoint.pth");
    let model = dir.path().join("model.bpk");
    let run = |mpp: &str| {
        let args = [&checkpoint, Path::new("--out"), &model, Path::new("--mpp")];
        convert(&[&args[..], &[Path::new(mpp)]].concat(), dir.path())
    };
    for slip in ["0", "0.000243", "1e-30", "2500"] {
        let output = run(slip);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{slip}: {message}");
        assert!(
            message.contains(&format!("`{slip}` is not µm per pixel from 0.01 to 1000")),
            "{message}"
        );
        assert!(!model.exists(), "{slip}");
    }
    let output = run("0.486");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        unet_core::model_file::training_mpp(&model).unwrap(),
        Some(0.486)
    );
}

/// An output that would write over the checkpoint (`--out` not named `.bpk`, `--onnx` the
/// input itself) is refused, and the checkpoint kept as it was.
#[test]
fn the_checkpoint_is_never_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("UNet_17.pth");
    std::fs::copy(
        fixtures().join("pytorch/unet_w8_checkpoint.pth"),
        &checkpoint,
    )
    .unwrap();
    let before = std::fs::read(&checkpoint).unwrap();
    for (flag, said) in [
        ("--out", "a converted model is named *.bpk"),
        ("--onnx", "that is the input, which it would write over"),
    ] {
        let output = convert(&[&checkpoint, Path::new(flag), &checkpoint], dir.path());
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{flag}: {message}");
        assert!(message.contains(said), "{flag}: {message}");
        assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "{flag}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// `--onnx`: from the checkpoint or from the converted model, the same bytes; a bad checkpoint
/// fails as without `--onnx` and leaves no `.onnx`.
#[test]
fn onnx_export_from_checkpoint_or_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = fixtures().join("pytorch/unet_w8_checkpoint.pth");
    let model = dir.path().join("w8.bpk");
    let from_checkpoint = dir.path().join("a.onnx");
    let from_model = dir.path().join("b.onnx");
    for args in [
        vec![checkpoint.as_path(), Path::new("--out"), &model],
        vec![checkpoint.as_path(), Path::new("--onnx"), &from_checkpoint],
        vec![model.as_path(), Path::new("--onnx"), &from_model],
    ] {
        let output = convert(&args, dir.path());
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    }
    assert_eq!(
        std::fs::read(&from_checkpoint).unwrap(),
        std::fs::read(&from_model).unwrap()
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let onnx = bad.join("model.onnx");
    let output = convert(
        &[
            &fixtures().join("bad/wrong_shape.pth"),
            Path::new("--onnx"),
            &onnx,
            Path::new("--onnx-fp16"),
        ],
        &bad,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("[16, 8, 3, 3]"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_dir(&bad).unwrap().count(), 0);
}

/// The damaged model files of `tests/fixtures/bad` (bit-flipped, truncated, not burnpack,
/// empty): exporting them is refused in one line naming the file, and no `.onnx` is left.
#[test]
fn damaged_model_files_are_refused() {
    let mut models: Vec<PathBuf> = std::fs::read_dir(fixtures().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bpk"))
        .collect();
    models.sort();
    assert!(models.len() >= 4);
    for model in &models {
        let dir = tempfile::tempdir().unwrap();
        let onnx = dir.path().join("model.onnx");
        let output = convert(&[model, Path::new("--onnx"), &onnx], dir.path());
        let message = stderr(&output);
        assert!(!output.status.success(), "{} exported", model.display());
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
        assert!(message.contains(&*model.to_string_lossy()), "{message}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        if model.ends_with("model_bit_flipped.bpk") {
            assert!(
                message.contains("damaged") && message.contains("CRC-32"),
                "{message}"
            );
        }
        println!("{message}");
    }
}

/// A checkpoint whose pickle calls `os.system` when Python unpickles it: converted (its
/// weights are fine), the call named as suspicious in the ignored lines, and never run.
#[test]
fn a_pickled_os_system_call_is_named_and_not_run() {
    let marker = Path::new("/tmp/pwned_by_pickle");
    let existed = marker.exists();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.bpk");
    let output = convert(
        &[
            &fixtures().join("bad/os_system.pth"),
            Path::new("--out"),
            &out,
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("ignored as suspicious, never called: posix.system"),
        "{printed}"
    );
    assert!(existed || !marker.exists(), "the pickled command ran");
    // The good fixtures name nothing suspicious.
    let good = convert(
        &[
            &fixtures().join("pytorch/unet_w8_checkpoint.pth"),
            Path::new("--out"),
            &out,
        ],
        dir.path(),
    );
    assert!(!stdout(&good).contains("suspicious"), "{}", stdout(&good));
}

/// `convert X.pth | true`: a reader that closes the pipe early loses the report, not the
/// model (exit 0, no panic). The pipe is the shell's, not this test process's.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bpk");
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"("$0" "$1" --out "$2"; echo "exit status $?" >&2) | true"#)
        .arg(env!("CARGO_BIN_EXE_convert"))
        .arg(fixtures().join("pytorch/unet_w8_state_dict.pth"))
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(stderr(&output).trim(), "exit status 0");
    assert!(model.is_file());
}
