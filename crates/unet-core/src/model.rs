//! The Camelyon UNet as Burn modules, BatchNorm already folded into the convolutions.
//!
//! Layer names follow the PyTorch module (`conv1`..`conv10`, `up6`..`up9`) so that a reader
//! can hold this file next to `MODEL.md`. Each `DoubleConv` keeps its two 3x3 convolutions;
//! the BatchNorm after each was folded into that convolution's weight and bias at import
//! (see [`crate::checkpoint`]), which is exact in inference and keeps f16 free of the
//! `running_var` underflow.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

use crate::checkpoint::FoldedWeights;

/// Four 2x poolings: patch sides must be multiples of this.
pub const SIDE_MULTIPLE: usize = 16;

/// The architecture, as `convert` infers it from a checkpoint's tensor shapes.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub struct UnetConfig {
    /// Input channels (3 for RGB).
    pub in_channels: usize,
    /// Output channels (3 in users' checkpoints, trained against an RGB mask).
    pub out_channels: usize,
    /// Channels of the first level; the deepest level has 16x this (64 in users' checkpoints).
    pub base_width: usize,
}

impl UnetConfig {
    /// A model with random weights (benchmarks, or as the skeleton a model file is loaded into).
    pub fn init(&self, device: &Device) -> Unet {
        let w = self.base_width;
        let double = |i, o| DoubleConv {
            first: conv3x3_config(i, o).init(device),
            second: conv3x3_config(o, o).init(device),
        };
        let up = |i, o| up_config(i, o).init(device);
        Unet {
            conv1: double(self.in_channels, w),
            conv2: double(w, 2 * w),
            conv3: double(2 * w, 4 * w),
            conv4: double(4 * w, 8 * w),
            conv5: double(8 * w, 16 * w),
            up6: up(16 * w, 8 * w),
            conv6: double(16 * w, 8 * w),
            up7: up(8 * w, 4 * w),
            conv7: double(8 * w, 4 * w),
            up8: up(4 * w, 2 * w),
            conv8: double(4 * w, 2 * w),
            up9: up(2 * w, w),
            conv9: double(2 * w, w),
            conv10: Conv2dConfig::new([w, self.out_channels], [1, 1]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    /// Number of parameters of the inference model (BatchNorm folded away).
    pub fn num_params(&self) -> usize {
        let w = self.base_width;
        let conv = |i: usize, o: usize, k: usize| o * i * k * k + o;
        let double = |i, o| conv(i, o, 3) + conv(o, o, 3);
        let up = |i: usize, o: usize| i * o * 4 + o;
        double(self.in_channels, w)
            + double(w, 2 * w)
            + double(2 * w, 4 * w)
            + double(4 * w, 8 * w)
            + double(8 * w, 16 * w)
            + up(16 * w, 8 * w)
            + double(16 * w, 8 * w)
            + up(8 * w, 4 * w)
            + double(8 * w, 4 * w)
            + up(4 * w, 2 * w)
            + double(4 * w, 2 * w)
            + up(2 * w, w)
            + double(2 * w, w)
            + conv(w, self.out_channels, 1)
    }
}

/// Two 3x3 convolutions with replicate padding, each followed by ReLU.
#[derive(Module, Debug)]
pub struct DoubleConv {
    first: Conv2d,
    second: Conv2d,
}

impl DoubleConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.first.forward(replicate_pad(x)));
        relu(self.second.forward(replicate_pad(x)))
    }
}

/// PyTorch's `padding_mode='replicate'`: repeat the edge pixel, then a valid convolution.
fn replicate_pad(x: Tensor<4>) -> Tensor<4> {
    x.pad((1, 1, 1, 1), PadMode::Edge)
}

/// The UNet of `MODEL.md` in inference form.
#[derive(Module, Debug)]
pub struct Unet {
    conv1: DoubleConv,
    conv2: DoubleConv,
    conv3: DoubleConv,
    conv4: DoubleConv,
    conv5: DoubleConv,
    up6: ConvTranspose2d,
    conv6: DoubleConv,
    up7: ConvTranspose2d,
    conv7: DoubleConv,
    up8: ConvTranspose2d,
    conv8: DoubleConv,
    up9: ConvTranspose2d,
    conv9: DoubleConv,
    conv10: Conv2d,
    pool: MaxPool2d,
}

impl Unet {
    /// `x`: `[N, in, H, W]` normalised to [-1, 1]; returns the sigmoid of every output
    /// channel, `[N, out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c1 = self.conv1.forward(x);
        let c2 = self.conv2.forward(self.pool.forward(c1.clone()));
        let c3 = self.conv3.forward(self.pool.forward(c2.clone()));
        let c4 = self.conv4.forward(self.pool.forward(c3.clone()));
        let c5 = self.conv5.forward(self.pool.forward(c4.clone()));
        // The upsampled tensor comes first in each concatenation, as in PyTorch.
        let c6 = self
            .conv6
            .forward(Tensor::cat(vec![self.up6.forward(c5), c4], 1));
        let c7 = self
            .conv7
            .forward(Tensor::cat(vec![self.up7.forward(c6), c3], 1));
        let c8 = self
            .conv8
            .forward(Tensor::cat(vec![self.up8.forward(c7), c2], 1));
        let c9 = self
            .conv9
            .forward(Tensor::cat(vec![self.up9.forward(c8), c1], 1));
        sigmoid(self.conv10.forward(c9))
    }

    /// Builds the model from folded checkpoint weights, its tensors in `dtype` on `device`.
    pub fn from_weights(weights: &FoldedWeights, device: &Device, dtype: DType) -> Unet {
        // Every tensor flat first; `tensor4` gives the convolutions their shape.
        let param = |name: &str| -> Tensor<1> {
            let (values, _) = weights.get(name);
            let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype);
            Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), options)
        };
        let tensor4 = |name: &str| -> Param<Tensor<4>> {
            let (_, shape) = weights.get(name);
            let dims: [usize; 4] = shape.try_into().expect("weights are 4-d");
            Param::from_tensor(param(name).reshape(dims))
        };
        let bias = |name: &str| Some(Param::from_tensor(param(name)));
        let conv = |layer: &str, kernel: usize| Conv2d {
            weight: tensor4(&format!("{layer}.weight")),
            bias: bias(&format!("{layer}.bias")),
            stride: [1, 1],
            kernel_size: [kernel, kernel],
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Valid,
        };
        let double = |name: &str| DoubleConv {
            first: conv(&format!("{name}.first"), 3),
            second: conv(&format!("{name}.second"), 3),
        };
        let up = |name: &str| {
            let weight = tensor4(&format!("{name}.weight"));
            let [channels_in, channels_out, _, _] = weight.dims();
            ConvTranspose2d {
                weight,
                bias: bias(&format!("{name}.bias")),
                stride: [2, 2],
                kernel_size: [2, 2],
                dilation: [1, 1],
                groups: 1,
                padding: [0, 0],
                padding_out: [0, 0],
                channels: [channels_in, channels_out],
            }
        };
        Unet {
            conv1: double("conv1"),
            conv2: double("conv2"),
            conv3: double("conv3"),
            conv4: double("conv4"),
            conv5: double("conv5"),
            up6: up("up6"),
            conv6: double("conv6"),
            up7: up("up7"),
            conv7: double("conv7"),
            up8: up("up8"),
            conv8: double("conv8"),
            up9: up("up9"),
            conv9: double("conv9"),
            conv10: conv("conv10", 1),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }
}

fn conv3x3_config(i: usize, o: usize) -> Conv2dConfig {
    Conv2dConfig::new([i, o], [3, 3])
}

fn up_config(i: usize, o: usize) -> ConvTranspose2dConfig {
    ConvTranspose2dConfig::new([i, o], [2, 2]).with_stride([2, 2])
}
