//! The Camelyon UNet (lymph-node metastasis segmentation): its architecture, its weights,
//! and the engines that run it.
//!
//! ```no_run
//! use unet_core::{DeviceChoice, EngineChoice, Precision, Predictor, RgbPatch};
//!
//! let model = "models/unet_demo_w8.bpk".as_ref();
//! let predictor = Predictor::load(model, DeviceChoice::Auto, Precision::Auto, EngineChoice::Auto)?;
//! let pixels = vec![255u8; 512 * 512 * 3];
//! let maps = predictor.predict_batch(&[RgbPatch::new(512, 512, &pixels)])?;
//! println!("max probability {}", maps[0].values.iter().cloned().fold(0.0, f32::max));
//! # Ok::<(), unet_core::PredictError>(())
//! ```
//!
//! - [`architecture`]: the layer plan, derived once from a [`UnetConfig`]; everything below walks it.
//! - [`weights`]: the folded inference weights by the plan's names, and the engines' layouts.
//! - [`checkpoint`]: PyTorch `.pth` checkpoints in, architecture inferred, BatchNorm folded.
//! - [`model_file`]: the converted model in Burn's burnpack format.
//! - [`engine`]: the [`Engine`] seam; [`model`] (Burn's modules), the CPU kernels and the
//!   fused GPU engine (feature `fused`, and `cuda`) behind it.
//! - [`Predictor`]: a model on an engine; `predict_batch` on RGB patches (`predict_maps`: the
//!   batch's maps in the engine's one buffer; `submit_maps`: queued on a GPU, waited for
//!   later), optionally averaged over flipped and rotated copies (`predict_maps_with`, [`Tta`]).
//! - [`memory`]: large buffers kept for reuse, for programs that run many batches.

pub mod architecture;
pub mod checkpoint;
mod cpu;
pub mod engine;
pub mod memory;
pub mod model;
pub mod model_file;
pub mod patch;
mod pickle_globals;
mod predictor;
mod target;
mod tta;
pub mod weights;

pub use architecture::{Plan, SIDE_MULTIPLE, UnetConfig, is_patch_side};
pub use checkpoint::{Checkpoint, CheckpointError};
pub use cpu::CpuUnet;
#[cfg(feature = "fused")]
pub use engine::FusedUnet;
pub use engine::{BurnEngine, Engine, Fastest};
pub use model::Unet;
pub use model_file::{MODEL_EXTENSION, ModelFileError};
pub use patch::{ProbabilityMap, ProbabilityMaps, RgbPatch, probability_to_u8};
pub use predictor::{PendingMaps, PredictError, Predictor};
pub use target::{Device, DeviceChoice, EngineChoice, Precision, Target};
pub use tta::Tta;
pub use weights::{FoldedWeights, WeightsError};
