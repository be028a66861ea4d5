//! 3x3 convolutions as Winograd F(2x2, 3x3) (Lavin and Gray, 2015): each 2x2 block of output
//! pixels comes from its 4x4 input neighbourhood with 16 multiplies per input/output channel
//! pair instead of 36, so the layers that dominate the forward do 2.25x fewer multiplies.
//!
//! Per range of 2x2 output blocks (tiles): the input tiles are transformed (`V = Bᵀ d B`, additions only),
//! each of the 16 positions is one product `V_ξ · U_ξ` on the same kernel as the direct
//! convolution (the weights `U = G g Gᵀ` are transformed once, in f64, when the model loads),
//! and the products are transformed back (`Y = Aᵀ M A`) with bias and ReLU. The differences
//! from the direct convolution are rounding only (the PyTorch parity tests hold at 1e-4;
//! measured 2e-6 at most). On the w = 64 model it took the 512x512 forward from ~1.57 s to
//! ~1.48 s here: the products take half the time, the transforms give back most of it.

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
/// to `output + y * output_row + x * output_pixel`. `height` and `width` are even.
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
    /// The one bounds check of a call: the last 2x2 block's 4x4 neighbourhood (rows and
    /// columns up to `height + 1`, `width + 1`) and its output lie inside the buffers.
    fn check_bounds(&self, layer: &Winograd<E>) {
        let read_end =
            (self.height + 1) * self.input_row + (self.width + 1) * self.input_pixel + layer.inputs;
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

/// Runs the layer on all cores, a range of 2x2 output tiles (row-major) per task.
///
/// # Safety
/// `output` is valid for writes of `output_len` floats that nothing else accesses meanwhile
/// (the bounds themselves are checked here).
pub unsafe fn run<K: Kernel>(kernel: K, layer: &Winograd<K::Elem>, frame: &Frame<K::Elem>) {
    assert!(frame.height.is_multiple_of(2) && frame.width.is_multiple_of(2));
    if frame.height == 0 || frame.width == 0 {
        return;
    }
    frame.check_bounds(layer);
    let all_tiles = (frame.height / 2) * (frame.width / 2);
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
    /// Tile `t` is the output block at (2 * (t / (width / 2)), 2 * (t % (width / 2))).
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
        let tiles_per_row = frame.width / 2;
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
            // V = Bᵀ d B, position-major: V_ξ is `tiles x inputs`.
            for tile in 0..tiles {
                let (ty, tx) = block_of(tile);
                // SAFETY: the 4x4 neighbourhood of output block (2ty, 2tx) is inside the input.
                let d: [[*const E; 4]; 4] = std::array::from_fn(|i| {
                    std::array::from_fn(|j| unsafe {
                        frame
                            .input
                            .as_ptr()
                            .add((2 * ty + i) * frame.input_row + (2 * tx + j) * frame.input_pixel)
                    })
                });
                for c in (0..inputs).step_by(lanes) {
                    let count = lanes.min(inputs - c);
                    // SAFETY: channels c..c + count of each pixel.
                    let d = d.map(|row| {
                        row.map(|pixel| unsafe { kernel.load_values(pixel.add(c), count) })
                    });
                    let t = [0, 1, 2, 3].map(|j| {
                        [
                            simd.sub(d[0][j], d[2][j]),
                            simd.add(d[1][j], d[2][j]),
                            simd.sub(d[2][j], d[1][j]),
                            simd.sub(d[1][j], d[3][j]),
                        ]
                    });
                    // t[j][i] is (Bᵀ d)[i][j]; now the same along each row.
                    #[allow(clippy::needless_range_loop)] // i indexes t's inner arrays
                    for i in 0..4 {
                        let v = [
                            simd.sub(t[0][i], t[2][i]),
                            simd.add(t[1][i], t[2][i]),
                            simd.sub(t[2][i], t[1][i]),
                            simd.sub(t[1][i], t[3][i]),
                        ];
                        for (j, v) in v.into_iter().enumerate() {
                            let at = (i * 4 + j) * input_plane + tile * inputs + c;
                            // SAFETY: `transformed` holds 16 planes of tiles * inputs floats.
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
                // SAFETY: output block (2ty, 2tx) lies inside the frame `run` checked.
                let out: [[*mut E; 2]; 2] = std::array::from_fn(|a| {
                    std::array::from_fn(|b| unsafe {
                        frame.output.add(
                            (2 * ty + a) * frame.output_row + (2 * tx + b) * frame.output_pixel,
                        )
                    })
                });
                for o in (0..outputs).step_by(lanes) {
                    let count = lanes.min(outputs - o);
                    // SAFETY: `products` holds 16 planes of tiles * outputs values, `bias` outputs.
                    let m: [[_; 4]; 4] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| unsafe {
                            let at = (i * 4 + j) * output_plane + tile * outputs + o;
                            kernel.load_values(products.as_ptr().add(at), count)
                        })
                    });
                    let bias = unsafe { simd.load_first(layer.bias.as_ptr().add(o), count) };
                    let r = [0, 1, 2, 3].map(|j| {
                        [
                            simd.add(simd.add(m[0][j], m[1][j]), m[2][j]),
                            simd.sub(simd.sub(m[1][j], m[2][j]), m[3][j]),
                        ]
                    });
                    for a in 0..2 {
                        let y = [
                            simd.add(simd.add(r[0][a], r[1][a]), r[2][a]),
                            simd.sub(simd.sub(r[1][a], r[2][a]), r[3][a]),
                        ];
                        for (b, y) in y.into_iter().enumerate() {
                            let y = simd.max(simd.add(y, bias), simd.zero());
                            // SAFETY: output pixel (2ty + a, 2tx + b), channels o..o + count.
                            unsafe { kernel.store_values(out[a][b].add(o), y, count) };
                        }
                    }
                }
            }
        }
        E::scratch().set([transformed, products]);
    }
}
