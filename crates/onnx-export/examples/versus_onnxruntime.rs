//! Ours against ONNX Runtime on the CPU, in one run: the full-width UNet (w = 64, random
//! weights, seed 17) in f32, exported to ONNX, then timed per patch on both sides for each
//! batch size, with the ratio (ours / ONNX Runtime; below 1 is faster).
//!
//! `cargo run --release -p onnx-export --example versus_onnxruntime -- [--batch 1,4] [--side 512] [--runs 3]`
//!
//! ONNX Runtime runs in `tools/ort_bench.py` (`pip install onnxruntime numpy`), on the same
//! machine, right after ours, with the same number of timed runs after one warm-up.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use unet_core::{
    DeviceChoice, EngineChoice, FoldedWeights, Precision, Predictor, RgbPatch, UnetConfig,
};

#[derive(Parser)]
struct Args {
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    side: usize,
    /// Timed runs per side and batch size (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value_t = 64)]
    width: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let onnx = dir.path().join("unet.onnx");
    let weights = FoldedWeights::random(UnetConfig::new(3, 3, args.width), 17);
    onnx_export::write(&weights, onnx_export::Precision::F32, &onnx)?;
    let ours = Predictor::from_weights(
        &weights,
        DeviceChoice::Cpu,
        Precision::F32,
        EngineChoice::Cpu,
    )?;
    let pixels: Vec<u8> = (0..args.side * args.side * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!(
        "UNet w = {}, {side}x{side}, f32, CPU ({} threads), median of {} runs",
        args.width,
        rayon::current_num_threads(),
        args.runs,
        side = args.side
    );
    println!("batch | ours ms/patch | ONNX Runtime ms/patch | ratio");
    for &batch in &args.batch {
        let patches = vec![RgbPatch::new(args.side, args.side, &pixels); batch];
        ours.predict_batch(&patches)?;
        let mut times: Vec<f64> = (0..args.runs)
            .map(|_| {
                let start = Instant::now();
                ours.predict_batch(&patches)
                    .map(|_| start.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let ours_ms = 1000.0 * times[times.len() / 2] / batch as f64;
        let ort_ms = onnxruntime_ms_per_patch(&onnx, &args, batch)?;
        println!(
            "{batch:>5} | {ours_ms:>13.0} | {ort_ms:>21.0} | {:.2}",
            ours_ms / ort_ms
        );
    }
    Ok(())
}

/// Runs `tools/ort_bench.py` and reads its median.
fn onnxruntime_ms_per_patch(onnx: &Path, args: &Args, batch: usize) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/ort_bench.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(onnx)
        .args(["--side", &args.side.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--runs", &args.runs.to_string(), "--json"])
        .output()
        .context("cannot run python3 (ONNX Runtime runs in tools/ort_bench.py)")?;
    if !output.status.success() {
        bail!(
            "tools/ort_bench.py failed (pip install onnxruntime numpy):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("tools/ort_bench.py printed no JSON")?;
    report["ms_per_patch"]
        .as_f64()
        .context("tools/ort_bench.py's JSON has no ms_per_patch")
}
