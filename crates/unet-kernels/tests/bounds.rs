//! Each kernel writes the values it is launched for and nothing past them, on buffers larger
//! than those values and with more cubes than units, as the fused engine launches them:
//! cubecl's memory pools allocate more than a buffer asks, and past 65 535 cubes the engine's
//! grid is two-dimensional, rounded up (up to a whole row of spare cubes). A kernel
//! that stops at its buffer's length instead of its own count writes past the image into
//! whatever follows (on CUDA an illegal address once that is the end of an allocation).
//! Here on lavapipe, each buffer with a tail of sentinels that must come back untouched.

use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
use cubecl_runtime::runtime::Runtime;
use unet_kernels::{conv3x3, head, input_bordered, max_pool_bordered, replicate_border, up2x2};

/// Spare values after each buffer's own, and what they hold.
const TAIL: usize = 4096;
const SENTINEL: f32 = -7.0;

/// Units per cube in these launches.
const UNITS: u32 = 64;

struct Device {
    client: Client,
}

impl Device {
    fn new() -> Device {
        Device {
            client: <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu)),
        }
    }

    /// `values`, then the sentinel tail.
    fn upload(&self, values: &[f32]) -> Handle {
        let mut padded = values.to_vec();
        padded.extend(std::iter::repeat_n(SENTINEL, TAIL));
        self.client.create_from_slice(f32::as_bytes(&padded))
    }

    /// `len` sentinels, then the tail.
    fn sentinels(&self, len: usize) -> Handle {
        self.upload(&vec![SENTINEL; len])
    }

    /// Twice the cubes `units` need, over two rows: the spare cubes of a rounded-up grid.
    fn cubes(units: usize) -> CubeCount {
        CubeCount::Static((units as u32).div_ceil(UNITS), 2, 1)
    }

    /// Panics unless `written` of the first `used` values of `handle` were written (are no
    /// longer sentinels; no kernel here computes -7) and none past them.
    fn assert_wrote(&self, what: &str, handle: &Handle, used: usize, written: usize) {
        let values = f32::from_bytes(&self.client.read_one(handle.clone()).unwrap()).to_vec();
        let changed = |range: std::ops::Range<usize>| {
            range.filter(|&i| values[i] != SENTINEL).collect::<Vec<_>>()
        };
        let past = changed(used..values.len());
        assert!(
            past.is_empty(),
            "{what}: {} values written past the {used} launched for (first at {})",
            past.len(),
            past[0],
        );
        assert_eq!(changed(0..used).len(), written, "{what}: values written");
    }
}

/// A small batch: two images of 6 x 4 (even, for pooling), 3 channels in, 4 out.
const N: usize = 2;
const H: usize = 6;
const W: usize = 4;
const INPUTS: usize = 3;
const OUTPUTS: usize = 4;
const BORDERED: usize = N * (H + 2) * (W + 2);

fn noise(count: usize, salt: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7919 + salt * 104_729) % 1013) as f32 / 1013.0 - 0.5)
        .collect()
}

#[test]
fn input_normalisation_writes_its_bordered_image_alone() {
    let device = Device::new();
    let bytes: Vec<u8> = (0..N * H * W * 3).map(|i| (i * 37) as u8).collect();
    let rgb = device.client.create_from_slice(&bytes);
    let units = BORDERED * 3;
    let output = device.sentinels(units);
    // SAFETY: every buffer holds at least the length given with it.
    unsafe {
        input_bordered::launch_unchecked::<f32>(
            &device.client,
            Device::cubes(units),
            CubeDim::new_1d(UNITS),
            BufferArg::from_raw_parts(rgb, bytes.len() / 4),
            BufferArg::from_raw_parts(output.clone(), units),
            units,
            H,
            W,
        )
    };
    device.assert_wrote("input_bordered", &output, units, units);
}

/// Our channels after two others in each pixel, as a level's skip in a concatenation.
const OFFSET: usize = 2;
const STRIDE: usize = OUTPUTS + OFFSET;

/// Where bordered pixel `(y, x)` of `image` holds our channel `c`.
fn at(image: usize, y: usize, x: usize, c: usize) -> usize {
    ((image * (H + 2) + y) * (W + 2) + x) * STRIDE + OFFSET + c
}

#[test]
fn a_convolution_writes_its_channels_of_the_interior_alone() {
    let device = Device::new();
    let values = N * H * W * OUTPUTS;
    let input = device.upload(&noise(BORDERED * INPUTS, 1));
    let weight = device.upload(&noise(9 * INPUTS * OUTPUTS, 2));
    let bias = device.upload(&noise(OUTPUTS, 3));
    let output_len = BORDERED * STRIDE;
    let output = device.sentinels(output_len);
    // SAFETY: every buffer holds at least the length given with it.
    unsafe {
        conv3x3::launch_unchecked::<f32>(
            &device.client,
            Device::cubes(values),
            CubeDim::new_1d(UNITS),
            BufferArg::from_raw_parts(input, BORDERED * INPUTS),
            BufferArg::from_raw_parts(weight, 9 * INPUTS * OUTPUTS),
            BufferArg::from_raw_parts(bias, OUTPUTS),
            BufferArg::from_raw_parts(output.clone(), output_len),
            values,
            H,
            W,
            INPUTS,
            OUTPUTS,
            STRIDE,
            OFFSET,
        )
    };
    device.assert_wrote("conv3x3", &output, output_len, values);
    let written = f32::from_bytes(&device.client.read_one(output).unwrap()).to_vec();
    for (image, y, x, c) in pixels(N, H, W, OUTPUTS) {
        let value = written[at(image, y + 1, x + 1, c)];
        assert!(
            value >= 0.0,
            "conv3x3 wrote {value} at ({image}, {y}, {x}, {c}): not ReLU'd"
        );
    }
}

/// Every (image, y, x, channel) of `n` images `h` x `w` of `c` channels.
fn pixels(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..n).flat_map(move |i| {
        (0..h).flat_map(move |y| (0..w).flat_map(move |x| (0..c).map(move |o| (i, y, x, o))))
    })
}

#[test]
fn the_border_and_the_pooling_write_theirs_alone_and_right() {
    let device = Device::new();
    // Our channels of the interior written (ReLU'd values), everything else sentinels.
    let output_len = BORDERED * STRIDE;
    let mut values = vec![SENTINEL; output_len];
    let interior = noise(N * H * W * OUTPUTS, 4);
    for ((image, y, x, c), value) in pixels(N, H, W, OUTPUTS).zip(&interior) {
        values[at(image, y + 1, x + 1, c)] = value.abs();
    }
    let output = device.upload(&values);
    let border = N * (2 * (W + 2) + 2 * H) * OUTPUTS;
    let pooled_len = N * (H / 2 + 2) * (W / 2 + 2) * OUTPUTS;
    let pooled = device.sentinels(pooled_len);
    let pooled_units = N * (H / 2) * (W / 2) * OUTPUTS;
    // SAFETY: every buffer holds at least the length given with it.
    unsafe {
        replicate_border::launch_unchecked::<f32>(
            &device.client,
            Device::cubes(border),
            CubeDim::new_1d(UNITS),
            BufferArg::from_raw_parts(output.clone(), output_len),
            border,
            H,
            W,
            OUTPUTS,
            STRIDE,
            OFFSET,
        );
        max_pool_bordered::launch_unchecked::<f32>(
            &device.client,
            Device::cubes(pooled_units),
            CubeDim::new_1d(UNITS),
            BufferArg::from_raw_parts(output.clone(), output_len),
            BufferArg::from_raw_parts(pooled.clone(), pooled_len),
            pooled_units,
            H,
            W,
            OUTPUTS,
            STRIDE,
            OFFSET,
        )
    };
    // Our channels at every bordered pixel now; the others untouched.
    device.assert_wrote("replicate_border", &output, output_len, BORDERED * OUTPUTS);
    device.assert_wrote("max_pool_bordered", &pooled, pooled_len, pooled_len);

    let read = |handle: Handle| f32::from_bytes(&device.client.read_one(handle).unwrap()).to_vec();
    let (bordered, pooled) = (read(output), read(pooled));
    let clamp = |i: usize, side: usize| i.clamp(1, side);
    for (image, y, x, c) in pixels(N, H + 2, W + 2, OUTPUTS) {
        let nearest = values[at(image, clamp(y, H), clamp(x, W), c)];
        assert_eq!(
            bordered[at(image, y, x, c)],
            nearest,
            "border at ({image}, {y}, {x}, {c})"
        );
    }
    let (high, wide) = (H / 2, W / 2);
    for (image, y, x, c) in pixels(N, high + 2, wide + 2, OUTPUTS) {
        let (by, bx) = (clamp(y, high) - 1, clamp(x, wide) - 1);
        let block = [(0, 0), (0, 1), (1, 0), (1, 1)]
            .map(|(dy, dx)| values[at(image, 2 * by + dy + 1, 2 * bx + dx + 1, c)]);
        let max = block.into_iter().fold(0.0f32, f32::max);
        let got = pooled[((image * (high + 2) + y) * (wide + 2) + x) * OUTPUTS + c];
        assert_eq!(got, max, "pooled at ({image}, {y}, {x}, {c})");
    }
}

#[test]
fn the_head_writes_its_map_alone() {
    let device = Device::new();
    let input = device.upload(&noise(BORDERED * INPUTS, 5));
    let weight = device.upload(&noise(INPUTS * OUTPUTS, 6));
    let bias = device.upload(&noise(OUTPUTS, 7));
    for every_channel in [false, true] {
        let values = N * H * W * if every_channel { OUTPUTS } else { 1 };
        let result = device.sentinels(values);
        // SAFETY: every buffer holds at least the length given with it.
        unsafe {
            head::launch_unchecked::<f32>(
                &device.client,
                Device::cubes(values),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(input.clone(), BORDERED * INPUTS),
                BufferArg::from_raw_parts(weight.clone(), INPUTS * OUTPUTS),
                BufferArg::from_raw_parts(bias.clone(), OUTPUTS),
                BufferArg::from_raw_parts(result.clone(), values),
                values,
                H,
                W,
                INPUTS,
                OUTPUTS,
                every_channel,
            )
        };
        let what = format!("head (every channel: {every_channel})");
        device.assert_wrote(&what, &result, values, values);
    }
}

#[test]
fn a_transposed_convolution_writes_its_channels_of_the_interior_alone() {
    let device = Device::new();
    // Up from an image of H x W to one of 2H x 2W, our channels first of `stride`.
    let stride = OUTPUTS + 2;
    let output_len = N * (2 * H + 2) * (2 * W + 2) * stride;
    let units = 4 * N * H * W * OUTPUTS;
    let input = device.upload(&noise(BORDERED * INPUTS, 8));
    let weight = device.upload(&noise(4 * INPUTS * OUTPUTS, 9));
    let bias = device.upload(&noise(OUTPUTS, 10));
    let output = device.sentinels(output_len);
    // SAFETY: every buffer holds at least the length given with it.
    unsafe {
        up2x2::launch_unchecked::<f32>(
            &device.client,
            Device::cubes(units),
            CubeDim::new_1d(UNITS),
            BufferArg::from_raw_parts(input, BORDERED * INPUTS),
            BufferArg::from_raw_parts(weight, 4 * INPUTS * OUTPUTS),
            BufferArg::from_raw_parts(bias, OUTPUTS),
            BufferArg::from_raw_parts(output.clone(), output_len),
            units,
            H,
            W,
            INPUTS,
            OUTPUTS,
            stride,
        );
    }
    // Our channels at every pixel of the larger image's interior.
    device.assert_wrote("up2x2", &output, output_len, units);
}

/// A batch whose largest buffer would hold more values than the kernels' 32-bit indices reach
/// is refused before anything is allocated, naming the largest batch that fits: here patches of
/// 4096 x 4096 on a model of base width 8, whose largest buffer is the full-size concatenation
/// (16 channels, bordered), 268.7 M values an image: 15 fit in 2^32.
#[test]
fn a_batch_past_what_the_kernels_address_is_refused_with_the_batch_that_fits() {
    let case = test_fixtures::cases()
        .into_iter()
        .find(|case| case.base_width == 8)
        .expect("a fixture of base width 8");
    let weights = unet_core::Checkpoint::read(&case.checkpoint_path())
        .unwrap()
        .weights;
    let engine = unet_core::FusedUnet::<f32>::new(Device::new().client, "wgpu", &weights).unwrap();
    let side = 4096;
    let largest = (side + 2) * (side + 2) * 2 * case.base_width;
    let fits = u32::MAX as usize / largest;
    assert_eq!(fits, 15);
    let pixels = vec![0u8; side * side * 3];
    let patches = vec![unet_core::RgbPatch::new(side, side, &pixels); fits + 1];
    let batch = unet_core::engine::Batch {
        patches: &patches,
        width: side,
        height: side,
    };
    let error = engine
        .forward(&batch, unet_core::engine::Output::Probability)
        .unwrap_err();
    assert!(
        matches!(
            error,
            unet_core::PredictError::BatchTooLarge {
                batch: 16,
                most: 15,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("--batch 15"), "{error}");
}
