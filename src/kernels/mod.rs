//! The CPU kernels the students run on: fused candle ops with a hand-written backward
//! (`ops.rs`, `attention.rs`), decoding's attention kernel (`decode_ops.rs`), int8/int4 weights
//! for decoding (`quant.rs`), bf16 weights for decoding (`bf16.rs`), the training GEMMs (f32:
//! `sgemm.rs`; bf16 products, f32 accumulation: `bf16_gemm.rs`), and the vector helpers and the
//! one CPU-feature detection they all branch on (`simd.rs`).
//!
//! Invariants: these files import nothing of the crate but each other (they sit below
//! `model`, which builds students from them); a kernel's vector paths (AVX2, AVX-512) and its
//! portable path give the same bits, or the documented difference (the vector exp, within 2 ulp)
//! where training alone uses it; an output row never depends on the other rows, the batch or the thread
//! count. The timing harnesses of `cotlab bench gemm` / `bench matmul` live outside, in
//! `bench::kernels`.

pub mod attention;
pub mod bf16;
pub mod bf16_gemm;
pub mod decode_ops;
pub mod ops;
pub mod quant;
pub mod sgemm;
pub mod simd;

/// Deterministic pseudo-random values in [−1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}
