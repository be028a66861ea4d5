//! `infer-bench [SLIDE]`: the users' original path against ours, on the same patches of a
//! slide (their `compare_inference_speed.py`). A binary of its own, so that the production
//! `infer` carries no charting.
//!
//! - original: tiles read one by one, batch 1, f32 (the users' `compare_inference_speed.py`
//!   baseline: their first script);
//! - optimised: reader threads, batches, f16 on CUDA (and Burn's fusion there), the pipeline
//!   `infer` runs;
//! - augmented (with `--tta flips|d4`): the optimised path with test-time augmentation, its
//!   cost per patch of the slide.
//!
//! Each path runs in a child process of its own, so that its peak memory is its own.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::ProgressBar;
use infer::model_args::{DEMO_SLIDE, ModelArgs, repo_file};
use infer::output::Staged;
use infer::pipeline::{PatchStream, TILE_CACHE_BYTES, TissueChoice, patches_to_run};
use infer::resolution::Analysis;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tiling::{Grid, Rect};
use unet_core::{DeviceChoice, EngineChoice, Precision, Predictor, RgbPatch, Tta};
use wsi::Slide;

const PATCH: u64 = 512;

/// The users' original path (tiles one by one, batch 1, f32) against the optimised one
/// (reader threads, batches, f16 on CUDA or `--precision`), on the same patches: a table and a bar chart.
#[derive(Parser)]
// The text above is the help's; `about` alone would be the crate's (`infer`'s) description.
#[command(version)]
struct Cli {
    /// The slide to take patches from [default: the demo slide].
    slide: Option<PathBuf>,
    /// How many patches (with tissue) each path runs.
    #[arg(long, default_value_t = 24)]
    patches: usize,
    /// Where to write bench.png and bench.json.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Also time the optimised path with this test-time augmentation (`flips`, `d4`).
    #[arg(long, default_value = "off")]
    tta: Tta,
    /// Run one path in this process (the compare runs each in a child process).
    #[arg(long, hide = true)]
    path: Option<BenchPath>,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> ExitCode {
    // As `infer` does.
    unet_core::memory::reuse_large_buffers();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let slide = match cli.slide {
        Some(slide) => slide,
        None => repo_file(DEMO_SLIDE).context("no slide given and the demo slide is not found")?,
    };
    if cli.patches == 0 || cli.model.batch == 0 {
        bail!("--patches and --batch must be at least 1");
    }
    let model = cli.model.model_path()?;
    let threads = cli.model.start_threads()?;
    let args = BenchArgs {
        slide: &slide,
        model: &model,
        device: cli.model.device,
        engine: cli.model.engine,
        precision: cli.model.precision,
        patches: cli.patches,
        batch: cli.model.batch,
        threads,
        tta: cli.tta,
        out: &cli.out,
    };
    match cli.path {
        Some(path) => run_path(path, &args),
        None => compare(&args),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[clap(rename_all = "lower")]
enum BenchPath {
    Original,
    Optimised,
    Augmented,
}

/// One path's figures, as its child process reports them.
#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    path: BenchPath,
    /// `cpu`, `burn`, `fused`.
    engine: String,
    device: String,
    /// The GPU's name, or the CPU's and its threads.
    hardware: String,
    precision: String,
    batch: usize,
    /// Test-time augmentation (`off` but on the augmented path).
    tta: String,
    patches: usize,
    seconds: f64,
    ms_per_patch: f64,
    patches_per_second: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    peak_memory_mib: f64,
}

struct BenchArgs<'a> {
    slide: &'a Path,
    model: &'a Path,
    device: DeviceChoice,
    /// The optimised (and augmented) path's engine and precision; the original path's are
    /// `auto`'s engine in f32.
    engine: EngineChoice,
    precision: Precision,
    patches: usize,
    batch: usize,
    /// The CPU threads each path's process starts (`--threads`, or its default here).
    threads: usize,
    tta: Tta,
    out: &'a Path,
}

/// Runs both paths in child processes, prints the table, writes `bench.png` and `bench.json`.
fn compare(args: &BenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program to run the paths")?;
    let mut results = Vec::new();
    let mut paths = vec![BenchPath::Original, BenchPath::Optimised];
    if args.tta != Tta::Off {
        paths.push(BenchPath::Augmented);
    }
    for path in paths {
        let name = format!("{path:?}").to_lowercase();
        let output = Command::new(&exe)
            .arg(args.slide)
            .args(["--model"])
            .arg(args.model)
            .args([
                "--device",
                &args.device.to_string(),
                "--engine",
                &args.engine.to_string(),
                "--precision",
                &args.precision.to_string(),
                "--patches",
                &args.patches.to_string(),
            ])
            .args(["--batch", &args.batch.to_string(), "--path", &name])
            .args(["--threads", &args.threads.to_string()])
            .args(["--tta", &args.tta.to_string()])
            .output()
            .with_context(|| format!("cannot run the {name} path"))?;
        if !output.status.success() {
            // The child's message, less the "error: " that this process's own adds again.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr.trim();
            bail!(
                "the {name} path failed: {}",
                message.strip_prefix("error: ").unwrap_or(message)
            );
        }
        let measured: Measured = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("the {name} path printed no figures"))?;
        results.push(measured);
    }
    let table = table(&results);
    output_file::outln!("{table}");
    let mut staged = Staged::create(args.out)?;
    staged.write_png("bench.png", &chart(&results)?)?;
    staged.write("bench.json", |out| {
        Ok(serde_json::to_writer_pretty(out, &results)?)
    })?;
    staged.commit()?;
    output_file::outln!(
        "wrote {} and {}",
        args.out.join("bench.png").display(),
        args.out.join("bench.json").display()
    );
    Ok(())
}

/// One path, in this process: prints its figures as JSON.
fn run_path(path: BenchPath, args: &BenchArgs) -> Result<()> {
    let (precision, engine, tta) = match path {
        BenchPath::Original => (Precision::F32, EngineChoice::Auto, Tta::Off),
        BenchPath::Optimised => (args.precision, args.engine, Tta::Off),
        BenchPath::Augmented => (args.precision, args.engine, args.tta),
    };
    let predictor = Predictor::load(args.model, args.device, precision, engine)?;
    let slide = Slide::open_with_cache(args.slide, TILE_CACHE_BYTES)?;
    let base = slide.levels()[0];
    let region = Rect {
        x: 0,
        y: 0,
        width: base.width,
        height: base.height,
    };
    let grid = Grid::new(region, PATCH, 0).context("the slide is empty")?;
    // Level 0 as it is, as the users' script reads it.
    let analysis = Analysis::plan(&slide, None, None)?;
    let (mut to_run, _) = patches_to_run(&slide, &analysis, &grid, &TissueChoice::Auto)?;
    if to_run.is_empty() {
        bail!("{}: no tissue to run", args.slide.display());
    }
    // The same patches for both paths: the first N with tissue, repeated if the slide has fewer.
    to_run = to_run.iter().cycle().take(args.patches).copied().collect();

    // Warm-up: one patch, so both paths time inference rather than set-up.
    let read = |index: usize| {
        let p = grid.position(index);
        slide.read_region_extended(0, p.x, p.y, PATCH as u32, PATCH as u32)
    };
    let warm = read(to_run[0])?;
    predictor.predict_batch(&[RgbPatch::new(PATCH as usize, PATCH as usize, warm.as_raw())])?;

    let started = Instant::now();
    let batch = match path {
        BenchPath::Original => {
            for &index in &to_run {
                let pixels = read(index)?;
                predictor.predict_batch(&[RgbPatch::new(
                    PATCH as usize,
                    PATCH as usize,
                    pixels.as_raw(),
                )])?;
            }
            1
        }
        BenchPath::Optimised | BenchPath::Augmented => {
            let (results, received) = sync_channel(2 * args.batch);
            let stop = AtomicBool::new(false);
            let stream = PatchStream {
                slide: &slide,
                analysis: &analysis,
                grid: &grid,
                to_run: &to_run,
                predictor: &predictor,
                batch: args.batch,
                tta,
                progress: &ProgressBar::hidden(),
                stop: &stop,
            };
            std::thread::scope(|scope| {
                scope.spawn(move || received.iter().count());
                stream.run(results)
            })?;
            args.batch
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let measured = Measured {
        path,
        engine: predictor.engine_name().to_string(),
        device: predictor.device_name().to_string(),
        hardware: predictor.hardware(),
        precision: predictor.precision().to_string(),
        batch,
        tta: tta.to_string(),
        patches: to_run.len(),
        seconds,
        ms_per_patch: 1000.0 * seconds / to_run.len() as f64,
        patches_per_second: to_run.len() as f64 / seconds,
        peak_memory_mib: peak_memory_mib(),
    };
    output_file::outln!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

/// The process's peak resident set (VmHWM in /proc/self/status), MiB; 0 where unavailable.
fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn table(results: &[Measured]) -> String {
    let base = results[0].ms_per_patch;
    let mut out = String::from(
        "| path | engine | device | hardware | precision | batch | tta | patches | ms/patch | patches/s | speed-up | peak memory |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        out += &format!(
            "| {:?} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2}x | {:.0} MiB |\n",
            r.path,
            r.engine,
            r.device,
            r.hardware,
            r.precision,
            r.batch,
            r.tta,
            r.patches,
            r.ms_per_patch,
            r.patches_per_second,
            base / r.ms_per_patch,
            r.peak_memory_mib
        );
    }
    out
}

/// Bars of ms/patch for each path, labelled with the speed-up.
fn chart(results: &[Measured]) -> Result<image::RgbImage> {
    infer::pictures::register_font()?;
    let (width, height) = (800u32, 480u32);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let top = results.iter().map(|r| r.ms_per_patch).fold(0.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .caption("ms per 512x512 patch (lower is better)", ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..results.len() - 1).into_segmented(), 0.0..top)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) if *i < results.len() => {
                    let r = &results[*i];
                    format!(
                        "{:?} ({}, {}, batch {})",
                        r.path, r.device, r.precision, r.batch
                    )
                }
                _ => String::new(),
            })
            .y_desc("ms/patch")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let colours = [
            RGBColor(150, 150, 150),
            RGBColor(200, 40, 40),
            RGBColor(40, 90, 200),
        ];
        chart
            .draw_series(results.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), r.ms_per_patch),
                    ],
                    colours[i % colours.len()].filled(),
                )
            }))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let base = results[0].ms_per_patch;
        chart
            .draw_series(results.iter().enumerate().map(|(i, r)| {
                Text::new(
                    format!("{:.1} ms ({:.2}x)", r.ms_per_patch, base / r.ms_per_patch),
                    (SegmentValue::CenterOf(i), r.ms_per_patch + top * 0.03),
                    ("sans-serif", 16),
                )
            }))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    }
    image::RgbImage::from_raw(width, height, pixels).context("chart size")
}
