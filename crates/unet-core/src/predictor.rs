//! The one-hand API: load a model file on a device at a precision, then `predict_batch`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};

use crate::cpu::CpuUnet;
use crate::model::{SIDE_MULTIPLE, Unet, UnetConfig};
use crate::model_file::{self, ModelFileError};
use crate::patch::{ProbabilityMap, RgbPatch, normalise_into};
use rayon::prelude::*;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a GPU answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Float precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on CUDA (tensor cores), f32 on the CPU (where f16 is emulated and slower).
    #[default]
    Auto,
    F32,
    F16,
}

macro_rules! parse_choice {
    ($ty:ty, $what:literal, $($name:literal => $value:expr),+) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok($value),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " `{}` (expected one of: {})"),
                        other,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
    };
}
parse_choice!(DeviceChoice, "device", "auto" => DeviceChoice::Auto, "cpu" => DeviceChoice::Cpu, "cuda" => DeviceChoice::Cuda);
parse_choice!(Precision, "precision", "auto" => Precision::Auto, "f32" => Precision::F32, "f16" => Precision::F16);

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    #[error("CUDA was asked for, but {0}")]
    NoCuda(String),
    #[error("bad input: {0}")]
    Input(String),
    #[error("inference failed on {device}: {reason}")]
    Inference { device: String, reason: String },
}

/// A loaded model bound to a device and precision, ready for batches of patches.
pub struct Predictor {
    engine: Engine,
    config: UnetConfig,
    target: Target,
}

/// What runs the model: Burn (CUDA, or f16 on the CPU), or the f32 CPU path of [`crate::cpu`].
enum Engine {
    Burn(Box<Unet>),
    Cpu(CpuUnet),
}

/// Where and at what precision the model runs, resolved from the user's choices.
struct Target {
    device: Device,
    on_cuda: bool,
    /// Never `Auto`.
    precision: Precision,
}

impl Target {
    fn resolve(device: DeviceChoice, precision: Precision) -> Result<Target, PredictError> {
        let (device, on_cuda) = resolve_device(device)?;
        let precision = match precision {
            Precision::Auto if on_cuda => Precision::F16,
            Precision::Auto => Precision::F32,
            chosen => chosen,
        };
        Ok(Target {
            device,
            on_cuda,
            precision,
        })
    }

    fn dtype(&self) -> DType {
        match self.precision {
            Precision::F16 => DType::F16,
            Precision::F32 | Precision::Auto => DType::F32,
        }
    }
}

impl Predictor {
    /// Loads a converted model file (`models/*.bpk`).
    pub fn load(
        path: &Path,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Predictor, PredictError> {
        let target = Target::resolve(device, precision)?;
        if !target.on_cuda && target.precision == Precision::F32 {
            let weights = model_file::read_weights(path)?;
            return Ok(Predictor {
                config: weights.config,
                engine: Engine::Cpu(CpuUnet::new(&weights)),
                target,
            });
        }
        let (model, config) = model_file::load(path, &target.device, target.dtype())?;
        Ok(Predictor {
            engine: Engine::Burn(Box::new(model)),
            config,
            target,
        })
    }

    /// Wraps a Burn model already on the device `DeviceChoice` resolves to (benchmarks, tests),
    /// its parameters cast to the precision. It runs on Burn whatever the device (the reference
    /// for the CPU path).
    pub fn from_model(
        model: Unet,
        config: UnetConfig,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Predictor, PredictError> {
        let target = Target::resolve(device, precision)?;
        Ok(Predictor {
            engine: Engine::Burn(Box::new(model.map(&mut CastParameters(target.dtype())))),
            config,
            target,
        })
    }

    /// The device a model for this predictor must be built on, given the same choices.
    pub fn device_for(device: DeviceChoice) -> Result<Device, PredictError> {
        resolve_device(device).map(|(device, _)| device)
    }

    pub fn config(&self) -> UnetConfig {
        self.config
    }

    /// `"cuda"` or `"cpu"`.
    pub fn device_name(&self) -> &'static str {
        if self.target.on_cuda { "cuda" } else { "cpu" }
    }

    /// The precision in use (never `Auto`).
    pub fn precision(&self) -> Precision {
        self.target.precision
    }

    /// The tumour probability of every pixel of every patch (max over output channels).
    pub fn predict_batch(&self, patches: &[RgbPatch]) -> Result<Vec<ProbabilityMap>, PredictError> {
        let (width, height) = check_batch(patches, &self.config)?;
        let plane = width * height;
        let values = match &self.engine {
            Engine::Burn(model) => {
                self.read(model.forward(self.input(patches, width, height)).max_dim(1))?
            }
            Engine::Cpu(_) => {
                let outputs = self.predict_raw(patches)?;
                let channels = self.config.out_channels;
                outputs
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
        };
        Ok(values
            .chunks_exact(plane)
            .map(|chunk| ProbabilityMap {
                width,
                height,
                values: chunk.to_vec(),
            })
            .collect())
    }

    /// The raw sigmoid output, `[N, out_channels, H, W]` flattened row-major.
    pub fn predict_raw(&self, patches: &[RgbPatch]) -> Result<Vec<f32>, PredictError> {
        let (width, height) = check_batch(patches, &self.config)?;
        match &self.engine {
            Engine::Burn(model) => self.read(model.forward(self.input(patches, width, height))),
            Engine::Cpu(model) => {
                // Several images at once where their activations are small: fewer of the
                // per-layer hand-overs between cores go idle (the demo model at batch 12 went
                // from 53 to 45 ms a patch).
                let at_once = model.images_at_once(height, width);
                let mut out =
                    Vec::with_capacity(patches.len() * self.config.out_channels * width * height);
                for group in patches.chunks(at_once) {
                    let outputs: Vec<Vec<f32>> = group
                        .par_iter()
                        .map(|patch| {
                            let mut input = Vec::with_capacity(3 * width * height);
                            normalise_into(patch, &mut input);
                            model.forward(&input, height, width)
                        })
                        .collect();
                    outputs.iter().for_each(|image| out.extend(image));
                }
                Ok(out)
            }
        }
    }

    /// The batch as the normalised NCHW tensor Burn's model takes.
    fn input(&self, patches: &[RgbPatch], width: usize, height: usize) -> Tensor<4> {
        let mut input = Vec::with_capacity(patches.len() * 3 * width * height);
        for patch in patches {
            normalise_into(patch, &mut input);
        }
        let shape = [patches.len(), self.config.in_channels, height, width];
        let options =
            TensorCreationOptions::new(self.target.device.clone()).with_dtype(self.target.dtype());
        Tensor::<4>::from_data(TensorData::new(input, shape), options)
    }

    fn read(&self, output: Tensor<4>) -> Result<Vec<f32>, PredictError> {
        let failed = |reason: String| PredictError::Inference {
            device: self.device_name().to_string(),
            reason,
        };
        output
            .try_into_data()
            .map_err(|e| failed(format!("{e:?}")))?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| failed(format!("{e:?}")))
    }
}

/// Casts every float parameter of a module to one dtype.
struct CastParameters(DType);

impl ModuleMapper for CastParameters {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|tensor| tensor.cast(dtype))
    }
}

/// Checks a batch is non-empty, of one size, a multiple of 16 on each side, with 3 bytes a pixel.
fn check_batch(patches: &[RgbPatch], config: &UnetConfig) -> Result<(usize, usize), PredictError> {
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
    if width == 0 || height == 0 || width % SIDE_MULTIPLE != 0 || height % SIDE_MULTIPLE != 0 {
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
    Ok((width, height))
}

/// The Burn device for a choice, and whether it is CUDA.
fn resolve_device(choice: DeviceChoice) -> Result<(Device, bool), PredictError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), false)),
        DeviceChoice::Cuda => cuda::device().map(|d| (d, true)),
        DeviceChoice::Auto => Ok(match cuda::device() {
            Ok(device) => (device, true),
            Err(_) => (Device::flex(), false),
        }),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::PredictError;
    use burn::tensor::{Device, Tensor};

    /// CUDA device 0, after checking that a driver and GPU answer: cubecl panics on a
    /// machine without them, so the probe runs under `catch_unwind` with the panic
    /// message kept for the error.
    pub fn device() -> Result<Device, PredictError> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let probe = std::panic::catch_unwind(|| {
            let device = Device::cuda(0);
            Tensor::<1>::zeros([1], &device).into_data();
            device
        });
        std::panic::set_hook(previous);
        probe.map_err(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA runtime failed to start".to_string());
            PredictError::NoCuda(format!(
                "no usable GPU: {reason} (is the NVIDIA driver installed, and CUDA_PATH set to the CUDA toolkit for NVRTC's headers?)"
            ))
        })
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::PredictError;
    use burn::tensor::Device;

    pub fn device() -> Result<Device, PredictError> {
        Err(PredictError::NoCuda(
            "this build has no CUDA support (rebuild with `--features cuda`)".to_string(),
        ))
    }
}
