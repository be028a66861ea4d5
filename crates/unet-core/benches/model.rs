//! Criterion benchmarks of the full-width UNet (w = 64, random weights), and of pre- and
//! post-processing. Times are per batch: divide by the batch size for ms per patch.
//!
//! Environment (all optional):
//! - `UNET_BENCH_DEVICE`: `cpu` (default) or `cuda` (a build with `--features cuda`);
//! - `UNET_BENCH_SIDE`: patch side, default 512 (256 for a quick CPU run);
//! - `UNET_BENCH_BATCHES`: batch sizes, default `1` (e.g. `1,12,32,64` on a GPU);
//! - `UNET_BENCH_PRECISIONS`: default `f32` (e.g. `f32,f16`, or `f32,bf16` on a CPU with
//!   AVX-512-BF16);
//! - `UNET_BENCH_SECONDS`: measuring time per configuration, default 20.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use unet_core::{
    DeviceChoice, EngineChoice, FoldedWeights, Precision, Predictor, RgbPatch, UnetConfig, patch,
};

fn setting<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn side() -> usize {
    setting("UNET_BENCH_SIDE", "512")[0]
}

/// A deterministic tissue-like patch (no RNG dependency needed for a benchmark input).
fn pixels(side: usize) -> Vec<u8> {
    (0..side * side * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn forward(c: &mut Criterion) {
    let side = side();
    let device: DeviceChoice = setting("UNET_BENCH_DEVICE", "cpu")[0];
    let config = UnetConfig::new(3, 3, 64);
    let pixels = pixels(side);
    let mut group = c.benchmark_group("forward_w64");
    let seconds = setting::<f64>("UNET_BENCH_SECONDS", "20")[0];
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs_f64(seconds));
    // A random model on each engine asked for (`auto` is the one a user gets: the CPU kernels
    // for f32 on the CPU).
    let weights = FoldedWeights::random(config, 17);
    for precision in setting::<Precision>("UNET_BENCH_PRECISIONS", "f32") {
        let engines: Vec<(String, Predictor)> =
            setting::<EngineChoice>("UNET_BENCH_ENGINES", "auto,burn")
                .into_iter()
                .filter_map(|engine| {
                    // An engine that cannot serve this precision (Burn in bf16) is left out.
                    let predictor = Predictor::from_weights(&weights, device, precision, engine)
                        .inspect_err(|why| eprintln!("{engine} in {precision}: {why}"))
                        .ok()?;
                    let suffix = match engine {
                        EngineChoice::Auto => String::new(),
                        _ => format!("_{}", predictor.engine_name()),
                    };
                    Some((suffix, predictor))
                })
                .collect();
        for (engine, predictor) in &engines {
            for batch in setting::<usize>("UNET_BENCH_BATCHES", "1") {
                let patches = vec![RgbPatch::new(side, side, &pixels); batch];
                group.throughput(Throughput::Elements(batch as u64));
                let id = format!(
                    "{}_{}{engine}_{side}x{side}",
                    predictor.device_name(),
                    predictor.precision()
                );
                group.bench_with_input(
                    BenchmarkId::new(id, format!("batch{batch}")),
                    &patches,
                    |b, patches| b.iter(|| predictor.predict_batch(patches).unwrap()),
                );
            }
        }
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
