//! Burn's modules as an engine: CUDA (f16 or f32), or f16 on the CPU through flex.

use burn::tensor::{DType, Device as BurnDevice, Tensor, TensorCreationOptions, TensorData};

use super::{Batch, Engine, Output};
use crate::model::Unet;
use crate::predictor::PredictError;
use crate::target::{Device, EngineChoice, Precision, Target};
use crate::weights::FoldedWeights;

pub struct BurnEngine {
    model: Unet,
    device: BurnDevice,
    target: Target,
    in_channels: usize,
}

impl BurnEngine {
    fn dtype(&self) -> DType {
        dtype_of(self.target.precision)
    }

    /// The batch as the normalised NCHW tensor Burn's model takes.
    fn input(&self, batch: &Batch) -> Tensor<4> {
        let shape = [batch.len(), self.in_channels, batch.height, batch.width];
        let options = TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype());
        Tensor::<4>::from_data(TensorData::new(batch.normalised_nchw(), shape), options)
    }

    /// Waits for the device and reads the output back as f32.
    fn read(&self, output: Tensor<4>, batch: usize) -> Result<Vec<f32>, PredictError> {
        let device = self.device();
        let data = output
            .try_into_data()
            .map_err(|source| super::device_error(device, batch, source))?;
        data.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|source| PredictError::Inference {
                device,
                source: Box::new(source),
            })
    }
}

fn dtype_of(precision: Precision) -> DType {
    match precision {
        Precision::F16 => DType::F16,
        Precision::F32 | Precision::Auto | Precision::Bf16 => DType::F32,
    }
}

impl Engine for BurnEngine {
    fn load(weights: &FoldedWeights, target: Target) -> Result<Self, PredictError> {
        if target.precision == Precision::Bf16 {
            return Err(PredictError::Unsupported {
                engine: "burn",
                what: "run in bf16 (the CPU engine does: `--engine cpu`)".to_string(),
            });
        }
        let device = match target.device {
            Device::Cpu => BurnDevice::flex(),
            Device::Cuda(index) => cuda_device(index)?,
        };
        let model = Unet::from_weights(weights, &device, dtype_of(target.precision))?;
        Ok(BurnEngine {
            model,
            device,
            target,
            in_channels: weights.config.in_channels,
        })
    }

    fn name(&self) -> &'static str {
        "burn"
    }

    fn choice() -> EngineChoice {
        EngineChoice::Burn
    }

    fn device(&self) -> &'static str {
        self.target.device.name()
    }

    fn precision(&self) -> Precision {
        self.target.precision
    }

    fn forward(&self, batch: &Batch, output: Output) -> Result<Vec<f32>, PredictError> {
        let sigmoid = self.model.forward(self.input(batch));
        match output {
            Output::Sigmoid => self.read(sigmoid, batch.len()),
            Output::Probability => self.read(sigmoid.max_dim(1), batch.len()),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<BurnDevice, PredictError> {
    Ok(BurnDevice::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<BurnDevice, PredictError> {
    Err(crate::target::no_cuda_build())
}
