//! Criterion benchmarks of the full-width UNet (w = 64, random weights) on the CPU.
//!
//! `UNET_BENCH_SIDE` sets the patch side (default 512; 256 for a quick run), and
//! `UNET_BENCH_BATCHES` the batch sizes (default `1`; e.g. `1,4`).
//! Times are per batch; divide by the batch size for ms per patch.

use std::time::Duration;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use unet_core::{DeviceChoice, Precision, Predictor, RgbPatch, UnetConfig, patch};

fn side() -> usize {
    std::env::var("UNET_BENCH_SIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

fn batches() -> Vec<usize> {
    let list = std::env::var("UNET_BENCH_BATCHES").unwrap_or_else(|_| "1".to_string());
    list.split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect()
}

/// A deterministic tissue-like patch (no RNG dependency needed for a benchmark input).
fn pixels(side: usize) -> Vec<u8> {
    (0..side * side * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn forward(c: &mut Criterion) {
    let side = side();
    let config = UnetConfig::new(3, 3, 64);
    let model = config.init(&Device::flex());
    let predictor =
        Predictor::from_model(model, config, DeviceChoice::Cpu, Precision::F32).unwrap();
    let pixels = pixels(side);
    let mut group = c.benchmark_group("forward_w64_cpu_f32");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    for batch in batches() {
        let patches = vec![RgbPatch::new(side, side, &pixels); batch];
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("{side}x{side}"), format!("batch{batch}")),
            &patches,
            |b, patches| b.iter(|| predictor.predict_batch(patches).unwrap()),
        );
    }
    group.finish();
}

fn pre_and_post_processing(c: &mut Criterion) {
    let side = side();
    let pixels = pixels(side);
    let patch = RgbPatch::new(side, side, &pixels);
    c.bench_function(&format!("preprocess_{side}x{side}"), |b| {
        let mut out = Vec::with_capacity(3 * side * side);
        b.iter(|| {
            out.clear();
            patch::normalise_into(&patch, &mut out);
        })
    });
    let map = patch::ProbabilityMap {
        width: side,
        height: side,
        values: pixels
            .iter()
            .map(|&p| p as f32 / 255.0)
            .take(side * side)
            .collect(),
    };
    c.bench_function(&format!("postprocess_u8_{side}x{side}"), |b| {
        b.iter(|| map.to_u8())
    });
}

criterion_group!(benches, pre_and_post_processing, forward);
criterion_main!(benches);
