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
