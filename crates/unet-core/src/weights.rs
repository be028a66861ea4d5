//! The UNet's inference weights (BatchNorm folded into the convolutions), by the plan's
//! tensor names, and the layouts the engines read them in.

use std::collections::BTreeMap;

use crate::architecture::{Layer, Plan, UnetConfig};

/// A weight lookup that found nothing, or not what the plan says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("tensor `{name}` is missing (expected shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` holds {value} at index {index}: the weights are damaged")]
    NotFinite {
        name: String,
        index: usize,
        value: f32,
    },
}

/// One tensor: values (row-major) and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// Every tensor of the plan of `config`, checked by name and shape when built.
#[derive(Debug, Clone)]
pub struct FoldedWeights {
    pub config: UnetConfig,
    tensors: BTreeMap<String, Tensor>,
}

impl FoldedWeights {
    /// Keeps the plan's tensors from `tensors` (others are ignored); the error names the
    /// first that is missing, of the wrong shape, or holding a NaN or an infinity (a model
    /// that would quietly answer NaN everywhere).
    pub fn from_tensors(
        config: UnetConfig,
        mut tensors: BTreeMap<String, Tensor>,
    ) -> Result<FoldedWeights, WeightsError> {
        let mut kept = BTreeMap::new();
        for (name, expected) in expected_tensors(&Plan::new(config)) {
            let tensor = tensors.remove(&name).ok_or_else(|| WeightsError::Missing {
                name: name.clone(),
                expected: expected.clone(),
            })?;
            if tensor.shape != expected || tensor.values.len() != expected.iter().product::<usize>()
            {
                return Err(WeightsError::WrongShape {
                    name,
                    expected,
                    found: tensor.shape,
                });
            }
            if let Some(index) = tensor.values.iter().position(|v| !v.is_finite()) {
                return Err(WeightsError::NotFinite {
                    name,
                    index,
                    value: tensor.values[index],
                });
            }
            kept.insert(name, tensor);
        }
        Ok(FoldedWeights {
            config,
            tensors: kept,
        })
    }

    /// Random weights, uniform in `±1 / sqrt(fan_in)` as PyTorch initialises convolutions,
    /// from a fixed `seed` (benchmarks and tests need a model, not a trained one).
    pub fn random(config: UnetConfig, seed: u64) -> FoldedWeights {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut uniform = move || {
            // xorshift64*: plenty for weights, and the same on every machine.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let tensors = expected_tensors(&Plan::new(config))
            .into_iter()
            .map(|(name, shape)| {
                let fan_in = match shape.len() {
                    4 => shape[1] * shape[2] * shape[3],
                    _ => shape[0],
                };
                let bound = 1.0 / (fan_in as f32).sqrt();
                let values = (0..shape.iter().product::<usize>())
                    .map(|_| bound * uniform())
                    .collect();
                (name, Tensor { values, shape })
            })
            .collect();
        FoldedWeights { config, tensors }
    }

    pub fn plan(&self) -> Plan {
        Plan::new(self.config)
    }

    /// The tensor called `name` (`conv1.first.weight`).
    pub fn get(&self, name: &str) -> Result<&Tensor, WeightsError> {
        self.tensors.get(name).ok_or_else(|| WeightsError::Missing {
            name: name.to_string(),
            expected: Vec::new(),
        })
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// The layer's weight in PyTorch's layout ([`Layer::weight_shape`]).
    pub fn weight(&self, layer: &Layer) -> Result<&[f32], WeightsError> {
        Ok(&self.get(&layer.weight_name())?.values)
    }

    pub fn bias(&self, layer: &Layer) -> Result<&[f32], WeightsError> {
        Ok(&self.get(&layer.bias_name())?.values)
    }

    /// The layer's weight as `[tap][input][output]`, the layout every engine's kernels read.
    pub fn tap_major(&self, layer: &Layer) -> Result<TapMajor, WeightsError> {
        let weight = self.weight(layer)?;
        let (taps, inputs, outputs) = (layer.kind.taps(), layer.inputs, layer.outputs);
        let mut values = vec![0.0; taps * inputs * outputs];
        let [a, b, _, _] = layer.weight_shape();
        for (index, &value) in weight.iter().enumerate() {
            let (tap, pair) = (index % taps, index / taps);
            // PyTorch's first two dimensions: [out, in] for convolutions, [in, out] transposed.
            let (first, second) = (pair / b, pair % b);
            debug_assert!(first < a);
            let (input, output) = match layer.kind {
                crate::architecture::Kind::UpConv2x2 => (first, second),
                _ => (second, first),
            };
            values[(tap * inputs + input) * outputs + output] = value;
        }
        Ok(TapMajor {
            taps,
            inputs,
            outputs,
            values,
        })
    }
}

/// A layer's weight as `[tap][input][output]`.
#[derive(Debug, Clone)]
pub struct TapMajor {
    pub taps: usize,
    pub inputs: usize,
    pub outputs: usize,
    pub values: Vec<f32>,
}

impl TapMajor {
    pub fn get(&self, tap: usize, input: usize, output: usize) -> f32 {
        self.values[(tap * self.inputs + input) * self.outputs + output]
    }
}

/// Every tensor of the plan by name, with its shape.
pub fn expected_tensors(plan: &Plan) -> Vec<(String, Vec<usize>)> {
    plan.layers()
        .flat_map(|layer| {
            [
                (layer.weight_name(), layer.weight_shape().to_vec()),
                (layer.bias_name(), vec![layer.outputs]),
            ]
        })
        .collect()
}
