//! 3x3 convolutions as Winograd F(2x2, 3x3) (Lavin and Gray, 2015): each 2x2 block of output
//! pixels comes from its 4x4 input neighbourhood with 16 multiplies per input/output channel
//! pair instead of 36, so the layers that dominate the forward do 2.25x fewer multiplies.
//!
//! Per range of 2x2 output blocks (tiles): the input tiles are transformed (`V = Bᵀ d B`, additions only),
//! each of the 16 positions is one product `V_ξ · U_ξ` on the same kernel as the direct
//! convolution (the weights `U = G g Gᵀ` are transformed once, in f64, when the model loads),
//! and the products are transformed back (`Y = Aᵀ M A`) with bias and ReLU. The differences
//! from the direct convolution are rounding only (the PyTorch parity tests hold at 1e-4 in
//! f32, measured 4e-6 at most; in bf16 the products are rounded once more, before the
//! output transform). On the w = 64 model (AMD EPYC, Zen 4) it took the 512x512 forward from
//! ~1.85 s to ~1.2 s in f32 and from ~0.96 s to ~0.6 s in bf16.

use rayon::prelude::*;

use super::conv::{self, Job, Packed, Shared};
use super::simd::{Compiled, Element, Kernel, Simd};

/// Bytes of transformed input (or products) per task (2 MB), so that they stay in the core's
/// L2 cache between the transform and the products...
const TRANSFORMED_BYTES: usize = 2 << 20;
/// ...but at least this many tiles, or the products are too short to reuse their weights.
const MIN_TILES: usize = 96;

pub struct Winograd<E> {
    /// Input channels as read (see [`Packed::inputs`]).
    pub inputs: usize,
    pub outputs: usize,
    /// `U_ξ` for each of the 16 positions, packed as a 1x1 layer with no bias.
    transformed: Vec<Packed<E>>,
    bias: Vec<f32>,
}

impl<E: Element> Winograd<E> {
    /// As [`Packed::new`] with 9 taps (`tap = ky * 3 + kx`).
    pub fn new(
        (inputs, outputs): (usize, usize),
        kernel: (usize, usize),
        weight: impl Fn(usize, usize, usize) -> f32,
        bias: &[f32],
    ) -> Winograd<E> {
        // U = G g Gᵀ for every (input, output) pair, position-major.
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![[0.0f32; 16]; inputs * outputs];
        for c in 0..inputs {
            for o in 0..outputs {
                let g = |ky: usize, kx: usize| f64::from(weight(ky * 3 + kx, c, o));
                for (xi, value) in u[c * outputs + o].iter_mut().enumerate() {
                    let (i, j) = (xi / 4, xi % 4);
                    let mut sum = 0.0;
                    for (ky, gy) in G[i].iter().enumerate() {
                        for (kx, gx) in G[j].iter().enumerate() {
                            sum += gy * g(ky, kx) * gx;
                        }
                    }
                    *value = sum as f32;
                }
            }
        }
        let zeros = vec![0.0; outputs];
        let transformed = (0..16)
            .map(|xi| {
                Packed::new(
                    1,
                    (inputs, outputs),
                    kernel,
                    |_, c, o| u[c * outputs + o][xi],
                    &zeros,
                )
            })
            .collect::<Vec<_>>();
        Winograd {
            inputs: transformed[0].inputs,
            outputs,
            transformed,
            bias: bias.to_vec(),
        }
    }
}

/// Where a layer reads and writes: output pixel `(y, x)`'s 3x3 neighbourhood starts at
/// `input + y * input_row + x * input_pixel` (a padded buffer), and its `outputs` channels go
/// to `output + y * output_row + x * output_pixel`.
///
/// On an odd side the last 2x2 blocks stick out by one pixel: their extra outputs land one
/// pixel past the output (its border, which the caller refreshes after the layer) and their
/// extra inputs one past the input's border (a spare row the caller provides). Only those
/// extra outputs depend on those inputs: the transforms never mix row or column 3 of the
/// input tile into row or column 0 of the output block.
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
}

impl<E> Frame<'_, E> {
    /// 2x2 blocks down and across.
    fn blocks(&self) -> (usize, usize) {
        (self.height.div_ceil(2), self.width.div_ceil(2))
    }

    /// The one bounds check of a call: the last 2x2 block's 4x4 neighbourhood and its output
    /// lie inside the buffers.
    fn check_bounds(&self, layer: &Winograd<E>) {
        let (down, across) = self.blocks();
        let read_end =
            (2 * down + 1) * self.input_row + (2 * across + 1) * self.input_pixel + layer.inputs;
        let write_end =
            (2 * down - 1) * self.output_row + (2 * across - 1) * self.output_pixel + layer.outputs;
        assert!(
            read_end <= self.input.len() && write_end <= self.output_len,
            "a Winograd frame reaches past its buffers: reads to {read_end} of {}, writes to {write_end} of {}",
            self.input.len(),
            self.output_len
        );
    }
}

/// Runs the layer on all cores, a range of 2x2 output tiles (row-major) per task.
///
/// # Safety
/// `output` is valid for writes of `output_len` floats that nothing else accesses meanwhile
/// (the bounds themselves are checked here).
pub unsafe fn run<K: Kernel>(kernel: K, layer: &Winograd<K::Elem>, frame: &Frame<K::Elem>) {
    if frame.height == 0 || frame.width == 0 {
        return;
    }
    frame.check_bounds(layer);
    let (down, across) = frame.blocks();
    let all_tiles = down * across;
    let values = TRANSFORMED_BYTES / size_of::<K::Elem>();
    let tiles_per_task = (values / (16 * layer.inputs.max(layer.outputs))).max(MIN_TILES);
    let shared = Shared((layer, frame));
    (0..all_tiles.div_ceil(tiles_per_task))
        .into_par_iter()
        .for_each(|task| {
            let (layer, frame) = shared.get();
            let tiles = task * tiles_per_task..((task + 1) * tiles_per_task).min(all_tiles);
            // SAFETY: this task writes only its tiles' output pixels.
            unsafe {
                kernel.compiled(Tiles {
                    layer,
                    frame,
                    tiles,
                })
            };
        });
}

struct Tiles<'a, E> {
    layer: &'a Winograd<E>,
    frame: &'a Frame<'a, E>,
    /// Tile `t` is the output block at (2 * (t / across), 2 * (t % across)), `across` the
    /// frame's blocks a row.
    tiles: std::ops::Range<usize>,
}

impl<E: Element> Compiled for Tiles<'_, E> {
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
        } = self;
        let (inputs, outputs) = (layer.inputs, layer.outputs);
        let (_, tiles_per_row) = frame.blocks();
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
            transformed.resize(16 * input_plane, E::default());
            products.resize(16 * output_plane, E::default());
            // V = Bᵀ d B, position-major: V_ξ is `tiles x inputs`. Loops, not closures: a
            // closure handed to `array::map` or `from_fn` is not compiled for the
            // instruction set, and each vector operation in it became a call (the w = 64
            // model's 64 -> 64 layer took 140 ms in bf16 that way, 33 ms now).
            for tile in 0..tiles {
                let (ty, tx) = block_of(tile);
                let first = (2 * ty) * frame.input_row + (2 * tx) * frame.input_pixel;
                for c in (0..inputs).step_by(lanes) {
                    let count = lanes.min(inputs - c);
                    // t[j] is column j of Bᵀ d.
                    let mut t = [[simd.zero(); 4]; 4];
                    for (j, column) in t.iter_mut().enumerate() {
                        for (i, value) in column.iter_mut().enumerate() {
                            let at = first + i * frame.input_row + j * frame.input_pixel + c;
                            // SAFETY: the 4x4 neighbourhood of output block (2ty, 2tx),
                            // channels c..c + count, is inside the input (`run` checked).
                            *value =
                                unsafe { kernel.load_values(frame.input.as_ptr().add(at), count) };
                        }
                        *column = transform_input(simd, *column);
                    }
                    // Row i of V is Bᵀ applied to row i of t, i.e. element i of each column.
                    for i in 0..4 {
                        let row = transform_input(simd, element(&t, i));
                        for (j, v) in row.into_iter().enumerate() {
                            let at = (i * 4 + j) * input_plane + tile * inputs + c;
                            // SAFETY: `transformed` holds 16 planes of tiles * inputs values.
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
                };
                job.check_bounds();
                for block in 0..outputs.div_ceil(weights.block()) {
                    // SAFETY: both scratch matrices hold `tiles` rows of their channels.
                    unsafe { conv::run_rows(kernel, &job, block, 0..1) };
                }
            }
            // Y = Aᵀ M A, plus bias, ReLU, into the 2x2 output block.
            for tile in 0..tiles {
                let (ty, tx) = block_of(tile);
                let first = (2 * ty) * frame.output_row + (2 * tx) * frame.output_pixel;
                for o in (0..outputs).step_by(lanes) {
                    let count = lanes.min(outputs - o);
                    // r[j] is column j of Aᵀ M.
                    let mut r = [[simd.zero(); 2]; 4];
                    for (j, column) in r.iter_mut().enumerate() {
                        let mut m = [simd.zero(); 4];
                        for (i, value) in m.iter_mut().enumerate() {
                            let at = (i * 4 + j) * output_plane + tile * outputs + o;
                            // SAFETY: `products` holds 16 planes of tiles * outputs values.
                            *value =
                                unsafe { kernel.load_values(products.as_ptr().add(at), count) };
                        }
                        *column = transform_output(simd, m);
                    }
                    // SAFETY: `bias` holds `outputs` values.
                    let bias = unsafe { simd.load_first(layer.bias.as_ptr().add(o), count) };
                    for a in 0..2 {
                        let y = transform_output(simd, element(&r, a));
                        for (b, y) in y.into_iter().enumerate() {
                            let y = simd.max(simd.add(y, bias), simd.zero());
                            let at = first + a * frame.output_row + b * frame.output_pixel + o;
                            // SAFETY: output pixel (2ty + a, 2tx + b), channels o..o + count,
                            // lies inside the frame `run` checked.
                            unsafe { kernel.store_values(frame.output.add(at), y, count) };
                        }
                    }
                }
            }
        }
        E::scratch().set([transformed, products]);
    }
}

/// Element `i` of each of four arrays: a row of a matrix stored as columns.
#[inline(always)]
fn element<T: Copy, const N: usize>(columns: &[[T; N]; 4], i: usize) -> [T; 4] {
    [columns[0][i], columns[1][i], columns[2][i], columns[3][i]]
}

/// `Bᵀ x` for one column (or row) of a 4x4 input tile.
#[inline(always)]
fn transform_input<S: Simd>(simd: S, x: [S::V; 4]) -> [S::V; 4] {
    [
        simd.sub(x[0], x[2]),
        simd.add(x[1], x[2]),
        simd.sub(x[2], x[1]),
        simd.sub(x[1], x[3]),
    ]
}

/// `Aᵀ m` for one column (or row) of a 4x4 product tile.
#[inline(always)]
fn transform_output<S: Simd>(simd: S, m: [S::V; 4]) -> [S::V; 2] {
    [
        simd.add(simd.add(m[0], m[1]), m[2]),
        simd.sub(simd.sub(m[1], m[2]), m[3]),
    ]
}
