//! f32 matrix products for training on AVX2 + FMA CPUs: `dst = [dst +] alpha · a·b`.
//!
//! Why our own: on the 2-core Zen 3 machines this project runs on, the `gemm` crate (candle's
//! CPU matmul) and PyTorch's MKL both run the students' projection shapes well below the
//! cores' FMA peak, on one thread and on two (docs/performance.md has the numbers). This is the
//! classic BLIS layout, which gets much closer: operands packed into cache-sized blocks (B:
//! KC × NC in L3, A: MC × KC in L2, one B micro-panel KC × 16 in L1), a 6 × 16 register tile of
//! 12 accumulators, and the work split into one contiguous part per thread with no
//! synchronisation inside a product.
//!
//! Every output element is the sequential fused sum over k (in blocks of KC, each added to the
//! element in order), whatever its position, the tile it falls in or the thread count: a row's
//! result does not depend on the other rows (prefill of a prompt alone and in a batch, or from
//! a shared prefix, give the same bits).
//!
//! Without AVX2 + FMA, and with AVX-512 (whose 512-bit kernels the `gemm` crate has), the
//! `gemm` crate does the work (one binary runs on any x86-64); see [`own_kernel`]. The CPU's
//! features come from `simd.rs`.

use super::simd::{avx2_fma, avx512f, for_each_part, Scratch, SharedOut};

/// A matrix operand: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Operand<'a> {
    pub(crate) fn new(data: &'a [f32], rs: usize, cs: usize) -> Operand<'a> {
        Operand { data, rs, cs }
    }
    /// Panics unless every element of a rows × cols view lies inside `data`.
    pub(crate) fn check(&self, rows: usize, cols: usize, what: &str) {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len(),
            "sgemm: {what} ({rows} x {cols}, strides {}, {}) outside its {} elements",
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// Rows of the register tile (6 × 16 = 12 accumulators + 2 B vectors + 1 broadcast A of the 16
/// ymm registers).
const MR: usize = 6;
const NR: usize = 16;
/// Block sizes (BLIS's for Zen): KC × NR of B stays in L1, MC × KC of A in L2, KC × NC of B in L3.
/// k is cut into equal blocks of at most KC (576 → 2 × 288, not 256 + 256 + 64): each block
/// reads and writes dst once more.
const KC: usize = 320;
const MC: usize = 144;
const NC: usize = 4080;
/// Below this many multiply-adds one thread does the whole product (a rayon hand-off would cost
/// about as much as the work it shares).
const PARALLEL_MIN: usize = 1 << 20;

/// `dst = [dst +] alpha · a·b` for a (m × k), b (k × n), dst (m × n, row stride `dst_rs`,
/// elements contiguous in a row), on up to `threads` of rayon's threads. `accumulate: false`
/// overwrites dst (its old values are never read, NaN included).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand, alpha: f32, threads: usize) {
    sgemm_on(own_kernel(), m, n, k, dst, dst_rs, accumulate, a, b, alpha, threads)
}

/// [`sgemm`] on cotlab's kernel (`own`, where the CPU has AVX2 + FMA) or the `gemm` crate
/// (also `cotlab bench gemm`'s cotlab side, which names the kernel).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_on(
    own: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    alpha: f32,
    threads: usize,
) {
    a.check(m, k, "a");
    b.check(k, n, "b");
    Operand::new(dst, dst_rs, 1).check(m, n, "dst");
    if m == 0 || n == 0 {
        return;
    }
    if !(own && avx2_fma()) {
        let par = if threads > 1 && m * n * k >= PARALLEL_MIN { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        return gemm_crate(m, n, k, dst, dst_rs, accumulate, a, b, alpha, par);
    }
    // SAFETY: AVX2 + FMA are there; the operands were checked above.
    unsafe { sgemm_own(m, n, k, dst, dst_rs, accumulate, a, b, alpha, threads) }
}

/// [`sgemm`] on cotlab's kernel, operands checked by the caller.
///
/// # Safety
/// The CPU has AVX2 and FMA ([`avx2_fma`]), and every element the strides reach lies inside its
/// slice.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_own(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand, alpha: f32, threads: usize) {
    let c = SharedOut(dst.as_mut_ptr());
    let job = Job { k, a: a.data.as_ptr(), a_rs: a.rs, a_cs: a.cs, b: b.data.as_ptr(), b_rs: b.rs, b_cs: b.cs, c_rs: dst_rs, accumulate, alpha };
    let parts = if m * n * k >= PARALLEL_MIN { threads.max(1) } else { 1 };
    // One contiguous part per thread, in whole tiles. Each thread packs the B columns of its
    // part and the A rows of its part (none when A is row-major: read in place), so a split by
    // columns packs nothing twice for a row-major A; otherwise split the longer side, packing
    // the smaller operand twice.
    let by_columns = if a.cs == 1 { n.div_ceil(NR) >= 2 * parts } else { n > m };
    let (along_rows, len, unit) = if by_columns { (false, n, NR) } else { (true, m, MR) };
    for_each_part(len, unit, parts, |lo, hi| {
        let c = &c;
        // SAFETY: the parts write disjoint rows (or columns) of dst, all checked in bounds above.
        unsafe {
            if along_rows {
                job.run(hi - lo, n, c.0.add(lo * dst_rs), lo, 0);
            } else {
                job.run(m, hi - lo, c.0.add(lo), 0, lo);
            }
        }
    });
}

/// [`sgemm`] through the `gemm` crate (candle's CPU matmul), for CPUs without AVX2; operands
/// checked by the caller.
#[allow(clippy::too_many_arguments)]
fn gemm_crate(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand, alpha: f32, par: gemm::Parallelism) {
    if k == 0 {
        // An empty sum: what every path gives, stated here rather than left to the crate
        // (callers hand over output buffers they never zeroed).
        if !accumulate {
            dst.chunks_mut(dst_rs).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: every element the strides reach was checked to lie inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

/// [`sgemm`] through the `gemm` crate on `par` whatever the product's size, as candle's CPU
/// matmul runs it: `cotlab bench gemm`'s baseline.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_gemm_crate(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    alpha: f32,
    par: gemm::Parallelism,
) {
    a.check(m, k, "a");
    b.check(k, n, "b");
    Operand::new(dst, dst_rs, 1).check(m, n, "dst");
    if m == 0 || n == 0 {
        return;
    }
    gemm_crate(m, n, k, dst, dst_rs, accumulate, a, b, alpha, par)
}

/// Whether the training GEMMs run on cotlab's kernel: wherever it can run, except on CPUs with
/// AVX-512, where the `gemm` crate's 512-bit kernels keep the work: faster fine-tuning on Zen 5
/// than this 256-bit tile, and on Zen 4 (a 512-bit FMA as two 256-bit halves) level product
/// for product in `cotlab bench gemm` yet a slower SFT job on this tile (docs/performance.md).
pub fn own_kernel() -> bool {
    avx2_fma() && !avx512f()
}

/// One product's operands as raw parts (shared by the threads: read only).
#[derive(Clone, Copy)]
struct Job {
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    c_rs: usize,
    accumulate: bool,
    alpha: f32,
}
// SAFETY: the operands are only read while `sgemm` borrows them.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

thread_local! {
    static PACKED: std::cell::RefCell<(Scratch<f32>, Scratch<f32>)> = const { std::cell::RefCell::new((Scratch(Vec::new()), Scratch(Vec::new()))) };
}

impl Job {
    /// The m × n block of dst at `c` whose first row is row `i0` of a and first column column
    /// `j0` of b, on this thread.
    unsafe fn run(&self, m: usize, n: usize, c: *mut f32, i0: usize, j0: usize) {
        PACKED.with_borrow_mut(|(pa, pb)| {
            let k = self.k;
            if k == 0 {
                if !self.accumulate {
                    for i in 0..m {
                        std::ptr::write_bytes(c.add(i * self.c_rs), 0, n);
                    }
                }
                return;
            }
            let kb = k.div_ceil(k.div_ceil(KC));
            let ap = pa.get(MC * kb);
            let bp = pb.get(kb * NC.min(n.next_multiple_of(NR)));
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(kb) {
                    let kc = kb.min(k - pc);
                    pack_b(kc, nc, self.b.add(pc * self.b_rs + (j0 + jc) * self.b_cs), self.b_rs, self.b_cs, bp);
                    let overwrite = pc == 0 && !self.accumulate;
                    for ic in (0..m).step_by(MC) {
                        let mc = MC.min(m - ic);
                        let a = self.a.add((i0 + ic) * self.a_rs + pc * self.a_cs);
                        // A row-major: the kernel broadcasts straight from its rows (packing them
                        // cost a noticeable share of a product); otherwise packed into panels.
                        let direct = self.a_cs == 1;
                        if !direct {
                            pack_a(mc, kc, a, self.a_rs, self.a_cs, ap);
                        }
                        for jr in (0..nc).step_by(NR) {
                            for ir in (0..mc).step_by(MR) {
                                let tile = c.add((ic + ir) * self.c_rs + jc + jr);
                                let (mr, nr, b) = (MR.min(mc - ir), NR.min(nc - jr), bp.add(jr * kc));
                                if direct {
                                    kernel::<true>(kc, a.add(ir * self.a_rs), self.a_rs, b, tile, self.c_rs, self.alpha, overwrite, mr, nr);
                                } else {
                                    kernel::<false>(kc, ap.add(ir * kc), MR, b, tile, self.c_rs, self.alpha, overwrite, mr, nr);
                                }
                            }
                        }
                    }
                }
            }
        })
    }
}

/// A (mc × kc, not row-major) into micro-panels of MR rows: panel r holds, for each p, rows
/// r·MR..r·MR+MR of column p (zeros past mc).
unsafe fn pack_a(mc: usize, kc: usize, a: *const f32, rs: usize, cs: usize, out: *mut f32) {
    for r in (0..mc).step_by(MR) {
        let rows = MR.min(mc - r);
        let panel = out.add(r * kc);
        for p in 0..kc {
            let src = a.add(r * rs + p * cs);
            for i in 0..MR {
                *panel.add(p * MR + i) = if i < rows { *src.add(i * rs) } else { 0.0 };
            }
        }
    }
}

/// B (kc × nc) into micro-panels of NR columns: panel j holds, for each p, columns
/// j·NR..j·NR+NR of row p (zeros past nc).
unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: usize, cs: usize, out: *mut f32) {
    for j in (0..nc).step_by(NR) {
        let cols = NR.min(nc - j);
        let panel = out.add(j * kc);
        if cols == NR && cs == 1 {
            for p in 0..kc {
                *(panel.add(p * NR) as *mut [f32; NR]) = *(b.add(p * rs + j) as *const [f32; NR]);
            }
        } else if cols == NR && rs == 1 {
            // Column-major B (a transposed weight): 8 × 8 blocks turned with AVX.
            let whole = kc - kc % 8;
            for q in (0..NR).step_by(8) {
                for p in (0..whole).step_by(8) {
                    transpose8(b.add((j + q) * cs + p), cs, panel.add(p * NR + q), NR);
                }
            }
            for p in whole..kc {
                for q in 0..NR {
                    *panel.add(p * NR + q) = *b.add((j + q) * cs + p);
                }
            }
        } else {
            for p in 0..kc {
                for q in 0..NR {
                    *panel.add(p * NR + q) = if q < cols { *b.add(p * rs + (j + q) * cs) } else { 0.0 };
                }
            }
        }
    }
}

/// dst[p · dst_rs + q] = src[q · src_rs + p] for an 8 × 8 block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(src: *const f32, src_rs: usize, dst: *mut f32, dst_rs: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_rs)));
    let t: [__m256; 8] = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u: [__m256; 8] = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for i in 0..4 {
        _mm256_storeu_ps(dst.add(i * dst_rs), _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]));
        _mm256_storeu_ps(dst.add((i + 4) * dst_rs), _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose8(_: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("sgemm's packing runs only where avx2_fma() holds")
}

/// The register tile: c (mr × nr of it, row stride rs) = [c +] alpha · Σ_p a_p ⊗ b_p, b from
/// its packed panel, a from its packed panel (`DIRECT = false`, a_rs = MR) or straight from
/// row-major rows a_rs apart (`DIRECT`; rows past mr repeat the last one, never stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const DIRECT: bool>(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    c: *mut f32,
    rs: usize,
    alpha: f32,
    overwrite: bool,
    mr: usize,
    nr: usize,
) {
    use std::arch::x86_64::*;
    // The tile's rows of dst are fetched while the sums run (they are far apart in memory: a
    // store missing the cache would stall the next tile).
    for i in 0..mr {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * rs + nr - 1) as *const i8);
    }
    let rows: [*const f32; MR] = std::array::from_fn(|i| if DIRECT { a.add(i.min(mr - 1) * a_rs) } else { a.add(i) });
    // Elements between a row's values at p and p + 1.
    let ap = if DIRECT { 1 } else { MR };
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let step = |acc: &mut [[__m256; 2]; MR], o: usize, b: *const f32| {
        let b0 = _mm256_load_ps(b);
        let b1 = _mm256_load_ps(b.add(8));
        for (row, r) in acc.iter_mut().zip(rows) {
            let ai = _mm256_broadcast_ss(&*r.add(o));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    };
    let (mut o, mut b) = (0, b);
    for _ in 0..kc / 4 {
        for u in 0..4 {
            step(&mut acc, o + u * ap, b.add(u * NR));
        }
        o += 4 * ap;
        b = b.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step(&mut acc, o, b);
        o += ap;
        b = b.add(NR);
    }
    let va = _mm256_set1_ps(alpha);
    if mr == MR && nr == NR {
        for (i, row) in acc.iter().enumerate() {
            let ci = c.add(i * rs);
            for (h, &v) in row.iter().enumerate() {
                let old = if overwrite { _mm256_setzero_ps() } else { _mm256_loadu_ps(ci.add(8 * h)) };
                _mm256_storeu_ps(ci.add(8 * h), _mm256_fmadd_ps(va, v, old));
            }
        }
        return;
    }
    // An edge tile: the same fused alpha · sum + old, element by element.
    let mut t = [0f32; MR * NR];
    for (i, row) in acc.iter().enumerate() {
        _mm256_storeu_ps(t.as_mut_ptr().add(i * NR), row[0]);
        _mm256_storeu_ps(t.as_mut_ptr().add(i * NR + 8), row[1]);
    }
    for i in 0..mr {
        for j in 0..nr {
            let e = c.add(i * rs + j);
            let old = if overwrite { 0.0 } else { *e };
            *e = alpha.mul_add(t[i * NR + j], old);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const DIRECT: bool>(_: usize, _: *const f32, _: usize, _: *const f32, _: *mut f32, _: usize, _: f32, _: bool, _: usize, _: usize) {
    unreachable!("sgemm's kernel runs only where avx2_fma() holds")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as rand;

    /// Every layout (row- and column-major operands), edge sizes around the tile and block
    /// sizes, accumulate and alpha, 1 and 2 threads: within f32 rounding of an f64 reference,
    /// and the same bits for any thread count and for a row computed alone.
    #[test]
    fn matches_f64_reference_for_every_layout_and_edge() {
        let sizes = [(1, 1, 1), (5, 17, 3), (6, 16, 256), (7, 33, 257), (13, 40, 600), (150, 20, 70), (20, 4100, 9), (145, 31, 513)];
        // Our kernel wherever it can run (whatever `sgemm` picks on this CPU) and the gemm crate.
        let kernels: &[bool] = if avx2_fma() { &[true, false] } else { &[false] };
        let cases: Vec<(bool, f32, bool)> =
            [(false, 1.0f32), (true, 0.125)].iter().flat_map(|&(acc, alpha)| kernels.iter().map(move |&own| (acc, alpha, own))).collect();
        for &(m, n, k) in &sizes {
            for (at, bt) in [(false, false), (true, false), (false, true), (true, true)] {
                for &(accumulate, alpha, own) in &cases {
                    let (a, b, c0) = (rand(m * k, 1), rand(k * n, 2), rand(m * n, 3));
                    let ao = if at { Operand::new(&a, 1, m) } else { Operand::new(&a, k, 1) };
                    let bo = if bt { Operand::new(&b, 1, k) } else { Operand::new(&b, n, 1) };
                    let mut outs = Vec::new();
                    for threads in [1, 2, 3] {
                        let mut c = c0.clone();
                        sgemm_on(own, m, n, k, &mut c, n, accumulate, ao, bo, alpha, threads);
                        outs.push(c);
                    }
                    // Our kernel's promise (the gemm crate makes none).
                    if own {
                        assert_eq!(outs[0], outs[1], "{m}x{n}x{k}: thread count changed bits");
                        assert_eq!(outs[0], outs[2], "{m}x{n}x{k}: thread count changed bits");
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = 0f64;
                            let mut mag = 0f64;
                            for p in 0..k {
                                let x = ao.data[i * ao.rs + p * ao.cs] as f64 * bo.data[p * bo.rs + j * bo.cs] as f64;
                                s += x;
                                mag += x.abs();
                            }
                            let want = alpha as f64 * s + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                            let got = outs[0][i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (mag + 1.0),
                                "{m}x{n}x{k} at={at} bt={bt} acc={accumulate} own={own} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                    // Row i alone (a 1-row product) gives the bits it had in the whole product.
                    let i = m - 1;
                    let mut row = c0[i * n..(i + 1) * n].to_vec();
                    let a_row = Operand::new(&a[i * ao.rs..], ao.rs, ao.cs);
                    sgemm_on(own, 1, n, k, &mut row, n, accumulate, a_row, bo, alpha, 1);
                    if own {
                        assert_eq!(row, outs[0][i * n..(i + 1) * n], "{m}x{n}x{k}: a row alone differs");
                    }
                }
            }
        }
    }

    #[test]
    fn overwrite_ignores_old_values_and_k_zero_clears() {
        let (a, b) = (rand(6 * 4, 4), rand(4 * 16, 5));
        let mut c = vec![f32::NAN; 6 * 16];
        sgemm(6, 16, 4, &mut c, 16, false, Operand::new(&a, 4, 1), Operand::new(&b, 16, 1), 1.0, 1);
        assert!(c.iter().all(|v| v.is_finite()));
        let mut c = vec![f32::NAN; 6 * 16];
        sgemm(6, 16, 0, &mut c, 16, false, Operand::new(&a, 4, 1), Operand::new(&b, 16, 1), 1.0, 1);
        assert!(c.iter().all(|&v| v == 0.0));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn operand_out_of_bounds_panics_before_any_read() {
        let a = vec![0f32; 10];
        let mut c = vec![0f32; 4];
        sgemm(2, 2, 6, &mut c, 2, false, Operand::new(&a, 6, 1), Operand::new(&a, 2, 1), 1.0, 1);
    }
}
