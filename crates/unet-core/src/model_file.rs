//! The converted model on disk: Burn's burnpack format, one f32 tensor per name of the
//! [`crate::architecture::Plan`] (`conv1.first.weight`, ...), with the architecture in its
//! metadata so a loader needs nothing but the file, and a CRC-32 of the tensors, so that a
//! flipped bit in the weights is an error rather than a quietly different model.

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
/// Metadata key holding the CRC-32 of the tensors (see [`checksum`]), 8 hex digits.
const CHECKSUM_KEY: &str = "tensors_crc32";
/// Metadata key holding the resolution the model was trained at, µm per pixel.
const TRAINING_MPP_KEY: &str = "training_mpp";

/// The resolutions, µm per pixel, that a slide or a model may be given: optical scanners
/// reach about 0.1 (oil immersion), a slide's overview about 50; below the range is a slip
/// of units (0.000243 is Camelyon's 0.243 µm in millimetres). Above it nothing is a slide.
pub const MPP_RANGE: std::ops::Range<f64> = 0.01..1000.0;

/// `text` as µm per pixel, as `convert --mpp`, `infer --model-mpp` and `--slide-mpp` and a
/// cohort manifest's `mpp` take it: a number within [`MPP_RANGE`].
pub fn parse_mpp(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(mpp) if MPP_RANGE.contains(&mpp) => Ok(mpp),
        _ => Err(format!(
            "`{text}` is not µm per pixel from {} to {} (Camelyon's level 0: 0.243)",
            MPP_RANGE.start, MPP_RANGE.end
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{file}: no such file")]
    Missing { file: PathBuf },
    #[error("{file}: cannot read the model file: {cause}")]
    Unreadable { file: PathBuf, cause: PackError },
    #[error(
        "{file}: a PyTorch checkpoint, not a converted model: convert it first (`cargo run -p convert -- {file}`)"
    )]
    Checkpoint { file: PathBuf },
    #[error("{file}: cannot read the model file: tensor `{name}` is not a float tensor")]
    NotFloat { file: PathBuf, name: String },
    #[error("{file}: cannot read the model file: {cause}")]
    Incomplete { file: PathBuf, cause: WeightsError },
    #[error(
        "{file}: the model file is damaged: its tensors' CRC-32 is {found:08x}, it was written as {recorded}"
    )]
    Damaged {
        file: PathBuf,
        recorded: String,
        found: u32,
    },
    #[error(
        "{file}: not a Camelyon UNet model file (no `{CONFIG_KEY}` metadata); convert a checkpoint with `cargo run -p convert -- CHECKPOINT.pth`"
    )]
    NotUnet { file: PathBuf },
    #[error("{file}: the model file's `{key}` is {value:?}, not a positive number")]
    BadMetadata {
        file: PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("{file}: cannot write the model file: {cause}")]
    Unwritable { file: PathBuf, cause: PackError },
}

/// Writes `weights` to `path` atomically: to a temporary file beside it, renamed when
/// complete (and removed if anything fails). `source` names the checkpoint they came from;
/// `training_mpp` is the resolution (µm per pixel) of the slides it was trained on, which
/// `infer` reads slides at.
pub fn save(
    weights: &FoldedWeights,
    source: &str,
    training_mpp: Option<f64>,
    path: &Path,
) -> Result<(), ModelFileError> {
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
    let crc = checksum(weights.tensors());
    let mut writer = Writer::new(tensors)
        .auto_extension(false)
        .overwrite(true)
        .with_metadata(CONFIG_KEY, &config)
        .with_metadata(SOURCE_KEY, source)
        .with_metadata(CHECKSUM_KEY, &format!("{crc:08x}"));
    if let Some(mpp) = training_mpp {
        writer = writer.with_metadata(TRAINING_MPP_KEY, &mpp.to_string());
    }
    for (key, value) in BurnpackStore::default_metadata() {
        writer = writer.with_metadata(&key, &value);
    }
    writer
        .write_to_file(path)
        .map_err(|source| ModelFileError::Unwritable {
            file: path.to_path_buf(),
            cause: source,
        })
}

/// The burnpack reader of a model file; a PyTorch checkpoint given in its place (a zip, as
/// `torch.save` writes, or a bare pickle, as it did before PyTorch 1.6) is named as one.
fn open(path: &Path) -> Result<Reader, ModelFileError> {
    Reader::from_file(path).map_err(|cause| {
        let mut head = [0u8; 4];
        let read =
            std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head));
        let is_checkpoint = matches!(read, Ok(4)) && (head == *b"PK\x03\x04" || head[0] == 0x80);
        if is_checkpoint {
            ModelFileError::Checkpoint {
                file: path.to_path_buf(),
            }
        } else {
            ModelFileError::Unreadable {
                file: path.to_path_buf(),
                cause,
            }
        }
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
        cause: source,
    };
    let reader = open(path)?;
    let config = config_of(path, &reader)?;
    let recorded = reader.metadata().get(CHECKSUM_KEY).cloned();
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
    // Files written before the checksum existed have none to check.
    if let Some(recorded) = recorded {
        let found = checksum(tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)));
        if recorded != format!("{found:08x}") {
            return Err(ModelFileError::Damaged {
                file: file(),
                recorded,
                found,
            });
        }
    }
    FoldedWeights::from_tensors(config, tensors).map_err(|source| ModelFileError::Incomplete {
        file: file(),
        cause: source,
    })
}

/// The resolution (µm per pixel) the model was trained at, if its file records one.
pub fn training_mpp(path: &Path) -> Result<Option<f64>, ModelFileError> {
    if !path.is_file() {
        return Err(ModelFileError::Missing {
            file: path.to_path_buf(),
        });
    }
    let reader = open(path)?;
    match reader.metadata().get(TRAINING_MPP_KEY) {
        None => Ok(None),
        Some(text) => match text.parse::<f64>() {
            Ok(mpp) if mpp.is_finite() && mpp > 0.0 => Ok(Some(mpp)),
            _ => Err(ModelFileError::BadMetadata {
                file: path.to_path_buf(),
                key: TRAINING_MPP_KEY,
                value: text.clone(),
            }),
        },
    }
}

/// CRC-32 of every tensor, in name order: its name, shape and little-endian f32 values.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a Tensor)>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for (name, tensor) in tensors {
        crc.update(name.as_bytes());
        for &side in &tensor.shape {
            crc.update(&(side as u64).to_le_bytes());
        }
        for value in &tensor.values {
            crc.update(&value.to_le_bytes());
        }
    }
    crc.finalize()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::architecture::UnetConfig;

    /// A small random model written to a file, and the file's bytes.
    fn written(dir: &Path) -> (PathBuf, FoldedWeights, Vec<u8>) {
        let weights = FoldedWeights::random(UnetConfig::new(3, 2, 4), 7);
        let path = dir.join("model.bpk");
        save(&weights, "test", None, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (path, weights, bytes)
    }

    #[test]
    fn a_written_model_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, weights, _) = written(dir.path());
        let read = read_weights(&path).unwrap();
        assert!(read.tensors().eq(weights.tensors()));
    }

    /// The training resolution given to `save` is read back; a file without one has none.
    #[test]
    fn the_training_resolution_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, weights, _) = written(dir.path());
        assert_eq!(training_mpp(&path).unwrap(), None);
        save(&weights, "test", Some(0.486), &path).unwrap();
        assert_eq!(training_mpp(&path).unwrap(), Some(0.486));
        assert!(read_weights(&path).unwrap().tensors().eq(weights.tensors()));
    }

    /// Any flipped bit in the tensors' data is caught by the checksum, not loaded.
    #[test]
    fn flipped_bits_in_the_weights_are_reported_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, bytes) = written(dir.path());
        // The tensors fill the end of the file; flip a bit in each of a few places there.
        for at in [bytes.len() - 5, bytes.len() * 3 / 4, bytes.len() / 2] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            std::fs::write(&path, &damaged).unwrap();
            let error = read_weights(&path).unwrap_err().to_string();
            assert!(
                error.contains("damaged") || error.contains("cannot read"),
                "byte {at}: {error}"
            );
        }
    }

    /// Non-finite weights are refused by name, whether or not a checksum covers them.
    #[test]
    fn non_finite_weights_are_refused() {
        let mut tensors: BTreeMap<String, Tensor> =
            FoldedWeights::random(UnetConfig::new(3, 2, 4), 7)
                .tensors()
                .map(|(name, tensor)| (name.to_string(), tensor.clone()))
                .collect();
        let (name, tensor) = tensors.iter_mut().nth(3).unwrap();
        let name = name.clone();
        tensor.values[5] = f32::INFINITY;
        let error = FoldedWeights::from_tensors(UnetConfig::new(3, 2, 4), tensors)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!("tensor `{name}` holds inf at index 5: the weights are damaged")
        );
    }
}
