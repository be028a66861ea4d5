//! What the whole-slide pipeline costs around the model: reading and decoding the patches,
//! stitching, writing the probability pyramid, the heatmap, the contours and the summary, with
//! an engine that answers at once. Once the model runs on a GPU (about 1 ms a patch), this is
//! what decides `infer`'s end-to-end throughput; on a CPU the model dominates.
//!
//! A synthetic slide (deflate tiles, every patch run: tissue detection off), side
//! `INFER_BENCH_SIDE` (default 8192: 256 patches of 512). Throughput in patches.
//!
//! `INFER_BENCH_MS_PER_PATCH=T` makes the engine a stand-in for a GPU: its forwards queue on
//! a device that takes T ms a patch, one after another, while the CPU does the rest; the model
//! alone would take T x patches, and end to end over that is the share of the model's
//! throughput `infer` keeps (issue 12's bar: 90 %).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infer::pipeline::{self, Options, ProbFormat, SlideJob};
use tiling::Blend;
use unet_core::engine::{Batch, Engine, InFlight, Output};
use unet_core::{
    EngineChoice, FoldedWeights, Precision, PredictError, Predictor, Target, Tta, UnetConfig,
};
use wsi::{Channels, PyramidWriter, WriterOptions};

/// An engine whose forward is the host's share of a GPU's (the maps computed when submitted:
/// the probability is the patch's red level; copied when waited for, as out of pinned memory)
/// and a device's `ms_per_patch` a patch, each forward queued behind the ones submitted before
/// it, as on a CUDA stream (at once, if 0).
struct Paced {
    ms_per_patch: f64,
    /// When the device will have finished the forwards submitted so far.
    device_free: Mutex<Instant>,
}

impl Paced {
    fn new(ms_per_patch: f64) -> Paced {
        Paced {
            ms_per_patch,
            device_free: Mutex::new(Instant::now()),
        }
    }
}

/// A [`Paced`] forward: its maps, and when the device is done with it.
struct PacedInFlight {
    maps: Vec<f32>,
    done: Instant,
}

impl InFlight for PacedInFlight {
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError> {
        std::thread::sleep(self.done.saturating_duration_since(Instant::now()));
        Ok(self.maps.clone())
    }
}

impl Engine for Paced {
    fn load(_: &FoldedWeights, _: Target) -> Result<Self, PredictError> {
        Ok(Paced::new(0.0))
    }
    fn name(&self) -> &'static str {
        "paced"
    }
    fn choice() -> EngineChoice {
        EngineChoice::Auto
    }
    fn device(&self) -> &'static str {
        "cpu"
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        self.submit(batch, output)?.wait()
    }
    fn submit<'a>(
        &'a self,
        batch: &Batch,
        _: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        let maps = batch
            .patches
            .iter()
            .flat_map(|patch| patch.pixels.chunks_exact(3).map(|p| p[0] as f32 / 255.0))
            .collect();
        let pace = Duration::from_secs_f64(self.ms_per_patch * batch.len() as f64 / 1000.0);
        let mut device_free = self.device_free.lock().unwrap();
        let done = (*device_free).max(Instant::now()) + pace;
        *device_free = done;
        Ok(Box::new(PacedInFlight { maps, done }))
    }
}

/// A `side` x `side` slide of textured pink, as deflate tiles in a pyramid.
fn synthetic_slide(path: &Path, side: u64) {
    let options = WriterOptions {
        tile: 512,
        mpp: Some(0.243),
        deflate_level: 1,
        ..WriterOptions::default()
    };
    let mut writer = PyramidWriter::create(path, side, side, Channels::Rgb, options).unwrap();
    let mut row = Vec::with_capacity(3 * side as usize);
    for y in 0..side {
        row.clear();
        for x in 0..side {
            let t = ((x * 7 + y * 13) % 97) as u8;
            row.extend_from_slice(&[150 + t, 60 + t / 2, 140 + t / 3]);
        }
        writer.write_rows(&row).unwrap();
    }
    writer.finish().unwrap();
}

fn whole_slide(c: &mut Criterion) {
    // As `infer` does.
    unet_core::memory::reuse_large_buffers();
    let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let side = setting("INFER_BENCH_SIDE").unwrap_or(8192.0) as u64;
    let ms_per_patch = setting("INFER_BENCH_MS_PER_PATCH").unwrap_or(0.0);
    let dir = tempfile::tempdir().unwrap();
    let slide = dir.path().join("synthetic.tif");
    synthetic_slide(&slide, side);
    let predictor =
        Predictor::from_engine(Box::new(Paced::new(ms_per_patch)), UnetConfig::new(3, 3, 8));
    let job = SlideJob {
        slide,
        stem: "synthetic".to_string(),
        predictor: &predictor,
        model: "paced".into(),
        out_dir: dir.path().join("out"),
        batch: 32,
        options: Options {
            model_sha256: String::new(),
            model_mpp: None,
            slide_mpp: None,
            patch: 512,
            overlap: 0,
            region: None,
            tissue: "off".to_string(),
            blend: Blend::Mean,
            tta: Tta::Off,
            prob_format: ProbFormat::Tiff,
            heatmap_side: 4096,
            truth: None,
        },
        truth: None,
        progress: false,
        stop: Arc::new(AtomicBool::new(false)),
        process_start: Instant::now(),
    };
    let patches = side.div_ceil(512).pow(2);
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(patches));
    let engine = if ms_per_patch > 0.0 {
        format!("engine_{ms_per_patch}ms_a_patch")
    } else {
        "instant_engine".to_string()
    };
    group.bench_function(format!("{engine}_{side}x{side}"), |b| {
        b.iter(|| pipeline::run(&job).unwrap())
    });
    group.finish();
}

criterion_group!(benches, whole_slide);
criterion_main!(benches);
