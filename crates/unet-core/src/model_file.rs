//! The converted model on disk: Burn's own burnpack format, with the architecture in its
//! metadata so a loader needs nothing but the file.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use burn::tensor::{DType, Device, TensorData};
use burn_store::burn_pack::Reader;
use burn_store::{BurnpackStore, FloatCastAdapter, ModuleSnapshot};

use crate::checkpoint::FoldedWeights;
use crate::model::{Unet, UnetConfig};

/// Extension of converted model files.
pub const MODEL_EXTENSION: &str = "bpk";
/// Metadata key holding the [`UnetConfig`] as JSON.
const CONFIG_KEY: &str = "camelyon_unet_config";
/// Metadata key naming the checkpoint the model was converted from.
const SOURCE_KEY: &str = "source_checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{file}: cannot read the model file: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error(
        "{file}: not a Camelyon UNet model file (no `{CONFIG_KEY}` metadata); convert a checkpoint with `cargo run -p convert -- CHECKPOINT.pth`"
    )]
    NotUnet { file: PathBuf },
    #[error("{file}: cannot write the model file: {reason}")]
    Unwritable { file: PathBuf, reason: String },
}

/// Writes `model` to `path` atomically: to a temporary file beside it, renamed when complete
/// (and removed if anything fails).
pub fn save(
    model: &Unet,
    config: &UnetConfig,
    source: &str,
    path: &Path,
) -> Result<(), ModelFileError> {
    let unwritable = |reason: String| ModelFileError::Unwritable {
        file: path.to_path_buf(),
        reason,
    };
    let temporary = output_file::beside(path).map_err(|e| unwritable(e.to_string()))?;
    let config_json = serde_json::to_string(config).map_err(|e| unwritable(e.to_string()))?;
    let mut store = BurnpackStore::from_file(temporary.path())
        .auto_extension(false)
        .overwrite(true)
        .metadata(CONFIG_KEY, config_json)
        .metadata(SOURCE_KEY, source);
    model
        .save_into(&mut store)
        .map_err(|e| unwritable(e.to_string()))?;
    temporary
        .persist(path)
        .map_err(|e| unwritable(e.error.to_string()))?;
    Ok(())
}

/// Reads a model file onto `device`, its weights cast to `dtype`.
pub fn load(
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(Unet, UnetConfig), ModelFileError> {
    let unreadable = |reason: String| ModelFileError::Unreadable {
        file: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(unreadable("no such file".to_string()));
    }
    let reader = Reader::from_file(path).map_err(|e| unreadable(e.to_string()))?;
    let config = config_of(path, &reader)?;
    drop(reader);
    let mut model = config.init(device);
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .with_from_adapter(FloatCastAdapter::to(dtype));
    model
        .load_from(&mut store)
        .map_err(|e| unreadable(e.to_string()))?;
    Ok((model, config))
}

/// The folded weights a model file holds, as `convert` computed them (for exporting it).
pub fn read_weights(path: &Path) -> Result<FoldedWeights, ModelFileError> {
    let unreadable = |reason: String| ModelFileError::Unreadable {
        file: path.to_path_buf(),
        reason,
    };
    let reader = Reader::from_file(path).map_err(|e| unreadable(e.to_string()))?;
    let config = config_of(path, &reader)?;
    let mut tensors = BTreeMap::new();
    for tensor in reader
        .into_tensors()
        .map_err(|e| unreadable(e.to_string()))?
    {
        let (name, dtype, shape, _, bytes) =
            tensor.into_parts().map_err(|e| unreadable(e.to_string()))?;
        let data = TensorData::from_bytes_vec(bytes.to_vec(), shape.clone(), dtype);
        let values = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| unreadable(format!("tensor `{name}`: {e:?}")))?;
        tensors.insert(name, (values, shape.to_vec()));
    }
    FoldedWeights::from_tensors(config, tensors).map_err(unreadable)
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
