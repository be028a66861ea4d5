//! `infer SLIDE`: a whole slide in, a tumour probability map, heatmap, contours and summary out.
//! `infer patches DIR --out OUT`: every patch image in DIR to its probability map and overlay.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use infer::model_args::ModelArgs;
use infer::patches;
use infer::pipeline::{self, SlideJob, Summary, TissueChoice};
use tiling::{Blend, Rect};
use unet_core::SIDE_MULTIPLE;

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    slide: SlideArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Every PNG/JPEG patch in DIR to its probability PNG and an overlay.
    Patches {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args)]
struct SlideArgs {
    /// The slide: a pyramidal TIFF or Aperio .svs, a DICOM-WSI folder or any one of its files
    /// (other vendor formats with the `openslide` feature).
    slide: Option<PathBuf>,
    /// Output directory [default: beside the slide].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Patch side in level-0 pixels (a multiple of 16).
    #[arg(long, default_value_t = 512)]
    patch: u64,
    /// Pixels shared by neighbouring patches (stride = patch - overlap).
    #[arg(long, default_value_t = 0)]
    overlap: u64,
    /// Only this level-0 rectangle: X,Y,W,H.
    #[arg(long, value_parser = parse_region)]
    region: Option<Rect>,
    /// `auto` (Otsu on saturation), `off`, or a mask image (non-zero = tissue).
    #[arg(long, default_value = "auto")]
    tissue: TissueChoice,
    #[arg(long, value_enum, default_value = "mean")]
    blend: BlendArg,
    /// Ground truth for Dice/IoU: a mask image or ASAP XML annotations.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Long side of the heatmap, at most.
    #[arg(long, default_value_t = 4096)]
    heatmap_size: u32,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum BlendArg {
    Mean,
    Gaussian,
}

fn parse_region(text: &str) -> Result<Rect, String> {
    let numbers: Vec<u64> = text
        .split(',')
        .map(|n| n.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}`: expected X,Y,W,H in level-0 pixels"))?;
    match numbers[..] {
        [x, y, width, height] if width > 0 && height > 0 => Ok(Rect {
            x,
            y,
            width,
            height,
        }),
        _ => Err(format!("`{text}`: expected X,Y,W,H with W and H above 0")),
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // `stop` ends the pipeline early (Ctrl-C, or a reader's error stopping the others);
    // `interrupted` says that it was Ctrl-C, so that a damaged slide is reported as damaged.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let (handler_stop, handler_interrupted) = (stop.clone(), interrupted.clone());
    // Ctrl-C: stop reading, let the pipeline unwind, remove partial outputs.
    let _ = ctrlc::set_handler(move || {
        handler_interrupted.store(true, Ordering::Relaxed);
        handler_stop.store(true, Ordering::Relaxed);
    });
    let result = match Cli::parse() {
        Cli {
            command: Some(Command::Patches { dir, out, model }),
            ..
        } => model
            .load()
            .and_then(|(predictor, _)| patches::run(&dir, &out, &predictor, model.batch)),
        Cli { slide, .. } => run_slide(slide, stop.clone(), process_start),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if interrupted.load(Ordering::Relaxed) => {
            eprintln!("interrupted: no output written ({err:#})");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_slide(args: SlideArgs, stop: Arc<AtomicBool>, process_start: Instant) -> Result<()> {
    let Some(slide) = args.slide else {
        bail!("no slide given: infer SLIDE [OPTIONS] (see --help)");
    };
    if args.patch == 0 || !args.patch.is_multiple_of(SIDE_MULTIPLE as u64) {
        bail!(
            "--patch {} is not a multiple of {SIDE_MULTIPLE} (the UNet pools four times)",
            args.patch
        );
    }
    if !slide.exists() {
        bail!("{}: no such slide", slide.display());
    }
    let (predictor, model) = args.model.load()?;
    let out_dir = match args.out {
        Some(dir) => dir,
        None => slide
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let job = SlideJob {
        slide,
        predictor,
        model,
        out_dir,
        patch: args.patch,
        overlap: args.overlap,
        batch: args.model.batch,
        region: args.region,
        tissue: args.tissue,
        blend: match args.blend {
            BlendArg::Mean => Blend::Mean,
            BlendArg::Gaussian => Blend::Gaussian,
        },
        truth: args.truth,
        heatmap_side: args.heatmap_size,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        stop,
        process_start,
    };
    print_summary(&pipeline::run(job)?);
    Ok(())
}

fn print_summary(summary: &Summary) {
    println!(
        "{} patches of {} run ({} skipped as background) in {:.1} s: {:.2} patches/s, {:.1} ms/patch on {} ({})",
        summary.patches_run,
        summary.patches_in_grid,
        summary.patches_in_grid - summary.patches_run,
        summary.seconds,
        summary.patches_per_second,
        summary.ms_per_patch,
        summary.device,
        summary.precision
    );
    if let (Some(dice), Some(iou)) = (summary.dice, summary.iou) {
        println!("Dice {dice:.4}, IoU {iou:.4} against the truth");
    }
    for output in &summary.outputs {
        println!("wrote {output}");
    }
}
