//! The UNet's architecture, stated once: [`Plan::new`] derives every layer (its name in the
//! model file and in PyTorch's checkpoint, its channels, its level) from a [`UnetConfig`].
//! The checkpoint reader, the model file, and every engine (Burn, the CPU kernels, the CubeCL
//! kernels, the ONNX graph) walk this plan; none spells the network out again.
//!
//! The network (`MODEL.md`): an encoder of [`LEVELS`] double 3x3 convolutions, each level
//! but the deepest followed by 2x2 max pooling and kept as a skip; a decoder that goes back
//! up, each level a 2x2 stride-2 transposed convolution whose output is joined with the skip
//! of its level (the upsampled channels first, as PyTorch's `cat([up(x), skip], dim=1)`),
//! then a double convolution; a 1x1 head with a sigmoid on every output channel.

use burn::config::Config;

/// Resolution levels: the input's and four poolings below it.
pub const LEVELS: usize = 5;
/// Four 2x poolings: patch sides must be multiples of this.
pub const SIDE_MULTIPLE: usize = 1 << (LEVELS - 1);

/// Whether the UNet takes a patch side: a positive multiple of [`SIDE_MULTIPLE`].
pub fn is_patch_side(side: u64) -> bool {
    side > 0 && side.is_multiple_of(SIDE_MULTIPLE as u64)
}

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
    /// Number of parameters of the inference model (BatchNorm folded away).
    pub fn num_params(&self) -> usize {
        Plan::new(*self).layers().map(Layer::parameters).sum()
    }
}

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 3x3 convolution with replicate padding, bias and ReLU (BatchNorm folded in).
    Conv3x3,
    /// 2x2 stride-2 transposed convolution with bias: each input pixel becomes a 2x2 block.
    UpConv2x2,
    /// The head: 1x1 convolution with bias, then the sigmoid.
    Head1x1,
}

impl Kind {
    /// Kernel side.
    pub fn kernel(self) -> usize {
        match self {
            Kind::Conv3x3 => 3,
            Kind::UpConv2x2 => 2,
            Kind::Head1x1 => 1,
        }
    }

    /// Weight positions: `tap = ky * kernel + kx` (for the transposed convolution, the
    /// output pixel `(2y + dy, 2x + dx)` of input pixel `(y, x)` is tap `dy * 2 + dx`).
    pub fn taps(self) -> usize {
        self.kernel() * self.kernel()
    }
}

/// One layer with weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Its path in the model file and the Burn model (`conv1.first`, `up6`, `conv10`); its
    /// tensors are `{path}.weight` and `{path}.bias`.
    pub path: String,
    /// Its module in PyTorch's checkpoint (`conv1.conv.0`, `up6`, `conv10`).
    pub torch: String,
    /// The PyTorch BatchNorm after it (`conv1.conv.1`), folded into it at import.
    pub batch_norm: Option<String>,
    pub kind: Kind,
    pub inputs: usize,
    pub outputs: usize,
}

impl Layer {
    fn new(path: String, torch: String, kind: Kind, inputs: usize, outputs: usize) -> Layer {
        Layer {
            path,
            torch,
            batch_norm: None,
            kind,
            inputs,
            outputs,
        }
    }

    /// The weight's shape in PyTorch's (and Burn's) layout: `[out, in, k, k]` for
    /// convolutions, `[in, out, 2, 2]` for the transposed convolution.
    pub fn weight_shape(&self) -> [usize; 4] {
        let k = self.kind.kernel();
        match self.kind {
            Kind::UpConv2x2 => [self.inputs, self.outputs, k, k],
            Kind::Conv3x3 | Kind::Head1x1 => [self.outputs, self.inputs, k, k],
        }
    }

    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.path)
    }

    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.path)
    }

    /// The checkpoint's key for one of the PyTorch module's tensors (`weight`, `bias`).
    pub fn torch_key(&self, field: &str) -> String {
        format!("{}.{field}", self.torch)
    }

    /// Weights and biases.
    pub fn parameters(&self) -> usize {
        self.weight_shape().iter().product::<usize>() + self.outputs
    }
}

/// Two 3x3 convolutions at one level (`DoubleConv` in PyTorch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleConv {
    /// 0 is the input's resolution; level `l` is `1 / 2^l` of it.
    pub level: usize,
    pub convs: [Layer; 2],
}

impl DoubleConv {
    fn new(name: &str, level: usize, inputs: usize, outputs: usize) -> DoubleConv {
        // PyTorch's Sequential: conv 0, BatchNorm 1, ReLU 2, conv 3, BatchNorm 4, ReLU 5.
        let conv = |part: &str, index: usize, inputs: usize| Layer {
            batch_norm: Some(format!("{name}.conv.{}", index + 1)),
            ..Layer::new(
                format!("{name}.{part}"),
                format!("{name}.conv.{index}"),
                Kind::Conv3x3,
                inputs,
                outputs,
            )
        };
        DoubleConv {
            level,
            convs: [conv("first", 0, inputs), conv("second", 3, outputs)],
        }
    }

    pub fn outputs(&self) -> usize {
        self.convs[1].outputs
    }
}

/// One level on the way back up: the transposed convolution, then the double convolution
/// of its output joined with the skip of [`DoubleConv::level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderLevel {
    pub up: Layer,
    pub convs: DoubleConv,
}

impl DecoderLevel {
    /// The level whose skip joins here (and the level this one runs at).
    pub fn level(&self) -> usize {
        self.convs.level
    }
}

/// Every layer of the UNet, in the order the forward runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub config: UnetConfig,
    /// Levels `0..LEVELS`, finest first. Every level but the last is kept as a skip and
    /// max-pooled into the next.
    pub encoder: Vec<DoubleConv>,
    /// Levels `LEVELS - 2` down to 0, deepest first.
    pub decoder: Vec<DecoderLevel>,
    pub head: Layer,
}

impl Plan {
    pub fn new(config: UnetConfig) -> Plan {
        let width = |level: usize| config.base_width << level;
        // PyTorch numbers the modules in forward order: conv1..conv5 down, up6/conv6..
        // up9/conv9 back up, conv10 the head.
        let encoder: Vec<DoubleConv> = (0..LEVELS)
            .map(|level| {
                let inputs = match level {
                    0 => config.in_channels,
                    _ => width(level - 1),
                };
                DoubleConv::new(&format!("conv{}", level + 1), level, inputs, width(level))
            })
            .collect();
        let decoder = (0..LEVELS - 1)
            .rev()
            .map(|level| {
                let number = 2 * LEVELS - 1 - level;
                let up = Layer::new(
                    format!("up{number}"),
                    format!("up{number}"),
                    Kind::UpConv2x2,
                    width(level + 1),
                    width(level),
                );
                let joined = up.outputs + encoder[level].outputs();
                DecoderLevel {
                    up,
                    convs: DoubleConv::new(&format!("conv{number}"), level, joined, width(level)),
                }
            })
            .collect();
        let head_name = format!("conv{}", 2 * LEVELS);
        let head = Layer::new(
            head_name.clone(),
            head_name,
            Kind::Head1x1,
            width(0),
            config.out_channels,
        );
        Plan {
            config,
            encoder,
            decoder,
            head,
        }
    }

    /// Every layer, in forward order.
    pub fn layers(&self) -> impl Iterator<Item = &Layer> {
        let encoder = self.encoder.iter().flat_map(|level| &level.convs);
        let decoder = self
            .decoder
            .iter()
            .flat_map(|level| std::iter::once(&level.up).chain(&level.convs.convs));
        encoder.chain(decoder).chain(std::iter::once(&self.head))
    }

    /// The encoder's deepest level (not pooled, not a skip).
    pub fn bottom(&self) -> &DoubleConv {
        self.encoder.last().expect("a plan has levels")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan against MODEL.md's table, written out by hand once, here only.
    #[test]
    fn plan_is_model_md() {
        let plan = Plan::new(UnetConfig::new(3, 2, 8));
        let summary: Vec<(String, String, [usize; 4])> = plan
            .layers()
            .map(|l| (l.path.clone(), l.torch.clone(), l.weight_shape()))
            .collect();
        let expected = [
            ("conv1.first", "conv1.conv.0", [8, 3, 3, 3]),
            ("conv1.second", "conv1.conv.3", [8, 8, 3, 3]),
            ("conv2.first", "conv2.conv.0", [16, 8, 3, 3]),
            ("conv2.second", "conv2.conv.3", [16, 16, 3, 3]),
            ("conv3.first", "conv3.conv.0", [32, 16, 3, 3]),
            ("conv3.second", "conv3.conv.3", [32, 32, 3, 3]),
            ("conv4.first", "conv4.conv.0", [64, 32, 3, 3]),
            ("conv4.second", "conv4.conv.3", [64, 64, 3, 3]),
            ("conv5.first", "conv5.conv.0", [128, 64, 3, 3]),
            ("conv5.second", "conv5.conv.3", [128, 128, 3, 3]),
            ("up6", "up6", [128, 64, 2, 2]),
            ("conv6.first", "conv6.conv.0", [64, 128, 3, 3]),
            ("conv6.second", "conv6.conv.3", [64, 64, 3, 3]),
            ("up7", "up7", [64, 32, 2, 2]),
            ("conv7.first", "conv7.conv.0", [32, 64, 3, 3]),
            ("conv7.second", "conv7.conv.3", [32, 32, 3, 3]),
            ("up8", "up8", [32, 16, 2, 2]),
            ("conv8.first", "conv8.conv.0", [16, 32, 3, 3]),
            ("conv8.second", "conv8.conv.3", [16, 16, 3, 3]),
            ("up9", "up9", [16, 8, 2, 2]),
            ("conv9.first", "conv9.conv.0", [8, 16, 3, 3]),
            ("conv9.second", "conv9.conv.3", [8, 8, 3, 3]),
            ("conv10", "conv10", [2, 8, 1, 1]),
        ];
        assert_eq!(summary.len(), expected.len());
        for ((path, torch, shape), (e_path, e_torch, e_shape)) in summary.iter().zip(expected) {
            assert_eq!(
                (path.as_str(), torch.as_str(), *shape),
                (e_path, e_torch, e_shape)
            );
        }
        assert_eq!(
            plan.encoder[0].convs[1].batch_norm.as_deref(),
            Some("conv1.conv.4")
        );
        assert_eq!(
            plan.decoder
                .iter()
                .map(DecoderLevel::level)
                .collect::<Vec<_>>(),
            [3, 2, 1, 0]
        );
    }
}
