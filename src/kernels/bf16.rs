//! bf16 weights for decoding on the CPU (`decode_weights: "bf16"`). A [`Bf16Matrix`] keeps a
//! weight (out × in) rounded to bf16 (to nearest even), stored by tiles of [`TILE`] rows whose
//! chunks of 32 columns are interleaved (tile, chunk, row, 32 values): one sequential stream per
//! tile, as `quant`'s blocks. Each call rounds the activations to bf16 once per row; products
//! are exact in f32 and accumulate in f32.
//!
//! Every output is one fixed sequence of operations whatever the batch, the tiling or the
//! threads: per chunk of 32 columns, 16 f32 lanes each add the product of its odd pair of
//! values, then of its even pair, by one fused multiply-add each (what AVX512-BF16's
//! `vdpbf16ps` does, subnormal inputs and results flushed to zero); then the 16 lanes are summed
//! in a fixed order. So a prompt decodes the same alone or in a batch (tested). Three paths do
//! those operations: `vdpbf16ps` where the CPU has AVX512-BF16, AVX2 FMAs on the two halves of
//! each value pair elsewhere on x86-64 (and in builds by rustc < 1.89), and a portable one, all
//! with the same bits (tested) — except that the AVX2 path keeps a partial sum below 2⁻¹²⁶ in
//! magnitude where the others flush it to zero, far below any activation's scale.
//!
//! Half of f32's bytes per weight, so batch-1 decoding (bound by reading every weight each
//! token) gains most; batched, one `vdpbf16ps` does as many products as two f32 FMAs, so the
//! gain there is the bytes, not the arithmetic.

use rayon::prelude::*;

use super::simd::{output_buffer, prefetch, reduce8, SharedOut};

/// Values per chunk: one `vdpbf16ps` operand (16 lanes × a pair).
pub const CHUNK: usize = 32;
/// Weight rows multiplied together (their outputs share each input load).
const TILE: usize = 4;
/// Input rows one call multiplies by a tile on AVX-512: 6 × 4 accumulators, 4 weight registers
/// and one input register of the 32.
const XROWS: usize = 6;
/// Input rows per pass over the weights: their bf16 copies stay in cache while every tile is
/// read once for them.
const ROWS_PER_PASS: usize = 48;
/// How many tiles ahead the matmul asks for the weights.
const PREFETCH_AHEAD: usize = 2;

/// A weight as bf16 by interleaved tiles (see the module head). Rows past `rows` are zero.
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    w: Vec<u16>,
}

/// `v` rounded to bf16 (nearest even; a NaN stays NaN), a subnormal flushed to a signed zero:
/// the only inputs `vdpbf16ps` reads as themselves, so every path multiplies the same values.
pub fn to_bf16(v: f32) -> u16 {
    let b = half::bf16::from_f32(v).to_bits();
    if b & 0x7f80 == 0 {
        b & 0x8000
    } else {
        b
    }
}

fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl Bf16Matrix {
    /// Rounds `w` (rows × cols, row-major) to bf16. `cols` must be whole chunks of 32.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<Bf16Matrix, String> {
        if cols % CHUNK != 0 || w.len() != rows * cols {
            return Err(format!("cannot make a bf16 copy of a {rows}×{cols} weight ({} values): rows must be whole chunks of {CHUNK}", w.len()));
        }
        let mut out = vec![0u16; rows.div_ceil(TILE) * TILE * cols];
        out.par_chunks_mut(TILE * cols).enumerate().for_each(|(t, tile)| {
            for r in 0..TILE.min(rows - t * TILE) {
                let row = &w[(t * TILE + r) * cols..(t * TILE + r + 1) * cols];
                for (c, src) in row.chunks_exact(CHUNK).enumerate() {
                    for (d, &v) in tile[(c * TILE + r) * CHUNK..][..CHUNK].iter_mut().zip(src) {
                        *d = to_bf16(v);
                    }
                }
            }
        });
        Ok(Bf16Matrix { rows, cols, w: out })
    }

    /// From a 2-D tensor (any device or float dtype; read as f32).
    pub fn from_tensor(w: &candle_core::Tensor) -> candle_core::Result<Bf16Matrix> {
        let (rows, cols) = w.dims2()?;
        let v = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Bf16Matrix::quantize(&v, rows, cols).map_err(candle_core::Error::Msg)
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The weights the kernel multiplies, as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (i, v) in out.iter_mut().enumerate() {
            let (r, k) = (i / self.cols, i % self.cols);
            *v = from_bf16(self.w[((r / TILE * (self.cols / CHUNK) + k / CHUNK) * TILE + r % TILE) * CHUNK + k % CHUNK]);
        }
        out
    }

    fn tile(&self, t: usize) -> &[u16] {
        &self.w[t * TILE * self.cols..(t + 1) * TILE * self.cols]
    }

    /// `x · Wᵀ`: x is m × cols (row-major, f32, rounded to bf16 here), the result m × rows.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(Path::detect(), x, m)
    }

    fn matmul_with(&self, path: Path, x: &[f32], m: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(x.len(), m * cols, "bf16 matmul: x is not m × cols");
        let xb: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
        // Every (row, output) is written below, by the task of the output's tile.
        let mut y = output_buffer(m * rows);
        let tiles = rows.div_ceil(TILE);
        for (xs, ys) in xb.chunks(ROWS_PER_PASS * cols).zip(y.chunks_mut(ROWS_PER_PASS * rows)) {
            let n = xs.len() / cols;
            let out = SharedOut(ys.as_mut_ptr());
            (0..tiles).into_par_iter().with_min_len(4).for_each(|t| {
                let (first, live) = (t * TILE, TILE.min(rows - t * TILE));
                // The products of a few rows wait on the weights' loads: ask for a later tile
                // (most often this task's) ahead of them.
                if t + PREFETCH_AHEAD < tiles {
                    let next = self.tile(t + PREFETCH_AHEAD);
                    prefetch(next.as_ptr() as *const u8, next.len() * 2);
                }
                let mut i = 0;
                while i < n {
                    let p = (n - i).min(XROWS);
                    let acc = path.dot_rows(self.tile(t), &xs[i * cols..(i + p) * cols], cols, p);
                    for (q, row) in acc.iter().take(p).enumerate() {
                        for (r, v) in row.iter().take(live).enumerate() {
                            // SAFETY: (i + q, first + r) is inside ys (i + q < n, first + r <
                            // rows), and no other task writes this tile's columns.
                            unsafe { out.write((i + q) * rows + first + r, *v) };
                        }
                    }
                    i += p;
                }
            });
        }
        y
    }
}

/// Which path multiplies: the same bits from each (see the module head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    Avx512Bf16,
}

impl Path {
    fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(cotlab_avx512)]
            if super::simd::avx512_bf16() {
                return Path::Avx512Bf16;
            }
            if super::simd::avx2_fma() {
                return Path::Avx2;
            }
        }
        Path::Portable
    }

    /// acc[q][r] = x row q · tile row r, for q < p (1 ..= XROWS); x is p × cols bf16.
    fn dot_rows(self, tile: &[u16], x: &[u16], cols: usize, p: usize) -> [[f32; TILE]; XROWS] {
        debug_assert!(tile.len() == TILE * cols && x.len() == p * cols && (1..=XROWS).contains(&p));
        let mut acc = [[0f32; TILE]; XROWS];
        match self {
            Path::Portable => {
                for (q, a) in acc.iter_mut().take(p).enumerate() {
                    *a = portable_dot(tile, &x[q * cols..(q + 1) * cols]);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                for (q, a) in acc.iter_mut().take(p).enumerate() {
                    // SAFETY: detect() checked AVX2 and FMA; slices sized as asserted above.
                    *a = unsafe { avx2_dot(tile, &x[q * cols..(q + 1) * cols]) };
                }
            }
            #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
            Path::Avx512Bf16 => {
                // SAFETY: detect() checked AVX-512F and AVX512-BF16; slices sized as above.
                unsafe {
                    match p {
                        6 => avx512::dot::<6>(tile, x, cols, &mut acc),
                        5 => avx512::dot::<5>(tile, x, cols, &mut acc),
                        4 => avx512::dot::<4>(tile, x, cols, &mut acc),
                        3 => avx512::dot::<3>(tile, x, cols, &mut acc),
                        2 => avx512::dot::<2>(tile, x, cols, &mut acc),
                        _ => avx512::dot::<1>(tile, x, cols, &mut acc),
                    }
                }
            }
        }
        acc
    }
}

/// The 16 lanes' sum: each low lane plus its high lane, then [`reduce8`]'s order.
fn reduce16(l: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for (i, v) in h.iter_mut().enumerate() {
        *v = l[i] + l[i + 8];
    }
    reduce8(&h)
}

/// A subnormal flushed to a signed zero (`vdpbf16ps`'s results).
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0f32.copysign(v)
    } else {
        v
    }
}

/// The reference semantics: one row of x · a tile's rows, `vdpbf16ps` lane by lane.
fn portable_dot(tile: &[u16], x: &[u16]) -> [f32; TILE] {
    let cols = x.len();
    let mut out = [0f32; TILE];
    for (r, o) in out.iter_mut().enumerate() {
        let mut lanes = [0f32; 16];
        for c in 0..cols / CHUNK {
            let (w, xc) = (&tile[(c * TILE + r) * CHUNK..][..CHUNK], &x[c * CHUNK..][..CHUNK]);
            for (j, l) in lanes.iter_mut().enumerate() {
                *l = ftz(from_bf16(w[2 * j + 1]).mul_add(from_bf16(xc[2 * j + 1]), *l));
                *l = ftz(from_bf16(w[2 * j]).mul_add(from_bf16(xc[2 * j]), *l));
            }
        }
        *o = reduce16(&lanes);
    }
    out
}

/// One row of x · a tile's rows with AVX2 FMAs: a 32-bit word holds a pair (even value in its
/// low half), so masking off the low half gives the odd value as f32 and shifting it out the
/// even one; lanes 0..8 of a chunk come from its first 16 values, 8..16 from the rest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot(tile: &[u16], x: &[u16]) -> [f32; TILE] {
    use std::arch::x86_64::*;
    let cols = x.len();
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    let mut out = [0f32; TILE];
    for (r, o) in out.iter_mut().enumerate() {
        let (mut lo_acc, mut hi_acc) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in 0..cols / CHUNK {
            let w = tile.as_ptr().add((c * TILE + r) * CHUNK);
            let xp = x.as_ptr().add(c * CHUNK);
            // (Macros, not closures: a closure may not inherit the function's target features.)
            macro_rules! half {
                ($off:expr, $acc:ident) => {
                    let wv = _mm256_loadu_si256(w.add($off) as *const __m256i);
                    let xv = _mm256_loadu_si256(xp.add($off) as *const __m256i);
                    $acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(wv, hi)), _mm256_castsi256_ps(_mm256_and_si256(xv, hi)), $acc);
                    $acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(wv, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(xv, 16)), $acc);
                };
            }
            half!(0, lo_acc);
            half!(16, hi_acc);
        }
        *o = super::simd::reduce_avx2(_mm256_add_ps(lo_acc, hi_acc));
    }
    out
}

/// Gated on rustc ≥ 1.89 (`cotlab_avx512`, from build.rs), where these intrinsics are stable.
#[cfg(all(target_arch = "x86_64", cotlab_avx512))]
#[allow(clippy::incompatible_msrv)]
mod avx512 {
    use super::{CHUNK, TILE, XROWS};
    use std::arch::x86_64::*;

    /// acc[q][r] = x row q · tile row r for q < P: per chunk, the tile's 4 rows loaded once and
    /// one `vdpbf16ps` per (row, input), then each accumulator reduced as `reduce16`.
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
    pub unsafe fn dot<const P: usize>(tile: &[u16], x: &[u16], cols: usize, acc: &mut [[f32; TILE]; XROWS]) {
        let mut a = [[_mm512_setzero_ps(); TILE]; P];
        macro_rules! load {
            ($p:expr) => {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512($p as *const _))
            };
        }
        for c in 0..cols / CHUNK {
            let w = tile.as_ptr().add(c * TILE * CHUNK);
            let ws: [__m512bh; TILE] = [load!(w), load!(w.add(CHUNK)), load!(w.add(2 * CHUNK)), load!(w.add(3 * CHUNK))];
            for (q, aq) in a.iter_mut().enumerate() {
                let xv = load!(x.as_ptr().add(q * cols + c * CHUNK));
                for (ar, wr) in aq.iter_mut().zip(ws) {
                    *ar = _mm512_dpbf16_ps(*ar, wr, xv);
                }
            }
        }
        for (q, aq) in a.iter().enumerate() {
            for (r, v) in aq.iter().enumerate() {
                let lo = _mm512_castps512_ps256(*v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(*v), 1));
                acc[q][r] = super::super::simd::reduce_avx2(_mm256_add_ps(lo, hi));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as data;

    /// Rows not a multiple of the tile, inputs spanning several passes and partial row groups.
    const SHAPES: [(usize, usize); 3] = [(7, 64), (45, 96), (130, 32)];

    fn paths() -> Vec<Path> {
        let mut p = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::kernels::simd::avx2_fma() {
                p.push(Path::Avx2);
            }
            #[cfg(cotlab_avx512)]
            if crate::kernels::simd::avx512_bf16() {
                p.push(Path::Avx512Bf16);
            }
        }
        p
    }

    #[test]
    fn rounding_is_to_nearest_even_with_subnormals_flushed() {
        // Ties (the dropped half exactly 0x8000) go to the even neighbour: down, then up.
        let (tie_down, tie_up) = (f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000));
        for (v, b) in [(1.0f32, 0x3f80u16), (tie_down, 0x3f80), (tie_up, 0x3f82), (-2.0, 0xc000), (1e-39, 0), (-1e-39, 0x8000), (f32::INFINITY, 0x7f80)] {
            assert_eq!(to_bf16(v), b, "{v}");
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let w = data(45 * 96, 1);
        let back = Bf16Matrix::quantize(&w, 45, 96).unwrap().dequantize();
        for (a, b) in w.iter().zip(back) {
            assert!((a - b).abs() <= a.abs() / 256.0, "{a} vs {b}");
        }
        assert!(Bf16Matrix::quantize(&w[..45 * 90], 45, 90).err().unwrap().contains("whole chunks of 32"));
    }

    #[test]
    fn matmul_matches_the_rounded_reference() {
        for (rows, cols) in SHAPES {
            let w = Bf16Matrix::quantize(&data(rows * cols, 2), rows, cols).unwrap();
            let wd = w.dequantize();
            let m = 53;
            let x = data(m * cols, 3);
            let y = w.matmul(&x, m);
            for i in 0..m {
                for r in 0..rows {
                    let exact: f64 = (0..cols).map(|k| from_bf16(to_bf16(x[i * cols + k])) as f64 * wd[r * cols + k] as f64).sum();
                    let got = y[i * rows + r] as f64;
                    assert!((got - exact).abs() < 1e-5 * (1.0 + exact.abs()), "({rows}×{cols}) y[{i},{r}] = {got}, exact {exact}");
                }
            }
        }
    }

    /// Each row's result is the same bits whatever else is in the batch, and every path gives
    /// the portable path's bits.
    #[test]
    fn rows_are_batch_invariant_and_paths_agree() {
        for (rows, cols) in SHAPES {
            let w = Bf16Matrix::quantize(&data(rows * cols, 4), rows, cols).unwrap();
            let m = 101;
            let x = data(m * cols, 5);
            let reference = w.matmul_with(Path::Portable, &x, m);
            for path in paths() {
                let all = w.matmul_with(path, &x, m);
                assert_eq!(all, reference, "{path:?} differs from the portable path ({rows}×{cols})");
                for i in [0, 1, 5, 6, 47, 48, 49, 100] {
                    let alone = w.matmul_with(path, &x[i * cols..(i + 1) * cols], 1);
                    assert_eq!(alone, all[i * rows..(i + 1) * rows], "{path:?}: row {i} of {rows}×{cols} depends on its batch");
                }
            }
        }
    }
}
