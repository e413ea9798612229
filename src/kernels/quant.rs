//! Quantized weights for decoding on the CPU (`decode_weights: "q8_0"` or `"q4_1"`). A
//! [`Q8Matrix`] keeps a weight (out × in) as llama.cpp's Q8_0 blocks — 32 int8 values and one
//! scale each, the scale kept in f32 — and a [`Q4Matrix`] as its Q4_1 blocks — 32 4-bit values,
//! an f16 scale and an f16 minimum. Both multiply f32 activations without quantizing them.
//!
//! Why not candle's `QMatMul`: it quantizes the activations too (less accurate), and it picks
//! kernels by the number of rows, so a row's rounding depends on its batch (continuous batching
//! then decodes differently from batch 1). Here every output element is one fixed sequence of
//! operations — each weight decoded as `q · scale`, 8 lanes of FMAs over the input in order,
//! then a fixed reduction of the lanes — whatever the number of rows, the tiling or the
//! threads: batch-invariant by construction, and the AVX2, AVX-512 and portable paths give the
//! same bits (AVX-512 holds two weight rows' 8 lanes in one register: the same lanes, twice the
//! rows per instruction).
//!
//! Batch-1 decoding reads every weight once per token, so it is bound by memory: 9 bits a
//! weight (Q8_0: 8, and an f32 scale per 32) or 5 (Q4_1: 4, and two f16 per 32) instead of
//! f32's 32 is what makes it faster. Q4_1 is the default student's own format: quantizing
//! weights that came from a Q4_1 GGUF gives back its blocks, so `q4_1` decodes the weights the
//! f32 path reads, bit for bit (tested), until training changes them.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bf16::Bf16Matrix;
use super::simd::{output_buffer, prefetch, Kernel, SharedOut};

/// Lanes of every dot product's accumulator (the reduction order `simd::reduce8` fixes).
const LANES: usize = 8;

/// Weights per block (one scale each).
pub const BLOCK: usize = 32;
/// Weight rows decoded to f32 together (their outputs share each input load).
const TILE: usize = 4;
/// Input rows one call of `dot_tile` multiplies by a decoded tile: 3 × 4 outputs share each
/// load (12 accumulators, 3 input and 1 weight register: all 16 AVX2 registers).
const XROWS: usize = 3;
/// The same for AVX-512: 8 inputs × 2 registers of two weight rows each (16 accumulators, 8
/// input and 2 weight registers of 32).
const WIDE_XROWS: usize = 8;
/// How many tiles ahead batch-1 decoding asks for the weights.
const PREFETCH_AHEAD: usize = 2;
/// One `dot_tile` call's results: acc[p][r] = input row p · tile row r.
type Acc = [[f32; TILE]; WIDE_XROWS];

/// Where weight (r, c) of a decoded tile sits: by runs of [`LANES`] columns, each run holding the
/// tile's rows one after another (run, row, lane). A run is one sequential read for every
/// kernel, and two rows' lanes are one 512-bit register.
#[inline(always)]
fn at(r: usize, c: usize) -> usize {
    c / LANES * (TILE * LANES) + r * LANES + c % LANES
}
/// Input rows per pass over the weights: their f32 copies stay in cache while every weight
/// tile is decoded once for them.
const ROWS_PER_PASS: usize = 32;

/// A weight (rows = outputs, cols = inputs) as Q8_0 blocks along each row, stored by tiles of
/// [`TILE`] rows with their blocks interleaved (tile, block, row, 32 values): a tile is read as
/// one sequential stream, which the hardware prefetchers keep up with (four row streams at
/// once got far less bandwidth). Rows past `rows` in the last tile are zero.
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    /// One per block, in the same order: tiles × (cols / BLOCK) × TILE.
    scale: Vec<f32>,
}

impl Q8Matrix {
    /// Quantizes `w` (rows × cols, row-major): per block of 32, scale = max |w| / 127 and
    /// q = round(w / scale). `cols` must be whole blocks.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<Q8Matrix, String> {
        if cols % BLOCK != 0 || w.len() != rows * cols {
            return Err(format!("cannot quantize a {rows}×{cols} weight ({} values) to Q8_0: rows must be whole blocks of {BLOCK}", w.len()));
        }
        let (tiles, nb) = (rows.div_ceil(TILE), cols / BLOCK);
        let mut q = vec![0i8; tiles * TILE * cols];
        let mut scale = vec![0f32; tiles * TILE * nb];
        q.par_chunks_mut(TILE * cols).zip(scale.par_chunks_mut(TILE * nb)).enumerate().for_each(|(t, (q, d))| {
            for r in 0..TILE.min(rows - t * TILE) {
                let row = &w[(t * TILE + r) * cols..(t * TILE + r + 1) * cols];
                for (b, w) in row.chunks_exact(BLOCK).enumerate() {
                    let amax = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                    d[b * TILE + r] = amax / 127.0;
                    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                    let o = (b * TILE + r) * BLOCK;
                    for (q, x) in q[o..o + BLOCK].iter_mut().zip(w) {
                        *q = round_half_away(x * inv).clamp(-127, 127) as i8;
                    }
                }
            }
        });
        Ok(Q8Matrix { rows, cols, q, scale })
    }

    /// From a 2-D tensor (any device or float dtype; read as f32).
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Q8Matrix> {
        let (v, rows, cols) = f32_rows(w)?;
        Q8Matrix::quantize(&v, rows, cols).map_err(candle_core::Error::Msg)
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Tile `t`'s blocks and scales.
    fn tile(&self, t: usize) -> (&[i8], &[f32]) {
        let (n, nb) = (TILE * self.cols, TILE * self.cols / BLOCK);
        (&self.q[t * n..(t + 1) * n], &self.scale[t * nb..(t + 1) * nb])
    }

    /// The weights as the kernel sees them (`q · scale`), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(self)
    }

    /// `x · Wᵀ`: x is m × cols (row-major), the result m × rows.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        matmul(self, x, m)
    }
}

impl Tiles for Q8Matrix {
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn decode_tile(&self, k: Kernel, t: usize, buf: &mut [f32]) {
        let (q, d) = self.tile(t);
        k.decode_tile(q, d, self.cols, buf)
    }

    fn dot_row_tile(&self, k: Kernel, t: usize, x: &[f32], scratch: &mut Vec<f32>) -> [f32; TILE] {
        let (q, d) = self.tile(t);
        k.dot_row_tile(q, d, x, scratch)
    }

    fn prefetch(&self, t: usize) {
        let (q, d) = self.tile(t);
        prefetch(q.as_ptr() as *const u8, q.len());
        prefetch(d.as_ptr() as *const u8, d.len() * 4);
    }
}

/// What the matmul driver needs of a block format: its tiles of [`TILE`] rows, decoded to f32
/// or multiplied by one input row in registers — the same operations either way, so a row's
/// result does not depend on its batch.
trait Tiles: Sync {
    fn shape(&self) -> (usize, usize);
    /// Tile `t`'s rows as f32 (TILE × cols, laid out as [`at`] says) into `buf`.
    fn decode_tile(&self, k: Kernel, t: usize, buf: &mut [f32]);
    /// x (one row) · tile `t`'s rows: decode_tile then dot_tile's operations.
    fn dot_row_tile(&self, k: Kernel, t: usize, x: &[f32], scratch: &mut Vec<f32>) -> [f32; TILE];
    /// Asks for tile `t`'s bytes ahead of its decoding.
    fn prefetch(&self, t: usize);
}

/// A 2-D tensor's values as f32, row-major, with its rows and cols.
fn f32_rows(w: &Tensor) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    let (rows, cols) = w.dims2()?;
    Ok((w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?, rows, cols))
}

/// Any block format's weights as the portable kernel decodes them, row-major.
fn dequantize<M: Tiles>(w: &M) -> Vec<f32> {
    let (rows, cols) = w.shape();
    let mut out = Vec::with_capacity(rows * cols);
    let mut buf = vec![0f32; TILE * cols];
    for t in 0..rows.div_ceil(TILE) {
        w.decode_tile(Kernel::Portable, t, &mut buf);
        for r in 0..TILE.min(rows - t * TILE) {
            out.extend((0..cols).map(|c| buf[at(r, c)]));
        }
    }
    out
}

/// `x · Wᵀ` for any block format: x is m × cols (row-major), the result m × rows.
fn matmul<M: Tiles>(w: &M, x: &[f32], m: usize) -> Vec<f32> {
    let (rows, cols) = w.shape();
    assert_eq!(x.len(), m * cols, "quantized matmul: x is not m × cols");
    // Every (row, output) is written below, by the task of the output's tile.
    let mut y = output_buffer(m * rows);
    let kernel = Kernel::detect();
    let xrows = kernel.xrows();
    let tiles = rows.div_ceil(TILE);
    for (xs, ys) in x.chunks(ROWS_PER_PASS * cols).zip(y.chunks_mut(ROWS_PER_PASS * rows)) {
        let n = xs.len() / cols;
        let out = SharedOut(ys.as_mut_ptr());
        (0..tiles).into_par_iter().with_min_len(4).for_each_init(
            // Sized on first use: batch 1 on AVX2 decodes in registers and never needs it.
            Vec::new,
            |buf: &mut Vec<f32>, t| {
                let first = t * TILE;
                let live = TILE.min(rows - first);
                if n == 1 {
                    // One input row (batch-1 decoding): decode in registers, no f32 copy. It
                    // waits on the weights' loads: ask for the tile after next ahead of them.
                    if t + PREFETCH_AHEAD < tiles {
                        w.prefetch(t + PREFETCH_AHEAD);
                    }
                    let acc = w.dot_row_tile(kernel, t, xs, buf);
                    for (r, v) in acc.iter().take(live).enumerate() {
                        // SAFETY: as below, with i = 0.
                        unsafe { out.write(first + r, *v) };
                    }
                    return;
                }
                buf.resize(TILE * cols, 0.0);
                w.decode_tile(kernel, t, buf);
                // The next tile (most often this task's) comes from memory while this one's
                // products run: decoding it then no longer waits on the loads.
                if t + 1 < tiles {
                    w.prefetch(t + 1);
                }
                let mut acc = [[0f32; TILE]; WIDE_XROWS];
                let mut i = 0;
                while i < n {
                    let pair = (n - i).min(xrows);
                    kernel.dot_tile(buf, cols, &xs[i * cols..(i + pair) * cols], pair, &mut acc);
                    for (p, row) in acc.iter().take(pair).enumerate() {
                        for (r, v) in row.iter().take(live).enumerate() {
                            // SAFETY: (i + p, first + r) is inside ys (i + p < n, first + r <
                            // rows), and no other task writes this tile's columns.
                            unsafe { out.write((i + p) * rows + first + r, *v) };
                        }
                    }
                    i += pair;
                }
            },
        );
    }
    y
}

/// A weight (rows = outputs, cols = inputs) as llama.cpp's Q4_1 blocks along each row: 32
/// values q in 0..=15, an f16 scale d and an f16 minimum m, each weight `q · d + m`. Stored by
/// tiles of [`TILE`] rows and groups of two blocks (64 weights): per group, the tile's 4 scales
/// and 4 minimums (f16) of its first block, the same of its second, then each row's 32 bytes
/// of nibbles — 160 bytes per 256 weights, one sequential stream per tile. Within a row's
/// group, 32-bit word i holds weights i, 8 + i, …, 56 + i in its nibbles 0..8, so one shift and
/// one mask of the 8 words give 8 consecutive weights, one per lane (the GGUF's own nibble
/// order would need a widening shuffle per 8 weights, which cost the kernel much of its speed).
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// Weights per Q4_1 group (two blocks).
const GROUP: usize = 2 * BLOCK;
/// Bytes of one tile's group: 2 × (4 f16 scales, 4 f16 minimums), 4 rows × 32 bytes of nibbles.
const Q4_TILE_GROUP: usize = 32 + TILE * GROUP / 2;

impl Q4Matrix {
    /// Quantizes `w` (rows × cols, row-major) as llama.cpp does: per block of 32, d = (max −
    /// min) / 15 and m = min, both rounded to f16, then q = round((w − m) / d) in 0..=15 (with
    /// the rounded d and m, which is what the weights are decoded with). `cols` must be whole
    /// groups of 64.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<Q4Matrix, String> {
        use half::f16;
        if cols % GROUP != 0 || w.len() != rows * cols {
            return Err(format!("cannot quantize a {rows}×{cols} weight ({} values) to Q4_1: rows must be whole groups of {GROUP}", w.len()));
        }
        let (tiles, ng) = (rows.div_ceil(TILE), cols / GROUP);
        let mut data = vec![0u8; tiles * ng * Q4_TILE_GROUP];
        data.par_chunks_mut(ng * Q4_TILE_GROUP).enumerate().for_each(|(t, tile)| {
            for r in 0..TILE.min(rows - t * TILE) {
                let row = &w[(t * TILE + r) * cols..(t * TILE + r + 1) * cols];
                for (g, w) in row.chunks_exact(GROUP).enumerate() {
                    let grp = &mut tile[g * Q4_TILE_GROUP..(g + 1) * Q4_TILE_GROUP];
                    let mut words = [0u32; 8];
                    for (h, w) in w.chunks_exact(BLOCK).enumerate() {
                        let (lo, hi) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                        let d = f16::from_f32((hi - lo) / 15.0);
                        let m = f16::from_f32(lo);
                        grp[16 * h + 2 * r..][..2].copy_from_slice(&d.to_bits().to_le_bytes());
                        grp[16 * h + 8 + 2 * r..][..2].copy_from_slice(&m.to_bits().to_le_bytes());
                        let (d, m) = (d.to_f32(), m.to_f32());
                        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                        for (j, &x) in w.iter().enumerate() {
                            let k = h * BLOCK + j;
                            words[k % 8] |= (round_half_away((x - m) * inv).clamp(0, 15) as u32) << (4 * (k / 8));
                        }
                    }
                    for (i, word) in words.iter().enumerate() {
                        grp[32 + r * 32 + 4 * i..][..4].copy_from_slice(&word.to_le_bytes());
                    }
                }
            }
        });
        Ok(Q4Matrix { rows, cols, data })
    }

    /// From a 2-D tensor (any device or float dtype; read as f32).
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Q4Matrix> {
        let (v, rows, cols) = f32_rows(w)?;
        Q4Matrix::quantize(&v, rows, cols).map_err(candle_core::Error::Msg)
    }

    fn tile(&self, t: usize) -> &[u8] {
        let n = self.cols / GROUP * Q4_TILE_GROUP;
        &self.data[t * n..(t + 1) * n]
    }

    /// The weights as the kernel sees them (`q · d + m`), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize(self)
    }

    /// `x · Wᵀ`: x is m × cols (row-major), the result m × rows.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        matmul(self, x, m)
    }
}

impl Tiles for Q4Matrix {
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn decode_tile(&self, k: Kernel, t: usize, buf: &mut [f32]) {
        match k {
            Kernel::Portable => portable::decode_tile_q4(self.tile(t), self.cols, buf),
            // SAFETY: detect() checked AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::decode_tile_q4(self.tile(t), self.cols, buf) },
            // SAFETY: detect() checked AVX-512F besides.
            #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
            Kernel::Avx512 => unsafe { avx512::decode_tile_q4(self.tile(t), self.cols, buf) },
        }
    }

    fn dot_row_tile(&self, k: Kernel, t: usize, x: &[f32], scratch: &mut Vec<f32>) -> [f32; TILE] {
        match k {
            Kernel::Portable => {
                scratch.resize(TILE * x.len(), 0.0);
                let mut acc = [[0f32; TILE]; WIDE_XROWS];
                portable::decode_tile_q4(self.tile(t), x.len(), scratch);
                portable::dot_tile(scratch, x.len(), x, 1, &mut acc);
                acc[0]
            }
            // SAFETY: detect() checked AVX2, FMA and F16C. One row's chains are as long on
            // AVX-512 (each row's 8 lanes are one chain), so both take this path.
            #[cfg(target_arch = "x86_64")]
            _ => unsafe { avx2::dot_row_tile_q4(self.tile(t), x) },
        }
    }

    fn prefetch(&self, t: usize) {
        let tile = self.tile(t);
        prefetch(tile.as_ptr(), tile.len());
    }
}

/// `f32::round` without the libm call (which dominated quantizing): truncate, then step away
/// from zero when the dropped fraction is at least one half. |v| ≤ 127 here.
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

impl Kernel {
    /// Input rows one [`Kernel::dot_tile`] call takes at most: what the registers hold (the
    /// portable path, all in memory, takes as many as [`Acc`] has).
    fn xrows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => XROWS,
            _ => WIDE_XROWS,
        }
    }

    /// A Q8_0 tile's rows as f32 (laid out as [`at`] says) into `buf`.
    fn decode_tile(self, q: &[i8], d: &[f32], cols: usize, buf: &mut [f32]) {
        match self {
            Kernel::Portable => portable::decode_tile(q, d, cols, buf),
            // SAFETY: detect() checked AVX2 and FMA. (No 512-bit Q8_0 decoder: the default
            // student's weights are Q4_1, and Q8_0's decoding was not what its time went to.)
            #[cfg(target_arch = "x86_64")]
            _ => unsafe { avx2::decode_tile(q, d, cols, buf) },
        }
    }

    /// x (one row) · a tile's rows, decoding in registers where the CPU allows: decode_tile
    /// then dot_tile's operations, without storing the f32 weights.
    fn dot_row_tile(self, q: &[i8], d: &[f32], x: &[f32], scratch: &mut Vec<f32>) -> [f32; TILE] {
        match self {
            Kernel::Portable => {
                scratch.resize(TILE * x.len(), 0.0);
                let mut acc = [[0f32; TILE]; WIDE_XROWS];
                portable::decode_tile(q, d, x.len(), scratch);
                portable::dot_tile(scratch, x.len(), x, 1, &mut acc);
                acc[0]
            }
            // SAFETY: detect() checked AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            _ => unsafe { avx2::dot_row_tile(q, d, x) },
        }
    }

    /// acc[p][r] = x row p · w row r, for p < pair (1 ..= self.xrows()) and every row of the
    /// tile (w decoded, laid out as [`at`] says).
    fn dot_tile(self, w: &[f32], cols: usize, x: &[f32], pair: usize, acc: &mut Acc) {
        assert!(w.len() >= TILE * cols && x.len() >= pair * cols && cols % LANES == 0 && (1..=self.xrows()).contains(&pair));
        match self {
            Kernel::Portable => portable::dot_tile(w, cols, x, pair, acc),
            // SAFETY: detect() checked AVX2 and FMA; slices sized as asserted.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_tile(w, cols, x, pair, acc) },
            // SAFETY: detect() checked AVX-512F besides; slices sized as asserted.
            #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
            Kernel::Avx512 => unsafe {
                match pair {
                    8 => avx512::dot_tile::<8>(w, cols, x, acc),
                    7 => avx512::dot_tile::<7>(w, cols, x, acc),
                    6 => avx512::dot_tile::<6>(w, cols, x, acc),
                    5 => avx512::dot_tile::<5>(w, cols, x, acc),
                    4 => avx512::dot_tile::<4>(w, cols, x, acc),
                    3 => avx512::dot_tile::<3>(w, cols, x, acc),
                    2 => avx512::dot_tile::<2>(w, cols, x, acc),
                    _ => avx512::dot_tile::<1>(w, cols, x, acc),
                }
            },
        }
    }
}

/// The reference semantics, operation for operation what the AVX2 path computes.
mod portable {
    use super::super::simd::reduce8 as reduce;
    use super::{at, Acc, BLOCK, GROUP, LANES, Q4_TILE_GROUP, TILE};

    /// A Q4_1 tile's rows as f32. `q · d` is exact in f32 (4 bits times f16's 11), so `q · d + m`
    /// rounds once, as the AVX2 path's FMA does.
    pub fn decode_tile_q4(tile: &[u8], cols: usize, buf: &mut [f32]) {
        let f16 = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        for g in 0..cols / GROUP {
            let grp = &tile[g * Q4_TILE_GROUP..(g + 1) * Q4_TILE_GROUP];
            for r in 0..TILE {
                let words = &grp[32 + r * 32..32 + (r + 1) * 32];
                for k in 0..GROUP {
                    let (slot, lane, h) = (k / 8, k % 8, k / BLOCK);
                    let word = u32::from_le_bytes(words[4 * lane..4 * lane + 4].try_into().unwrap());
                    let q = (word >> (4 * slot)) & 15;
                    buf[at(r, g * GROUP + k)] = q as f32 * f16(&grp[16 * h + 2 * r..]) + f16(&grp[16 * h + 8 + 2 * r..]);
                }
            }
        }
    }

    pub fn decode_tile(q: &[i8], d: &[f32], cols: usize, buf: &mut [f32]) {
        for b in 0..cols / BLOCK {
            for r in 0..TILE {
                let (src, scale) = (&q[(b * TILE + r) * BLOCK..][..BLOCK], d[b * TILE + r]);
                for (i, &q) in src.iter().enumerate() {
                    buf[at(r, b * BLOCK + i)] = q as f32 * scale;
                }
            }
        }
    }

    pub fn dot_tile(w: &[f32], cols: usize, x: &[f32], pair: usize, acc: &mut Acc) {
        for p in 0..pair {
            let x = &x[p * cols..(p + 1) * cols];
            for r in 0..TILE {
                let mut lanes = [0f32; LANES];
                for (c, xs) in x.chunks_exact(LANES).enumerate() {
                    let ws = &w[at(r, c * LANES)..][..LANES];
                    for l in 0..LANES {
                        lanes[l] = ws[l].mul_add(xs[l], lanes[l]);
                    }
                }
                acc[p][r] = reduce(&lanes);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::reduce_avx2 as reduce;
    use super::{Acc, BLOCK, GROUP, LANES, Q4_TILE_GROUP, TILE};
    use std::arch::x86_64::*;

    /// Row `$r` of the Q4_1 tile group at `$grp` (headers `$h0`, `$h1` = each block's 4 scales
    /// then 4 minimums as f32), decoded to 8 vectors of 8 consecutive weights, each
    /// `cvt(q) · d + m` by one FMA.
    macro_rules! q4_row {
        ($grp:expr, $h0:expr, $h1:expr, $r:expr) => {{
            let (ri, mi) = (_mm256_set1_epi32($r as i32), _mm256_set1_epi32($r as i32 + TILE as i32));
            let (d0, m0) = (_mm256_permutevar8x32_ps($h0, ri), _mm256_permutevar8x32_ps($h0, mi));
            let (d1, m1) = (_mm256_permutevar8x32_ps($h1, ri), _mm256_permutevar8x32_ps($h1, mi));
            let v = _mm256_loadu_si256($grp.add(32 + $r * 32) as *const __m256i);
            let mask = _mm256_set1_epi32(15);
            // (Macros, not closures: a closure may not inherit the function's target features.)
            macro_rules! w {
                ($s:literal, $d:ident, $m:ident) => {
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 4 * $s), mask)), $d, $m)
                };
            }
            [w!(0, d0, m0), w!(1, d0, m0), w!(2, d0, m0), w!(3, d0, m0), w!(4, d1, m1), w!(5, d1, m1), w!(6, d1, m1), w!(7, d1, m1)]
        }};
    }

    /// The two f32 headers of the group at `grp`.
    macro_rules! q4_headers {
        ($grp:expr) => {
            (_mm256_cvtph_ps(_mm_loadu_si128($grp as *const __m128i)), _mm256_cvtph_ps(_mm_loadu_si128($grp.add(16) as *const __m128i)))
        };
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn decode_tile_q4(tile: &[u8], cols: usize, buf: &mut [f32]) {
        debug_assert!(tile.len() == cols / GROUP * Q4_TILE_GROUP && buf.len() >= TILE * cols);
        for g in 0..cols / GROUP {
            let grp = tile.as_ptr().add(g * Q4_TILE_GROUP);
            let (h0, h1) = q4_headers!(grp);
            for r in 0..TILE {
                let w = q4_row!(grp, h0, h1, r);
                // Run j of the group is run g · 8 + j of the tile (see `at`).
                let dst = buf.as_mut_ptr().add(g * GROUP * TILE + r * LANES);
                for (j, w) in w.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add(j * TILE * LANES), w);
                }
            }
        }
    }

    /// x · a Q4_1 tile's rows, decoding in registers: decode_tile_q4's and dot_tile's
    /// operations in the same order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_row_tile_q4(tile: &[u8], x: &[f32]) -> [f32; TILE] {
        let cols = x.len();
        debug_assert!(tile.len() == cols / GROUP * Q4_TILE_GROUP);
        let z = _mm256_setzero_ps();
        // Named accumulators, not an array: they must stay in registers.
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        macro_rules! row {
            ($grp:ident, $h0:ident, $h1:ident, $xg:ident, $r:literal, $a:ident) => {
                let w = q4_row!($grp, $h0, $h1, $r);
                for (j, w) in w.into_iter().enumerate() {
                    $a = _mm256_fmadd_ps(w, _mm256_loadu_ps($xg.add(8 * j)), $a);
                }
            };
        }
        for g in 0..cols / GROUP {
            let grp = tile.as_ptr().add(g * Q4_TILE_GROUP);
            let (h0, h1) = q4_headers!(grp);
            let xg = x.as_ptr().add(g * GROUP);
            row!(grp, h0, h1, xg, 0, a0);
            row!(grp, h0, h1, xg, 1, a1);
            row!(grp, h0, h1, xg, 2, a2);
            row!(grp, h0, h1, xg, 3, a3);
        }
        [reduce(a0), reduce(a1), reduce(a2), reduce(a3)]
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn decode_tile(q: &[i8], d: &[f32], cols: usize, buf: &mut [f32]) {
        debug_assert!(q.len() == TILE * cols && d.len() * BLOCK == q.len() && buf.len() >= q.len());
        let (q, out) = (q.as_ptr(), buf.as_mut_ptr());
        for b in 0..cols / BLOCK {
            for r in 0..TILE {
                let s = _mm256_set1_ps(*d.get_unchecked(b * TILE + r));
                let src = q.add((b * TILE + r) * BLOCK);
                let dst = out.add(b * BLOCK * TILE + r * LANES);
                for j in 0..BLOCK / 8 {
                    let bytes = _mm_loadl_epi64(src.add(j * 8) as *const __m128i);
                    _mm256_storeu_ps(dst.add(j * TILE * LANES), _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), s));
                }
            }
        }
    }

    /// x · a tile's rows, each weight decoded as `cvt(q) · scale` in a register, then one FMA:
    /// decode_tile's and dot_tile's operations in the same order.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_row_tile(q: &[i8], d: &[f32], x: &[f32]) -> [f32; TILE] {
        let cols = x.len();
        debug_assert!(q.len() == TILE * cols && d.len() * BLOCK == q.len());
        let (q, d, x) = (q.as_ptr(), d.as_ptr(), x.as_ptr());
        let z = _mm256_setzero_ps();
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        macro_rules! row {
            ($r:literal, $a:ident, $b:ident) => {
                let s = _mm256_set1_ps(*d.add($b * TILE + $r));
                let src = q.add(($b * TILE + $r) * BLOCK);
                for j in 0..BLOCK / 8 {
                    let bytes = _mm_loadl_epi64(src.add(j * 8) as *const __m128i);
                    let w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), s);
                    $a = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.add($b * BLOCK + j * 8)), $a);
                }
            };
        }
        for b in 0..cols / BLOCK {
            row!(0, a0, b);
            row!(1, a1, b);
            row!(2, a2, b);
            row!(3, a3, b);
        }
        [reduce(a0), reduce(a1), reduce(a2), reduce(a3)]
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_tile(w: &[f32], cols: usize, x: &[f32], pair: usize, acc: &mut Acc) {
        // Row r's run at column k starts at (k / 8) · 32 + 8 r (see `at`).
        let (w0, w1, w2, w3) = (w.as_ptr(), w.as_ptr().add(LANES), w.as_ptr().add(2 * LANES), w.as_ptr().add(3 * LANES));
        let z = _mm256_setzero_ps();
        // Named accumulators, not an array: they must stay in registers.
        macro_rules! tile {
            ($([$xp:ident, $u:ident, $a0:ident, $a1:ident, $a2:ident, $a3:ident, $p:literal]),+) => {{
                $(let $xp = x.as_ptr().add($p * cols); let (mut $a0, mut $a1, mut $a2, mut $a3) = (z, z, z, z);)+
                let mut k = 0;
                while k < cols {
                    $(let $u = _mm256_loadu_ps($xp.add(k));)+
                    // One weight load feeds every input row.
                    let w = _mm256_loadu_ps(w0.add(k * TILE));
                    $($a0 = _mm256_fmadd_ps(w, $u, $a0);)+
                    let w = _mm256_loadu_ps(w1.add(k * TILE));
                    $($a1 = _mm256_fmadd_ps(w, $u, $a1);)+
                    let w = _mm256_loadu_ps(w2.add(k * TILE));
                    $($a2 = _mm256_fmadd_ps(w, $u, $a2);)+
                    let w = _mm256_loadu_ps(w3.add(k * TILE));
                    $($a3 = _mm256_fmadd_ps(w, $u, $a3);)+
                    k += 8;
                }
                $(acc[$p] = [reduce($a0), reduce($a1), reduce($a2), reduce($a3)];)+
            }};
        }
        match pair {
            3 => tile!([x0, u0, a00, a01, a02, a03, 0], [x1, u1, a10, a11, a12, a13, 1], [x2, u2, a20, a21, a22, a23, 2]),
            2 => tile!([x0, u0, a00, a01, a02, a03, 0], [x1, u1, a10, a11, a12, a13, 1]),
            _ => tile!([x0, u0, a00, a01, a02, a03, 0]),
        }
    }
}

/// The AVX-512 path: each 512-bit register holds two weight rows' [`LANES`] lanes (a decoded
/// run's rows 0–1 or 2–3, see `at`) and one input's 8 values twice, so every lane does the AVX2
/// path's operations in its order: the same bits, twice the rows per instruction. Gated on
/// rustc ≥ 1.89 (`cotlab_avx512`, from build.rs), where these intrinsics are stable.
#[cfg(all(target_arch = "x86_64", cotlab_avx512))]
#[allow(clippy::incompatible_msrv)]
mod avx512 {
    use super::{Acc, GROUP, LANES, Q4_TILE_GROUP, TILE};
    use std::arch::x86_64::*;

    /// A Q4_1 tile's rows as f32, two rows per register: `cvt(q) · d + m` by one FMA, as the
    /// AVX2 path.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn decode_tile_q4(tile: &[u8], cols: usize, buf: &mut [f32]) {
        debug_assert!(tile.len() == cols / GROUP * Q4_TILE_GROUP && buf.len() >= TILE * cols);
        let mask = _mm512_set1_epi32(15);
        for r in (0..TILE).step_by(2) {
            // Lanes 0–7 take row r's header entry, lanes 8–15 row r + 1's: the group's 16
            // f16 are block 0's 4 scales and 4 minimums, then block 1's.
            let pick = |offset: usize| {
                let mut idx = [0i32; 16];
                for (l, i) in idx.iter_mut().enumerate() {
                    *i = (offset + r + l / 8) as i32;
                }
                _mm512_loadu_si512(idx.as_ptr() as *const _)
            };
            let (di0, mi0, di1, mi1) = (pick(0), pick(TILE), pick(2 * TILE), pick(3 * TILE));
            for g in 0..cols / GROUP {
                let grp = tile.as_ptr().add(g * Q4_TILE_GROUP);
                let h = _mm512_cvtph_ps(_mm256_loadu_si256(grp as *const __m256i));
                let (d0, m0, d1, m1) =
                    (_mm512_permutexvar_ps(di0, h), _mm512_permutexvar_ps(mi0, h), _mm512_permutexvar_ps(di1, h), _mm512_permutexvar_ps(mi1, h));
                // Rows r and r + 1's nibble words, one after the other.
                let v = _mm512_loadu_si512(grp.add(32 + r * 32) as *const _);
                let dst = buf.as_mut_ptr().add(g * GROUP * TILE + r * LANES);
                macro_rules! run {
                    ($s:literal, $d:ident, $m:ident) => {
                        let q = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32::<{ 4 * $s }>(v), mask));
                        _mm512_storeu_ps(dst.add($s * TILE * LANES), _mm512_fmadd_ps(q, $d, $m));
                    };
                }
                run!(0, d0, m0);
                run!(1, d0, m0);
                run!(2, d0, m0);
                run!(3, d0, m0);
                run!(4, d1, m1);
                run!(5, d1, m1);
                run!(6, d1, m1);
                run!(7, d1, m1);
            }
        }
    }

    /// acc[p][r] = x row p · tile row r for p < P, the tile decoded: per run, two registers of
    /// weights and one broadcast load per input row feed 2 P accumulators.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn dot_tile<const P: usize>(w: &[f32], cols: usize, x: &[f32], acc: &mut Acc) {
        let mut a = [[_mm512_setzero_ps(); 2]; P];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut k = 0;
        while k < cols {
            let (w01, w23) = (_mm512_loadu_ps(wp.add(k * TILE)), _mm512_loadu_ps(wp.add(k * TILE + 2 * LANES)));
            for (p, ap) in a.iter_mut().enumerate() {
                let u = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(xp.add(p * cols + k)))));
                ap[0] = _mm512_fmadd_ps(w01, u, ap[0]);
                ap[1] = _mm512_fmadd_ps(w23, u, ap[1]);
            }
            k += LANES;
        }
        for (p, ap) in a.iter().enumerate() {
            _mm_storeu_ps(acc[p].as_mut_ptr(), reduce4(ap[0], ap[1]));
        }
    }

    /// `simd::reduce8` of each 8-lane half of `r01` and `r23` (tile rows 0–3), the four sums
    /// side by side: the same additions as `reduce_avx2` on each half, four rows at a time.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn reduce4(r01: __m512, r23: __m512) -> __m128 {
        // 128-bit quarter k of s is row k's (l0 + l4, l1 + l5, l2 + l6, l3 + l7) = (a, b, c, d).
        let s = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(r01, r23), _mm512_shuffle_f32x4::<0b11_01_11_01>(r01, r23));
        // (a + c, b + d, …), then (a + c) + (b + d) in each quarter's first element.
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b11_10_11_10>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_01_01_01>(s));
        _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), s))
    }
}

crate::choices! {
    /// The block formats decoding can read (`decode_weights: "q8_0"` / `"q4_1"`).
    pub enum QFormat("decode_weights") {
        Q8_0 = "q8_0",
        Q4_1 = "q4_1",
    }
}

/// A weight's decoding copy for decoding: ours on the CPU (Q8_0, Q4_1 or bf16), candle's
/// quantized kernels elsewhere.
pub enum QWeight {
    Q8(Q8Matrix),
    Q4(Q4Matrix),
    Bf16(Bf16Matrix),
    Candle(candle_core::quantized::QMatMul),
}

impl QWeight {
    /// The bf16 copy of 2-D CPU weight `w` (`kernels::bf16`); `None` when its rows are not
    /// whole chunks of 32 (it stays f32).
    pub fn bf16(w: &Tensor) -> candle_core::Result<Option<QWeight>> {
        if w.rank() != 2 || w.dim(1)? % super::bf16::CHUNK != 0 {
            return Ok(None);
        }
        Ok(Some(QWeight::Bf16(Bf16Matrix::from_tensor(w)?)))
    }

    /// The copy of 2-D weight `w`; `None` when its rows are not whole blocks (it stays f32). On
    /// the CPU a Q4_1 weight whose rows are an odd number of blocks is kept as Q8_0.
    pub fn new(w: &Tensor, format: QFormat) -> candle_core::Result<Option<QWeight>> {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        if w.rank() != 2 || w.dim(1)? % BLOCK != 0 {
            return Ok(None);
        }
        Ok(Some(match (w.device().is_cpu(), format) {
            (true, QFormat::Q8_0) => QWeight::Q8(Q8Matrix::from_tensor(w)?),
            (true, QFormat::Q4_1) if w.dim(1)? % GROUP == 0 => QWeight::Q4(Q4Matrix::from_tensor(w)?),
            // Rows of an odd number of blocks: the kernel's Q4_1 groups need two.
            (true, QFormat::Q4_1) => QWeight::Q8(Q8Matrix::from_tensor(w)?),
            (false, f) => {
                let dt = if f == QFormat::Q8_0 { GgmlDType::Q8_0 } else { GgmlDType::Q4_1 };
                QWeight::Candle(QMatMul::from_qtensor(QTensor::quantize(&w.contiguous()?, dt)?)?)
            }
        }))
    }

    /// Whether the kernel reads exactly `w` (row-major f32, the weight this copy was made from),
    /// bit for bit: true for weights on the format's grid (dequantized from blocks of that
    /// format, as a GGUF's are), so decoding with this copy reads the f32 path's weights.
    /// Candle's copies are never exact (they quantize the activations too).
    pub(crate) fn reads_exactly(&self, w: &[f32]) -> bool {
        let back = match self {
            QWeight::Q8(m) => m.dequantize(),
            QWeight::Q4(m) => m.dequantize(),
            QWeight::Bf16(m) => m.dequantize(),
            QWeight::Candle(_) => return false,
        };
        back.len() == w.len() && back.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// `x · Wᵀ` for f32 x (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        match self {
            QWeight::Candle(q) => q.forward(&x.contiguous()?),
            w => x.contiguous()?.apply_op1_no_bwd(&QLinear(w)),
        }
    }

    /// `x · Wᵀ` on the CPU kernels (m rows of x); `None` for candle's.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Option<Vec<f32>> {
        match self {
            QWeight::Q8(w) => Some(w.matmul(x, m)),
            QWeight::Q4(w) => Some(w.matmul(x, m)),
            QWeight::Bf16(w) => Some(w.matmul(x, m)),
            QWeight::Candle(_) => None,
        }
    }

    fn shape(&self) -> Option<(usize, usize)> {
        match self {
            QWeight::Q8(w) => Some(w.shape()),
            QWeight::Q4(w) => Some(Tiles::shape(w)),
            QWeight::Bf16(w) => Some(w.shape()),
            QWeight::Candle(_) => None,
        }
    }
}

/// `x · Wᵀ` as a candle op on CPU tensors: x (…, cols) f32 → (…, rows) f32, no gradient.
struct QLinear<'a>(&'a QWeight);

impl CustomOp1 for QLinear<'_> {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((rows, cols)) = self.0.shape() else { candle_core::bail!("quantized linear: candle's weights run through QMatMul") };
        let dims = l.shape().dims();
        if dims.last() != Some(&cols) {
            candle_core::bail!("quantized linear: input {:?} does not end in {cols} features", dims);
        }
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("quantized linear: input must be contiguous") };
        let CpuStorage::F32(x) = s else { candle_core::bail!("quantized linear: input must be f32") };
        let x = &x[start..end];
        let y = self.0.matmul(x, x.len() / cols).expect("a CPU kernel's weight");
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = rows;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as data;

    /// Rows not a multiple of the tile, inputs spanning several passes (cols: whole Q4_1 groups).
    const SHAPES: [(usize, usize); 3] = [(7, 64), (45, 128), (130, 64)];

    /// A quantized matmul under test: (format name, x, m ↦ x·Wᵀ, the dequantized W).
    type Case = (&'static str, Box<dyn Fn(&[f32], usize) -> Vec<f32>>, Vec<f32>);

    /// Every vector path this CPU and build have, the portable one first.
    fn paths() -> Vec<Kernel> {
        let mut p = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect().avx2() {
            p.push(Kernel::Avx2);
        }
        if !p.contains(&Kernel::detect()) {
            p.push(Kernel::detect());
        }
        p
    }

    /// Both formats behind one interface, for the tests.
    fn both(w: &[f32], rows: usize, cols: usize) -> [Case; 2] {
        let (q8, q4) = (Q8Matrix::quantize(w, rows, cols).unwrap(), Q4Matrix::quantize(w, rows, cols).unwrap());
        let (d8, d4) = (q8.dequantize(), q4.dequantize());
        [("q8_0", Box::new(move |x, m| q8.matmul(x, m)), d8), ("q4_1", Box::new(move |x, m| q4.matmul(x, m)), d4)]
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let (rows, cols) = (45, 128);
        let w = data(rows * cols, 1);
        let back = Q8Matrix::quantize(&w, rows, cols).unwrap().dequantize();
        assert_eq!(back.len(), w.len());
        for (i, (a, b)) in w.iter().zip(back).enumerate() {
            let step = w[i / BLOCK * BLOCK..][..BLOCK].iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            assert!((a - b).abs() <= step * 0.5 + 1e-7, "q8_0 weight {i}: {a} vs {b} (step {step})");
        }
        let back = Q4Matrix::quantize(&w, rows, cols).unwrap().dequantize();
        for (i, (a, b)) in w.iter().zip(back).enumerate() {
            let blk = &w[i / BLOCK * BLOCK..][..BLOCK];
            let (lo, hi) = blk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
            // Half a step, plus what rounding d and m to f16 (2⁻¹¹ relative) moves a weight.
            let step = (hi - lo) / 15.0;
            assert!((a - b).abs() <= step * 0.5 + (lo.abs() + hi.abs()) * 1e-3, "q4_1 weight {i}: {a} vs {b} (step {step})");
        }
        for v in [-127.0f32, -2.5, -1.5, -0.5, -0.49999997, 0.0, 0.49999997, 0.5, 1.5, 2.5, 126.7, 127.0] {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
        }
        assert!(Q8Matrix::quantize(&w[..45 * 90], 45, 90).err().unwrap().contains("whole blocks"));
        assert!(Q4Matrix::quantize(&w[..45 * 96], 45, 96).err().unwrap().contains("whole groups of 64"));
    }

    /// Weights that came from Q4_1 blocks (a GGUF's, dequantized as candle does) quantize back to
    /// the same blocks: the kernel reads exactly the weights the f32 path reads.
    #[test]
    fn q4_1_weights_round_trip_exactly() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (rows, cols) = (45, 128);
        let mut w = data(rows * cols, 6);
        // Blocks of other ranges and offsets, and one constant block (d = 0).
        for (i, v) in w.iter_mut().enumerate() {
            *v = *v * (1 + i / 1000) as f32 * 0.03 + (i / 320) as f32 * 0.01;
        }
        w[..BLOCK].fill(0.25);
        let t = Tensor::from_vec(w, (rows, cols), &candle_core::Device::Cpu).unwrap();
        let gguf = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap().dequantize(&candle_core::Device::Cpu).unwrap();
        let f32s = gguf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let back = Q4Matrix::from_tensor(&gguf).unwrap().dequantize();
        let same = f32s.iter().zip(&back).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        assert_eq!(same, f32s.len(), "{} of {} weights differ after a round trip", f32s.len() - same, f32s.len());
    }

    #[test]
    fn matmul_matches_the_dequantized_reference() {
        for (rows, cols) in SHAPES {
            for (name, matmul, w) in both(&data(rows * cols, 2), rows, cols) {
                let m = 37;
                let x = data(m * cols, 3);
                let y = matmul(&x, m);
                for i in 0..m {
                    for r in 0..rows {
                        let exact: f64 = (0..cols).map(|k| x[i * cols + k] as f64 * w[r * cols + k] as f64).sum();
                        let got = y[i * rows + r] as f64;
                        assert!((got - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{name} ({rows}×{cols}) y[{i},{r}] = {got}, exact {exact}");
                    }
                }
            }
        }
    }

    /// Each row's result is the same bits whatever else is in the batch, and the vector path
    /// gives the portable path's bits.
    #[test]
    fn rows_are_batch_invariant_and_kernels_agree() {
        for (rows, cols) in SHAPES {
            let w = data(rows * cols, 4);
            let m = 71;
            let x = data(m * cols, 5);
            for (name, matmul, _) in both(&w, rows, cols) {
                let all = matmul(&x, m);
                for i in [0, 1, 2, 31, 32, 33, 70] {
                    let alone = matmul(&x[i * cols..(i + 1) * cols], 1);
                    assert_eq!(alone, all[i * rows..(i + 1) * rows], "{name}: row {i} of {rows}×{cols} depends on its batch");
                }
            }
            let (q8, q4) = (Q8Matrix::quantize(&w, rows, cols).unwrap(), Q4Matrix::quantize(&w, rows, cols).unwrap());
            let (mut buf, mut reference) = (vec![0f32; TILE * cols], vec![0f32; TILE * cols]);
            let last = rows.div_ceil(TILE) - 1;
            let formats: [(&str, &dyn Tiles); 2] = [("q8_0", &q8), ("q4_1", &q4)];
            for kernel in paths() {
                for (name, q) in formats {
                    for t in [0, last] {
                        q.decode_tile(kernel, t, &mut buf);
                        q.decode_tile(Kernel::Portable, t, &mut reference);
                        assert_eq!(buf, reference, "{name}: {kernel:?} decodes tile {t} differently from the portable path");
                        let fused = q.dot_row_tile(kernel, t, &x[..cols], &mut Vec::new());
                        let mut split = [[0f32; TILE]; WIDE_XROWS];
                        portable::dot_tile(&reference, cols, &x[..cols], 1, &mut split);
                        assert_eq!(fused, split[0], "{name} {kernel:?}: one row in registers != the decoded tile ({rows}×{cols}, tile {t})");
                    }
                }
                q4.decode_tile(kernel, 0, &mut buf);
                for pair in 1..=kernel.xrows() {
                    let (mut a, mut b) = ([[0f32; TILE]; WIDE_XROWS], [[0f32; TILE]; WIDE_XROWS]);
                    kernel.dot_tile(&buf, cols, &x[..pair * cols], pair, &mut a);
                    Kernel::Portable.dot_tile(&buf, cols, &x[..pair * cols], pair, &mut b);
                    assert_eq!(a, b, "{kernel:?} and the portable path disagree ({rows}×{cols}, {pair} rows)");
                    assert!(a[..pair].iter().flatten().all(|v| *v != 0.0), "{kernel:?} left a result unwritten ({pair} rows)");
                }
            }
        }
    }
}
