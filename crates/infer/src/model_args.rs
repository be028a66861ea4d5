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
    /// they exist), or `auto`: f16 on CUDA; on the CPU, bf16 where it is faster than f32 (AMX
    /// tiles, AMD's AVX-512-BF16), else f32.
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
    /// CPU threads: the model's on the CPU, and (up to 8) the slide readers'; at most the
    /// CPUs this process may use (its affinity and cgroup quota) [default: RAYON_NUM_THREADS
    /// where set, else SLURM_CPUS_PER_TASK in a Slurm job, else those CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// The predictor and the path of the model it came from, the threads started first.
    pub fn load(&self) -> Result<(Predictor, PathBuf)> {
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        self.start_threads()?;
        let path = self.model_path()?;
        let predictor = Predictor::load(&path, self.device, self.precision, self.engine)?;
        Ok((predictor, path))
    }

    /// Starts the process's pool of CPU threads (rayon's) with `--threads`, or as its default
    /// says; returns how many it has. A Slurm job whose cgroups do not confine it sees every
    /// CPU of its node, where the other jobs run too: its `--cpus-per-task` is its share. No
    /// more threads start than the CPUs this process may use: more would only share them (and
    /// a slip like `--threads 100000` spent minutes starting 16 000 threads, deaf to Ctrl-C).
    pub fn start_threads(&self) -> Result<usize> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let from_env = |name: &'static str| {
            let threads = std::env::var(name).ok()?.trim().parse().ok()?;
            (threads > 0).then_some((threads, name))
        };
        let asked = match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(threads) => Some((threads, "--threads")),
            None => from_env("RAYON_NUM_THREADS").or_else(|| from_env("SLURM_CPUS_PER_TASK")),
        };
        let threads = match asked {
            Some((threads, source)) if threads > cpus => {
                eprintln!(
                    "warning: {source} {threads} is more than the {cpus} CPUs this process may use: running {cpus} threads"
                );
                cpus
            }
            Some((threads, _)) => threads,
            None => cpus,
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .with_context(|| format!("cannot start {threads} threads"))?;
        Ok(rayon::current_num_threads())
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
