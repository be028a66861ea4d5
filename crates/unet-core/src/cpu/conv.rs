//! The one convolution kernel every layer of the CPU path but the head runs on: a direct
//! convolution over NHWC activations, `taps` shifted 1x1 products summed (9 for a 3x3
//! convolution, 1 for a transposed convolution's tap), bias first, ReLU last.
//!
//! Each call of [`tile`] keeps `PIXELS x VECTORS` f32 output vectors in registers and, for
//! every group of input channels (one channel in f32, a pair in bf16) of every tap, broadcasts
//! the group's input values of each pixel against the packed weight vectors: no im2col copy,
//! no separate bias or ReLU pass. Input and output are addressed by
//! row and pixel strides, which is how the transposed convolution stores every second pixel
//! and how a layer writes into a channel range of a wider (concatenated) buffer.

use rayon::prelude::*;

use super::aligned::Aligned;
use super::simd::{Compiled, Element, Kernel, Simd};

/// Bytes of input channels' values per pass over the output: the pass's weights (`9 x 256 x
/// 64` floats with AVX-512, 590 KB; as many bytes of bf16 hold 512 channels) stay in the
/// per-core L2 cache while all the pass's pixels use them. A layer with more inputs keeps its
/// partial sums in its output between passes: in bf16, one more rounding (the w = 64 model's
/// two 1024-input layers).
const CHANNEL_BLOCK_BYTES: usize = 256 * 4;

/// A convolution's weights packed for the kernel: for each block of `block` output channels,
/// `[tap][input channel / group][block][input channel % group]`, zeros past the last output
/// channel; the bias (f32) likewise.
pub struct Packed<E> {
    /// Input channels as read: the layer's, rounded up to the kernel's group (the extra ones
    /// have zero weights).
    pub inputs: usize,
    pub outputs: usize,
    taps: usize,
    block: usize,
    weights: Aligned<E>,
    bias: Vec<f32>,
}

impl<E: Element> Packed<E> {
    /// `weight(tap, input, output)` gives each weight of the layer's `inputs` input channels;
    /// `block` and `group` are the kernel's output channels per call (`VECTORS * LANES`) and
    /// input channels per multiply-add (`Kernel::GROUP`).
    pub fn new(
        taps: usize,
        (inputs, outputs): (usize, usize),
        (block, group): (usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
        bias: &[f32],
    ) -> Packed<E> {
        let read = inputs.next_multiple_of(group);
        let blocks = outputs.div_ceil(block);
        let mut weights = Aligned::filled(blocks * taps * read * block, E::default());
        for (b, packed) in weights.chunks_exact_mut(taps * read * block).enumerate() {
            for tap in 0..taps {
                for input in 0..inputs {
                    let (first, within) = (input - input % group, input % group);
                    let row = &mut packed[(tap * read + first) * block..][..group * block];
                    for j in 0..block.min(outputs - b * block) {
                        row[j * group + within] = E::from_f32(weight(tap, input, b * block + j));
                    }
                }
            }
        }
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(blocks * block, 0.0);
        Packed {
            inputs: read,
            outputs,
            taps,
            block,
            weights,
            bias: padded_bias,
        }
    }

    /// Output channels per kernel call.
    pub fn block(&self) -> usize {
        self.block
    }

    pub fn taps(&self) -> usize {
        self.taps
    }

    /// The packed weights: see [`Packed`].
    pub fn weights(&self) -> &[E] {
        &self.weights
    }

    /// The bias, zeros past the last output channel.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
}

/// Where a layer reads and writes: pixel `(y, x)` of the output grid reads its taps at
/// `input[y * input_row + x * input_pixel + tap offset..]` and writes `outputs` values at
/// `output + y * output_row + x * output_pixel`. Channels are contiguous on both sides.
pub struct Job<'a, E> {
    pub layer: &'a Packed<E>,
    pub rows: usize,
    pub columns: usize,
    pub input: &'a [E],
    pub input_row: usize,
    pub input_pixel: usize,
    /// One offset (in floats, from a pixel's input address) per tap.
    pub taps: &'a [usize],
    /// Writable for `output_len` floats; tasks write disjoint pixels of it at once, so it is
    /// a pointer rather than a slice.
    pub output: *mut E,
    pub output_len: usize,
    pub output_row: usize,
    pub output_pixel: usize,
    pub relu: bool,
    /// The outputs streamed past the caches ([`Kernel::stream_values`]), for an output larger
    /// than them, where the AMX tiles run the job. This vector kernel stores them: streamed,
    /// its transposed convolutions took 1.5-2x as long (f32, w = 64 at 512x512).
    pub stream: bool,
}

impl<E> Job<'_, E> {
    /// The one bounds check of a call: every read and write the job describes lies inside
    /// `input` and the `output_len` floats at `output`. The kernels' pointer arithmetic
    /// stays inside these bounds (their `SAFETY` notes refer here).
    pub fn check_bounds(&self) {
        let layer = self.layer;
        assert_eq!(self.taps.len(), layer.taps);
        if self.rows == 0 || self.columns == 0 {
            return;
        }
        let last_pixel =
            |row: usize, pixel: usize| (self.rows - 1) * row + (self.columns - 1) * pixel;
        let last_tap = self.taps.iter().copied().max().unwrap_or(0);
        let read_end = last_pixel(self.input_row, self.input_pixel) + last_tap + layer.inputs;
        let write_end = last_pixel(self.output_row, self.output_pixel) + layer.outputs;
        assert!(
            read_end <= self.input.len() && write_end <= self.output_len,
            "a kernel job reaches past its buffers: reads to {read_end} of {}, writes to {write_end} of {}",
            self.input.len(),
            self.output_len
        );
    }
}

/// Raw pointers (a job, a frame) handed to the tasks that write their disjoint parts.
pub struct Shared<T>(pub T);
// SAFETY: the kernels' tasks read shared inputs and write disjoint outputs (see `run` and
// `winograd::run`); `T` is references to the pointers' descriptions.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    // A method, so that closures capture the `Shared` and not its non-`Sync` contents.
    pub fn get(&self) -> T {
        self.0
    }
}

/// Runs the jobs, which cover the same rows with the same output blocks, on all cores: each
/// task takes its block of its rows of every job in turn. Jobs that read one input (the
/// transposed convolution's four output positions) then find the task's input rows in the
/// core's cache for all but the first, where one job after another would read the whole
/// input from memory each time.
///
/// # Safety
/// Each job's `output` is valid for writes of `output_len` floats that nothing else accesses
/// meanwhile, and no two output pixels of any of the jobs overlap (the bounds themselves are
/// checked here).
pub unsafe fn run<K: Kernel>(kernel: K, jobs: &[Job<K::Elem>]) {
    let Some(first) = jobs.first() else { return };
    let (blocks, rows) = (output_blocks(kernel, first), first.rows);
    for job in &jobs[1..] {
        assert_eq!((output_blocks(kernel, job), job.rows), (blocks, rows));
    }
    let rows_per_group = row_groups(blocks, rows);
    let groups = rows.div_ceil(rows_per_group);
    let shared = Shared(jobs);
    (0..blocks * groups).into_par_iter().for_each(|task| {
        let (block, group) = (task % blocks, task / blocks);
        let rows = group * rows_per_group..((group + 1) * rows_per_group).min(rows);
        for job in shared.get() {
            // SAFETY: this task writes only its block's channels of its rows of each job.
            unsafe {
                kernel.compiled(Rows {
                    job,
                    block,
                    rows: rows.clone(),
                })
            };
        }
    });
}

/// The job's blocks of output channels, after checking its bounds and that its weights are
/// packed for this kernel.
fn output_blocks<K: Kernel>(kernel: K, job: &Job<K::Elem>) -> usize {
    job.check_bounds();
    assert_eq!(job.layer.block, block_of(kernel));
    job.layer.outputs.div_ceil(job.layer.block)
}

/// Rows (of `rows`) per task when each row is split into `blocks` tasks: enough tasks to
/// balance the cores, rows grouped so that each task reuses its weights.
pub fn row_groups(blocks: usize, rows: usize) -> usize {
    let groups = (16 * rayon::current_num_threads())
        .div_ceil(blocks)
        .clamp(1, rows.max(1));
    rows.div_ceil(groups).max(1)
}

/// A kernel's output channels per call.
pub fn block_of<K: Kernel>(_: K) -> usize {
    K::Simd::VECTORS * K::Simd::LANES
}

/// One task of [`run`]: output channel block `block` of output rows `rows`.
struct Rows<'a, E> {
    job: &'a Job<'a, E>,
    block: usize,
    rows: std::ops::Range<usize>,
}

impl<E: Element> Compiled for Rows<'_, E> {
    type Elem = E;
    #[inline(always)]
    unsafe fn run<K: Kernel<Elem = E>>(self, kernel: K) {
        // SAFETY: `run` checked the job's bounds; this task owns its block of its rows.
        unsafe { run_rows(kernel, self.job, self.block, self.rows) }
    }
}

/// Output channel block `block` of output rows `rows`, on this thread.
///
/// # Safety
/// As [`run`], for these rows and channels, after [`Job::check_bounds`]; inline it only into
/// [`Compiled::run`].
#[inline(always)]
pub unsafe fn run_rows<K: Kernel>(
    kernel: K,
    job: &Job<K::Elem>,
    block: usize,
    rows: std::ops::Range<usize>,
) {
    let lanes = K::Simd::LANES;
    let layer = job.layer;
    let first_output = block * layer.block;
    let outputs = layer.block.min(layer.outputs - first_output);
    let vectors = outputs.div_ceil(lanes);
    let channel_block = CHANNEL_BLOCK_BYTES / size_of::<K::Elem>();
    // SAFETY (the pointers below): `block` is one of the layer's output blocks, whose packed
    // weights and bias `Packed::new` sized; the rows and columns are the job's, whose reads
    // and writes `Job::check_bounds` kept inside the buffers.
    let weights = unsafe {
        layer
            .weights
            .as_ptr()
            .add(block * layer.taps * layer.inputs * layer.block)
    };
    for first_input in (0..layer.inputs).step_by(channel_block) {
        let last_input = (first_input + channel_block).min(layer.inputs);
        for y in rows.clone() {
            for x in (0..job.columns).step_by(K::Simd::PIXELS) {
                let tile = Tile {
                    input: unsafe {
                        job.input
                            .as_ptr()
                            .add(y * job.input_row + x * job.input_pixel)
                    },
                    input_pixel: job.input_pixel,
                    taps: job.taps,
                    channels: first_input..last_input,
                    tap_stride: layer.inputs * layer.block,
                    block: layer.block,
                    weights,
                    bias: unsafe { layer.bias.as_ptr().add(first_output) },
                    output: unsafe {
                        job.output
                            .add(y * job.output_row + x * job.output_pixel + first_output)
                    },
                    output_pixel: job.output_pixel,
                    from_bias: first_input == 0,
                    relu: job.relu && last_input == layer.inputs,
                    last_vector: outputs - (vectors - 1) * lanes,
                };
                let pixels = K::Simd::PIXELS.min(job.columns - x);
                // SAFETY: the tile's pixels are columns x..x + pixels of row y, inside the job.
                unsafe { tile_of_size(kernel, pixels, vectors, &tile) };
            }
        }
    }
}

/// One kernel call's operands.
struct Tile<'a, E> {
    input: *const E,
    input_pixel: usize,
    taps: &'a [usize],
    channels: std::ops::Range<usize>,
    /// Values between one tap's weights and the next's.
    tap_stride: usize,
    block: usize,
    weights: *const E,
    bias: *const f32,
    output: *mut E,
    output_pixel: usize,
    /// Start from the bias (the first channel block) rather than the output so far.
    from_bias: bool,
    relu: bool,
    /// Channels in the last vector (`LANES` but at a layer's last, narrower block).
    last_vector: usize,
}

/// [`tile`] for run-time sizes: the register tile is a compile-time shape.
///
/// # Safety
/// As [`tile`]'s, for `pixels <= PIXELS` and `vectors <= VECTORS`.
#[inline(always)]
unsafe fn tile_of_size<K: Kernel>(kernel: K, pixels: usize, vectors: usize, t: &Tile<K::Elem>) {
    // SAFETY (each arm): the caller's contract, with the sizes made constants.
    macro_rules! by_vectors {
        ($pixels:literal) => {
            match vectors {
                1 => unsafe { tile::<K, $pixels, 1>(kernel, t) },
                2 => unsafe { tile::<K, $pixels, 2>(kernel, t) },
                3 => unsafe { tile::<K, $pixels, 3>(kernel, t) },
                _ => unsafe { tile::<K, $pixels, 4>(kernel, t) },
            }
        };
    }
    const { assert!(K::Simd::PIXELS <= 6 && K::Simd::VECTORS <= 4) };
    match pixels {
        1 => by_vectors!(1),
        2 => by_vectors!(2),
        3 => by_vectors!(3),
        4 => by_vectors!(4),
        5 => by_vectors!(5),
        _ => by_vectors!(6),
    }
}

/// `P` output pixels by `V` vectors of output channels, over one block of input channels.
///
/// # Safety
/// `t.input` (at each tap offset) is readable for `P` pixels of `t.channels` (a multiple of
/// the group); `t.weights` and `t.bias` hold the block's packed values; `t.output` is
/// writable for `P` pixels of `V` vectors (the last `t.last_vector` wide).
#[inline(always)]
unsafe fn tile<K: Kernel, const P: usize, const V: usize>(kernel: K, t: &Tile<K::Elem>) {
    // SAFETY (every pointer below): inside the ranges this function's contract names.
    let (simd, lanes, group) = (kernel.simd(), K::Simd::LANES, K::GROUP);
    let width = |j: usize| if j + 1 == V { t.last_vector } else { lanes };
    let mut acc = [[simd.zero(); V]; P];
    for (p, row) in acc.iter_mut().enumerate() {
        for (j, value) in row.iter_mut().enumerate() {
            *value = unsafe {
                if t.from_bias {
                    simd.load(t.bias.add(j * lanes))
                } else {
                    kernel.load_values(t.output.add(p * t.output_pixel + j * lanes), width(j))
                }
            };
        }
    }
    for (tap, &offset) in t.taps.iter().enumerate() {
        let input = unsafe { t.input.add(offset) };
        let weights = unsafe { t.weights.add(tap * t.tap_stride) };
        for c in t.channels.clone().step_by(group) {
            let w: [K::Group; V] = std::array::from_fn(|j| unsafe {
                kernel.load_group(weights.add(c * t.block + j * lanes * group))
            });
            for (p, row) in acc.iter_mut().enumerate() {
                let x = unsafe { kernel.splat_group(input.add(p * t.input_pixel + c)) };
                for (value, &w) in row.iter_mut().zip(&w) {
                    *value = kernel.dot_add(x, w, *value);
                }
            }
        }
    }
    for (p, row) in acc.iter().enumerate() {
        for (j, &value) in row.iter().enumerate() {
            let value = if t.relu {
                simd.max(value, simd.zero())
            } else {
                value
            };
            unsafe {
                kernel.store_values(
                    t.output.add(p * t.output_pixel + j * lanes),
                    value,
                    width(j),
                )
            };
        }
    }
}
