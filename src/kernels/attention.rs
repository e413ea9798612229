//! Scaled dot-product attention as one fused op with a hand-written backward:
//! softmax(q kᵀ·scale + bias + mask) v forward, and a backward that recomputes the
//! probabilities instead of keeping them, `dS = P⊙(dP − Σ dP⊙P)` (one pass per row on the CPU).
//! On the CPU in f32 without a bias the whole op runs in [`attention_cpu`], one task per
//! (row, head) over the keys each query block sees; elsewhere in candle's ops.
//!
//! Invariants: the same values as the composed ops (tested against them, grouped-query heads
//! and packed masks included); keys at or below [`HIDDEN`] get probability exactly 0, so
//! skipping them changes no bit. Decoding's attention kernel (no gradient) is
//! `decode_ops.rs`; it shares [`softmax_numerators`] and [`HIDDEN`] from here.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::ops::{fused_fwd3, with_f32};
use super::sgemm::{sgemm, Operand};

/// Scores → probabilities of scaled dot-product attention: softmax(q kᵀ·scale + bias + mask)
/// in f32, whatever q's dtype (the order of operations the unfused path used, so losses match).
fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let mut scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(candle_core::DType::F32)?;
    if let Some(b) = bias {
        scores = scores.broadcast_add(b)?;
    }
    candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)
}

struct Attention {
    out: Mutex<Option<Tensor>>,
    mask: Tensor,
    bias: Option<Tensor>,
    scale: f64,
    /// Computed by [`attention_cpu`] (and differentiated by it).
    cpu: bool,
}
impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "cotlab-attention"
    }
    fused_fwd3!(out);
    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Recompute the probabilities (one layer's worth lives at a time) instead of keeping
        // scores, scaled scores, masked scores and probabilities of every layer until the end of
        // the backward pass: 4 × (B, H, T, S) f32 per layer, most of the activation memory.
        let (q, k, v) = (&q.detach(), &k.detach(), &v.detach());
        if self.cpu {
            let (dq, dk, dv) = attention_cpu(q, k, v, &self.mask, self.scale as f32, Some(&g.detach()))?;
            return Ok((Some(dq), dk, dv));
        }
        let dt = q.dtype();
        let p = attention_probs(q, k, &self.mask, self.bias.as_ref(), self.scale)?;
        let dv = p.to_dtype(dt)?.t()?.matmul(g)?;
        let dp = g.matmul(&v.t()?)?.to_dtype(candle_core::DType::F32)?;
        let ds = if dp.device().is_cpu() {
            softmax_bwd_cpu(&dp, &p, self.scale)?.to_dtype(dt)?
        } else {
            let s = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            ((dp.broadcast_sub(&s)? * &p)?.to_dtype(dt)? * self.scale)?
        };
        let dq = ds.matmul(k)?;
        let dk = ds.t()?.matmul(q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The scores' gradient from the probabilities' on the CPU, one pass per row:
/// dS = P ⊙ (dP − Σ_row dP ⊙ P) · scale (five candle ops over (B, H, T, S) f32 before).
fn softmax_bwd_cpu(dp: &Tensor, p: &Tensor, scale: f64) -> Result<Tensor> {
    use rayon::prelude::*;
    let s = *p.dims().last().expect("attention probabilities have a last dim");
    let scale = scale as f32;
    let ds = with_f32(&[dp, p], "attention backward", |v| {
        let (dpv, pv) = (v[0], v[1]);
        let mut ds = vec![0f32; pv.len()];
        ds.par_chunks_mut(s).zip(dpv.par_chunks(s).zip(pv.par_chunks(s))).for_each(|(ds, (dp, p))| {
            ds.copy_from_slice(dp);
            softmax_grad_row(ds, p, scale);
        });
        Ok(ds)
    })?;
    Tensor::from_vec(ds, p.shape(), p.device())
}

/// softmax(q kᵀ·scale + bias + mask) v for q (B, H, T, hd) and k, v (B, KV, S, hd) (each
/// key/value head shared by H / KV query heads), `bias` (ALiBi) and `mask` additive f32 tensors broadcastable to
/// (B, H, T, S); scores and softmax in f32, matmuls in q's dtype. Same values as the composed
/// ops, but the backward keeps only q, k and v (see `Attention::bwd`). On the CPU in f32
/// without a bias: [`attention_cpu`] (one task per (row, head), hidden key ranges skipped).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (h, kvh) = (q.dim(1)?, k.dim(1)?);
    if kvh == 0 || h % kvh != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {kvh} key/value heads");
    }
    let cpu = bias.is_none()
        && q.elem_count() > 0
        && k.elem_count() > 0
        && [q, k, v, mask].iter().all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32);
    if !cpu && kvh != h {
        return attention(q, &repeat_kv(k, h / kvh)?, &repeat_kv(v, h / kvh)?, mask, bias, scale);
    }
    let y = if cpu {
        attention_cpu(&q.detach(), &k.detach(), &v.detach(), mask, scale as f32, None)?.0
    } else {
        let p = attention_probs(&q.detach(), &k.detach(), mask, bias, scale)?;
        p.to_dtype(q.dtype())?.matmul(&v.detach())?
    };
    let op = Attention { out: Mutex::new(Some(y)), mask: mask.clone(), bias: bias.cloned(), scale, cpu };
    q.apply_op3(k, v, op)
}

/// Query rows per block of the CPU attention: each block multiplies only the keys some row
/// of it sees (causal: the keys up to its last row; packed: from its first sequence's start).
const QUERY_BLOCK: usize = 64;

/// `dst = [dst +] beta · lhs · rhs` (m × n, row stride `dst_rs`) with [`sgemm`] on one thread
/// (the caller runs one task per (row, head)); operands as (data, row stride, col stride).
#[allow(clippy::too_many_arguments)]
fn gemm1(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, add: bool, lhs: (&[f32], usize, usize), rhs: (&[f32], usize, usize), beta: f32) {
    sgemm(m, n, k, dst, dst_rs, add, Operand::new(lhs.0, lhs.1, lhs.2), Operand::new(rhs.0, rhs.1, rhs.2), beta, 1)
}

/// One query block's probabilities P (rows × (hi − lo), row-major, into `p`) over the keys
/// `lo..hi` it can see (`seen`: each query's visible range, see [`visible_ranges`]): softmax(q kᵀ·scale + mask) row by row. Keys outside the range are
/// hidden from every row of the block, so their probabilities are exactly 0 and skipping them
/// changes nothing; a row that sees no key at all gets the whole row (as the composed ops).
#[allow(clippy::too_many_arguments)]
fn block_probs(
    q: &[f32],
    k: &[f32],
    mask: &[f32],
    seen: &[(usize, usize)],
    hd: usize,
    s: usize,
    rows: std::ops::Range<usize>,
    scale: f32,
    p: &mut Vec<f32>,
) -> (usize, usize) {
    let (lo, hi) = seen[rows.clone()].iter().fold((s, 0), |(lo, hi), &(a, b)| (lo.min(a), hi.max(b)));
    let (r, n) = (rows.len(), hi - lo);
    p.resize(r * n, 0.0);
    gemm1(r, n, hd, p, n, false, (&q[rows.start * hd..], hd, 1), (&k[lo * hd..], 1, hd), scale);
    for (i, row) in rows.zip(p.chunks_mut(n.max(1))) {
        let m = &mask[i * s + lo..i * s + hi];
        row.iter_mut().zip(m).for_each(|(x, &mv)| *x += mv);
        let sum = softmax_numerators(row);
        for x in row.iter_mut() {
            *x /= sum;
        }
    }
    (lo, hi)
}

/// Mask values at or below this hide their key (the masks here use -1e9): a hidden key's
/// probability is exactly 0 with any finite score (exp underflows to 0 below −104), so the
/// attention kernels skip it.
pub(crate) const HIDDEN: f32 = -1e8;

/// exp(x − max) of a row in place; returns their sum (softmax without the division).
/// exp(−inf) = 0: keys scored −inf add nothing, whatever their position.
pub(crate) fn softmax_numerators(row: &mut [f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0f32;
    for x in row.iter_mut() {
        let d = *x - max;
        // Below −104 expf's result rounds to 0 (its smallest subnormal is e^−103.3), which it
        // gets on a slow underflow path: masked scores cost a measurable share of a step there.
        *x = if d < -104.0 { 0.0 } else { d.exp() };
        sum += *x;
    }
    sum
}

/// The scores' gradient of one row from the probabilities', in place over dP:
/// dS = P ⊙ (dP − Σ dP ⊙ P) · scale.
fn softmax_grad_row(d: &mut [f32], p: &[f32], scale: f32) {
    let dot: f32 = d.iter().zip(p).map(|(a, b)| a * b).sum();
    for (d, &pr) in d.iter_mut().zip(p) {
        *d = (*d - dot) * pr * scale;
    }
}

/// Per query row of an additive mask (rows × s): the range from its first to its last visible
/// key, or every key when it sees none (the composed ops' softmax then spans the whole row).
fn visible_ranges(mask: &[f32], s: usize) -> Vec<(usize, usize)> {
    mask.chunks(s.max(1))
        .map(|m| match (m.iter().position(|&x| x > HIDDEN), m.iter().rposition(|&x| x > HIDDEN)) {
            (Some(a), Some(b)) => (a, b + 1),
            _ => (0, s),
        })
        .collect()
}

/// Attention on the CPU in f32, one task per (row, head) with single-threaded GEMMs on
/// [`QUERY_BLOCK`]-row blocks over the keys each block sees. Forward (`dy` None): returns
/// (y, −, −). Backward (`dy` the output's gradient): recomputes each block's probabilities and
/// returns (dq, dk, dv). candle's batched matmul ran the (B·H) small products one after
/// another, each split across the threads, and computed every masked score.
fn attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32, dy: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    use rayon::prelude::*;
    let (b, h, t, hd) = q.dims4()?;
    let (kvh, s) = (k.dim(1)?, k.dim(2)?);
    if kvh == 0 || h % kvh != 0 || k.dims4()? != (b, kvh, s, hd) || v.dims() != k.dims() {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not fit", q.dims(), k.dims(), v.dims());
    }
    // Query heads per key/value head (grouped-query attention reads the shared head in place).
    let group = h / kvh;
    // The mask per (row, query): (T, S) masks are shared by every row.
    let mask = mask.broadcast_as((b, 1, t, s))?.contiguous()?;
    let dy_t = match dy {
        Some(g) => g.contiguous()?,
        None => q.clone(),
    };
    let (qn, kn) = (t * hd, s * hd);
    with_f32(&[q, k, v, &mask, &dy_t], "attention", |x| {
        let (qv, kv, vv, mv, gv) = (x[0], x[1], x[2], x[3], x[4]);
        let task_mask = |bh: usize| &mv[(bh / h) * t * s..(bh / h + 1) * t * s];
        // Scanned once per call, not once per head.
        let seen = visible_ranges(mv, s);
        let task_seen = |bh: usize| &seen[(bh / h) * t..(bh / h + 1) * t];
        let blocks = |t: usize| (0..t.div_ceil(QUERY_BLOCK)).map(move |c| c * QUERY_BLOCK..((c + 1) * QUERY_BLOCK).min(t));
        // Query head `bh` (= row · H + head) reads key/value head `bh / group`.
        let kv_of = |bh: usize| (&kv[(bh / group) * kn..(bh / group + 1) * kn], &vv[(bh / group) * kn..(bh / group + 1) * kn]);
        if dy.is_none() {
            let mut y = vec![0f32; b * h * qn];
            y.par_chunks_mut(qn).enumerate().for_each_init(Vec::new, |p, (bh, y)| {
                let (q, (k, v)) = (&qv[bh * qn..(bh + 1) * qn], kv_of(bh));
                for rows in blocks(t) {
                    let (lo, hi) = block_probs(q, k, task_mask(bh), task_seen(bh), hd, s, rows.clone(), scale, p);
                    let n = hi - lo;
                    gemm1(rows.len(), hd, n, &mut y[rows.start * hd..], hd, false, (p, n, 1), (&v[lo * hd..], hd, 1), 1.0);
                }
            });
            return Ok((Tensor::from_vec(y, (b, h, t, hd), q.device())?, None, None));
        }
        // One task per query head (a row packed into one sequence of many would leave a task per
        // key/value head too few to share); each query head's dK, dV, then summed per group.
        let (mut dq, mut dkh, mut dvh) = (vec![0f32; b * h * qn], vec![0f32; b * h * kn], vec![0f32; b * h * kn]);
        dq.par_chunks_mut(qn).zip(dkh.par_chunks_mut(kn).zip(dvh.par_chunks_mut(kn))).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(p, ds), (bh, (dq, (dk, dv)))| {
                let (q, (k, v)) = (&qv[bh * qn..(bh + 1) * qn], kv_of(bh));
                let g = &gv[bh * qn..(bh + 1) * qn];
                for rows in blocks(t) {
                    let (lo, hi) = block_probs(q, k, task_mask(bh), task_seen(bh), hd, s, rows.clone(), scale, p);
                    let (r, n) = (rows.len(), hi - lo);
                    let gb = &g[rows.start * hd..];
                    // dV += Pᵀ dO; dP = dO Vᵀ; dS = P ⊙ (dP − Σ dP⊙P) · scale; dQ = dS K; dK += dSᵀ Q.
                    gemm1(n, hd, r, &mut dv[lo * hd..], hd, true, (p, 1, n), (gb, hd, 1), 1.0);
                    ds.resize(r * n, 0.0);
                    gemm1(r, n, hd, ds, n, false, (gb, hd, 1), (&v[lo * hd..], 1, hd), 1.0);
                    for (d, pr) in ds.chunks_mut(n.max(1)).zip(p.chunks(n.max(1))) {
                        softmax_grad_row(d, pr, scale);
                    }
                    gemm1(r, hd, n, &mut dq[rows.start * hd..], hd, false, (ds, n, 1), (&k[lo * hd..], hd, 1), 1.0);
                    gemm1(n, hd, r, &mut dk[lo * hd..], hd, true, (ds, 1, n), (&q[rows.start * hd..], hd, 1), 1.0);
                }
            },
        );
        let (dk, dv) = if group == 1 {
            (dkh, dvh)
        } else {
            let sum_group = |per_head: &[f32]| {
                let mut out = vec![0f32; b * kvh * kn];
                out.par_chunks_mut(kn).enumerate().for_each(|(bk, o)| {
                    for gi in 0..group {
                        let src = &per_head[(bk * group + gi) * kn..(bk * group + gi + 1) * kn];
                        o.iter_mut().zip(src).for_each(|(o, &x)| *o += x);
                    }
                });
                out
            };
            (sum_group(&dkh), sum_group(&dvh))
        };
        let dev = q.device();
        Ok((Tensor::from_vec(dq, (b, h, t, hd), dev)?, Some(Tensor::from_vec(dk, (b, kvh, s, hd), dev)?), Some(Tensor::from_vec(dv, (b, kvh, s, hd), dev)?)))
    })
}

/// Each key/value head `n` times in a row, (B, KV, S, hd) → (B, KV·n, S, hd): grouped-query
/// attention for the composed ops.
pub fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n, t, hd))?.contiguous()?.reshape((b, kv * n, t, hd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Attention with a bias (the composed-ops path) against the composed ops, gradients
    /// included.
    #[test]
    fn attention_with_a_bias_matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Attention with a causal mask and a per-head bias against the composed ops.
        let (q, k, v) = (Var::randn(0f32, 1., (2, 3, 5, 8), &dev)?, Var::randn(0f32, 1., (2, 3, 6, 8), &dev)?, Var::randn(0f32, 1., (2, 3, 6, 8), &dev)?);
        let mask: Vec<f32> = (0..5).flat_map(|i| (0..6).map(move |j| if j > i + 1 { -1e9 } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (5, 6), &dev)?;
        let bias = Tensor::randn(0f32, 1., (1, 3, 1, 6), &dev)?;
        let wo = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let fast = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, Some(&bias), 0.3)?;
        let scores = ((q.as_tensor().matmul(&k.as_tensor().t()?)? * 0.3)?.broadcast_add(&bias)?).broadcast_add(&mask)?;
        let slow = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v.as_tensor())?;
        assert!((&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        let gf = (fast * &wo)?.sum_all()?.backward()?;
        let gs = (slow * &wo)?.sum_all()?.backward()?;
        for var in [&q, &k, &v] {
            let (a, b) = (gf.get(var).expect("attention has a gradient"), gs.get(var).unwrap());
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "attention gradient differs by {d}");
            assert!(b.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2, "a gradient that can differ");
        }
        Ok(())
    }

    /// The underflow shortcut in `softmax_numerators` gives expf's own result: every f32 from
    /// −104 down to −200 (and −∞) has exp() = 0.
    #[test]
    fn exp_is_zero_below_the_softmax_shortcut() {
        let mut bits = (-104f32).to_bits();
        while f32::from_bits(bits) >= -200.0 {
            assert_eq!(f32::from_bits(bits).exp(), 0.0, "exp({})", f32::from_bits(bits));
            bits += 1;
        }
        assert_eq!(f32::NEG_INFINITY.exp(), 0.0);
        assert!((-103.5f32).exp() > 0.0, "the shortcut's bound is not needlessly low");
    }

    /// The CPU kernel (no bias) against the composed ops: a causal (T, T) mask and packed rows'
    /// block-diagonal (B, 1, T, T) masks, with and without grouped-query heads, over three query blocks (the last partial), so the
    /// skipped key ranges and the blocks' dK/dV sums are exercised.
    #[test]
    fn cpu_attention_matches_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t, hd) = (2, 3, 2 * QUERY_BLOCK + 9, 8);
        let wo = Tensor::randn(0f32, 1., (b, h, t, hd), &dev)?;
        let causal: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
        // Row 0: sequences [0, 50) and [50, 120), then 17 padding tokens that see only themselves;
        // row 1: one sequence of 100, then [100, t).
        let starts = [vec![0, 50, 120], vec![0, 100]];
        let packed: Vec<f32> = (0..b)
            .flat_map(|r| {
                let st = starts[r].clone();
                (0..t).flat_map(move |i| {
                    let seq = *st.iter().filter(|&&a| a <= i).max().unwrap();
                    let pad = r == 0 && i >= 120;
                    (0..t).map(move |j| if (pad && j == i) || (!pad && j >= seq && j <= i) { 0.0 } else { -1e9 }).collect::<Vec<_>>()
                })
            })
            .collect();
        let masks = [Tensor::from_vec(causal, (t, t), &dev)?, Tensor::from_vec(packed, (b, 1, t, t), &dev)?];
        // One key/value head per query head, and one shared by all three (grouped-query).
        for (mask, kvh) in [(&masks[0], h), (&masks[1], h), (&masks[1], 1)] {
            let q = Var::randn(0f32, 1., (b, h, t, hd), &dev)?;
            let (k, v) = (Var::randn(0f32, 1., (b, kvh, t, hd), &dev)?, Var::randn(0f32, 1., (b, kvh, t, hd), &dev)?);
            let fast = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), mask, None, 0.3)?;
            let (kr, vr) = (repeat_kv(k.as_tensor(), h / kvh)?, repeat_kv(v.as_tensor(), h / kvh)?);
            let scores = (q.as_tensor().matmul(&kr.t()?)? * 0.3)?.broadcast_add(mask)?;
            let slow = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&vr)?;
            let d = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "forward differs by {d}");
            let gf = (fast * &wo)?.sum_all()?.backward()?;
            let gs = (slow * &wo)?.sum_all()?.backward()?;
            for var in [&q, &k, &v] {
                let (a, b) = (gf.get(var).expect("attention has a gradient"), gs.get(var).unwrap());
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "gradient differs by {d}");
                assert!(b.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2, "a gradient that can differ");
            }
        }
        Ok(())
    }
}
