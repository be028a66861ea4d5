//! The vector operations the convolution kernel needs, for each instruction set it runs on.
//!
//! [`Simd`]: f32 vectors on AVX-512 (16 lanes), AVX2 with FMA (8 lanes), and plain Rust
//! arrays elsewhere (which the compiler vectorises for the target, e.g. NEON). Each also fixes
//! the kernel's register blocking: `PIXELS` output pixels by `VECTORS` vectors of output
//! channels stay in registers (AVX-512: 6 x 4 = 24 of its 32 registers, leaving room for the
//! 4 weight vectors and a broadcast).
//!
//! [`Kernel`]: what the stored weights and activations are ([`Element`]: f32 or bf16) and how
//! they are multiplied into f32 sums: [`F32`] on any [`Simd`] (one FMA per input channel),
//! [`Avx512Bf16`] (`vdpbf16ps`: the products of a pair of input channels per lane, twice the
//! multiply-adds of an FMA per instruction) and [`PortableBf16`] (the same arithmetic in
//! plain arrays, for CPUs without it: the reference the tests hold the fast one to).

use std::cell::RefCell;
use std::thread::LocalKey;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use half::bf16;

/// Work that runs compiled for the instruction set it is given: a kernel's intrinsics
/// inline only into a function built with their target feature, so each instruction set
/// gets its own copy of the work (`run` is `#[inline(always)]` in every implementation).
pub trait Compiled {
    /// What the work's data is stored as.
    type Elem: Element;
    /// # Safety
    /// As the work's own contract.
    unsafe fn run<K: Kernel<Elem = Self::Elem>>(self, kernel: K);
}

/// What weights and activations are stored as. Sums are always f32.
pub trait Element: bytemuck::Pod + Default + Send + Sync + 'static {
    /// Rounded to nearest, ties to even.
    fn from_f32(value: f32) -> Self;
    /// The value's bits as a signed integer. Their order is the values' order over what a ReLU
    /// leaves (non-negative values, and -0 below them), so a max over ReLU'd values runs on
    /// integers, which every instruction set compares lane by lane.
    type Ordered: bytemuck::Pod + Ord + Send + Sync;
    /// The value as f32 (exact).
    #[cfg(test)]
    fn to_f32(self) -> f32;
    /// Each thread's scratch buffers of this type, kept from task to task (a thread-local
    /// cannot be generic, so each type names its own).
    fn scratch() -> &'static LocalKey<Scratch<Self>>;
}

pub type Scratch<E> = RefCell<[Vec<E>; 2]>;

impl Element for f32 {
    type Ordered = i32;
    fn from_f32(value: f32) -> f32 {
        value
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        self
    }
    fn scratch() -> &'static LocalKey<Scratch<f32>> {
        thread_local!(static SCRATCH: Scratch<f32> = const { RefCell::new([Vec::new(), Vec::new()]) });
        &SCRATCH
    }
}

impl Element for bf16 {
    type Ordered = i16;
    fn from_f32(value: f32) -> bf16 {
        bf16::from_f32(value)
    }
    #[cfg(test)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn scratch() -> &'static LocalKey<Scratch<bf16>> {
        thread_local!(static SCRATCH: Scratch<bf16> = const { RefCell::new([Vec::new(), Vec::new()]) });
        &SCRATCH
    }
}

/// How a convolution multiplies stored weights and activations into f32 sums on one
/// instruction set.
pub trait Kernel: Copy + Send + Sync {
    /// The f32 vectors the sums live in.
    type Simd: Simd;
    type Elem: Element;
    /// Input channels each multiply-add takes per lane.
    const GROUP: usize;
    /// `GROUP` stored values per f32 lane.
    type Group: Copy;

    fn simd(self) -> Self::Simd;

    /// Runs `work` compiled for this instruction set.
    ///
    /// # Safety
    /// As `work`'s.
    unsafe fn compiled<W: Compiled<Elem = Self::Elem>>(self, work: W);

    /// `LANES x GROUP` values: lane `j` takes values `j * GROUP..(j + 1) * GROUP`.
    /// # Safety
    /// `ptr` is valid for `LANES * GROUP` reads.
    unsafe fn load_group(self, ptr: *const Self::Elem) -> Self::Group;
    /// The `GROUP` values at `ptr`, in every lane.
    /// # Safety
    /// `ptr` is valid for `GROUP` reads.
    unsafe fn splat_group(self, ptr: *const Self::Elem) -> Self::Group;
    /// Per lane: `sum + x · w` over the lane's group.
    fn dot_add(self, x: Self::Group, w: Self::Group, sum: Lanes<Self>) -> Lanes<Self>;
    /// The first `count` values from `ptr` as f32, zeros after.
    /// # Safety
    /// `ptr` is valid for `count` reads.
    unsafe fn load_values(self, ptr: *const Self::Elem, count: usize) -> Lanes<Self>;
    /// The first `count` lanes, rounded to the element type.
    /// # Safety
    /// `ptr` is valid for `count` writes.
    unsafe fn store_values(self, ptr: *mut Self::Elem, v: Lanes<Self>, count: usize);
    /// Every lane, rounded to the element type, written past the caches (a non-temporal store)
    /// where the kernel has such a store and `ptr` is aligned for it, else as `store_values`.
    /// For outputs larger than the caches: a store that misses reads the line from memory
    /// before writing it, a streamed one does not. Before another thread reads what this one
    /// streamed, this one calls [`Kernel::fence_streams`].
    /// # Safety
    /// `ptr` is valid for `LANES` writes.
    #[inline(always)]
    unsafe fn stream_values(self, ptr: *mut Self::Elem, v: Lanes<Self>) {
        unsafe { self.store_values(ptr, v, Self::Simd::LANES) }
    }
    /// The first `count` lanes, streamed where `stream` asks and they are every lane
    /// ([`Kernel::stream_values`]), else stored.
    /// # Safety
    /// `ptr` is valid for `count` writes.
    #[inline(always)]
    unsafe fn write_values(self, ptr: *mut Self::Elem, v: Lanes<Self>, count: usize, stream: bool) {
        unsafe {
            if stream && count == Self::Simd::LANES {
                self.stream_values(ptr, v)
            } else {
                self.store_values(ptr, v, count)
            }
        }
    }
    /// Orders the streamed stores before every later store of this thread (`sfence`): those
    /// that tell other threads the work is done.
    #[inline(always)]
    fn fence_streams(self) {
        self.simd().fence_streams()
    }
}

/// A kernel's f32 vector.
pub type Lanes<K> = <<K as Kernel>::Simd as Simd>::V;

/// f32 weights and activations on any [`Simd`].
#[derive(Clone, Copy)]
pub struct F32<S>(pub S);

impl<S: Simd> Kernel for F32<S> {
    type Simd = S;
    type Elem = f32;
    const GROUP: usize = 1;
    type Group = S::V;

    #[inline(always)]
    fn simd(self) -> S {
        self.0
    }
    unsafe fn compiled<W: Compiled<Elem = Self::Elem>>(self, work: W) {
        unsafe { self.0.compiled(self, work) }
    }
    #[inline(always)]
    unsafe fn load_group(self, ptr: *const f32) -> S::V {
        unsafe { self.0.load(ptr) }
    }
    #[inline(always)]
    unsafe fn splat_group(self, ptr: *const f32) -> S::V {
        self.0.splat(unsafe { *ptr })
    }
    #[inline(always)]
    fn dot_add(self, x: S::V, w: S::V, sum: S::V) -> S::V {
        self.0.mul_add(x, w, sum)
    }
    #[inline(always)]
    unsafe fn load_values(self, ptr: *const f32, count: usize) -> S::V {
        unsafe { self.0.load_first(ptr, count) }
    }
    #[inline(always)]
    unsafe fn store_values(self, ptr: *mut f32, v: S::V, count: usize) {
        unsafe { self.0.store_first(ptr, v, count) }
    }
    #[inline(always)]
    unsafe fn stream_values(self, ptr: *mut f32, v: S::V) {
        unsafe { self.0.stream(ptr, v) }
    }
}

/// bf16 on AVX-512-BF16 (with AVX-512BW/VL for 16-bit masked loads and stores); only
/// constructed after the CPU was seen to have them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx512Bf16(Avx512);

#[cfg(target_arch = "x86_64")]
impl Avx512Bf16 {
    pub fn detect() -> Option<Avx512Bf16> {
        let bf16 = is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        Avx512::detect().filter(|_| bf16).map(Avx512Bf16)
    }

    /// Whether `vdpbf16ps` issues as often as `vfmadd231ps`, and so does twice its
    /// multiply-adds: on AMD's CPUs (Zen 4 runs both on its two 256-bit halves), not on
    /// Intel's, which issue it on one of the FMA's two ports (0.61x the FMA's multiply-adds,
    /// measured on Emerald Rapids). The vendor from CPUID leaf 0.
    pub fn dot_product_at_fma_rate(self) -> bool {
        let vendor = std::arch::x86_64::__cpuid(0);
        let amd = [*b"Auth", *b"enti", *b"cAMD"].map(u32::from_le_bytes);
        [vendor.ebx, vendor.edx, vendor.ecx] == amd
    }
}

// SAFETY (all `unsafe` blocks below): an `Avx512Bf16` exists only where the CPU has the
// features `compiled` enables, and the callers run inside that function; the transmutes are
// between vector types of one size (bf16 vectors are 16-bit lanes of the same registers).
#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512Bf16 {
    type Simd = Avx512;
    type Elem = bf16;
    const GROUP: usize = 2;
    type Group = __m512bh;

    #[inline(always)]
    fn simd(self) -> Avx512 {
        self.0
    }
    unsafe fn compiled<W: Compiled<Elem = Self::Elem>>(self, work: W) {
        #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
        unsafe fn with_avx512_bf16<W: Compiled<Elem = bf16>>(kernel: Avx512Bf16, work: W) {
            unsafe { work.run(kernel) }
        }
        unsafe { with_avx512_bf16(self, work) }
    }
    #[inline(always)]
    unsafe fn load_group(self, ptr: *const bf16) -> __m512bh {
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(ptr.cast())) }
    }
    #[inline(always)]
    unsafe fn splat_group(self, ptr: *const bf16) -> __m512bh {
        unsafe {
            let pair = _mm512_set1_epi32(ptr.cast::<i32>().read_unaligned());
            std::mem::transmute::<__m512i, __m512bh>(pair)
        }
    }
    #[inline(always)]
    fn dot_add(self, x: __m512bh, w: __m512bh, sum: __m512) -> __m512 {
        unsafe { _mm512_dpbf16_ps(sum, x, w) }
    }
    #[inline(always)]
    unsafe fn load_values(self, ptr: *const bf16, count: usize) -> __m512 {
        unsafe {
            let bits = _mm256_maskz_loadu_epi16(first_lanes(count), ptr.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        }
    }
    #[inline(always)]
    unsafe fn store_values(self, ptr: *mut bf16, v: __m512, count: usize) {
        unsafe {
            let bits = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            _mm256_mask_storeu_epi16(ptr.cast(), first_lanes(count), bits)
        }
    }
    #[inline(always)]
    unsafe fn stream_values(self, ptr: *mut bf16, v: __m512) {
        unsafe {
            let bits = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
            if (ptr as usize).is_multiple_of(size_of::<__m256i>()) {
                _mm256_stream_si256(ptr.cast(), bits)
            } else {
                _mm256_storeu_si256(ptr.cast(), bits)
            }
        }
    }
}

/// bf16 in plain arrays, the arithmetic of [`Avx512Bf16`] on any CPU: each pair's products
/// are exact in f32 and added to the sum in order.
#[derive(Clone, Copy)]
pub struct PortableBf16;

impl Kernel for PortableBf16 {
    type Simd = Portable;
    type Elem = bf16;
    const GROUP: usize = 2;
    type Group = [[f32; 2]; 8];

    #[inline(always)]
    fn simd(self) -> Portable {
        Portable
    }
    unsafe fn compiled<W: Compiled<Elem = Self::Elem>>(self, work: W) {
        unsafe { work.run(self) }
    }
    #[inline(always)]
    unsafe fn load_group(self, ptr: *const bf16) -> [[f32; 2]; 8] {
        let values = unsafe { ptr.cast::<[[bf16; 2]; 8]>().read_unaligned() };
        values.map(|pair| pair.map(bf16::to_f32))
    }
    #[inline(always)]
    unsafe fn splat_group(self, ptr: *const bf16) -> [[f32; 2]; 8] {
        let pair = unsafe { ptr.cast::<[bf16; 2]>().read_unaligned() };
        [pair.map(bf16::to_f32); 8]
    }
    #[inline(always)]
    fn dot_add(self, x: [[f32; 2]; 8], w: [[f32; 2]; 8], sum: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| sum[i] + x[i][0] * w[i][0] + x[i][1] * w[i][1])
    }
    #[inline(always)]
    unsafe fn load_values(self, ptr: *const bf16, count: usize) -> [f32; 8] {
        std::array::from_fn(|i| {
            if i < count {
                unsafe { *ptr.add(i) }.to_f32()
            } else {
                0.0
            }
        })
    }
    #[inline(always)]
    unsafe fn store_values(self, ptr: *mut bf16, v: [f32; 8], count: usize) {
        for (i, &value) in v.iter().enumerate().take(count) {
            unsafe { *ptr.add(i) = bf16::from_f32(value) };
        }
    }
}

pub trait Simd: Copy + Send + Sync {
    /// f32 lanes in a vector.
    const LANES: usize;
    /// Output pixels a kernel call holds in registers.
    const PIXELS: usize;
    /// Vectors of output channels a kernel call holds in registers.
    const VECTORS: usize;
    type V: Copy;

    /// Runs `work` for `kernel` compiled for this instruction set.
    ///
    /// # Safety
    /// As `work`'s.
    unsafe fn compiled<K: Kernel, W: Compiled<Elem = K::Elem>>(self, kernel: K, work: W);

    fn zero(self) -> Self::V;
    /// # Safety
    /// `ptr` is valid for `LANES` reads.
    unsafe fn load(self, ptr: *const f32) -> Self::V;
    /// The first `count` lanes from `ptr`, zeros after.
    /// # Safety
    /// `ptr` is valid for `count` reads.
    unsafe fn load_first(self, ptr: *const f32, count: usize) -> Self::V;
    /// # Safety
    /// `ptr` is valid for `count` writes.
    unsafe fn store_first(self, ptr: *mut f32, v: Self::V, count: usize);
    fn splat(self, value: f32) -> Self::V;
    /// `a * b + c`
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane `i`: the sum of `v[i]`'s lanes, for `LANES` vectors `v` (a transpose and add,
    /// not one horizontal sum a vector).
    fn sum_each(self, v: &[Self::V]) -> Self::V;
    /// All lanes to `ptr` past the caches (a non-temporal store) where `ptr` is aligned for
    /// one, else stored: see [`Kernel::stream_values`].
    /// # Safety
    /// `ptr` is valid for `LANES` writes.
    unsafe fn stream(self, ptr: *mut f32, v: Self::V);
    /// Orders this thread's streamed stores before its later stores (`sfence`).
    fn fence_streams(self);
}

/// AVX-512F; only constructed after the CPU was seen to have it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    pub fn detect() -> Option<Avx512> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

// SAFETY (all `unsafe` blocks below): an `Avx512` exists only where the CPU has AVX-512F, and
// the callers run inside a function compiled with it enabled.
#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const LANES: usize = 16;
    const PIXELS: usize = 6;
    const VECTORS: usize = 4;
    type V = __m512;

    unsafe fn compiled<K: Kernel, W: Compiled<Elem = K::Elem>>(self, kernel: K, work: W) {
        #[target_feature(enable = "avx512f")]
        unsafe fn with_avx512<K: Kernel, W: Compiled<Elem = K::Elem>>(kernel: K, work: W) {
            unsafe { work.run(kernel) }
        }
        unsafe { with_avx512(kernel, work) }
    }

    #[inline(always)]
    fn zero(self) -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(self, ptr: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(ptr) }
    }
    #[inline(always)]
    unsafe fn load_first(self, ptr: *const f32, count: usize) -> __m512 {
        unsafe { _mm512_maskz_loadu_ps(first_lanes(count), ptr) }
    }
    #[inline(always)]
    unsafe fn store_first(self, ptr: *mut f32, v: __m512, count: usize) {
        unsafe { _mm512_mask_storeu_ps(ptr, first_lanes(count), v) }
    }
    #[inline(always)]
    fn splat(self, value: f32) -> __m512 {
        unsafe { _mm512_set1_ps(value) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn sum_each(self, v: &[__m512]) -> __m512 {
        let v: &[__m512; 16] = v.try_into().expect("16 vectors");
        unsafe {
            // Vectors 2k and 2k + 1, their lanes interleaved and added: each 128-bit block
            // holds two sums of each.
            let pairs: [__m512; 8] = std::array::from_fn(|k| {
                let (a, b) = (v[2 * k], v[2 * k + 1]);
                _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
            });
            // Vectors 4k..4k + 4: each block holds one sum of each, in order.
            let fours: [__m512; 4] = std::array::from_fn(|k| {
                let (a, b) = (
                    _mm512_castps_pd(pairs[2 * k]),
                    _mm512_castps_pd(pairs[2 * k + 1]),
                );
                _mm512_add_ps(
                    _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
                )
            });
            // The four blocks of each added: block k of the result is vectors 4k..4k + 4.
            let add_block_pairs = |a: __m512, b: __m512| {
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                )
            };
            let low = add_block_pairs(fours[0], fours[1]);
            let high = add_block_pairs(fours[2], fours[3]);
            add_block_pairs(low, high)
        }
    }
    #[inline(always)]
    unsafe fn stream(self, ptr: *mut f32, v: __m512) {
        unsafe {
            if (ptr as usize).is_multiple_of(size_of::<__m512>()) {
                _mm512_stream_ps(ptr, v)
            } else {
                _mm512_storeu_ps(ptr, v)
            }
        }
    }
    #[inline(always)]
    fn fence_streams(self) {
        unsafe { _mm_sfence() }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_lanes(count: usize) -> __mmask16 {
    (((1u32 << count) - 1) & 0xffff) as __mmask16
}

/// AVX2 with FMA; only constructed after the CPU was seen to have both.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    pub fn detect() -> Option<Avx2> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

// SAFETY: as for `Avx512`, with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const LANES: usize = 8;
    const PIXELS: usize = 6;
    const VECTORS: usize = 2;
    type V = __m256;

    unsafe fn compiled<K: Kernel, W: Compiled<Elem = K::Elem>>(self, kernel: K, work: W) {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_avx2<K: Kernel, W: Compiled<Elem = K::Elem>>(kernel: K, work: W) {
            unsafe { work.run(kernel) }
        }
        unsafe { with_avx2(kernel, work) }
    }

    #[inline(always)]
    fn zero(self) -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(self, ptr: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(ptr) }
    }
    #[inline(always)]
    unsafe fn load_first(self, ptr: *const f32, count: usize) -> __m256 {
        unsafe { _mm256_maskload_ps(ptr, avx2_mask(count)) }
    }
    #[inline(always)]
    unsafe fn store_first(self, ptr: *mut f32, v: __m256, count: usize) {
        unsafe { _mm256_maskstore_ps(ptr, avx2_mask(count), v) }
    }
    #[inline(always)]
    fn splat(self, value: f32) -> __m256 {
        unsafe { _mm256_set1_ps(value) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn sum_each(self, v: &[__m256]) -> __m256 {
        let v: &[__m256; 8] = v.try_into().expect("8 vectors");
        unsafe {
            // Per 128-bit half: each of the four vectors' four lanes there, summed.
            let fours = |v: &[__m256]| {
                _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]))
            };
            let (low, high) = (fours(&v[..4]), fours(&v[4..]));
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(low, high),
                _mm256_permute2f128_ps::<0x31>(low, high),
            )
        }
    }
    #[inline(always)]
    unsafe fn stream(self, ptr: *mut f32, v: __m256) {
        unsafe {
            if (ptr as usize).is_multiple_of(size_of::<__m256>()) {
                _mm256_stream_ps(ptr, v)
            } else {
                _mm256_storeu_ps(ptr, v)
            }
        }
    }
    #[inline(always)]
    fn fence_streams(self) {
        unsafe { _mm_sfence() }
    }
}

/// Lanes `0..count` set (all bits), the rest clear: AVX2's mask for masked loads and stores.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn avx2_mask(count: usize) -> __m256i {
    let lane = |i: i32| if (i as usize) < count { -1 } else { 0 };
    unsafe {
        _mm256_setr_epi32(
            lane(0),
            lane(1),
            lane(2),
            lane(3),
            lane(4),
            lane(5),
            lane(6),
            lane(7),
        )
    }
}

/// Plain arrays: any CPU.
#[derive(Clone, Copy)]
pub struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    const PIXELS: usize = 4;
    const VECTORS: usize = 2;
    type V = [f32; 8];

    unsafe fn compiled<K: Kernel, W: Compiled<Elem = K::Elem>>(self, kernel: K, work: W) {
        unsafe { work.run(kernel) }
    }

    #[inline(always)]
    fn zero(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn load(self, ptr: *const f32) -> [f32; 8] {
        unsafe { ptr.cast::<[f32; 8]>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn load_first(self, ptr: *const f32, count: usize) -> [f32; 8] {
        let mut v = [0.0; 8];
        unsafe { std::ptr::copy_nonoverlapping(ptr, v.as_mut_ptr(), count) };
        v
    }
    #[inline(always)]
    unsafe fn store_first(self, ptr: *mut f32, v: [f32; 8], count: usize) {
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), ptr, count) };
    }
    #[inline(always)]
    fn splat(self, value: f32) -> [f32; 8] {
        [value; 8]
    }
    #[inline(always)]
    fn mul_add(self, a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        // One fused multiply-add a lane where the target has the instruction (every aarch64
        // CPU: NEON's `fmla`, which Rust does not make of a multiply and an add on its own);
        // elsewhere `f32::mul_add` would be a libm call per lane.
        if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
            std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
        } else {
            std::array::from_fn(|i| a[i] * b[i] + c[i])
        }
    }
    #[inline(always)]
    fn max(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    fn add(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn sum_each(self, v: &[[f32; 8]]) -> [f32; 8] {
        let v: &[[f32; 8]; 8] = v.try_into().expect("8 vectors");
        v.map(|v| v.iter().sum())
    }
    /// A plain store: portable Rust has no non-temporal one.
    #[inline(always)]
    unsafe fn stream(self, ptr: *mut f32, v: [f32; 8]) {
        unsafe { ptr.cast::<[f32; 8]>().write_unaligned(v) }
    }
    #[inline(always)]
    fn fence_streams(self) {}
}
