//! `region_throughput SLIDE [COUNT]`: 512x512 level-0 region reads per second, one thread and
//! all cores, over COUNT (default 200) pseudo-random regions of the slide's tissue and glass.
//! `tools/openslide_throughput.py` reads the same regions with OpenSlide for comparison.

use std::time::Instant;

use rayon::prelude::*;
use wsi::Slide;

const SIDE: u32 = 512;

/// The same region list as tools/openslide_throughput.py: a linear congruential walk.
fn regions(width: u64, height: u64, count: usize) -> Vec<(i64, i64)> {
    let mut state: u64 = 12345;
    let mut next = |bound: u64| {
        state = (state * 1_103_515_245 + 12345) % (1 << 31);
        state % bound.max(1)
    };
    (0..count)
        .map(|_| {
            let x = next(width - SIDE as u64 + 1) as i64;
            let y = next(height - SIDE as u64 + 1) as i64;
            (x, y)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: region_throughput SLIDE [COUNT]"))?;
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(200);
    let level = Slide::open(&path)?.levels()[0];
    let regions = regions(level.width, level.height, count);

    // A fresh slide per run: every tile is read and decoded (no warm cache).
    let slide = Slide::open(&path)?;
    let start = Instant::now();
    for &(x, y) in &regions {
        slide.read_region(0, x, y, SIDE, SIDE)?;
    }
    let one = count as f64 / start.elapsed().as_secs_f64();

    let slide = Slide::open(&path)?;
    let start = Instant::now();
    regions
        .par_iter()
        .try_for_each(|&(x, y)| slide.read_region(0, x, y, SIDE, SIDE).map(drop))?;
    let all = count as f64 / start.elapsed().as_secs_f64();
    println!(
        "wsi {path}: {count} regions of {SIDE}x{SIDE}: 1 thread {one:.1}/s, {} threads {all:.1}/s",
        rayon::current_num_threads()
    );
    Ok(())
}
