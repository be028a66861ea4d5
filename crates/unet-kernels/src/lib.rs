//! The UNet's layers as plain CubeCL kernels, one unit per output value, on NHWC activations
//! stored as `F` (f32 or f16) and accumulated in f32 (as cuDNN and PyTorch do for f16):
//!
//! - [`conv3x3`]: replicate padding by clamping the input coordinates (no padded copy),
//!   BatchNorm already folded into the weights, bias and ReLU in the epilogue, and two input
//!   tensors read as one (the skip concatenation is never written);
//! - [`max_pool2x2`] and [`conv_transpose2x2`];
//! - [`head`]: the 1x1 convolution, the sigmoid and the max over channels in one kernel, so
//!   only the per-pixel map leaves the device.
//!
//! [`GpuUnet`] runs the whole forward with them on any CubeCL runtime. These are the
//! reference variants of issue 8's kernels, checked here against PyTorch on wgpu; the
//! tensor-core variants are to be written and timed on a GPU.

mod network;

pub use network::GpuUnet;

use cubecl::prelude::*;

/// `output[n, y, x, o] = relu(bias[o] + sum over taps and input channels)` for a batch of
/// NHWC images, where the input channels are `first`'s `first_channels` then `second`'s
/// `second_channels` (PyTorch's `cat([first, second], dim=1)`), and the weights are
/// `[(ky * 3 + kx) * inputs + c][o]`.
#[cube(launch_unchecked)]
// `saturating_sub` is not in the kernel language.
#[allow(clippy::too_many_arguments, clippy::implicit_saturating_sub)]
pub fn conv3x3<F: Float>(
    first: &[F],
    second: &[F],
    weight: &[F],
    bias: &[F],
    output: &mut [F],
    height: usize,
    width: usize,
    first_channels: usize,
    second_channels: usize,
    outputs: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= output.len() {
        terminate!();
    }
    let o = position % outputs;
    let pixel = position / outputs;
    let x = pixel % width;
    let y = (pixel / width) % height;
    let image = pixel / (width * height);
    let inputs = first_channels + second_channels;
    let mut sum = f32::cast_from(bias[o]);
    for ky in 0..3usize {
        // Replicate padding: row y + ky - 1 clamped to the image.
        let mut sy = y + ky;
        if sy > 0 {
            sy -= 1;
        }
        if sy >= height {
            sy = height - 1;
        }
        for kx in 0..3usize {
            let mut sx = x + kx;
            if sx > 0 {
                sx -= 1;
            }
            if sx >= width {
                sx = width - 1;
            }
            let source = (image * height + sy) * width + sx;
            let taps = (ky * 3 + kx) * inputs;
            for c in 0..first_channels {
                sum += f32::cast_from(first[source * first_channels + c])
                    * f32::cast_from(weight[(taps + c) * outputs + o]);
            }
            for c in 0..second_channels {
                sum += f32::cast_from(second[source * second_channels + c])
                    * f32::cast_from(weight[(taps + first_channels + c) * outputs + o]);
            }
        }
    }
    if sum < 0.0 {
        sum = 0.0;
    }
    output[position] = F::cast_from(sum);
}

/// 2x2 max pooling: `output` is `[n, height / 2, width / 2, channels]` (the images' rows
/// stacked: heights are even, so no window straddles two images).
#[cube(launch_unchecked)]
pub fn max_pool2x2<F: Float>(input: &[F], output: &mut [F], width: usize, channels: usize) {
    let position = ABSOLUTE_POS;
    if position >= output.len() {
        terminate!();
    }
    let c = position % channels;
    let pixel = position / channels;
    let out_width = width / 2;
    let x = (pixel % out_width) * 2;
    let y = (pixel / out_width) * 2;
    let at = (y * width + x) * channels + c;
    let row = width * channels;
    let mut best = input[at];
    if input[at + channels] > best {
        best = input[at + channels];
    }
    if input[at + row] > best {
        best = input[at + row];
    }
    if input[at + row + channels] > best {
        best = input[at + row + channels];
    }
    output[position] = best;
}

/// The 2x2 stride-2 transposed convolution: `output` is `[n, 2 * height, 2 * width,
/// outputs]` (rows stacked across images, as for pooling), weights
/// `[(dy * 2 + dx) * inputs + c][o]`.
#[cube(launch_unchecked)]
pub fn conv_transpose2x2<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    output: &mut [F],
    width: usize,
    inputs: usize,
    outputs: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= output.len() {
        terminate!();
    }
    let o = position % outputs;
    let pixel = position / outputs;
    let out_x = pixel % (2 * width);
    let out_y = pixel / (2 * width);
    let source = (out_y / 2) * width + out_x / 2;
    let tap = (out_y % 2) * 2 + out_x % 2;
    let mut sum = f32::cast_from(bias[o]);
    for c in 0..inputs {
        sum += f32::cast_from(input[source * inputs + c])
            * f32::cast_from(weight[(tap * inputs + c) * outputs + o]);
    }
    output[position] = F::cast_from(sum);
}

/// The head: `map[pixel] = max over o of sigmoid(bias[o] + sum over c of x[pixel, c] * weight[c][o])`.
#[cube(launch_unchecked)]
pub fn head<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    map: &mut [F],
    inputs: usize,
    outputs: usize,
) {
    let pixel = ABSOLUTE_POS;
    if pixel >= map.len() {
        terminate!();
    }
    let mut best = 0.0f32;
    for o in 0..outputs {
        let mut logit = f32::cast_from(bias[o]);
        for c in 0..inputs {
            logit +=
                f32::cast_from(input[pixel * inputs + c]) * f32::cast_from(weight[c * outputs + o]);
        }
        let probability = 1.0 / (1.0 + (0.0 - logit).exp());
        if probability > best {
            best = probability;
        }
    }
    map[pixel] = F::cast_from(best);
}
