//! The vector operations the convolution kernel needs, for each instruction set it runs on:
//! AVX-512 (16 lanes), AVX2 with FMA (8 lanes), and plain Rust arrays elsewhere (which the
//! compiler vectorises for the target, e.g. NEON).
//!
//! Each implementation also fixes the kernel's register blocking: `PIXELS` output pixels by
//! `VECTORS` vectors of output channels stay in registers (AVX-512: 6 x 4 = 24 of its 32
//! registers, leaving room for the 4 weight vectors and a broadcast).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Work that runs compiled for the instruction set it is given: a kernel's intrinsics
/// inline only into a function built with their target feature, so each instruction set
/// gets its own copy of the work (`run` is `#[inline(always)]` in every implementation).
pub trait Compiled {
    /// # Safety
    /// As the work's own contract.
    unsafe fn run<S: Simd>(self, simd: S);
}

pub trait Simd: Copy + Send + Sync {
    /// f32 lanes in a vector.
    const LANES: usize;
    /// Output pixels a kernel call holds in registers.
    const PIXELS: usize;
    /// Vectors of output channels a kernel call holds in registers.
    const VECTORS: usize;
    type V: Copy;

    /// Runs `work` compiled for this instruction set.
    ///
    /// # Safety
    /// As `work`'s.
    unsafe fn compiled<W: Compiled>(self, work: W);

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

    unsafe fn compiled<W: Compiled>(self, work: W) {
        #[target_feature(enable = "avx512f")]
        unsafe fn with_avx512<W: Compiled>(simd: Avx512, work: W) {
            unsafe { work.run(simd) }
        }
        unsafe { with_avx512(self, work) }
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

    unsafe fn compiled<W: Compiled>(self, work: W) {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_avx2<W: Compiled>(simd: Avx2, work: W) {
            unsafe { work.run(simd) }
        }
        unsafe { with_avx2(self, work) }
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

    unsafe fn compiled<W: Compiled>(self, work: W) {
        unsafe { work.run(self) }
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
        // Not `f32::mul_add`: without an FMA unit that is a libm call per lane.
        std::array::from_fn(|i| a[i] * b[i] + c[i])
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
}
