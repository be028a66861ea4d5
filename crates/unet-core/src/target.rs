//! Where and at what precision a model runs: the user's choices, resolved once.

use crate::predictor::PredictError;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA's first GPU when this build has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU by its index among those the CUDA driver lists (`cuda` is `cuda:0`; the driver
    /// lists only those in `CUDA_VISIBLE_DEVICES`, where that is set).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.to_ascii_lowercase();
        match name.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => name
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{s}` (expected one of: auto, cpu, cuda, cuda:N)")
                }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Float precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on CUDA (tensor cores); on the CPU, bf16 where our CPU engine runs it faster than
    /// f32 (on AMX tiles, and on AMD's AVX-512-BF16; Intel's without AMX loses), else f32 (f16
    /// is emulated there and slower).
    #[default]
    Auto,
    F32,
    F16,
    /// bf16 weights and activations, f32 sums: the CPU engine, where the CPU has bf16
    /// multiply-adds (AVX-512-BF16, and AMX tiles where it has them).
    Bf16,
}

/// Which engine runs the model ([`crate::engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// Our CPU kernels for f32 and bf16 on the CPU; on CUDA the faster of Burn and the fused
    /// engine, measured on the first batch ([`crate::engine::Fastest`]); Burn for f16 on the CPU.
    #[default]
    Auto,
    /// Burn's modules: CUDA, or f16 on the CPU.
    Burn,
    /// Our CUDA engine (unet-kernels' kernels on bordered NHWC buffers): builds with `cuda`.
    Fused,
    /// Our CPU kernels (f32, or bf16).
    Cpu,
}

macro_rules! parse_choice {
    ($ty:ty, $what:literal, $($name:literal => $value:path),+) => {
        impl std::str::FromStr for $ty {
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

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let name = match self {
                    $($value => $name,)+
                };
                f.write_str(name)
            }
        }
    };
}
pub(crate) use parse_choice;
parse_choice!(Precision, "precision", "auto" => Precision::Auto, "f32" => Precision::F32, "f16" => Precision::F16, "bf16" => Precision::Bf16);
parse_choice!(EngineChoice, "engine", "auto" => EngineChoice::Auto, "burn" => EngineChoice::Burn, "fused" => EngineChoice::Fused, "cpu" => EngineChoice::Cpu);

/// A device that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// The CUDA GPU of this index.
    Cuda(usize),
}

impl Device {
    /// The kind of device: `cpu` or `cuda`.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }
}

/// The device and precision an engine is loaded for: never `Auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub device: Device,
    /// F32, F16 or Bf16.
    pub precision: Precision,
}

impl Target {
    /// `Auto` device: CUDA when a GPU answers, else the CPU; `Auto` precision: f16 on CUDA,
    /// on the CPU bf16 where `engine` may be our CPU engine and bf16 is faster there than f32
    /// (AMX tiles, AMD's AVX-512-BF16), else f32.
    pub fn resolve(
        device: DeviceChoice,
        precision: Precision,
        engine: EngineChoice,
    ) -> Result<Target, PredictError> {
        let device = match device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(index) => cuda::probe(index).map(|()| Device::Cuda(index))?,
            DeviceChoice::Auto => match cuda::probe(0) {
                Ok(()) => Device::Cuda(0),
                Err(_) => Device::Cpu,
            },
        };
        let precision = match (precision, device) {
            (Precision::Auto, Device::Cuda(_)) => Precision::F16,
            (Precision::Auto, Device::Cpu) => {
                let ours = matches!(engine, EngineChoice::Auto | EngineChoice::Cpu);
                if ours && crate::cpu::prefers_bf16() {
                    Precision::Bf16
                } else {
                    Precision::F32
                }
            }
            (chosen, _) => chosen,
        };
        if matches!(device, Device::Cuda(_)) {
            cuda::keep_compiled_kernels();
        }
        Ok(Target { device, precision })
    }

    /// What the target runs on, for reports that quote its speed: the GPU's name and index
    /// (`NVIDIA H200 (cuda:0)`), or the CPU's name and the threads the model runs on
    /// (`Intel(R) Xeon(R) Processor, 2 threads`).
    pub fn hardware(self) -> String {
        match self.device {
            Device::Cuda(index) => format!("{} (cuda:{index})", cuda::name(index)),
            Device::Cpu => {
                let threads = rayon::current_num_threads();
                format!(
                    "{}, {threads} thread{}",
                    cpu_name().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
                    if threads == 1 { "" } else { "s" }
                )
            }
        }
    }
}

/// The CPU's model name, as Linux's /proc/cpuinfo gives it (where it does: x86).
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|line| line.starts_with("model name"))?;
    let name = line.split_once(':')?.1.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::PredictError;
    use cudarc::driver::{result, sys};

    /// Whether a CUDA driver, GPU `index` and NVRTC answer, asked through the driver API,
    /// which returns errors where cubecl would panic.
    pub fn probe(index: usize) -> Result<(), PredictError> {
        let no_gpu = |reason: String| {
            PredictError::NoCuda(format!(
                "no usable GPU: {reason} (is the NVIDIA driver installed, and CUDA_PATH set to the CUDA toolkit for NVRTC's headers?)"
            ))
        };
        // SAFETY: loading the driver and NVRTC libraries runs their initialisers, which is
        // what any use of CUDA does; the handles are only tested here.
        let (driver, nvrtc) = unsafe {
            (
                sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            )
        };
        if !driver {
            return Err(no_gpu(
                "the CUDA driver library (libcuda) is not found".into(),
            ));
        }
        if !nvrtc {
            return Err(no_gpu("NVRTC (libnvrtc) is not found".into()));
        }
        result::init().map_err(|e| no_gpu(format!("the driver does not start: {e}")))?;
        match result::device::get_count() {
            Ok(count) if index < count as usize => Ok(()),
            Ok(0) => Err(no_gpu("the driver sees no GPU".into())),
            Ok(count) => {
                let seen = match count {
                    1 => "one (cuda:0)".to_string(),
                    n => format!("{n} (cuda:0 to cuda:{})", n - 1),
                };
                let visible = std::env::var("CUDA_VISIBLE_DEVICES")
                    .map(|visible| format!("; CUDA_VISIBLE_DEVICES={visible}"))
                    .unwrap_or_default();
                Err(PredictError::NoCuda(format!(
                    "there is no GPU cuda:{index}: the driver sees {seen}{visible}"
                )))
            }
            Err(e) => Err(no_gpu(format!("the driver lists no GPU: {e}"))),
        }
    }

    /// The driver's name for GPU `index` (which `probe` found), or `GPU` where it gives none.
    pub fn name(index: usize) -> String {
        i32::try_from(index)
            .ok()
            .and_then(|ordinal| result::device::get(ordinal).ok())
            .and_then(|device| result::device::get_name(device).ok())
            .unwrap_or_else(|| "GPU".to_string())
    }

    /// Turns on cubecl's cache of compiled kernels (off by default), before any CUDA client
    /// reads cubecl's configuration. cubecl compiles each kernel with NVRTC at its first
    /// launch, about half a second each on two cores: with the tuning read back from disk, the
    /// demo model's forward still spent 9.6 s compiling in a second process, 0.8 s with this
    /// cache (`tools/cuda-dry-run.sh`, 2026-12-05), against the 5 s a second run's first batch
    /// may take. The compiled PTX is kept beside the tuning (`target/environment` in a Cargo
    /// project, else `~/.cache/cubecl`). A `cubecl.toml` is read as cubecl would read it;
    /// only this one setting is forced.
    pub fn keep_compiled_kernels() {
        use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.compilation.cache = true;
        // `false` where the configuration was already read: then it stays as it was.
        CubeClRuntimeConfig::try_set(config);
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::PredictError;

    pub fn probe(_index: usize) -> Result<(), PredictError> {
        Err(super::no_cuda_build())
    }

    /// No GPU is named without CUDA (and no CUDA target resolves).
    pub fn name(_index: usize) -> String {
        "GPU".to_string()
    }

    /// Nothing is compiled without CUDA.
    pub fn keep_compiled_kernels() {}
}

/// What asking for CUDA gives in a build without it.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda_build() -> PredictError {
    PredictError::NoCuda(
        "this build has no CUDA support (rebuild with `--features cuda`)".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_pytorch_names_them_and_print_back() {
        for (text, device) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(device), "{text}");
            assert_eq!(device.to_string().parse::<DeviceChoice>(), Ok(device));
        }
        for text in ["gpu", "cuda:", "cuda:-1", "cuda:one", "cuda:1:2", "cpu:0"] {
            let error = text.parse::<DeviceChoice>().unwrap_err();
            assert!(error.contains("cuda:N") && error.contains(text), "{error}");
        }
    }

    /// `auto` on the CPU is bf16 where our CPU engine runs it faster than f32 (AMX tiles, and
    /// AMD's AVX-512-BF16), else f32; Burn's engine has no bf16. What the CPU is, Linux says.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn auto_precision_on_the_cpu_is_bf16_where_that_is_faster() {
        if std::env::var(crate::cpu::KERNEL_VARIABLE).is_ok_and(|name| !name.is_empty()) {
            return; // the variable's kernel decides instead
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let field = |name: &str| {
            let line = cpuinfo.lines().find(|line| line.starts_with(name));
            line.and_then(|line| line.split_once(':'))
                .map_or("", |(_, value)| value.trim())
        };
        let flags: Vec<&str> = field("flags").split_whitespace().collect();
        let has = |flag: &str| flags.contains(&flag);
        let bf16 = has("avx512_bf16") && has("avx512bw") && has("avx512vl");
        let tiles = has("amx_tile") && has("amx_bf16");
        let vendor = field("vendor_id");
        let faster = bf16 && (tiles || vendor == "AuthenticAMD");
        let expected = if faster {
            Precision::Bf16
        } else {
            Precision::F32
        };
        let auto = |engine| Target::resolve(DeviceChoice::Cpu, Precision::Auto, engine).unwrap();
        let cpu = format!("{vendor}, AVX-512-BF16 {bf16}, AMX {tiles}");
        assert_eq!(auto(EngineChoice::Auto).precision, expected, "{cpu}");
        assert_eq!(auto(EngineChoice::Cpu).precision, expected);
        assert_eq!(auto(EngineChoice::Burn).precision, Precision::F32);
    }
}
