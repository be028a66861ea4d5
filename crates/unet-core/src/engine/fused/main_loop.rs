//! What computes the fused engine's products, its *main loops*: each writes a layer's outputs
//! into the interior of its bordered buffer (the border and pooling passes after them are
//! shared), a 3x3 convolution's through ReLU, a 2x2 stride-2 transposed convolution's as they
//! are. Either runs on unet-kernels' portable kernels, or on cubek's implicit GEMM on tensor
//! cores with the store in its epilogue (`fused/epilogue.rs`), in one of cubek's algorithms and
//! tile kinds, tiled as cubek chooses or by one of our [`Tiling`]s (the transposed convolution
//! as one 1x1 convolution to four times the channels, scattered as it is stored). In f16 every
//! layer shape runs the fastest of them that runs at all, measured on the shape's first use by
//! cubecl's autotune and kept on disk where cubecl's `persistence` is built in (the `cuda`
//! feature), so a second process starts without the search. Each process checks a tuned
//! winner's values once against the portable loop's before trusting it with a shape.
//! `UNET_FUSED_CONV` names one candidate for every layer instead.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{LazyLock, Mutex};

use cubecl::AutotuneKey;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::tune::{LocalTuner, Tunable, TunableSet, TuneGroup, local_tuner};
use cubek::convolution::{AcceleratedTileKind, ConvAlgorithm};
use serde::{Deserialize, Serialize};
use unet_kernels::{conv3x3, up2x2};

use super::{Layer, UNITS, cube_count};
use crate::architecture::Kind;
use crate::engine::panic_message;
use crate::target::Precision;
use crate::weights::TapMajor;

/// One main loop to run: `layer` on the bordered `input`, an image of `shape` = (batch,
/// height, width), as `op` says.
#[derive(Clone)]
pub(super) struct Conv {
    pub client: Client,
    pub layer: Layer,
    pub input: Handle,
    pub shape: (usize, usize, usize),
    pub op: Op,
}

/// What a main loop computes.
#[derive(Clone)]
pub(super) enum Op {
    /// A 3x3 convolution, bias and ReLU included, into the last `outputs` channels of the
    /// interior of `output`: bordered, pixels of `stride` channels (a level's skip comes after
    /// the upsampled channels of the decoder's concatenation; any other output is all its
    /// own). The border is left as it was.
    Conv3x3 { output: Handle, stride: usize },
    /// A 2x2 stride-2 transposed convolution, bias included, into channels `0..outputs` of
    /// the interior of `output`: bordered, twice the size, pixels of `stride` channels (the
    /// decoder's concatenation). The border is left as it was, or on tensor cores holds the
    /// products of the input's border.
    Up2x2 { output: Handle, stride: usize },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Conv3x3 { .. } => "conv3x3",
            Op::Up2x2 { .. } => "up2x2",
        }
    }
}

/// One way to run a main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Candidate {
    /// unet-kernels' kernels, one unit per output value: any runtime, any shape.
    Portable,
    /// cubek's implicit GEMM on tensor cores, reading the border as the padding, tiled as cubek
    /// chooses (`None`) or as a [`Tiling`] says.
    TensorCores(ConvAlgorithm, AcceleratedTileKind, Option<Tiling>),
}

/// Our tiling of cubek's implicit GEMM: how a cube shares its outputs among its planes (warps).
/// Each plane computes `warp` = (M, N) outputs, a cube holds `planes` = (along M, along N) of
/// them (fewer along N where a layer has fewer outputs than they cover), and the sum over K is
/// taken `k` at a time. Where that does not fit the card's shared memory, smaller ones are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Tiling {
    warp: (u32, u32),
    planes: (u32, u32),
    k: u32,
}

/// Our tilings, which the tuner measures beside cubek's own choice. cubek 0.3.1 gives each
/// plane of its warp-specialised algorithms 32 x 128 outputs on `mma`'s 16x8x16 tiles, the sum
/// 32 at a time (`infer_blueprint_plane`: a cube of 256 x 128): a layer of 64 outputs (level
/// 0's, a fifth of the model's work) spends half its tensor-core work on columns past its
/// outputs. These are the tilings CUTLASS's Ampere kernels use (its 128x128x64 and 256x128x32 cubes of 64 x 64
/// warps, and 128x128 of 32 x 64), which the tuner measures against cubek's on the card.
pub(super) const TILINGS: [Tiling; 3] = [
    Tiling {
        warp: (64, 64),
        planes: (2, 2),
        k: 64,
    },
    Tiling {
        warp: (64, 64),
        planes: (4, 2),
        k: 32,
    },
    Tiling {
        warp: (32, 64),
        planes: (4, 2),
        k: 64,
    },
];

impl fmt::Display for Tiling {
    /// The cube's outputs and sum step, then a plane's: `128x128x64_w64x64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, n) = self.warp;
        let (along_m, along_n) = self.planes;
        write!(f, "{}x{}x{}_w{m}x{n}", m * along_m, n * along_n, self.k)
    }
}

impl std::str::FromStr for Tiling {
    type Err = ();

    /// What `Display` writes: a cube's outputs and step, then a plane's outputs, which divide
    /// the cube's.
    fn from_str(name: &str) -> Result<Tiling, ()> {
        let (cube, warp) = name.split_once("_w").ok_or(())?;
        let numbers = |text: &str| -> Result<Vec<u32>, ()> {
            text.split('x')
                .map(|n| n.parse().ok().filter(|&n| n > 0).ok_or(()))
                .collect()
        };
        let (cube, warp) = (numbers(cube)?, numbers(warp)?);
        let (&[m, n, k], &[warp_m, warp_n]) = (&cube[..], &warp[..]) else {
            return Err(());
        };
        if !m.is_multiple_of(warp_m) || !n.is_multiple_of(warp_n) {
            return Err(());
        }
        Ok(Tiling {
            warp: (warp_m, warp_n),
            planes: (m / warp_m, n / warp_n),
            k,
        })
    }
}

impl Tiling {
    /// This tiling, then smaller and smaller ones to try where it does not fit a card's shared
    /// memory: the sum's step halved down to 1, then again from the tiling's step with half the
    /// planes along M, then along N.
    fn and_smaller(&self) -> Vec<Tiling> {
        let mut tilings = Vec::new();
        let (mut along_m, mut along_n) = self.planes;
        loop {
            let mut k = self.k;
            while k > 0 {
                tilings.push(Tiling {
                    planes: (along_m, along_n),
                    k,
                    ..*self
                });
                k /= 2;
            }
            if along_m > 1 {
                along_m /= 2;
            } else if along_n > 1 {
                along_n /= 2;
            } else {
                return tilings;
            }
        }
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Candidate::Portable => f.write_str("portable"),
            Candidate::TensorCores(algorithm, tile, None) => write!(f, "{algorithm}_{tile}"),
            Candidate::TensorCores(algorithm, tile, Some(tiling)) => {
                write!(f, "{algorithm}_{tile}_{tiling}")
            }
        }
    }
}

impl Candidate {
    /// Every candidate: the portable loop, and cubek's forward algorithms with each tile
    /// kind (`wmma`, or `mma.sync` with `ldmatrix`), tiled as cubek chooses or by each tiling.
    fn all() -> impl Iterator<Item = Candidate> {
        use ConvAlgorithm::*;
        let algorithms = [
            SimpleSyncCyclic,
            SimpleSyncStrided,
            SimpleSyncTilewise,
            SimpleAsyncCyclic,
            SimpleAsyncStrided,
            SimpleAsyncTma,
            SpecializedAsyncCyclic,
            SpecializedAsyncStrided,
            SpecializedTma,
        ];
        let tilings = || std::iter::once(None).chain(TILINGS.map(Some));
        let tensor_cores = algorithms.into_iter().flat_map(move |algorithm| {
            [AcceleratedTileKind::Cmma, AcceleratedTileKind::Mma]
                .into_iter()
                .flat_map(move |tile| {
                    tilings().map(move |tiling| Candidate::TensorCores(algorithm, tile, tiling))
                })
        });
        std::iter::once(Candidate::Portable).chain(tensor_cores)
    }

    /// What the tuner measures on tensor cores: one algorithm per way of loading (synchronous,
    /// asynchronous, TMA; single-stage or warp-specialised), each with both tile kinds as
    /// cubek tiles them, and the warp-specialised TMA one on `mma` by each tiling. Each costs a
    /// kernel compilation per layer shape on the first run; the strided and tilewise loaders
    /// left out differ from the cyclic ones only in how the threads share a tile's loads. The
    /// tilings leave out the warp-specialised asynchronous loader: with its 8 loading planes a
    /// cube runs 512 threads, 128 registers a thread, and cubek's own tiling already spills
    /// there (ptxas, `benches/RESULTS.md`); planes of 64 x 64 outputs need ~170.
    fn tuned() -> impl Iterator<Item = Candidate> {
        use ConvAlgorithm::*;
        let as_cubek_tiles = [
            SpecializedTma,
            SpecializedAsyncCyclic,
            SimpleAsyncTma,
            SimpleSyncCyclic,
        ]
        .into_iter()
        .flat_map(|algorithm| {
            [AcceleratedTileKind::Mma, AcceleratedTileKind::Cmma]
                .map(|tile| Candidate::TensorCores(algorithm, tile, None))
        });
        let tiled = TILINGS.map(|tiling| {
            Candidate::TensorCores(SpecializedTma, AcceleratedTileKind::Mma, Some(tiling))
        });
        as_cubek_tiles.chain(tiled)
    }

    /// The candidate `name`d as [`Candidate`]'s `Display` writes it.
    /// Any tiling is named as [`Tiling`]'s `Display` writes it, after an algorithm and tile kind:
    /// `simple_sync_cyclic_cmma_32x32x16_w16x16`.
    fn named(name: &str) -> Option<Candidate> {
        Candidate::all().find_map(|candidate| match candidate {
            _ if candidate.to_string() == name => Some(candidate),
            Candidate::TensorCores(algorithm, tile, None) => {
                let tiling = name.strip_prefix(&format!("{candidate}_"))?.parse().ok()?;
                Some(Candidate::TensorCores(algorithm, tile, Some(tiling)))
            }
            _ => None,
        })
    }

    /// Launches `conv` (no wait for the device); the error says why the candidate cannot run
    /// this shape here. A panic inside cubecl or cubek (a kernel that fails to compile for
    /// this card, say) is such an error too: while tuning, it rules the candidate out instead
    /// of ending the search.
    fn run<F: Float + CubeElement>(self, conv: &Conv) -> Result<(), String> {
        catch_unwind(AssertUnwindSafe(|| self.launch::<F>(conv)))
            .map_err(|panic| format!("{self} panicked: {}", panic_message(&*panic)))?
    }

    fn launch<F: Float + CubeElement>(self, conv: &Conv) -> Result<(), String> {
        let (n, h, w) = conv.shape;
        let layer = &conv.layer;
        let bordered = n * (h + 2) * (w + 2);
        let input_len = bordered * layer.inputs;
        match (self, &conv.op) {
            (Candidate::Portable, Op::Conv3x3 { output, stride }) => {
                let values = n * h * w * layer.outputs;
                // SAFETY: every buffer holds the length given with it (the engine's `allocate`),
                // and the kernel's `units` keep it inside them.
                unsafe {
                    conv3x3::launch_unchecked::<F>(
                        &conv.client,
                        cube_count(values),
                        CubeDim::new_1d(UNITS),
                        BufferArg::from_raw_parts(conv.input.clone(), input_len),
                        BufferArg::from_raw_parts(
                            layer.weight.clone(),
                            9 * layer.inputs * layer.outputs,
                        ),
                        BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                        BufferArg::from_raw_parts(output.clone(), bordered * stride),
                        values,
                        h,
                        w,
                        layer.inputs,
                        layer.outputs,
                        *stride,
                        stride - layer.outputs,
                    )
                };
                Ok(())
            }
            (Candidate::Portable, Op::Up2x2 { output, stride }) => {
                let units = 4 * n * h * w * layer.outputs;
                // SAFETY: every buffer holds the length given with it (the engine's `allocate`),
                // and the kernel's `units` keep it inside them.
                unsafe {
                    up2x2::launch_unchecked::<F>(
                        &conv.client,
                        cube_count(units),
                        CubeDim::new_1d(UNITS),
                        BufferArg::from_raw_parts(conv.input.clone(), input_len),
                        BufferArg::from_raw_parts(
                            layer.weight.clone(),
                            4 * layer.inputs * layer.outputs,
                        ),
                        BufferArg::from_raw_parts(layer.bias.clone(), layer.outputs),
                        BufferArg::from_raw_parts(
                            output.clone(),
                            n * (2 * h + 2) * (2 * w + 2) * stride,
                        ),
                        units,
                        h,
                        w,
                        layer.inputs,
                        layer.outputs,
                        *stride,
                    )
                };
                Ok(())
            }
            (Candidate::TensorCores(algorithm, tile, tiling), _) => {
                tensor_cores::conv::<F>(algorithm, tile, tiling, conv)
                    .map_err(|err| format!("cubek's convolution ({self}): {err}"))
            }
        }
    }
}

/// How the engine picks each convolution's main loop.
#[derive(Debug, Clone)]
pub(super) enum MainLoop {
    /// The fastest candidate per layer shape, tuned on the device `tune_id` names.
    Tuned { tune_id: String },
    /// One candidate for every layer.
    Fixed(Candidate),
}

impl MainLoop {
    /// By `name` (`UNET_FUSED_CONV` for the engine's users): empty or `tuned` tunes f16 per
    /// layer shape; `portable` or a candidate's name (`specialized_tma_mma`) runs that one
    /// everywhere. f32 always runs the portable loop: tensor cores take f32 only as TF32
    /// (10-bit mantissas), and f32 is the engine's reference.
    pub fn choose(
        client: &Client,
        device: &str,
        precision: Precision,
        name: &str,
    ) -> Result<MainLoop, String> {
        if precision != Precision::F16 {
            return Ok(MainLoop::Fixed(Candidate::Portable));
        }
        match name {
            "" | "tuned" => {
                // The card as cubecl knows it (its name and what kernels compile for), so a
                // cache kept on disk never answers for another card.
                let identity = &client.properties().identity;
                let id = format!("{device}-{}-{}", identity.name, identity.fingerprint);
                let tune_id = id
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                Ok(MainLoop::Tuned { tune_id })
            }
            name => Candidate::named(name).map(MainLoop::Fixed).ok_or_else(|| {
                let names: Vec<String> = Candidate::all()
                    .filter(|c| !matches!(c, Candidate::TensorCores(_, _, Some(_))))
                    .map(|c| c.to_string())
                    .collect();
                format!(
                    "`{name}` names no main loop of the fused engine (expected tuned, or one of: {}; a tensor-core one may name a tiling after it, as specialized_tma_mma_{})",
                    names.join(", "),
                    TILINGS[0]
                )
            }),
        }
    }

    /// Whether any layer may run on cubek's tensor cores, which read the layers' GEMM form.
    pub fn may_use_tensor_cores(&self) -> bool {
        !matches!(self, MainLoop::Fixed(Candidate::Portable))
    }

    /// Launches `conv`'s main loop; returns the candidate that ran. A layer without a GEMM
    /// form (f32, or inputs tensor cores do not take) has the portable loop alone.
    pub fn run<F: Float + CubeElement>(&self, conv: Conv) -> Result<Candidate, String> {
        if conv.layer.gemm.is_none() {
            return Candidate::Portable
                .run::<F>(&conv)
                .map(|()| Candidate::Portable);
        }
        match self {
            MainLoop::Fixed(candidate) => candidate.run::<F>(&conv).map(|()| *candidate),
            MainLoop::Tuned { tune_id } => tuned::<F>(tune_id, conv),
        }
    }
}

impl fmt::Display for MainLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MainLoop::Tuned { .. } => f.write_str("tuned per layer shape"),
            MainLoop::Fixed(candidate) => write!(f, "{candidate}"),
        }
    }
}

/// What a tuned choice holds for: one main loop's op, shape and storage. The batch is rounded
/// to a power of two, so batches of 9 to 16 share what batch 16 measured.
#[derive(Hash, Eq, PartialEq, Debug, Clone, Serialize, Deserialize, AutotuneKey)]
pub(super) struct ConvKey {
    op: String,
    #[autotune(anchor)]
    batch: usize,
    height: usize,
    width: usize,
    inputs: usize,
    outputs: usize,
    storage: String,
}

impl ConvKey {
    /// The multiply-adds of the key's GEMM: output pixels x outputs x taps x inputs (a
    /// transposed convolution's over the bordered input, to four times its outputs).
    fn multiply_adds(&self) -> u64 {
        let (pixels, taps) = match self.op.as_str() {
            "up2x2" => ((self.height + 2) * (self.width + 2), 4),
            _ => (self.height * self.width, 9),
        };
        (self.batch * pixels * taps * self.inputs * self.outputs) as u64
    }
}

/// The multiply-adds from which the tuner measures the [`TILINGS`]: 2^30, ~2 GFLOP, some
/// microseconds of a GPU's tensor cores, so launches and the last wave of cubes weigh more
/// below it than the tiling does. At 512x512 every layer of the full-width model is past it
/// even at batch 1, the demo model's layers at 64x64 (the fixtures') none.
const TILED_FROM: u64 = 1 << 30;

static TUNER: LocalTuner<ConvKey, String> = local_tuner!("main-loop");

/// Runs the fastest candidate for `conv`'s shape on the device `tune_id` names, tuning the
/// shape first if neither this process nor the cache on disk has.
fn tuned<F: Float + CubeElement>(tune_id: &String, conv: Conv) -> Result<Candidate, String> {
    let candidates = TUNER.init(tune_id, || {
        let storage = super::precision_of::<F>().to_string();
        let key = move |conv: &Conv| {
            let (n, h, w) = conv.shape;
            let layer = &conv.layer;
            let op = conv.op.name().to_string();
            ConvKey::new(op, n, h, w, layer.inputs, layer.outputs, storage.clone())
        };
        // The portable loop is measured only where no tensor-core candidate runs the shape:
        // it is a fallback, never the fastest where tensor cores exist.
        let tensor_cores = TuneGroup::<ConvKey>::new("tensor cores", |_| 1);
        let fallback = TuneGroup::<ConvKey>::new("portable", |_| 0);
        let set = TunableSet::<ConvKey, Conv, (), Candidate>::new_cloning_inputs(key);
        let set = Candidate::tuned().fold(set, |set, candidate| {
            // Our tilings only where the tiling can matter (a negative priority skips it for the
            // key): each costs a compilation per shape, ~2.5 s on the build machine's 2 cores.
            let tiled = matches!(candidate, Candidate::TensorCores(_, _, Some(_)));
            let priority = move |key: &ConvKey| {
                if tiled && key.multiply_adds() < TILED_FROM {
                    -1
                } else {
                    1
                }
            };
            set.with(
                Tunable::identified(candidate, move |conv: Conv| candidate.run::<F>(&conv))
                    .group(&tensor_cores, priority),
            )
        });
        set.with(
            Tunable::identified(Candidate::Portable, |conv: Conv| {
                Candidate::Portable.run::<F>(&conv)
            })
            .group(&fallback, |_| 1),
        )
    });
    let key = candidates.generate_key(&conv);
    // cubecl's tuner panics where every candidate fails, or where the one it chose fails to
    // run after all; that must reach the user as an error.
    catch_unwind(AssertUnwindSafe(|| {
        TUNER.execute(tune_id, &conv.client, candidates.clone(), conv.clone())
    }))
    .map_err(|panic| format!("cubecl's autotune of {key}: {}", panic_message(&*panic)))?;
    let winner = TUNER
        .fastest_identity(tune_id, &candidates, &key)
        .ok_or_else(|| format!("cubecl's autotune settled on no main loop for {key}"))?;
    let checked = (tune_id.clone(), key);
    let verdict = CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&checked)
        .copied();
    match verdict {
        Some(runs) if runs == winner => Ok(winner),
        Some(runs) => {
            // Found wrong earlier in this process: what it wrote is replaced.
            runs.run::<F>(&conv)?;
            Ok(runs)
        }
        None if winner == Candidate::Portable => Ok(winner),
        None => {
            let runs = check_against_portable::<F>(winner, &conv, &checked.1)?;
            if runs == winner {
                // The check left the portable loop's values; this batch gets the winner's,
                // as every later one does (the two differ by roundings).
                winner.run::<F>(&conv)?;
            }
            let mut verdicts = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
            verdicts.insert(checked, runs);
            Ok(runs)
        }
    }
}

/// What runs each tuned key in this process, by device and key, once its winner was checked
/// against the portable loop.
static CHECKED: LazyLock<Mutex<HashMap<(String, ConvKey), Candidate>>> =
    LazyLock::new(Default::default);

/// What should run `key`: the tuner's `winner` if its values (just computed for `conv`)
/// agree with the portable loop's on the batch's first image (the images share every
/// instruction), else, said in one line, the portable loop. Leaves the portable loop's values
/// in place. The tuner measures speed only; this guards against a candidate that runs fast and
/// wrong on a layout no test outside a GPU can reach.
fn check_against_portable<F: Float + CubeElement>(
    winner: Candidate,
    conv: &Conv,
    key: &ConvKey,
) -> Result<Candidate, String> {
    let theirs = first_image::<F>(conv)?;
    Candidate::Portable.run::<F>(conv)?;
    let ours = first_image::<F>(conv)?;
    let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let difference = theirs
        .iter()
        .zip(&ours)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // Both sum in f32 and round once to the storage type: they differ by about one rounding
    // (5e-4 of a value in f16); a wrong layout differs by the values' own size. NaN fails.
    if difference <= 1e-2 * scale {
        Ok(winner)
    } else {
        eprintln!(
            "unet-core: cubek's {winner} differs from the portable loop by {difference:.3e} (values up to {scale:.3e}) on {key}; that layer shape runs the portable loop"
        );
        Ok(Candidate::Portable)
    }
}

/// The values `conv` wrote for the batch's first image, as f32.
fn first_image<F: Float + CubeElement>(conv: &Conv) -> Result<Vec<f32>, String> {
    let (_, h, w) = conv.shape;
    let (handle, values) = match &conv.op {
        Op::Conv3x3 { output, stride } => (output, (h + 2) * (w + 2) * stride),
        Op::Up2x2 { output, stride } => (output, (2 * h + 2) * (2 * w + 2) * stride),
    };
    let bytes = (values * size_of::<F>()) as u64;
    let first = handle.clone().offset_end(handle.size() - bytes);
    let read = conv
        .client
        .read_one(first)
        .map_err(|err| format!("reading a main loop's values back: {err}"))?;
    Ok(match size_of::<F>() {
        2 => read
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => read
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}

/// Whether cubek's convolution is given a layer of `inputs` channels: a multiple of 8, so that
/// each pixel's channels are whole 16-byte lines in f16, what its loaders (TMA's above all) and
/// the tensor cores' K steps read. The input layer's 3 channels are not, and that layer
/// (K = 27, memory-bound) gains nothing from tensor cores; the portable loop runs it.
pub(super) fn tensor_cores_take(inputs: usize) -> bool {
    inputs.is_multiple_of(8)
}

/// A layer's weights and bias as cubek's convolution reads them (its *GEMM form*), from
/// `[tap][input][output]`: a 3x3 convolution's as `[output][ky][kx][input]`; a transposed
/// convolution's as a 1x1 convolution to four times the channels, `[(dy * 2 + dx) * outputs +
/// o][input]`, its bias repeated for each of the four.
pub(super) fn gemm_form(kind: Kind, tap_major: &TapMajor, bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (taps, inputs, outputs) = (tap_major.taps, tap_major.inputs, tap_major.outputs);
    let mut values = vec![0.0; taps * inputs * outputs];
    for tap in 0..taps {
        for c in 0..inputs {
            for o in 0..outputs {
                let at = match kind {
                    Kind::UpConv2x2 => (tap * outputs + o) * inputs + c,
                    _ => (o * taps + tap) * inputs + c,
                };
                values[at] = tap_major.get(tap, c, o);
            }
        }
    }
    let bias = match kind {
        Kind::UpConv2x2 => bias.repeat(4),
        _ => bias.to_vec(),
    };
    (values, bias)
}

/// cubek's implicit GEMM, reading the bordered input with no padding (the border is the
/// padding), storing through our epilogue (`super::super::epilogue`).
mod tensor_cores {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    use cubecl::ir::ElemType;
    use cubecl::prelude::*;
    use cubecl::server::Handle;
    use cubecl::zspace::{Shape, Strides};
    use cubek::convolution::components::{ConvSetupError, Dimensionality};
    use cubek::convolution::definition::{ConvBlueprint, ForwardBlueprint};
    use cubek::convolution::{AcceleratedTileKind, ConvAlgorithm, Strategy};
    use cubek::matmul::definition::{
        MatmulAvailabilityError, MatmulElems, MatmulGlobalElems, MatmulProblem, MatmulSetupError,
        MatmulVectorSizes,
    };
    use cubek::matmul::multi_level::components::stage::PartitionBuffering;
    use cubek::matmul::multi_level::definition::{
        BatchMatmulBlueprint, MultiRowStrategy, TilingScheme,
    };
    use cubek::matmul::multi_level::routines::{
        PlaneTilingBlueprintOptions, infer_blueprint_plane, select_swizzle,
    };
    use cubek::matmul::multi_level::stage::SwizzleModes;
    use cubek::matmul::multi_level::{PartitionSize, StageSize};
    use cubek::std::{InputBinding, MatrixLayout};

    use super::super::epilogue;
    use super::{Conv, Op, Tiling};

    /// A contiguous tensor of `shape` over `handle`.
    fn tensor<const D: usize>(handle: &Handle, shape: [usize; D]) -> TensorBinding {
        let mut strides = [1usize; D];
        for d in (0..D.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        TensorBinding {
            handle: handle.clone().binding(),
            strides: Strides::new(&strides),
            shape: Shape::new(shape),
            tiling: Default::default(),
        }
    }

    /// What a blueprint's fit depends on: the candidate, the GEMM's (M, N, K) and element
    /// size, the device's plane size and shared memory.
    type FitKey = (
        ConvAlgorithm,
        AcceleratedTileKind,
        Option<Tiling>,
        (usize, usize, usize),
        usize,
        u32,
        usize,
    );

    /// The blueprint found to fit each key (the last one tried where none does).
    static FITTED: LazyLock<Mutex<HashMap<FitKey, Strategy>>> = LazyLock::new(Default::default);

    /// `conv`'s layer in its GEMM form into its output's interior: a 3x3 convolution's
    /// outputs through ReLU, or a transposed convolution's products scattered; tiled as cubek
    /// chooses for `algorithm`, or by `tiling`.
    ///
    /// cubek sizes a cube's stage from the planes a cube may hold, not from the shared
    /// memory it has: lavapipe (32 KiB) refuses its choice at every shape, an H200 (227 KiB)
    /// its `cmma` ones at 512x512. Where a blueprint does not fit, the next of
    /// [`Gemm::blueprints`] is tried, once per shape.
    pub fn conv<F: Float + CubeElement>(
        algorithm: ConvAlgorithm,
        tile_kind: AcceleratedTileKind,
        tiling: Option<Tiling>,
        conv: &Conv,
    ) -> Result<(), String> {
        let (weight, bias) = conv
            .layer
            .gemm
            .as_ref()
            .ok_or("the layer has no GEMM form (its main loop is the portable one)")?;
        let gemm = Gemm {
            conv,
            weight,
            bias,
            elem: F::elem_type_native(),
        };
        let hardware = &conv.client.properties().hardware;
        let key = (
            algorithm,
            tile_kind,
            tiling,
            gemm.mnk(),
            gemm.elem.size(),
            hardware.plane_size_max,
            hardware.max_shared_memory_size,
        );
        let fitted = FITTED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(strategy) = fitted {
            return gemm.launch(&strategy).map_err(|err| format!("{err:?}"));
        }
        let blueprints = gemm.blueprints(algorithm, tile_kind, tiling.as_ref())?;
        let last = blueprints.len() - 1;
        for (tried, strategy) in blueprints.into_iter().enumerate() {
            let result = gemm.launch(&strategy);
            if tried == last || !too_big(&result) {
                FITTED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, strategy);
                return result.map_err(|err| format!("{err:?}"));
            }
        }
        unreachable!("the last blueprint returns")
    }

    /// Whether cubek refused a blueprint for its shared memory.
    fn too_big(result: &Result<(), ConvSetupError>) -> bool {
        matches!(
            result,
            Err(ConvSetupError::Matmul(MatmulSetupError::Unavailable(
                MatmulAvailabilityError::SharedMemoryTooBig { .. }
            )))
        )
    }

    /// Whether `algorithm` is one of cubek's warp-specialised ones (planes that only load).
    fn specialised(algorithm: ConvAlgorithm) -> bool {
        matches!(
            algorithm,
            ConvAlgorithm::SpecializedAsyncCyclic
                | ConvAlgorithm::SpecializedAsyncStrided
                | ConvAlgorithm::SpecializedTma
        )
    }

    /// What cubek-matmul 0.3.1's routine for `algorithm` passes `infer_blueprint_plane`
    /// (`SimpleAlgorithm::expand_blueprint`, `SpecializedAlgorithm::expand_blueprint`); its
    /// `stage_buffering` is the stages its main loop consumes at a time (the routines'
    /// `num_stages`: one for the simple algorithms, two for the specialised ones).
    fn routine_options(algorithm: ConvAlgorithm, swizzled: bool) -> PlaneTilingBlueprintOptions {
        if specialised(algorithm) {
            PlaneTilingBlueprintOptions {
                specialized: true,
                multi_row_strategy: MultiRowStrategy::Adaptive {
                    minimum_stage_count: 8,
                },
                swizzled,
                stage_buffering: 2,
                ..Default::default()
            }
        } else {
            PlaneTilingBlueprintOptions {
                partition_buffering: Some(PartitionBuffering::Single),
                tiny_selection_enabled: true,
                swizzled,
                ..Default::default()
            }
        }
    }

    /// A main loop's convolution as cubek's GEMM: the layer's GEMM form and storage type.
    struct Gemm<'a> {
        conv: &'a Conv,
        weight: &'a Handle,
        bias: &'a Handle,
        elem: ElemType,
    }

    impl Gemm<'_> {
        /// The kernel's side and the GEMM's output as an image: a 3x3 convolution's outputs,
        /// or a transposed one's four products a pixel at every bordered pixel.
        fn kernel_and_output(&self) -> (usize, [usize; 4]) {
            let (n, h, w) = self.conv.shape;
            let outputs = self.conv.layer.outputs;
            match self.conv.op {
                Op::Conv3x3 { .. } => (3, [n, h, w, outputs]),
                Op::Up2x2 { .. } => (1, [n, h + 2, w + 2, 4 * outputs]),
            }
        }

        /// Every operand stored as the engine's storage type.
        fn globals(&self) -> MatmulGlobalElems {
            MatmulGlobalElems {
                lhs: self.elem,
                rhs: self.elem,
                out: self.elem,
            }
        }

        /// (M, N, K): output pixels, output channels, taps x input channels, the channels
        /// padded to whole loads as cubek's launcher pads them (`adjust_problem`: 16 bytes,
        /// which every layer cubek is given already fills).
        fn mnk(&self) -> (usize, usize, usize) {
            let (kernel, out) = self.kernel_and_output();
            let load = self.conv.client.properties().io_width() as usize / 8 / self.elem.size();
            let channels = self.conv.layer.inputs.next_multiple_of(load.max(1));
            (out[0] * out[1] * out[2], out[3], kernel * kernel * channels)
        }

        /// The blueprints to try, each next one asking less shared memory: as cubek tiles
        /// it, then, for a simple algorithm, with half the planes (rows of tiles) a cube at a
        /// time (the specialised ones keep cubek's choice); by `tiling`, then by smaller ones
        /// ([`Tiling::and_smaller`]).
        fn blueprints(
            &self,
            algorithm: ConvAlgorithm,
            tile_kind: AcceleratedTileKind,
            tiling: Option<&Tiling>,
        ) -> Result<Vec<Strategy>, String> {
            let mut blueprints = Vec::new();
            // A blueprint cubek cannot make (a step no whole number of tiles makes, say) is
            // left out; its reason is the error where none is left.
            let mut refusal = None;
            let mut add = |made: Result<Strategy, String>| match made {
                Ok(blueprint) => blueprints.push(blueprint),
                Err(err) => {
                    refusal.get_or_insert(err);
                }
            };
            match tiling {
                None => {
                    add(Ok(Strategy::Inferred {
                        algorithm,
                        tile_kind,
                    }));
                    if !specialised(algorithm) {
                        let hardware = &self.conv.client.properties().hardware;
                        let mut planes =
                            hardware.max_units_per_cube / hardware.plane_size_max.max(1);
                        while planes > 1 {
                            planes /= 2;
                            add(self.forced(algorithm, tile_kind, Some(planes), None));
                        }
                    }
                }
                Some(tiling) => {
                    for tiling in &tiling.and_smaller() {
                        add(self.forced(algorithm, tile_kind, None, Some(tiling)));
                    }
                }
            }
            match refusal {
                _ if !blueprints.is_empty() => Ok(blueprints),
                Some(err) => Err(err),
                None => Err("no blueprint to try".into()),
            }
        }

        /// The problem cubek's launcher hands its routine: the input's pixels by taps x
        /// channels, times the weights read column-major (`[output][ky][kx][input]`), no batch
        /// dimensions.
        fn problem(&self) -> MatmulProblem {
            let (m, n, k) = self.mnk();
            MatmulProblem::from_parameters(
                m,
                n,
                k,
                Shape::new([0usize; 0]),
                Shape::new([0usize; 0]),
                MatrixLayout::RowMajor,
                MatrixLayout::ColMajor,
                MatrixLayout::RowMajor,
                None,
                None,
                self.globals(),
                Default::default(),
            )
        }

        /// A blueprint made as `algorithm`'s routine makes it (cubek-matmul 0.3.1's
        /// `expand_blueprint`), but with `row_count` planes a cube where given; or with our
        /// `tiling` in place of cubek's, and what follows from it (the shared memory's
        /// swizzles, the partitions' buffering, the bounds checks) made again as cubek makes
        /// it.
        fn forced(
            &self,
            algorithm: ConvAlgorithm,
            tile_kind: AcceleratedTileKind,
            row_count: Option<u32>,
            tiling: Option<&Tiling>,
        ) -> Result<Strategy, String> {
            let client = &self.conv.client;
            let problem = self.problem();
            let tile_matmul = epilogue::tile_matmul(tile_kind);
            let plane_dim = client.properties().hardware.plane_size_max;
            let swizzled = tile_matmul.should_swizzle(client);
            let options = PlaneTilingBlueprintOptions {
                row_count,
                ..routine_options(algorithm, swizzled)
            };
            let stage_buffering = options.stage_buffering;
            let partition_buffering = options.partition_buffering;
            // Only the swizzle's choice reads the vector sizes: one of 16 bytes or fewer leaves
            // it to the stage's extent, as every layer's vectors here are.
            let vectors = 16 / self.elem.size();
            let vector_sizes = MatmulVectorSizes {
                lhs: vectors,
                rhs: vectors,
                out: vectors,
            };
            let (mut matmul, dtypes) = infer_blueprint_plane(
                tile_matmul,
                client,
                &problem,
                plane_dim,
                MatmulElems::from_globals(&self.globals()),
                &vector_sizes,
                options,
            )
            .map_err(|err| format!("{err:?}"))?;
            if let Some(tiling) = tiling {
                let tile = matmul.tiling_scheme.tile_size;
                let tiles = |elements: u32, per_tile: u32| {
                    (elements.is_multiple_of(per_tile) && elements >= per_tile)
                        .then_some(elements / per_tile)
                        .ok_or_else(|| {
                            format!("tiling {tiling} does not divide into {tile:?} tiles")
                        })
                };
                let (warp_m, warp_n) = tiling.warp;
                // No planes along N past the layer's outputs.
                let planes_n = tiling
                    .planes
                    .1
                    .min((problem.n as u32).div_ceil(warp_n))
                    .max(1);
                let scheme = TilingScheme::builder()
                    .with_tile_size(tile)
                    .with_partition_size(PartitionSize::new(
                        tiles(warp_m, tile.m)?,
                        tiles(warp_n, tile.n)?,
                        tiles(tiling.k, tile.k)?,
                    ))
                    .with_stage_size(StageSize::new(tiling.planes.0, planes_n, 1))
                    .build()?;
                let partition_buffering = partition_buffering.unwrap_or(
                    // cubek's own rule (`infer_blueprint_plane`).
                    if scheme.tiles_per_stage_partition_along_n() > 1 {
                        PartitionBuffering::Double
                    } else {
                        PartitionBuffering::Single
                    },
                );
                let mut builder =
                    BatchMatmulBlueprint::builder(matmul.tile_matmul, scheme, plane_dim, &problem)
                        .partition_buffering(partition_buffering)
                        .stage_buffering(stage_buffering)
                        .hypercube_blueprint(matmul.hypercube_blueprint.clone())
                        .load_specialization_config(matmul.load_flows);
                if swizzled {
                    // Both operands run along K in shared memory (row-major lhs, column-major
                    // rhs).
                    let along_k = scheme.elements_per_stage_along_k() as usize;
                    builder = builder.shared_swizzle(SwizzleModes {
                        lhs: select_swizzle(along_k, dtypes.lhs_stage, vectors),
                        rhs: select_swizzle(along_k, dtypes.rhs_stage, vectors),
                        ..Default::default()
                    });
                }
                matmul = builder.build();
            }
            Ok(Strategy::Forced {
                algorithm,
                blueprint: ConvBlueprint::Forward(ForwardBlueprint {
                    matmul,
                    dimensionality: Dimensionality::Dim2,
                    has_bias: true,
                }),
            })
        }

        fn launch(&self, strategy: &Strategy) -> Result<(), ConvSetupError> {
            let (conv, elem) = (self.conv, self.elem);
            let (n, h, w) = conv.shape;
            let layer = &conv.layer;
            let (kernel, out) = self.kernel_and_output();
            let input =
                InputBinding::new(tensor(&conv.input, [n, h + 2, w + 2, layer.inputs]), elem);
            let weight = InputBinding::new(
                tensor(self.weight, [out[3], kernel, kernel, layer.inputs]),
                elem,
            );
            let bias = InputBinding::new(tensor(self.bias, [out[3]]), elem);
            let output = match &conv.op {
                Op::Conv3x3 { output, stride } => tensor(output, [n, h + 2, w + 2, *stride]),
                Op::Up2x2 { output, stride } => tensor(output, [n, 2 * h + 2, 2 * w + 2, *stride]),
            };
            epilogue::launch(
                strategy,
                &conv.client,
                [input, weight, bias],
                output,
                MatmulElems::from_globals(&self.globals()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cubecl::wgpu::{WgpuDevice, WgpuDeviceKind, WgpuRuntime};
    use cubecl_runtime::runtime::Runtime;

    /// A tuned winner is trusted only where its values are the portable loop's: here the
    /// "winner's" values are the portable loop's own (agree), then garbage in the first image
    /// (disagree: the portable loop takes over and its values replace the garbage), on a
    /// 3x3 layer over a batch of two in f32, on lavapipe.
    #[test]
    fn a_winner_that_disagrees_with_the_portable_loop_is_replaced() {
        let client = <WgpuRuntime>::client(&WgpuDevice::new(WgpuDeviceKind::Cpu));
        let (n, h, w, inputs, outputs) = (2, 5, 7, 3, 4);
        let values = |count: usize, salt: usize| -> Vec<f32> {
            (0..count)
                .map(|i| ((i * 7919 + salt * 104_729) % 1013) as f32 / 1013.0 - 0.5)
                .collect()
        };
        let upload = |v: &[f32]| client.create_from_slice(f32::as_bytes(v));
        let weight = upload(&values(9 * inputs * outputs, 1));
        let bias = upload(&values(outputs, 2));
        let layer = Layer {
            name: "conv".into(),
            inputs,
            outputs,
            weight: weight.clone(),
            bias: bias.clone(),
            gemm: None,
        };
        let image_len = (h + 2) * (w + 2) * outputs;
        let bordered = |values: &[f32]| Op::Conv3x3 {
            output: upload(values),
            stride: outputs,
        };
        let conv = Conv {
            client: client.clone(),
            layer,
            input: upload(&values(n * (h + 2) * (w + 2) * inputs, 3)),
            shape: (n, h, w),
            op: bordered(&vec![0.0; n * image_len]),
        };
        let key = ConvKey::new("conv3x3".into(), n, h, w, inputs, outputs, "f32".into());
        let winner = Candidate::TensorCores(
            ConvAlgorithm::SpecializedTma,
            AcceleratedTileKind::Mma,
            None,
        );
        let read = |conv: &Conv| {
            let Op::Conv3x3 { output, .. } = &conv.op else {
                unreachable!("a 3x3 convolution")
            };
            f32::from_bytes(&client.read_one(output.clone()).unwrap()).to_vec()
        };

        Candidate::Portable.run::<f32>(&conv).unwrap();
        let portable = read(&conv);
        assert_eq!(first_image::<f32>(&conv).unwrap(), portable[..image_len]);
        assert_eq!(
            check_against_portable::<f32>(winner, &conv, &key),
            Ok(winner)
        );

        // The first image's pixel (0, 0), last channel: bordered pixel (1, 1).
        let mut garbage = portable.clone();
        garbage[(w + 2 + 1) * outputs + outputs - 1] += 1.0;
        let conv = Conv {
            op: bordered(&garbage),
            ..conv
        };
        assert_eq!(
            check_against_portable::<f32>(winner, &conv, &key),
            Ok(Candidate::Portable)
        );
        assert_eq!(read(&conv), portable);
    }

    #[test]
    fn every_candidate_is_found_by_its_name_alone() {
        let names: Vec<String> = Candidate::all().map(|c| c.to_string()).collect();
        // The portable loop; 9 algorithms x 2 tile kinds, as cubek tiles them and by 3 tilings.
        assert_eq!(names.len(), 1 + 9 * 2 * 4);
        for candidate in Candidate::all() {
            assert_eq!(Candidate::named(&candidate.to_string()), Some(candidate));
        }
        assert_eq!(
            Candidate::named("specialized_tma_mma"),
            Some(Candidate::TensorCores(
                ConvAlgorithm::SpecializedTma,
                AcceleratedTileKind::Mma,
                None
            ))
        );
        assert_eq!(
            Candidate::named("specialized_tma_mma_256x128x32_w64x64"),
            Some(Candidate::TensorCores(
                ConvAlgorithm::SpecializedTma,
                AcceleratedTileKind::Mma,
                Some(TILINGS[1])
            ))
        );
        assert_eq!(
            Candidate::named("simple_sync_cyclic_cmma_64x32x16_w16x16"),
            Some(Candidate::TensorCores(
                ConvAlgorithm::SimpleSyncCyclic,
                AcceleratedTileKind::Cmma,
                Some(Tiling {
                    warp: (16, 16),
                    planes: (4, 2),
                    k: 16
                })
            ))
        );
        for wrong in [
            "specialized_tma",
            "portable_64x64x16_w16x16",
            "specialized_tma_mma_64x48x16_w16x32",
            "specialized_tma_mma_64x64_w16x16",
            "specialized_tma_mma_64x64x0_w16x16",
            "specialized_tma_mma_64x64x16",
        ] {
            assert_eq!(Candidate::named(wrong), None, "{wrong}");
        }
        assert!(Candidate::tuned().all(|c| Candidate::all().any(|a| a == c)));
    }

    /// A tiling too big for a card's shared memory gives way to smaller ones: the sum's step
    /// first, down to 1, then the planes along M, then along N; the plane's own tile stays.
    #[test]
    fn smaller_tilings_halve_the_step_then_the_planes() {
        let tiling: Tiling = "64x64x4_w32x32".parse().unwrap();
        let tried: Vec<String> = tiling.and_smaller().iter().map(|p| p.to_string()).collect();
        let expected = [
            "64x64x4_w32x32",
            "64x64x2_w32x32",
            "64x64x1_w32x32",
            "32x64x4_w32x32",
            "32x64x2_w32x32",
            "32x64x1_w32x32",
            "32x32x4_w32x32",
            "32x32x2_w32x32",
            "32x32x1_w32x32",
        ];
        assert_eq!(tried, expected);
    }

    /// The layouts cubek is given: OHWI for a 3x3 convolution; for a transposed one, a 1x1
    /// convolution whose output `tap * outputs + o` is output channel `o` at sub-pixel `tap`
    /// (what the scatter in cubek's store reads), with the bias repeated.
    #[test]
    fn gemm_form_lays_out_what_cubek_and_the_scatter_read() {
        let (inputs, outputs) = (3, 5);
        for (kind, taps) in [(Kind::Conv3x3, 9), (Kind::UpConv2x2, 4)] {
            let tap_major = TapMajor {
                taps,
                inputs,
                outputs,
                values: (0..taps * inputs * outputs).map(|i| i as f32).collect(),
            };
            let bias: Vec<f32> = (0..outputs).map(|o| 100.0 + o as f32).collect();
            let (weight, gemm_bias) = gemm_form(kind, &tap_major, &bias);
            for tap in 0..taps {
                for c in 0..inputs {
                    for o in 0..outputs {
                        let at = match kind {
                            Kind::UpConv2x2 => ((tap * outputs) + o) * inputs + c,
                            _ => (o * 9 + tap) * inputs + c,
                        };
                        assert_eq!(weight[at], tap_major.get(tap, c, o));
                    }
                }
            }
            let expected_bias = match kind {
                Kind::UpConv2x2 => [&bias[..], &bias, &bias, &bias].concat(),
                _ => bias.clone(),
            };
            assert_eq!(gemm_bias, expected_bias);
        }
    }
}
