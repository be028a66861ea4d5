//! The whole-slide job: read patches on worker threads, run them through the model in
//! batches, stitch and write on a thread of its own, all joined by bounded channels, so memory
//! stays bounded whatever the slide's size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use output_file::NamedTempFile;
use serde::Serialize;
use tiling::{Blend, Grid, Rect, Stitcher, TissueMask};
use unet_core::{PredictError, Predictor, RgbPatch};
use wsi::{Channels, PyramidWriter, Slide, WriterOptions};

use crate::output::Staged;
use crate::pictures::{LowResolutionMap, heatmap, tumour_geojson};
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

pub struct SlideJob {
    pub slide: PathBuf,
    pub predictor: Predictor,
    pub model: PathBuf,
    pub out_dir: PathBuf,
    pub patch: u64,
    pub overlap: u64,
    pub batch: usize,
    pub region: Option<Rect>,
    pub tissue: TissueChoice,
    pub blend: Blend,
    pub truth: Option<PathBuf>,
    /// Long side of the heatmap, at most.
    pub heatmap_side: u32,
    pub progress: bool,
    pub stop: Arc<AtomicBool>,
    /// When the process started: the summary says how long the first batch took from there
    /// (start-up, model loading, and on a GPU kernel compilation and autotuning).
    pub process_start: Instant,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub slide: String,
    pub model: String,
    pub device: String,
    pub precision: String,
    pub batch: usize,
    pub patch: u64,
    pub overlap: u64,
    pub blend: String,
    pub region: [u64; 4],
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
    pub outputs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dice: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
}

/// A patch read and waiting for the model.
struct ReadPatch {
    index: usize,
    pixels: RgbImage,
}

/// What the stitcher receives: a patch's grid index and probabilities.
pub type Stitch = (usize, Vec<f32>);

/// Decoded tiles kept while reading patches. Each patch is read once, and overlapping
/// neighbours share a few tiles, so a small cache serves whatever the slide's size.
pub const TILE_CACHE_BYTES: usize = 64 << 20;

pub fn run(job: SlideJob) -> Result<Summary> {
    let started = Instant::now();
    let slide = Slide::open_with_cache(&job.slide, TILE_CACHE_BYTES)?;
    let base = slide.levels()[0];
    let region = job.region.unwrap_or(Rect {
        x: 0,
        y: 0,
        width: base.width,
        height: base.height,
    });
    if region.x + region.width > base.width || region.y + region.height > base.height {
        bail!(
            "region {},{},{},{} reaches outside the slide ({}x{})",
            region.x,
            region.y,
            region.width,
            region.height,
            base.width,
            base.height
        );
    }
    let grid = Grid::new(region, job.patch, job.overlap).with_context(|| {
        format!(
            "overlap {} must be smaller than the patch ({})",
            job.overlap, job.patch
        )
    })?;
    let stem = output_stem(&job.slide);
    std::fs::create_dir_all(&job.out_dir).with_context(|| {
        format!(
            "{}: cannot create the output directory",
            job.out_dir.display()
        )
    })?;
    let mut staged = Staged::new(&job.out_dir);

    let (to_run, tissue_name) = patches_to_run(&slide, &grid, &job.tissue)?;
    let truth = job
        .truth
        .as_ref()
        .map(|path| Truth::load(path, base.width, base.height))
        .transpose()?;

    // The heatmap: at most `heatmap_side` on its long side, and from a pyramid level, not level 0.
    let level1_downsample = slide.levels().get(1).map_or(1.0, |l| l.downsample);
    let downsample = (region.width.max(region.height) as f64 / job.heatmap_side as f64)
        .max(level1_downsample)
        .max(1.0);

    let prob_name = format!("{stem}.prob.tif");
    let writer = PyramidWriter::create(
        staged.final_path(&prob_name),
        region.width,
        region.height,
        Channels::Grey,
        WriterOptions {
            tile: 512,
            mpp: slide.mpp(),
            ..WriterOptions::default()
        },
    )?;

    let progress = progress_bar(job.progress, to_run.len());
    let (stitch_tx, stitch_rx) = sync_channel::<Stitch>(2 * job.batch);
    let outcome = std::thread::scope(
        |scope| -> Result<(Overlap, LowResolutionMap, NamedTempFile, Option<Instant>)> {
            let skipped: Vec<usize> = {
                let mut run = vec![false; grid.len()];
                to_run.iter().for_each(|&i| run[i] = true);
                (0..grid.len()).filter(|&i| !run[i]).collect()
            };
            let truth = truth.as_ref();
            let stitcher = scope.spawn(move || {
                stitch_and_write(
                    grid, job.blend, skipped, stitch_rx, writer, truth, downsample,
                )
            });
            let streamed = stream_patches(
                &slide,
                &grid,
                &to_run,
                &job.predictor,
                job.batch,
                &progress,
                &job.stop,
                stitch_tx,
            );
            let stitched = stitcher.join().expect("the stitcher does not panic");
            let first_batch = streamed?;
            if job.stop.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            stitched.map(|(overlap, low, file)| (overlap, low, file, first_batch))
        },
    );
    progress.finish_and_clear();
    let (overlap, low_resolution, prob_file, first_batch) = outcome?;
    staged.keep(prob_file, &prob_name);

    let map = low_resolution.to_image();
    let view = low_level_view_of_region(&slide, region, map.width(), map.height())?;
    let picture = heatmap(&view, &map);
    staged.write_png(&format!("{stem}.heatmap.png"), &picture)?;
    let geojson = tumour_geojson(&map, downsample, (region.x, region.y))?;
    staged.write(&format!("{stem}.tumour.geojson"), |out| {
        Ok(serde_json::to_writer_pretty(out, &geojson)?)
    })?;

    let seconds = started.elapsed().as_secs_f64();
    let run = to_run.len();
    let summary = Summary {
        slide: job.slide.display().to_string(),
        model: job.model.display().to_string(),
        device: job.predictor.device_name().to_string(),
        precision: job.predictor.precision().to_string(),
        batch: job.batch,
        patch: job.patch,
        overlap: job.overlap,
        blend: format!("{:?}", job.blend).to_lowercase(),
        region: [region.x, region.y, region.width, region.height],
        grid: [grid.cols, grid.rows],
        patches_in_grid: grid.len(),
        patches_run: run,
        tissue: tissue_name,
        seconds,
        seconds_to_first_batch: first_batch
            .map(|t| t.duration_since(job.process_start).as_secs_f64()),
        patches_per_second: run as f64 / seconds,
        ms_per_patch: if run == 0 {
            0.0
        } else {
            1000.0 * seconds / run as f64
        },
        mpp: slide.mpp(),
        outputs: ["prob.tif", "heatmap.png", "tumour.geojson", "summary.json"]
            .iter()
            .map(|kind| {
                job.out_dir
                    .join(format!("{stem}.{kind}"))
                    .display()
                    .to_string()
            })
            .collect(),
        dice: truth.as_ref().map(|_| overlap.dice()),
        iou: truth.as_ref().map(|_| overlap.iou()),
    };
    staged.write(&format!("{stem}.summary.json"), |out| {
        Ok(serde_json::to_writer_pretty(out, &summary)?)
    })?;
    staged.commit()?;
    Ok(summary)
}

/// The grid patches that hold tissue (all of them with tissue detection off), and how tissue
/// was decided.
pub fn patches_to_run(
    slide: &Slide,
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
            let image = image::open(path)
                .with_context(|| format!("{}: cannot read the tissue mask", path.display()))?
                .to_luma8();
            let mask = TissueMask::from_mask(image, base.width, base.height);
            (format!("mask {}", path.display()), Some(mask))
        }
    };
    let to_run = grid
        .positions()
        .filter(|p| {
            mask.as_ref().is_none_or(|mask| {
                mask.holds_tissue(Rect {
                    x: p.x,
                    y: p.y,
                    width: grid.patch,
                    height: grid.patch,
                })
            })
        })
        .map(|p| p.index)
        .collect();
    Ok((to_run, name))
}

/// Reads the patches `to_run` of `grid` on worker threads and runs them through the model in
/// batches, sending each patch's probabilities to `results` (in no particular order).
/// Returns when the first batch's results were out.
#[allow(clippy::too_many_arguments)]
pub fn stream_patches(
    slide: &Slide,
    grid: &Grid,
    to_run: &[usize],
    predictor: &Predictor,
    batch: usize,
    progress: &ProgressBar,
    stop: &AtomicBool,
    results: SyncSender<Stitch>,
) -> Result<Option<Instant>> {
    let (patch_tx, patch_rx) = sync_channel::<ReadPatch>(2 * batch);
    let next = AtomicUsize::new(0);
    let read_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let readers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let inferred = std::thread::scope(|scope| {
        for _ in 0..readers {
            let patch_tx = patch_tx.clone();
            let (next, read_error) = (&next, &read_error);
            scope
                .spawn(move || read_patches(slide, grid, to_run, next, patch_tx, read_error, stop));
        }
        drop(patch_tx);
        infer_batches(predictor, batch, patch_rx, results, progress, stop)
    });
    // A reader's error is the cause when inference stopped for want of patches.
    match read_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(err) => Err(err),
        None => inferred,
    }
}

/// Reader thread: takes the next patch to run, reads it at level 0, sends it on.
fn read_patches(
    slide: &Slide,
    grid: &Grid,
    to_run: &[usize],
    next: &AtomicUsize,
    patches: SyncSender<ReadPatch>,
    error: &Mutex<Option<anyhow::Error>>,
    stop: &AtomicBool,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= to_run.len() || stop.load(Ordering::Relaxed) {
            return;
        }
        let position = grid.position(to_run[i]);
        match read_patch(slide, position.x, position.y, grid.patch as u32) {
            Ok(pixels) => {
                if patches
                    .send(ReadPatch {
                        index: position.index,
                        pixels,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(err) => {
                error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(err.into());
                stop.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A level-0 patch; where it reaches past the slide's edge, the edge pixels are repeated
/// (as the model's replicate padding would see a larger image).
pub fn read_patch(slide: &Slide, x: u64, y: u64, side: u32) -> wsi::Result<RgbImage> {
    let mut pixels = slide.read_region(0, x as i64, y as i64, side, side)?;
    let level = slide.levels()[0];
    let inside_w = (level.width.saturating_sub(x)).min(side as u64) as u32;
    let inside_h = (level.height.saturating_sub(y)).min(side as u64) as u32;
    if inside_w < side || inside_h < side {
        for py in 0..side {
            for px in 0..side {
                if px >= inside_w || py >= inside_h {
                    let source = *pixels.get_pixel(px.min(inside_w - 1), py.min(inside_h - 1));
                    pixels.put_pixel(px, py, source);
                }
            }
        }
    }
    Ok(pixels)
}

/// The model's loop: batches of read patches in, probabilities out to the stitcher.
fn infer_batches(
    predictor: &Predictor,
    batch_size: usize,
    patches: Receiver<ReadPatch>,
    stitch: SyncSender<Stitch>,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> Result<Option<Instant>> {
    let mut first_batch = None;
    let mut run_batch = |batch: &mut Vec<ReadPatch>| -> Result<()> {
        let inputs: Vec<RgbPatch> = batch
            .iter()
            .map(|p| {
                RgbPatch::new(
                    p.pixels.width() as usize,
                    p.pixels.height() as usize,
                    p.pixels.as_raw(),
                )
            })
            .collect();
        let maps = predictor
            .predict_batch(&inputs)
            .map_err(|err| explain(err, batch_size))?;
        first_batch.get_or_insert_with(Instant::now);
        drop(inputs);
        let count = batch.len() as u64;
        for (patch, map) in batch.drain(..).zip(maps) {
            if stitch.send((patch.index, map.values)).is_err() {
                bail!("the stitcher stopped");
            }
        }
        progress.inc(count);
        Ok(())
    };
    let mut batch: Vec<ReadPatch> = Vec::with_capacity(batch_size);
    for patch in patches.iter() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        batch.push(patch);
        if batch.len() == batch_size {
            run_batch(&mut batch)?;
        }
    }
    if !batch.is_empty() && !stop.load(Ordering::Relaxed) {
        run_batch(&mut batch)?;
    }
    Ok(first_batch)
}

/// A model error, with what to try when the GPU ran out of memory.
fn explain(err: PredictError, batch: usize) -> anyhow::Error {
    let message = err.to_string();
    if message.to_lowercase().contains("out of memory") {
        anyhow::anyhow!(
            "{message}: the GPU ran out of memory at batch {batch}; try --batch {}",
            (batch / 2).max(1)
        )
    } else {
        err.into()
    }
}

/// The stitcher thread: blends patches into rows, streams them into the pyramid writer, the
/// low-resolution map and the Dice counts.
fn stitch_and_write(
    grid: Grid,
    blend: Blend,
    skipped: Vec<usize>,
    patches: Receiver<Stitch>,
    mut writer: PyramidWriter,
    truth: Option<&Truth>,
    downsample: f64,
) -> Result<(Overlap, LowResolutionMap, NamedTempFile)> {
    let region = grid.region;
    let mut stitcher = Stitcher::new(grid, blend);
    let mut low = LowResolutionMap::new(region.width, region.height, downsample);
    let mut overlap = Overlap::default();
    let mut next_row = 0u64;
    let mut truth_row = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let width = region.width as usize;
    let mut emit = |rows: &[u8]| {
        if failure.is_some() {
            return;
        }
        if let Err(err) = writer.write_rows(rows) {
            failure = Some(err.into());
            return;
        }
        for row in rows.chunks_exact(width) {
            low.add_row(next_row, row);
            if let Some(truth) = truth {
                truth.row(region.x, region.y + next_row, width, &mut truth_row);
                overlap.add_row(row, &truth_row);
            }
            next_row += 1;
        }
    };
    for index in skipped {
        stitcher.add(index, None, &mut emit);
    }
    for (index, values) in patches.iter() {
        stitcher.add(index, Some(values), &mut emit);
    }
    if let Some(err) = failure {
        return Err(err);
    }
    if !stitcher.is_complete() {
        // The input ended early (an error or Ctrl-C upstream): dropping the writer removes its file.
        bail!("stopped before every patch was stitched");
    }
    Ok((overlap, low, writer.finish_temporary()?))
}

pub fn progress_bar(visible: bool, total: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} patches  {per_sec}  ETA {eta}")
            .expect("valid template"),
    );
    bar
}

/// The whole slide at about `downsample`, from the pyramid level closest below it.
fn low_level_view(slide: &Slide, downsample: f64) -> Result<RgbImage> {
    let level = slide.best_level_for_downsample(downsample);
    let l = slide.levels()[level];
    Ok(slide.read_region(level, 0, 0, l.width as u32, l.height as u32)?)
}

/// The region from a pyramid level (level 1 or lower when there is one), resized to exactly
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
    let l = slide.levels()[level];
    let scale = |v: u64| (v as f64 / l.downsample).round();
    let view = slide.read_region(
        level,
        scale(region.x) as i64,
        scale(region.y) as i64,
        (scale(region.width) as u32).max(1),
        (scale(region.height) as u32).max(1),
    )?;
    Ok(image::imageops::resize(
        &view,
        width,
        height,
        image::imageops::FilterType::Triangle,
    ))
}

/// `STEM` for the outputs of `slide`.
pub fn output_stem(slide: &Path) -> String {
    slide
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slide".to_string())
}
