//! The engine seam: what runs the UNet's forward. [`crate::Predictor`] holds one engine behind
//! [`Engine`]; each engine walks the [`crate::architecture::Plan`] its own way:
//!
//! - [`BurnEngine`]: Burn's modules (CUDA, or f16 on the CPU);
//! - [`crate::CpuUnet`]: the f32 CPU kernels;
//! - `unet_kernels::GpuUnet`: the CubeCL kernels (a crate of its own, built on this trait).
//!
//! A new engine is a new implementation of [`Engine`], and a line in [`load`] if `Auto`
//! should pick it.

mod burn;

pub use self::burn::BurnEngine;

use crate::cpu::CpuUnet;
use crate::patch::{RgbPatch, normalise_into};
use crate::predictor::PredictError;
use crate::target::{Device, Precision, Target};
use crate::weights::FoldedWeights;

/// A batch of patches of one size, checked against the model.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub patches: &'a [RgbPatch<'a>],
    pub width: usize,
    pub height: usize,
}

impl Batch<'_> {
    pub fn len(&self) -> usize {
        self.patches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// Pixels in one patch.
    pub fn plane(&self) -> usize {
        self.width * self.height
    }

    /// The batch normalised (`(p / 255 - 0.5) / 0.5`), NCHW.
    pub fn normalised_nchw(&self) -> Vec<f32> {
        let mut input = Vec::with_capacity(self.len() * 3 * self.plane());
        for patch in self.patches {
            normalise_into(patch, &mut input);
        }
        input
    }
}

/// What a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The tumour probability, the max over output channels: `[N, H, W]`.
    Probability,
    /// The sigmoid of every output channel: `[N, out, H, W]`.
    Sigmoid,
}

/// Something that runs the UNet's forward on batches of patches.
pub trait Engine: Send {
    /// Loads the weights for the target, or says why this engine cannot serve it.
    fn load(weights: &FoldedWeights, target: Target) -> Result<Self, PredictError>
    where
        Self: Sized;

    /// Short name: `burn`, `cpu`, `cubecl`.
    fn name(&self) -> &'static str;

    /// The device it runs on: `cpu`, `cuda`, `wgpu`.
    fn device(&self) -> &'static str;

    /// F32 or F16 (never `Auto`).
    fn precision(&self) -> Precision;

    /// The forward of a checked batch, flattened row-major in `output`'s layout.
    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError>;
}

/// The engine `Predictor::load` uses for a target: the CPU kernels for f32 on the CPU,
/// Burn for the rest.
pub fn load(weights: &FoldedWeights, target: Target) -> Result<Box<dyn Engine>, PredictError> {
    Ok(match target {
        Target {
            device: Device::Cpu,
            precision: Precision::F32,
        } => Box::new(CpuUnet::load(weights, target)?),
        _ => Box::new(BurnEngine::load(weights, target)?),
    })
}

/// `[N, channels, plane]` sigmoid outputs to `[N, plane]` probabilities.
pub fn max_over_channels(sigmoid: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    sigmoid
        .chunks_exact(channels * plane)
        .flat_map(|image| {
            (0..plane).map(move |p| {
                (0..channels)
                    .map(|c| image[c * plane + p])
                    .fold(f32::MIN, f32::max)
            })
        })
        .collect()
}
