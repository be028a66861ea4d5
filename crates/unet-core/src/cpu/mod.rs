//! The f32 CPU path: the same UNet on NHWC activations, every layer on one register-blocked
//! SIMD kernel ([`conv`]): the wide 3x3 convolutions above the deepest level as Winograd
//! F(2x2, 3x3) ([`winograd`]), the others as direct convolutions; all cores through rayon.
//!
//! Burn's flex backend runs NCHW and materialises each replicate pad, ReLU and concatenation
//! as a pass of its own. Here every activation carries a one-pixel border that repeats its
//! edge (refreshed after each layer writes it: the perimeter only), so a 3x3 convolution
//! reads its nine taps straight from it; bias and ReLU happen in the kernel's registers; and
//! the skip concatenation is never copied: the encoder writes each level's output into the
//! channels of the buffer its decoder level reads, after the transposed convolution's.

mod conv;
mod simd;
mod winograd;

use std::sync::Mutex;

use rayon::prelude::*;

use crate::patch::normalise_into;

use crate::architecture::{self, LEVELS, Layer, UnetConfig};
use crate::engine::{Batch, Engine, Output, max_over_channels};
use crate::predictor::PredictError;
use crate::target::{Device, Precision, Target};
use crate::weights::{FoldedWeights, WeightsError};
use conv::{Job, Packed};
use simd::{Portable, Simd};
use winograd::{Frame, Winograd};

/// Levels (0 = full resolution) whose 3x3 convolutions may run as Winograd F(2x2, 3x3): their
/// sides are always even (patches are multiples of 16). The deepest level's need not be.
const WINOGRAD_LEVELS: usize = LEVELS - 1;
/// ...when both sides have at least this many channels. Narrower layers lose more in the
/// transforms than the products save (w64, 512x512, per layer: 64 -> 64 took 112 ms as
/// Winograd against 75 ms direct, 128 -> 128 72 against 75, 512 -> 256 111 against 165;
/// at 8 channels Winograd was 7x slower).
const WINOGRAD_MIN_CHANNELS: usize = 128;

/// Activation memory a batch may hold at once for images run side by side (see
/// [`CpuUnet::images_at_once`]): the demo model's 512x512 forward needs ~60 MB, the w = 64
/// model's ~450 MB, which therefore runs one image at a time.
const CONCURRENT_ACTIVATION_BYTES: usize = 512 << 20;

/// A 3x3 convolution with replicate padding, bias and ReLU.
enum Conv3x3 {
    Direct(Packed),
    Winograd(Winograd),
}

impl Conv3x3 {
    fn inputs(&self) -> usize {
        match self {
            Conv3x3::Direct(layer) => layer.inputs,
            Conv3x3::Winograd(layer) => layer.inputs,
        }
    }

    fn outputs(&self) -> usize {
        match self {
            Conv3x3::Direct(layer) => layer.outputs,
            Conv3x3::Winograd(layer) => layer.outputs,
        }
    }
}

/// Work that runs on one instruction set's kernel.
trait Op {
    /// # Safety
    /// As the kernel's (`conv::run`, `winograd::run`).
    unsafe fn run<S: Simd>(&self, simd: S);
}

impl Op for Job<'_> {
    unsafe fn run<S: Simd>(&self, simd: S) {
        // SAFETY: the caller's contract is the kernel's.
        unsafe { conv::run(simd, self) }
    }
}

impl Op for (&Winograd, &Frame<'_>) {
    unsafe fn run<S: Simd>(&self, simd: S) {
        // SAFETY: the caller's contract is the kernel's.
        unsafe { winograd::run(simd, self.0, self.1) }
    }
}

/// An NHWC activation of one image with a replicated one-pixel border:
/// `(height + 2) x (width + 2)` pixels of `channels` values. Its memory comes from, and goes
/// back to, the model's [`BufferPool`].
struct Padded<'pool> {
    height: usize,
    width: usize,
    channels: usize,
    data: Vec<f32>,
    pool: &'pool BufferPool,
}

impl Drop for Padded<'_> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

/// Activation memory kept from one forward to the next: a 512x512 forward of the w = 64
/// model writes ~600 MB of activations, and freshly mapped memory page-faults on every first
/// write (about a tenth of the forward's time, measured).
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<f32>>>);

impl BufferPool {
    /// A buffer of `len` floats; stale values are left in it (every layer writes all of its
    /// output before anything reads it).
    fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..free.len())
            .filter(|&i| free[i].capacity() >= len)
            .min_by_key(|&i| free[i].capacity());
        match best {
            Some(i) => {
                let mut data = free.swap_remove(i);
                data.resize(len, 0.0);
                data
            }
            None => vec![0.0; len],
        }
    }

    fn give(&self, data: Vec<f32>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(data);
    }
}

impl<'pool> Padded<'pool> {
    fn new(pool: &'pool BufferPool, height: usize, width: usize, channels: usize) -> Padded<'pool> {
        Padded {
            height,
            width,
            channels,
            data: pool.take((height + 2) * (width + 2) * channels),
            pool,
        }
    }

    /// Floats between one padded row and the next.
    fn row(&self) -> usize {
        (self.width + 2) * self.channels
    }

    /// Index of channel 0 of interior pixel `(y, x)`.
    fn at(&self, y: usize, x: usize) -> usize {
        (y + 1) * self.row() + (x + 1) * self.channels
    }

    /// Copies the edge pixels of channels `channels` into the border (replicate padding).
    fn fill_border(&mut self, channels: std::ops::Range<usize>) {
        let (row, c, w) = (self.row(), self.channels, self.width);
        for y in 1..=self.height {
            let line = &mut self.data[y * row..(y + 1) * row];
            line.copy_within(c + channels.start..c + channels.end, channels.start);
            line.copy_within(
                w * c + channels.start..w * c + channels.end,
                (w + 1) * c + channels.start,
            );
        }
        for (from, to) in [(1, 0), (self.height, self.height + 1)] {
            for x in 0..w + 2 {
                let pixel = x * c;
                self.data.copy_within(
                    from * row + pixel + channels.start..from * row + pixel + channels.end,
                    to * row + pixel + channels.start,
                );
            }
        }
    }
}

/// The instruction set the kernel runs with, chosen once from what the CPU has.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(simd::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2(simd::Avx2),
    Portable(Portable),
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx512) = simd::Avx512::detect() {
            return Isa::Avx512(avx512);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = simd::Avx2::detect() {
            return Isa::Avx2(avx2);
        }
        Isa::Portable(Portable)
    }

    /// Every instruction set this CPU can run the kernel with, best first.
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            all.extend(simd::Avx512::detect().map(Isa::Avx512));
            all.extend(simd::Avx2::detect().map(Isa::Avx2));
        }
        all.push(Isa::Portable(Portable));
        all
    }

    #[cfg(test)]
    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            Isa::Portable(_) => "portable",
        }
    }

    /// Output channels per kernel call.
    fn block(self) -> usize {
        fn of<S: Simd>(_: S) -> usize {
            S::VECTORS * S::LANES
        }
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(s) => of(s),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(s) => of(s),
            Isa::Portable(s) => of(s),
        }
    }

    /// # Safety
    /// As the operation's.
    unsafe fn run(self, op: &impl Op) {
        // SAFETY: the caller's contract is the operation's; each instruction set exists only
        // where the CPU has it.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512(s) => op.run(s),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(s) => op.run(s),
                Isa::Portable(s) => op.run(s),
            }
        }
    }
}

/// The f32 CPU engine.
pub struct CpuUnet {
    config: UnetConfig,
    isa: Isa,
    /// The plan's encoder, two 3x3 convolutions a level.
    encoder: Vec<[Conv3x3; 2]>,
    /// The plan's decoder, deepest first.
    decoder: Vec<DecoderLevel>,
    head: Packed,
    buffers: BufferPool,
}

struct DecoderLevel {
    /// The transposed convolution: one 1-tap layer per output position `dy * 2 + dx`.
    up: [Packed; 4],
    convs: [Conv3x3; 2],
}

impl CpuUnet {
    /// `winograd_min_channels`: see [`WINOGRAD_MIN_CHANNELS`] (tests lower it to check the
    /// Winograd path on narrow models).
    fn with(
        weights: &FoldedWeights,
        isa: Isa,
        winograd_min_channels: usize,
    ) -> Result<CpuUnet, WeightsError> {
        let plan = weights.plan();
        let block = isa.block();
        let conv3x3 = |layer: &Layer, level: usize| -> Result<Conv3x3, WeightsError> {
            let weight = weights.tap_major(layer)?;
            let bias = weights.bias(layer)?;
            let (i, o) = (layer.inputs, layer.outputs);
            let weight = |tap, c, out| weight.get(tap, c, out);
            Ok(
                if level < WINOGRAD_LEVELS && i.min(o) >= winograd_min_channels {
                    Conv3x3::Winograd(Winograd::new(i, o, block, weight, bias))
                } else {
                    Conv3x3::Direct(Packed::new(9, i, o, block, weight, bias))
                },
            )
        };
        let double = |level: &architecture::DoubleConv| -> Result<[Conv3x3; 2], WeightsError> {
            Ok([
                conv3x3(&level.convs[0], level.level)?,
                conv3x3(&level.convs[1], level.level)?,
            ])
        };
        // A 1x1 layer per tap: the head's one, or each output position of the transposed one.
        let one_tap = |layer: &Layer, tap: usize| -> Result<Packed, WeightsError> {
            let weight = weights.tap_major(layer)?;
            let bias = weights.bias(layer)?;
            let weight = |_, c, out| weight.get(tap, c, out);
            Ok(Packed::new(
                1,
                layer.inputs,
                layer.outputs,
                block,
                weight,
                bias,
            ))
        };
        let decoder = plan
            .decoder
            .iter()
            .map(|level| {
                let [a, b, c, d] = [0, 1, 2, 3].map(|tap| one_tap(&level.up, tap));
                Ok(DecoderLevel {
                    up: [a?, b?, c?, d?],
                    convs: double(&level.convs)?,
                })
            })
            .collect::<Result<_, WeightsError>>()?;
        Ok(CpuUnet {
            config: weights.config,
            isa,
            encoder: plan.encoder.iter().map(double).collect::<Result<_, _>>()?,
            decoder,
            head: one_tap(&plan.head, 0)?,
            buffers: BufferPool::default(),
        })
    }

    /// How many `height x width` images to run side by side: one per core while their
    /// activations fit [`CONCURRENT_ACTIVATION_BYTES`], at least one.
    fn images_at_once(&self, height: usize, width: usize) -> usize {
        // Per level: the decoder's input (up + skip channels) and two layers' outputs.
        let bytes: usize = self
            .encoder
            .iter()
            .enumerate()
            .map(|(level, [_, second])| {
                let pixels = ((height >> level) + 2) * ((width >> level) + 2);
                4 * pixels * 4 * second.outputs()
            })
            .sum();
        (CONCURRENT_ACTIVATION_BYTES / bytes.max(1)).clamp(1, rayon::current_num_threads())
    }

    /// One normalised image, CHW, to its sigmoid outputs, CHW.
    fn forward_image(&self, chw: &[f32], height: usize, width: usize) -> Vec<f32> {
        let plane = height * width;
        let mut x = Padded::new(&self.buffers, height, width, self.config.in_channels);
        for y in 0..height {
            for px in 0..width {
                let at = x.at(y, px);
                for c in 0..x.channels {
                    x.data[at + c] = chw[c * plane + y * width + px];
                }
            }
        }
        x.fill_border(0..x.channels);
        // Each encoder level's output goes straight into its decoder level's input, after
        // the channels the transposed convolution will fill; finest level first.
        let mut joined: Vec<(Padded, usize)> = self
            .decoder
            .iter()
            .rev()
            .zip(&self.encoder)
            .enumerate()
            .map(|(level, (decoder, [_, skip]))| {
                let up = decoder.up[0].outputs;
                let (h, w) = (height >> level, width >> level);
                (Padded::new(&self.buffers, h, w, up + skip.outputs()), up)
            })
            .collect();
        for (level, [first, second]) in self.encoder.iter().enumerate() {
            let middle = self.conv3x3(first, &x);
            x = match joined.get_mut(level) {
                Some((skip, offset)) => {
                    self.conv3x3_into(second, &middle, skip, *offset);
                    max_pool(skip, *offset..skip.channels)
                }
                None => self.conv3x3(second, &middle),
            };
        }
        for level in &self.decoder {
            let (mut input, _) = joined.pop().expect("one skip buffer per decoder level");
            self.up_into(&level.up, &x, &mut input);
            let middle = self.conv3x3(&level.convs[0], &input);
            x = self.conv3x3(&level.convs[1], &middle);
        }
        self.head(&x)
    }

    fn conv3x3(&self, layer: &Conv3x3, x: &Padded) -> Padded<'_> {
        let mut y = Padded::new(&self.buffers, x.height, x.width, layer.outputs());
        self.conv3x3_into(layer, x, &mut y, 0);
        y
    }

    /// Writes channels `offset..offset + outputs` of `out` (same size as `x`).
    fn conv3x3_into(&self, layer: &Conv3x3, x: &Padded, out: &mut Padded, offset: usize) {
        let outputs = layer.outputs();
        assert_eq!(x.channels, layer.inputs());
        assert!(offset + outputs <= out.channels && (out.height, out.width) == (x.height, x.width));
        let first_output = out.at(0, 0) + offset;
        let output = &mut out.data[first_output..];
        let (output_len, output) = (output.len(), output.as_mut_ptr());
        // SAFETY (both arms): output (y, x) reads padded rows y..y + 3 and columns x..x + 3 of
        // x; the output pixels are out's interior, channels offset..offset + outputs; the
        // kernels check both against the buffers' lengths, and `out` is borrowed mutably here.
        match layer {
            Conv3x3::Direct(layer) => {
                let taps: Vec<usize> = (0..9)
                    .map(|tap| (tap / 3) * x.row() + (tap % 3) * x.channels)
                    .collect();
                let job = Job {
                    layer,
                    rows: x.height,
                    columns: x.width,
                    input: &x.data,
                    input_row: x.row(),
                    input_pixel: x.channels,
                    taps: &taps,
                    output,
                    output_len,
                    output_row: out.row(),
                    output_pixel: out.channels,
                    relu: true,
                };
                unsafe { self.isa.run(&job) };
            }
            Conv3x3::Winograd(layer) => {
                let frame = Frame {
                    height: x.height,
                    width: x.width,
                    input: &x.data,
                    input_row: x.row(),
                    input_pixel: x.channels,
                    output,
                    output_len,
                    output_row: out.row(),
                    output_pixel: out.channels,
                };
                unsafe { self.isa.run(&(layer, &frame)) };
            }
        }
        out.fill_border(offset..offset + outputs);
    }

    /// The 2x2 stride-2 transposed convolution of `x` into channels `0..outputs` of `out`.
    fn up_into(&self, layers: &[Packed; 4], x: &Padded, out: &mut Padded) {
        assert_eq!((out.height, out.width), (2 * x.height, 2 * x.width));
        for (position, layer) in layers.iter().enumerate() {
            assert!(x.channels == layer.inputs && layer.outputs <= out.channels);
            let (dy, dx) = (position / 2, position % 2);
            let first_output = out.at(dy, dx);
            let (output_row, output_pixel) = (2 * out.row(), 2 * out.channels);
            let output = &mut out.data[first_output..];
            let job = pointwise(layer, x, output, output_row, output_pixel);
            // SAFETY: input pixel (y, x) writes output pixel (2y + dy, 2x + dx), inside out
            // (checked by the kernel), which is borrowed mutably here.
            unsafe { self.isa.run(&job) };
        }
        out.fill_border(0..layers[0].outputs);
    }

    /// The 1x1 head and sigmoid, CHW.
    fn head(&self, x: &Padded) -> Vec<f32> {
        assert_eq!(x.channels, self.head.inputs);
        let (plane, outputs) = (x.height * x.width, self.head.outputs);
        let mut logits = vec![0.0; plane * outputs];
        let job = pointwise(&self.head, x, &mut logits, x.width * outputs, outputs);
        // SAFETY: logits holds every output pixel's channels (checked by the kernel).
        unsafe { self.isa.run(&job) };
        let mut chw = vec![0.0; outputs * plane];
        for (p, pixel) in logits.chunks_exact(outputs).enumerate() {
            for (c, &logit) in pixel.iter().enumerate() {
                chw[c * plane + p] = 1.0 / (1.0 + (-logit).exp());
            }
        }
        chw
    }
}

impl Engine for CpuUnet {
    fn load(weights: &FoldedWeights, target: Target) -> Result<CpuUnet, PredictError> {
        if (target.device, target.precision) != (Device::Cpu, Precision::F32) {
            return Err(PredictError::Unsupported {
                engine: "cpu",
                what: format!("run on {} in {}", target.device.name(), target.precision),
            });
        }
        Ok(CpuUnet::with(
            weights,
            Isa::detect(),
            WINOGRAD_MIN_CHANNELS,
        )?)
    }

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> &'static str {
        Device::Cpu.name()
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        let (height, width) = (batch.height, batch.width);
        // Several images at once where their activations are small: fewer of the per-layer
        // hand-overs between cores go idle (the demo model at batch 12 went from 53 to 45 ms
        // a patch).
        let at_once = self.images_at_once(height, width);
        let channels = self.config.out_channels;
        let mut sigmoid = Vec::with_capacity(batch.len() * channels * batch.plane());
        for group in batch.patches.chunks(at_once) {
            let outputs: Vec<Vec<f32>> = group
                .par_iter()
                .map(|patch| {
                    let mut input = Vec::with_capacity(3 * batch.plane());
                    normalise_into(patch, &mut input);
                    self.forward_image(&input, height, width)
                })
                .collect();
            outputs.iter().for_each(|image| sigmoid.extend(image));
        }
        Ok(match output {
            Output::Sigmoid => sigmoid,
            Output::Probability => max_over_channels(&sigmoid, channels, batch.plane()),
        })
    }
}

/// A 1x1 layer (no ReLU) over `x`'s interior, writing pixel `(y, x)` at
/// `output + y * output_row + x * output_pixel`.
fn pointwise<'a>(
    layer: &'a Packed,
    x: &'a Padded,
    output: &mut [f32],
    output_row: usize,
    output_pixel: usize,
) -> Job<'a> {
    Job {
        layer,
        rows: x.height,
        columns: x.width,
        input: &x.data[x.at(0, 0)..],
        input_row: x.row(),
        input_pixel: x.channels,
        taps: &[0],
        output: output.as_mut_ptr(),
        output_len: output.len(),
        output_row,
        output_pixel,
        relu: false,
    }
}

/// 2x2 max pooling of channels `channels` of `x`, into a buffer of its own.
fn max_pool<'pool>(x: &Padded<'pool>, channels: std::ops::Range<usize>) -> Padded<'pool> {
    let mut out = Padded::new(x.pool, x.height / 2, x.width / 2, channels.len());
    let (row, c) = (out.row(), out.channels);
    out.data[row..(out.height + 1) * row]
        .par_chunks_exact_mut(row)
        .enumerate()
        .for_each(|(y, line)| {
            for px in 0..x.width / 2 {
                let at = |dy: usize, dx: usize| {
                    &x.data[x.at(2 * y + dy, 2 * px + dx) + channels.start..][..c]
                };
                let (a, b, d, e) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                for (ch, value) in line[(px + 1) * c..(px + 2) * c].iter_mut().enumerate() {
                    *value = a[ch].max(b[ch]).max(d[ch]).max(e[ch]);
                }
            }
        });
    out.fill_border(0..c);
    out
}

#[cfg(test)]
mod tests {
    use super::{CpuUnet, Isa, WINOGRAD_MIN_CHANNELS};
    use crate::patch::{RgbPatch, normalise_into};
    use crate::{BurnEngine, Checkpoint, DeviceChoice, FoldedWeights, Precision, Predictor};
    use crate::{UnetConfig, engine::max_over_channels};
    use test_fixtures::{cases, max_abs_difference};

    /// Every kernel this CPU has, not only the one `Predictor` picks, against PyTorch's
    /// outputs (the fixtures' cases: narrow models, odd channel counts and widths), with the
    /// layers direct as `Predictor` runs them and with every layer that can be Winograd.
    #[test]
    fn every_kernel_matches_pytorch_within_1e_4() {
        for case in cases() {
            let checkpoint = Checkpoint::read(&case.checkpoint_path()).unwrap();
            let image = case.input_image();
            let (width, height) = (case.width, case.height);
            let mut input = Vec::new();
            normalise_into(&RgbPatch::new(width, height, image.as_raw()), &mut input);
            let (_, expected) = case.expected_sigmoid();
            for isa in Isa::available() {
                for winograd_min_channels in [WINOGRAD_MIN_CHANNELS, 1] {
                    let model =
                        CpuUnet::with(&checkpoint.weights, isa, winograd_min_channels).unwrap();
                    let output = model.forward_image(&input, height, width);
                    let difference = max_abs_difference(&output, &expected);
                    let case = format!(
                        "{} {} winograd from {winograd_min_channels} channels",
                        case.name,
                        isa.name()
                    );
                    println!("{case}: {difference:.2e}");
                    assert!(difference <= 1e-4, "{case}: {difference}");
                }
            }
        }
    }

    /// A wider model (w = 32, layers of up to 512 input channels: more than one channel block
    /// per pass, full output blocks, Winograd from 128 channels as `Predictor` runs it)
    /// against Burn's f32 path, itself checked against PyTorch.
    #[test]
    fn every_kernel_matches_burn_on_a_wider_model() {
        let config = UnetConfig::new(3, 2, 32);
        let weights = FoldedWeights::random(config, 3);
        let (width, height) = (48, 32);
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        let patch = RgbPatch::new(width, height, &pixels);
        let burn =
            Predictor::with_engine::<BurnEngine>(&weights, DeviceChoice::Cpu, Precision::F32)
                .unwrap();
        let expected = burn.predict_raw(&[patch]).unwrap();
        // Not a degenerate output: the probabilities spread.
        let map = max_over_channels(&expected, config.out_channels, width * height);
        let spread =
            map.iter().fold(0.0f32, |m, &p| m.max(p)) - map.iter().fold(1.0f32, |m, &p| m.min(p));
        assert!(spread > 1e-3, "random model's map is flat: {spread}");
        let mut input = Vec::new();
        normalise_into(&patch, &mut input);
        for isa in Isa::available() {
            let output = CpuUnet::with(&weights, isa, WINOGRAD_MIN_CHANNELS)
                .unwrap()
                .forward_image(&input, height, width);
            let difference = max_abs_difference(&output, &expected);
            println!("w32 {}: {difference:.2e}", isa.name());
            assert!(difference <= 1e-4, "w32 {}: {difference}", isa.name());
        }
    }
}
