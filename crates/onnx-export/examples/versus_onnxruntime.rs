//! Ours against the CPU peers, in one run: the full-width UNet (w = 64, random weights, seed
//! 17) in f32 (and bf16 where this CPU has AVX-512-BF16), exported to ONNX for ONNX Runtime
//! fp32, and (with `--torch`) PyTorch's fp32 and bf16 autocast (where ours runs bf16), both
//! channels_last, on the same architecture; ms per patch for each batch size, and the ratios
//! (ours / peer; below 1 is faster).
//!
//! As a CPU without AVX-512 runs them: `UNET_CPU_KERNEL=avx2 ATEN_CPU_CAPABILITY=avx2
//! ONEDNN_MAX_CPU_ISA=AVX2` (ONNX Runtime has no such setting: it runs what the CPU has).
//!
//! `cargo run --release -p onnx-export --example versus_onnxruntime -- [--batch 1,4] [--side 512] [--runs 3] [--torch VENV/bin/python]`
//!
//! ONNX Runtime runs in `tools/ort_bench.py` (`pip install onnxruntime numpy`) and PyTorch in
//! `tools/torch_cpu_bench.py` (random weights of the same shapes: the time does not depend on
//! the values), on the same machine, right after ours, with the same number of timed runs
//! after one warm-up.

use std::path::{Path, PathBuf};
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
    /// A Python with PyTorch (a venv's `bin/python`): adds PyTorch's fp32 and bf16 columns.
    #[arg(long)]
    torch: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let onnx = dir.path().join("unet.onnx");
    let weights = FoldedWeights::random(UnetConfig::new(3, 3, args.width), 17);
    onnx_export::write(&weights, onnx_export::Precision::F32, &onnx)?;
    let ours = |precision| {
        Predictor::from_weights(&weights, DeviceChoice::Cpu, precision, EngineChoice::Cpu)
    };
    let f32 = ours(Precision::F32)?;
    let bf16 = match ours(Precision::Bf16) {
        Ok(predictor) => Some(predictor),
        Err(why) => {
            println!("no bf16 rows: {why}");
            None
        }
    };
    let pixels: Vec<u8> = (0..args.side * args.side * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!(
        "UNet w = {}, {side}x{side}, CPU ({} threads; ours: {}{}), median of {} runs, ms/patch",
        args.width,
        rayon::current_num_threads(),
        f32.kernel_name(),
        bf16.as_ref()
            .map(|p| format!(", {}", p.kernel_name()))
            .unwrap_or_default(),
        args.runs,
        side = args.side
    );
    println!(
        "batch | ours f32 | ours bf16 | ONNX Runtime fp32 | PyTorch fp32 | PyTorch bf16 | ours f32 / ORT | ours bf16 / PyTorch bf16"
    );
    let cell = |ms: Option<f64>| ms.map_or("-".to_string(), |ms| format!("{ms:.0}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    for &batch in &args.batch {
        let patches = vec![RgbPatch::new(args.side, args.side, &pixels); batch];
        let ours_f32 = ms_per_patch(&f32, &patches, args.runs)?;
        let ours_bf16 = bf16
            .as_ref()
            .map(|p| ms_per_patch(p, &patches, args.runs))
            .transpose()?;
        let ort = onnxruntime_ms_per_patch(&onnx, &args, batch)?;
        let (torch_f32, torch_bf16) = match &args.torch {
            Some(python) => {
                let torch = torch_ms_per_patch(python, &args, batch, bf16.is_some())?;
                if batch == args.batch[0] {
                    println!("(PyTorch {}, {})", torch.version, torch.cpu_capability);
                }
                (Some(torch.f32), torch.bf16)
            }
            None => (None, None),
        };
        println!(
            "{batch:>5} | {ours_f32:>8.0} | {:>9} | {ort:>17.0} | {:>12} | {:>12} | {:>14.2} | {:>24}",
            cell(ours_bf16),
            cell(torch_f32),
            cell(torch_bf16),
            ours_f32 / ort,
            ratio(ours_bf16, torch_bf16),
        );
    }
    if args.torch.is_none() {
        println!("(PyTorch's rows: --torch PYTHON, a Python with torch)");
    }
    Ok(())
}

/// Our median time per patch, after a warm-up.
fn ms_per_patch(predictor: &Predictor, patches: &[RgbPatch], runs: usize) -> Result<f64> {
    predictor.predict_batch(patches)?;
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            predictor
                .predict_batch(patches)
                .map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(1000.0 * times[times.len() / 2] / patches.len() as f64)
}

/// What `tools/torch_cpu_bench.py` measured.
struct TorchTimes {
    f32: f64,
    bf16: Option<f64>,
    version: String,
    /// The instruction set ATen ran on (`AVX512`, `AVX2`).
    cpu_capability: String,
}

/// Runs `tools/torch_cpu_bench.py` and reads its fp32 median, and its bf16 one if asked.
fn torch_ms_per_patch(
    python: &Path,
    args: &Args,
    batch: usize,
    with_bf16: bool,
) -> Result<TorchTimes> {
    let mut command = Command::new(python);
    command
        .arg(tool("torch_cpu_bench.py"))
        .args(["--width", &args.width.to_string()])
        .args(["--side", &args.side.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--runs", &args.runs.to_string(), "--json"]);
    if !with_bf16 {
        command.arg("--no-bf16");
    }
    let report = run_json(
        &mut command,
        "tools/torch_cpu_bench.py (pip install torch numpy)",
    )?;
    let field = |name: &str| {
        report[name]
            .as_f64()
            .with_context(|| format!("tools/torch_cpu_bench.py's JSON has no {name}"))
    };
    let text = |name: &str| report[name].as_str().unwrap_or("?").to_string();
    Ok(TorchTimes {
        f32: field("fp32_ms_per_patch")?,
        bf16: with_bf16.then(|| field("bf16_ms_per_patch")).transpose()?,
        version: text("version"),
        cpu_capability: text("cpu_capability"),
    })
}

fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools")
        .join(name)
}

/// Runs a Python tool and reads the JSON line it prints.
fn run_json(command: &mut Command, what: &str) -> Result<serde_json::Value> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).with_context(|| format!("{what} printed no JSON"))
}

/// Runs `tools/ort_bench.py` and reads its median.
fn onnxruntime_ms_per_patch(onnx: &Path, args: &Args, batch: usize) -> Result<f64> {
    let report = run_json(
        Command::new("python3")
            .arg(tool("ort_bench.py"))
            .arg(onnx)
            .args(["--side", &args.side.to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--runs", &args.runs.to_string(), "--json"]),
        "tools/ort_bench.py (pip install onnxruntime numpy)",
    )?;
    report["ms_per_patch"]
        .as_f64()
        .context("tools/ort_bench.py's JSON has no ms_per_patch")
}
