//! The whole forward on the kernels of this crate, on one CubeCL client, walking the plan.

use std::marker::PhantomData;

use cubecl::prelude::*;
use cubecl::server::Handle;
use unet_core::architecture::Layer as PlanLayer;
use unet_core::engine::{Batch, Engine, Output};
use unet_core::{FoldedWeights, Precision, PredictError, Target, UnetConfig, WeightsError};

use crate::{conv_transpose2x2, conv3x3, head, max_pool2x2};

/// Units per cube for every kernel (one output value each).
const UNITS: u32 = 256;

/// A layer's weights (`[tap][input][output]`) and bias on the device, as `F`.
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
    /// What the client runs on (`wgpu`, `cuda`), for the engine's reports.
    device: &'static str,
    config: UnetConfig,
    /// The plan's encoder, two 3x3 convolutions a level.
    encoder: Vec<[Layer; 2]>,
    /// The plan's decoder, deepest first: the transposed convolution, then two 3x3.
    decoder: Vec<[Layer; 3]>,
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
    /// Uploads the folded weights, rearranged for the kernels and rounded to `F`; `device`
    /// names what the client runs on.
    pub fn new(
        client: Client,
        device: &'static str,
        weights: &FoldedWeights,
    ) -> Result<GpuUnet<F>, WeightsError> {
        let plan = weights.plan();
        let layer = |layer: &PlanLayer| -> Result<Layer, WeightsError> {
            Ok(Layer {
                inputs: layer.inputs,
                outputs: layer.outputs,
                weight: upload::<F>(&client, &weights.tap_major(layer)?.values),
                bias: upload::<F>(&client, weights.bias(layer)?),
            })
        };
        let encoder = plan
            .encoder
            .iter()
            .map(|level| Ok([layer(&level.convs[0])?, layer(&level.convs[1])?]))
            .collect::<Result<_, WeightsError>>()?;
        let decoder = plan
            .decoder
            .iter()
            .map(|level| {
                let [first, second] = &level.convs.convs;
                Ok([layer(&level.up)?, layer(first)?, layer(second)?])
            })
            .collect::<Result<_, WeightsError>>()?;
        let head = layer(&plan.head)?;
        let nothing = upload::<F>(&client, &[0.0]);
        Ok(GpuUnet {
            client,
            device,
            config: weights.config,
            encoder,
            decoder,
            head,
            nothing,
            storage: PhantomData,
        })
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// A batch of normalised images, NCHW, to their per-pixel probabilities (max over output
    /// channels), `[n, height, width]`.
    pub fn forward(
        &self,
        nchw: &[f32],
        height: usize,
        width: usize,
    ) -> Result<Vec<f32>, PredictError> {
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
        let (bottom, above) = self.encoder.split_last().expect("a UNet has levels");
        for [first, second] in above {
            let middle = self.conv3x3(first, &x, None, batch, h, w);
            let skip = self.conv3x3(second, &middle, None, batch, h, w);
            x = self.max_pool(&skip, batch * h, w, second.outputs);
            skips.push((skip, second.outputs));
            (h, w) = (h / 2, w / 2);
        }
        let middle = self.conv3x3(&bottom[0], &x, None, batch, h, w);
        x = self.conv3x3(&bottom[1], &middle, None, batch, h, w);
        for [up, first, second] in &self.decoder {
            let upsampled = self.conv_transpose(up, &x, batch * h, w);
            (h, w) = (2 * h, 2 * w);
            let (skip, skip_channels) = skips.pop().expect("one skip per decoder level");
            let middle = self.conv3x3(first, &upsampled, Some((&skip, skip_channels)), batch, h, w);
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
            .map_err(|source| PredictError::Inference {
                device: self.device,
                source: Box::new(source),
            })?;
        Ok(F::from_bytes(&bytes)
            .iter()
            .map(|v| v.to_f32().unwrap_or(f32::NAN))
            .collect())
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

impl<F: Float + CubeElement> Engine for GpuUnet<F> {
    /// CUDA device 0 with the `cuda` feature; other runtimes (wgpu in the tests) through
    /// [`GpuUnet::new`] with their client.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn load(weights: &FoldedWeights, target: Target) -> Result<Self, PredictError> {
        let unsupported = |what: String| PredictError::Unsupported {
            engine: "cubecl",
            what,
        };
        if target.precision != precision_of::<F>() {
            return Err(unsupported(format!(
                "run in {} with {} storage",
                target.precision,
                precision_of::<F>()
            )));
        }
        match target.device {
            #[cfg(feature = "cuda")]
            unet_core::Device::Cuda => {
                use cubecl_runtime::runtime::Runtime;
                let client = cubecl::cuda::CudaRuntime::client(&Default::default());
                Ok(GpuUnet::new(client, "cuda", weights)?)
            }
            device => Err(unsupported(format!(
                "run on {} in this build",
                device.name()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        "cubecl"
    }

    fn device(&self) -> &'static str {
        self.device
    }

    fn precision(&self) -> Precision {
        precision_of::<F>()
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        match output {
            Output::Probability => {
                self.forward(&batch.normalised_nchw(), batch.height, batch.width)
            }
            // The head kernel keeps only the max over channels.
            Output::Sigmoid => Err(PredictError::Unsupported {
                engine: "cubecl",
                what: "return every output channel (only the probability map)".to_string(),
            }),
        }
    }
}

/// F16 for half-precision storage, else F32.
fn precision_of<F: 'static>() -> Precision {
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<half::f16>() {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// Cubes for `units` units, `UNITS` each, spread over two dimensions past 65 535.
fn cube_count(units: usize) -> CubeCount {
    let cubes = units.div_ceil(UNITS as usize) as u32;
    let x = cubes.min(65_535);
    CubeCount::Static(x, cubes.div_ceil(x), 1)
}
