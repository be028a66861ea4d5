//! The UNet's layers as CubeCL kernels for unet-core's fused engine (`FusedUnet`), on NHWC
//! activations stored as `F` (f32 or f16) and summed in f32 (as cuDNN and PyTorch do for f16).
//!
//! Every activation lives in a *bordered* buffer, `[n, height + 2, width + 2, stride]`: its
//! one-pixel border repeats the edge pixels (replicate padding), written right after the
//! image (by [`replicate_border()`], or by the kernel that writes the image), so a 3x3
//! convolution reads its nine taps with neither a padding pass nor clamping. A buffer may
//! hold two layers' outputs side by side in its channels (the decoder's concatenation: the
//! upsampled channels first, then the skip, as PyTorch's `cat([up(x), skip], dim=1)`), so
//! each producer writes its channels at an offset and the skip is never copied.
//!
//! - [`input_bordered()`]: the patches' packed RGB bytes, normalised, into the first buffer;
//! - [`conv3x3()`]: a 3x3 convolution (BatchNorm folded into it), bias and ReLU included, into
//!   the interior of its bordered output at its channel offset, as unet-core's tensor-core
//!   main loop (cubek's, with this epilogue in its store) writes it too; then
//!   [`replicate_border()`], the border around what it wrote, and where a level ends
//!   [`max_pool_bordered()`], each 2x2 block's max into the next level's input;
//! - [`up2x2()`]: the 2x2 stride-2 transposed convolution, into the interior of its half of a
//!   concatenation (on tensor cores, one 1x1 GEMM to four times the channels scattered in its
//!   store); then [`replicate_border()`];
//! - [`head()`]: the 1x1 convolution, the sigmoid and the max over channels in one kernel, so
//!   only the per-pixel map leaves the device (or every channel's sigmoid, for the raw output).
//!
//! These are the portable variants, one unit per output value, for any CubeCL runtime and
//! tested on software Vulkan; on CUDA in f16, unet-core's fused engine runs the convolutions'
//! main loops on tensor cores (cubek) and keeps the rest.
//!
//! Every kernel stops at the `units` its launcher passes, never at a buffer's length: cubecl
//! hands a kernel its buffer's allocated length (not the one given to
//! `BufferArg::from_raw_parts`; its memory pools round allocations up), and the engine's
//! grids past 65 535 cubes are rounded up to whole rows: units past the count would write
//! beyond the images they belong to.

use cubecl::prelude::*;

/// Index `bordered - 1` clamped to `0..side`: the image pixel a bordered position repeats.
#[cube]
fn unbordered(bordered: usize, side: usize) -> usize {
    let mut index = 0;
    if bordered > side {
        index = side - 1;
    } else if bordered > 0 {
        index = bordered - 1;
    }
    index
}

/// Where a bordered buffer of images `width` wide holds pixel `(y, x)` (bordered
/// coordinates) of `image`, channel 0.
#[cube]
fn bordered_at(image: usize, y: usize, x: usize, height: usize, width: usize) -> usize {
    (image * (height + 2) + y) * (width + 2) + x
}

/// The `k`-th (`k` in 0..3) bordered position that repeats position `i` of a side of `side`
/// pixels: its own, `i + 1`; the leading border, 0, if `i` is the first; the trailing border,
/// `side + 1`, if `i` is the last; else `side + 2`, none.
#[cube]
fn repeated_at(i: usize, side: usize, k: usize) -> usize {
    let mut at = side + 2;
    if k == 0 {
        at = i + 1;
    }
    if k == 1 && i == 0 {
        at = 0;
    }
    if k == 2 && i + 1 == side {
        at = side + 1;
    }
    at
}

/// Stores `value` as pixel `(y, x)`, channel `channel`, of `image` in a bordered buffer of
/// `stride` channels, and as every border pixel that repeats it (up to three more).
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_bordered<F: Float>(
    output: &mut [F],
    value: F,
    image: usize,
    y: usize,
    x: usize,
    height: usize,
    width: usize,
    stride: usize,
    channel: usize,
) {
    for row in 0..3usize {
        let by = repeated_at(y, height, row);
        if by <= height + 1 {
            for column in 0..3usize {
                let bx = repeated_at(x, width, column);
                if bx <= width + 1 {
                    output[bordered_at(image, by, bx, height, width) * stride + channel] = value;
                }
            }
        }
    }
}

/// `bias[o] + sum over taps and input channels` at pixel `(y, x)` of `image`: a valid 3x3
/// convolution over a bordered input of `inputs` channels, weights `[(ky * 3 + kx) * inputs
/// + c][o]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn conv3x3_at<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    image: usize,
    y: usize,
    x: usize,
    height: usize,
    width: usize,
    inputs: usize,
    outputs: usize,
    o: usize,
) -> f32 {
    let mut sum = f32::cast_from(bias[o]);
    for ky in 0..3usize {
        for kx in 0..3usize {
            let source = bordered_at(image, y + ky, x + kx, height, width) * inputs;
            let taps = (ky * 3 + kx) * inputs;
            for c in 0..inputs {
                sum += f32::cast_from(input[source + c])
                    * f32::cast_from(weight[(taps + c) * outputs + o]);
            }
        }
    }
    sum
}

/// The batch's RGB bytes (packed four to a word, pixel after pixel) normalised as the users'
/// pipeline does, `(p / 255 - 0.5) / 0.5`, into a bordered buffer of 3 channels; one unit per
/// bordered value, `units` of them.
#[cube(launch_unchecked)]
pub fn input_bordered<F: Float>(
    rgb: &[u32],
    output: &mut [F],
    units: usize,
    height: usize,
    width: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let c = position % 3;
    let pixel = position / 3;
    let x = unbordered(pixel % (width + 2), width);
    let y = unbordered((pixel / (width + 2)) % (height + 2), height);
    let image = pixel / ((width + 2) * (height + 2));
    let byte = ((image * height + y) * width + x) * 3 + c;
    let value = (rgb[byte / 4] >> u32::cast_from((byte % 4) * 8)) & 255;
    output[position] = F::cast_from((f32::cast_from(value) / 255.0 - 0.5) / 0.5);
}

/// The portable main loop of a 3x3 convolution: `relu(bias[o] + sum)` for every output value,
/// into channels `offset..offset + outputs` of the interior of a bordered output of `stride`
/// channels (what unet-core's tensor-core main loop writes too); one unit per value, `units`
/// of them. The border is [`replicate_border()`]'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn conv3x3<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    output: &mut [F],
    units: usize,
    height: usize,
    width: usize,
    inputs: usize,
    outputs: usize,
    stride: usize,
    offset: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let o = position % outputs;
    let pixel = position / outputs;
    let x = pixel % width;
    let y = (pixel / width) % height;
    let image = pixel / (width * height);
    let sum = conv3x3_at(
        input, weight, bias, image, y, x, height, width, inputs, outputs, o,
    );
    let at = bordered_at(image, y + 1, x + 1, height, width) * stride + offset + o;
    output[at] = F::cast_from(f32::max(sum, 0.0));
}

/// The border of channels `offset..offset + channels` of a bordered buffer of `stride`
/// channels (images `height` x `width`): each border pixel repeats the image pixel nearest it.
/// One unit per border pixel and channel, `units` of them (`2 * (width + 2) + 2 * height`
/// border pixels an image).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn replicate_border<F: Float>(
    output: &mut [F],
    units: usize,
    height: usize,
    width: usize,
    channels: usize,
    stride: usize,
    offset: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let c = position % channels;
    let around = 2 * (width + 2) + 2 * height;
    let pixel = (position / channels) % around;
    let image = position / (channels * around);
    // The rows above and below, then the left and right pixels of each image row.
    let mut y = 0usize;
    let mut x = pixel;
    if pixel >= 2 * (width + 2) {
        let side = pixel - 2 * (width + 2);
        y = side / 2 + 1;
        x = (side % 2) * (width + 1);
    } else if pixel >= width + 2 {
        y = height + 1;
        x = pixel - (width + 2);
    }
    let from = bordered_at(
        image,
        unbordered(y, height) + 1,
        unbordered(x, width) + 1,
        height,
        width,
    );
    let to = bordered_at(image, y, x, height, width);
    output[to * stride + offset + c] = output[from * stride + offset + c];
}

/// 2x2 max pooling of channels `offset..offset + channels` of a bordered input of `stride`
/// channels (images `height` x `width`, even) into a bordered output of `channels` channels,
/// half the size, its border included. One unit per output value, `units` of them.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn max_pool_bordered<F: Float>(
    input: &[F],
    pooled: &mut [F],
    units: usize,
    height: usize,
    width: usize,
    channels: usize,
    stride: usize,
    offset: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let (high, wide) = (height / 2, width / 2);
    let c = position % channels;
    let block = position / channels;
    let bx = block % wide;
    let by = (block / wide) % high;
    let image = block / (wide * high);
    // ReLU's outputs are at least 0, so 0 is the max's identity.
    let mut best = F::new(0.0);
    for dy in 0..2usize {
        for dx in 0..2usize {
            let at = bordered_at(image, 2 * by + dy + 1, 2 * bx + dx + 1, height, width);
            best = F::max(best, input[at * stride + offset + c]);
        }
    }
    store_bordered(pooled, best, image, by, bx, high, wide, channels, c);
}

/// Output value `position` of a 2x2 stride-2 transposed convolution of an input `height` x
/// `width` (one unit per output value, `outputs` channels innermost): the bordered input pixel
/// it comes from.
#[cube]
fn up_source(position: usize, height: usize, width: usize, outputs: usize) -> usize {
    let pixel = position / outputs;
    let x = pixel % (2 * width);
    let y = (pixel / (2 * width)) % (2 * height);
    let image = pixel / (4 * width * height);
    bordered_at(image, y / 2 + 1, x / 2 + 1, height, width)
}

/// Output value `position`'s tap, `dy * 2 + dx` (as in [`up_source`]).
#[cube]
fn up_tap(position: usize, width: usize, outputs: usize) -> usize {
    let pixel = position / outputs;
    let x = pixel % (2 * width);
    let y = pixel / (2 * width);
    (y % 2) * 2 + x % 2
}

/// Stores `value` as output value `position` of the transposed convolution (as in
/// [`up_source`]): channel `position % outputs` of the interior of a bordered output of
/// `stride` channels, twice the size.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_up<F: Float>(
    output: &mut [F],
    value: F,
    position: usize,
    height: usize,
    width: usize,
    outputs: usize,
    stride: usize,
) {
    let pixel = position / outputs;
    let x = pixel % (2 * width);
    let y = (pixel / (2 * width)) % (2 * height);
    let image = pixel / (4 * width * height);
    let at = bordered_at(image, y + 1, x + 1, 2 * height, 2 * width);
    output[at * stride + position % outputs] = value;
}

/// The 2x2 stride-2 transposed convolution of a bordered input (`height` x `width`) into
/// channels `0..outputs` of the interior of a bordered output of `stride` channels, twice the
/// size; weights `[(dy * 2 + dx) * inputs + c][o]`. The border is [`replicate_border()`]'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn up2x2<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    output: &mut [F],
    units: usize,
    height: usize,
    width: usize,
    inputs: usize,
    outputs: usize,
    stride: usize,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let o = position % outputs;
    let source = up_source(position, height, width, outputs) * inputs;
    let tap = up_tap(position, width, outputs);
    let mut sum = f32::cast_from(bias[o]);
    for c in 0..inputs {
        sum += f32::cast_from(input[source + c])
            * f32::cast_from(weight[(tap * inputs + c) * outputs + o]);
    }
    store_up(
        output,
        F::cast_from(sum),
        position,
        height,
        width,
        outputs,
        stride,
    );
}

/// The head's logit for output channel `o` at `source`, the first channel of a pixel in a
/// bordered input: `bias[o] + sum over c of x[c] * weight[c][o]`.
#[cube]
fn head_logit<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    source: usize,
    inputs: usize,
    outputs: usize,
    o: usize,
) -> f32 {
    let mut logit = f32::cast_from(bias[o]);
    for c in 0..inputs {
        logit += f32::cast_from(input[source + c]) * f32::cast_from(weight[c * outputs + o]);
    }
    logit
}

/// The head on a bordered input: the sigmoid of the 1x1 convolution's logits, in f32,
/// unbordered. With `every_channel` each output channel's, `[n, outputs, height, width]` (the
/// raw output PyTorch's model returns); else their max per pixel, `[n, height, width]` (the
/// probability map), so that only the map leaves the device. One unit per value of `result`,
/// `units` of them.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn head<F: Float>(
    input: &[F],
    weight: &[F],
    bias: &[F],
    result: &mut [f32],
    units: usize,
    height: usize,
    width: usize,
    inputs: usize,
    outputs: usize,
    #[comptime] every_channel: bool,
) {
    let position = ABSOLUTE_POS;
    if position >= units {
        terminate!();
    }
    let x = position % width;
    let y = (position / width) % height;
    let mut image = position / (width * height);
    let (mut first, mut end) = (0usize, outputs);
    if every_channel {
        // Planes are (image, channel) pairs: this unit's channel alone.
        first = image % outputs;
        end = first + 1;
        image /= outputs;
    }
    let source = bordered_at(image, y + 1, x + 1, height, width) * inputs;
    // Sigmoids are above 0, so 0 is the max's identity.
    let mut best = 0.0f32;
    for o in first..end {
        let logit = head_logit(input, weight, bias, source, inputs, outputs, o);
        best = f32::max(best, 1.0 / (1.0 + (0.0 - logit).exp()));
    }
    result[position] = best;
}
