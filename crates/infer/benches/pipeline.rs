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
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use infer::pipeline::{self, Options, ProbFormat, SlideJob};
use tiling::Blend;
use unet_core::{Predictor, Tta, UnetConfig};
use wsi::{Channels, PyramidWriter, WriterOptions};

// The tests' stand-in for the model; the bench runs it on a device only.
#[allow(dead_code)]
#[path = "../tests/common/stand_in.rs"]
mod stand_in;
use stand_in::StandIn;

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
    let predictor = Predictor::from_engine(
        Box::new(StandIn::on_a_device(ms_per_patch)),
        UnetConfig::new(3, 3, 8),
    );
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
