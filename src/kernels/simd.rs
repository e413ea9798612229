//! Which vector path the hand-written CPU kernels take, and the vector helpers they share.
//! Each kernel has a portable path and an AVX2 one doing the same operations (same bits,
//! tested), some an AVX-512 one besides, picked at run time so one binary runs on any x86-64.
//!
//! This file is the only place the kernels read the CPU's features ([`avx2_fma`], [`avx512f`],
//! [`avx512_bf16`], [`amx_bf16`], [`Kernel::detect`]); every other kernel asks here.

/// Whether the CPU has AVX2 and FMA, what every 256-bit kernel here needs.
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has F16C (Q4_1's f16 scales).
#[cfg(target_arch = "x86_64")]
fn f16c() -> bool {
    is_x86_feature_detected!("f16c")
}

/// Whether the CPU has AVX-512F (where the training GEMM leaves the work to the `gemm` crate,
/// see `sgemm::own_kernel`).
pub fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX512-BF16 (`vdpbf16ps`, the bf16 decoding kernel's fast path) and this
/// build has that path (rustc ≥ 1.89, `cotlab_avx512` from build.rs).
#[allow(clippy::incompatible_msrv)] // Gated on rustc ≥ 1.89 by `cotlab_avx512`.
pub fn avx512_bf16() -> bool {
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(all(target_arch = "x86_64", cotlab_avx512)))]
    false
}

/// Whether the CPU has AMX-BF16 (`tdpbf16ps`, the bf16 training GEMM's fast path) and Linux
/// grants this process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, asked once:
/// without that grant the first tile instruction kills the process).
pub fn amx_bf16() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GRANTED.get_or_init(|| {
            // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            // SAFETY: leaf 7 exists on every x86-64 CPU that could have AMX; others return zeros.
            // (A safe function since rustc 1.87; unsafe before.)
            #[allow(unused_unsafe)]
            let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain syscall with integer arguments.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Runs `run(lo, hi)` over `parts` contiguous ranges that cover `0..len`, each starting on a
/// multiple of `unit` (the last may end short), on rayon's threads when there is more than one:
/// how the GEMMs split their output between threads.
pub(crate) fn for_each_part(len: usize, unit: usize, parts: usize, run: impl Fn(usize, usize) + Sync) {
    let tiles = len.div_ceil(unit);
    if tiles == 0 {
        return;
    }
    let parts = parts.clamp(1, tiles);
    let part = |p: usize| run(tiles * p / parts * unit, (tiles * (p + 1) / parts * unit).min(len));
    if parts == 1 {
        part(0);
    } else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(part);
    }
}

/// The output pointer shared by the tasks of one pass; each writes only its own part.
pub(crate) struct SharedOut<T = f32>(pub(crate) *mut T);
unsafe impl<T> Sync for SharedOut<T> {}
unsafe impl<T> Send for SharedOut<T> {}
impl<T> SharedOut<T> {
    pub(crate) unsafe fn write(&self, i: usize, v: T) {
        *self.0.add(i) = v;
    }
}

/// Asks for the cache lines of the `len` bytes at `p` ahead of their use (a hint: it never
/// faults, whatever the address).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..len).step_by(64) {
        // SAFETY: a prefetch never faults.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(i) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// `len` f32 for an output every element of which the caller writes before anything reads it
/// (a GEMM with `accumulate: false`, an element-wise pass over all of it, a decoding matmul's
/// rows): zeroing them first was a pass over each output (the logits' gradient alone: tokens ×
/// vocabulary; a decoding step's logits: rows × vocabulary) for nothing.
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns, and every caller overwrites all `len` values
    // before the vector is read or handed on (see each call).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}

/// 64-byte aligned scratch of `T` for a GEMM's packed panels, kept per thread across products
/// (grown, never shrunk).
pub(crate) struct Scratch<T>(pub(crate) Vec<T>);

impl<T: Copy + Default> Scratch<T> {
    /// `len` elements starting on a 64-byte boundary.
    pub(crate) fn get(&mut self, len: usize) -> *mut T {
        let pad = 64 / std::mem::size_of::<T>();
        if self.0.len() < len + pad {
            self.0 = vec![T::default(); len + pad];
        }
        let p = self.0.as_mut_ptr();
        // SAFETY: fewer than `pad` elements in, with `len` more behind it.
        unsafe { p.add(p.align_offset(64)) }
    }
}

/// The vector path of the f32 kernels. Each wider path does the narrower one's operations, lane
/// for lane (same bits, tested): AVX-512 puts two 8-lane groups (two weight rows) in one
/// register, it does not split one dot product over 16 lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    /// AVX2 + FMA (+ F16C for Q4_1's f16 scales, which every AVX2 CPU has; checked all the same).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`Kernel::Avx2`]'s features and AVX-512F, in a build with the AVX-512 intrinsics (rustc ≥
    /// 1.89, `cotlab_avx512` from build.rs). Kernels without a 512-bit body take the AVX2 one.
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    Avx512,
}

impl Kernel {
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() && f16c() {
            #[cfg(cotlab_avx512)]
            if avx512f() {
                return Kernel::Avx512;
            }
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Whether this path may run the AVX2 bodies (every vector path can).
    pub(crate) fn avx2(self) -> bool {
        self != Kernel::Portable
    }
}

/// The sum of 8 lanes in the AVX2 path's order: (l0+l4, l1+l5, l2+l6, l3+l7), then pairs,
/// then the two. Every 8-lane dot product of the kernels ends with it.
pub(crate) fn reduce8(l: &[f32; 8]) -> f32 {
    let (a, b, c, d) = (l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]);
    (a + c) + (b + d)
}

/// [`reduce8`] of a vector register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn reduce_avx2(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// e^x on 8 lanes: Cephes' expf (x = n·ln 2 + r with ln 2 in two parts, a degree-6 polynomial in
/// r, 2^n put into the exponent), within 2 ulp of libm's expf on [−87.3, 88] (tested). Inputs
/// are clamped to that range (a NaN stays NaN): below it the result is e^−87.3 ≈ 1.2e−38 (the
/// smallest normal) instead of a subnormal or 0, above it e^88. For the training-only passes
/// ([`sum_exp`], [`scaled_exp`]), where those ends do not matter and libm's scalar expf was a
/// visible share of a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm256_set1_ps(v);
    // max/min return their second operand when either is NaN: x second keeps a NaN.
    let x = _mm256_min_ps(c(88.0), _mm256_max_ps(c(-87.336_54), x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, c(std::f32::consts::LOG2_E)));
    let r = _mm256_fnmadd_ps(n, c(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, c(-2.121_944_4e-4), r);
    let mut p = c(1.987_569_1e-4);
    for k in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, c(k));
    }
    let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, c(1.0)));
    let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
    _mm256_mul_ps(y, pow2n)
}

/// Σ e^(x − shift) over `xs` (a softmax's denominator): [`exp_avx2`] in 8 lanes summed by
/// [`reduce8`]'s order where AVX2 is there, libm's expf in order otherwise.
pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if Kernel::detect().avx2() {
        // SAFETY: AVX2 and FMA checked.
        return unsafe { sum_exp_avx2(xs, shift) };
    }
    xs.iter().map(|&z| (z - shift).exp()).sum()
}

/// The AVX2 body of [`sum_exp`] (a `target_feature` function of its own, so the intrinsics
/// and [`exp_avx2`] inline into its loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_avx2(xs: &[f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let (body, tail) = xs.split_at(xs.len() - xs.len() % 8);
    let mut acc = _mm256_setzero_ps();
    for v in body.chunks_exact(8) {
        acc = _mm256_add_ps(acc, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), _mm256_set1_ps(shift))));
    }
    reduce_avx2(acc) + tail.iter().map(|&z| (z - shift).exp()).sum::<f32>()
}

/// out[j] = scale · e^(xs[j] − shift) (a softmax's probabilities times the loss gradient): as
/// [`sum_exp`], vector or libm.
pub(crate) fn scaled_exp(xs: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    assert_eq!(xs.len(), out.len(), "scaled_exp: input and output lengths differ");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Kernel::detect().avx2() {
        done = xs.len() - xs.len() % 8;
        // SAFETY: AVX2 and FMA checked; both slices hold `done` elements.
        unsafe { scaled_exp_avx2(&xs[..done], shift, scale, &mut out[..done]) };
    }
    for (o, &z) in out[done..].iter_mut().zip(&xs[done..]) {
        *o = scale * (z - shift).exp();
    }
}

/// [`scaled_exp`] over `row` in place (the same bits), through a block on the stack: safe Rust
/// cannot lend one slice as both the input and the output.
pub(crate) fn scaled_exp_in_place(row: &mut [f32], shift: f32, scale: f32) {
    let mut block = [0f32; 256];
    for chunk in row.chunks_mut(256) {
        let input = &mut block[..chunk.len()];
        input.copy_from_slice(chunk);
        scaled_exp(input, shift, scale, chunk);
    }
}

/// The AVX2 body of [`scaled_exp`] over whole groups of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_exp_avx2(xs: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    for (v, o) in xs.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(v.as_ptr()), _mm256_set1_ps(shift)));
        _mm256_storeu_ps(o.as_mut_ptr(), _mm256_mul_ps(_mm256_set1_ps(scale), e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector exp against libm's expf: within 2 ulp over [−87.3, 88] (every 97th f32 of
    /// it), the clamped ends as documented, a NaN stays NaN; the slice helpers use it and
    /// handle tails.
    #[test]
    fn vector_exp_is_within_2_ulp_of_libm() {
        if !Kernel::detect().avx2() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        unsafe {
            use std::arch::x86_64::*;
            let one = |x: f32| {
                let mut o = [0f32; 8];
                _mm256_storeu_ps(o.as_mut_ptr(), exp_avx2(_mm256_set1_ps(x)));
                o[0]
            };
            let ulps = |a: f32, b: f32| (a.to_bits() as i64 - b.to_bits() as i64).abs();
            let mut worst = 0;
            let mut x = -87.3f32;
            while x < 88.0 {
                let d = ulps(one(x), x.exp());
                assert!(d <= 2, "exp({x}): {} vs libm {} ({d} ulp)", one(x), x.exp());
                worst = worst.max(d);
                x = f32::from_bits(if x < 0.0 { x.to_bits() - 97 } else { x.to_bits() + 97 });
                if x == 0.0 || (x < 0.0 && x > -1e-30) {
                    x = 1e-30;
                }
            }
            assert!(worst >= 1, "the comparison ran");
            assert_eq!(one(-1000.0), one(-87.336_54));
            assert!(one(-1000.0) > 0.0 && one(-1000.0) < 1.2e-38);
            assert!(one(1000.0).is_finite() && one(1000.0) == one(88.0));
            assert!(one(f32::NAN).is_nan());
        }
        let xs: Vec<f32> = (0..21).map(|i| i as f32 * 0.37 - 3.0).collect();
        let want: f32 = xs.iter().map(|&z| (z - 1.5).exp()).sum();
        assert!((sum_exp(&xs, 1.5) - want).abs() <= want * 1e-6);
        let mut out = vec![0f32; xs.len()];
        scaled_exp(&xs, 1.5, -2.0, &mut out);
        for (o, &z) in out.iter().zip(&xs) {
            assert!((o - -2.0 * (z - 1.5).exp()).abs() <= 1e-6 * o.abs(), "{o} vs {}", -2.0 * (z - 1.5).exp());
        }
    }
}
