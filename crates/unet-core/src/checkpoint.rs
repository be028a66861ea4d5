//! Reading users' PyTorch checkpoints (`UNet_17.pth`) into folded inference weights.
//!
//! The file is parsed by burn-store's PyTorch reader, a pickle *parser*: no pickled code is
//! ever executed. Checkpoints come in three shapes, all accepted:
//! a plain `state_dict`; a training dict holding it under `model_state_dict`, `state_dict` or
//! `model` (optimizer state and the like beside it are ignored); keys prefixed `module.` by
//! `DataParallel`. The architecture is inferred from `conv1.conv.0.weight` and
//! `conv10.weight`, then every tensor the UNet needs is checked by name and shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_store::pytorch_reader::{
    DType as TorchDType, PytorchError, PytorchReader, Tensor as TorchTensor,
};

use crate::model::UnetConfig;

/// PyTorch's `BatchNorm2d` default, which the users' model keeps.
const BATCH_NORM_EPS: f64 = 1e-5;
/// The key that identifies a Camelyon UNet and gives its input channels and width.
const FIRST_CONV: &str = "conv1.conv.0.weight";
/// Where training scripts put the state dict, outermost first; `module.` comes from DataParallel.
const WRAPPERS: [&str; 4] = ["", "model_state_dict.", "state_dict.", "model."];

/// What can go wrong reading a checkpoint. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{file}: cannot read the checkpoint: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error(
        "{file}: not a Camelyon UNet checkpoint: no `{FIRST_CONV}` among its {count} tensors{sample}"
    )]
    NotUnet {
        file: PathBuf,
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
    #[error("{file}: tensor `{key}` has dtype {dtype:?}, expected a floating-point tensor")]
    WrongDtype {
        file: PathBuf,
        key: String,
        dtype: TorchDType,
    },
}

/// One inference tensor: values (row-major, f32) and shape.
#[derive(Debug, Clone)]
struct Folded {
    values: Vec<f32>,
    shape: Vec<usize>,
}

/// The UNet's inference weights, keyed by the Burn module path (`conv1.first.weight`, ...),
/// with each BatchNorm folded into the convolution before it.
#[derive(Debug, Clone)]
pub struct FoldedWeights {
    pub config: UnetConfig,
    tensors: BTreeMap<String, Folded>,
}

impl FoldedWeights {
    /// Weights read back from a model file: every tensor the architecture needs must be there
    /// with its shape; the error names the first that is not.
    pub(crate) fn from_tensors(
        config: UnetConfig,
        mut tensors: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    ) -> Result<FoldedWeights, String> {
        let mut folded = BTreeMap::new();
        for (name, shape) in inference_tensors(&config) {
            let (values, found) = tensors
                .remove(&name)
                .ok_or_else(|| format!("tensor `{name}` is missing (expected shape {shape:?})"))?;
            if found != shape || values.len() != shape.iter().product::<usize>() {
                return Err(format!(
                    "tensor `{name}` has shape {found:?}, expected {shape:?}"
                ));
            }
            folded.insert(name, Folded { values, shape });
        }
        Ok(FoldedWeights {
            config,
            tensors: folded,
        })
    }

    /// Values and shape of the tensor at a Burn module path. Panics on a name this crate
    /// did not create: that is a bug here, not bad input.
    pub fn get(&self, name: &str) -> (&[f32], &[usize]) {
        let folded = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("no folded tensor `{name}`"));
        (&folded.values, &folded.shape)
    }
}

/// A checkpoint read and validated, with what was found in it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: FoldedWeights,
    /// The prefix the state dict sat under (`""`, `"module."`, `"model_state_dict."`, ...).
    pub prefix: String,
    /// Keys not used: `num_batches_tracked`, optimizer state, other entries of a training dict.
    pub ignored: Vec<String>,
    /// Trainable parameters of the PyTorch model (BatchNorm's affine ones included, running
    /// statistics not), as `sum(p.numel() for p in model.parameters())` counts them.
    pub torch_parameters: usize,
}

impl Checkpoint {
    /// Reads a PyTorch checkpoint, infers the architecture and folds BatchNorm.
    pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let file = path.to_path_buf();
        let reader = PytorchReader::new(path).map_err(|err| CheckpointError::Unreadable {
            file: file.clone(),
            reason: match err {
                PytorchError::Zip(_) => format!("{err} (the file is truncated or damaged)"),
                _ => err.to_string(),
            },
        })?;
        let tensors = reader.into_tensors();
        let prefix = find_prefix(&tensors).ok_or_else(|| {
            let mut keys: Vec<&String> = tensors.keys().collect();
            keys.sort();
            let sample = if keys.is_empty() {
                String::new()
            } else {
                let shown: Vec<&str> = keys.iter().take(5).map(|k| k.as_str()).collect();
                format!(" (found e.g. {})", shown.join(", "))
            };
            CheckpointError::NotUnet {
                file: file.clone(),
                count: tensors.len(),
                sample,
            }
        })?;
        let state = StateDict {
            file: &file,
            prefix: &prefix,
            tensors: &tensors,
        };
        let config = state.infer_config()?;
        let expected = expected_tensors(&config);
        let mut folded = BTreeMap::new();
        for layer in layers(&config) {
            layer.fold_into(&state, &mut folded)?;
        }
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
        Ok(Checkpoint {
            weights: FoldedWeights {
                config,
                tensors: folded,
            },
            prefix,
            ignored,
            torch_parameters,
        })
    }
}

/// The prefix under which `conv1.conv.0.weight` sits, if it is one a training script writes.
fn find_prefix(tensors: &std::collections::HashMap<String, TorchTensor>) -> Option<String> {
    WRAPPERS
        .iter()
        .flat_map(|outer| [outer.to_string(), format!("{outer}module.")])
        .find(|prefix| tensors.contains_key(&format!("{prefix}{FIRST_CONV}")))
}

/// The state dict inside a checkpoint: key lookups with the prefix applied, errors with the file.
struct StateDict<'a> {
    file: &'a Path,
    prefix: &'a str,
    tensors: &'a std::collections::HashMap<String, TorchTensor>,
}

impl StateDict<'_> {
    fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.tensors
            .get(&format!("{}{key}", self.prefix))
            .map(|t| t.shape())
    }

    fn infer_config(&self) -> Result<UnetConfig, CheckpointError> {
        let first = self.shape_of(FIRST_CONV).unwrap_or_default();
        let (base_width, in_channels) = match first {
            [w, i, 3, 3] if *w > 0 && *i > 0 => (*w, *i),
            found => return Err(self.wrong_shape(FIRST_CONV, &[0, 0, 3, 3], found)),
        };
        let out_key = "conv10.weight";
        let out_channels = match self.shape_of(out_key) {
            None => return Err(self.missing(out_key, &[0, base_width, 1, 1])),
            Some([o, w, 1, 1]) if *w == base_width && *o > 0 => *o,
            Some(found) => return Err(self.wrong_shape(out_key, &[0, base_width, 1, 1], found)),
        };
        Ok(UnetConfig::new(in_channels, out_channels, base_width))
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
        let bytes = tensor.read().map_err(|err| CheckpointError::Unreadable {
            file: self.file.to_path_buf(),
            reason: err.to_string(),
        })?;
        decode_floats(&bytes, tensor.dtype()).ok_or_else(|| CheckpointError::WrongDtype {
            file: self.file.to_path_buf(),
            key: key.to_string(),
            dtype: tensor.dtype(),
        })
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

/// One layer of the PyTorch model and where its folded tensors go in the Burn model.
enum Layer {
    /// PyTorch's convolution `torch` (`conv1.conv.0`), the BatchNorm after it, and the Burn
    /// module path `burn` (`conv1.first`) the folded pair becomes.
    ConvBn {
        torch: String,
        burn: String,
        channels: [usize; 2],
    },
    /// A convolution or transposed convolution without BatchNorm: its weight shape and bias length.
    Plain {
        name: String,
        shape: [usize; 4],
        bias_len: usize,
    },
}

/// Every layer of the UNet, in order.
fn layers(config: &UnetConfig) -> Vec<Layer> {
    let w = config.base_width;
    let double = [
        ("conv1", config.in_channels, w),
        ("conv2", w, 2 * w),
        ("conv3", 2 * w, 4 * w),
        ("conv4", 4 * w, 8 * w),
        ("conv5", 8 * w, 16 * w),
        ("conv6", 16 * w, 8 * w),
        ("conv7", 8 * w, 4 * w),
        ("conv8", 4 * w, 2 * w),
        ("conv9", 2 * w, w),
    ];
    let mut layers = Vec::new();
    for (name, i, o) in double {
        for (index, part, channels) in [(0, "first", [i, o]), (3, "second", [o, o])] {
            layers.push(Layer::ConvBn {
                torch: format!("{name}.conv.{index}"),
                burn: format!("{name}.{part}"),
                channels,
            });
        }
    }
    for (name, i, o) in [
        ("up6", 16 * w, 8 * w),
        ("up7", 8 * w, 4 * w),
        ("up8", 4 * w, 2 * w),
        ("up9", 2 * w, w),
    ] {
        // ConvTranspose2d weights are [in, out, kh, kw] in both PyTorch and Burn.
        layers.push(Layer::Plain {
            name: name.to_string(),
            shape: [i, o, 2, 2],
            bias_len: o,
        });
    }
    layers.push(Layer::Plain {
        name: "conv10".to_string(),
        shape: [config.out_channels, w, 1, 1],
        bias_len: config.out_channels,
    });
    layers
}

/// Every PyTorch key the UNet uses, with its shape (`num_batches_tracked` is not used).
fn expected_tensors(config: &UnetConfig) -> BTreeMap<String, Vec<usize>> {
    let mut keys = BTreeMap::new();
    for layer in layers(config) {
        match layer {
            Layer::ConvBn {
                torch, channels, ..
            } => {
                let [i, o] = channels;
                keys.insert(format!("{torch}.weight"), vec![o, i, 3, 3]);
                keys.insert(format!("{torch}.bias"), vec![o]);
                let bn = batch_norm_of(&torch);
                for field in ["weight", "bias", "running_mean", "running_var"] {
                    keys.insert(format!("{bn}.{field}"), vec![o]);
                }
            }
            Layer::Plain {
                name,
                shape,
                bias_len,
            } => {
                keys.insert(format!("{name}.weight"), shape.to_vec());
                keys.insert(format!("{name}.bias"), vec![bias_len]);
            }
        }
    }
    keys
}

/// Every tensor of the inference model by Burn module path, with its shape.
fn inference_tensors(config: &UnetConfig) -> Vec<(String, Vec<usize>)> {
    let mut tensors = Vec::new();
    for layer in layers(config) {
        match layer {
            Layer::ConvBn {
                burn,
                channels: [i, o],
                ..
            } => {
                tensors.push((format!("{burn}.weight"), vec![o, i, 3, 3]));
                tensors.push((format!("{burn}.bias"), vec![o]));
            }
            Layer::Plain {
                name,
                shape,
                bias_len,
            } => {
                tensors.push((format!("{name}.weight"), shape.to_vec()));
                tensors.push((format!("{name}.bias"), vec![bias_len]));
            }
        }
    }
    tensors
}

/// `conv1.conv.0` -> `conv1.conv.1`: the BatchNorm right after a convolution.
fn batch_norm_of(conv: &str) -> String {
    let (parent, index) = conv.rsplit_once('.').expect("layer path has an index");
    let index: usize = index.parse().expect("layer index is numeric");
    format!("{parent}.{}", index + 1)
}

impl Layer {
    fn fold_into(
        &self,
        state: &StateDict,
        out: &mut BTreeMap<String, Folded>,
    ) -> Result<(), CheckpointError> {
        match self {
            Layer::ConvBn {
                torch,
                burn,
                channels: [i, o],
            } => {
                let (i, o) = (*i, *o);
                let weight = state.read(&format!("{torch}.weight"), &[o, i, 3, 3])?;
                let bias = state.read(&format!("{torch}.bias"), &[o])?;
                let bn = batch_norm_of(torch);
                let gamma = state.read(&format!("{bn}.weight"), &[o])?;
                let beta = state.read(&format!("{bn}.bias"), &[o])?;
                let mean = state.read(&format!("{bn}.running_mean"), &[o])?;
                let var = state.read(&format!("{bn}.running_var"), &[o])?;
                // y = gamma (conv(x) + b - mean) / sqrt(var + eps) + beta, per output channel.
                let scale: Vec<f64> = (0..o)
                    .map(|c| gamma[c] / (var[c] + BATCH_NORM_EPS).sqrt())
                    .collect();
                let per_out = i * 9;
                let weight = weight
                    .iter()
                    .enumerate()
                    .map(|(n, v)| (v * scale[n / per_out]) as f32)
                    .collect();
                let bias = (0..o)
                    .map(|c| ((bias[c] - mean[c]) * scale[c] + beta[c]) as f32)
                    .collect();
                insert(out, format!("{burn}.weight"), weight, vec![o, i, 3, 3]);
                insert(out, format!("{burn}.bias"), bias, vec![o]);
            }
            Layer::Plain {
                name,
                shape,
                bias_len,
            } => {
                let weight = state.read(&format!("{name}.weight"), shape)?;
                let bias = state.read(&format!("{name}.bias"), &[*bias_len])?;
                let to_f32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
                insert(
                    out,
                    format!("{name}.weight"),
                    to_f32(weight),
                    shape.to_vec(),
                );
                insert(out, format!("{name}.bias"), to_f32(bias), vec![*bias_len]);
            }
        }
        Ok(())
    }
}

fn insert(out: &mut BTreeMap<String, Folded>, name: String, values: Vec<f32>, shape: Vec<usize>) {
    out.insert(name, Folded { values, shape });
}
