//! The stitcher's cost per patch: two rows of forty 512x512 patches (20480 pixels wide
//! without overlap), without overlap and with 64 pixels of it. Beside a GPU that runs the
//! model in about 1 ms a patch, the stitcher's one thread must keep well ahead of that.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tiling::{Blend, Grid, Rect, Stitcher};

fn stitch_two_patch_rows(c: &mut Criterion) {
    let patch = 512u64;
    // Probabilities that take every level, and some outside 0..1 (as a model's rounding gives).
    let values: Vec<f32> = (0..patch * patch)
        .map(|i| ((i * 7919) % 1031) as f32 / 1024.0 - 0.003)
        .collect();
    let mut group = c.benchmark_group("stitch");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (blend, overlap) in [(Blend::Mean, 0), (Blend::Mean, 64), (Blend::Gaussian, 64)] {
        let stride = patch - overlap;
        let region = Rect {
            x: 0,
            y: 0,
            width: 40 * stride + overlap,
            height: 2 * stride + overlap,
        };
        let grid = Grid::new(region, patch, overlap).expect("overlap below the patch");
        group.throughput(Throughput::Elements(grid.len() as u64));
        let name = format!("{blend:?}_overlap_{overlap}").to_lowercase();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut stitcher = Stitcher::new(grid, blend);
                let mut emitted = 0usize;
                let mut emit = |rows: Vec<u8>| emitted += rows.len();
                // Each patch arrives as a vector of its own, as from the model.
                for index in 0..grid.len() {
                    stitcher.add(index, Some(values.clone()), &mut emit);
                }
                assert_eq!(emitted as u64, region.width * region.height);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stitch_two_patch_rows);
criterion_main!(benches);
