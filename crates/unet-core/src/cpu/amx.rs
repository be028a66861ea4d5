//! Intel AMX (Sapphire Rapids and later) under the bf16 path: `tdpbf16ps` multiplies a tile
//! of 16 pixels x 32 input channels by one of 32 input channels x 16 output channels into
//! 16 x 16 f32 sums: 8 192 multiply-adds an instruction, against a `vdpbf16ps`'s 32.
//!
//! It runs the direct convolution's [`Job`] as it stands: the A tiles are 16 consecutive
//! pixels of the padded input, read at a tap's offset by a strided tile load (no im2col); the
//! B tiles are 16 input pairs of the weights as [`Packed`] already lays them out for the
//! vector kernel (a row of 16 outputs x 2 every `2 x block` values); the sums go through a
//! small buffer to the vector kernel's epilogue (bias, ReLU, rounding to bf16, the job's
//! output strides; large outputs streamed past the caches), which runs between the next
//! block's dot products. Pixels run along the padded rows as one line, border columns
//! included: a strip of 16 may cross from one row into the next, and the sums of the two
//! border pixels it passes are dropped, as are those of the last strip past the line's end
//! (the activation buffers keep spare pixels for it to read), so any width fills the tiles.
//! Layers whose channels do not fill them (inputs or outputs not a multiple of 32) stay on
//! the vector kernel, but for a layer of a few input channels, which the CPU path hands over
//! as a job of three taps reading 32 values each (a padded row's three pixels and the ones
//! after them, weighted zero: `Conv3x3::RowTaps`).
//!
//! Most machines this project is built and tested on hide AMX (CI's among them), so the
//! kernel's logic is tested on [`Emulated`] tiles, which follow the instructions' definitions
//! in Intel's SDM, and on the real ones wherever the tests run on a CPU that has them; before
//! the [`Hardware`] instructions serve a model, [`usable`] runs a layer on them and on the
//! emulation, and a disagreement keeps the CPU on AVX-512-BF16. Tiles load whole cache lines
//! only where activations and weights start on one ([`Aligned`]): split lines halved the rate
//! at 64 input channels.
// Off x86-64 no CPU has the tiles: the module is built there for the layer plan's questions
// (`fits_channels`), which keep every layer on the vector kernels, and for the tests, which
// run it on `Emulated` tiles.
#![cfg_attr(not(any(test, target_arch = "x86_64")), allow(dead_code))]

use std::marker::PhantomData;

use half::bf16;
use rayon::prelude::*;

use super::aligned::Aligned;
use super::conv::{Job, Packed, Shared, block_of, row_groups};
use super::simd::{Compiled, Kernel, Simd};

/// Pixels an A tile holds (its rows), input pairs a B tile holds (its rows), and the output
/// channels of both B and C tiles (their 64-byte rows: 16 bf16 pairs, or 16 f32 sums).
const ROWS: usize = 16;
/// Input channels an A tile holds: 64 bytes of bf16.
pub const CHANNELS: usize = 32;
/// Output channels a kernel call sums: two B tiles.
const OUTPUTS: usize = 2 * ROWS;
/// Weight bytes one task reads: a task takes as many 32-output pairs as fit, and runs each
/// strip of pixels through all of them, so that the strip is read from memory once rather
/// than once per pair, while the weights stay in the core's L2 cache.
const TASK_WEIGHT_BYTES: usize = 1 << 20;

/// The eight tile registers as the kernel uses them: A tiles 0 and 1 (two strips of 16
/// pixels x 32 input channels), B tiles 2 and 3 (16 input pairs x 16 output channels each),
/// C tiles 4 to 7 (16 pixels x 16 outputs of f32 sums: strip `i`, outputs `j` in tile
/// `4 + 2i + j`). Every tile is 16 rows of 64 bytes.
pub trait Tiles {
    /// Tiles configured for this thread, released when dropped.
    ///
    /// # Safety
    /// The tiles exist: for [`Hardware`], the CPU has AMX and the process may use it
    /// ([`usable`] said so).
    unsafe fn configure() -> Self;
    /// Tile `T` to zeros.
    fn zero<const T: u8>(&mut self);
    /// Tile `T`'s 16 rows of 64 bytes from `from`, `stride` bytes apart.
    ///
    /// # Safety
    /// The 16 rows are readable.
    unsafe fn load<const T: u8>(&mut self, from: *const u8, stride: usize);
    /// `C += A · B` with bf16 pairs multiplied into f32 sums (`tdpbf16ps`).
    fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    /// Tile `T`'s 16 rows of 64 bytes to `to`, `stride` bytes apart.
    ///
    /// # Safety
    /// The 16 rows are writable.
    unsafe fn store<const T: u8>(&mut self, to: *mut u8, stride: usize);
}

/// Whether the tiles can run `job`: input channels (as stored) and outputs in whole tiles,
/// output blocks packed 16 at a time, input pixels along one line (each row a whole number
/// of pixels after the last), and the input readable to the end of the last strip.
pub fn fits(job: &Job<bf16>) -> bool {
    let layer = job.layer;
    let along_a_line = job.input_pixel > 0
        && job.input_row.is_multiple_of(job.input_pixel)
        && job.input_row / job.input_pixel >= job.columns;
    fits_channels(layer.inputs, layer.outputs)
        && layer.block().is_multiple_of(ROWS)
        && along_a_line
        && job.rows > 0
        && job.columns > 0
        && read_end(job) <= job.input.len()
}

/// One past the last input value the strips read: every tap of the line's pixels, rounded
/// up to whole strips.
fn read_end(job: &Job<bf16>) -> usize {
    let strips_end = line_length(job).next_multiple_of(ROWS);
    let last_tap = job.taps.iter().copied().max().unwrap_or(0);
    (strips_end - 1) * job.input_pixel + last_tap + job.layer.inputs
}

/// Whether a layer's channels fill the tiles: see [`fits`].
pub fn fits_channels(inputs: usize, outputs: usize) -> bool {
    inputs.is_multiple_of(CHANNELS) && outputs.is_multiple_of(OUTPUTS)
}

/// Input pixels from the job's first output pixel to its last, border columns included (a
/// job of at least one row: `fits` checks that first).
fn line_length(job: &Job<bf16>) -> usize {
    let span = job.input_row / job.input_pixel;
    (job.rows - 1) * span + job.columns
}

/// Runs `jobs`, alike in their lines, taps and channels, on all cores: each task a run of
/// strip pairs through as many pairs of B tiles (32 output channels each) as
/// [`TASK_WEIGHT_BYTES`] holds, of every job in turn (as [`conv::run`](super::conv::run)
/// takes them).
///
/// # Safety
/// As [`conv::run`](super::conv::run), and `T::configure`'s.
pub unsafe fn run<K: Kernel<Elem = bf16>, T: Tiles>(kernel: K, jobs: &[Job<bf16>]) {
    let Some(first) = jobs.first() else { return };
    let shape = |job: &Job<bf16>| {
        let layer = job.layer;
        (
            line_length(job),
            job.taps.len(),
            layer.inputs,
            layer.outputs,
        )
    };
    for job in jobs {
        job.check_bounds();
        assert!(fits(job), "a job the tiles cannot run");
        assert_eq!(shape(job), shape(first));
    }
    let strip_pairs = line_length(first).div_ceil(2 * ROWS);
    let output_pairs = first.layer.outputs / OUTPUTS;
    let per_task = output_pairs_per_task(first.taps.len(), first.layer.inputs, output_pairs);
    let output_groups = output_pairs.div_ceil(per_task);
    let per_group = row_groups(output_groups, strip_pairs);
    let groups = strip_pairs.div_ceil(per_group);
    let shared = Shared(jobs);
    (0..output_groups * groups)
        .into_par_iter()
        .for_each(|task| {
            let (outputs, group) = (task % output_groups, task / output_groups);
            let pairs = group * per_group..((group + 1) * per_group).min(strip_pairs);
            let outputs = outputs * per_task..((outputs + 1) * per_task).min(output_pairs);
            for job in shared.get() {
                let task = Strips::<T> {
                    job,
                    outputs: outputs.clone(),
                    pairs: pairs.clone(),
                    tiles: PhantomData,
                };
                // SAFETY: this task writes only its output pairs' channels of its strips'
                // pixels of each job.
                unsafe { kernel.compiled(task) };
            }
        });
}

/// How many of a layer's `output_pairs` one task of [`run`] takes: as many as
/// [`TASK_WEIGHT_BYTES`] holds the weights of, at least one.
fn output_pairs_per_task(taps: usize, inputs: usize, output_pairs: usize) -> usize {
    let weight_bytes = taps * inputs * OUTPUTS * size_of::<bf16>();
    (TASK_WEIGHT_BYTES / weight_bytes).clamp(1, output_pairs)
}

/// One task of [`run`]: output channel pairs `outputs` (32 channels each) of strip pairs
/// `pairs`.
struct Strips<'a, T> {
    job: &'a Job<'a, bf16>,
    outputs: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
    tiles: PhantomData<T>,
}

/// A C tile's sums as stored: 16 pixels x 16 outputs.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Sums([[f32; ROWS]; ROWS]);

impl<T: Tiles> Compiled for Strips<'_, T> {
    type Elem = bf16;

    #[inline(always)]
    unsafe fn run<K: Kernel<Elem = bf16>>(self, kernel: K) {
        let Strips {
            job,
            outputs,
            pairs,
            ..
        } = self;
        let layer = job.layer;
        let (block, inputs) = (layer.block(), layer.inputs);
        let span = job.input_row / job.input_pixel;
        // Strip `s` is pixels `16 s..16 (s + 1)` of the line; an odd last one is paired with
        // itself (summed and written twice, alike, by this task alone).
        let last_strip = line_length(job).div_ceil(ROWS) - 1;
        // SAFETY (every pointer below): `fits` checked that every tap of every strip's pixels,
        // all input channels, lies inside the input, and `check_bounds` each output pixel's
        // channels inside the output; the weights of output `o` are at block `o / block`, pair rows
        // `2 x block` values apart (`Packed::new`), and `fits` made outputs whole B tiles.
        let weights = |o: usize| unsafe {
            layer
                .weights()
                .as_ptr()
                .add((o / block) * layer.taps() * inputs * block + 2 * (o % block))
        };
        let (a_stride, b_stride) = (2 * job.input_pixel, 4 * block);
        // Strip `i`, outputs `j`: `sums[i][j]`.
        let mut sums = [[Sums([[0.0; ROWS]; ROWS]); 2]; 2];
        // The block of outputs stored last, whose epilogue runs a few pixels after each K step
        // of the next block, on the vector units the tiles leave idle while their dot products
        // run (at the end of its block it had cost 15 % of a 64-channel layer): its pixels'
        // outputs and its bias. The next block's tiles are stored only after the last step.
        let mut pending: Option<(Destinations, *const f32)> = None;
        let store = Store {
            relu: job.relu,
            stream: job.stream,
        };
        let steps = job.taps.len() * inputs.div_ceil(CHANNELS);
        // SAFETY: the caller's contract is `configure`'s.
        let mut tiles = unsafe { T::configure() };
        // Each strip pair through all the task's outputs while its pixels are in cache.
        for (pair, first_output) in
            pairs.flat_map(|pair| outputs.clone().map(move |o| (pair, o * OUTPUTS)))
        {
            let b = [weights(first_output), weights(first_output + ROWS)];
            let bias = unsafe { layer.bias().as_ptr().add(first_output) };
            let starts = [2 * pair, (2 * pair + 1).min(last_strip)].map(|strip| ROWS * strip);
            let a = starts.map(|start| unsafe { job.input.as_ptr().add(start * job.input_pixel) });
            tiles.zero::<4>();
            tiles.zero::<5>();
            tiles.zero::<6>();
            tiles.zero::<7>();
            let mut step = 0;
            for (tap, &offset) in job.taps.iter().enumerate() {
                let weights = (tap * inputs) * block;
                for chunk in (0..inputs).step_by(CHANNELS) {
                    unsafe {
                        tiles.load::<0>(a[0].add(offset + chunk).cast(), a_stride);
                        tiles.load::<1>(a[1].add(offset + chunk).cast(), a_stride);
                        tiles.load::<2>(b[0].add(weights + chunk * block).cast(), b_stride);
                        tiles.load::<3>(b[1].add(weights + chunk * block).cast(), b_stride);
                    }
                    tiles.dot::<4, 0, 2>();
                    tiles.dot::<5, 0, 3>();
                    tiles.dot::<6, 1, 2>();
                    tiles.dot::<7, 1, 3>();
                    if let Some((destinations, bias)) = &pending {
                        let pixels = step * 2 * ROWS / steps..(step + 1) * 2 * ROWS / steps;
                        unsafe { finish(kernel, &sums, destinations, pixels, *bias, store) };
                    }
                    step += 1;
                }
            }
            let row_bytes = size_of::<[f32; ROWS]>();
            unsafe {
                tiles.store::<4>(sums[0][0].0.as_mut_ptr().cast(), row_bytes);
                tiles.store::<5>(sums[0][1].0.as_mut_ptr().cast(), row_bytes);
                tiles.store::<6>(sums[1][0].0.as_mut_ptr().cast(), row_bytes);
                tiles.store::<7>(sums[1][1].0.as_mut_ptr().cast(), row_bytes);
            }
            // Where each of the strips' pixels goes: null for a border pixel or one past the
            // line. The pixels walk the line: one division a strip, not one a pixel (which
            // cost as much as the sums at 64 input channels).
            let mut destinations = [std::ptr::null_mut(); 2 * ROWS];
            for (strip, start) in starts.into_iter().enumerate() {
                let (mut y, mut x) = (start / span, start % span);
                for destination in &mut destinations[strip * ROWS..(strip + 1) * ROWS] {
                    if y < job.rows && x < job.columns {
                        let at = y * job.output_row + x * job.output_pixel + first_output;
                        *destination = unsafe { job.output.add(at) };
                    }
                    x += 1;
                    if x == span {
                        (y, x) = (y + 1, 0);
                    }
                }
            }
            pending = Some((destinations, bias));
        }
        if let Some((destinations, bias)) = &pending {
            unsafe { finish(kernel, &sums, destinations, 0..2 * ROWS, *bias, store) };
        }
        if job.stream {
            kernel.fence_streams();
        }
    }
}

/// Each of a block's 32 pixels (strip `p / 16`, row `p % 16`): its 32 outputs' address, or
/// null where it has none.
type Destinations = [*mut bf16; 2 * ROWS];

/// How the epilogue writes: through a ReLU or not, streamed past the caches or not.
#[derive(Clone, Copy)]
struct Store {
    relu: bool,
    stream: bool,
}

/// The epilogue of a stored block's `pixels`.
///
/// # Safety
/// `bias` is readable for 32 values, and each non-null output writable for 32.
#[inline(always)]
unsafe fn finish<K: Kernel<Elem = bf16>>(
    kernel: K,
    sums: &[[Sums; 2]; 2],
    destinations: &Destinations,
    pixels: std::ops::Range<usize>,
    bias: *const f32,
    store: Store,
) {
    for p in pixels {
        let (strip, row) = (p / ROWS, p % ROWS);
        if !destinations[p].is_null() {
            let sums = [&sums[strip][0].0[row], &sums[strip][1].0[row]];
            unsafe { epilogue(kernel, sums, bias, destinations[p], store) };
        }
    }
}

/// One pixel's 32 sums plus bias, through ReLU where asked, rounded to bf16 at `output`;
/// streamed past the caches where asked ([`Kernel::stream_values`]): an output larger than
/// the caches, read whole by the next layer, gains nothing from them, and a store that misses
/// them first reads the line it writes.
///
/// # Safety
/// `bias` is readable and `output` writable for 32 values.
#[inline(always)]
unsafe fn epilogue<K: Kernel<Elem = bf16>>(
    kernel: K,
    sums: [&[f32; ROWS]; 2],
    bias: *const f32,
    output: *mut bf16,
    store: Store,
) {
    let (simd, lanes) = (kernel.simd(), K::Simd::LANES);
    for (j, sums) in sums.into_iter().enumerate() {
        for l in (0..ROWS).step_by(lanes) {
            // SAFETY: `l + lanes <= 16` (lanes divide 16) and `j * 16 + l + lanes <= 32`.
            unsafe {
                let mut value = simd.add(
                    simd.load(sums.as_ptr().add(l)),
                    simd.load(bias.add(j * ROWS + l)),
                );
                if store.relu {
                    value = simd.max(value, simd.zero());
                }
                kernel.write_values(output.add(j * ROWS + l), value, lanes, store.stream);
            }
        }
    }
}

/// The tiles in software, instruction by instruction as Intel's SDM defines them (for
/// `tdpbf16ps`: per sum, the products of each input pair added in order, one rounding each,
/// denormal inputs read as zero and denormal results flushed to zero).
pub struct Emulated(Box<[[[u8; 64]; ROWS]; 8]>);

impl Tiles for Emulated {
    unsafe fn configure() -> Emulated {
        Emulated(Box::new([[[0; 64]; ROWS]; 8]))
    }

    fn zero<const T: u8>(&mut self) {
        self.0[usize::from(T)] = [[0; 64]; ROWS];
    }

    unsafe fn load<const T: u8>(&mut self, from: *const u8, stride: usize) {
        for (r, row) in self.0[usize::from(T)].iter_mut().enumerate() {
            // SAFETY: the caller's contract: the 16 rows are readable.
            unsafe { std::ptr::copy_nonoverlapping(from.add(r * stride), row.as_mut_ptr(), 64) };
        }
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        fn flush(value: f32) -> f32 {
            if value.is_subnormal() {
                0.0f32.copysign(value)
            } else {
                value
            }
        }
        let bf16_at = |row: &[u8; 64], i: usize| {
            flush(bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32())
        };
        let (a, b) = (self.0[usize::from(A)], self.0[usize::from(B)]);
        for (m, sums) in self.0[usize::from(C)].iter_mut().enumerate() {
            for n in 0..ROWS {
                let mut sum = f32::from_le_bytes(sums[4 * n..4 * n + 4].try_into().unwrap());
                for (k, pairs) in b.iter().enumerate() {
                    for i in 0..2 {
                        sum = flush(sum + bf16_at(&a[m], 2 * k + i) * bf16_at(pairs, 2 * n + i));
                    }
                }
                sums[4 * n..4 * n + 4].copy_from_slice(&sum.to_le_bytes());
            }
        }
    }

    unsafe fn store<const T: u8>(&mut self, to: *mut u8, stride: usize) {
        for (r, row) in self.0[usize::from(T)].iter().enumerate() {
            // SAFETY: the caller's contract: the 16 rows are writable.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), to.add(r * stride), 64) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use hardware::{Hardware, usable};

#[cfg(target_arch = "x86_64")]
mod hardware {
    use std::arch::asm;
    use std::sync::OnceLock;

    use super::super::simd::Avx512Bf16;
    use super::{Tiles, agrees};

    /// The AMX instructions; exists only where [`usable`] said yes.
    pub struct Hardware(());

    /// `ldtilecfg`'s operand: palette 1, every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    // SAFETY (every `asm!` below): a `Hardware` exists only after `usable` found the CPU's
    // AMX-TILE and AMX-BF16, the kernel's permission for this process, and the tiles
    // configured on this thread (`configure`); the tile registers are used by no code but
    // these, and the memory operands are the callers' (their contracts say so).
    impl Tiles for Hardware {
        unsafe fn configure() -> Hardware {
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags))
            };
            Hardware(())
        }

        #[inline(always)]
        fn zero<const T: u8>(&mut self) {
            unsafe {
                asm!("tilezero tmm{t}", t = const T, options(nostack, nomem, preserves_flags))
            };
        }

        #[inline(always)]
        unsafe fn load<const T: u8>(&mut self, from: *const u8, stride: usize) {
            unsafe {
                asm!(
                    "tileloadd tmm{t}, [{from} + {stride} * 1]",
                    t = const T,
                    from = in(reg) from,
                    stride = in(reg) stride,
                    options(nostack, readonly, preserves_flags)
                )
            };
        }

        #[inline(always)]
        fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
            unsafe {
                asm!(
                    "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                    c = const C,
                    a = const A,
                    b = const B,
                    options(nostack, nomem, preserves_flags)
                )
            };
        }

        #[inline(always)]
        unsafe fn store<const T: u8>(&mut self, to: *mut u8, stride: usize) {
            unsafe {
                asm!(
                    "tilestored [{to} + {stride} * 1], tmm{t}",
                    t = const T,
                    to = in(reg) to,
                    stride = in(reg) stride,
                    options(nostack, preserves_flags)
                )
            };
        }
    }

    impl Drop for Hardware {
        fn drop(&mut self) {
            // SAFETY: as above; releasing the tiles lets the OS skip their state on a switch.
            unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
        }
    }

    /// Whether the AMX tiles can run the bf16 path: the CPU has them (CPUID leaf 7: AMX-TILE
    /// and AMX-BF16), Linux lets this process use their state (`arch_prctl`'s permission
    /// request: once per process, which covers every thread, as the kernel keeps the
    /// permission per process and allocates each thread's state on its first use), and a
    /// layer run on them agrees with [`Emulated`]. Asked once; where the CPU has AMX but one
    /// of the others fails, one line on stderr says why.
    pub fn usable(kernel: Avx512Bf16) -> bool {
        static USABLE: OnceLock<bool> = OnceLock::new();
        *USABLE.get_or_init(|| {
            let cpu = std::arch::x86_64::__cpuid_count(7, 0);
            let (tile, bf16) = (cpu.edx & (1 << 24) != 0, cpu.edx & (1 << 22) != 0);
            if !(tile && bf16) {
                return false;
            }
            match request_permission().and_then(|()| agrees::<_, Hardware>(kernel)) {
                Ok(()) => true,
                Err(why) => {
                    eprintln!("unet-core: not using this CPU's AMX tiles ({why}); bf16 runs on AVX-512-BF16");
                    false
                }
            }
        })
    }

    #[cfg(target_os = "linux")]
    fn request_permission() -> Result<(), String> {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: this request only changes which XSAVE state this process may use.
        let result = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            let error = std::io::Error::last_os_error();
            Err(format!(
                "Linux refused the tile state: {error}; Linux 5.16 or later grants it"
            ))
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_permission() -> Result<(), String> {
        Err("the tiles are enabled here on Linux only".to_string())
    }
}

/// A 64 -> 32 layer over a line that crosses rows, on tiles `T` and on the emulation: the
/// same sums in any order of addition round to the same bf16 or a neighbour.
fn agrees<K: Kernel<Elem = bf16>, T: Tiles>(kernel: K) -> Result<(), String> {
    let sample = Sample::new(64, 32, (3, 20), block_of(kernel));
    // SAFETY: `T`'s tiles exist (the caller's word); the sample's jobs fit the tiles.
    let tiles = sample.output(|job| unsafe { run::<_, T>(kernel, &[job]) });
    let emulated = sample.output(|job| unsafe { run::<_, Emulated>(kernel, &[job]) });
    let agree = tiles.iter().zip(&emulated).all(|(t, e)| {
        let (t, e) = (t.to_f32(), e.to_f32());
        (t - e).abs() <= (t.abs().max(e.abs()) / 64.0).max(1e-6)
    });
    if !agree {
        Err("their sums differ from the instructions' definition".to_string())
    } else {
        Ok(())
    }
}

/// A layer with pseudo-random weights over a padded image of pseudo-random values, as the
/// CPU path lays them out: what the self-check and the tests run the tiles on.
pub struct Sample {
    layer: Packed<bf16>,
    input: Aligned<bf16>,
    /// Padded rows and columns.
    size: (usize, usize),
}

impl Sample {
    /// `inputs -> outputs` channels, 3x3 taps, over `rows x columns` pixels, weights packed
    /// `block` outputs at a time.
    pub fn new(
        inputs: usize,
        outputs: usize,
        (rows, columns): (usize, usize),
        block: usize,
    ) -> Sample {
        let bias: Vec<f32> = (0..outputs).map(Sample::bias).collect();
        let layer = Packed::new(9, (inputs, outputs), (block, 2), Sample::weight, &bias);
        let size = (rows + 2, columns + 2);
        // As `Padded`: 16 spare pixels past the last row.
        let mut input = Aligned::filled((size.0 * size.1 + ROWS) * inputs, bf16::ZERO);
        for (i, value) in input.iter_mut().enumerate() {
            *value = bf16::from_f32(Sample::value(i));
        }
        Sample { layer, input, size }
    }

    fn value(i: usize) -> f32 {
        ((i * 7919 + 13) % 251) as f32 / 125.0 - 1.0
    }

    fn weight(tap: usize, input: usize, output: usize) -> f32 {
        Sample::value(tap * 1009 + input * 101 + output) / 8.0
    }

    fn bias(output: usize) -> f32 {
        Sample::value(output * 31) / 4.0
    }

    /// The layer's output (interior pixels, with ReLU) as `run_job` leaves it.
    pub fn output(&self, run_job: impl Fn(Job<bf16>)) -> Vec<bf16> {
        let (rows, columns) = self.size;
        let (pixel, outputs) = (self.layer.inputs, self.layer.outputs);
        let taps: Vec<usize> = (0..9)
            .map(|tap| (tap / 3) * columns * pixel + (tap % 3) * pixel)
            .collect();
        // On a cache line, as the activations: the aligned streaming stores run.
        let mut output = Aligned::filled((rows - 2) * (columns - 2) * outputs, bf16::NAN);
        let job = Job {
            layer: &self.layer,
            rows: rows - 2,
            columns: columns - 2,
            input: &self.input,
            input_row: columns * pixel,
            input_pixel: pixel,
            taps: &taps,
            output: output.as_mut_ptr(),
            output_len: output.len(),
            output_row: (columns - 2) * outputs,
            output_pixel: outputs,
            relu: true,
            stream: false,
        };
        run_job(job);
        output.to_vec()
    }

    /// The same output summed in f64 from the stored (bf16) values, unrounded.
    #[cfg(test)]
    fn reference(&self) -> Vec<f32> {
        let (rows, columns) = self.size;
        let (inputs, outputs) = (self.layer.inputs, self.layer.outputs);
        let mut output = Vec::new();
        for y in 0..rows - 2 {
            for x in 0..columns - 2 {
                for o in 0..outputs {
                    let mut sum = f64::from(Sample::bias(o));
                    for tap in 0..9 {
                        let pixel = (y + tap / 3) * columns + x + tap % 3;
                        for c in 0..inputs {
                            let weight = bf16::from_f32(Sample::weight(tap, c, o));
                            let value = self.input[pixel * inputs + c];
                            sum += f64::from(weight.to_f32()) * f64::from(value.to_f32());
                        }
                    }
                    output.push(sum.max(0.0) as f32);
                }
            }
        }
        output
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::super::conv::Job;
    use super::super::simd::{Kernel, PortableBf16};
    use super::{Emulated, OUTPUTS, Sample, Tiles, agrees, fits, output_pairs_per_task, run};

    /// The kernel on emulated tiles against the layer summed in f64: lines that cross rows, a
    /// last strip that overlaps the one before, an odd number of strips, several output
    /// pairs, weights packed 16 and 64 outputs a block (the portable and the AVX-512 kernel's
    /// layouts), and a layer whose output pairs take more than one task, the last one fewer.
    #[test]
    fn tiles_compute_the_convolution() {
        let cases = [
            (32, 32, (1, 16), 16),
            (64, 96, (3, 20), 16),
            (96, 64, (5, 7), 64),
            (32, 128, (2, 37), 64),
            (640, 96, (2, 9), 64),
        ];
        assert!(cases.iter().any(|&(inputs, outputs, ..)| {
            let pairs = outputs / OUTPUTS;
            let per_task = output_pairs_per_task(9, inputs, pairs);
            per_task > 1 && !pairs.is_multiple_of(per_task)
        }));
        for (inputs, outputs, size, block) in cases {
            let sample = Sample::new(inputs, outputs, size, block);
            let tiles = sample.output(|job| {
                assert!(fits(&job));
                unsafe { run::<_, Emulated>(PortableBf16, &[job]) }
            });
            let worst = tiles
                .iter()
                .zip(sample.reference())
                .map(|(t, r)| {
                    let t = t.to_f32();
                    assert!(t.is_finite(), "a pixel left unwritten");
                    (t - r).abs() / r.abs().max(1.0)
                })
                .fold(0.0f32, f32::max);
            println!("{inputs} -> {outputs} over {size:?}, block {block}: {worst:.2e}");
            // f32 sums rounded to bf16 once: half a bf16 step (2^-8 of a value just above a
            // power of two) and the sums' own error.
            assert!(
                worst <= 4e-3,
                "{inputs} -> {outputs} over {size:?}: {worst}"
            );
        }
    }

    /// Outputs streamed past the caches are the values stored through them, on every kernel
    /// and tiles this CPU has (AVX-512-BF16's streaming stores are non-temporal, the portable
    /// kernel's plain).
    #[test]
    fn streamed_outputs_are_the_stored_ones() {
        fn check<K: Kernel<Elem = bf16>, T: Tiles>(kernel: K, name: &str) {
            let sample = Sample::new(64, 96, (3, 20), super::super::conv::block_of(kernel));
            let [stored, streamed] = [false, true].map(|stream| {
                sample.output(|job| unsafe { run::<_, T>(kernel, &[Job { stream, ..job }]) })
            });
            assert!(stored.iter().all(|value| value.is_finite()), "{name}");
            let bits = |values: &[bf16]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&streamed), bits(&stored), "{name}");
        }
        check::<_, Emulated>(PortableBf16, "portable on emulated tiles");
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = super::super::simd::Avx512Bf16::detect() {
            check::<_, Emulated>(kernel, "avx512-bf16 on emulated tiles");
            if super::usable(kernel) {
                check::<_, super::Hardware>(kernel, "avx512-bf16 on the tiles");
            }
        }
    }

    /// The check that stands between the AMX instructions and a model, run with emulated
    /// tiles in their place.
    #[test]
    fn the_self_check_passes_on_the_emulation() {
        assert_eq!(agrees::<_, Emulated>(PortableBf16), Ok(()));
    }
}
