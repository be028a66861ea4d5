//! The converted model on disk: Burn's burnpack format, one f32 tensor per name of the
//! [`crate::architecture::Plan`] (`conv1.first.weight`, ...), with the architecture in its
//! metadata so a loader needs nothing but the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_store::BurnpackStore;
use burn_store::burn_pack::{Bytes, Error as PackError, Reader, Tensor as PackTensor, Writer};

use crate::architecture::UnetConfig;
use crate::weights::{FoldedWeights, Tensor, WeightsError};

/// Extension of converted model files.
pub const MODEL_EXTENSION: &str = "bpk";
/// Metadata key holding the [`UnetConfig`] as JSON.
const CONFIG_KEY: &str = "camelyon_unet_config";
/// Metadata key naming the checkpoint the model was converted from.
const SOURCE_KEY: &str = "source_checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{file}: no such file")]
    Missing { file: PathBuf },
    #[error("{file}: cannot read the model file: {source}")]
    Unreadable {
        file: PathBuf,
        #[source]
        source: PackError,
    },
    #[error("{file}: cannot read the model file: tensor `{name}` is not a float tensor")]
    NotFloat { file: PathBuf, name: String },
    #[error("{file}: cannot read the model file: {source}")]
    Incomplete {
        file: PathBuf,
        #[source]
        source: WeightsError,
    },
    #[error(
        "{file}: not a Camelyon UNet model file (no `{CONFIG_KEY}` metadata); convert a checkpoint with `cargo run -p convert -- CHECKPOINT.pth`"
    )]
    NotUnet { file: PathBuf },
    #[error("{file}: cannot write the model file: {source}")]
    Unwritable {
        file: PathBuf,
        #[source]
        source: PackError,
    },
}

/// Writes `weights` to `path` atomically: to a temporary file beside it, renamed when
/// complete (and removed if anything fails). `source` names the checkpoint they came from.
pub fn save(weights: &FoldedWeights, source: &str, path: &Path) -> Result<(), ModelFileError> {
    let tensors = weights
        .tensors()
        .map(|(name, tensor)| {
            let bytes = tensor.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            PackTensor::new(
                name.to_string(),
                DType::F32,
                tensor.shape.clone(),
                None,
                Bytes::from_bytes_vec(bytes),
            )
        })
        .collect();
    let config = serde_json::to_string(&weights.config).expect("a config serialises");
    let mut writer = Writer::new(tensors)
        .auto_extension(false)
        .overwrite(true)
        .with_metadata(CONFIG_KEY, &config)
        .with_metadata(SOURCE_KEY, source);
    for (key, value) in BurnpackStore::default_metadata() {
        writer = writer.with_metadata(&key, &value);
    }
    writer
        .write_to_file(path)
        .map_err(|source| ModelFileError::Unwritable {
            file: path.to_path_buf(),
            source,
        })
}

/// The folded weights a model file holds, as `convert` computed them.
pub fn read_weights(path: &Path) -> Result<FoldedWeights, ModelFileError> {
    let file = || path.to_path_buf();
    if !path.is_file() {
        return Err(ModelFileError::Missing { file: file() });
    }
    let unreadable = |source| ModelFileError::Unreadable {
        file: file(),
        source,
    };
    let reader = Reader::from_file(path).map_err(unreadable)?;
    let config = config_of(path, &reader)?;
    let mut tensors = BTreeMap::new();
    for tensor in reader.into_tensors().map_err(unreadable)? {
        let (name, dtype, shape, _, bytes) = tensor.into_parts().map_err(unreadable)?;
        let values = TensorData::from_bytes(bytes, shape.clone(), dtype)
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|_| ModelFileError::NotFloat {
                file: file(),
                name: name.clone(),
            })?;
        let shape = shape.to_vec();
        tensors.insert(name, Tensor { values, shape });
    }
    FoldedWeights::from_tensors(config, tensors).map_err(|source| ModelFileError::Incomplete {
        file: file(),
        source,
    })
}

/// The architecture recorded in a model file's metadata.
fn config_of(path: &Path, reader: &Reader) -> Result<UnetConfig, ModelFileError> {
    reader
        .metadata()
        .get(CONFIG_KEY)
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| ModelFileError::NotUnet {
            file: path.to_path_buf(),
        })
}
