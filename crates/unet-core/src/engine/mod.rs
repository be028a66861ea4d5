//! The engine seam: what runs the UNet's forward. [`crate::Predictor`] holds one engine behind
//! [`Engine`]; each engine walks the [`crate::architecture::Plan`] its own way:
//!
//! - [`BurnEngine`]: Burn's modules (CUDA, or f16 on the CPU);
//! - [`crate::CpuUnet`]: the CPU kernels, f32 or bf16;
//! - `FusedUnet` (feature `fused`): unet-kernels' CubeCL kernels on bordered NHWC buffers;
//! - [`Fastest`]: `auto` on CUDA, the faster of the fused engine and Burn's on the first batch.
//!
//! A new engine is a new implementation of [`Engine`], and a line in [`load`].

mod burn;
mod fastest;
#[cfg(feature = "fused")]
mod fused;

pub use self::burn::BurnEngine;
pub use self::fastest::Fastest;
#[cfg(feature = "fused")]
pub use self::fused::{FusedInFlight, FusedUnet, LayerTime};

use crate::cpu::CpuUnet;
use crate::patch::{RgbPatch, normalise_into};
use crate::predictor::PredictError;
use crate::target::{Device, EngineChoice, Precision, Target};
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

    /// Short name: `burn`, `cpu`, `fused`.
    fn name(&self) -> &'static str;

    /// The choice that names this engine.
    fn choice() -> EngineChoice
    where
        Self: Sized;

    /// The kernels that run, where the engine has a choice of them (the CPU engine's
    /// instruction set: `avx512`, `avx512-bf16`, ...); else the engine's name.
    fn kernel(&self) -> &'static str {
        self.name()
    }

    /// The device it runs on: `cpu`, `cuda`, `wgpu`.
    fn device(&self) -> &'static str;

    /// The host memory one `height x width` image's forward may take beyond the loaded model,
    /// at most, where it is the host's (the CPU engine's activations); `None` for a device's.
    fn activation_bytes(&self, _height: usize, _width: usize) -> Option<usize> {
        None
    }

    /// F32, F16 or Bf16 (never `Auto`).
    fn precision(&self) -> Precision;

    /// The forward of a checked batch, flattened row-major in `output`'s layout.
    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError>;

    /// [`Engine::forward`] launched, returning before its output is read back: a caller that
    /// submits the next batch before it waits for this one keeps the device busy while it
    /// reads, copies and hands on results. The forwards a thread submits run in the order it
    /// submits them. An engine that computes on the caller's thread (the CPU's) has finished
    /// when this returns.
    fn submit<'a>(
        &'a self,
        batch: &Batch,
        output: Output,
    ) -> Result<Box<dyn InFlight + 'a>, PredictError> {
        Ok(Box::new(Done(self.forward(batch, output)?)))
    }
}

/// A forward [`Engine::submit`] launched.
pub trait InFlight: Send {
    /// Waits for the device and returns the forward's output.
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError>;

    /// Whether the output is computed already, so that [`InFlight::wait`] returns at once (a
    /// forward that ran on the caller's thread).
    fn is_done(&self) -> bool {
        false
    }
}

/// A forward already computed.
pub struct Done(pub Vec<f32>);

impl InFlight for Done {
    fn wait(self: Box<Self>) -> Result<Vec<f32>, PredictError> {
        Ok(self.0)
    }

    fn is_done(&self) -> bool {
        true
    }
}

/// What `Auto` measures on CUDA, the first batch choosing the fastest; ours first, kept on a
/// tie. On the first GPU it met (an H200, 2026-12-04) the fused engine hit an illegal address
/// at 512x512, which poisons the device for every engine of the process: the cause, kernels
/// bounded by their buffer's allocated length, is fixed and tested on software Vulkan
/// (`unet-kernels/tests/bounds.rs`); `tools/gpu-check.sh` step 0 checks it first on a GPU.
const AUTO_ON_CUDA: &[EngineChoice] = &[EngineChoice::Fused, EngineChoice::Burn];

/// The engine `Predictor::load` uses: the one chosen, or for `Auto` the CPU kernels for f32
/// and bf16 on the CPU, on CUDA the faster of the fused engine and Burn's as the first batch
/// measures them, and Burn for the rest (f16 on the CPU).
pub fn load(
    weights: &FoldedWeights,
    target: Target,
    engine: EngineChoice,
) -> Result<Box<dyn Engine>, PredictError> {
    Ok(match (engine, target) {
        (
            EngineChoice::Auto,
            Target {
                device: Device::Cpu,
                precision: Precision::F32 | Precision::Bf16,
            },
        )
        | (EngineChoice::Cpu, _) => Box::new(CpuUnet::load(weights, target)?),
        (
            EngineChoice::Auto,
            Target {
                device: Device::Cuda(_),
                ..
            },
        ) => Fastest::load(weights, target, AUTO_ON_CUDA)?,
        (EngineChoice::Auto | EngineChoice::Burn, _) => {
            Box::new(BurnEngine::load(weights, target)?)
        }
        (EngineChoice::Fused, _) => load_fused(weights, target)?,
    })
}

#[cfg(feature = "fused")]
fn load_fused(weights: &FoldedWeights, target: Target) -> Result<Box<dyn Engine>, PredictError> {
    Ok(match target.precision {
        Precision::F16 => Box::new(FusedUnet::<half::f16>::load(weights, target)?),
        Precision::F32 => Box::new(FusedUnet::<f32>::load(weights, target)?),
        other => {
            return Err(PredictError::Unsupported {
                engine: "fused",
                what: format!("run in {other}"),
            });
        }
    })
}

#[cfg(not(feature = "fused"))]
fn load_fused(_: &FoldedWeights, _: Target) -> Result<Box<dyn Engine>, PredictError> {
    Err(PredictError::Unsupported {
        engine: "fused",
        what: "run in this build (rebuild with `--features cuda`)".to_string(),
    })
}

/// A device's failure in a forward of `batch` patches: out of memory, with the batch size to
/// try, or the device's own words. cubecl allocates lazily, so a buffer that did not fit shows
/// at whatever next reads it (a main loop's check, the output's copy back), in its own words:
/// the whole chain of causes is read for them.
pub(crate) fn device_error(
    device: &'static str,
    batch: usize,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> PredictError {
    let source = source.into();
    let mut messages = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(error) = cause {
        messages.push_str(&error.to_string().to_lowercase());
        cause = error.source();
    }
    if OUT_OF_MEMORY.iter().any(|words| messages.contains(words)) {
        PredictError::OutOfMemory {
            device,
            batch,
            try_batch: (batch / 2).max(1),
        }
    } else {
        PredictError::Inference { device, source }
    }
}

/// How a device says it ran out of memory: the CUDA driver and Burn, and cubecl's
/// `IoError`s for an allocation past the device's memory (`OutOfMemory`), past its largest
/// page (`BufferTooBig`) or past the page sizes it tracks (`PageSizesExhausted`).
const OUT_OF_MEMORY: [&str; 4] = [
    "out of memory",
    "out of device memory",
    "can't allocate buffer of size",
    "every page size the memory tracks still holds live allocations",
];

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("no reason given")
}

#[cfg(all(test, feature = "fused"))]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
    use cubecl_runtime::runtime::Runtime;

    /// cubecl allocates lazily: a buffer past what the device can hold fails at whatever reads
    /// it first, in cubecl's words inside the reader's error (on lavapipe here). That error,
    /// and the text a main loop's check makes of it, both say out of memory with half the
    /// batch to try; another failure keeps its own words.
    #[test]
    fn a_buffer_the_device_cannot_hold_is_out_of_memory() {
        let client = <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu));
        let error = client.read_one(client.empty(1 << 40)).unwrap_err();
        let as_text = format!("reading a main loop's values back: {error}");
        for classified in [
            device_error("wgpu", 12, error),
            device_error("wgpu", 12, as_text),
        ] {
            assert!(
                matches!(
                    classified,
                    PredictError::OutOfMemory {
                        device: "wgpu",
                        batch: 12,
                        try_batch: 6
                    }
                ),
                "{classified}"
            );
        }
        let lost = device_error("wgpu", 12, "the device was lost".to_string());
        assert!(matches!(lost, PredictError::Inference { .. }), "{lost}");
    }
}
