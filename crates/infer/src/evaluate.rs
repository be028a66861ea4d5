//! `infer evaluate MAPS --truth TRUTH`: a cohort's probability maps scored as Camelyon16
//! scored them (the `froc` crate): lesion-level FROC and slide-level ROC AUC, written as
//! `evaluation.json` and a FROC curve, `froc.png`; and each slide's detections as the
//! challenge took submissions, `detections/STEM.csv`.
//!
//! Each `STEM.prob.tif` (or `.prob.ome.tif`) in MAPS is read at the evaluation level and
//! matched with TRUTH/STEM.xml (ASAP polygons) or a mask image TRUTH/STEM.png (or
//! `STEM_mask.png`, non-zero = tumour, any size); a slide with neither is tumour-free, as
//! Camelyon16's normal slides are. Both are in the slide's terms; where the map lies in the
//! slide (its scale, and its corner when `infer` ran a `--region`) is read from the
//! `STEM.summary.json` beside it. Without TRUTH (a test set's maps) no lesion is known: the
//! FROC is left out, and the submission files and the per-slide figures are written all the
//! same.
//!
//! Camelyon17's task comes with it ([`staging`]): each slide classed by its largest
//! metastasis, and where slides are named as a patient's nodes, each patient's pN stage.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use froc::staging::{Finding, largest_metastasis};
use froc::{Detection, Froc, Lesions, Plane, SlideOutcome};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tiling::Rect;
use wsi::Slide;

use crate::output::Staged;
use crate::resolution::Analysis;
use crate::truth::{self, Truth};

pub mod staging;

/// Probability-map suffixes `infer` writes.
const MAP_SUFFIXES: [&str; 2] = [".prob.ome.tif", ".prob.tif"];

pub struct Evaluation {
    pub maps: PathBuf,
    /// The annotations; without them no slide counts in the FROC.
    pub truth: Option<PathBuf>,
    /// Pyramid level of the maps at which lesions and detections are found.
    pub level: usize,
    /// Camelyon17's reference stages (`stage_labels.csv`), for the kappa.
    pub stages: Option<PathBuf>,
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub level: usize,
    pub slides: Vec<SlideReport>,
    /// Camelyon16's FROC score; absent when no slide it counts has a lesion (none without
    /// `--truth`).
    pub froc: Option<f64>,
    /// Sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide.
    pub sensitivity_at: Option<[f64; 6]>,
    /// Slide-level ROC AUC of each slide's highest probability; absent unless both tumour
    /// and tumour-free slides are present.
    pub auc: Option<f64>,
    pub curve: Option<Curve>,
    /// Camelyon17's patients and their stages; absent unless slides are named as nodes
    /// (`PATIENT_node_N`).
    pub staging: Option<staging::Staging>,
}

#[derive(Debug, Serialize)]
pub struct Curve {
    pub false_positives_per_slide: Vec<f64>,
    pub sensitivity: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct SlideReport {
    pub slide: String,
    pub truth: Option<String>,
    /// Tumour in the truth; for a slide without one, the reference's finding (`--stages`),
    /// else none where no `--truth` was given, as the slide's lesions are unknown.
    pub tumour: Option<bool>,
    /// Counted in the FROC: false for a slide whose lesions are unknown, which no annotation
    /// outlines while the reference calls it a metastasis (itc, micro, macro; most of
    /// Camelyon17's), or while no `--truth` was given.
    pub in_froc: bool,
    /// Lesions that count, and isolated tumour cells (left out).
    pub lesions: usize,
    pub isolated_tumour_cells: usize,
    pub lesions_found: usize,
    pub detections: usize,
    pub false_positives: usize,
    /// The highest probability at the evaluation level: the slide's score for the AUC.
    pub score: f64,
    /// Evaluation-level pixels and microns per pixel there.
    pub size: [usize; 2],
    pub microns_per_pixel: f64,
    /// The size of the largest metastasis, mm: the longest major axis among the 8-connected
    /// regions of p >= 0.5; absent without one.
    pub largest_metastasis_mm: Option<f64>,
    /// The node's class by it, as Camelyon17 names them: negative, itc, micro, macro.
    pub finding: &'static str,
}

/// Scores every map in `maps`, writes the report and the curve into `out`; `stop` (Ctrl-C,
/// a scheduler's SIGTERM) ends it between maps, leaving nothing written.
pub fn run(evaluation: &Evaluation, stop: &AtomicBool) -> Result<Report> {
    let maps = probability_maps(&evaluation.maps)?;
    // A mistyped folder would make every slide tumour-free.
    if let Some(truth) = evaluation.truth.as_deref().filter(|dir| !dir.is_dir()) {
        bail!("--truth {}: not a folder of annotations", truth.display());
    }
    let reference = evaluation
        .stages
        .as_deref()
        .map(staging::read_reference)
        .transpose()?;
    let mut staged = Staged::create(&evaluation.out)?;
    let mut slides = Vec::new();
    let mut outcomes = Vec::new();
    for (stem, path) in &maps {
        if stop.load(Ordering::Relaxed) {
            bail!("no output written: interrupted");
        }
        let (mut report, outcome, detected) = evaluate_slide(stem, path, evaluation)
            .with_context(|| format!("{}: cannot evaluate", path.display()))?;
        staged.write(&format!("{DETECTIONS}/{stem}.csv"), |out| {
            for (probability, (x, y)) in detected {
                writeln!(out, "{probability},{x},{y}")?;
            }
            Ok(())
        })?;
        if report.truth.is_none() {
            let by_reference = reference
                .as_ref()
                .and_then(|r| r.finding(stem))
                .map(|finding| finding != Finding::Negative);
            // In an annotated cohort a slide without annotations is tumour-free (Camelyon16's
            // normal slides) unless the reference says otherwise; then, or without annotations
            // at all, its lesions are unknown.
            let tumour_free = evaluation.truth.is_some() && by_reference != Some(true);
            report.tumour = if tumour_free {
                Some(false)
            } else {
                by_reference
            };
            report.in_froc = tumour_free;
        }
        if report.in_froc {
            outcomes.push(outcome);
        }
        slides.push(report);
    }
    let findings: Vec<(&str, Finding)> = slides
        .iter()
        .map(|s| {
            (
                s.slide.as_str(),
                Finding::from_largest(s.largest_metastasis_mm),
            )
        })
        .collect();
    let staging = match staging::stage(&findings, reference.as_ref()) {
        Some((staging, csv)) => {
            staged.write_bytes(staging::STAGES_CSV, csv.as_bytes())?;
            Some(staging)
        }
        None if reference.is_some() => {
            bail!("--stages: no map is named as a patient's node (PATIENT_node_N.prob.tif)")
        }
        None => None,
    };
    let froc = Froc::new(&outcomes);
    // The AUC over the slides whose tumour is known.
    let (scores, tumour): (Vec<f64>, Vec<bool>) = slides
        .iter()
        .filter_map(|s| Some((s.score, s.tumour?)))
        .unzip();
    let report = Report {
        level: evaluation.level,
        froc: froc.as_ref().map(|f| f.score),
        sensitivity_at: froc.as_ref().map(|f| f.sensitivity_at),
        auc: froc::roc_auc(&scores, &tumour),
        curve: froc.map(|f| Curve {
            false_positives_per_slide: f.false_positives_per_slide,
            sensitivity: f.sensitivity,
        }),
        slides,
        staging,
    };
    staged.write("evaluation.json", |out| {
        Ok(serde_json::to_writer_pretty(out, &report)?)
    })?;
    if let Some(curve) = &report.curve {
        staged.write_png("froc.png", &chart(curve, report.froc.unwrap_or(0.0))?)?;
    }
    staged.commit()?;
    Ok(report)
}

/// `(STEM, path)` of every probability map in `dir`, by stem.
fn probability_maps(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut maps = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let stem = name.and_then(|name| {
            MAP_SUFFIXES
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).map(str::to_string))
        });
        if let Some(stem) = stem {
            maps.push((stem, path));
        }
    }
    if maps.is_empty() {
        bail!(
            "{}: no probability maps (*.prob.tif) to evaluate",
            dir.display()
        );
    }
    maps.sort();
    // A slide run again with the other `--prob-format` has both maps; its summary, which
    // places the map on the slide, names the one from the same run.
    let mut kept: Vec<(String, PathBuf)> = Vec::new();
    for (stem, path) in maps {
        match kept.last() {
            Some((last, other)) if *last == stem => {
                let chosen = map_of_the_summary(dir, &stem, [other, &path])?;
                let left = if chosen == path { other } else { &path };
                eprintln!(
                    "note: {} left out: {stem}.summary.json names {}",
                    left.display(),
                    chosen.display()
                );
                kept.last_mut().expect("a last").1 = chosen;
            }
            _ => kept.push((stem, path)),
        }
    }
    Ok(kept)
}

/// Which of two maps of `stem` its summary lists among its outputs.
fn map_of_the_summary(dir: &Path, stem: &str, maps: [&PathBuf; 2]) -> Result<PathBuf> {
    #[derive(Deserialize)]
    struct Summary {
        outputs: Vec<PathBuf>,
    }
    let summary = dir.join(format!("{stem}.summary.json"));
    let outputs = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|text| serde_json::from_str::<Summary>(&text).ok())
        .map_or_else(Vec::new, |s| s.outputs);
    let listed = |map: &PathBuf| outputs.iter().any(|o| o.file_name() == map.file_name());
    match maps.into_iter().find(|map| listed(map)) {
        Some(map) => Ok(map.clone()),
        None => bail!(
            "{} and {} are both maps of {stem}, and {} names neither: remove the one not to evaluate",
            maps[0].display(),
            maps[1].display(),
            summary.display()
        ),
    }
}

/// Where a map lies in its slide: `scale` slide level-0 pixels per pixel of the map's level 0
/// (the analysis resolution), the map's corner at `origin` and the whole slide's `size`, both
/// in those pixels.
struct Placement {
    scale: f64,
    origin: (f64, f64),
    size: (f64, f64),
}

impl Placement {
    /// From `STEM.summary.json` beside the map; without one (or one from before the
    /// resolution was recorded), the map is the whole slide at level 0.
    fn beside(map: &Path, stem: &str, level0: wsi::Level) -> Result<Placement> {
        #[derive(Deserialize)]
        struct Summary {
            resolution: Analysis,
            region: [u64; 4],
        }
        let path = map.with_file_name(format!("{stem}.summary.json"));
        let summary = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<Summary>(&text).ok());
        let Some(Summary {
            resolution,
            region: [x, y, width, height],
        }) = summary
        else {
            return Ok(Placement {
                scale: 1.0,
                origin: (0.0, 0.0),
                size: (level0.width as f64, level0.height as f64),
            });
        };
        let scale = resolution.scale;
        if !(scale.is_finite() && scale > 0.0) || resolution.width == 0 || resolution.height == 0 {
            bail!(
                "{}: the resolution it records (scale {scale}, {}x{} pixels) places no map",
                path.display(),
                resolution.width,
                resolution.height
            );
        }
        // As the run placed its grid: the region in analysis pixels.
        let corner = resolution.from_level0(Rect {
            x,
            y,
            width,
            height,
        });
        Ok(Placement {
            scale,
            origin: (corner.x as f64, corner.y as f64),
            size: (resolution.width as f64, resolution.height as f64),
        })
    }

    /// The centre of pixel (`x`, `y`) of a level `factor` times coarser than the map's level 0,
    /// in the slide's level-0 pixels, truncated (MONAI's `PathologyProbNMS`).
    fn in_slide(&self, x: usize, y: usize, factor: f64) -> (u64, u64) {
        let at = |origin: f64, v: usize| ((origin + (v as f64 + 0.5) * factor) * self.scale) as u64;
        (at(self.origin.0, x), at(self.origin.1, y))
    }
}

/// The subfolder of `--out` holding each slide's detections, `STEM.csv`: one line a
/// detection, `probability,x,y` in the slide's level-0 pixels, highest first, no header, as
/// Camelyon16 took submissions (and its `Evaluation_FROC.py` reads a folder of them).
pub const DETECTIONS: &str = "detections";

/// A detection's probability and its place in the slide's level-0 pixels.
type Detected = (f32, (u64, u64));

fn evaluate_slide(
    stem: &str,
    path: &Path,
    evaluation: &Evaluation,
) -> Result<(SlideReport, SlideOutcome, Vec<Detected>)> {
    let map = Slide::open(path)?;
    let placement = Placement::beside(path, stem, map.levels()[0])?;
    let Some(mpp) = map.mpp() else {
        bail!("the map has no pixel size (resolution tags): 75 µm cannot be measured");
    };
    let level = evaluation.level;
    let Some(&size) = map.levels().get(level) else {
        bail!(
            "the map has {} levels; evaluating at level {level} needs more (try --level {})",
            map.levels().len(),
            map.levels().len() - 1
        );
    };
    let (width, height) = (size.width as usize, size.height as usize);
    let pixels = map.read_region(level, 0, 0, size.width as u32, size.height as u32)?;
    let probability: Vec<f32> = pixels.pixels().map(|p| p.0[0] as f32 / 255.0).collect();
    // Camelyon's (and MONAI's) pixel size at a level: level 0's times 2^level.
    let factor = (1u64 << level) as f64;
    let microns_per_pixel = mpp * factor;

    let truth_path = evaluation
        .truth
        .as_deref()
        .and_then(|dir| truth::find_in(dir, stem));
    let tumour = match &truth_path {
        Some(truth_path) => {
            // The truth covers the slide, in its level-0 pixels (ASAP) or any size (a mask),
            // sampled on the evaluation level's pixels where the map lies.
            let (slide_width, slide_height) = placement.size;
            let truth = Truth::load(truth_path, slide_width / factor, slide_height / factor)?
                .downscaled(factor * placement.scale);
            let (x, y) = (placement.origin.0 / factor, placement.origin.1 / factor);
            let mut mask = Vec::with_capacity(width * height);
            let mut row = Vec::new();
            for j in 0..height {
                truth.row(x, y + j as f64, width, &mut row);
                mask.extend_from_slice(&row);
            }
            mask
        }
        None => vec![false; width * height],
    };
    let lesions = Lesions::new(
        Plane {
            width,
            height,
            values: &tumour,
        },
        froc::GROW_MICRONS / (2.0 * microns_per_pixel),
        froc::ITC_MICRONS / microns_per_pixel,
    );
    let found: Vec<Detection> = froc::detections(Plane {
        width,
        height,
        values: &probability,
    });
    let outcome = SlideOutcome::new(&lesions, &found);
    let predicted: Vec<bool> = probability.iter().map(|&p| p >= 0.5).collect();
    let largest_metastasis_mm = largest_metastasis(Plane {
        width,
        height,
        values: &predicted,
    })
    .map(|pixels| pixels * microns_per_pixel / 1000.0);
    let report = SlideReport {
        slide: stem.to_string(),
        truth: truth_path.as_ref().map(|p| p.display().to_string()),
        tumour: truth_path.is_some().then(|| tumour.iter().any(|&t| t)),
        in_froc: truth_path.is_some(),
        lesions: lesions.targets(),
        isolated_tumour_cells: lesions.isolated_tumour_cells(),
        lesions_found: outcome.lesions_found(),
        detections: found.len(),
        false_positives: outcome.false_positives.len(),
        score: probability.iter().fold(0.0f32, |m, &p| m.max(p)) as f64,
        size: [width, height],
        microns_per_pixel,
        largest_metastasis_mm,
        finding: Finding::from_largest(largest_metastasis_mm).name(),
    };
    let detected = found
        .iter()
        .map(|d| (d.probability, placement.in_slide(d.x, d.y, factor)))
        .collect();
    Ok((report, outcome, detected))
}

/// The FROC curve, false positives per slide on a log axis, Camelyon's six rates marked.
fn chart(curve: &Curve, score: f64) -> Result<image::RgbImage> {
    crate::pictures::register_font()?;
    let (width, height) = (720u32, 480u32);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("FROC (Camelyon16 score {score:.4})"),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0.125f64..16.0).log_scale(), 0.0f64..1.0)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("false positives per slide")
            .y_desc("sensitivity")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let mut points: Vec<(f64, f64)> = curve
            .false_positives_per_slide
            .iter()
            .zip(&curve.sensitivity)
            .filter(|(fp, _)| **fp > 0.0)
            .map(|(&fp, &s)| (fp.min(16.0), s))
            .collect();
        // Beyond its last point the curve stays level (as the score's interpolation reads it).
        if let Some(&(_, highest)) = points.first() {
            points.insert(0, (16.0, highest));
        }
        chart
            .draw_series(LineSeries::new(points, RED.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        for rate in froc::FP_RATES {
            chart
                .draw_series(LineSeries::new(
                    [(rate, 0.0), (rate, 1.0)],
                    RGBColor(200, 200, 200),
                ))
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    }
    image::RgbImage::from_raw(width, height, pixels).context("chart size")
}
