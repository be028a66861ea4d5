//! The whole forward on the kernels of this crate, on one CubeCL client.

use std::marker::PhantomData;

use cubecl::prelude::*;
use cubecl::server::Handle;
use unet_core::UnetConfig;
use unet_core::checkpoint::FoldedWeights;

use crate::{conv_transpose2x2, conv3x3, head, max_pool2x2};

/// Units per cube for every kernel (one output value each).
const UNITS: u32 = 256;

/// A layer's weights and bias on the device, as `F`.
struct Layer {
    inputs: usize,
    outputs: usize,
    weight: Handle,
    bias: Handle,
}

/// The UNet on a CubeCL device: NHWC activations and weights stored as `F` (`f32` or
/// `half::f16`), one kernel launch per layer.
pub struct GpuUnet<F> {
    client: Client,
    config: UnetConfig,
    /// `conv1`..`conv9`, two 3x3 convolutions each.
    double: Vec<[Layer; 2]>,
    /// `up6`..`up9`.
    up: Vec<Layer>,
    head: Layer,
    /// Stands in for the second input of a convolution that has one.
    nothing: Handle,
    storage: PhantomData<F>,
}

/// `values` as `F` on the device.
fn upload<F: Float + CubeElement>(client: &Client, values: &[f32]) -> Handle {
    let converted: Vec<F> = values.iter().map(|&v| F::new(v)).collect();
    client.create_from_slice(F::as_bytes(&converted))
}

impl<F: Float + CubeElement> GpuUnet<F> {
    /// Uploads the folded weights, rearranged for the kernels and rounded to `F`.
    pub fn new(client: Client, weights: &FoldedWeights) -> GpuUnet<F> {
        let upload = |values: &[f32]| upload::<F>(&client, values);
        let layer = |inputs: usize, outputs: usize, weight: Vec<f32>, name: &str| Layer {
            inputs,
            outputs,
            weight: upload(&weight),
            bias: upload(weights.get(&format!("{name}.bias")).0),
        };
        let conv3x3 = |name: &str| {
            // PyTorch [o, i, 3, 3] -> [(tap * i + c) * o + out].
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
            layer(i, o, weight, name)
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
                // PyTorch [i, o, 2, 2] -> [c * 4 * o + tap * o + out].
                let name = format!("up{l}");
                let (values, shape) = weights.get(&format!("{name}.weight"));
                let (i, o) = (shape[0], shape[1]);
                let mut weight = vec![0.0; i * 4 * o];
                for c in 0..i {
                    for out in 0..o {
                        for tap in 0..4 {
                            weight[c * 4 * o + tap * o + out] = values[(c * o + out) * 4 + tap];
                        }
                    }
                }
                layer(i, o, weight, &name)
            })
            .collect();
        let (values, shape) = weights.get("conv10.weight");
        let (o, i) = (shape[0], shape[1]);
        let head_weight = (0..i * o).map(|j| values[(j % o) * i + j / o]).collect();
        let head = layer(i, o, head_weight, "conv10");
        let nothing = upload(&[0.0]);
        GpuUnet {
            client,
            config: weights.config,
            double,
            up,
            head,
            nothing,
            storage: PhantomData,
        }
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// A batch of normalised images, NCHW, to their per-pixel probabilities (max over output
    /// channels), `[n, height, width]`.
    pub fn forward(&self, nchw: &[f32], height: usize, width: usize) -> Vec<f32> {
        let channels = self.config.in_channels;
        let plane = height * width;
        let batch = nchw.len() / (channels * plane);
        let nhwc: Vec<f32> = (0..batch * plane * channels)
            .map(|i| {
                let (pixel, c) = (i / channels, i % channels);
                let (image, p) = (pixel / plane, pixel % plane);
                nchw[(image * channels + c) * plane + p]
            })
            .collect();
        let mut x = upload::<F>(&self.client, &nhwc);
        // The kernels see the batch as one tall image where rows do not mix (pooling and the
        // transposed convolution) and as `batch` images where they do (the 3x3 convolution).
        let (mut h, mut w) = (height, width);
        let mut skips = Vec::new();
        for (level, [first, second]) in self.double[..5].iter().enumerate() {
            let middle = self.conv3x3(first, &x, None, batch, h, w);
            let y = self.conv3x3(second, &middle, None, batch, h, w);
            if level < 4 {
                x = self.max_pool(&y, batch * h, w, second.outputs);
                skips.push((y, second.outputs));
                (h, w) = (h / 2, w / 2);
            } else {
                x = y;
            }
        }
        for (up, [first, second]) in self.up.iter().zip(&self.double[5..]) {
            let upsampled = self.conv_transpose(up, &x, batch * h, w);
            (h, w) = (2 * h, 2 * w);
            let skip = skips.pop().expect("one skip per decoder level");
            let middle = self.conv3x3(first, &upsampled, Some((&skip.0, skip.1)), batch, h, w);
            x = self.conv3x3(second, &middle, None, batch, h, w);
        }
        let pixels = batch * plane;
        let map = self.client.empty(pixels * size_of::<F>());
        // SAFETY: every buffer holds the length given with it.
        unsafe {
            head::launch_unchecked::<F>(
                &self.client,
                cube_count(pixels),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(x, pixels * self.head.inputs),
                BufferArg::from_raw_parts(
                    self.head.weight.clone(),
                    self.head.inputs * self.head.outputs,
                ),
                BufferArg::from_raw_parts(self.head.bias.clone(), self.head.outputs),
                BufferArg::from_raw_parts(map.clone(), pixels),
                self.head.inputs,
                self.head.outputs,
            )
        };
        let bytes = self
            .client
            .read_one(map)
            .expect("the device returns the probability map");
        F::from_bytes(&bytes)
            .iter()
            .map(|v| v.to_f32().expect("a float converts to f32"))
            .collect()
    }

    /// `second`: the skip tensor and its channels, read after `first`'s.
    fn conv3x3(
        &self,
        layer: &Layer,
        first: &Handle,
        second: Option<(&Handle, usize)>,
        batch: usize,
        height: usize,
        width: usize,
    ) -> Handle {
        let pixels = batch * height * width;
        let (second, second_channels) = second.unwrap_or((&self.nothing, 0));
        let first_channels = layer.inputs - second_channels;
        let output = self.client.empty(pixels * layer.outputs * size_of::<F>());
        // SAFETY: every buffer holds the length given with it.
        unsafe {
            conv3x3::launch_unchecked::<F>(
                &self.client,
                cube_count(pixels * layer.outputs),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(first.clone(), pixels * first_channels),
                BufferArg::from_raw_parts(second.clone(), (pixels * second_channels).max(1)),
                BufferArg::from_raw_parts(layer.weight.clone(), 9 * layer.inputs * layer.outputs),
                BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                BufferArg::from_raw_parts(output.clone(), pixels * layer.outputs),
                height,
                width,
                first_channels,
                second_channels,
                layer.outputs,
            )
        };
        output
    }

    fn max_pool(&self, x: &Handle, height: usize, width: usize, channels: usize) -> Handle {
        let outputs = (height / 2) * (width / 2) * channels;
        let output = self.client.empty(outputs * size_of::<F>());
        // SAFETY: every buffer holds the length given with it.
        unsafe {
            max_pool2x2::launch_unchecked::<F>(
                &self.client,
                cube_count(outputs),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(x.clone(), height * width * channels),
                BufferArg::from_raw_parts(output.clone(), outputs),
                width,
                channels,
            )
        };
        output
    }

    fn conv_transpose(&self, layer: &Layer, x: &Handle, height: usize, width: usize) -> Handle {
        let outputs = 4 * height * width * layer.outputs;
        let output = self.client.empty(outputs * size_of::<F>());
        // SAFETY: every buffer holds the length given with it.
        unsafe {
            conv_transpose2x2::launch_unchecked::<F>(
                &self.client,
                cube_count(outputs),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(x.clone(), height * width * layer.inputs),
                BufferArg::from_raw_parts(layer.weight.clone(), 4 * layer.inputs * layer.outputs),
                BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                BufferArg::from_raw_parts(output.clone(), outputs),
                width,
                layer.inputs,
                layer.outputs,
            )
        };
        output
    }
}

/// Cubes for `units` units, `UNITS` each, spread over two dimensions past 65 535.
fn cube_count(units: usize) -> CubeCount {
    let cubes = units.div_ceil(UNITS as usize) as u32;
    let x = cubes.min(65_535);
    CubeCount::Static(x, cubes.div_ceil(x), 1)
}
