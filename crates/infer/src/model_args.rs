//! The model options `infer` and `infer-bench` share, and the repository files they default to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use unet_core::{DeviceChoice, EngineChoice, Precision, Predictor};

/// The demo model shipped in `models/`, converted from `unet_demo_w8.pth`.
const DEMO_MODEL: &str = "models/unet_demo_w8.bpk";
/// The demo slide shipped with the tests.
pub const DEMO_SLIDE: &str = "tests/fixtures/pipeline/demo_vips_jpeg.tif";

#[derive(Args)]
pub struct ModelArgs {
    /// A converted model [default: the demo model, models/unet_demo_w8.bpk].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (the N-th GPU the driver lists: those in
    /// CUDA_VISIBLE_DEVICES, where that is set), or `auto`: CUDA's first GPU where the build
    /// has CUDA and a GPU answers, else the CPU.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// `f32`, `f16`, `bf16` (the CPU engine, on CPUs with AVX-512-BF16, on AMX tiles where
    /// they exist), or `auto`: f16 on CUDA; on the CPU, bf16 where it has AMX, else f32.
    #[arg(long, default_value = "auto")]
    pub precision: Precision,
    /// What runs the model: `fused` (our CUDA engine; CUDA builds), `burn`, `cpu` (our CPU
    /// kernels, f32 or bf16), or `auto`: the CPU kernels for f32 and bf16 on the CPU; on CUDA
    /// the faster of ours and Burn's, as the first batch measures them; Burn for the rest.
    #[arg(long, default_value = "auto")]
    pub engine: EngineChoice,
    /// Patches per forward pass.
    #[arg(long, default_value_t = 12)]
    pub batch: usize,
}

impl ModelArgs {
    /// The predictor and the path of the model it came from.
    pub fn load(&self) -> Result<(Predictor, PathBuf)> {
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let path = self.model_path()?;
        let predictor = Predictor::load(&path, self.device, self.precision, self.engine)?;
        Ok((predictor, path))
    }

    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(path) => Ok(path.clone()),
            None => {
                repo_file(DEMO_MODEL).context("no --model given and the demo model is not found")
            }
        }
    }
}

/// A file of the repository (the demo model or slide): here, or in the repository this binary
/// was built from.
pub fn repo_file(relative: &str) -> Option<PathBuf> {
    [
        PathBuf::from(relative),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(relative),
    ]
    .into_iter()
    .find(|p| p.is_file())
}
