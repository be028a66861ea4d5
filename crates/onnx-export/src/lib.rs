//! The Camelyon UNet as an ONNX graph, exactly `MODEL.md`'s function: input `input`, float32
//! NCHW already normalised to [-1, 1], with dynamic batch, height and width (multiples of 16);
//! output `output`, the sigmoid of every output channel. Replicate padding is `Pad` mode
//! `edge` before each 3x3 convolution; BatchNorm is folded into the convolutions (the weights
//! come from `unet_core`'s import); weights are initializers. Opset 17.
//!
//! With [`Precision::F16`] the weights and activations are float16 between two `Cast`s, so the
//! interface stays float32.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{Tensor as TensorType, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
};
use unet_core::FoldedWeights;
use unet_core::architecture::{DoubleConv, Layer};
use unet_core::weights::{Tensor, WeightsError};

/// ONNX opset the graph is written for, and the IR version that goes with it.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";

/// Precision of the exported weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot export the model: {0}")]
    Weights(#[from] WeightsError),
    #[error("cannot encode the ONNX model: {0}")]
    Encode(#[from] protobuf::Error),
    #[error("{file}: cannot write the ONNX model: {cause}")]
    Write {
        file: PathBuf,
        cause: std::io::Error,
    },
}

/// Writes the model to `path` atomically (a temporary file beside it, renamed when complete).
pub fn write(
    weights: &FoldedWeights,
    precision: Precision,
    path: &Path,
) -> Result<(), ExportError> {
    let failed = |cause: std::io::Error| ExportError::Write {
        file: path.to_path_buf(),
        cause,
    };
    let bytes = to_bytes(weights, precision)?;
    let mut file = output_file::beside(path).map_err(failed)?;
    file.write_all(&bytes).map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// The serialised `ModelProto`.
pub fn to_bytes(weights: &FoldedWeights, precision: Precision) -> Result<Vec<u8>, ExportError> {
    Ok(model(weights, precision)?.write_to_bytes()?)
}

fn model(weights: &FoldedWeights, precision: Precision) -> Result<ModelProto, WeightsError> {
    let mut graph = Graph::new(weights, precision);
    let config = weights.config;
    let plan = weights.plan();
    let mut x = graph.cast_in(INPUT);
    let mut skips = Vec::new();
    let (bottom, above) = plan.encoder.split_last().expect("a UNet has levels");
    for level in above {
        let skip = graph.double_conv(level, &x)?;
        x = graph.max_pool(&skip);
        skips.push(skip);
    }
    x = graph.double_conv(bottom, &x)?;
    for level in &plan.decoder {
        let up = graph.conv_transpose(&level.up, &x)?;
        let skip = skips.pop().expect("one skip per decoder level");
        // The upsampled tensor comes first, as in PyTorch's `cat([up(c), skip], dim=1)`.
        let joined = graph.node("Concat", &[&up, &skip], vec![int("axis", 1)]);
        x = graph.double_conv(&level.convs, &joined)?;
    }
    let logits = graph.conv(&plan.head, &x)?;
    let probabilities = graph.node("Sigmoid", &[&logits], vec![]);
    graph.cast_out(&probabilities, OUTPUT);

    graph
        .proto
        .input
        .push(nchw_float(INPUT, config.in_channels));
    graph
        .proto
        .output
        .push(nchw_float(OUTPUT, config.out_channels));
    graph.proto.name = "camelyon_unet".to_string();

    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.producer_name = "wsi-unet convert".to_string();
    model.producer_version = env!("CARGO_PKG_VERSION").to_string();
    model.doc_string = format!(
        "Camelyon UNet (in {}, out {}, width {}): sigmoid outputs for input normalised as (p / 255 - 0.5) / 0.5",
        config.in_channels, config.out_channels, config.base_width
    );
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import.push(opset);
    model.graph = Some(graph.proto).into();
    Ok(model)
}

/// A graph under construction: nodes in order, initializers, unique names.
struct Graph<'a> {
    proto: GraphProto,
    weights: &'a FoldedWeights,
    precision: Precision,
    counter: usize,
}

impl<'a> Graph<'a> {
    fn new(weights: &'a FoldedWeights, precision: Precision) -> Self {
        let mut graph = Graph {
            proto: GraphProto::new(),
            weights,
            precision,
            counter: 0,
        };
        // The same pads for every 3x3 convolution: one pixel on each side of H and W (NCHW).
        graph
            .proto
            .initializer
            .push(int64_tensor("pads_hw_1", &[0, 0, 1, 1, 0, 0, 1, 1]));
        graph
    }

    /// Appends a node with a fresh output name, which it returns.
    fn node(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.counter += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.counter);
        let mut node = NodeProto::new();
        node.op_type = op.to_string();
        node.name = output.clone();
        node.input = inputs.iter().map(|i| i.to_string()).collect();
        node.output = vec![output.clone()];
        node.attribute = attributes;
        self.proto.node.push(node);
        output
    }

    /// The weight called `name` (PyTorch's layout), added as an initializer in the export
    /// precision.
    fn initializer(&mut self, name: &str) -> Result<String, WeightsError> {
        let Tensor { values, shape } = self.weights.get(name)?;
        let mut tensor = TensorProto::new();
        tensor.name = name.to_string();
        tensor.dims = shape.iter().map(|&d| d as i64).collect();
        match self.precision {
            Precision::F32 => {
                tensor.data_type = DataType::FLOAT as i32;
                tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            }
            Precision::F16 => {
                tensor.data_type = DataType::FLOAT16 as i32;
                tensor.raw_data = values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
            }
        }
        self.proto.initializer.push(tensor);
        Ok(name.to_string())
    }

    /// A layer's op on `x` with its weight and bias, and its kernel shape.
    fn layer_node(
        &mut self,
        op: &str,
        layer: &Layer,
        x: &str,
        extra: Vec<AttributeProto>,
    ) -> Result<String, WeightsError> {
        let weight = self.initializer(&layer.weight_name())?;
        let bias = self.initializer(&layer.bias_name())?;
        let k = layer.kind.kernel() as i64;
        let mut attributes = vec![ints("kernel_shape", &[k, k])];
        attributes.extend(extra);
        Ok(self.node(op, &[x, &weight, &bias], attributes))
    }

    fn conv(&mut self, layer: &Layer, x: &str) -> Result<String, WeightsError> {
        self.layer_node("Conv", layer, x, vec![])
    }

    /// Replicate padding, 3x3 convolution (BatchNorm folded in), ReLU; twice.
    fn double_conv(&mut self, level: &DoubleConv, x: &str) -> Result<String, WeightsError> {
        let mut x = x.to_string();
        for layer in &level.convs {
            let padded = self.node("Pad", &[&x, "pads_hw_1"], vec![string("mode", "edge")]);
            let conv = self.conv(layer, &padded)?;
            x = self.node("Relu", &[&conv], vec![]);
        }
        Ok(x)
    }

    fn max_pool(&mut self, x: &str) -> String {
        self.node(
            "MaxPool",
            &[x],
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        )
    }

    fn conv_transpose(&mut self, layer: &Layer, x: &str) -> Result<String, WeightsError> {
        self.layer_node("ConvTranspose", layer, x, vec![ints("strides", &[2, 2])])
    }

    /// The graph input, cast to float16 when the model is half precision.
    fn cast_in(&mut self, input: &str) -> String {
        match self.precision {
            Precision::F32 => input.to_string(),
            Precision::F16 => {
                self.node("Cast", &[input], vec![int("to", DataType::FLOAT16 as i64)])
            }
        }
    }

    /// Names the last value `output`, cast back to float32 when half precision.
    fn cast_out(&mut self, x: &str, output: &str) {
        let to = match self.precision {
            Precision::F32 => vec![],
            Precision::F16 => vec![int("to", DataType::FLOAT as i64)],
        };
        let op = if to.is_empty() { "Identity" } else { "Cast" };
        let mut node = NodeProto::new();
        node.op_type = op.to_string();
        node.name = output.to_string();
        node.input = vec![x.to_string()];
        node.output = vec![output.to_string()];
        node.attribute = to;
        self.proto.node.push(node);
    }
}

fn attribute(name: &str, kind: AttributeType) -> AttributeProto {
    let mut attribute = AttributeProto::new();
    attribute.name = name.to_string();
    attribute.type_ = kind.into();
    attribute
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = attribute(name, AttributeType::INT);
    a.i = value;
    a
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = attribute(name, AttributeType::INTS);
    a.ints = values.to_vec();
    a
}

fn string(name: &str, value: &str) -> AttributeProto {
    let mut a = attribute(name, AttributeType::STRING);
    a.s = value.as_bytes().to_vec();
    a
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name.to_string();
    tensor.data_type = DataType::INT64 as i32;
    tensor.dims = vec![values.len() as i64];
    tensor.int64_data = values.to_vec();
    tensor
}

/// A float32 NCHW tensor with `channels` channels and dynamic batch, height and width.
fn nchw_float(name: &str, channels: usize) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    let dims = [
        dimension::Value::DimParam("batch".to_string()),
        dimension::Value::DimValue(channels as i64),
        dimension::Value::DimParam("height".to_string()),
        dimension::Value::DimParam("width".to_string()),
    ];
    for value in dims {
        let mut d = Dimension::new();
        d.value = Some(value);
        shape.dim.push(d);
    }
    let mut tensor = TensorType::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(shape).into();
    let mut kind = TypeProto::new();
    kind.value = Some(TypeValue::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.to_string();
    info.type_ = Some(kind).into();
    info
}
