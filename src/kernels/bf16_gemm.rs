//! bf16 matrix products for training on the CPU (`dtype: bf16`): `dst = [dst +] a·b` for f32
//! operands in memory, each value rounded to bf16 as it is packed (to nearest even, subnormals
//! flushed: [`to_bf16`]), products accumulated in f32 — the matmul of PyTorch's bf16 autocast,
//! with f32 inputs and outputs so everything around it (norms, softmax, residual stream,
//! gradients, AdamW state) stays f32.
//!
//! Layout: BLIS blocks as `sgemm` (k in blocks of [`KC`], columns of [`NC`], rows of [`MC`]); A
//! packed row-major in bf16 (rows and k padded to 32 with zeros), B packed as k-pairs: for
//! each pair of k values, 32 columns of 32-bit words (even k in the low half). That is both what
//! `vdpbf16ps` reads (a broadcast A pair against 16 columns' pairs) and AMX's tile layout (A
//! rows of 32 values, B "VNNI" rows of 16 column pairs).
//!
//! Paths ([`Path`]): AMX-BF16 (`tdpbf16ps` on 32 × 32 blocks of four 16 × 16 tiles) where the
//! CPU has it and Linux grants the tile state, AVX512-BF16 (`vdpbf16ps`, an 8 × 32 register
//! tile) where the CPU has that, else the f32 `sgemm` (no rounding: f32 training). A portable
//! path with `vdpbf16ps`'s exact semantics is the reference the tests force.
//!
//! Invariants: on the `vdpbf16ps` and portable paths each output element is, per block of KC
//! k-values, one f32 sum started at zero (per k pair: the odd product, then the even one, each
//! fused into the sum, subnormal results flushed, as `vdpbf16ps`) and then added to dst once:
//! the same bits on both (tested), whatever the other rows. AMX sums 32 k-values per
//! instruction in the hardware's order, a whole 32 × 32 tile straight into dst, a partial one
//! through a buffer: within f32 rounding of the others (tested). No path's output depends on
//! the part a thread gets or the thread count (parts are whole tiles, blocks are fixed).

use super::bf16::to_bf16;
use super::sgemm::{sgemm, Operand};
use super::simd::{for_each_part, Scratch, SharedOut};

/// Columns of a register tile: 2 × 16 f32 lanes (two AMX tiles of 16 columns).
const NR: usize = 32;
/// Rows the A block is padded to (an AMX block's rows; a multiple of every path's rows).
const ROWS_PAD: usize = 32;
/// k values per block, a multiple of 32 (one AMX A-tile row).
const KC: usize = 256;
/// Rows of A per packed block (bf16: MC × KC × 2 bytes in L2).
const MC: usize = 128;
/// Columns of B per packed block (KC × NC × 2 bytes in L2).
const NC: usize = 2048;
/// Below this many multiply-adds one thread does the whole product.
const PARALLEL_MIN: usize = 1 << 20;

/// Which kernel multiplies (see the module head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// `vdpbf16ps`'s semantics in scalar code: the reference (the tests force it).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
    /// No bf16 instructions: the f32 `sgemm`, operands not rounded.
    F32,
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    Avx512Bf16,
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Path {
    /// AMX, else AVX512-BF16, else f32.
    pub(crate) fn detect() -> Path {
        #[cfg(target_arch = "x86_64")]
        if super::simd::amx_bf16() {
            return Path::Amx;
        }
        #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
        if super::simd::avx512_bf16() {
            return Path::Avx512Bf16;
        }
        Path::F32
    }

    /// The name `cotlab bench` prints.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Path::Portable => "portable bf16",
            Path::F32 => "f32 (no bf16 instructions on this CPU)",
            #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
            Path::Avx512Bf16 => "AVX512-BF16 vdpbf16ps",
            #[cfg(target_arch = "x86_64")]
            Path::Amx => "AMX-BF16 tdpbf16ps",
        }
    }

    /// Rows of this path's register tile.
    fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Amx => 32,
            _ => 8,
        }
    }

    /// Every path this CPU can run, the portable one first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Path> {
        let mut p = vec![Path::Portable];
        #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
        if super::simd::avx512_bf16() {
            p.push(Path::Avx512Bf16);
        }
        #[cfg(target_arch = "x86_64")]
        if super::simd::amx_bf16() {
            p.push(Path::Amx);
        }
        p
    }
}

/// The kernel [`bf16_gemm`] runs on this CPU, as `cotlab bench` names it; `None` where it falls
/// back to f32 products (no AVX512-BF16 or AMX-BF16).
pub fn kernel() -> Option<&'static str> {
    let p = Path::detect();
    (p != Path::F32).then(|| p.name())
}

/// `dst = [dst +] a·b` for a (m × k), b (k × n), dst (m × n, row stride `dst_rs`) on this CPU's
/// path ([`Path::detect`]), on up to `threads` of rayon's threads. `accumulate: false`
/// overwrites dst (its old values never read).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bf16_gemm(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand, threads: usize) {
    bf16_gemm_on(Path::detect(), m, n, k, dst, dst_rs, accumulate, a, b, threads)
}

/// [`bf16_gemm`] on `path` (which the CPU must have: see [`Path::available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bf16_gemm_on(path: Path, m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand, threads: usize) {
    if path == Path::F32 {
        return sgemm(m, n, k, dst, dst_rs, accumulate, a, b, 1.0, threads);
    }
    a.check(m, k, "a");
    b.check(k, n, "b");
    Operand::new(dst, dst_rs, 1).check(m, n, "dst");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let job = Job { path, k, a: a.data.as_ptr(), a_rs: a.rs, a_cs: a.cs, b: b.data.as_ptr(), b_rs: b.rs, b_cs: b.cs, c_rs: dst_rs, accumulate };
    let parts = if m * n * k >= PARALLEL_MIN { threads.max(1) } else { 1 };
    let c = SharedOut(dst.as_mut_ptr());
    if parts == 1 {
        // SAFETY: the whole of dst, checked in bounds above.
        unsafe { job.run(m, n, c.0, 0, 0, None) };
        return;
    }
    // B is packed once, by all threads, before any multiplies: when each part packed what it
    // needed, a part splitting rows packed the whole of B (a weight, for most products) again.
    let packed = PackedB::pack(&job, n, parts);
    // Split by rows, so each row of A is packed by one part, unless there are too few rows
    // for the parts to get even shares.
    let by_columns = m.div_ceil(ROWS_PAD) < 2 * parts && n > m;
    let (len, unit) = if by_columns { (n, NR) } else { (m, ROWS_PAD) };
    for_each_part(len, unit, parts, |lo, hi| {
        let c = &c;
        // SAFETY: the parts write disjoint columns (or rows) of dst, all checked in bounds above.
        unsafe {
            if by_columns {
                job.run(m, hi - lo, c.0.add(lo), 0, lo, Some(&packed));
            } else {
                job.run(hi - lo, n, c.0.add(lo * dst_rs), lo, 0, Some(&packed));
            }
        }
    });
}

/// The whole of B packed for [`Path::tile`]: per block of [`KC`] k-values, every panel of
/// [`NR`] columns as [`pack_b`] writes them, so a panel's address follows from its first column
/// whatever part of the columns a thread multiplies.
struct PackedB {
    words: Vec<u32>,
    /// Offset of the first (64-byte aligned) word.
    start: usize,
    panels: usize,
}
// SAFETY: read-only once packed.
unsafe impl Sync for PackedB {}

impl PackedB {
    /// Packs `job`'s B (k × n) on `parts` threads, each a range of panels.
    fn pack(job: &Job, n: usize, parts: usize) -> PackedB {
        let k = job.k;
        let panels = n.div_ceil(NR);
        let len = panels * NR * k.next_multiple_of(32) / 2;
        // Every word is written by `pack_b` (zeros past k and n included) before it is read.
        let mut words: Vec<u32> = Vec::with_capacity(len + 16);
        // SAFETY: u32 has no invalid values and `pack_b` writes all `len` words before any read.
        #[allow(clippy::uninit_vec)]
        unsafe {
            words.set_len(len + 16)
        };
        let start = words.as_ptr().align_offset(64);
        let out = SharedOut(words.as_mut_ptr());
        let packed = PackedB { words, start, panels };
        for_each_part(n, NR, parts, |lo, hi| {
            let out = &out;
            for pc in (0..k).step_by(KC) {
                let (kc, kcp) = (KC.min(k - pc), KC.min(k - pc).next_multiple_of(32));
                // SAFETY: panels lo/NR.. of block pc, this part's alone, inside `len` (the
                // vector's buffer, which moving the vector into `packed` did not move); B's
                // columns lo..hi, rows pc..pc + kc are in bounds (checked by the caller).
                unsafe {
                    let dst = out.0.add(packed.start + packed.block(pc) + lo / NR * kcp / 2 * NR);
                    pack_b(kc, kcp, hi - lo, job.b.add(pc * job.b_rs + lo * job.b_cs), job.b_rs, job.b_cs, dst);
                }
            }
        });
        packed
    }

    /// Word offset of k-block `pc` (a multiple of KC): every block before it is full.
    fn block(&self, pc: usize) -> usize {
        pc / KC * self.panels * NR * KC / 2
    }

    /// The packed panel holding column `j` (a multiple of NR) of k-block `pc`.
    fn panel(&self, pc: usize, kcp: usize, j: usize) -> *const u32 {
        debug_assert!(j % NR == 0 && j / NR < self.panels);
        // SAFETY: inside the packed words (see `pack`).
        unsafe { self.words.as_ptr().add(self.start + self.block(pc) + j / NR * kcp / 2 * NR) }
    }
}

/// One product's operands as raw parts (read only while `bf16_gemm_on` borrows them).
#[derive(Clone, Copy)]
struct Job {
    path: Path,
    k: usize,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    c_rs: usize,
    accumulate: bool,
}
// SAFETY: see the struct's doc.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

thread_local! {
    static PACKED: std::cell::RefCell<(Scratch<u16>, Scratch<u32>)> = const { std::cell::RefCell::new((Scratch(Vec::new()), Scratch(Vec::new()))) };
}

impl Job {
    /// The m × n block of dst at `c` whose first row is row `i0` of a and first column column
    /// `j0` of b, on this thread.
    /// `packed`: B already packed (the columns `j0..` of it are read), else packed here.
    unsafe fn run(&self, m: usize, n: usize, c: *mut f32, i0: usize, j0: usize, packed: Option<&PackedB>) {
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Amx {
            amx::configure();
        }
        PACKED.with_borrow_mut(|(pa, pb)| {
            let k = self.k;
            let kcp_max = KC.min(k.next_multiple_of(32));
            let ap = pa.get(MC * kcp_max);
            let bp = if packed.is_none() { pb.get(kcp_max / 2 * NC.min(n.next_multiple_of(NR))) } else { std::ptr::null_mut() };
            let mr = self.path.rows();
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    let kcp = kc.next_multiple_of(32);
                    let block = match packed {
                        Some(p) => p.panel(pc, kcp, j0 + jc),
                        None => {
                            pack_b(kc, kcp, nc, self.b.add(pc * self.b_rs + (j0 + jc) * self.b_cs), self.b_rs, self.b_cs, bp);
                            bp as *const u32
                        }
                    };
                    let overwrite = pc == 0 && !self.accumulate;
                    for ic in (0..m).step_by(MC) {
                        let mc = MC.min(m - ic);
                        pack_a(mc, kc, kcp, self.a.add((i0 + ic) * self.a_rs + pc * self.a_cs), self.a_rs, self.a_cs, ap);
                        for jr in (0..nc).step_by(NR) {
                            let panel = block.add(jr / NR * (kcp / 2) * NR);
                            for ir in (0..mc).step_by(mr) {
                                let out =
                                    Out { c: c.add((ic + ir) * self.c_rs + jc + jr), rs: self.c_rs, overwrite, rows: mr.min(mc - ir), cols: NR.min(nc - jr) };
                                self.path.tile(kcp, ap.add(ir * kcp), panel, out);
                            }
                        }
                    }
                }
            }
        });
        #[cfg(target_arch = "x86_64")]
        if self.path == Path::Amx {
            amx::release();
        }
    }
}

/// `n` contiguous f32 at `src` rounded to bf16 at `dst` ([`to_bf16`]'s bits: `vcvtneps2bf16`
/// rounds to nearest even and flushes subnormals the same way, tested), 16 at a time where the
/// CPU has AVX512-BF16.
unsafe fn round_run(src: *const f32, n: usize, dst: *mut u16) {
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    if super::simd::avx512_bf16() {
        done = n - n % 16;
        avx512::round(src, done, dst);
    }
    for i in done..n {
        *dst.add(i) = to_bf16(*src.add(i));
    }
}

/// Asks for the cache lines of `n` f32 at `src` ahead of their use. The packers read many short
/// runs (a row's KC values, a column's MC) a long stride apart, a pattern the hardware
/// prefetchers do not follow, so each run would otherwise wait on memory line by line.
#[inline(always)]
fn prefetch_run(src: *const f32, n: usize) {
    super::simd::prefetch(src as *const u8, n * 4);
}

/// How many runs ahead the packers prefetch.
const AHEAD: usize = 4;

/// `n` values `stride` apart from `src` rounded into `run`: [`round_run`] when they are
/// contiguous, asking for `next` (the run a few ahead) to be fetched meanwhile; one by one
/// through `to_bf16` otherwise.
unsafe fn round_strided(src: *const f32, n: usize, stride: usize, next: Option<*const f32>, run: &mut [u16]) {
    if stride == 1 {
        if let Some(next) = next {
            prefetch_run(next, n);
        }
        round_run(src, n, run.as_mut_ptr());
    } else {
        for (i, r) in run.iter_mut().enumerate().take(n) {
            *r = to_bf16(*src.add(i * stride));
        }
    }
}

/// Scratch for one contiguous run of a strided operand.
const RUN: usize = if KC > MC { KC } else { MC };

/// A (mc × kc, element (i, p) at `a[i·rs + p·cs]`) into bf16 rows of `kcp` values, rows padded
/// with zeros to a multiple of [`ROWS_PAD`], k to `kcp`.
unsafe fn pack_a(mc: usize, kc: usize, kcp: usize, a: *const f32, rs: usize, cs: usize, out: *mut u16) {
    let rows = mc.next_multiple_of(ROWS_PAD);
    if cs == 1 {
        for i in 0..mc {
            if i + AHEAD < mc {
                prefetch_run(a.wrapping_add((i + AHEAD) * rs), kc);
            }
            round_run(a.add(i * rs), kc, out.add(i * kcp));
            std::ptr::write_bytes(out.add(i * kcp + kc), 0, kcp - kc);
        }
        std::ptr::write_bytes(out.add(mc * kcp), 0, (rows - mc) * kcp);
        return;
    }
    std::ptr::write_bytes(out, 0, rows * kcp);
    // Column-major (gᵀ in gᵀ·x): whole 16 × 16 blocks transposed in registers.
    let (mut mv, mut kv) = (0, 0);
    #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
    if rs == 1 && super::simd::avx512_bf16() && is_x86_feature_detected!("avx512bw") {
        (mv, kv) = (mc - mc % 16, kc - kc % 16);
        avx512::pack_columns(mv, kv, kcp, a, cs, out);
    }
    if mv == mc && kv == kc {
        return;
    }
    let mut run = [0u16; RUN];
    for p in 0..kc {
        if p < kv {
            // Rows below mv of this column are packed already.
            for i in mv..mc {
                *out.add(i * kcp + p) = to_bf16(*a.add(i * rs + p * cs));
            }
            continue;
        }
        // Column p of A as one run (contiguous for gᵀ, past its whole blocks).
        round_strided(a.add(p * cs), mc, rs, (p + AHEAD < kc).then(|| a.wrapping_add((p + AHEAD) * cs)), &mut run);
        for (i, &r) in run.iter().enumerate().take(mc) {
            *out.add(i * kcp + p) = r;
        }
    }
}

/// B (kc × nc) into panels of [`NR`] columns: panel j holds, for each pair q of k values, the
/// words `bf16(b[2q, c]) | bf16(b[2q + 1, c]) << 16` of its 32 columns (zeros past kc and nc).
unsafe fn pack_b(kc: usize, kcp: usize, nc: usize, b: *const f32, rs: usize, cs: usize, out: *mut u32) {
    let pairs = kcp / 2;
    std::ptr::write_bytes(out, 0, nc.div_ceil(NR) * pairs * NR);
    let mut run = [0u16; RUN];
    if cs == 1 {
        // Row-major (W in g·W, x in gᵀ·x): rows 2q and 2q + 1 rounded as runs, then interleaved.
        let mut odd = [0u16; NR];
        for q in 0..kc.div_ceil(2) {
            for j0 in (0..nc).step_by(NR) {
                let (cols, panel) = (NR.min(nc - j0), out.add(j0 / NR * pairs * NR + q * NR));
                round_run(b.add(2 * q * rs + j0), cols, run.as_mut_ptr());
                if 2 * q + 1 < kc {
                    round_run(b.add((2 * q + 1) * rs + j0), cols, odd.as_mut_ptr());
                } else {
                    odd = [0; NR];
                }
                for c in 0..cols {
                    *panel.add(c) = run[c] as u32 | (odd[c] as u32) << 16;
                }
            }
        }
        return;
    }
    for j in 0..nc {
        let panel = out.add(j / NR * pairs * NR + j % NR);
        // Column-major (Wᵀ in x·Wᵀ): a column's k values are one run, its pairs adjacent.
        round_strided(b.add(j * cs), kc, rs, (j + AHEAD < nc).then(|| b.wrapping_add((j + AHEAD) * cs)), &mut run);
        run[kc..kcp].fill(0);
        for q in 0..pairs {
            *panel.add(q * NR) = run[2 * q] as u32 | (run[2 * q + 1] as u32) << 16;
        }
    }
}

/// Where a register tile's sums go: `rows` × `cols` of dst at `c` (row stride `rs`), overwritten
/// or added to.
#[derive(Clone, Copy)]
struct Out {
    c: *mut f32,
    rs: usize,
    overwrite: bool,
    rows: usize,
    cols: usize,
}

impl Out {
    /// Stores the first `rows` × `cols` of a tile's sums `t`: `dst = t` or `dst = dst + t`.
    unsafe fn store(self, t: &[[f32; NR]]) {
        for (i, row) in t.iter().enumerate().take(self.rows) {
            let d = std::slice::from_raw_parts_mut(self.c.add(i * self.rs), self.cols);
            if self.overwrite {
                d.copy_from_slice(&row[..self.cols]);
            } else {
                for (d, v) in d.iter_mut().zip(row) {
                    *d += v;
                }
            }
        }
    }
}

impl Path {
    /// dst [+]= Σ_p a[i, p]·b[p, j] over `kcp` values for the path's rows (`a`: rows `kcp`
    /// apart; `b`: a packed panel), the part `out` names.
    unsafe fn tile(self, kcp: usize, a: *const u16, b: *const u32, out: Out) {
        match self {
            Path::Portable => portable_tile(kcp, a, b, out),
            Path::F32 => unreachable!("the f32 path runs sgemm"),
            #[cfg(all(target_arch = "x86_64", cotlab_avx512))]
            Path::Avx512Bf16 => avx512::tile(kcp, a, b, out),
            #[cfg(target_arch = "x86_64")]
            Path::Amx => amx::tile(kcp, a, b, out),
        }
    }
}

fn from_bf16(b: u32) -> f32 {
    f32::from_bits(b << 16)
}

/// A subnormal flushed to a signed zero (`vdpbf16ps`'s results).
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0f32.copysign(v)
    } else {
        v
    }
}

/// The reference: 8 rows, `vdpbf16ps` lane by lane (odd product, then even, fused, flushed).
unsafe fn portable_tile(kcp: usize, a: *const u16, b: *const u32, out: Out) {
    let mut t = [[0f32; NR]; 8];
    for (i, row) in t.iter_mut().enumerate() {
        for (j, acc) in row.iter_mut().enumerate() {
            let mut s = 0f32;
            for q in 0..kcp / 2 {
                let (aw, bw) = (*(a.add(i * kcp + 2 * q) as *const u32), *b.add(q * NR + j));
                s = ftz(from_bf16(aw >> 16).mul_add(from_bf16(bw >> 16), s));
                s = ftz(from_bf16(aw & 0xffff).mul_add(from_bf16(bw & 0xffff), s));
            }
            *acc = s;
        }
    }
    out.store(&t);
}

/// Gated on rustc ≥ 1.89 (`cotlab_avx512`), where these intrinsics are stable.
#[cfg(all(target_arch = "x86_64", cotlab_avx512))]
#[allow(clippy::incompatible_msrv)]
mod avx512 {
    use super::{Out, NR};
    use std::arch::x86_64::*;

    /// `n` (a multiple of 16) f32 at `src` to bf16 at `dst` by `vcvtneps2bf16`, which reads a
    /// subnormal as a signed zero: what `to_bf16` gives too, except for the largest subnormals
    /// (magnitude bits from 0x007f_8000), which round up to the smallest normal bf16 there. 16
    /// values holding one of those go through `to_bf16`. (Loss gradients hold many smaller
    /// subnormals: those stay on the vector path.)
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn round(src: *const f32, n: usize, dst: *mut u16) {
        let (magnitude, rounds_up, normal) = (_mm512_set1_epi32(0x7fff_ffff), _mm512_set1_epi32(0x007f_8000), _mm512_set1_epi32(0x0080_0000));
        for i in (0..n).step_by(16) {
            let x = _mm512_loadu_ps(src.add(i));
            let bits = _mm512_and_si512(_mm512_castps_si512(x), magnitude);
            if _mm512_cmplt_epi32_mask(bits, normal) & _mm512_cmpge_epi32_mask(bits, rounds_up) != 0 {
                for j in i..i + 16 {
                    *dst.add(j) = super::to_bf16(*src.add(j));
                }
                continue;
            }
            let v = _mm512_cvtneps_pbh(x);
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(v));
        }
    }

    /// The first `mv` rows × `kv` k-values (multiples of 16) of a column-major A (element
    /// (i, p) at `a[i + p·cs]`) rounded as [`round`] rounds them into bf16 rows `kcp` apart at
    /// `out`, 16 × 16 at a time: 16 k-values' loads of 16 rows, rounded and paired, then three
    /// rounds of two-source permutes turn the 8 pair vectors into 8 vectors of two rows each.
    /// A block holding one of the largest subnormals (see [`round`]) goes through `to_bf16`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_columns(mv: usize, kv: usize, kcp: usize, a: *const f32, cs: usize, out: *mut u16) {
        let (magnitude, rounds_up, normal) = (_mm512_set1_epi32(0x7fff_ffff), _mm512_set1_epi32(0x007f_8000), _mm512_set1_epi32(0x0080_0000));
        // Pairs: word r of the result = bf16 of (row r, k even) | (row r, k odd) << 16.
        let pair = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        // The three permute rounds (see `transpose_round`): indices in registers, and slots.
        let rounds: [[(__m512i, usize); 8]; 3] = std::array::from_fn(|level| {
            std::array::from_fn(|o| {
                let (idx, slot) = transpose_round(level, o / 2, o % 2);
                (_mm512_loadu_si512(idx.as_ptr() as *const _), slot)
            })
        });
        for p0 in (0..kv).step_by(16) {
            for i0 in (0..mv).step_by(16) {
                let mut v = [_mm512_setzero_ps(); 16];
                let mut slow = 0u16;
                for (q, v) in v.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(a.add(i0 + (p0 + q) * cs));
                    let bits = _mm512_and_si512(_mm512_castps_si512(*v), magnitude);
                    slow |= _mm512_cmplt_epi32_mask(bits, normal) & _mm512_cmpge_epi32_mask(bits, rounds_up);
                }
                if slow != 0 {
                    for r in 0..16 {
                        for q in 0..16 {
                            *out.add((i0 + r) * kcp + p0 + q) = super::to_bf16(*a.add(i0 + r + (p0 + q) * cs));
                        }
                    }
                    continue;
                }
                // t[q]: dword r = k-values (p0 + 2q, p0 + 2q + 1) of row i0 + r.
                let mut t: [__m512i; 8] = std::array::from_fn(|q| {
                    let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v[2 * q + 1], v[2 * q]));
                    _mm512_permutexvar_epi16(pair, both)
                });
                for round in &rounds {
                    let mut next = t;
                    for (o, (idx, slot)) in round.iter().enumerate() {
                        let s = o / 2;
                        next[*slot] = _mm512_permutex2var_epi32(t[2 * s], *idx, t[2 * s + 1]);
                    }
                    t = next;
                }
                // t[s] now holds rows i0 + 2s and i0 + 2s + 1, 8 pairs (16 k-values) each.
                for (s, t) in t.iter().enumerate() {
                    _mm256_storeu_si256(out.add((i0 + 2 * s) * kcp + p0) as *mut __m256i, _mm512_castsi512_si256(*t));
                    _mm256_storeu_si256(out.add((i0 + 2 * s + 1) * kcp + p0) as *mut __m256i, _mm512_extracti64x4_epi64::<1>(*t));
                }
            }
        }
    }

    /// Round `level` of [`pack_columns`]'s transpose, output `half` of the pair (t[2s],
    /// t[2s + 1]): the permute indices (source · 16 + element) and the slot the output goes to.
    /// Round 0 takes rows 8·half.. of pair vectors q = 2s, 2s + 1 (element e: row e/2, pair
    /// e%2); round 1 rows 4·half.. of those of 4 pairs (e: row e/4, pair e%4); round 2 rows
    /// 2·half.. of all 8 pairs (e: row e/8, pair e%8): two whole rows. The slots make each
    /// round's sources neighbours, and put rows 2s' and 2s' + 1 in slot s' at the end.
    fn transpose_round(level: usize, s: usize, half: usize) -> ([i32; 16], usize) {
        let idx = std::array::from_fn(|e| {
            let (src, elem) = match level {
                0 => (e % 2, 8 * half + e / 2),
                1 => (e % 4 / 2, 2 * (4 * half + e / 4) + e % 2),
                _ => (e % 8 / 4, 4 * (2 * half + e / 8) + e % 4),
            };
            (src * 16 + elem) as i32
        });
        let slot = match level {
            0 => 4 * half + s,
            1 => (2 * (s / 2) + half) * 2 + s % 2,
            _ => 2 * s + half,
        };
        (idx, slot)
    }

    /// 8 rows × 32 columns: 16 accumulators; per k pair two B loads and one broadcast A pair
    /// per row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile(kcp: usize, a: *const u16, b: *const u32, out: Out) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        let bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
        for q in 0..kcp / 2 {
            let b0 = bh(_mm512_loadu_si512(b.add(q * NR) as *const _));
            let b1 = bh(_mm512_loadu_si512(b.add(q * NR + 16) as *const _));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = bh(_mm512_set1_epi32(*(a.add(i * kcp + 2 * q) as *const i32)));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        if out.rows == 8 && out.cols == NR {
            for (i, row) in acc.iter().enumerate() {
                let d = out.c.add(i * out.rs);
                for (h, &v) in row.iter().enumerate() {
                    let v = if out.overwrite { v } else { _mm512_add_ps(_mm512_loadu_ps(d.add(16 * h)), v) };
                    _mm512_storeu_ps(d.add(16 * h), v);
                }
            }
            return;
        }
        let mut t = [[0f32; NR]; 8];
        for (row, r) in acc.iter().zip(t.iter_mut()) {
            _mm512_storeu_ps(r.as_mut_ptr(), row[0]);
            _mm512_storeu_ps(r.as_mut_ptr().add(16), row[1]);
        }
        out.store(&t);
    }
}

/// AMX-BF16 through `asm!` (the intrinsics are unstable): tiles 0–3 hold a 32 × 32 f32 block
/// (2 × 2 tiles of 16 × 16), 4–5 two 16-row slices of A (32 bf16 each), 6–7 two 16-column
/// slices of B (16 k pairs each). Each thread loads the configuration before its part
/// ([`configure`]) and releases the tiles after ([`release`]).
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{Out, NR, ROWS_PAD};
    use std::arch::asm;

    /// Palette 1, every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    fn config() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Config(c)
    }

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// `simd::amx_bf16()` held (the CPU has AMX and the process may use the tile state).
    pub unsafe fn configure() {
        let c = config();
        asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
    }

    /// Returns the tiles to their initial state (the thread's XSAVE area stays small).
    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// 32 rows × 32 columns over `kcp` (a multiple of 32) k values. A whole tile is summed in
    /// place: the accumulators start from dst (or zero) and are stored back to it; a partial one
    /// goes through a buffer.
    pub unsafe fn tile(kcp: usize, a: *const u16, b: *const u32, out: Out) {
        let whole = out.rows == ROWS_PAD && out.cols == NR;
        if whole && !out.overwrite {
            let c = out.c;
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16),
                c2 = in(reg) c.add(16 * out.rs),
                c3 = in(reg) c.add(16 * out.rs + 16),
                s = in(reg) out.rs * 4,
                options(nostack, readonly),
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        let (a_stride, b_stride) = (kcp * 2, NR * 4);
        for k0 in (0..kcp).step_by(32) {
            let (a0, a1) = (a.add(k0), a.add(16 * kcp + k0));
            let b0 = b.add(k0 / 2 * NR);
            let b1 = b0.add(16);
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack, readonly),
            );
        }
        if whole {
            store(out.c, out.rs);
        } else {
            let mut t = [[0f32; NR]; ROWS_PAD];
            store(t.as_mut_ptr() as *mut f32, NR);
            out.store(&t);
        }
    }

    /// Tiles 0–3 to the 32 × 32 block at `c` (row stride `rs`).
    unsafe fn store(c: *mut f32, rs: usize) {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * rs),
            c3 = in(reg) c.add(16 * rs + 16),
            s = in(reg) rs * 4,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as rand;

    fn rounded(v: f32) -> f64 {
        f32::from_bits((to_bf16(v) as u32) << 16) as f64
    }

    /// Odd shapes around the tile (8, 32), the AMX block (32), KC (256) and both splits.
    const SHAPES: [(usize, usize, usize); 9] =
        [(1, 1, 1), (3, 5, 7), (8, 32, 32), (9, 33, 31), (33, 40, 257), (70, 20, 600), (130, 97, 65), (40, 300, 513), (300, 45, 64)];

    fn layouts<'a>(a: &'a [f32], b: &'a [f32], m: usize, n: usize, k: usize) -> [(Operand<'a>, Operand<'a>, &'static str); 3] {
        [
            (Operand::new(a, k, 1), Operand::new(b, 1, k), "x·Wᵀ"),
            (Operand::new(a, k, 1), Operand::new(b, n, 1), "g·W"),
            (Operand::new(a, 1, m), Operand::new(b, n, 1), "gᵀ·x"),
        ]
    }

    /// Every path, the three layouts of `linear`, overwrite and accumulate: within f32
    /// accumulation of an f64 sum of the bf16-rounded operands.
    #[test]
    fn matches_f64_reference_of_rounded_operands() {
        for &(m, n, k) in &SHAPES {
            let (a, b, c0) = (rand(m * k, 1), rand(k * n, 2), rand(m * n, 3));
            for (ao, bo, what) in layouts(&a, &b, m, n, k) {
                for path in Path::available() {
                    for accumulate in [false, true] {
                        let mut c = c0.clone();
                        bf16_gemm_on(path, m, n, k, &mut c, n, accumulate, ao, bo, 2);
                        for i in 0..m {
                            for j in 0..n {
                                let (mut s, mut mag) = (0f64, 0f64);
                                for p in 0..k {
                                    let x = rounded(ao.data[i * ao.rs + p * ao.cs]) * rounded(bo.data[p * bo.rs + j * bo.cs]);
                                    s += x;
                                    mag += x.abs();
                                }
                                let want = s + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                                let got = c[i * n + j] as f64;
                                let bound = (k as f64 + 2.0) * f32::EPSILON as f64 * (mag + 1.0);
                                assert!((got - want).abs() <= bound, "{path:?} {what} {m}x{n}x{k} acc={accumulate} ({i},{j}): {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// `vdpbf16ps` gives the portable path's bits; AMX agrees within f32 rounding; no path's
    /// bits depend on the thread count or on the row's neighbours.
    #[test]
    fn paths_agree_and_rows_are_thread_and_batch_invariant() {
        for &(m, n, k) in &SHAPES {
            let (a, b) = (rand(m * k, 4), rand(k * n, 5));
            for (ao, bo, what) in layouts(&a, &b, m, n, k) {
                let run = |path: Path, threads: usize| {
                    let mut c = vec![f32::NAN; m * n];
                    bf16_gemm_on(path, m, n, k, &mut c, n, false, ao, bo, threads);
                    c
                };
                let reference = run(Path::Portable, 1);
                for path in Path::available() {
                    let one = run(path, 1);
                    assert_eq!(one, run(path, 2), "{path:?} {what} {m}x{n}x{k}: the thread count changed bits");
                    #[cfg(target_arch = "x86_64")]
                    if path == Path::Amx {
                        let mag: Vec<f64> = (0..m * n)
                            .map(|e| (0..k).map(|p| (rounded(ao.data[e / n * ao.rs + p * ao.cs]) * rounded(bo.data[p * bo.rs + e % n * bo.cs])).abs()).sum())
                            .collect();
                        for (e, (x, y)) in one.iter().zip(&reference).enumerate() {
                            assert!(
                                ((x - y).abs() as f64) <= 2.0 * k as f64 * f32::EPSILON as f64 * (mag[e] + 1e-30),
                                "AMX {what} {m}x{n}x{k} [{e}]: {x} vs {y}"
                            );
                        }
                        continue;
                    }
                    assert_eq!(one, reference, "{path:?} {what} {m}x{n}x{k}: differs from the portable path");
                    // The last row alone (a 1-row product) gives its bits in the whole product.
                    let i = m - 1;
                    let mut row = vec![0f32; n];
                    bf16_gemm_on(path, 1, n, k, &mut row, n, false, Operand::new(&ao.data[i * ao.rs..], ao.rs, ao.cs), bo, 1);
                    assert_eq!(row, one[i * n..], "{path:?} {what} {m}x{n}x{k}: a row alone differs");
                }
            }
        }
    }

    /// The packing's vector rounding gives `to_bf16`'s bits: ties to even, subnormals flushed
    /// to signed zeros, overflow to infinity; a NaN stays NaN.
    #[test]
    fn packing_rounds_as_to_bf16() {
        let mut v = rand(1000, 8);
        let edge =
            [0x3f80_8000u32, 0x3f81_8000, 0x0000_0001, 0x8000_0001, 0x007f_ffff, 0x0080_0000, 0x7f7f_ffff, 0xff7f_ffff, 0x7f80_0000, 0x0000_0000, 0x8000_0000];
        v.extend(edge.iter().map(|&b| f32::from_bits(b)));
        v.extend(v.clone().iter().map(|x| x * 1e-36));
        // Subnormals of every size, 16 at a time (whole vector chunks) and mixed with normals.
        v.extend((0..64u32).map(|i| f32::from_bits((i * 0x0001_ff77) | if i % 2 == 0 { 0 } else { 0x8000_0000 })));
        v.extend((0..64u32).map(|i| f32::from_bits(0x007f_8000 + i * 0x1ff - 0x4000)));
        v.insert(0, f32::NAN);
        let mut got = vec![0u16; v.len()];
        // SAFETY: both buffers hold v.len() values.
        unsafe { round_run(v.as_ptr(), v.len(), got.as_mut_ptr()) };
        for (x, g) in v.iter().zip(&got) {
            if x.is_nan() {
                assert!(f32::from_bits((*g as u32) << 16).is_nan());
            } else {
                assert_eq!(*g, to_bf16(*x), "{x:e} ({:#x})", x.to_bits());
            }
        }
    }

    /// Packing a column-major A (gᵀ, transposed in 16 × 16 register blocks where the CPU
    /// has AVX-512) gives each element `to_bf16`'s bits at row i, column p, zeros in the
    /// padding, for shapes with and without whole blocks and blocks holding the subnormals
    /// the vector rounding leaves to `to_bf16`.
    #[test]
    fn packing_a_transposed_keeps_every_element_in_place() {
        for (mc, kc, kcp) in [(128, 256, 256), (48, 40, 64), (16, 16, 32), (7, 33, 64), (37, 5, 32)] {
            let cs = mc + 3;
            let mut a = rand(cs * kc, mc as u64 * 7 + kc as u64);
            // Largest subnormals in one block (the scalar fallback) and ties elsewhere.
            a[2 + 3 * cs] = f32::from_bits(0x007f_c000);
            a[cs * (kc - 1)] = f32::from_bits(0x3f80_8000);
            let mut out = vec![0xffffu16; mc.next_multiple_of(ROWS_PAD) * kcp];
            // SAFETY: a holds every (i, p) at i + p·cs; out holds the padded block.
            unsafe { pack_a(mc, kc, kcp, a.as_ptr(), 1, cs, out.as_mut_ptr()) };
            for i in 0..mc.next_multiple_of(ROWS_PAD) {
                for p in 0..kcp {
                    let want = if i < mc && p < kc { to_bf16(a[i + p * cs]) } else { 0 };
                    assert_eq!(out[i * kcp + p], want, "{mc} x {kc}: row {i}, k {p}");
                }
            }
        }
    }

    /// Empty shapes do nothing (or clear dst when k = 0), old NaNs are never read when
    /// overwriting, and an operand too short for its view is refused before any read.
    #[test]
    fn tiny_and_empty_shapes_never_panic() {
        let (a, b) = (rand(6 * 4, 6), rand(4 * 16, 7));
        for path in Path::available().into_iter().chain([Path::F32]) {
            let mut c = vec![f32::NAN; 6 * 16];
            bf16_gemm_on(path, 6, 16, 4, &mut c, 16, false, Operand::new(&a, 4, 1), Operand::new(&b, 16, 1), 2);
            assert!(c.iter().all(|v| v.is_finite()), "{path:?}");
            bf16_gemm_on(path, 6, 16, 0, &mut c, 16, false, Operand::new(&a, 4, 1), Operand::new(&b, 16, 1), 2);
            assert!(c.iter().all(|&v| v == 0.0), "{path:?}: k = 0 clears");
            let mut e: Vec<f32> = Vec::new();
            bf16_gemm_on(path, 0, 16, 4, &mut e, 16, false, Operand::new(&a, 4, 1), Operand::new(&b, 16, 1), 2);
            bf16_gemm_on(path, 6, 0, 4, &mut e, 0, true, Operand::new(&a, 4, 1), Operand::new(&b, 0, 1), 2);
        }
        let caught = std::panic::catch_unwind(|| {
            let mut c = vec![0f32; 4];
            bf16_gemm(2, 2, 6, &mut c, 2, false, Operand::new(&a[..10], 6, 1), Operand::new(&b, 2, 1), 1);
        });
        assert!(caught.is_err(), "an operand outside its slice is refused");
    }
}
