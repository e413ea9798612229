//! Which vector path the hand-written CPU kernels take (`quant.rs`, `decode_ops.rs`): each
//! kernel has a portable path and an AVX2 one doing the same operations (same bits, tested),
//! picked at run time so one binary runs on any x86-64.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// AVX2 + FMA (+ F16C for Q4_1's f16 scales, which every AVX2 CPU has; checked all the same).
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return Kernel::Avx2;
        }
        Kernel::Portable
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
