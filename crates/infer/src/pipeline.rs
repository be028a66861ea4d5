//! The whole-slide job: read patches on worker threads, run them through the model in
//! batches, stitch on a thread of its own and write the stitched rows on another, all joined
//! by bounded channels, so memory stays bounded whatever the slide's size. The heatmap is
//! drawn and encoded meanwhile, row by row: beside a GPU, whatever runs after the last patch
//! is time the GPU waits.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use output_file::NamedTempFile;
use serde::Serialize;
use sha2::Digest;
use tiling::{Blend, Grid, Rect, Stitcher, TissueMask};
use unet_core::{PendingMaps, Predictor, ProbabilityMaps, RgbPatch, Tta};
use wsi::{Channels, Layout, PyramidWriter, Slide, WriterOptions};

use crate::annotations::{
    MapPlacement, MeasuredRegion, TumourTracer, asap_xml, measure, qupath_geojson,
};
use crate::output::Staged;
use crate::pictures::{LowResolutionMap, heatmap_png};
use crate::resolution::Analysis;
use crate::truth::{Overlap, Truth};

/// Where tissue detection comes from.
#[derive(Debug, Clone)]
pub enum TissueChoice {
    /// Otsu on saturation at a low pyramid level.
    Auto,
    /// Every patch runs.
    Off,
    /// A mask image (non-zero = tissue), any size, scaled to the slide.
    Mask(PathBuf),
}

impl FromStr for TissueChoice {
    type Err = std::convert::Infallible;

    /// `auto`, `off`, or the path of a mask image.
    fn from_str(text: &str) -> Result<TissueChoice, Self::Err> {
        Ok(match text {
            "auto" => TissueChoice::Auto,
            "off" => TissueChoice::Off,
            path => TissueChoice::Mask(PathBuf::from(path)),
        })
    }
}

/// How the probability map is stored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProbFormat {
    /// `STEM.prob.tif`: every level in the main IFD chain (OpenSlide, ASAP, libvips).
    #[default]
    Tiff,
    /// `STEM.prob.ome.tif`: OME-TIFF, the levels as SubIFDs and the pixel size in OME-XML
    /// (Bio-Formats: QuPath, Fiji, OMERO; OpenSlide sees level 0 only).
    OmeTiff,
}

impl ProbFormat {
    /// The file's name after `STEM.`.
    pub fn suffix(self) -> &'static str {
        match self {
            ProbFormat::Tiff => "prob.tif",
            ProbFormat::OmeTiff => "prob.ome.tif",
        }
    }

    fn layout(self, stem: &str) -> Layout {
        match self {
            ProbFormat::Tiff => Layout::Chained,
            ProbFormat::OmeTiff => Layout::Ome {
                image: format!("{stem} tumour probability"),
                channels: vec!["tumour probability (255 = 1)".to_string()],
            },
        }
    }
}

pub struct SlideJob<'a> {
    pub slide: PathBuf,
    /// Its outputs are `out_dir/STEM.*`.
    pub stem: String,
    pub predictor: &'a Predictor,
    pub model: PathBuf,
    pub out_dir: PathBuf,
    pub batch: usize,
    /// Everything else that decides the outputs (a rerun with equal options skips the slide).
    pub options: Options,
    pub truth: Option<PathBuf>,
    pub progress: bool,
    pub stop: Arc<AtomicBool>,
    /// When the process started: the summary says how long the first batch took from there
    /// (start-up, model loading, and on a GPU kernel compilation and autotuning).
    pub process_start: Instant,
}

/// What decides a slide's outputs besides the slide: a slide whose `summary.json` records
/// the same options (the same model, by content) is not run again.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Options {
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// The model's training resolution, µm per pixel (`--model-mpp` or the model file's).
    pub model_mpp: Option<f64>,
    /// The slide's resolution, when given (`--slide-mpp`, a manifest's `mpp`) rather than read.
    pub slide_mpp: Option<f64>,
    pub patch: u64,
    pub overlap: u64,
    /// Level-0 pixels.
    pub region: Option<[u64; 4]>,
    pub tissue: String,
    pub blend: Blend,
    pub tta: Tta,
    pub prob_format: ProbFormat,
    /// Long side of the heatmap, at most.
    pub heatmap_side: u32,
    pub truth: Option<String>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    pub slide: String,
    /// The slide's format as OpenSlide names it (`generic-tiff`, `aperio`, `dicom`).
    pub vendor: String,
    pub model: String,
    /// What ran the model: `cpu`, `burn`, `fused` (absent from summaries before it).
    #[serde(default)]
    pub engine: String,
    /// The kernels that ran: the CPU engine's instruction set (`avx512`, `avx512-bf16`, `amx-bf16`, ...),
    /// else the engine's name (absent from summaries before it).
    #[serde(default)]
    pub kernel: String,
    pub device: String,
    /// The GPU's name, or the CPU's and its threads: what the seconds were measured on.
    #[serde(default)]
    pub hardware: String,
    pub precision: String,
    pub batch: usize,
    pub patch: u64,
    pub overlap: u64,
    pub blend: String,
    /// Test-time augmentation: `off`, `flips` or `d4`.
    pub tta: String,
    /// Level-0 pixels.
    pub region: [u64; 4],
    /// How the slide was read: its resolution, the model's, the level and the scale.
    pub resolution: Analysis,
    /// Of the probability map (the analysis grid), µm per pixel.
    pub analysis_mpp: Option<f64>,
    pub grid: [usize; 2],
    pub patches_in_grid: usize,
    pub patches_run: usize,
    pub tissue: String,
    pub seconds: f64,
    /// From the process's start to the first batch's result.
    pub seconds_to_first_batch: Option<f64>,
    pub patches_per_second: f64,
    pub ms_per_patch: f64,
    pub mpp: Option<f64>,
    /// Where p >= 0.5, mm² (None without a resolution).
    pub tumour_area_mm2: Option<f64>,
    pub max_probability: f64,
    /// Level-0 pixels per pixel of the map the contours were traced on: their resolution
    /// (absent from summaries before it).
    #[serde(default)]
    pub contour_downsample: f64,
    pub outputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dice: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    pub options: Options,
}

/// A patch read and waiting for the model.
struct ReadPatch {
    index: usize,
    pixels: RgbImage,
}

/// What the stitcher receives: a patch's grid index and probabilities.
pub type Stitch = (usize, PatchMap);

/// One patch's probabilities: its place in its batch's output, which the batch's patches
/// share, so that the model's thread hands them on without a copy.
pub struct PatchMap {
    batch: Arc<ProbabilityMaps>,
    index: usize,
}

impl AsRef<[f32]> for PatchMap {
    fn as_ref(&self) -> &[f32] {
        self.batch.map(self.index)
    }
}

/// Decoded tiles kept while reading patches. Each patch is read once, and overlapping
/// neighbours share a few tiles, so a small cache serves whatever the slide's size.
pub const TILE_CACHE_BYTES: usize = 64 << 20;

/// Plans, streams and reports one slide; outputs appear only if all of it succeeds.
pub fn run(job: &SlideJob) -> Result<Summary> {
    let started = Instant::now();
    let mut planned = Planned::new(job)?;
    let streamed = planned.stream(job)?;
    planned.report(job, streamed, started)
}

/// The summary of `job`'s slide when its outputs are all there, made with the same options
/// (the same model, by content): the slide need not run again.
pub fn finished(job: &SlideJob) -> Option<Summary> {
    let path = job.out_dir.join(format!("{}.summary.json", job.stem));
    let summary: Summary = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let complete = output_names(&job.stem, job.options.prob_format)
        .iter()
        .all(|name| job.out_dir.join(name).is_file());
    (complete && summary.options == job.options).then_some(summary)
}

/// Every output of slide `stem`, the summary last.
fn output_names(stem: &str, prob_format: ProbFormat) -> Vec<String> {
    [
        prob_format.suffix(),
        "heatmap.png",
        "tumour.geojson",
        "tumour.xml",
        "summary.json",
    ]
    .iter()
    .map(|kind| format!("{stem}.{kind}"))
    .collect()
}

/// The model file's SHA-256, hex: what "the same model" means when resuming.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// What the job will do: the slide, the grid, the patches with tissue, the outputs.
struct Planned {
    slide: Slide,
    analysis: Analysis,
    /// Analysis pixels.
    region: Rect,
    grid: Grid,
    stem: String,
    /// The probability map's file name (`STEM.prob.tif` or `STEM.prob.ome.tif`).
    prob_name: String,
    to_run: Vec<usize>,
    tissue_name: String,
    truth: Option<Truth>,
    /// Analysis pixels per pixel of the map the contours are traced on.
    contour_downsample: f64,
    /// Analysis pixels per pixel of the heatmap's map.
    heatmap_downsample: f64,
    /// The probability map's writer, taken by the stream (declared before `staged`, so that
    /// on failure its temporary file goes before `staged` tidies the directory).
    writer: Option<PyramidWriter>,
    staged: Staged,
}

/// What the stream leaves for the report.
struct Streamed {
    overlap: Overlap,
    /// The heatmap's PNG file, encoded as its map's rows were finished.
    heatmap_png: Vec<u8>,
    /// The tumour's contours (in level-0 pixels), traced as the contours' map's rows were
    /// finished and measured on the complete map; the likeliest first.
    regions: Vec<MeasuredRegion>,
    tally: Tally,
    first_batch: Option<Instant>,
}

/// Counts over the whole probability map.
#[derive(Default)]
struct Tally {
    /// Pixels with p >= 0.5.
    tumour: u64,
    max: u8,
}

impl Tally {
    fn add_row(&mut self, row: &[u8]) {
        self.tumour += row.iter().filter(|&&v| v >= 128).count() as u64;
        self.max = self.max.max(row.iter().copied().max().unwrap_or(0));
    }
}

impl Planned {
    fn new(job: &SlideJob) -> Result<Planned> {
        let options = &job.options;
        let slide = Slide::open_with_cache(&job.slide, TILE_CACHE_BYTES)?;
        let analysis = Analysis::plan(&slide, options.slide_mpp, options.model_mpp)?;
        analysis.check_patch(options.patch)?;
        let base = slide.levels()[0];
        let region = analysis.from_level0(region_in(options.region, base.width, base.height)?);
        let grid = Grid::new(region, options.patch, options.overlap).with_context(|| {
            format!(
                "overlap {} must be smaller than the patch ({})",
                options.overlap, options.patch
            )
        })?;
        let tissue: TissueChoice = options.tissue.parse()?;
        let (to_run, tissue_name) = patches_to_run(&slide, &analysis, &grid, &tissue)?;
        let truth = job
            .truth
            .as_ref()
            .map(|path| Truth::load(path, analysis.width as f64, analysis.height as f64))
            .transpose()?
            .map(|truth| truth.downscaled(analysis.scale));
        let long_side = region.width.max(region.height) as f64;
        let contour_downsample = (long_side / CONTOUR_MAP_SIDE).max(CONTOUR_MIN_DOWNSAMPLE);
        // The heatmap: at most `heatmap_side` on its long side, and from a pyramid level, not level 0.
        let level1_downsample = slide.levels().get(1).map_or(1.0, |l| l.downsample);
        let heatmap_downsample = (long_side / options.heatmap_side as f64)
            .max(level1_downsample / analysis.scale)
            .max(1.0);
        let stem = job.stem.clone();
        let prob_name = format!("{stem}.{}", options.prob_format.suffix());
        let staged = Staged::create(&job.out_dir)?;
        let writer = PyramidWriter::create(
            staged.final_path(&prob_name),
            region.width,
            region.height,
            Channels::Grey,
            WriterOptions {
                tile: 512,
                mpp: analysis.mpp(),
                layout: options.prob_format.layout(&stem),
                ..WriterOptions::default()
            },
        )?;
        Ok(Planned {
            slide,
            analysis,
            region,
            grid,
            stem,
            prob_name,
            to_run,
            tissue_name,
            truth,
            contour_downsample,
            heatmap_downsample,
            staged,
            writer: Some(writer),
        })
    }

    /// Reads, runs and stitches every patch on threads joined by bounded channels; keeps the
    /// complete probability map for the commit.
    fn stream(&mut self, job: &SlideJob) -> Result<Streamed> {
        let writer = self.writer.take().expect("the stream runs once");
        let progress = progress_bar(job.progress, self.to_run.len());
        let cold = !MODEL_WARM.load(Ordering::Relaxed);
        if job.predictor.device_name() == "cuda" && cold && !progress.is_hidden() {
            // cubecl compiles every kernel and tunes every layer shape at its first use on a
            // card (kept on disk for the next runs): minutes at 0 patches would look hung.
            progress.set_style(style(
                "{spinner} compiling and tuning the GPU's kernels (minutes on a new card)  {elapsed}",
            ));
            progress.enable_steady_tick(Duration::from_millis(200));
        }
        let (stitch_tx, stitch_rx) = sync_channel::<Stitch>(2 * job.batch);
        let region0 = self.analysis.to_level0(self.region);
        // Finished rows of the low-resolution maps, for the heatmap and the contours
        // (unbounded: at most the maps, which are small; the heatmap waits for its background
        // before the first row).
        let (contours, contour_rows) = MapFeed::new(
            self.region.width,
            self.region.height,
            self.contour_downsample,
        );
        let (contour_width, contour_height) = contours.map.dimensions();
        // The heatmap's map from the contours' where it is no finer (the stitched rows are
        // reduced once, the costlier step), else from the stitched rows.
        let heatmap_from_contours = self.heatmap_downsample >= self.contour_downsample;
        let (heatmap, heatmap_rows) = if heatmap_from_contours {
            MapFeed::new(
                contour_width.into(),
                contour_height.into(),
                self.heatmap_downsample / self.contour_downsample,
            )
        } else {
            MapFeed::new(
                self.region.width,
                self.region.height,
                self.heatmap_downsample,
            )
        };
        let (heatmap_width, heatmap_height) = heatmap.map.dimensions();
        let contour_width = contour_width as usize;
        let placement = self.contour_placement();
        let mut tracer = TumourTracer::new(contour_width, placement);
        let stitch = StitchJob {
            grid: self.grid,
            blend: job.options.blend,
            skipped: self.skipped(),
            writer,
            truth: self.truth.as_ref(),
            heatmap,
            heatmap_from_contours,
            contours,
        };
        let stream = PatchStream {
            slide: &self.slide,
            analysis: &self.analysis,
            grid: &self.grid,
            to_run: &self.to_run,
            predictor: job.predictor,
            batch: job.batch,
            tta: job.options.tta,
            progress: &progress,
            stop: &job.stop,
        };
        let slide = &self.slide;
        let outcome = std::thread::scope(|scope| {
            // Drawn and encoded while the patches stream, not after: beside a GPU the CPU has
            // time to spare, and whatever runs after the last patch is time the GPU waits.
            let heatmap = spawn_named(scope, "heatmap", move || {
                let background =
                    low_level_view_of_region(slide, region0, heatmap_width, heatmap_height)?;
                heatmap_png(&background, heatmap_rows)
            })?;
            let contours = spawn_named(scope, "contours", move || {
                contour_rows.iter().for_each(|row| tracer.add_row(&row));
                tracer.finish()
            })?;
            let stitcher = spawn_named(scope, "stitcher", move || stitch.run(stitch_rx))?;
            let streamed = stream.run(stitch_tx);
            let stitched = stitcher.join().expect("the stitcher does not panic");
            let heatmap_png = heatmap.join().expect("drawing the heatmap does not panic");
            let regions = contours.join().expect("tracing contours does not panic");
            let first_batch = streamed?;
            if job.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            Ok((stitched?, heatmap_png?, regions, first_batch))
        });
        progress.finish_and_clear();
        let (stitched, heatmap_png, regions, first_batch) = outcome?;
        self.staged.keep(stitched.prob_file, &self.prob_name);
        let mut regions = measure(
            regions,
            stitched.contour_map.pixels(),
            stitched.contour_map.peaks(),
            contour_width,
            placement,
        );
        // The order a reviewer goes through them, so "Tumor 1" is the likeliest (the highest
        // pixel, then the mean; a tie keeps the trace's order, top to bottom).
        regions.sort_by(|a, b| {
            let (a, b) = (&a.probability, &b.probability);
            b.max.total_cmp(&a.max).then(b.mean.total_cmp(&a.mean))
        });
        Ok(Streamed {
            overlap: stitched.overlap,
            heatmap_png,
            regions,
            tally: stitched.tally,
            first_batch,
        })
    }

    /// Where the contours' map lies on the slide: contours in level-0 pixels, whatever the
    /// analysis resolution.
    fn contour_placement(&self) -> MapPlacement {
        let region0 = self.analysis.to_level0(self.region);
        MapPlacement {
            downsample: self.contour_downsample * self.analysis.scale,
            origin: [region0.x, region0.y],
        }
    }

    /// Grid patches without tissue: probability 0.
    fn skipped(&self) -> Vec<usize> {
        let mut run = vec![false; self.grid.len()];
        self.to_run.iter().for_each(|&i| run[i] = true);
        (0..self.grid.len()).filter(|&i| !run[i]).collect()
    }

    /// The pictures and the summary, then every output renamed into place.
    fn report(mut self, job: &SlideJob, streamed: Streamed, started: Instant) -> Result<Summary> {
        let stem = &self.stem;
        let regions = &streamed.regions;
        self.staged
            .write_bytes(&format!("{stem}.heatmap.png"), &streamed.heatmap_png)?;
        let geojson = qupath_geojson(regions, self.slide.mpp());
        // Compact: pretty-printed, a vertex took five lines.
        self.staged
            .write(&format!("{stem}.tumour.geojson"), |out| {
                Ok(serde_json::to_writer(out, &geojson)?)
            })?;
        self.staged
            .write_bytes(&format!("{stem}.tumour.xml"), asap_xml(regions).as_bytes())?;
        let summary = self.summary(job, &streamed, started.elapsed().as_secs_f64());
        self.staged.write(&format!("{stem}.summary.json"), |out| {
            Ok(serde_json::to_writer_pretty(out, &summary)?)
        })?;
        self.staged.commit()?;
        Ok(summary)
    }

    fn summary(&self, job: &SlideJob, streamed: &Streamed, seconds: f64) -> Summary {
        let run = self.to_run.len();
        let region = self.analysis.to_level0(self.region);
        let has_truth = self.truth.is_some();
        let options = &job.options;
        let analysis_mpp = self.analysis.mpp();
        Summary {
            slide: job.slide.display().to_string(),
            model: job.model.display().to_string(),
            engine: job.predictor.engine_name().to_string(),
            kernel: job.predictor.kernel_name().to_string(),
            device: job.predictor.device_name().to_string(),
            hardware: job.predictor.hardware(),
            precision: job.predictor.precision().to_string(),
            batch: job.batch,
            patch: options.patch,
            overlap: options.overlap,
            blend: format!("{:?}", options.blend).to_lowercase(),
            tta: options.tta.to_string(),
            region: [region.x, region.y, region.width, region.height],
            resolution: self.analysis,
            analysis_mpp,
            grid: [self.grid.cols, self.grid.rows],
            patches_in_grid: self.grid.len(),
            patches_run: run,
            tissue: self.tissue_name.clone(),
            seconds,
            seconds_to_first_batch: streamed
                .first_batch
                .map(|t| t.duration_since(job.process_start).as_secs_f64()),
            patches_per_second: run as f64 / seconds,
            ms_per_patch: if run == 0 {
                0.0
            } else {
                1000.0 * seconds / run as f64
            },
            mpp: self.analysis.slide_mpp,
            tumour_area_mm2: analysis_mpp.map(|mpp| streamed.tally.tumour as f64 * mpp * mpp / 1e6),
            max_probability: streamed.tally.max as f64 / 255.0,
            contour_downsample: self.contour_placement().downsample,
            vendor: self.slide.vendor().to_string(),
            outputs: output_names(&self.stem, options.prob_format)
                .iter()
                .map(|name| job.out_dir.join(name).display().to_string())
                .collect(),
            dice: has_truth.then(|| streamed.overlap.dice()),
            iou: has_truth.then(|| streamed.overlap.iou()),
            options: options.clone(),
        }
    }
}

/// The region to run (the whole slide by default), checked to lie inside it.
fn region_in(region: Option<[u64; 4]>, width: u64, height: u64) -> Result<Rect> {
    let region = region.map_or(
        Rect {
            x: 0,
            y: 0,
            width,
            height,
        },
        |[x, y, width, height]| Rect {
            x,
            y,
            width,
            height,
        },
    );
    // Compared without the sum, which a corner near u64::MAX would wrap past the check.
    if region.x > width
        || region.width > width - region.x
        || region.y > height
        || region.height > height - region.y
    {
        bail!(
            "region {},{},{},{} reaches outside the slide ({width}x{height})",
            region.x,
            region.y,
            region.width,
            region.height,
        );
    }
    Ok(region)
}

/// The grid patches (in analysis pixels) that hold tissue (all of them with tissue detection
/// off), and how tissue was decided.
pub fn patches_to_run(
    slide: &Slide,
    analysis: &Analysis,
    grid: &Grid,
    tissue: &TissueChoice,
) -> Result<(Vec<usize>, String)> {
    let base = slide.levels()[0];
    let (name, mask) = match tissue {
        TissueChoice::Off => ("off".to_string(), None),
        TissueChoice::Auto => {
            let view = low_level_view(slide, 32.0)?;
            let mask = TissueMask::detect(&view, base.width, base.height);
            let name = format!("auto ({:.1} % of the slide)", 100.0 * mask.fraction());
            (name, Some(mask))
        }
        TissueChoice::Mask(path) => {
            let image = crate::mask::read(path, base.width as f64, base.height as f64)?;
            let mask = TissueMask::from_mask(image, base.width, base.height);
            (format!("mask {}", path.display()), Some(mask))
        }
    };
    let to_run = grid
        .positions()
        .filter(|p| {
            mask.as_ref().is_none_or(|mask| {
                mask.holds_tissue(analysis.to_level0(Rect {
                    x: p.x,
                    y: p.y,
                    width: grid.patch,
                    height: grid.patch,
                }))
            })
        })
        .map(|p| p.index)
        .collect();
    Ok((to_run, name))
}

/// Reads the patches `to_run` of `grid` on worker threads and runs them through the model in
/// batches, sending each patch's probabilities to the stitcher (in no particular order).
pub struct PatchStream<'a> {
    pub slide: &'a Slide,
    pub analysis: &'a Analysis,
    pub grid: &'a Grid,
    pub to_run: &'a [usize],
    pub predictor: &'a Predictor,
    pub batch: usize,
    pub tta: Tta,
    pub progress: &'a ProgressBar,
    pub stop: &'a AtomicBool,
}

impl<'a> PatchStream<'a> {
    /// Runs every patch; returns when the first batch's results were out.
    pub fn run(&self, results: SyncSender<Stitch>) -> Result<Option<Instant>> {
        let (patch_tx, patch_rx) = sync_channel::<ReadPatch>(2 * self.batch);
        let next = AtomicUsize::new(0);
        let read_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        // As many as the model's CPU threads (`--threads`), up to 8.
        let readers = rayon::current_num_threads().clamp(1, 8);
        // The readers see the slide and the grid, not the model.
        let reader = PatchReader {
            slide: self.slide,
            analysis: self.analysis,
            grid: self.grid,
            to_run: self.to_run,
            stop: self.stop,
        };
        let inferred = std::thread::scope(|scope| {
            for _ in 0..readers {
                let patch_tx = patch_tx.clone();
                let (reader, next, read_error) = (&reader, &next, &read_error);
                spawn_named(scope, "patch-reader", move || {
                    reader.read_patches(next, patch_tx, read_error)
                })?;
            }
            drop(patch_tx);
            self.infer_batches(patch_rx, results)
        });
        // A reader's error is the cause when inference stopped for want of patches.
        match read_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(err) => Err(err),
            None => inferred,
        }
    }

    /// The model's loop: batches of read patches in, probabilities out to the stitcher. On a
    /// device one batch stays in flight: the next is gathered and submitted before the last
    /// one's maps are waited for, so that a GPU computes while this thread reads its results
    /// back and hands them on. A batch computed on this thread (the CPU's) goes on at once:
    /// held back, it would only keep the stitcher and the progress a batch behind. Returns
    /// when the first batch's maps were handed on.
    fn infer_batches(
        &self,
        patches: Receiver<ReadPatch>,
        stitch: SyncSender<Stitch>,
    ) -> Result<Option<Instant>> {
        let mut first_batch = None;
        let mut hand_on = |submitted| -> Result<()> {
            self.hand_on(submitted, &stitch)?;
            first_batch.get_or_insert_with(Instant::now);
            Ok(())
        };
        let mut in_flight: Option<Submitted> = None;
        let mut batch: Vec<ReadPatch> = Vec::with_capacity(self.batch);
        let mut patches = patches.iter();
        loop {
            let stopped = self.stop.load(Ordering::Relaxed);
            let next = if stopped { None } else { patches.next() };
            let ended = next.is_none();
            batch.extend(next);
            let full = batch.len() == self.batch;
            if full || (ended && !stopped && !batch.is_empty()) {
                let submitted = self.submit(&mut batch)?;
                if let Some(previous) = in_flight.take() {
                    hand_on(previous)?;
                }
                if submitted.maps.is_done() {
                    hand_on(submitted)?;
                } else {
                    in_flight = Some(submitted);
                }
            }
            if ended {
                break;
            }
        }
        if let Some(last) = in_flight {
            hand_on(last)?;
        }
        Ok(first_batch)
    }

    /// `batch`'s forward submitted; leaves `batch` empty.
    fn submit(&self, batch: &mut Vec<ReadPatch>) -> Result<Submitted<'a>> {
        let inputs: Vec<RgbPatch> = batch
            .iter()
            .map(|p| {
                let (width, height) = p.pixels.dimensions();
                RgbPatch::new(width as usize, height as usize, p.pixels.as_raw())
            })
            .collect();
        let maps = self.predictor.submit_maps_with(&inputs, self.tta)?;
        Ok(Submitted {
            patches: batch.drain(..).map(|patch| patch.index).collect(),
            maps,
        })
    }

    /// Waits for a submitted batch's maps and hands each patch's on to the stitcher.
    fn hand_on(&self, submitted: Submitted, stitch: &SyncSender<Stitch>) -> Result<()> {
        let maps = Arc::new(submitted.maps.wait()?);
        for (index, &patch) in submitted.patches.iter().enumerate() {
            let map = PatchMap {
                batch: Arc::clone(&maps),
                index,
            };
            if stitch.send((patch, map)).is_err() {
                bail!("the stitcher stopped");
            }
        }
        if self.progress.position() == 0 {
            self.progress.set_style(style(PATCHES));
            MODEL_WARM.store(true, Ordering::Relaxed);
        }
        self.progress.inc(submitted.patches.len() as u64);
        Ok(())
    }
}

/// A batch on the engine: its patches' grid indices, in batch order, and its maps to come.
struct Submitted<'a> {
    patches: Vec<usize>,
    maps: PendingMaps<'a>,
}

/// What the reader threads share: where the patches are, and whether to stop.
struct PatchReader<'a> {
    slide: &'a Slide,
    analysis: &'a Analysis,
    grid: &'a Grid,
    to_run: &'a [usize],
    stop: &'a AtomicBool,
}

impl PatchReader<'_> {
    /// Reader thread: takes the next patch to run, reads it at the analysis resolution,
    /// sends it on.
    fn read_patches(
        &self,
        next: &AtomicUsize,
        patches: SyncSender<ReadPatch>,
        error: &Mutex<Option<anyhow::Error>>,
    ) {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= self.to_run.len() || self.stop.load(Ordering::Relaxed) {
                return;
            }
            let position = self.grid.position(self.to_run[i]);
            let side = self.grid.patch as u32;
            // Patches that overhang the slide see its edge pixels repeated.
            match self
                .analysis
                .read_patch(self.slide, position.x, position.y, side)
            {
                Ok(pixels) => {
                    let index = position.index;
                    if patches.send(ReadPatch { index, pixels }).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(err);
                    self.stop.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// The contours' map is at most this many pixels on its long side, as the default heatmap's:
/// not the heatmap's own, since a picture's size is no reason for other contours. (A map
/// twice as fine, Camelyon's slides outlined to 25 pixels (6 µm) rather than 50, made the
/// pipeline's bench, an instant engine on two cores, 6-33 % slower.)
const CONTOUR_MAP_SIDE: f64 = 4096.0;

/// Analysis pixels per contour-map pixel, at least: at the analysis resolution itself the
/// model's pixel-level noise becomes specks (the demo slide: 122 regions against 92 at 2, and
/// the outlines' Dice with the thresholded map 0.993 at both).
const CONTOUR_MIN_DOWNSAMPLE: f64 = 2.0;

/// A low-resolution map of the stitched rows, and where its rows go once finished (the
/// heatmap's encoder, the contours' tracer).
struct MapFeed {
    map: LowResolutionMap,
    rows: Sender<Vec<u8>>,
}

impl MapFeed {
    /// A map of a `width` x `height` image at `downsample`, and the receiving end of its rows.
    fn new(width: u64, height: u64, downsample: f64) -> (MapFeed, Receiver<Vec<u8>>) {
        let (rows, received) = channel();
        let map = LowResolutionMap::new(width, height, downsample);
        (MapFeed { map, rows }, received)
    }

    /// Adds the image's row `y`, and sends on the map rows it finishes; returns their indices.
    fn add_row(&mut self, y: u64, row: &[u8]) -> Range<usize> {
        let finished = self.map.add_row(y, row);
        for index in finished.clone() {
            // A heatmap or tracer that failed has hung up; its error is reported when joined.
            let _ = self.rows.send(self.map.row(index).to_vec());
        }
        finished
    }
}

/// The stitcher thread's work: blends patches into rows, and hands each finished band of rows
/// to a thread of its own that streams it into the pyramid writer, the low-resolution maps and
/// the Dice counts (the two halves take about as long: one thread for both was the stream's
/// critical path once the model is fast).
struct StitchJob<'a> {
    grid: Grid,
    blend: Blend,
    /// Patches without tissue (probability 0).
    skipped: Vec<usize>,
    writer: PyramidWriter,
    truth: Option<&'a Truth>,
    heatmap: MapFeed,
    /// Whether the heatmap's map is made from the contours' rows, not the stitched rows.
    heatmap_from_contours: bool,
    contours: MapFeed,
}

/// What the stitcher leaves: the complete map's file, the contours' map (to measure the
/// regions on), and what was counted on the way.
struct Stitched {
    prob_file: NamedTempFile,
    contour_map: LowResolutionMap,
    overlap: Overlap,
    tally: Tally,
}

impl StitchJob<'_> {
    fn run(self, patches: Receiver<Stitch>) -> Result<Stitched> {
        let StitchJob {
            grid,
            blend,
            skipped,
            writer,
            truth,
            heatmap,
            heatmap_from_contours,
            contours,
        } = self;
        let region = grid.region;
        let sink = RowSink {
            writer,
            heatmap,
            heatmap_from_contours,
            contours,
            overlap: Overlap::default(),
            tally: Tally::default(),
            truth,
            region,
        };
        // Handed over, not queued: one band being written while the next is stitched, one
        // more band of memory than a single thread (51 MB at Camelyon's 100000 pixels wide).
        let (band_tx, band_rx) = sync_channel::<Vec<u8>>(0);
        std::thread::scope(|scope| {
            let sink = spawn_named(scope, "row-sink", move || sink.run(band_rx))?;
            let mut stitcher = Stitcher::new(grid, blend);
            // A failed sink has dropped its end: the stitcher goes on draining the patches
            // so that nothing upstream blocks, and the sink's error is reported below.
            let mut emit = |rows: Vec<u8>| {
                let _ = band_tx.send(rows);
            };
            for index in skipped {
                stitcher.add(index, None, &mut emit);
            }
            for (index, values) in patches.iter() {
                stitcher.add(index, Some(values), &mut emit);
            }
            drop(band_tx);
            let sunk = sink.join().expect("the row sink does not panic")?;
            if !stitcher.is_complete() {
                // The input ended early (an error or Ctrl-C upstream): dropping the writer removes its file.
                bail!("stopped before every patch was stitched");
            }
            Ok(Stitched {
                prob_file: sunk.writer.finish_temporary()?,
                contour_map: sunk.contours.map,
                overlap: sunk.overlap,
                tally: sunk.tally,
            })
        })
    }
}

/// Where the stitched map's rows go, in order: the pyramid, the low-resolution maps, the
/// counts, and the overlap with the truth where there is one.
struct RowSink<'a> {
    writer: PyramidWriter,
    heatmap: MapFeed,
    /// Whether the heatmap's map is made from the contours' rows, not the stitched rows.
    heatmap_from_contours: bool,
    contours: MapFeed,
    overlap: Overlap,
    tally: Tally,
    truth: Option<&'a Truth>,
    region: Rect,
}

impl RowSink<'_> {
    /// Takes bands of whole rows until the stitcher hangs up; stops at the first write error.
    fn run(mut self, bands: Receiver<Vec<u8>>) -> Result<Self> {
        let width = self.region.width as usize;
        let mut next_row = 0u64;
        let mut truth_row = Vec::new();
        for rows in bands {
            self.writer.write_rows(&rows)?;
            for row in rows.chunks_exact(width) {
                for index in self.contours.add_row(next_row, row) {
                    if self.heatmap_from_contours {
                        let contour_row = self.contours.map.row(index);
                        self.heatmap.add_row(index as u64, contour_row);
                    }
                }
                if !self.heatmap_from_contours {
                    self.heatmap.add_row(next_row, row);
                }
                self.tally.add_row(row);
                if let Some(truth) = self.truth {
                    truth.row(
                        self.region.x as f64,
                        (self.region.y + next_row) as f64,
                        width,
                        &mut truth_row,
                    );
                    self.overlap.add_row(row, &truth_row);
                }
                next_row += 1;
            }
        }
        Ok(self)
    }
}

/// Starts `work` on a thread of `scope` called `name`, which `top -H`, profilers and panic
/// messages show.
fn spawn_named<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    work: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, work)
        .with_context(|| format!("cannot start the {name} thread"))
}

pub fn progress_bar(visible: bool, total: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(style(PATCHES));
    bar
}

/// Whether a batch has come out of the model in this process: on a GPU its kernels are then
/// compiled and tuned, and a cohort's later slides start at once.
static MODEL_WARM: AtomicBool = AtomicBool::new(false);

/// The progress bar's line once patches come out.
const PATCHES: &str = "{bar:40} {pos}/{len} patches  {per_sec}  ETA {eta}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid template")
}

/// The whole slide at about `downsample`: the pyramid level closest below it, or, where that
/// level is more than 4 times as fine (a slide without a small level, a flat TIFF, whose
/// level 0 would be 1000 times the pixels), the slide scaled to `downsample`, read in bands.
fn low_level_view(slide: &Slide, downsample: f64) -> Result<RgbImage> {
    let level = slide.best_level_for_downsample(downsample);
    let (base, l) = (slide.levels()[0], slide.levels()[level]);
    if l.downsample >= downsample / 4.0 {
        return Ok(slide.read_region(level, 0, 0, l.width as u32, l.height as u32)?);
    }
    let whole = wsi::Region {
        x: 0,
        y: 0,
        width: base.width,
        height: base.height,
    };
    let side = |v: u64| ((v as f64 / downsample).round() as u32).max(1);
    Ok(slide.read_scaled(level, whole, side(base.width), side(base.height))?)
}

/// The region from a pyramid level (level 1 or lower when there is one), scaled to exactly
/// `width` x `height`.
fn low_level_view_of_region(
    slide: &Slide,
    region: Rect,
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    let wanted = region.width as f64 / width as f64;
    let level = slide
        .best_level_for_downsample(wanted)
        .max(1)
        .min(slide.levels().len() - 1);
    let region = wsi::Region {
        x: region.x,
        y: region.y,
        width: region.width,
        height: region.height,
    };
    Ok(slide.read_scaled(level, region, width, height)?)
}

/// `STEM` for the outputs of `slide` (a DICOM folder's whole name; a file's name without its
/// extension).
pub fn output_stem(slide: &Path) -> String {
    let name = if slide.is_dir() {
        slide.file_name()
    } else {
        slide.file_stem()
    };
    name.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slide".to_string())
}
