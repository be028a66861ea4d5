//! Times the kernels' forward on CUDA and checks it against unet-core's f32 CPU path on the
//! same batch: `cargo run --release -p unet-core --features cuda --example fused_forward --
//! MODEL.bpk [--batch 12,32,64] [--side 512] [--runs 5] [--precision f32,f16]`
//! (`tools/gpu-check.sh` runs it).
//!
//! Prints, for f32 and f16 storage and each batch size:
//! - the seconds of the first forward (which tunes each new layer shape's main loop, unless a
//!   cache on disk already holds it);
//! - ms per patch *streamed*: `runs` batches, after one that fills the pipeline, each submitted
//!   before the one before it is waited for, as `infer`'s model thread keeps one in flight, so
//!   that the host's share of a forward (gathering and uploading the patches, copying the maps
//!   out) overlaps the device's: the model-only throughput of a pipeline, what
//!   `tools/gpu-check.sh` compares with PyTorch's and with `infer` end to end; the batches
//!   alternate between two inputs, and the largest difference of a streamed batch's maps from
//!   its input's first forward is printed (0 unless the streams overlap wrongly: a batch read
//!   before its upload landed, or a map copied out before its forward ended);
//! - ms per patch of *one forward* waited for on its own (median of `runs`): the latency, the
//!   host's share included;
//! - the largest difference from the CPU path on the batch's first patch.
//!
//! Then each 3x3 convolution's main loop, time and TFLOP/s at the largest batch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl_runtime::runtime::Runtime;
use test_fixtures::{larger_difference, max_abs_difference};
use unet_core::engine::{Batch, Output};
use unet_core::patch::RgbPatch;
use unet_core::{DeviceChoice, EngineChoice, FusedUnet, Precision, Predictor, Target, model_file};

#[derive(Parser)]
struct Args {
    model: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "12,32,64")]
    batch: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    side: usize,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Storage precisions to run (f32 always runs the portable main loop).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16")]
    precision: Vec<Precision>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // As `infer` does: the batches' buffers of 32 MiB and more reused, not faulted in anew.
    unet_core::memory::reuse_large_buffers();
    // cubecl panics where no CUDA driver loads; the probe says why instead.
    Target::resolve(DeviceChoice::Cuda(0), Precision::F16, EngineChoice::Fused)?;
    let weights = model_file::read_weights(&args.model)?;
    let cpu = Predictor::load(
        &args.model,
        DeviceChoice::Cpu,
        Precision::F32,
        EngineChoice::Cpu,
    )?;
    let side = args.side;
    let pixels: Vec<u8> = (0..side * side * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let patch = RgbPatch::new(side, side, &pixels);
    // The streamed batches' other input: the same pixels backwards.
    let reversed: Vec<u8> = pixels.iter().rev().copied().collect();
    let other = RgbPatch::new(side, side, &reversed);
    let reference = cpu.predict_batch(&[patch])?.remove(0).values;
    println!(
        "the fused engine (sums in f32) on CUDA, {side}x{side}; f16's main loop: UNET_FUSED_CONV, by default tuned per layer shape"
    );
    println!(
        "storage | batch | first forward s | ms/patch streamed | ms/patch one forward | max abs difference from the CPU path | streamed from first"
    );
    let client = CudaRuntime::client(&CudaDevice::new(0));
    for &precision in &args.precision {
        match precision {
            Precision::F16 => time(
                &FusedUnet::<half::f16>::new(client.clone(), "cuda", &weights)?,
                "f16",
                &args,
                [patch, other],
                &reference,
            )?,
            _ => time(
                &FusedUnet::<f32>::new(client.clone(), "cuda", &weights)?,
                "f32",
                &args,
                [patch, other],
                &reference,
            )?,
        }
    }
    Ok(())
}

fn time<F: cubecl::prelude::Float + cubecl::prelude::CubeElement>(
    gpu: &FusedUnet<F>,
    storage: &str,
    args: &Args,
    [patch, other]: [RgbPatch; 2],
    reference: &[f32],
) -> anyhow::Result<()> {
    let side = args.side;
    for &batch in &args.batch {
        let (patches, others) = (vec![patch; batch], vec![other; batch]);
        let batch_of = |patches| Batch {
            patches,
            width: side,
            height: side,
        };
        let inputs = [batch_of(&patches), batch_of(&others)];
        let input = &inputs[0];
        let start = Instant::now();
        let maps = gpu.forward(input, Output::Probability)?;
        let first = start.elapsed().as_secs_f64();
        let expected = [maps.clone(), gpu.forward(&inputs[1], Output::Probability)?];
        if batch == args.batch[0] {
            println!("{storage}: 3x3 convolutions on {}", gpu.main_loop());
        }
        let difference = max_abs_difference(&maps[..side * side], reference);
        // Streamed: `runs` batches timed from the end of one that filled the pipeline, the
        // inputs alternating, each batch's first and last maps compared with its input's first
        // forward while the next batch runs (the whole batch would hold the next submit back).
        let runs = usize::from(args.runs);
        let plane = side * side;
        let mut streamed_difference = 0.0f32;
        let mut check = |run: usize, maps: Vec<f32>| {
            let expected = &expected[run % 2];
            for at in [0, maps.len() - plane] {
                let (got, want) = (&maps[at..at + plane], &expected[at..at + plane]);
                // Equal bit for bit as a rule: that comparison, vectorised, costs less.
                let bits = bytemuck::cast_slice::<f32, u32>;
                if bits(got) != bits(want) {
                    let difference = max_abs_difference(got, want);
                    streamed_difference = larger_difference(streamed_difference, difference);
                }
            }
        };
        let filling = gpu.submit(&inputs[0], Output::Probability)?;
        let mut next = gpu.submit(&inputs[1], Output::Probability)?;
        check(0, filling.wait()?);
        let start = Instant::now();
        for run in 1..runs {
            let following = gpu.submit(&inputs[(run + 1) % 2], Output::Probability)?;
            check(run, std::mem::replace(&mut next, following).wait()?);
        }
        check(runs, next.wait()?);
        let streamed = 1000.0 * start.elapsed().as_secs_f64() / (runs * batch) as f64;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            gpu.forward(input, Output::Probability)?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let one = 1000.0 * times[times.len() / 2] / batch as f64;
        println!(
            "{storage:>7} | {batch:>5} | {first:>15.2} | {streamed:>17.2} | {one:>20.2} | {difference:.2e} | {streamed_difference:.1e}"
        );
    }
    // Each 3x3 convolution at the largest batch, the device waited for around each.
    let batch = args.batch.iter().copied().max().unwrap_or(1);
    let patches = vec![patch; batch];
    let input = Batch {
        patches: &patches,
        width: side,
        height: side,
    };
    println!("{storage}, batch {batch}: layer | n x h x w x in -> out | main loop | ms | TFLOP/s");
    for layer in gpu.profile(&input)? {
        let (n, h, w, inputs, outputs) = layer.shape;
        println!(
            "{:>14} | {n} x {h} x {w} x {inputs} -> {outputs} | {} | {:.3} | {:.1}",
            layer.layer,
            layer.main_loop,
            1000.0 * layer.seconds,
            layer.tflops()
        );
    }
    Ok(())
}
