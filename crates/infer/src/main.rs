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
use infer::evaluate::{self, Evaluation};
use infer::model_args::ModelArgs;
use infer::patches;
use infer::pipeline::{self, ProbFormat, SlideJob, Summary, TissueChoice};
use tiling::{Blend, Rect};
use unet_core::{SIDE_MULTIPLE, Tta};

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
    /// A cohort's probability maps scored as Camelyon16 did: lesion-level FROC and
    /// slide-level ROC AUC, into evaluation.json and froc.png.
    Evaluate {
        /// The directory of `STEM.prob.tif` maps (`infer`'s --out).
        maps: PathBuf,
        /// Ground truth: `STEM.xml` (ASAP) or `STEM.png` / `STEM_mask.png` (non-zero =
        /// tumour); a slide with neither is tumour-free.
        #[arg(long)]
        truth: PathBuf,
        /// The maps' pyramid level at which lesions and detections are found (Camelyon16: 5).
        #[arg(long, default_value_t = 5)]
        level: usize,
        /// Where evaluation.json and froc.png go [default: MAPS].
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Test-time augmentation: `off`, `flips` (4 forwards a patch) or `d4` (8: the flips,
    /// transposed too); the probabilities are averaged.
    #[arg(long, default_value = "off")]
    tta: Tta,
    /// `tiff` (OpenSlide reads every level) or `ome-tiff` (`.prob.ome.tif`: QuPath, Fiji and
    /// OMERO read its pyramid and pixel size).
    #[arg(long, value_enum, default_value = "tiff")]
    prob_format: ProbFormat,
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
    // Ctrl-C, or SIGTERM from a scheduler: stop reading, let the pipeline unwind, remove
    // partial outputs.
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
        Cli {
            command:
                Some(Command::Evaluate {
                    maps,
                    truth,
                    level,
                    out,
                }),
            ..
        } => evaluate(Evaluation {
            out: out.unwrap_or_else(|| maps.clone()),
            maps,
            truth,
            level,
        }),
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
        tta: args.tta,
        prob_format: args.prob_format,
        truth: args.truth,
        heatmap_side: args.heatmap_size,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        stop,
        process_start,
    };
    print_summary(&pipeline::run(job)?);
    Ok(())
}

fn evaluate(evaluation: Evaluation) -> Result<()> {
    let report = evaluate::run(&evaluation)?;
    for slide in &report.slides {
        println!(
            "{}: lesions {}, found {}, isolated tumour cells {}, false positives {}, score {:.3}",
            slide.slide,
            slide.lesions,
            slide.lesions_found,
            slide.isolated_tumour_cells,
            slide.false_positives,
            slide.score
        );
    }
    let figure = |value: Option<f64>| value.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    println!(
        "{} slides: FROC {}, AUC {}",
        report.slides.len(),
        figure(report.froc),
        figure(report.auc)
    );
    println!("wrote {}", evaluation.out.join("evaluation.json").display());
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
