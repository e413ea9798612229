//! Fused ops that carry a gradient. candle 0.11's fused `softmax_last_dim`, `rms_norm` and
//! `rope` are built with `*_no_bwd`: training through them silently updates only the embedding.
//! Each op here runs the fused kernel forward and defines the backward by hand: rms_norm
//! `r·(gα − x̂·mean(gα⊙x̂))`, `dα = Σ g⊙x̂`; rope `rope(g, cos, −sin)`; linear, embedding,
//! SwiGLU and cross-entropy as their docs say. Attention, an op of the same kind, is
//! `attention.rs`; it uses this file's plumbing ([`with_f32`], `fused_fwd3!`).
//!
//! Every backward detaches its inputs first: a gradient computed from a tracked tensor (a
//! `Var` weight, an activation) carries an op node that keeps its operands alive, and weight
//! gradients stay in the gradient store until the backward pass ends; a backward that kept
//! them (`linear`'s once did) raises a step's peak RSS by gigabytes.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D};

use super::bf16_gemm::bf16_gemm;
use super::sgemm::{sgemm, Operand};
use super::simd::output_buffer;

/// Hands a precomputed result to candle as the op's output, so the graph gets our backward.
pub(super) fn take_cpu(slot: &Mutex<Option<Tensor>>) -> Result<(CpuStorage, Shape)> {
    let t = slot.lock().unwrap().take().expect("fused result is taken once");
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) if l.start_offset() == 0 => Ok((c.clone(), l.shape().clone())),
        Storage::Cpu(_) => candle_core::bail!("fused op result with an offset"),
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}

#[cfg(feature = "cuda")]
pub(super) fn take_cuda(slot: &Mutex<Option<Tensor>>) -> Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let t = slot.lock().unwrap().take().expect("fused result is taken once").contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("expected a CUDA tensor"),
    }
}

macro_rules! fused_fwd {
    () => {
        fn cpu_fwd_impl(&self) -> Result<(CpuStorage, Shape)> {
            take_cpu(&self.0)
        }
    };
}

/// `cpu_fwd` / `cuda_fwd` of a three-input fused op: hand over the result held in `self.$slot`.
macro_rules! fused_fwd3 {
    ($slot:tt) => {
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            $crate::kernels::ops::take_cpu(&self.$slot)
        }
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            _: &candle_core::CudaStorage,
            _: &Layout,
            _: &candle_core::CudaStorage,
            _: &Layout,
            _: &candle_core::CudaStorage,
            _: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            $crate::kernels::ops::take_cuda(&self.$slot)
        }
    };
}
/// For `attention.rs`'s op.
pub(super) use fused_fwd3;

struct RmsNorm(Mutex<Option<Tensor>>, f32);
impl RmsNorm {
    fused_fwd!();
}
impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cotlab-rms-norm"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu_fwd_impl()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        take_cuda(&self.0)
    }
    fn bwd(&self, x: &Tensor, alpha: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, alpha) = (&x.detach(), &alpha.detach());
        if x.device().is_cpu() {
            return rms_norm_bwd_cpu(x, alpha, g, self.1);
        }
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.1 as f64)?.sqrt()?.recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let ga = g.broadcast_mul(alpha)?;
        let m = (&ga * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (ga - xhat.broadcast_mul(&m)?)?.broadcast_mul(&r)?;
        let dims = g.rank();
        let dalpha = (g * &xhat)?.flatten_to(dims - 2)?.sum(0)?;
        Ok((Some(dx), Some(dalpha)))
    }
}

/// Rows per task of the norm's backward; fixed, so the weight gradient's partial sums (one per
/// task, added in order) do not depend on the number of threads.
const NORM_ROWS: usize = 32;

/// RmsNorm's backward in one pass per row (candle's composition took about a dozen passes):
/// r = 1/√(mean x² + ε), x̂ = x·r, dx = r·(gα − x̂·mean(gα⊙x̂)), dα = Σ_rows g⊙x̂.
fn rms_norm_bwd_cpu(x: &Tensor, alpha: &Tensor, g: &Tensor, eps: f32) -> Result<(Option<Tensor>, Option<Tensor>)> {
    use rayon::prelude::*;
    let d = alpha.elem_count();
    let (dx, dalpha) = with_f32(&[x, alpha, g], "rms_norm backward", |v| {
        let (xv, av, gv) = (v[0], v[1], v[2]);
        let mut dx = output_buffer(xv.len());
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(NORM_ROWS * d)
            .zip(xv.par_chunks(NORM_ROWS * d).zip(gv.par_chunks(NORM_ROWS * d)))
            .map(|(dx, (x, g))| {
                let mut da = vec![0f32; d];
                for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
                    let m = x.iter().zip(g).zip(av).map(|((x, g), a)| g * a * (x * r)).sum::<f32>() / d as f32;
                    for (((dx, &x), &g), (&a, da)) in dx.iter_mut().zip(x).zip(g).zip(av.iter().zip(da.iter_mut())) {
                        let xhat = x * r;
                        *dx = (g * a - xhat * m) * r;
                        *da += g * xhat;
                    }
                }
                da
            })
            .collect();
        let mut dalpha = vec![0f32; d];
        for p in &partials {
            for (a, v) in dalpha.iter_mut().zip(p) {
                *a += v;
            }
        }
        Ok((dx, dalpha))
    })?;
    Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dalpha, alpha.shape(), alpha.device())?)))
}

/// RMS norm over the last dim with weight `alpha`, with gradients for both.
pub fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    let y = candle_nn::ops::rms_norm(x, alpha, eps)?;
    x.apply_op2(alpha, RmsNorm(Mutex::new(Some(y)), eps))
}

struct Rope(Mutex<Option<Tensor>>);
impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cotlab-rope"
    }
    fused_fwd3!(0);
    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = candle_nn::rotary_emb::rope(&g.contiguous()?, cos, &sin.neg()?)?;
        Ok((Some(dx), None, None))
    }
}

/// Half-split ("neox"/HF) rotary embedding of x (B, H, T, D) with cos/sin (T, D/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x, cos, sin)?;
    x.apply_op3(cos, sin, Rope(Mutex::new(Some(y))))
}

/// `x Wᵀ` with a hand-written backward. Through candle's own ops (`x.matmul(&w.t())`) the
/// weight's gradient comes back as xᵀ·g, (in, out), and the transpose node hands it on as a
/// strided view that is then summed into a zeroed buffer element by element, columns apart;
/// here it is gᵀ·x, (out, in), contiguous. `trainable: false` (a frozen weight under LoRA)
/// skips the weight-gradient GEMM.
struct Linear {
    trainable: bool,
    /// The GEMM of all three products (forward, dX, dW) on the CPU.
    gemm: Gemm,
    /// Where the weight's gradient is summed in place (see [`GradSink`]); `None`: handed to
    /// candle's gradient store.
    sink: Option<Slot>,
}
impl Linear {
    /// (1, N, out, in) and wᵀ's layout: the arguments `Tensor::matmul(x, wᵀ)` passes the backend,
    /// so the forward is computed in the op (no result handed over and copied) with its bits.
    fn bmnk(&self, xl: &Layout, wl: &Layout) -> Result<((usize, usize, usize, usize), Layout)> {
        let ((n, k), (out, k2)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        if k != k2 {
            candle_core::bail!("linear: input {:?} against weight {:?}", xl.shape(), wl.shape());
        }
        Ok(((1, n, out, k), wl.transpose(0, 1)?))
    }
}
impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        if self.trainable {
            "cotlab-linear"
        } else {
            "cotlab-frozen-linear"
        }
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, wt) = self.bmnk(xl, wl)?;
        let (_, n, out, k) = bmnk;
        if let (Some(x), Some(w)) = (contiguous_f32(xs, xl), contiguous_f32(ws, wl)) {
            let mut y = output_buffer(n * out);
            self.gemm.run(n, out, k, &mut y, out, false, Operand::new(x, k, 1), Operand::new(w, 1, k));
            return Ok((CpuStorage::F32(y), Shape::from((n, out))));
        }
        Ok((xs.matmul(ws, bmnk, xl, &wt)?, Shape::from((n, out))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, xs: &candle_core::CudaStorage, xl: &Layout, ws: &candle_core::CudaStorage, wl: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, wt) = self.bmnk(xl, wl)?;
        Ok((xs.matmul(ws, bmnk, xl, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (&x.detach(), &w.detach());
        let dx = matmul(g, w, self.gemm)?;
        if !self.trainable {
            // Skipping the frozen weight's GEMM is most of what makes LoRA cheaper than full FT.
            return Ok((Some(dx), None));
        }
        let (g2, x2) = (g.flatten_to(g.rank() - 2)?, x.flatten_to(x.rank() - 2)?);
        if let Some(slot) = &self.sink {
            add_weight_grad(slot, &g2, &x2, w.dims2()?, self.gemm)?;
            return Ok((Some(dx), None));
        }
        if self.gemm == Gemm::Bf16 && x2.device().is_cpu() {
            // No sink: the same product into a zeroed gradient.
            let slot = Slot::default();
            add_weight_grad(&slot, &g2, &x2, w.dims2()?, self.gemm)?;
            let v = slot.lock().unwrap().take().expect("add_weight_grad fills the slot");
            return Ok((Some(dx), Some(Tensor::from_vec(v, w.shape(), w.device())?)));
        }
        Ok((Some(dx), Some(g2.t()?.matmul(&x2)?)))
    }
}

/// Which GEMM a projection's products run on (on the CPU; CUDA runs candle's matmul in the
/// tensors' dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// f32 operands and products ([`sgemm`]).
    F32,
    /// f32 tensors whose values are rounded to bf16 for the products, accumulated in f32
    /// ([`bf16_gemm`]: `dtype: bf16` on the CPU, PyTorch autocast's matmul).
    Bf16,
}

impl Gemm {
    /// `dst = [dst +] a·b` on this GEMM, on candle's threads.
    #[allow(clippy::too_many_arguments)]
    fn run(self, m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: Operand, b: Operand) {
        match self {
            Gemm::F32 => sgemm(m, n, k, dst, dst_rs, accumulate, a, b, 1.0, threads()),
            Gemm::Bf16 => bf16_gemm(m, n, k, dst, dst_rs, accumulate, a, b, threads()),
        }
    }
}

/// `x Wᵀ` for W (out, in), x (N, in) on `gemm`, gradients to both (W's into its [`GradSink`]
/// when one is open for it).
pub fn linear(x: &Tensor, w: &Tensor, gemm: Gemm) -> Result<Tensor> {
    linear_with(x, w, Linear { trainable: true, gemm, sink: GradSink::slot_of(w) })
}

fn linear_with(x: &Tensor, w: &Tensor, op: Linear) -> Result<Tensor> {
    bf16_ready(x, op.gemm)?.apply_op2(w, op)
}

/// `x Wᵀ` for a frozen weight W (out, in), x (N, in) on `gemm`: gradient flows to x only.
pub fn frozen_linear(x: &Tensor, w: &Tensor, gemm: Gemm) -> Result<Tensor> {
    linear_with(x, w, Linear { trainable: false, gemm, sink: None })
}

/// `x` as the bf16 GEMM takes it (contiguous: a strided input would fall back to candle's f32
/// matmul); as it is for the f32 GEMM.
fn bf16_ready(x: &Tensor, gemm: Gemm) -> Result<Tensor> {
    if gemm == Gemm::Bf16 {
        x.contiguous()
    } else {
        Ok(x.clone())
    }
}

/// Rows `ids` of the embedding table, whose gradient (the rows' gradients added at their ids)
/// goes into the table's [`GradSink`]: candle's `index_select` backward zeroes a whole
/// table-sized gradient (SmolLM2: 49 152 × 576, 113 MB) per backward pass to add a few hundred
/// rows into, and the store then adds it to another zeroed one.
struct Embedding {
    ids: Vec<u32>,
    sink: Slot,
}

impl CustomOp1 for Embedding {
    fn name(&self) -> &'static str {
        "cotlab-embedding"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let table = f32_slice(s, l, "embedding table")?;
        let (rows, d) = l.shape().dims2()?;
        let mut out = Vec::with_capacity(self.ids.len() * d);
        for &id in &self.ids {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("embedding: id {id} is outside the table's {rows} rows");
            }
            out.extend_from_slice(&table[id * d..(id + 1) * d]);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.ids.len(), d))))
    }
    fn bwd(&self, table: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (rows, d) = table.dims2()?;
        with_f32(&[g], "embedding backward", |v| {
            let mut sum = self.sink.lock().unwrap();
            let dst = sum.get_or_insert_with(|| vec![0f32; rows * d]);
            // In id order, as index_add: the same bits for a table row's own additions.
            for (&id, gr) in self.ids.iter().zip(v[0].chunks_exact(d)) {
                for (a, &b) in dst[id as usize * d..(id as usize + 1) * d].iter_mut().zip(gr) {
                    *a += b;
                }
            }
            Ok(())
        })?;
        Ok(None)
    }
}

/// `table[ids]` (N, D) for ids of any shape (flattened): with the gradient going into the
/// table's [`GradSink`] when one is open for it, else candle's `index_select`.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let ids = ids.flatten_all()?;
    match GradSink::slot_of(table) {
        Some(sink) if table.rank() == 2 => {
            let ids = ids.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
            table.apply_op1(Embedding { ids, sink })
        }
        _ => table.index_select(&ids, 0),
    }
}

/// A weight's gradient summed in place across backward passes.
type Slot = std::sync::Arc<Mutex<Option<Vec<f32>>>>;

thread_local! {
    /// The sinks open on this thread by weight, for [`linear`] to find (candle's graph has no
    /// room for them). Per thread: a forward pass on another thread (a parallel test, another
    /// script's student) never sends its gradients into this thread's sink.
    static SINKS: std::cell::RefCell<std::collections::HashMap<candle_core::TensorId, Slot>> = Default::default();
}

/// Weight gradients that [`linear`]'s backward adds into one buffer per weight, in place, while
/// the sink is open: `gᵀ·x` is one GEMM that reads the running sum (gemm's `dst + lhs·rhs`).
/// Through candle's gradient store each backward pass allocates a zeroed gradient per weight,
/// adds the GEMM's result to it, and the trainer adds that to its running sum: three passes
/// over every weight's gradient per micro-batch, 16 times an optimizer step in the paper's
/// recipe. Only CPU f32 weights get a sink; the others keep candle's store.
pub struct GradSink {
    slots: Vec<Option<(candle_core::TensorId, Slot)>>,
    /// Not `Send`: dropped on the thread whose table it is in.
    _thread: std::marker::PhantomData<*const ()>,
}

impl GradSink {
    /// Opens a sink for each of `weights` (f32 on the CPU, not already in a sink; the rest get
    /// `None`) for the forward passes this thread runs until the sink is dropped.
    pub fn open<'a>(weights: impl IntoIterator<Item = &'a Tensor>) -> GradSink {
        SINKS.with_borrow_mut(|open| {
            let slots = weights
                .into_iter()
                .map(|w| {
                    (w.device().is_cpu() && w.dtype() == candle_core::DType::F32 && !open.contains_key(&w.id())).then(|| {
                        let slot = Slot::default();
                        open.insert(w.id(), slot.clone());
                        (w.id(), slot)
                    })
                })
                .collect();
            GradSink { slots, _thread: std::marker::PhantomData }
        })
    }

    fn slot_of(w: &Tensor) -> Option<Slot> {
        SINKS.with_borrow(|open| open.get(&w.id()).cloned())
    }

    /// The gradient summed into weight `i`'s sink since it opened (or since the last `take`),
    /// shaped like the weight; `None` when no backward pass reached it through [`linear`].
    pub fn take(&self, i: usize, like: &Tensor) -> Result<Option<Tensor>> {
        let Some((_, slot)) = &self.slots[i] else { return Ok(None) };
        match slot.lock().unwrap().take() {
            Some(v) => Ok(Some(Tensor::from_vec(v, like.shape(), like.device())?)),
            None => Ok(None),
        }
    }

    /// Weight `i`'s whole gradient: its sink's sum ([`GradSink::take`]) plus `from_store`, what
    /// candle's gradient store got for it (a tied embedding gets both); zeros when neither.
    pub fn gradient(&self, i: usize, weight: &Tensor, from_store: Option<Tensor>) -> Result<Tensor> {
        match (from_store, self.take(i, weight)?) {
            (Some(a), Some(b)) => a + b,
            (Some(g), None) | (None, Some(g)) => Ok(g),
            (None, None) => weight.zeros_like(),
        }
    }
}

impl Drop for GradSink {
    fn drop(&mut self) {
        SINKS.with_borrow_mut(|open| {
            for (id, _) in self.slots.iter().flatten() {
                open.remove(id);
            }
        });
    }
}

/// slot += gᵀ·x for g (N, out), x (N, in): one GEMM on rayon's threads that reads the running
/// sum (the first time, writes `gᵀ·x`).
fn add_weight_grad(slot: &Slot, g: &Tensor, x: &Tensor, (out, inp): (usize, usize), gemm: Gemm) -> Result<()> {
    let ((n, go), (n2, xi)) = (g.dims2()?, x.dims2()?);
    if n != n2 || go != out || xi != inp {
        candle_core::bail!("linear backward: gradient {:?} and input {:?} do not fit a ({out}, {inp}) weight", g.shape(), x.shape());
    }
    with_f32(&[g, x], "linear backward", |v| {
        let (a, b) = (Operand::new(v[0], 1, out), Operand::new(v[1], inp, 1));
        let mut sum = slot.lock().unwrap();
        match sum.as_mut() {
            Some(dst) => gemm.run(out, inp, n, dst, inp, true, a, b),
            None => {
                // The first pass writes the product (what adding it to zeros gives, without
                // zeroing a weight-sized buffer per micro-batch).
                let mut dst = output_buffer(out * inp);
                gemm.run(out, inp, n, &mut dst, inp, false, a, b);
                *sum = Some(dst);
            }
        }
        Ok(())
    })
}

/// `silu(gate) · up`, the gated MLP's activation, as one op on f32 CPU tensors: one pass
/// forward, one pass backward giving both gradients. Through candle's ops it was two nodes
/// whose backward took about a dozen passes over (tokens × intermediate) tensors (silu's
/// derivative alone is neg, exp, +1, recip, 1 − y, ·, +, · plus the zeros + add that
/// accumulates every node's gradient). Same expressions as candle's: the forward gives the same
/// bits; the backward on AVX2 uses the vector exp (see [`swiglu_bwd_avx2`]).
struct SwiGlu;

/// Elements per parallel task of the element-wise kernels.
const CHUNK: usize = 16 * 1024;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match contiguous_f32(s, l) {
        Some(v) => Ok(v),
        None if !matches!(s, CpuStorage::F32(_)) => candle_core::bail!("{what}: expected f32"),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// `a · b` for 2-D f32 CPU tensors on `gemm` (contiguous copies made if need be); candle's
/// matmul for anything else.
fn matmul(a: &Tensor, b: &Tensor, gemm: Gemm) -> Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.rank() == 2;
    if !(f32_cpu(a) && f32_cpu(b)) {
        return a.matmul(b);
    }
    let ((m, k), (k2, n)) = (a.dims2()?, b.dims2()?);
    if k != k2 {
        candle_core::bail!("matmul: {:?} against {:?}", a.shape(), b.shape());
    }
    let y = with_f32(&[a, b], "matmul", |v| {
        let mut y = output_buffer(m * n);
        gemm.run(m, n, k, &mut y, n, false, Operand::new(v[0], k, 1), Operand::new(v[1], n, 1));
        Ok(y)
    })?;
    Tensor::from_vec(y, (m, n), a.device())
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// A contiguous f32 CPU storage's elements under `l`, or `None`.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Option<&'a [f32]> {
    let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else { return None };
    Some(&v[a..b])
}

/// Runs `f` on the f32 data of CPU tensors in place (made contiguous first if need be), for
/// the hand-written backward kernels: no copy of each input into a Vec.
pub(super) fn with_f32<R>(ts: &[&Tensor], what: &str, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let ts = ts.iter().map(|t| t.contiguous()).collect::<Result<Vec<_>>>()?;
    let held: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(held.len());
    for (s, l) in &held {
        let Storage::Cpu(c) = &**s else { candle_core::bail!("{what}: expected CPU tensors") };
        slices.push(f32_slice(c, l, what)?);
    }
    f(&slices)
}

/// candle's silu, `v / (1 + exp(−v))`.
#[inline]
fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "cotlab-swiglu"
    }
    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (g, u) = (f32_slice(gs, gl, "swiglu gate")?, f32_slice(us, ul, "swiglu up")?);
        if gl.shape() != ul.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gl.shape(), ul.shape());
        }
        let mut y = output_buffer(g.len());
        y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = silu(g) * u;
            }
        });
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (dg, du) = with_f32(&[g, u, dy], "swiglu backward", |v| {
            let (gv, uv, dyv) = (v[0], v[1], v[2]);
            let (mut dg, mut du) = (output_buffer(gv.len()), output_buffer(gv.len()));
            dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
                let o = c * CHUNK;
                let done = swiglu_bwd_avx2(&gv[o..o + dg.len()], &uv[o..o + dg.len()], &dyv[o..o + dg.len()], dg, du);
                for (i, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate().skip(done) {
                    let (g, u, dy) = (gv[o + i], uv[o + i], dyv[o + i]);
                    // candle: sigmoid = recip(exp(−g) + 1), silu' = sigmoid·(1 − silu) + silu, and
                    // the product's gradients dy·up, dy·silu (one exp serves both).
                    let e = (-g).exp();
                    let sig = (e + 1.0).recip();
                    let y = g / (1.0 + e);
                    *dg = (dy * u) * (sig * (1.0 - y) + y);
                    *du = dy * y;
                }
            });
            Ok((dg, du))
        })?;
        Ok((Some(Tensor::from_vec(dg, g.shape(), g.device())?), Some(Tensor::from_vec(du, u.shape(), u.device())?)))
    }
}

/// SwiGLU's backward (the loop in `SwiGlu::bwd`, the same expressions) on 8 lanes at a time
/// with the vector exp ([`super::simd::exp_avx2`]: within 2 ulp of libm's, so the gradients
/// differ from the scalar loop's in their last bits); returns how many elements it did (0
/// without AVX2). Training only: the forward, which decoding runs too, keeps libm's expf.
fn swiglu_bwd_avx2(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::simd::Kernel::detect().avx2() {
        let done = g.len() - g.len() % 8;
        assert!(u.len() >= done && dy.len() >= done && dg.len() >= done && du.len() >= done);
        // SAFETY: AVX2 and FMA checked; the five slices hold at least `done` elements.
        unsafe { swiglu_bwd_lanes(done, g, u, dy, dg, du) };
        return done;
    }
    0
}

/// The first `n` (a multiple of 8) elements of [`swiglu_bwd_avx2`], in a `target_feature`
/// function so the intrinsics inline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_bwd_lanes(n: usize, g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    for i in (0..n).step_by(8) {
        let (gi, ui, dyi) = (_mm256_loadu_ps(g.as_ptr().add(i)), _mm256_loadu_ps(u.as_ptr().add(i)), _mm256_loadu_ps(dy.as_ptr().add(i)));
        let e = super::simd::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), gi));
        let sig = _mm256_div_ps(one, _mm256_add_ps(e, one));
        let y = _mm256_div_ps(gi, _mm256_add_ps(one, e));
        let d = _mm256_add_ps(_mm256_mul_ps(sig, _mm256_sub_ps(one, y)), y);
        _mm256_storeu_ps(dg.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(dyi, ui), d));
        _mm256_storeu_ps(du.as_mut_ptr().add(i), _mm256_mul_ps(dyi, y));
    }
}

/// `silu(gate) · up` with gradients to both: the fused op for contiguous f32 CPU tensors,
/// candle's ops otherwise (CUDA, bf16).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.device().is_cpu() && gate.dtype() == candle_core::DType::F32 && up.dtype() == candle_core::DType::F32 {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        candle_nn::ops::silu(gate)? * up
    }
}

/// Cross-entropy of logits (N, V) against `targets` (N): returns the per-row NLL (N). Fused on
/// CPU: one pass for log-sum-exp forward, one for `softmax − onehot` backward, instead of the
/// half-dozen vocab-sized tensors a composed log_softmax + gather allocates in each direction.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if !matches!(logits.device(), candle_core::Device::Cpu) {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let t = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
        return logp.gather(&t, 1)?.squeeze(1)?.neg();
    }
    logits.contiguous()?.apply_op1(CrossEntropy { targets: targets.to_vec(), lse: Mutex::new(Vec::new()) })
}

struct CrossEntropy {
    targets: Vec<u32>,
    lse: Mutex<Vec<f32>>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cotlab-cross-entropy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "cross-entropy logits")?;
        let (n, v) = l.shape().dims2()?;
        let (nll, lse) = nll_rows(x, v, &self.targets)?;
        *self.lse.lock().unwrap() = lse;
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (n, v) = x.dims2()?;
        let lse = self.lse.lock().unwrap();
        let out = with_f32(&[x, g], "cross-entropy backward", |t| {
            let (xs, gs) = (t[0], t[1]);
            let mut out = output_buffer(n * v);
            out.par_chunks_mut(v).zip(xs.par_chunks(v)).enumerate().for_each(|(i, (o, row))| {
                let (gi, li) = (gs[i], lse[i]);
                super::simd::scaled_exp(row, li, gi, o);
                o[self.targets[i] as usize] -= gi;
            });
            Ok(out)
        })?;
        Ok(Some(Tensor::from_vec(out, (n, v), x.device())?))
    }
}

/// Each row's NLL of its target and its log-sum-exp, for logits `x` (rows of `v`).
fn nll_rows(x: &[f32], v: usize, targets: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
    use rayon::prelude::*;
    if v == 0 {
        candle_core::bail!("cross-entropy: logits with no vocabulary (0 columns)");
    }
    let n = x.len() / v;
    if targets.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target token {t} is outside the vocabulary of {v}");
    }
    let rows: Vec<(f32, f32)> = x
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = super::simd::sum_exp(row, m);
            let lse = m + sum.ln();
            (lse - row[t as usize], lse)
        })
        .collect();
    Ok(rows.into_iter().unzip())
}

/// Per-row cross-entropy of the logits `x·Wᵀ` (x (N, in), W (V, in)) against `targets` (N), the
/// training loss's head: the projection and [`cross_entropy_rows`] as one op on f32 CPU
/// tensors (the two ops elsewhere). The logits stay in the op from the forward to the backward,
/// which turns them into their gradient in place and hands that to the projection's backward
/// (dX, and dW unless `frozen`): the two ops held the logits and a logits-sized gradient at
/// once, and candle's store summed that gradient once more. The same bits as the two ops.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &[u32], frozen: bool, gemm: Gemm) -> Result<Tensor> {
    let linear = Linear { trainable: !frozen, gemm, sink: if frozen { None } else { GradSink::slot_of(w) } };
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(x) && f32_cpu(w)) {
        return cross_entropy_rows(&linear_with(x, w, linear)?, targets);
    }
    bf16_ready(x, gemm)?.apply_op2(w, LinearCrossEntropy { linear, targets: targets.to_vec(), logits: Mutex::new(None) })
}

struct LinearCrossEntropy {
    linear: Linear,
    targets: Vec<u32>,
    /// The forward's logits and each row's log-sum-exp, until the backward takes them.
    logits: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "cotlab-linear-cross-entropy"
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.linear.cpu_fwd(xs, xl, ws, wl)?;
        let (CpuStorage::F32(y), (n, v)) = (y, shape.dims2()?) else { candle_core::bail!("linear cross-entropy: f32 logits expected") };
        let (nll, lse) = nll_rows(&y, v, &self.targets)?;
        *self.logits.lock().unwrap() = Some((y, lse));
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let Some((mut logits, lse)) = self.logits.lock().unwrap().take() else {
            candle_core::bail!(
                "linear cross-entropy: a second backward pass through one forward (its logits became the first one's gradient): run the forward pass again"
            )
        };
        let v = w.dim(0)?;
        let gs = g.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        // softmax − onehot, times the row's gradient: cross_entropy_rows' backward, in place.
        logits.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
            super::simd::scaled_exp_in_place(row, lse[i], gs[i]);
            row[self.targets[i] as usize] -= gs[i];
        });
        let dlogits = Tensor::from_vec(logits, (lse.len(), v), x.device())?;
        self.linear.bwd(x, w, &dlogits, &dlogits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The hand-written backward of each op matches autograd through the slow reference op.
    #[test]
    fn backward_matches_slow_reference() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let w = Var::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let alpha = Var::randn(1f32, 0.1, 8, &dev)?;
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev)?;
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev)?;
        let check = |fast: Tensor, slow: Tensor, vars: &[&Var]| -> Result<()> {
            let diff = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "forward differs by {diff}");
            let gf = (fast * w.as_tensor())?.sum_all()?.backward()?;
            let gs = (slow * w.as_tensor())?.sum_all()?.backward()?;
            for v in vars {
                let a = gf.get(v).expect("fast op has a gradient");
                let b = gs.get(v).unwrap();
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                assert!(d / scale < 1e-4, "gradient differs: {d} (scale {scale})");
            }
            Ok(())
        };
        check(rms_norm(&x, &alpha, 1e-5)?, candle_nn::ops::rms_norm_slow(&x, &alpha, 1e-5)?, &[&x, &alpha])?;
        check(rope(&x, &cos, &sin)?, candle_nn::rotary_emb::rope_slow(&x, &cos, &sin)?, &[&x])?;
        // Rows spanning several of the norm backward's tasks (their weight-gradient partials add up).
        let xl = Var::randn(0f32, 1., (3, 40, 16), &dev)?;
        let al = Var::randn(1f32, 0.1, 16, &dev)?;
        let wl = Tensor::randn(0f32, 1., (3, 40, 16), &dev)?;
        let gf = (rms_norm(&xl, &al, 1e-5)? * &wl)?.sum_all()?.backward()?;
        let gs = (candle_nn::ops::rms_norm_slow(&xl, &al, 1e-5)? * &wl)?.sum_all()?.backward()?;
        for v in [&xl, &al] {
            let (a, b) = (gf.get(v).unwrap(), gs.get(v).unwrap());
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / b.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "rms_norm gradient over 120 rows differs by {d}");
        }
        // The fused SwiGLU is candle's silu · up to the bit; its gradients within the vector
        // exp's 2 ulp (to the bit without AVX2). 240 elements: 30 vector steps, no tail.
        let up = Var::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let (fast, slow) = (swiglu(&x, &up)?, (candle_nn::ops::silu(&x)? * up.as_tensor())?);
        assert_eq!(fast.flatten_all()?.to_vec1::<f32>()?, slow.flatten_all()?.to_vec1::<f32>()?);
        let (gf, gs) = ((fast * w.as_tensor())?.sum_all()?.backward()?, (slow * w.as_tensor())?.sum_all()?.backward()?);
        for v in [&x, &up] {
            let (a, b) = (gf.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?, gs.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?);
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!((a - b).abs() <= 4e-7 * b.abs().max(1.0), "swiglu gradient {i}: {a} vs {b}");
            }
        }
        // A NaN gate still gives NaN gradients (the vector exp keeps it).
        let nan = Var::from_vec(vec![f32::NAN; 8], 8, &dev)?;
        let g = swiglu(nan.as_tensor(), &Tensor::ones(8, DType::F32, &dev)?)?.sum_all()?.backward()?;
        assert!(g.get(&nan).unwrap().to_vec1::<f32>()?.iter().all(|v| v.is_nan()));
        // Per-row positions (packed rows, decoding): cos/sin (B, T, D/2), each row its own table.
        let cos3 = Tensor::randn(0f32, 1., (2, 5, 4), &dev)?;
        let sin3 = Tensor::randn(0f32, 1., (2, 5, 4), &dev)?;
        let rows = (0..2).map(|b| candle_nn::rotary_emb::rope_slow(&x.narrow(0, b, 1)?, &cos3.get(b)?, &sin3.get(b)?)).collect::<Result<Vec<_>>>()?;
        check(rope(&x, &cos3, &sin3)?, Tensor::cat(&rows, 0)?, &[&x])?;
        let m = Var::randn(0f32, 1., (30, 8), &dev)?;
        let w = Var::randn(0f32, 1., (30, 6), &dev)?;
        let lin = Tensor::randn(0f32, 1., (6, 8), &dev)?;
        let fast = frozen_linear(m.as_tensor(), &lin, Gemm::F32)?;
        let slow = m.as_tensor().matmul(&lin.t()?)?;
        let gf = (&fast * w.as_tensor())?.sum_all()?.backward()?;
        let gs = (&slow * w.as_tensor())?.sum_all()?.backward()?;
        let d = (gf.get(&m).unwrap() - gs.get(&m).unwrap())?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-4);
        // Fused cross-entropy against log_softmax + gather.
        let logits = Var::randn(0f32, 3., (7, 50), &dev)?;
        let targets = [3u32, 0, 49, 7, 7, 20, 1];
        let wt = Tensor::randn(0f32, 1., 7, &dev)?;
        let fast = cross_entropy_rows(logits.as_tensor(), &targets)?;
        let t = Tensor::new(&targets, &dev)?.unsqueeze(1)?;
        let slow = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)?.gather(&t, 1)?.squeeze(1)?.neg()?;
        assert!((&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        let gf = (fast * &wt)?.sum_all()?.backward()?;
        let gs = (slow * &wt)?.sum_all()?.backward()?;
        let d = (gf.get(&logits).unwrap() - gs.get(&logits).unwrap())?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "cross-entropy gradient differs by {d}");
        Ok(())
    }

    /// `linear` on the bf16 GEMM: the forward, dX and dW (into a sink and into candle's store)
    /// are the products of the bf16-rounded operands, accumulated in f32 (f32 products where the
    /// CPU has no bf16 instructions), for a trainable and a frozen weight.
    #[test]
    fn bf16_linear_runs_every_product_on_rounded_operands() -> Result<()> {
        let dev = Device::Cpu;
        let rounds = super::super::bf16_gemm::kernel().is_some();
        let r = |v: f32| if rounds { f32::from_bits((super::super::bf16::to_bf16(v) as u32) << 16) as f64 } else { v as f64 };
        let (n, inp, out) = (37, 70, 45);
        let x = Var::randn(0f32, 1., (n, inp), &dev)?;
        let w = Var::randn(0f32, 1., (out, inp), &dev)?;
        let g = Tensor::randn(0f32, 1., (n, out), &dev)?;
        let (xv, wv, gv) = (x.as_tensor().flatten_all()?.to_vec1::<f32>()?, w.as_tensor().flatten_all()?.to_vec1::<f32>()?, g.flatten_all()?.to_vec1::<f32>()?);
        // want[i][j] = Σ_p a(i, p)·b(p, j) in f64 of rounded values; within f32 accumulation.
        let close =
            |got: &Tensor, rows: usize, cols: usize, k: usize, a: &dyn Fn(usize, usize) -> f32, b: &dyn Fn(usize, usize) -> f32, what: &str| -> Result<()> {
                let got = got.flatten_all()?.to_vec1::<f32>()?;
                for i in 0..rows {
                    for j in 0..cols {
                        let want: f64 = (0..k).map(|p| r(a(i, p)) * r(b(p, j))).sum();
                        let mag: f64 = (0..k).map(|p| (r(a(i, p)) * r(b(p, j))).abs()).sum();
                        let e = (got[i * cols + j] as f64 - want).abs();
                        assert!(e <= k as f64 * 1.2e-7 * mag + 1e-6, "{what} ({i},{j}): {} vs {want}", got[i * cols + j]);
                    }
                }
                Ok(())
            };
        for trainable in [true, false] {
            let y = if trainable { linear(x.as_tensor(), w.as_tensor(), Gemm::Bf16)? } else { frozen_linear(x.as_tensor(), w.as_tensor(), Gemm::Bf16)? };
            close(&y, n, out, inp, &|i, p| xv[i * inp + p], &|p, j| wv[j * inp + p], "forward")?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            close(grads.get(&x).unwrap(), n, inp, out, &|i, p| gv[i * out + p], &|p, j| wv[p * inp + j], "dX")?;
            let dw = |grads: &candle_core::backprop::GradStore| grads.get(&w).cloned();
            if !trainable {
                assert!(dw(&grads).is_none(), "a frozen weight gets no gradient");
                continue;
            }
            close(&dw(&grads).unwrap(), out, inp, n, &|i, p| gv[p * out + i], &|p, j| xv[p * inp + j], "dW")?;
            let sink = GradSink::open([w.as_tensor()]);
            (linear(x.as_tensor(), w.as_tensor(), Gemm::Bf16)? * &g)?.sum_all()?.backward()?;
            close(&sink.take(0, w.as_tensor())?.unwrap(), out, inp, n, &|i, p| gv[p * out + i], &|p, j| xv[p * inp + j], "dW in a sink")?;
        }
        Ok(())
    }

    /// The fused head + cross-entropy gives the bits of the projection then
    /// `cross_entropy_rows`: per-row NLL, dX, and dW (in candle's store, in a sink, none when
    /// frozen), on both GEMMs; a target outside the vocabulary is an error naming it.
    #[test]
    fn linear_cross_entropy_is_the_two_ops_to_the_bit() -> Result<()> {
        let dev = Device::Cpu;
        let (n, inp, v) = (37, 70, 301);
        let x = Var::randn(0f32, 1., (n, inp), &dev)?;
        let w = Var::randn(0f32, 0.3, (v, inp), &dev)?;
        let targets: Vec<u32> = (0..n as u32).map(|i| i * 37 % v as u32).collect();
        let scale = Tensor::randn(0f32, 1., n, &dev)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|f| f.to_bits()).collect()) };
        for gemm in [Gemm::F32, Gemm::Bf16] {
            for (frozen, sink) in [(false, false), (false, true), (true, false)] {
                // The bits of (NLL, dX, dW).
                type Bits = (Vec<u32>, Vec<u32>, Option<Vec<u32>>);
                let run = |fused: bool| -> Result<Bits> {
                    let s = sink.then(|| GradSink::open([w.as_tensor()]));
                    let nll = if fused {
                        linear_cross_entropy(x.as_tensor(), w.as_tensor(), &targets, frozen, gemm)?
                    } else {
                        let logits = if frozen { frozen_linear(x.as_tensor(), w.as_tensor(), gemm)? } else { linear(x.as_tensor(), w.as_tensor(), gemm)? };
                        cross_entropy_rows(&logits, &targets)?
                    };
                    let grads = (&nll * &scale)?.sum_all()?.backward()?;
                    let dw = match &s {
                        Some(s) => s.take(0, w.as_tensor())?,
                        None => grads.get(&w).cloned(),
                    };
                    Ok((bits(&nll)?, bits(grads.get(&x).unwrap())?, dw.map(|t| bits(&t)).transpose()?))
                };
                let (fused, two) = (run(true)?, run(false)?);
                let what = format!("{gemm:?}, frozen {frozen}, sink {sink}");
                assert_eq!(fused.0, two.0, "NLL, {what}");
                assert_eq!(fused.1, two.1, "dX, {what}");
                assert_eq!(fused.2, two.2, "dW, {what}");
                assert_eq!(fused.2.is_none(), frozen, "a weight gradient unless frozen, {what}");
            }
        }
        let bad = linear_cross_entropy(x.as_tensor(), w.as_tensor(), &[v as u32; 37], false, Gemm::F32).unwrap_err().to_string();
        assert!(bad.contains("target token 301 is outside the vocabulary of 301"), "{bad}");
        Ok(())
    }

    /// A weight's gradient summed in its sink over two backward passes equals the sum of
    /// candle's two (the first pass alone to the bit); the store gets none for it, the input's
    /// gradient is unchanged, and another thread's passes are not captured.
    #[test]
    fn grad_sink_sums_linear_weight_gradients_in_place() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 1., (70, 24), &dev)?;
        let xs = [Var::randn(0f32, 1., (33, 24), &dev)?, Var::randn(0f32, 1., (9, 24), &dev)?];
        let rs = [Tensor::randn(0f32, 1., (33, 70), &dev)?, Tensor::randn(0f32, 1., (9, 70), &dev)?];
        let pass = |i: usize| (linear(xs[i].as_tensor(), w.as_tensor(), Gemm::F32).unwrap() * &rs[i]).unwrap().sum_all().unwrap().backward();
        let plain = [pass(0)?, pass(1)?];
        let (p0, p1) = (plain[0].get(&w).unwrap(), plain[1].get(&w).unwrap());
        let sink = GradSink::open([w.as_tensor()]);
        let first = pass(0)?;
        assert!(first.get(&w).is_none(), "a sinked weight's gradient stays out of candle's store");
        assert_eq!(first.get(&xs[0]).unwrap().flatten_all()?.to_vec1::<f32>()?, plain[0].get(&xs[0]).unwrap().flatten_all()?.to_vec1::<f32>()?);
        let alone = sink.take(0, w.as_tensor())?.expect("the pass reached the sink");
        assert_eq!(alone.flatten_all()?.to_vec1::<f32>()?, p0.flatten_all()?.to_vec1::<f32>()?, "one pass: the bits of gᵀ·x");
        pass(0)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                let other = pass(1).unwrap();
                assert!(other.get(&w).is_some(), "another thread's pass keeps candle's store");
            });
        });
        pass(1)?;
        let summed = sink.gradient(0, w.as_tensor(), None)?;
        let want = (p0 + p1)?;
        let d = (&summed - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "summed in place differs by {d}");
        drop(sink);
        assert!(pass(0)?.get(&w).is_some(), "a closed sink captures nothing");

        // The embedding's rows: repeated ids add up. One pass gives candle's index_select
        // gradient to the bit (both add each id's rows in order to zeros); two add up.
        let table = Var::randn(0f32, 1., (10, 4), &dev)?;
        let ids = Tensor::new(&[[3u32, 1], [3, 7]], &dev)?;
        let r = Tensor::randn(0f32, 1., (4, 4), &dev)?;
        let epass = || (embedding(table.as_tensor(), &ids).unwrap() * &r).unwrap().sum_all().unwrap().backward();
        let plain = epass()?;
        let want = plain.get(&table).unwrap();
        assert_eq!(embedding(table.as_tensor(), &ids)?.to_vec2::<f32>()?, table.as_tensor().index_select(&ids.flatten_all()?, 0)?.to_vec2::<f32>()?);
        let sink = GradSink::open([table.as_tensor()]);
        assert!(epass()?.get(&table).is_none());
        assert_eq!(sink.take(0, table.as_tensor())?.unwrap().to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        epass()?;
        epass()?;
        let d = (sink.gradient(0, table.as_tensor(), None)? - (want * 2.0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "two passes differ by {d}");
        assert!(embedding(table.as_tensor(), &Tensor::new(&[10u32], &dev)?).is_err(), "an id past the table is an error");
        Ok(())
    }
}
