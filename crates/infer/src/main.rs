//! `infer SLIDE`: a whole slide in, a tumour probability map, heatmap, contours and summary out.
//! `infer SLIDES|FOLDER|MANIFEST.csv --out OUT`: a cohort, each slide so, resumable and
//! sharded, with `cohort.csv`; `infer merge OUT` joins the shards' summaries.
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
use infer::cohort::{self, CohortProgress, CohortReport, Entry, Shard, SlideRecord, Status};
use infer::evaluate::{self, Evaluation};
use infer::model_args::ModelArgs;
use infer::patches;
use infer::pipeline::{self, Options, ProbFormat, SlideJob, Summary};
use infer::truth;
use tiling::Blend;
use unet_core::{Predictor, SIDE_MULTIPLE, Tta, model_file};

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
        /// A folder of PNG or JPEG patches, each side a multiple of 16 (not searched below).
        dir: PathBuf,
        /// Where each patch's NAME.prob.png and NAME.overlay.png go (created if need be).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// A cohort's probability maps scored as Camelyon16 did: lesion-level FROC and
    /// slide-level ROC AUC, into evaluation.json and froc.png; each slide's detections in
    /// Camelyon16's submission format, detections/STEM.csv; Camelyon17's pN stages, stages.csv.
    Evaluate {
        /// The directory of `STEM.prob.tif` maps (`infer`'s --out).
        maps: PathBuf,
        /// Ground truth: `STEM.xml` (ASAP) or `STEM.png`, `STEM_mask.png` or Camelyon16's
        /// `STEM_mask.tif` (non-zero = tumour); a slide with neither is tumour-free (unless
        /// --stages calls it metastatic). Without it (a test set) there is no FROC, and the AUC takes each slide's tumour
        /// from --stages' findings.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// The maps' pyramid level at which lesions and detections are found (Camelyon16: 5).
        #[arg(long, default_value_t = 5)]
        level: usize,
        /// Camelyon17's reference stages (its stage_labels.csv: PATIENT.zip,STAGE lines): the
        /// quadratic-weighted kappa of the patients' stages, from maps named PATIENT_node_N;
        /// its SLIDE.tif,FINDING lines leave a metastatic node without ground truth out of
        /// the FROC.
        #[arg(long)]
        stages: Option<PathBuf>,
        /// Where evaluation.json, froc.png and detections/ go [default: MAPS].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The shards' cohort summaries in DIR (`cohort.shard-I-of-N.json`, from `--shard` or a
    /// job array) joined into DIR/cohort.csv and cohort.json.
    Merge {
        /// The cohort's --out folder, where the shards wrote their summaries.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct SlideArgs {
    /// Slides: pyramidal TIFFs or Aperio .svs, DICOM-WSI folders or any one of their files
    /// (other vendor formats with the `openslide` feature); folders searched for slides; CSV
    /// manifests (columns `slide`, and optionally `truth`, `mpp`, `out`).
    slides: Vec<PathBuf>,
    /// Output directory [default: beside the slide; a cohort needs one].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run slides again whose outputs exist from the same model and options (by default
    /// they are skipped).
    #[arg(long)]
    force: bool,
    /// Run only part I (from 0) of N of the sorted slide list [default: from a Slurm job
    /// array's or a Kubernetes Indexed Job's environment].
    #[arg(long)]
    shard: Option<Shard>,
    /// With a Kubernetes Indexed Job: the number of shards (its `completions`); or set
    /// INFER_SHARDS.
    #[arg(long)]
    shards: Option<usize>,
    /// The resolution the model was trained at, µm per pixel [default: the model file's].
    #[arg(long, value_parser = model_file::parse_mpp)]
    model_mpp: Option<f64>,
    /// The slides' resolution, µm per pixel, for slides that record none (or a wrong one).
    #[arg(long, value_parser = model_file::parse_mpp)]
    slide_mpp: Option<f64>,
    /// Patch side in level-0 pixels (a multiple of 16).
    #[arg(long, default_value_t = 512)]
    patch: u64,
    /// Pixels shared by neighbouring patches (stride = patch - overlap).
    #[arg(long, default_value_t = 0)]
    overlap: u64,
    /// Only this level-0 rectangle: X,Y,W,H.
    #[arg(long, value_parser = parse_region)]
    region: Option<[u64; 4]>,
    /// `auto` (Otsu on saturation), `off`, or a mask image (non-zero = tissue; PNG, JPEG or
    /// pyramidal TIFF, the slide's shape).
    #[arg(long, default_value = "auto")]
    tissue: String,
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
    /// Ground truth for Dice/IoU: a mask image (PNG, JPEG, pyramidal TIFF) or ASAP XML
    /// annotations, or a folder of them (`STEM.xml`, `STEM.png`, `STEM_mask.png` or
    /// `STEM_mask.tif`), as a cohort's must be.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Long side of the heatmap, at most (the contours are traced on a map of their own).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
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

fn parse_region(text: &str) -> Result<[u64; 4], String> {
    let numbers: Vec<u64> = text
        .split(',')
        .map(|n| n.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}`: expected X,Y,W,H in level-0 pixels"))?;
    match numbers[..] {
        [x, y, width, height] if width > 0 && height > 0 => Ok([x, y, width, height]),
        _ => Err(format!("`{text}`: expected X,Y,W,H with W and H above 0")),
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Each batch's maps are a buffer of 32 MiB at batch 32: reused, not faulted in afresh.
    unet_core::memory::reuse_large_buffers();
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
            .and_then(|(predictor, _)| patches::run(&dir, &out, &predictor, model.batch, &stop))
            .map(|failed| match failed {
                0 => Outcome::Success,
                _ => Outcome::SomeFailed,
            }),
        Cli {
            command:
                Some(Command::Evaluate {
                    maps,
                    truth,
                    level,
                    stages,
                    out,
                }),
            ..
        } => evaluate(
            Evaluation {
                out: out.unwrap_or_else(|| maps.clone()),
                maps,
                truth,
                level,
                stages,
            },
            &stop,
        ),
        Cli {
            command: Some(Command::Merge { dir }),
            ..
        } => merge(&dir),
        Cli { slide, .. } => run_slides(slide, &stop, &interrupted, process_start),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        // Each failure was reported as it happened.
        Ok(Outcome::SomeFailed) => ExitCode::FAILURE,
        Err(err) if interrupted.load(Ordering::Relaxed) => {
            eprintln!("interrupted: {err:#}");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Says so, once, when one patch's activations may need more than the memory this process may
/// still take: under a Slurm job's `--mem` or a container's limit the kernel kills the process
/// without a word. The activations are an upper bound (`Predictor::activation_bytes`), so the
/// warning says "may".
fn warn_of_memory(predictor: &Predictor, patch: u64) {
    let side = usize::try_from(patch).unwrap_or(usize::MAX);
    let (Some(needed), Some(spare)) = (
        predictor.activation_bytes(side, side),
        unet_core::memory::spare_bytes(),
    ) else {
        return;
    };
    let needed = needed as u64;
    if needed > spare {
        let gb = |bytes: u64| bytes as f64 / 1e9;
        eprintln!(
            "warning: a {patch}x{patch} patch may need up to {:.2} GB for its activations and this process may take only {:.2} GB more (the machine's free memory or its memory limit): it may be killed; if it is, ask for more memory (Slurm's --mem)",
            gb(needed),
            gb(spare),
        );
    }
}

/// How a run ended, short of an error.
enum Outcome {
    Success,
    /// A cohort's slides that failed, each already reported; the others are done.
    SomeFailed,
}

/// One slide, or a cohort: each slide run (or skipped, when its outputs are there from the
/// same model and options), a slide's failure reported without stopping the others.
///
/// `stop` ends a slide early (a reader's error sets it to stop the other readers; Ctrl-C too);
/// `interrupted` says that it was Ctrl-C, which ends the whole run.
fn run_slides(
    args: SlideArgs,
    stop: &Arc<AtomicBool>,
    interrupted: &AtomicBool,
    process_start: Instant,
) -> Result<Outcome> {
    if args.slides.is_empty() {
        bail!("no slide given: infer SLIDE [OPTIONS] (see --help)");
    }
    if !unet_core::is_patch_side(args.patch) {
        bail!(
            "--patch {} is not a positive multiple of {SIDE_MULTIPLE} (the UNet pools four times)",
            args.patch
        );
    }
    let is_cohort = cohort::is_cohort(&args.slides);
    if is_cohort && args.out.is_none() {
        bail!("several slides need --out DIR (their outputs and cohort.csv go there)");
    }
    if !is_cohort && !args.slides[0].exists() {
        bail!("{}: no such slide", args.slides[0].display());
    }
    // One file of truth for every slide of a cohort would score each against the same slide.
    if let Some(truth) = args.truth.as_ref().filter(|t| is_cohort && !t.is_dir()) {
        bail!(
            "--truth {}: a cohort's ground truth is a folder (STEM.xml, STEM.png, STEM_mask.png or STEM_mask.tif a slide)",
            truth.display()
        );
    }
    let mut entries = cohort::collect(&args.slides, args.out.as_deref())?;
    if entries.is_empty() {
        bail!("no slides found in {}", list(&args.slides));
    }
    let shard = match args.shard {
        Some(shard) => Some((shard, "--shard")),
        None if is_cohort => Shard::from_environment(args.shards)?,
        None => None,
    };
    if let Some((shard, source)) = shard {
        let total = entries.len();
        entries = shard.select(entries);
        eprintln!(
            "shard {shard} (from {source}): {} of {total} slides",
            entries.len()
        );
    }
    let (predictor, model) = args.model.load()?;
    let model_mpp = match args.model_mpp {
        Some(mpp) => Some(mpp),
        None => model_file::training_mpp(&model)?,
    };
    if model_mpp.is_none() {
        eprintln!(
            "note: {} records no training resolution: slides are read at level 0 as they are (set it with `convert --mpp` or --model-mpp)",
            model.display()
        );
    }
    warn_of_memory(&predictor, args.patch);
    let model_sha256 = pipeline::file_sha256(&model)?;
    let options = |entry: &Entry, truth: &Option<PathBuf>| Options {
        model_sha256: model_sha256.clone(),
        model_mpp,
        slide_mpp: entry.mpp.or(args.slide_mpp),
        patch: args.patch,
        overlap: args.overlap,
        region: args.region,
        tissue: args.tissue.clone(),
        blend: match args.blend {
            BlendArg::Mean => Blend::Mean,
            BlendArg::Gaussian => Blend::Gaussian,
        },
        tta: args.tta,
        prob_format: args.prob_format,
        heatmap_side: args.heatmap_size,
        truth: truth.as_ref().map(|t| t.display().to_string()),
    };
    let mut records = Vec::new();
    let mut progress = CohortProgress::new(entries.len());
    for entry in &entries {
        // Cleared before `interrupted` is read: the handler sets `interrupted` first.
        stop.store(false, Ordering::Relaxed);
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let truth = match (&entry.truth, &args.truth) {
            (Some(truth), _) => Some(truth.clone()),
            (None, Some(dir)) if dir.is_dir() => match truth::find_in(dir, &entry.stem) {
                None if !is_cohort => bail!(
                    "--truth {}: no ground truth of {} there (STEM.xml, STEM.png, STEM_mask.png or STEM_mask.tif)",
                    dir.display(),
                    entry.stem
                ),
                found => found,
            },
            (None, file) => file.clone(),
        };
        let out_dir = entry.out.clone().or(args.out.clone()).unwrap_or_else(|| {
            entry
                .slide
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        });
        let job = SlideJob {
            slide: entry.slide.clone(),
            stem: entry.stem.clone(),
            predictor: &predictor,
            model: model.clone(),
            out_dir,
            batch: args.model.batch,
            options: options(entry, &truth),
            truth,
            progress: !args.quiet && std::io::stderr().is_terminal(),
            stop: stop.clone(),
            process_start,
        };
        let record = match pipeline::finished(&job) {
            Some(summary) if !args.force => {
                eprintln!(
                    "{}: skipped: its outputs are there from the same model and options (--force runs it again)",
                    entry.slide.display()
                );
                SlideRecord::new(entry, Status::Skipped, Some(&summary), None)
            }
            _ => match pipeline::run(&job) {
                Ok(summary) => {
                    print_summary(&summary);
                    SlideRecord::new(entry, Status::Done, Some(&summary), None)
                }
                // Ctrl-C, or a single slide's error: as before, the run's error.
                Err(err) if !is_cohort => {
                    return Err(if interrupted.load(Ordering::Relaxed) {
                        err.context("no output written")
                    } else {
                        err
                    });
                }
                Err(err) if interrupted.load(Ordering::Relaxed) => {
                    write_cohort(&args, &records, shard)?;
                    return Err(err.context(format!(
                        "{} of {} slides done (cohort summary written), nothing of {} written: the same command finishes the cohort",
                        records.len(),
                        entries.len(),
                        entry.stem
                    )));
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    SlideRecord::new(entry, Status::Failed, None, Some(format!("{err:#}")))
                }
            },
        };
        progress.add(&record);
        records.push(record);
    }
    if !is_cohort {
        return Ok(Outcome::Success);
    }
    let report = write_cohort(&args, &records, shard)?;
    if interrupted.load(Ordering::Relaxed) {
        bail!(
            "{} of {} slides done (cohort summary written): the same command finishes the cohort",
            records.len(),
            entries.len()
        );
    }
    Ok(if report.failed > 0 {
        eprintln!(
            "{} of {} slides failed (see above and cohort.csv)",
            report.failed,
            records.len()
        );
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// The cohort summary of the slides so far, into --out.
fn write_cohort(
    args: &SlideArgs,
    records: &[SlideRecord],
    shard: Option<(Shard, &str)>,
) -> Result<CohortReport> {
    let report = CohortReport::new(shard.map(|(s, _)| s), records.to_vec());
    let csv = report.write(args.out.as_deref().expect("a cohort has --out"))?;
    output_file::outln!(
        "{} done, {} skipped, {} failed: wrote {}",
        report.done,
        report.skipped,
        report.failed,
        csv.display()
    );
    Ok(report)
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn merge(dir: &Path) -> Result<Outcome> {
    let report = CohortReport::merge(dir)?;
    let csv = report.write(dir)?;
    output_file::outln!(
        "{} slides: {} done, {} skipped, {} failed: wrote {}",
        report.slides.len(),
        report.done,
        report.skipped,
        report.failed,
        csv.display()
    );
    Ok(if report.failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

fn evaluate(evaluation: Evaluation, stop: &AtomicBool) -> Result<Outcome> {
    let report = evaluate::run(&evaluation, stop)?;
    for slide in &report.slides {
        if !slide.in_froc {
            let why = if evaluation.truth.is_some() {
                "metastatic by the reference but not annotated: left out of the FROC; "
            } else {
                ""
            };
            output_file::outln!(
                "{}: {why}score {:.3}, class {}",
                slide.slide,
                slide.score,
                slide.finding
            );
            continue;
        }
        output_file::outln!(
            "{}: lesions {}, found {}, isolated tumour cells {}, false positives {}, score {:.3}, class {}",
            slide.slide,
            slide.lesions,
            slide.lesions_found,
            slide.isolated_tumour_cells,
            slide.false_positives,
            slide.score,
            slide.finding
        );
    }
    let figure = |value: Option<f64>| value.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    output_file::outln!(
        "{} slides: FROC {}, AUC {}",
        report.slides.len(),
        figure(report.froc),
        figure(report.auc)
    );
    if let Some(staging) = &report.staging {
        let missing = match staging.missing.len() {
            0 => String::new(),
            n => format!(" ({n} of the reference's patients have no maps here)"),
        };
        let nodes = match staging.nodes_compared {
            0 => String::new(),
            n => format!(", {} of {n} nodes as the reference", staging.nodes_agreeing),
        };
        output_file::outln!(
            "{} patients staged in {}: kappa {}{missing}{nodes}",
            staging.patients.len(),
            evaluation.out.join(evaluate::staging::STAGES_CSV).display(),
            figure(staging.kappa),
        );
    }
    output_file::outln!(
        "wrote {} and each slide's detections in {}",
        evaluation.out.join("evaluation.json").display(),
        evaluation.out.join(evaluate::DETECTIONS).display()
    );
    Ok(Outcome::Success)
}

fn print_summary(summary: &Summary) {
    output_file::outln!(
        "{} patches of {} run ({} skipped as background) in {:.1} s: {:.2} patches/s, {:.1} ms/patch on {}: {}, {}",
        summary.patches_run,
        summary.patches_in_grid,
        summary.patches_in_grid - summary.patches_run,
        summary.seconds,
        summary.patches_per_second,
        summary.ms_per_patch,
        summary.hardware,
        summary.precision,
        summary.kernel
    );
    if let (Some(dice), Some(iou)) = (summary.dice, summary.iou) {
        output_file::outln!("Dice {dice:.4}, IoU {iou:.4} against the truth");
    }
    for output in &summary.outputs {
        output_file::outln!("wrote {output}");
    }
}
