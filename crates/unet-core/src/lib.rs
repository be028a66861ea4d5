//! The Camelyon UNet (lymph-node metastasis segmentation) in Burn.
//!
//! ```no_run
//! use unet_core::{DeviceChoice, Precision, Predictor, RgbPatch};
//!
//! let predictor = Predictor::load("models/unet_demo_w8.bpk".as_ref(), DeviceChoice::Auto, Precision::Auto)?;
//! let pixels = vec![255u8; 512 * 512 * 3];
//! let maps = predictor.predict_batch(&[RgbPatch::new(512, 512, &pixels)])?;
//! println!("max probability {}", maps[0].values.iter().cloned().fold(0.0, f32::max));
//! # Ok::<(), unet_core::PredictError>(())
//! ```
//!
//! - [`checkpoint`]: PyTorch `.pth` checkpoints in, architecture inferred, BatchNorm folded.
//! - [`model`]: the UNet as Burn modules with its [`UnetConfig`].
//! - [`model_file`]: the converted model in Burn's burnpack format.
//! - [`Predictor`]: a model on a device at a precision; `predict_batch` on RGB patches.

pub mod checkpoint;
mod cpu;
pub mod model;
pub mod model_file;
pub mod patch;
mod predictor;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use model::{SIDE_MULTIPLE, Unet, UnetConfig};
pub use model_file::{MODEL_EXTENSION, ModelFileError};
pub use patch::{ProbabilityMap, RgbPatch, probability_to_u8};
pub use predictor::{DeviceChoice, Precision, PredictError, Predictor};
