//! Reading users' PyTorch checkpoints (`UNet_17.pth`) into folded inference weights.
//!
//! The file is parsed by burn-store's PyTorch reader, a pickle *parser*: no pickled code is
//! ever executed. Checkpoints come in three shapes, all accepted:
//! a plain `state_dict`; a training dict holding it under `model_state_dict`, `state_dict` or
//! `model` (optimizer state and the like beside it are ignored); keys prefixed `module.` by
//! `DataParallel`. The architecture is inferred from the first convolution's weight
//! (`conv1.conv.0.weight`) and the head's (`conv10.weight`), then every tensor the plan
//! ([`crate::architecture`]) needs is checked by name and shape and each BatchNorm folded
//! into the convolution before it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn_store::pytorch_reader::{
    DType as TorchDType, PytorchError, PytorchReader, Tensor as TorchTensor,
};

use crate::architecture::{Layer, Plan, UnetConfig};
use crate::weights::{FoldedWeights, Tensor, WeightsError};

/// PyTorch's `BatchNorm2d` default, which the users' model keeps.
const BATCH_NORM_EPS: f64 = 1e-5;
/// Where training scripts put the state dict, outermost first; `module.` comes from DataParallel.
const WRAPPERS: [&str; 4] = ["", "model_state_dict.", "state_dict.", "model."];
/// A BatchNorm's tensors, each one value per channel.
const BATCH_NORM_FIELDS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// What can go wrong reading a checkpoint. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{file}: cannot read the checkpoint: {cause}{hint}")]
    Unreadable {
        file: PathBuf,
        cause: PytorchError,
        /// What the reader's error means for the user, when it is not plain.
        hint: &'static str,
    },
    #[error("{file}: cannot read tensor `{key}`: {cause}")]
    TensorData {
        file: PathBuf,
        key: String,
        cause: std::io::Error,
    },
    #[error("{file}: not a Camelyon UNet checkpoint: no `{key}` among its {count} tensors{sample}")]
    NotUnet {
        file: PathBuf,
        key: String,
        count: usize,
        sample: String,
    },
    #[error("{file}: tensor `{key}` is missing (expected shape {expected:?})")]
    MissingKey {
        file: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        file: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{key}` holds {value} at index {index}: the checkpoint is damaged")]
    NotFinite {
        file: PathBuf,
        key: String,
        index: usize,
        value: f64,
    },
    #[error(
        "{file}: folding BatchNorm into the convolutions gave {cause} (a negative running variance?)"
    )]
    Folding { file: PathBuf, cause: WeightsError },
    #[error("{file}: tensor `{key}` has dtype {dtype:?}, expected a floating-point tensor")]
    WrongDtype {
        file: PathBuf,
        key: String,
        dtype: TorchDType,
    },
}

/// A checkpoint read and validated, with what was found in it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: FoldedWeights,
    /// The prefix the state dict sat under (`""`, `"module."`, `"model_state_dict."`, ...).
    pub prefix: String,
    /// Keys not used: `num_batches_tracked`, optimizer state, other entries of a training dict.
    pub ignored: Vec<String>,
    /// Python names the pickle would call on loading besides PyTorch's own (`posix.system`,
    /// say): never called here, reported so that a user knows the file is not what it seems.
    pub suspicious: Vec<String>,
    /// Trainable parameters of the PyTorch model (BatchNorm's affine ones included, running
    /// statistics not), as `sum(p.numel() for p in model.parameters())` counts them.
    pub torch_parameters: usize,
}

impl Checkpoint {
    /// Reads a PyTorch checkpoint, infers the architecture and folds BatchNorm.
    pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let file = path.to_path_buf();
        let reader = PytorchReader::new(path).map_err(|source| CheckpointError::Unreadable {
            file: file.clone(),
            hint: match source {
                PytorchError::Zip(_) => " (the file is truncated or damaged)",
                _ => "",
            },
            cause: source,
        })?;
        let tensors = reader.into_tensors();
        // Only the names matter here: any config gives the plan's names.
        let names = Plan::new(UnetConfig::new(1, 1, 1));
        let first = names.encoder[0].convs[0].torch_key("weight");
        let prefix = find_prefix(&tensors, &first).ok_or_else(|| CheckpointError::NotUnet {
            file: file.clone(),
            count: tensors.len(),
            sample: sample_of(&tensors),
            key: first.clone(),
        })?;
        let state = StateDict {
            file: &file,
            prefix: &prefix,
            tensors: &tensors,
        };
        let plan = Plan::new(state.infer_config(&first, &names.head.torch_key("weight"))?);
        let mut folded = BTreeMap::new();
        for layer in plan.layers() {
            state.fold(layer, &mut folded)?;
        }
        let expected: BTreeMap<String, Vec<usize>> = torch_tensors(&plan).collect();
        let mut ignored: Vec<String> = tensors
            .keys()
            .filter(|key| {
                key.strip_prefix(prefix.as_str())
                    .is_none_or(|local| !expected.contains_key(local))
            })
            .cloned()
            .collect();
        ignored.sort();
        let torch_parameters = expected
            .iter()
            .filter(|(key, _)| !key.contains(".running_"))
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        let weights = FoldedWeights::from_tensors(plan.config, folded).map_err(|source| {
            CheckpointError::Folding {
                file,
                cause: source,
            }
        })?;
        Ok(Checkpoint {
            weights,
            prefix,
            ignored,
            suspicious: crate::pickle_globals::unexpected_globals(path),
            torch_parameters,
        })
    }
}

/// A few of the checkpoint's keys, for the message that says it is not a UNet's.
fn sample_of(tensors: &HashMap<String, TorchTensor>) -> String {
    let mut keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
    keys.sort();
    match keys.len() {
        0 => String::new(),
        _ => format!(" (found e.g. {})", keys[..keys.len().min(5)].join(", ")),
    }
}

/// Every PyTorch key the plan uses, with its shape (`num_batches_tracked` is not used).
fn torch_tensors(plan: &Plan) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
    plan.layers().flat_map(|layer| {
        let own = [
            (
                format!("{}.weight", layer.torch),
                layer.weight_shape().to_vec(),
            ),
            (format!("{}.bias", layer.torch), vec![layer.outputs]),
        ];
        let batch_norm = layer.batch_norm.iter().flat_map(|bn| {
            BATCH_NORM_FIELDS.map(|field| (format!("{bn}.{field}"), vec![layer.outputs]))
        });
        own.into_iter().chain(batch_norm)
    })
}

/// The prefix under which the first convolution's weight (`first`) sits, if it is one a
/// training script writes.
fn find_prefix(tensors: &HashMap<String, TorchTensor>, first: &str) -> Option<String> {
    WRAPPERS
        .iter()
        .flat_map(|outer| [outer.to_string(), format!("{outer}module.")])
        .find(|prefix| tensors.contains_key(&format!("{prefix}{first}")))
}

/// The state dict inside a checkpoint: key lookups with the prefix applied, errors with the file.
struct StateDict<'a> {
    file: &'a Path,
    prefix: &'a str,
    tensors: &'a HashMap<String, TorchTensor>,
}

impl StateDict<'_> {
    fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.tensors
            .get(&format!("{}{key}", self.prefix))
            .map(|t| t.shape())
    }

    /// Input channels and width from the first convolution's weight (`first`), output
    /// channels from the head's (`head`).
    fn infer_config(&self, first: &str, head: &str) -> Result<UnetConfig, CheckpointError> {
        let (base_width, in_channels) = match self.shape_of(first).unwrap_or_default() {
            [w, i, 3, 3] if *w > 0 && *i > 0 => (*w, *i),
            found => return Err(self.wrong_shape(first, &[0, 0, 3, 3], found)),
        };
        let out_channels = match self.shape_of(head) {
            None => return Err(self.missing(head, &[0, base_width, 1, 1])),
            Some([o, w, 1, 1]) if *w == base_width && *o > 0 => *o,
            Some(found) => return Err(self.wrong_shape(head, &[0, base_width, 1, 1], found)),
        };
        Ok(UnetConfig::new(in_channels, out_channels, base_width))
    }

    /// The layer's folded weight and bias, under its plan path: BatchNorm, where the layer has
    /// one, folded in (`y = gamma (conv(x) + b - mean) / sqrt(var + eps) + beta`, per output
    /// channel, in f64).
    fn fold(
        &self,
        layer: &Layer,
        out: &mut BTreeMap<String, Tensor>,
    ) -> Result<(), CheckpointError> {
        let shape = layer.weight_shape().to_vec();
        let channels = [layer.outputs];
        let mut weight = self.read(&layer.torch_key("weight"), &shape)?;
        let mut bias = self.read(&layer.torch_key("bias"), &channels)?;
        if let Some(bn) = &layer.batch_norm {
            let [gamma, beta, mean, var] = BATCH_NORM_FIELDS
                .map(|field| self.read(&format!("{bn}.{field}"), &channels))
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
                .try_into()
                .expect("four fields");
            let scale: Vec<f64> = (0..layer.outputs)
                .map(|c| gamma[c] / (var[c] + BATCH_NORM_EPS).sqrt())
                .collect();
            // Convolution weights are [out, in, k, k]: one scale per leading index.
            let per_output = weight.len() / layer.outputs;
            weight
                .iter_mut()
                .enumerate()
                .for_each(|(n, v)| *v *= scale[n / per_output]);
            for c in 0..layer.outputs {
                bias[c] = (bias[c] - mean[c]) * scale[c] + beta[c];
            }
        }
        let to_f32 = |values: Vec<f64>, shape: Vec<usize>| Tensor {
            values: values.into_iter().map(|v| v as f32).collect(),
            shape,
        };
        out.insert(layer.weight_name(), to_f32(weight, shape));
        out.insert(layer.bias_name(), to_f32(bias, channels.to_vec()));
        Ok(())
    }

    /// The tensor's values as f64, after checking its shape.
    fn read(&self, key: &str, expected: &[usize]) -> Result<Vec<f64>, CheckpointError> {
        let tensor = self
            .tensors
            .get(&format!("{}{key}", self.prefix))
            .ok_or_else(|| self.missing(key, expected))?;
        if tensor.shape() != expected {
            return Err(self.wrong_shape(key, expected, tensor.shape()));
        }
        let bytes = tensor
            .read()
            .map_err(|source| CheckpointError::TensorData {
                file: self.file.to_path_buf(),
                key: key.to_string(),
                cause: source,
            })?;
        let values =
            decode_floats(&bytes, tensor.dtype()).ok_or_else(|| CheckpointError::WrongDtype {
                file: self.file.to_path_buf(),
                key: key.to_string(),
                dtype: tensor.dtype(),
            })?;
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(CheckpointError::NotFinite {
                file: self.file.to_path_buf(),
                key: format!("{}{key}", self.prefix),
                index,
                value: values[index],
            });
        }
        Ok(values)
    }

    fn missing(&self, key: &str, expected: &[usize]) -> CheckpointError {
        CheckpointError::MissingKey {
            file: self.file.to_path_buf(),
            key: format!("{}{key}", self.prefix),
            expected: expected.to_vec(),
        }
    }

    fn wrong_shape(&self, key: &str, expected: &[usize], found: &[usize]) -> CheckpointError {
        CheckpointError::WrongShape {
            file: self.file.to_path_buf(),
            key: format!("{}{key}", self.prefix),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }
}

/// Native-endian tensor bytes as f64; `None` for a non-float dtype.
fn decode_floats(bytes: &[u8], dtype: TorchDType) -> Option<Vec<f64>> {
    let values = match dtype {
        TorchDType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect(),
        TorchDType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        TorchDType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_ne_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        TorchDType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_ne_bytes(c.try_into().unwrap()).to_f64())
            .collect(),
        _ => return None,
    };
    Some(values)
}
