//! The one-hand API: load a model file on a device at a precision, then `predict_batch`.

use std::path::Path;

use crate::architecture::{SIDE_MULTIPLE, UnetConfig, is_patch_side};
use crate::engine::{self, Batch, Done, Engine, InFlight, Output};
use crate::model_file::{self, ModelFileError};
use crate::patch::{ProbabilityMap, ProbabilityMaps, RgbPatch};
use crate::target::{DeviceChoice, EngineChoice, Precision, Target};
use crate::weights::{FoldedWeights, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error("the model's weights: {0}")]
    Weights(#[from] WeightsError),
    #[error("CUDA was asked for, but {0}")]
    NoCuda(String),
    #[error("bad input: {0}")]
    Input(String),
    #[error(
        "the {device} ran out of memory at batch {batch}: try a batch of {try_batch} (`--batch {try_batch}`)"
    )]
    OutOfMemory {
        device: &'static str,
        batch: usize,
        /// A batch size that needs half the memory.
        try_batch: usize,
    },
    #[error(
        "the {engine} engine takes at most {most} patches of {width}x{height} a batch (its kernels address 2^32 values a buffer), not {batch}: try `--batch {most}`"
    )]
    BatchTooLarge {
        engine: &'static str,
        batch: usize,
        width: usize,
        height: usize,
        most: usize,
    },
    #[error("inference failed on {device}: {source}")]
    Inference {
        device: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the {engine} engine cannot {what}")]
    Unsupported { engine: &'static str, what: String },
}

/// A loaded model on an engine, ready for batches of patches.
pub struct Predictor {
    engine: Box<dyn Engine>,
    config: UnetConfig,
    /// What the choices resolved to; `None` for an engine built elsewhere.
    target: Option<Target>,
}

impl Predictor {
    /// Loads a converted model file (`models/*.bpk`) on the engine the choices resolve to.
    pub fn load(
        path: &Path,
        device: DeviceChoice,
        precision: Precision,
        engine: EngineChoice,
    ) -> Result<Predictor, PredictError> {
        Predictor::from_weights(&model_file::read_weights(path)?, device, precision, engine)
    }

    /// Weights already in memory on the engine the choices resolve to.
    pub fn from_weights(
        weights: &FoldedWeights,
        device: DeviceChoice,
        precision: Precision,
        engine: EngineChoice,
    ) -> Result<Predictor, PredictError> {
        let target = Target::resolve(device, precision, engine)?;
        Ok(Predictor {
            engine: engine::load(weights, target, engine)?,
            config: weights.config,
            target: Some(target),
        })
    }

    /// The weights on engine `E`, whatever `load` would pick (benchmarks, tests: Burn's f32
    /// CPU path is the reference for the CPU kernels).
    pub fn with_engine<E: Engine + 'static>(
        weights: &FoldedWeights,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Predictor, PredictError> {
        let target = Target::resolve(device, precision, E::choice())?;
        Ok(Predictor {
            engine: Box::new(E::load(weights, target)?),
            config: weights.config,
            target: Some(target),
        })
    }

    /// An engine built elsewhere (e.g. `FusedUnet`, feature `fused`, on a wgpu client).
    pub fn from_engine(engine: Box<dyn Engine>, config: UnetConfig) -> Predictor {
        Predictor {
            engine,
            config,
            target: None,
        }
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// The engine's name: `burn`, `cpu`, `fused`.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// The kernels that run: the CPU engine's instruction set (`avx512`, `avx2`, `portable`,
    /// `avx512-bf16`), else the engine's name.
    pub fn kernel_name(&self) -> &'static str {
        self.engine.kernel()
    }

    /// `"cuda"` or `"cpu"` (or what an outside engine reports).
    pub fn device_name(&self) -> &'static str {
        self.engine.device()
    }

    /// What the model runs on: the GPU's name, or the CPU's and its threads
    /// ([`Target::hardware`]); for an engine built elsewhere, its device.
    pub fn hardware(&self) -> String {
        self.target
            .map_or_else(|| self.device_name().to_string(), Target::hardware)
    }

    /// The precision in use (never `Auto`).
    pub fn precision(&self) -> Precision {
        self.engine.precision()
    }

    /// The host memory one `height x width` patch's forward may take beyond the loaded model,
    /// at most, for an engine that computes in the host's memory (the CPU engine); compare
    /// with [`crate::memory::spare_bytes`].
    pub fn activation_bytes(&self, height: usize, width: usize) -> Option<usize> {
        self.engine.activation_bytes(height, width)
    }

    /// The tumour probability of every pixel of every patch (max over output channels).
    pub fn predict_batch(&self, patches: &[RgbPatch]) -> Result<Vec<ProbabilityMap>, PredictError> {
        Ok(self.predict_maps(patches)?.into_maps())
    }

    /// [`Predictor::predict_batch`] as the engine returns it, one buffer for the batch.
    pub fn predict_maps(&self, patches: &[RgbPatch]) -> Result<ProbabilityMaps, PredictError> {
        self.submit_maps(patches)?.wait()
    }

    /// [`Predictor::predict_maps`] submitted to the engine ([`Engine::submit`]): on a GPU the
    /// forward is queued and this returns at once, so that the caller can prepare and submit
    /// the next batch before it waits for this one.
    pub fn submit_maps<'a>(
        &'a self,
        patches: &[RgbPatch],
    ) -> Result<PendingMaps<'a>, PredictError> {
        let batch = check_batch(patches, &self.config)?;
        Ok(PendingMaps {
            width: batch.width,
            height: batch.height,
            forward: self.engine.submit(&batch, Output::Probability)?,
        })
    }

    /// The raw sigmoid output, `[N, out_channels, H, W]` flattened row-major.
    pub fn predict_raw(&self, patches: &[RgbPatch]) -> Result<Vec<f32>, PredictError> {
        let batch = check_batch(patches, &self.config)?;
        self.engine.forward(&batch, Output::Sigmoid)
    }
}

/// A batch's maps [`Predictor::submit_maps`] submitted, not yet read back.
pub struct PendingMaps<'a> {
    width: usize,
    height: usize,
    forward: Box<dyn InFlight + 'a>,
}

impl<'a> PendingMaps<'a> {
    /// Maps already computed.
    pub fn done(maps: ProbabilityMaps) -> PendingMaps<'a> {
        PendingMaps {
            width: maps.width,
            height: maps.height,
            forward: Box::new(Done(maps.values)),
        }
    }

    /// Whether the maps are computed already (the engine ran the forward on the submitting
    /// thread, as the CPU's does), so that [`PendingMaps::wait`] returns at once: a caller
    /// keeping a batch in flight for the device's sake has nothing to gain by keeping this one.
    pub fn is_done(&self) -> bool {
        self.forward.is_done()
    }

    /// Waits for the engine and returns the maps.
    pub fn wait(self) -> Result<ProbabilityMaps, PredictError> {
        Ok(ProbabilityMaps {
            width: self.width,
            height: self.height,
            values: self.forward.wait()?,
        })
    }
}

/// Checks a batch is non-empty, of one size, a multiple of 16 on each side, with 3 bytes a pixel.
fn check_batch<'a>(
    patches: &'a [RgbPatch<'a>],
    config: &UnetConfig,
) -> Result<Batch<'a>, PredictError> {
    let first = patches
        .first()
        .ok_or_else(|| PredictError::Input("empty batch".to_string()))?;
    let (width, height) = (first.width, first.height);
    if config.in_channels != 3 {
        return Err(PredictError::Input(format!(
            "the model takes {} input channels; RGB patches need 3",
            config.in_channels
        )));
    }
    if !(is_patch_side(width as u64) && is_patch_side(height as u64)) {
        return Err(PredictError::Input(format!(
            "patch is {width}x{height}; height and width must be non-zero multiples of {SIDE_MULTIPLE} (four 2x poolings)"
        )));
    }
    for (i, patch) in patches.iter().enumerate() {
        if (patch.width, patch.height) != (width, height) {
            return Err(PredictError::Input(format!(
                "patch {i} is {}x{}, patch 0 is {width}x{height}: a batch has one size",
                patch.width, patch.height
            )));
        }
        if patch.pixels.len() != width * height * 3 {
            return Err(PredictError::Input(format!(
                "patch {i} holds {} bytes, {width}x{height} RGB needs {}",
                patch.pixels.len(),
                width * height * 3
            )));
        }
    }
    Ok(Batch {
        patches,
        width,
        height,
    })
}
