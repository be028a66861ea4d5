//! The fused engine: the whole forward on unet-kernels' CubeCL kernels, on one client, walking
//! the plan over bordered buffers that are allocated once per batch shape and kept between
//! batches. The host uploads the patches' bytes and reads back only the probability map.

use std::marker::PhantomData;
use std::sync::Mutex;

use cubecl::prelude::*;
use cubecl::server::Handle;
use unet_kernels::{conv3x3, conv3x3_pool, head, head_sigmoid, input_bordered, up2x2};

use crate::architecture::{LEVELS, Layer as PlanLayer, UnetConfig};
use crate::engine::{Batch, Engine, Output};
use crate::predictor::PredictError;
use crate::target::{Precision, Target};
use crate::weights::{FoldedWeights, WeightsError};

/// Units per cube for every kernel.
const UNITS: u32 = 256;

/// A layer's weights (`[tap][input][output]`) and bias on the device, as `F`.
struct Layer {
    inputs: usize,
    outputs: usize,
    weight: Handle,
    bias: Handle,
}

/// The UNet on a CubeCL device: NHWC activations and weights stored as `F` (`f32` or
/// `half::f16`), sums in f32, one kernel launch per layer (pooling inside the convolution
/// before it), no host synchronisation inside a forward.
pub struct FusedUnet<F> {
    client: Client,
    /// What the client runs on (`wgpu`, `cuda`), for the engine's reports.
    device: &'static str,
    config: UnetConfig,
    /// The plan's encoder, two 3x3 convolutions a level, largest first.
    encoder: Vec<[Layer; 2]>,
    /// The plan's decoder, deepest first: the transposed convolution, then two 3x3.
    decoder: Vec<[Layer; 3]>,
    head: Layer,
    /// The last batch shape's activations, reused while the shape stays.
    buffers: Mutex<Option<Buffers>>,
    storage: PhantomData<F>,
}

/// One batch shape's bordered activations, per level (largest first).
struct Buffers {
    /// (batch, height, width) of the patches.
    shape: (usize, usize, usize),
    /// The level's input: the normalised patches, or the level above's pooled skip.
    inputs: Vec<Handle>,
    /// The first convolution's output (the encoder's, later the decoder's).
    middles: Vec<Handle>,
    /// Above the deepest level: the decoder's concatenation, upsampled channels then skip.
    joins: Vec<Handle>,
    /// The level's last output: the encoder's at the deepest level, the decoder's above.
    outputs: Vec<Handle>,
}

/// `values` as `F` on the device.
fn upload<F: Float + CubeElement>(client: &Client, values: &[f32]) -> Handle {
    let converted: Vec<F> = values.iter().map(|&v| F::new(v)).collect();
    client.create_from_slice(F::as_bytes(&converted))
}

impl<F: Float + CubeElement> FusedUnet<F> {
    /// Uploads the folded weights, rearranged for the kernels and rounded to `F`; `device`
    /// names what the client runs on.
    pub fn new(
        client: Client,
        device: &'static str,
        weights: &FoldedWeights,
    ) -> Result<FusedUnet<F>, WeightsError> {
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
        Ok(FusedUnet {
            client,
            device,
            config: weights.config,
            encoder,
            decoder,
            head,
            buffers: Mutex::new(None),
            storage: PhantomData,
        })
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// The decoder level that goes back up to `level`.
    fn decoder_at(&self, level: usize) -> &[Layer; 3] {
        &self.decoder[LEVELS - 2 - level]
    }

    /// Bordered buffers for `batch` patches of `height` x `width`.
    fn allocate(&self, batch: usize, height: usize, width: usize) -> Buffers {
        let bordered = |level: usize, channels: usize| {
            let (h, w) = (height >> level, width >> level);
            self.client
                .empty(batch * (h + 2) * (w + 2) * channels * size_of::<F>())
        };
        let levels = 0..LEVELS;
        Buffers {
            shape: (batch, height, width),
            inputs: levels
                .clone()
                .map(|l| bordered(l, self.encoder[l][0].inputs))
                .collect(),
            middles: levels
                .clone()
                .map(|l| bordered(l, self.encoder[l][0].outputs))
                .collect(),
            joins: (0..LEVELS - 1)
                .map(|l| bordered(l, self.decoder_at(l)[1].inputs))
                .collect(),
            outputs: levels
                .map(|l| match l {
                    l if l == LEVELS - 1 => bordered(l, self.encoder[l][1].outputs),
                    l => bordered(l, self.decoder_at(l)[2].outputs),
                })
                .collect(),
        }
    }

    /// A batch of patches to `output`: the per-pixel probabilities (max over output channels),
    /// `[n, height, width]`, or every channel's sigmoid, `[n, channels, height, width]`.
    pub fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        let (n, height, width) = (batch.len(), batch.height, batch.width);
        let mut cached = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().map(|b| b.shape) != Some((n, height, width)) {
            // Drop the old shape's buffers before allocating the new ones.
            *cached = None;
            *cached = Some(self.allocate(n, height, width));
        }
        let buffers = cached.as_ref().expect("allocated above");

        // The bytes, four to a word (the last word padded), so that every runtime reads them.
        let mut bytes: Vec<u8> = Vec::with_capacity(n * batch.plane() * 3 + 3);
        for patch in batch.patches {
            bytes.extend_from_slice(patch.pixels);
        }
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        let words: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let rgb = self.client.create_from_slice(u32::as_bytes(&words));
        let units = n * (height + 2) * (width + 2) * 3;
        // SAFETY: every buffer holds the length given with it (`allocate`, `words`).
        unsafe {
            input_bordered::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(rgb, words.len()),
                BufferArg::from_raw_parts(buffers.inputs[0].clone(), units),
                height,
                width,
            )
        };

        for (level, [first, second]) in self.encoder.iter().enumerate() {
            let (h, w) = (height >> level, width >> level);
            let middle = &buffers.middles[level];
            self.conv3x3(
                first,
                &buffers.inputs[level],
                middle,
                (n, h, w),
                (first.outputs, 0),
            );
            if level == LEVELS - 1 {
                let output = &buffers.outputs[level];
                self.conv3x3(second, middle, output, (n, h, w), (second.outputs, 0));
            } else {
                // The skip goes after the upsampled channels of the level's concatenation.
                let up = self.decoder_at(level)[0].outputs;
                let join = (&buffers.joins[level], up + second.outputs, up);
                self.conv3x3_pool(second, middle, join, &buffers.inputs[level + 1], (n, h, w));
            }
        }
        for level in (0..LEVELS - 1).rev() {
            let [up, first, second] = self.decoder_at(level);
            let (h, w) = (height >> level, width >> level);
            let join = &buffers.joins[level];
            self.up2x2(
                up,
                &buffers.outputs[level + 1],
                join,
                (n, h / 2, w / 2),
                first.inputs,
            );
            let middle = &buffers.middles[level];
            self.conv3x3(first, join, middle, (n, h, w), (first.outputs, 0));
            let output = &buffers.outputs[level];
            self.conv3x3(second, middle, output, (n, h, w), (second.outputs, 0));
        }

        let pixels = n * height * width;
        let values = match output {
            Output::Probability => pixels,
            Output::Sigmoid => pixels * self.head.outputs,
        };
        let result = self.client.empty(values * size_of::<f32>());
        let (inputs, outputs) = (self.head.inputs, self.head.outputs);
        let (client, cubes) = (&self.client, cube_count(values));
        // SAFETY: every buffer holds the length given with it (`allocate`, `values`).
        unsafe {
            let input = BufferArg::from_raw_parts(
                buffers.outputs[0].clone(),
                n * (height + 2) * (width + 2) * inputs,
            );
            let weight = BufferArg::from_raw_parts(self.head.weight.clone(), inputs * outputs);
            let bias = BufferArg::from_raw_parts(self.head.bias.clone(), outputs);
            let result = BufferArg::from_raw_parts(result.clone(), values);
            let cube = CubeDim::new_1d(UNITS);
            match output {
                Output::Probability => head::launch_unchecked::<F>(
                    client, cubes, cube, input, weight, bias, result, height, width, inputs,
                    outputs,
                ),
                Output::Sigmoid => head_sigmoid::launch_unchecked::<F>(
                    client, cubes, cube, input, weight, bias, result, height, width, inputs,
                    outputs,
                ),
            }
        };
        let bytes = self
            .client
            .read_one(result)
            .map_err(|source| PredictError::Inference {
                device: self.device,
                source: Box::new(source),
            })?;
        Ok(f32::from_bytes(&bytes).to_vec())
    }

    /// `layer` on `input` (an image of `shape` = (batch, height, width)) into channels
    /// `offset..` of `output`, whose pixels hold `stride` channels: `(stride, offset)`.
    fn conv3x3(
        &self,
        layer: &Layer,
        input: &Handle,
        output: &Handle,
        shape: (usize, usize, usize),
        (stride, offset): (usize, usize),
    ) {
        let (n, h, w) = shape;
        let bordered = n * (h + 2) * (w + 2);
        let units = n * h * w * layer.outputs;
        // SAFETY: every buffer holds the length given with it (`allocate`).
        unsafe {
            conv3x3::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(input.clone(), bordered * layer.inputs),
                BufferArg::from_raw_parts(layer.weight.clone(), 9 * layer.inputs * layer.outputs),
                BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                BufferArg::from_raw_parts(output.clone(), bordered * stride),
                units,
                h,
                w,
                layer.inputs,
                layer.outputs,
                stride,
                offset,
            )
        };
    }

    /// [`Self::conv3x3`] into `(output, stride, offset)`, with its 2x2 max into `pooled`.
    fn conv3x3_pool(
        &self,
        layer: &Layer,
        input: &Handle,
        (output, stride, offset): (&Handle, usize, usize),
        pooled: &Handle,
        shape: (usize, usize, usize),
    ) {
        let (n, h, w) = shape;
        let bordered = n * (h + 2) * (w + 2);
        let units = n * (h / 2) * (w / 2) * layer.outputs;
        // SAFETY: every buffer holds the length given with it (`allocate`).
        unsafe {
            conv3x3_pool::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(input.clone(), bordered * layer.inputs),
                BufferArg::from_raw_parts(layer.weight.clone(), 9 * layer.inputs * layer.outputs),
                BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                BufferArg::from_raw_parts(output.clone(), bordered * stride),
                BufferArg::from_raw_parts(
                    pooled.clone(),
                    n * (h / 2 + 2) * (w / 2 + 2) * layer.outputs,
                ),
                units,
                h,
                w,
                layer.inputs,
                layer.outputs,
                stride,
                offset,
            )
        };
    }

    /// `layer` on `input` (an image of `shape`) into channels `0..` of `output`, twice the
    /// size, whose pixels hold `stride` channels.
    fn up2x2(
        &self,
        layer: &Layer,
        input: &Handle,
        output: &Handle,
        shape: (usize, usize, usize),
        stride: usize,
    ) {
        let (n, h, w) = shape;
        let units = 4 * n * h * w * layer.outputs;
        // SAFETY: every buffer holds the length given with it (`allocate`).
        unsafe {
            up2x2::launch_unchecked::<F>(
                &self.client,
                cube_count(units),
                CubeDim::new_1d(UNITS),
                BufferArg::from_raw_parts(input.clone(), n * (h + 2) * (w + 2) * layer.inputs),
                BufferArg::from_raw_parts(layer.weight.clone(), 4 * layer.inputs * layer.outputs),
                BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                BufferArg::from_raw_parts(output.clone(), n * (2 * h + 2) * (2 * w + 2) * stride),
                units,
                h,
                w,
                layer.inputs,
                layer.outputs,
                stride,
            )
        };
    }
}

impl<F: Float + CubeElement> Engine for FusedUnet<F> {
    /// CUDA device 0 with the `cuda` feature; other runtimes (wgpu in the tests) through
    /// [`FusedUnet::new`] with their client.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    fn load(weights: &FoldedWeights, target: Target) -> Result<Self, PredictError> {
        let unsupported = |what: String| PredictError::Unsupported {
            engine: "fused",
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
            crate::Device::Cuda => {
                use cubecl_runtime::runtime::Runtime;
                let client = cubecl::cuda::CudaRuntime::client(&Default::default());
                Ok(FusedUnet::new(client, "cuda", weights)?)
            }
            device => Err(unsupported(format!(
                "run on {} in this build",
                device.name()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        "fused"
    }

    fn device(&self) -> &'static str {
        self.device
    }

    fn precision(&self) -> Precision {
        precision_of::<F>()
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        self.forward(batch, output)
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
