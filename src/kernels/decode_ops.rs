//! Decoding's fused CPU kernels (no gradient; `ops.rs` and `attention.rs` have the ones
//! training differentiates).
//!
//! Attention while decoding was candle ops on tiny shapes: per (row, KV head) a 3 × 64 · 64 × S
//! matmul, scale, mask add, softmax, a second matmul — each op single-threaded or a task far
//! too small to share, so during a step's attention one of two cores idled (candle's gemm
//! dispatch and microkernel took a large share of the wall time, all on the main thread).
//! Here one task per (row, query head) does the whole softmax(q kᵀ·scale + mask) v.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

use super::attention::{softmax_numerators, HIDDEN};
use super::simd::{output_buffer, reduce8, Kernel};

/// A 4-D f32 CPU tensor's data with its start offset and strides (in elements).
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
}

fn view<'a>(s: &'a Storage, l: &Layout, what: &str) -> Result<View<'a>> {
    let Storage::Cpu(CpuStorage::F32(data)) = s else { candle_core::bail!("decode attention: {what} is not CPU f32") };
    let st = l.stride();
    if st.len() != 4 || st[3] != 1 {
        candle_core::bail!("decode attention: {what} needs 4 dims with contiguous rows, got strides {st:?}");
    }
    Ok(View { data, start: l.start_offset(), stride: [st[0], st[1], st[2], st[3]] })
}

impl View<'_> {
    /// The `n` values starting at index (a, b, c, 0).
    fn row(&self, a: usize, b: usize, c: usize, n: usize) -> &[f32] {
        let o = self.start + a * self.stride[0] + b * self.stride[1] + c * self.stride[2];
        &self.data[o..o + n]
    }
}

/// softmax(q kᵀ·scale + mask) v on the CPU in f32 for cached decoding: q (B, H, T, hd); k, v
/// (B, KV, S, hd), any strides with contiguous rows (the cache's window in place), H a multiple
/// of KV (each KV head serves H / KV query heads); mask additive, broadcastable to
/// (B, 1, T, S). Returns (B, H, T, hd). `None` when this kernel does not apply (not CPU f32):
/// the caller then uses candle's ops.
///
/// Every output row is computed alone, in one fixed order over its visible keys, so it does not
/// depend on the batch, the other rows or the hidden (left-padding) columns.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && cpu_f32(mask)) {
        return Ok(None);
    }
    let (b, h, t, hd) = q.dims4()?;
    let (kb, kv, s, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims() != k.dims() || kv == 0 || h % kv != 0 {
        candle_core::bail!("decode attention: q {:?}, k {:?}, v {:?} do not fit", q.dims(), k.dims(), v.dims());
    }
    if b * h * t * hd == 0 || s == 0 {
        // Nothing to attend with or to: candle's ops give the empty (or degenerate) result.
        return Ok(None);
    }
    let q = q.contiguous()?;
    let mask = mask.broadcast_as((b, 1, t, s))?;
    let (k, v) = (if k.stride()[3] == 1 { k.clone() } else { k.contiguous()? }, if v.stride()[3] == 1 { v.clone() } else { v.contiguous()? });
    let mask = if mask.stride()[3] == 1 { mask } else { mask.contiguous()? };
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (ms, ml) = mask.storage_and_layout();
    let (qv, kv_, vv, mv) = (view(&qs, ql, "q")?, view(&ks, kl, "k")?, view(&vs, vl, "v")?, view(&ms, ml, "mask")?);
    let group = h / kv;
    let scale = scale as f32;
    // Every row is written whole by its task (`Kernel::row` sets all hd outputs).
    let mut out = output_buffer(b * h * t * hd);
    let kernel = Kernel::detect();
    // One task per (row, query head): T rows of hd outputs each, written to their own chunk.
    out.par_chunks_mut(t * hd).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        let ki = hi / group;
        scores.resize(s, 0.0);
        let keys = Rows { data: kv_.row(bi, ki, 0, (s - 1) * kv_.stride[2] + hd), stride: kv_.stride[2], len: hd };
        let values = Rows { data: vv.row(bi, ki, 0, (s - 1) * vv.stride[2] + hd), stride: vv.stride[2], len: hd };
        for ti in 0..t {
            let qrow = qv.row(bi, hi, ti, hd);
            let mrow = mv.row(bi, 0, ti, s);
            let orow = &mut o[ti * hd..(ti + 1) * hd];
            kernel.row(qrow, keys, values, mrow, scale, scores, orow);
        }
    });
    Ok(Some(Tensor::from_vec(out, (b, h, t, hd), q.device())?))
}

/// Rows of `len` values `stride` apart (a cache window's keys or values of one head).
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    stride: usize,
    len: usize,
}

impl<'a> Rows<'a> {
    fn row(&self, j: usize) -> &'a [f32] {
        &self.data[j * self.stride..j * self.stride + self.len]
    }
}

impl Kernel {
    /// One query row: scores into `scores`, softmax in place, the probability-weighted sum of
    /// values into `out`. The AVX2 path does the portable path's operations, per output
    /// element in the same order (same bits), with 4 keys' dot products and 64 outputs'
    /// sums in flight at once (one chain at a time was latency-bound).
    #[allow(clippy::too_many_arguments)]
    fn row(self, q: &[f32], keys: Rows, values: Rows, mask: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
        match self {
            Kernel::Portable => {
                for (j, (sc, &m)) in scores.iter_mut().zip(mask).enumerate() {
                    *sc = if m <= HIDDEN { f32::NEG_INFINITY } else { dot(q, keys.row(j)) * scale + m };
                }
                let sum = softmax_numerators(scores);
                out.fill(0.0);
                for (j, &e) in scores.iter().enumerate() {
                    if e != 0.0 {
                        let p = e / sum;
                        for (o, &x) in out.iter_mut().zip(values.row(j)) {
                            *o = p.mul_add(x, *o);
                        }
                    }
                }
            }
            // SAFETY: detect() checked AVX2 and FMA. (No AVX-512 body: this kernel waits on
            // the cache's keys and values coming from memory, whatever the vector width.)
            #[cfg(target_arch = "x86_64")]
            _ => unsafe {
                avx2::scores(q, keys, mask, scale, scores);
                let sum = softmax_numerators(scores);
                avx2::weighted_sum(scores, sum, values, out);
            },
        }
    }
}

/// Dot product in 8 lanes of fused multiply-adds, the lanes summed pairwise, then the tail
/// (hd mod 8) added: the AVX2 path's operations.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = dot_tail(ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    reduce8(&acc) + tail
}

#[inline(always)]
fn dot_tail(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::simd::reduce_avx2 as reduce;
    use super::{dot_tail, Rows, HIDDEN};
    use std::arch::x86_64::*;

    /// scores[j] = q · key j · scale + mask[j], or −inf for hidden keys; four keys at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(q: &[f32], keys: Rows, mask: &[f32], scale: f32, scores: &mut [f32]) {
        let hd = q.len();
        let n8 = hd / 8 * 8;
        let qp = q.as_ptr();
        let score = |j: usize, acc: __m256| -> f32 {
            let m = mask[j];
            if m <= HIDDEN {
                f32::NEG_INFINITY
            } else {
                (reduce(acc) + dot_tail(&q[n8..], &keys.row(j)[n8..])) * scale + m
            }
        };
        let s = scores.len();
        let mut j = 0;
        while j + 4 <= s {
            // Keys hidden from this row (a continuous batch's left padding: most of the window
            // for a row that joined late) are not read: their scores are −inf whatever they hold.
            if mask[j..j + 4].iter().all(|&m| m <= HIDDEN) {
                scores[j..j + 4].fill(f32::NEG_INFINITY);
                j += 4;
                continue;
            }
            let (k0, k1, k2, k3) = (keys.row(j).as_ptr(), keys.row(j + 1).as_ptr(), keys.row(j + 2).as_ptr(), keys.row(j + 3).as_ptr());
            let z = _mm256_setzero_ps();
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let mut i = 0;
            while i < n8 {
                let u = _mm256_loadu_ps(qp.add(i));
                a0 = _mm256_fmadd_ps(u, _mm256_loadu_ps(k0.add(i)), a0);
                a1 = _mm256_fmadd_ps(u, _mm256_loadu_ps(k1.add(i)), a1);
                a2 = _mm256_fmadd_ps(u, _mm256_loadu_ps(k2.add(i)), a2);
                a3 = _mm256_fmadd_ps(u, _mm256_loadu_ps(k3.add(i)), a3);
                i += 8;
            }
            scores[j] = score(j, a0);
            scores[j + 1] = score(j + 1, a1);
            scores[j + 2] = score(j + 2, a2);
            scores[j + 3] = score(j + 3, a3);
            j += 4;
        }
        while j < s {
            if mask[j] <= HIDDEN {
                scores[j] = f32::NEG_INFINITY;
                j += 1;
                continue;
            }
            let kp = keys.row(j).as_ptr();
            let mut a = _mm256_setzero_ps();
            let mut i = 0;
            while i < n8 {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), _mm256_loadu_ps(kp.add(i)), a);
                i += 8;
            }
            scores[j] = score(j, a);
            j += 1;
        }
    }

    /// out = Σ_j (e_j / sum) · value j over the keys with e_j ≠ 0, each output element one
    /// chain of FMAs in key order; 64 outputs per pass over the keys kept in registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(e: &[f32], sum: f32, values: Rows, out: &mut [f32]) {
        let hd = out.len();
        let mut c = 0;
        while c + 64 <= hd {
            let z = _mm256_setzero_ps();
            let mut a = [z; 8];
            for (j, &ej) in e.iter().enumerate() {
                if ej == 0.0 {
                    continue;
                }
                let p = _mm256_set1_ps(ej / sum);
                let v = values.row(j).as_ptr().add(c);
                a[0] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v), a[0]);
                a[1] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(8)), a[1]);
                a[2] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(16)), a[2]);
                a[3] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(24)), a[3]);
                a[4] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(32)), a[4]);
                a[5] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(40)), a[5]);
                a[6] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(48)), a[6]);
                a[7] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.add(56)), a[7]);
            }
            for (i, a) in a.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a);
            }
            c += 64;
        }
        // The rest (head dims that are not a multiple of 64): one element at a time, the same
        // chain per element.
        for (i, o) in out.iter_mut().enumerate().skip(c) {
            let mut acc = 0f32;
            for (j, &ej) in e.iter().enumerate() {
                if ej != 0.0 {
                    acc = (ej / sum).mul_add(values.row(j)[i], acc);
                }
            }
            *o = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// candle's composed ops, as the decoding path ran them before this kernel.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Tensor {
        let (b, h, t, hd) = q.dims4().unwrap();
        let (kv, s) = (k.dim(1).unwrap(), k.dim(2).unwrap());
        let qg = q.reshape((b, kv, (h / kv) * t, hd)).unwrap();
        let scores = (qg.matmul(&k.t().unwrap()).unwrap() * scale).unwrap().reshape((b, h, t, s)).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask).unwrap()).unwrap();
        probs.reshape((b, kv, (h / kv) * t, s)).unwrap().matmul(v).unwrap().reshape((b, h, t, hd)).unwrap()
    }

    #[test]
    fn matches_candles_ops_on_a_strided_cache_window_and_ignores_hidden_columns() {
        let dev = Device::Cpu;
        let (b, h, kv, t, hd, cap) = (3, 6, 2, 2, 16, 12);
        let q = Tensor::from_vec(data(b * h * t * hd, 1), (b, h, t, hd), &dev).unwrap();
        // The live window of a preallocated cache: columns 2..9 of 12.
        let kc = Tensor::from_vec(data(b * kv * cap * hd, 2), (b, kv, cap, hd), &dev).unwrap();
        let vc = Tensor::from_vec(data(b * kv * cap * hd, 3), (b, kv, cap, hd), &dev).unwrap();
        let s = 7;
        let (k, v) = (kc.narrow(2, 2, s).unwrap(), vc.narrow(2, 2, s).unwrap());
        // Row 1 left-padded by 3 columns, row 2 by 1; the last query row sees one key less.
        let pads = [0usize, 3, 1];
        let m: Vec<f32> =
            (0..b).flat_map(|r| (0..t).flat_map(move |ti| (0..s).map(move |j| if j >= pads[r] && j < s - 1 + ti { 0.0 } else { -1e9 }))).collect();
        let mask = Tensor::from_vec(m, (b, 1, t, s), &dev).unwrap();
        let scale = 0.25;
        let got = attention(&q, &k, &v, &mask, scale).unwrap().unwrap();
        let want = reference(&q, &k.contiguous().unwrap(), &v.contiguous().unwrap(), &mask, scale);
        let diff = (&got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "max |fused - candle| = {diff}");

        // Row 1 alone, without its 3 hidden columns: the same bits.
        let alone = attention(
            &q.narrow(0, 1, 1).unwrap(),
            &k.narrow(0, 1, 1).unwrap().narrow(2, 3, s - 3).unwrap(),
            &v.narrow(0, 1, 1).unwrap().narrow(2, 3, s - 3).unwrap(),
            &mask.narrow(0, 1, 1).unwrap().narrow(3, 3, s - 3).unwrap(),
            scale,
        )
        .unwrap()
        .unwrap();
        let batched = got.narrow(0, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(alone.flatten_all().unwrap().to_vec1::<f32>().unwrap(), batched);
    }

    #[test]
    fn portable_and_avx2_rows_agree_bit_for_bit() {
        // Head dims below, at and past one 64-wide register block; 9 keys = two groups of 4 + 1.
        for hd in [20, 64, 72, 136] {
            let s = 9;
            let (q, keys, vals) = (data(hd, 4), data(s * hd, 5), data(s * hd, 6));
            let mask: Vec<f32> = (0..s).map(|j| if j == 3 { -1e9 } else { 0.1 * j as f32 }).collect();
            let run = |k: Kernel| {
                let (mut sc, mut out) = (vec![0f32; s], vec![0f32; hd]);
                k.row(&q, Rows { data: &keys, stride: hd, len: hd }, Rows { data: &vals, stride: hd, len: hd }, &mask, 0.3, &mut sc, &mut out);
                out
            };
            assert_eq!(run(Kernel::Portable), run(Kernel::detect()), "head dim {hd}");
        }
    }
}
