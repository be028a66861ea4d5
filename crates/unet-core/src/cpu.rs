//! The f32 CPU path: the same UNet on NHWC activations, every convolution a cache-blocked
//! GEMM (the `gemm` crate, all cores through rayon).
//!
//! Burn's flex backend runs NCHW and materialises each replicate pad, ReLU and concatenation
//! as a pass of its own. Here a 3x3 convolution packs blocks of rows into im2col form with
//! replicate padding done by clamping the coordinates while packing (no padded copy), starts
//! its output from the bias and applies ReLU in place; a transposed convolution is one GEMM
//! whose result is scattered straight into the concatenated buffer its consumer reads.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::checkpoint::FoldedWeights;
use crate::model::UnetConfig;

/// im2col blocks are about this many bytes, so that a block stays in the last-level cache...
const IM2COL_BLOCK_BYTES: usize = 4 << 20;
/// ...but hold at least this many pixels: the deep layers' K is 9216, and GEMMs of a few
/// dozen rows ran at a third of the speed of the others (measured).
const MIN_BLOCK_PIXELS: usize = 2048;

/// An activation: `height * width` pixels of `channels` values, pixel-major (NHWC, one image).
struct Activation {
    height: usize,
    width: usize,
    channels: usize,
    data: Vec<f32>,
}

/// A convolution's weights as a GEMM right-hand side `[k, n]` row-major, and its bias `[n]`.
struct Gemm {
    k: usize,
    n: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

pub struct CpuUnet {
    config: UnetConfig,
    /// `conv1`..`conv9`, two 3x3 convolutions each.
    double: Vec<[Gemm; 2]>,
    /// `up6`..`up9`: rhs `[in, 4 * out]`, column `(dy * 2 + dx) * out + o`.
    up: Vec<Gemm>,
    head: Gemm,
}

impl CpuUnet {
    pub fn new(weights: &FoldedWeights) -> CpuUnet {
        let conv3x3 = |name: &str| {
            // PyTorch [o, i, 3, 3] -> rhs [(ky * 3 + kx) * i + c, o].
            let (values, shape) = weights.get(&format!("{name}.weight"));
            let (o, i) = (shape[0], shape[1]);
            let mut weight = vec![0.0; 9 * i * o];
            for out in 0..o {
                for c in 0..i {
                    for tap in 0..9 {
                        weight[(tap * i + c) * o + out] = values[(out * i + c) * 9 + tap];
                    }
                }
            }
            Gemm {
                k: 9 * i,
                n: o,
                weight,
                bias: weights.get(&format!("{name}.bias")).0.to_vec(),
            }
        };
        let double = (1..=9)
            .map(|l| {
                [
                    conv3x3(&format!("conv{l}.first")),
                    conv3x3(&format!("conv{l}.second")),
                ]
            })
            .collect();
        let up = (6..=9)
            .map(|l| {
                // [i, o, 2, 2] -> rhs [i, (dy * 2 + dx) * o + out].
                let (values, shape) = weights.get(&format!("up{l}.weight"));
                let (i, o) = (shape[0], shape[1]);
                let mut weight = vec![0.0; i * 4 * o];
                for c in 0..i {
                    for out in 0..o {
                        for tap in 0..4 {
                            weight[c * 4 * o + tap * o + out] = values[(c * o + out) * 4 + tap];
                        }
                    }
                }
                let bias = weights.get(&format!("up{l}.bias")).0;
                Gemm {
                    k: i,
                    n: 4 * o,
                    weight,
                    // The same bias for each of the four taps.
                    bias: bias.repeat(4),
                }
            })
            .collect();
        let (values, shape) = weights.get("conv10.weight");
        let (o, i) = (shape[0], shape[1]);
        let head = Gemm {
            k: i,
            n: o,
            weight: (0..i * o).map(|j| values[(j % o) * i + j / o]).collect(),
            bias: weights.get("conv10.bias").0.to_vec(),
        };
        CpuUnet {
            config: weights.config,
            double,
            up,
            head,
        }
    }

    /// One normalised image, CHW, to its sigmoid outputs, CHW.
    pub fn forward(&self, chw: &[f32], height: usize, width: usize) -> Vec<f32> {
        let channels = self.config.in_channels;
        let plane = height * width;
        let mut x = Activation {
            height,
            width,
            channels,
            data: vec![0.0; plane * channels],
        };
        for (p, pixel) in x.data.chunks_exact_mut(channels).enumerate() {
            for (c, value) in pixel.iter_mut().enumerate() {
                *value = chw[c * plane + p];
            }
        }
        // The encoder: each level's output is kept for the decoder before pooling.
        let mut skips = Vec::new();
        for level in 0..5 {
            let y = self.double_conv(level, &x);
            if level < 4 {
                x = max_pool(&y);
                skips.push(y);
            } else {
                x = y;
            }
        }
        for (i, up) in self.up.iter().enumerate() {
            let skip = skips.pop().expect("one skip per decoder level");
            let joined = up_and_concat(up, &x, &skip);
            x = self.double_conv(5 + i, &joined);
        }
        let logits = gemm_rows(&self.head, &x.data, x.height * x.width, false);
        let out = self.head.n;
        let mut chw_out = vec![0.0; out * plane];
        for (p, pixel) in logits.chunks_exact(out).enumerate() {
            for (c, &logit) in pixel.iter().enumerate() {
                chw_out[c * plane + p] = 1.0 / (1.0 + (-logit).exp());
            }
        }
        chw_out
    }

    fn double_conv(&self, index: usize, x: &Activation) -> Activation {
        let [first, second] = &self.double[index];
        let y = conv3x3_relu(first, x);
        conv3x3_relu(second, &y)
    }
}

/// `out = bias + lhs * rhs` for `rows` rows of `lhs` (`[rows, k]` row-major); ReLU if asked.
fn gemm_rows(g: &Gemm, lhs: &[f32], rows: usize, relu: bool) -> Vec<f32> {
    let mut out = vec![0.0; rows * g.n];
    gemm_into(g, lhs, rows, &mut out, relu);
    out
}

fn gemm_into(g: &Gemm, lhs: &[f32], rows: usize, out: &mut [f32], relu: bool) {
    debug_assert_eq!(lhs.len(), rows * g.k);
    for row in out.chunks_exact_mut(g.n) {
        row.copy_from_slice(&g.bias);
    }
    // SAFETY: the three matrices are row-major with the strides given, and `out` holds
    // `rows * n`, `lhs` `rows * k`, `rhs` `k * n` elements.
    unsafe {
        gemm::gemm(
            rows,
            g.n,
            g.k,
            out.as_mut_ptr(),
            1,
            g.n as isize,
            true,
            lhs.as_ptr(),
            1,
            g.k as isize,
            g.weight.as_ptr(),
            1,
            g.n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
    if relu {
        out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// A 3x3 convolution with replicate padding, bias and ReLU, in blocks of rows.
fn conv3x3_relu(g: &Gemm, x: &Activation) -> Activation {
    let (h, w, c) = (x.height, x.width, x.channels);
    let rows_per_block = (IM2COL_BLOCK_BYTES / (w * g.k * 4))
        .max(MIN_BLOCK_PIXELS.div_ceil(w))
        .clamp(1, h);
    let mut out = vec![0.0; h * w * g.n];
    let mut packed = vec![0.0; rows_per_block * w * g.k];
    for y0 in (0..h).step_by(rows_per_block) {
        let rows = rows_per_block.min(h - y0);
        let packed = &mut packed[..rows * w * g.k];
        // im2col: pixel (y, x)'s row holds its 3x3 neighbourhood, edges repeated.
        packed
            .par_chunks_exact_mut(w * g.k)
            .enumerate()
            .for_each(|(r, line)| {
                let y = y0 + r;
                for (px, patch) in line.chunks_exact_mut(g.k).enumerate() {
                    for ky in 0..3 {
                        let sy = (y + ky).saturating_sub(1).min(h - 1);
                        for kx in 0..3 {
                            let sx = (px + kx).saturating_sub(1).min(w - 1);
                            let src = (sy * w + sx) * c;
                            let tap = (ky * 3 + kx) * c;
                            patch[tap..tap + c].copy_from_slice(&x.data[src..src + c]);
                        }
                    }
                }
            });
        let dst = &mut out[y0 * w * g.n..(y0 + rows) * w * g.n];
        gemm_into(g, packed, rows * w, dst, true);
    }
    Activation {
        height: h,
        width: w,
        channels: g.n,
        data: out,
    }
}

fn max_pool(x: &Activation) -> Activation {
    let (h, w, c) = (x.height / 2, x.width / 2, x.channels);
    let mut data = vec![0.0; h * w * c];
    data.par_chunks_exact_mut(w * c)
        .enumerate()
        .for_each(|(y, line)| {
            for px in 0..w {
                for ch in 0..c {
                    let at = |dy: usize, dx: usize| {
                        x.data[((2 * y + dy) * x.width + 2 * px + dx) * c + ch]
                    };
                    line[px * c + ch] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
        });
    Activation {
        height: h,
        width: w,
        channels: c,
        data,
    }
}

/// The 2x2 stride-2 transposed convolution of `x`, its channels first and `skip`'s after
/// (PyTorch's `cat([up(x), skip], dim=1)`), in one buffer.
fn up_and_concat(g: &Gemm, x: &Activation, skip: &Activation) -> Activation {
    let out_channels = g.n / 4;
    let taps = gemm_rows(g, &x.data, x.height * x.width, false);
    let (h, w) = (2 * x.height, 2 * x.width);
    let channels = out_channels + skip.channels;
    let mut data = vec![0.0; h * w * channels];
    data.par_chunks_exact_mut(w * channels)
        .enumerate()
        .for_each(|(y, line)| {
            for px in 0..w {
                let tap = (y % 2) * 2 + px % 2;
                let src = ((y / 2) * x.width + px / 2) * g.n + tap * out_channels;
                let dst = px * channels;
                line[dst..dst + out_channels].copy_from_slice(&taps[src..src + out_channels]);
                let skip_at = (y * w + px) * skip.channels;
                line[dst + out_channels..dst + channels]
                    .copy_from_slice(&skip.data[skip_at..skip_at + skip.channels]);
            }
        });
    Activation {
        height: h,
        width: w,
        channels,
        data,
    }
}
