//! 3x3 convolutions as Winograd convolutions (Lavin and Gray, 2015): each block of output
//! pixels comes from its input tile with one multiply per tile position and input/output
//! channel pair: F(2x2, 3x3), 16 multiplies for 2x2 outputs where a direct convolution does
//! 36 (2.25x fewer); F(4x4, 3x3), 36 for 4x4 outputs (4x fewer).
//!
//! Per range of output blocks (tiles): the input tiles are transformed (`V = Bᵀ d B`), each
//! position of the tile is one product `V_ξ · U_ξ` on the same kernel as the direct
//! convolution (the weights `U = G g Gᵀ` are transformed once, in f64, when the model loads),
//! and the products are transformed back (`Y = Aᵀ M A`) with bias and ReLU. The differences
//! from the direct convolution are rounding only (the PyTorch parity tests hold at 1e-4 in
//! f32, measured 5.4e-6 at most with F(4x4, 3x3); in bf16, F(2x2, 3x3) only, the products are
//! rounded once more, before the output transform). On the w = 64 model (AMD EPYC, Zen 4)
//! F(2x2, 3x3) took the 512x512 forward from ~1.85 s to ~1.0 s in f32 and from ~0.96 s to
//! ~0.52 s in bf16, and F(4x4, 3x3) the f32 one on to ~0.75 s.

use rayon::prelude::*;

use super::conv::{self, Job, Packed, Shared};
use super::simd::{Compiled, Element, Kernel, Simd};

/// Bytes of transformed input (or products) per task (2 MB), so that they stay in the core's
/// L2 cache between the transform and the products...
const TRANSFORMED_BYTES: usize = 2 << 20;
/// ...but at least this many tiles, or the products are too short to reuse their weights
/// (before the tasks are evened out over the threads, which may make them shorter).
const MIN_TILES: usize = 96;

/// Which Winograd transform: output blocks of 2x2 or 4x4 pixels from input tiles of 4x4 or
/// 6x6. F(4x4, 3x3) does 36 products per 16 outputs where F(2x2, 3x3) does 16 per 4 (1.8x
/// fewer) but its transforms scale values by up to 100 before the products: fine in f32,
/// too coarse for bf16's 8 bits. F(3x3, 3x3) between them would leave bf16 at 4x F(2x2)'s
/// error a layer (`tools/winograd_bf16_error.py`, benches/RESULTS.md), so bf16 keeps F(2x2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    F2x2,
    F4x4,
}

impl Transform {
    /// Output pixels a block has per side.
    fn block(self) -> usize {
        match self {
            Transform::F2x2 => 2,
            Transform::F4x4 => 4,
        }
    }

    /// Input pixels a tile has per side, and positions per tile side.
    fn tile(self) -> usize {
        self.block() + 2
    }

    /// `G`, which takes a 3-tap kernel to the tile's positions.
    fn g(self) -> &'static [[f64; 3]] {
        match self {
            Transform::F2x2 => &[
                [1.0, 0.0, 0.0],
                [0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5],
                [0.0, 0.0, 1.0],
            ],
            Transform::F4x4 => &[
                [1.0 / 4.0, 0.0, 0.0],
                [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
                [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
                [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
                [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
                [0.0, 0.0, 1.0],
            ],
        }
    }
}

pub struct Winograd<E> {
    /// Input channels as read (see [`Packed::inputs`]).
    pub inputs: usize,
    pub outputs: usize,
    transform: Transform,
    /// `U_ξ` for each position of the tile (16 or 36), packed as a 1x1 layer with no bias.
    transformed: Vec<Packed<E>>,
    bias: Vec<f32>,
}

impl<E: Element> Winograd<E> {
    /// The transformed weights' size.
    pub fn weight_bytes(&self) -> usize {
        self.transformed
            .iter()
            .map(|u| size_of_val(u.weights()))
            .sum()
    }

    /// As [`Packed::new`] with 9 taps (`tap = ky * 3 + kx`).
    pub fn new(
        (inputs, outputs): (usize, usize),
        kernel: (usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
        bias: &[f32],
        transform: Transform,
    ) -> Winograd<E> {
        // U = G g Gᵀ for every (input, output) pair, position-major.
        let (g, n) = (transform.g(), transform.tile());
        let mut u = vec![0.0f32; inputs * outputs * n * n];
        for c in 0..inputs {
            for o in 0..outputs {
                let kernel = |ky: usize, kx: usize| f64::from(weight(ky * 3 + kx, c, o));
                let positions = &mut u[(c * outputs + o) * n * n..][..n * n];
                for (xi, value) in positions.iter_mut().enumerate() {
                    let (i, j) = (xi / n, xi % n);
                    let mut sum = 0.0;
                    for (ky, gy) in g[i].iter().enumerate() {
                        for (kx, gx) in g[j].iter().enumerate() {
                            sum += gy * kernel(ky, kx) * gx;
                        }
                    }
                    *value = sum as f32;
                }
            }
        }
        let zeros = vec![0.0; outputs];
        let transformed = (0..n * n)
            .map(|xi| {
                Packed::new(
                    1,
                    (inputs, outputs),
                    kernel,
                    |_, c, o| u[(c * outputs + o) * n * n + xi],
                    &zeros,
                )
            })
            .collect::<Vec<_>>();
        Winograd {
            inputs: transformed[0].inputs,
            outputs,
            transform,
            transformed,
            bias: bias.to_vec(),
        }
    }
}

/// Where a layer reads and writes: output pixel `(y, x)`'s 3x3 neighbourhood starts at
/// `input + y * input_row + x * input_pixel` (a padded buffer), and its `outputs` channels go
/// to `output + y * output_row + x * output_pixel`.
///
/// Where a side is not a multiple of the block, the last blocks stick out: their extra
/// outputs are not stored, and their extra inputs lie past the input's border (the next
/// row's first pixels, or spare rows the caller provides: finite values). In exact
/// arithmetic no stored output depends on them; in floating point they reach it only as
/// rounding, as every input of a tile does.
pub struct Frame<'a, E> {
    pub height: usize,
    pub width: usize,
    pub input: &'a [E],
    pub input_row: usize,
    pub input_pixel: usize,
    /// Writable for `output_len` values; tasks write disjoint tiles of it at once.
    pub output: *mut E,
    pub output_len: usize,
    pub output_row: usize,
    pub output_pixel: usize,
    /// The outputs streamed past the caches ([`Kernel::stream_values`]).
    pub stream: bool,
    /// Whether tasks may split the output channels ([`task_grid`]).
    pub split_channels: bool,
}

impl<E> Frame<'_, E> {
    /// Blocks of `block x block` outputs down and across.
    fn blocks(&self, block: usize) -> (usize, usize) {
        (self.height.div_ceil(block), self.width.div_ceil(block))
    }

    /// The one bounds check of a call: the last block's input tile and the last output pixel
    /// lie inside the buffers.
    fn check_bounds(&self, layer: &Winograd<E>) {
        let block = layer.transform.block();
        let (down, across) = self.blocks(block);
        let read_end = (block * down + 1) * self.input_row
            + (block * across + 1) * self.input_pixel
            + layer.inputs;
        let write_end = (self.height - 1) * self.output_row
            + (self.width - 1) * self.output_pixel
            + layer.outputs;
        assert!(
            read_end <= self.input.len() && write_end <= self.output_len,
            "a Winograd frame reaches past its buffers: reads to {read_end} of {}, writes to {write_end} of {}",
            self.input.len(),
            self.output_len
        );
    }
}

/// Runs the layer on all cores, a range of output blocks (row-major) and of the kernel's
/// blocks of output channels per task ([`task_grid`]).
///
/// # Safety
/// `output` is valid for writes of `output_len` floats that nothing else accesses meanwhile
/// (the bounds themselves are checked here).
pub unsafe fn run<K: Kernel>(kernel: K, layer: &Winograd<K::Elem>, frame: &Frame<K::Elem>) {
    if frame.height == 0 || frame.width == 0 {
        return;
    }
    frame.check_bounds(layer);
    let (down, across) = frame.blocks(layer.transform.block());
    let all_tiles = down * across;
    let values = TRANSFORMED_BYTES / size_of::<K::Elem>();
    let positions = layer.transformed.len();
    let tiles_per_task = (values / (positions * layer.inputs.max(layer.outputs))).max(MIN_TILES);
    let channel_blocks = layer.outputs.div_ceil(layer.transformed[0].block());
    let (tile_groups, channel_groups) = task_grid(
        all_tiles.div_ceil(tiles_per_task),
        if frame.split_channels {
            channel_blocks
        } else {
            1
        },
        rayon::current_num_threads(),
    );
    let tiles_per_task = all_tiles.div_ceil(tile_groups);
    let blocks_per_task = channel_blocks.div_ceil(channel_groups);
    let channel_groups = channel_blocks.div_ceil(blocks_per_task); // none left empty
    let shared = Shared((layer, frame));
    (0..all_tiles.div_ceil(tiles_per_task) * channel_groups)
        .into_par_iter()
        .for_each(|task| {
            let (layer, frame) = shared.get();
            let (group, channels) = (task / channel_groups, task % channel_groups);
            let tiles = group * tiles_per_task..((group + 1) * tiles_per_task).min(all_tiles);
            let first = channels * blocks_per_task;
            let channel_blocks = first..(first + blocks_per_task).min(channel_blocks);
            // SAFETY (both arms): this task writes only its blocks' channels of its tiles'
            // output pixels.
            match layer.transform {
                Transform::F2x2 => unsafe {
                    kernel.compiled(Tiles::<_, 4, 2> {
                        layer,
                        frame,
                        tiles,
                        channel_blocks,
                    })
                },
                Transform::F4x4 => unsafe {
                    kernel.compiled(Tiles::<_, 6, 4> {
                        layer,
                        frame,
                        tiles,
                        channel_blocks,
                    })
                },
            }
        });
}

/// The tasks of a layer as (ranges of tiles, ranges of output channels), for `tile_tasks`
/// ranges of tiles that fill the L2 budget, channels in up to `channel_groups` ranges and
/// `threads` threads: a whole number of rounds over the threads, so that no last, lone task
/// leaves the other cores idle (see benches/RESULTS.md, Zen 4 session 30). Each task reads
/// all of its channels' weights, so tiles split finely would have each of many tasks read
/// all of them for a few tiles: where the tiles give fewer tasks than threads (a 512x512
/// patch's 32x32 level has 256 F(2x2) blocks, 3 tasks' worth, against 16 threads), the
/// channels split as well, in as many ranges as keep each task at its share of the tiles.
fn task_grid(tile_tasks: usize, channel_groups: usize, threads: usize) -> (usize, usize) {
    let tasks = tile_tasks.max(threads).next_multiple_of(threads);
    let channel_groups = (1..=channel_groups.min(tasks))
        .rev()
        .find(|&groups| tasks.is_multiple_of(groups) && tasks / groups >= tile_tasks)
        .unwrap_or(1);
    (tasks / channel_groups, channel_groups)
}

/// A task's output blocks for a transform of `N x N` tiles and `M x M` blocks.
struct Tiles<'a, E, const N: usize, const M: usize> {
    layer: &'a Winograd<E>,
    frame: &'a Frame<'a, E>,
    /// Tile `t` is the output block at (M * (t / across), M * (t % across)), `across` the
    /// frame's blocks a row.
    tiles: std::ops::Range<usize>,
    /// Its blocks of output channels, [`Packed::block`] channels each.
    channel_blocks: std::ops::Range<usize>,
}

impl<E: Element, const N: usize, const M: usize> Compiled for Tiles<'_, E, N, M> {
    type Elem = E;
    /// # Safety
    /// As [`run`]'s, after its bounds check; this task writes only its tiles.
    #[inline(always)]
    unsafe fn run<K: Kernel<Elem = E>>(self, kernel: K) {
        let simd = kernel.simd();
        let lanes = K::Simd::LANES;
        let Tiles {
            layer,
            frame,
            tiles: range,
            channel_blocks,
        } = self;
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        let channels_per_block = layer.transformed[0].block();
        let channels = channel_blocks.start * channels_per_block
            ..(channel_blocks.end * channels_per_block).min(outputs);
        let (_, tiles_per_row) = frame.blocks(M);
        let tiles = range.len();
        let block_of = |tile: usize| {
            let t = range.start + tile;
            (t / tiles_per_row, t % tiles_per_row)
        };
        // Each worker's transformed input and products, reused from task to task; taken out
        // rather than used inside `with_borrow_mut`: code in a closure is not compiled for
        // the instruction set unless it is inlined here.
        let [mut transformed, mut products] = E::scratch().take();
        {
            // Positions' planes a cache line apart from a multiple of 4 KiB: 16 planes at a
            // power-of-two stride would share L1 sets.
            let input_plane = tiles * inputs + 16;
            let output_plane = tiles * outputs + 16;
            transformed.resize(N * N * input_plane, E::default());
            products.resize(N * N * output_plane, E::default());
            // V = Bᵀ d B, position-major: V_ξ is `tiles x inputs`. Loops, not closures: a
            // closure handed to `array::map` or `from_fn` is not compiled for the
            // instruction set, and each vector operation in it became a call (the w = 64
            // model's 64 -> 64 layer took 140 ms in bf16 that way, 33 ms now).
            for tile in 0..tiles {
                let (ty, tx) = block_of(tile);
                let first = (M * ty) * frame.input_row + (M * tx) * frame.input_pixel;
                for c in (0..inputs).step_by(lanes) {
                    let count = lanes.min(inputs - c);
                    // t[j] is column j of Bᵀ d.
                    let mut t = [[simd.zero(); N]; N];
                    for (j, column) in t.iter_mut().enumerate() {
                        for (i, value) in column.iter_mut().enumerate() {
                            let at = first + i * frame.input_row + j * frame.input_pixel + c;
                            // SAFETY: the input tile of output block (ty, tx), channels
                            // c..c + count, is inside the input (`run` checked).
                            *value =
                                unsafe { kernel.load_values(frame.input.as_ptr().add(at), count) };
                        }
                        *column = transform_input(simd, *column);
                    }
                    // Row i of V is Bᵀ applied to row i of t, i.e. element i of each column.
                    for i in 0..N {
                        let row = transform_input(simd, element(&t, i));
                        for (j, v) in row.into_iter().enumerate() {
                            let at = (i * N + j) * input_plane + tile * inputs + c;
                            // SAFETY: `transformed` holds N² planes of tiles * inputs values.
                            unsafe {
                                kernel.store_values(transformed.as_mut_ptr().add(at), v, count)
                            };
                        }
                    }
                }
            }
            // M_ξ = V_ξ U_ξ, one 1x1 layer per position on the convolution kernel.
            for (xi, weights) in layer.transformed.iter().enumerate() {
                let output = &mut products[xi * output_plane..];
                let job = Job {
                    layer: weights,
                    rows: 1,
                    columns: tiles,
                    input: &transformed[xi * input_plane..],
                    input_row: 0,
                    input_pixel: inputs,
                    taps: &[0],
                    output: output.as_mut_ptr(),
                    output_len: output.len(),
                    output_row: 0,
                    output_pixel: outputs,
                    relu: false,
                    stream: false,
                };
                job.check_bounds();
                for block in channel_blocks.clone() {
                    // SAFETY: both scratch matrices hold `tiles` rows of their channels.
                    unsafe { conv::run_rows(kernel, &job, block, 0..1) };
                }
            }
            // Y = Aᵀ M A, plus bias, ReLU, into the output block (its pixels inside the frame).
            for tile in 0..tiles {
                let (ty, tx) = block_of(tile);
                let first = (M * ty) * frame.output_row + (M * tx) * frame.output_pixel;
                let rows = M.min(frame.height - M * ty);
                let columns = M.min(frame.width - M * tx);
                for o in channels.clone().step_by(lanes) {
                    let count = lanes.min(outputs - o);
                    // r[j] is column j of Aᵀ M.
                    let mut r = [[simd.zero(); M]; N];
                    for (j, column) in r.iter_mut().enumerate() {
                        let mut m = [simd.zero(); N];
                        for (i, value) in m.iter_mut().enumerate() {
                            let at = (i * N + j) * output_plane + tile * outputs + o;
                            // SAFETY: `products` holds N² planes of tiles * outputs values.
                            *value =
                                unsafe { kernel.load_values(products.as_ptr().add(at), count) };
                        }
                        *column = transform_output(simd, m);
                    }
                    // SAFETY: `bias` holds `outputs` values.
                    let bias = unsafe { simd.load_first(layer.bias.as_ptr().add(o), count) };
                    for a in 0..rows {
                        let y: [_; M] = transform_output(simd, element(&r, a));
                        for (b, y) in y.into_iter().enumerate().take(columns) {
                            let y = simd.max(simd.add(y, bias), simd.zero());
                            let at = first + a * frame.output_row + b * frame.output_pixel + o;
                            // SAFETY: output pixel (M ty + a, M tx + b), channels
                            // o..o + count, lies inside the frame `run` checked.
                            unsafe {
                                kernel.write_values(frame.output.add(at), y, count, frame.stream)
                            };
                        }
                    }
                }
            }
        }
        E::scratch().set([transformed, products]);
        if frame.stream {
            kernel.fence_streams();
        }
    }
}

/// Element `i` of each of `N` arrays: a row of a matrix stored as columns.
#[inline(always)]
fn element<T: Copy, const N: usize, const K: usize>(columns: &[[T; K]; N], i: usize) -> [T; N] {
    let mut row = [columns[0][i]; N];
    for (value, column) in row.iter_mut().zip(columns) {
        *value = column[i];
    }
    row
}

/// `Bᵀ x` for one column (or row) of an input tile: of 4 points (F(2x2, 3x3)) or 6
/// (F(4x4, 3x3), Lavin and Gray's matrices).
#[inline(always)]
fn transform_input<S: Simd, const N: usize>(simd: S, x: [S::V; N]) -> [S::V; N] {
    let mut y = x;
    if N == 4 {
        y[0] = simd.sub(x[0], x[2]);
        y[1] = simd.add(x[1], x[2]);
        y[2] = simd.sub(x[2], x[1]);
        y[3] = simd.sub(x[1], x[3]);
    } else {
        let (two, four, minus_four, minus_five) = (
            simd.splat(2.0),
            simd.splat(4.0),
            simd.splat(-4.0),
            simd.splat(-5.0),
        );
        let x4_minus_x2 = simd.sub(x[4], x[2]);
        y[0] = simd.mul_add(x[0], four, simd.mul_add(x[2], minus_five, x[4]));
        y[1] = simd.mul_add(simd.add(x[1], x[2]), minus_four, simd.add(x[3], x[4]));
        y[2] = simd.mul_add(simd.sub(x[1], x[2]), four, simd.sub(x[4], x[3]));
        y[3] = simd.mul_add(simd.sub(x[3], x[1]), two, x4_minus_x2);
        y[4] = simd.mul_add(simd.sub(x[1], x[3]), two, x4_minus_x2);
        y[5] = simd.mul_add(x[1], four, simd.mul_add(x[3], minus_five, x[5]));
    }
    y
}

/// `Aᵀ m` for one column (or row) of a product tile: 4 points to 2, or 6 to 4.
#[inline(always)]
fn transform_output<S: Simd, const N: usize, const M: usize>(simd: S, m: [S::V; N]) -> [S::V; M] {
    let mut y = [simd.zero(); M];
    if N == 4 {
        y[0] = simd.add(simd.add(m[0], m[1]), m[2]);
        y[1] = simd.sub(simd.sub(m[1], m[2]), m[3]);
    } else {
        let (sum12, difference12) = (simd.add(m[1], m[2]), simd.sub(m[1], m[2]));
        let (sum34, difference34) = (simd.add(m[3], m[4]), simd.sub(m[3], m[4]));
        y[0] = simd.add(simd.add(m[0], sum12), sum34);
        y[1] = simd.mul_add(difference34, simd.splat(2.0), difference12);
        y[2] = simd.mul_add(sum34, simd.splat(4.0), sum12);
        y[3] = simd.add(
            simd.mul_add(difference34, simd.splat(8.0), difference12),
            m[5],
        );
    }
    y
}
