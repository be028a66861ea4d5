//! The UNet as Burn modules, built by walking the [`crate::Plan`] over folded weights
//! (BatchNorm was folded into each convolution at import: exact in inference, and it keeps f16
//! free of the `running_var` underflow).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

use crate::architecture::{self, Kind, Layer};
use crate::weights::{FoldedWeights, WeightsError};

/// Two 3x3 convolutions with replicate padding, each followed by ReLU.
#[derive(Module, Debug)]
pub struct DoubleConv {
    convs: Vec<Conv2d>,
}

impl DoubleConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.convs
            .iter()
            .fold(x, |x, conv| relu(conv.forward(replicate_pad(x))))
    }
}

/// PyTorch's `padding_mode='replicate'`: repeat the edge pixel, then a valid convolution.
fn replicate_pad(x: Tensor<4>) -> Tensor<4> {
    x.pad((1, 1, 1, 1), PadMode::Edge)
}

/// A decoder level: the transposed convolution, then the double convolution of its output
/// joined with the skip.
#[derive(Module, Debug)]
pub struct DecoderLevel {
    up: ConvTranspose2d,
    convs: DoubleConv,
}

/// The UNet of `MODEL.md` in inference form.
#[derive(Module, Debug)]
pub struct Unet {
    encoder: Vec<DoubleConv>,
    decoder: Vec<DecoderLevel>,
    head: Conv2d,
    pool: MaxPool2d,
}

impl Unet {
    /// `x`: `[N, in, H, W]` normalised to [-1, 1]; returns the sigmoid of every output
    /// channel, `[N, out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (bottom, above) = self.encoder.split_last().expect("a UNet has levels");
        let mut skips = Vec::with_capacity(above.len());
        let mut x = x;
        for level in above {
            let skip = level.forward(x);
            x = self.pool.forward(skip.clone());
            skips.push(skip);
        }
        x = bottom.forward(x);
        for level in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder level");
            // The upsampled tensor comes first in each concatenation, as in PyTorch.
            x = level
                .convs
                .forward(Tensor::cat(vec![level.up.forward(x), skip], 1));
        }
        sigmoid(self.head.forward(x))
    }

    /// Builds the model from folded weights, its tensors in `dtype` on `device`.
    pub fn from_weights(
        weights: &FoldedWeights,
        device: &Device,
        dtype: DType,
    ) -> Result<Unet, WeightsError> {
        let plan = weights.plan();
        let build = Builder {
            weights,
            device,
            dtype,
        };
        let double = |level: &architecture::DoubleConv| -> Result<DoubleConv, WeightsError> {
            let convs = level
                .convs
                .iter()
                .map(|layer| build.conv(layer))
                .collect::<Result<_, _>>()?;
            Ok(DoubleConv { convs })
        };
        Ok(Unet {
            encoder: plan.encoder.iter().map(double).collect::<Result<_, _>>()?,
            decoder: plan
                .decoder
                .iter()
                .map(|level| {
                    Ok(DecoderLevel {
                        up: build.up(&level.up)?,
                        convs: double(&level.convs)?,
                    })
                })
                .collect::<Result<_, WeightsError>>()?,
            head: build.conv(&plan.head)?,
            pool: MaxPool2dConfig::new([2, 2]).init(),
        })
    }
}

/// Burn layers from the plan's layers and the folded weights.
struct Builder<'a> {
    weights: &'a FoldedWeights,
    device: &'a Device,
    dtype: DType,
}

impl Builder<'_> {
    fn tensor<const D: usize>(&self, name: &str) -> Result<Param<Tensor<D>>, WeightsError> {
        let tensor = self.weights.get(name)?;
        let options = TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype);
        let flat = Tensor::<1>::from_data(
            TensorData::new(tensor.values.clone(), [tensor.values.len()]),
            options,
        );
        let dims: [usize; D] =
            tensor
                .shape
                .clone()
                .try_into()
                .map_err(|shape| WeightsError::WrongShape {
                    name: name.to_string(),
                    expected: vec![0; D],
                    found: shape,
                })?;
        Ok(Param::from_tensor(flat.reshape(dims)))
    }

    /// A convolution without padding (the 3x3 ones are padded by [`replicate_pad`]).
    fn conv(&self, layer: &Layer) -> Result<Conv2d, WeightsError> {
        let k = layer.kind.kernel();
        Ok(Conv2d {
            weight: self.tensor(&layer.weight_name())?,
            bias: Some(self.tensor(&layer.bias_name())?),
            stride: [1, 1],
            kernel_size: [k, k],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Valid,
        })
    }

    fn up(&self, layer: &Layer) -> Result<ConvTranspose2d, WeightsError> {
        debug_assert_eq!(layer.kind, Kind::UpConv2x2);
        Ok(ConvTranspose2d {
            weight: self.tensor(&layer.weight_name())?,
            bias: Some(self.tensor(&layer.bias_name())?),
            stride: [2, 2],
            kernel_size: [2, 2],
            dilation: [1, 1],
            groups: 1,
            padding: [0, 0],
            padding_out: [0, 0],
            channels: [layer.inputs, layer.outputs],
        })
    }
}
