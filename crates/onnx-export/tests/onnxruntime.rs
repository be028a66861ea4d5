//! The export, run by ONNX Runtime on the CPU, computes what PyTorch computes, for every case of
//! the PyTorch fixtures, at batch 1 and 2; `onnx.checker` accepts every export.
//!
//! Runs `tools/onnx_run.py` (Python's onnx and onnxruntime; `.ci/run` installs them). Without
//! them the test says so and passes, except in CI, where it fails.

use std::process::Command;

use onnx_export::Precision;
use test_fixtures::{cases, root};
use unet_core::Checkpoint;

fn python_has_onnxruntime() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime, numpy, PIL"])
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("CI needs Python's onnx, onnxruntime, numpy and pillow");
    }
    if !found {
        eprintln!("SKIPPED: pip install onnx onnxruntime numpy pillow");
    }
    found
}

#[test]
fn onnx_runtime_matches_pytorch_on_every_fixture() {
    if !python_has_onnxruntime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for case in cases() {
        let weights = Checkpoint::read(&case.checkpoint_path()).unwrap().weights;
        for (precision, tolerance) in [(Precision::F32, "1e-4"), (Precision::F16, "5e-3")] {
            let model = dir.path().join(format!("{}_{precision:?}.onnx", case.name));
            onnx_export::write(&weights, precision, &model).unwrap();
            for batch in ["1", "2"] {
                let output = Command::new("python3")
                    .arg(root().join("tools/onnx_run.py"))
                    .arg(&model)
                    .arg(case.input_path())
                    .arg(case.expected_path())
                    .args(["--batch", batch, "--tolerance", tolerance])
                    .output()
                    .unwrap();
                let printed = String::from_utf8_lossy(&output.stdout);
                println!("{} {precision:?} {}", case.name, printed.trim());
                assert!(
                    output.status.success(),
                    "{} {precision:?} batch {batch}: {printed}{}",
                    case.name,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
}
