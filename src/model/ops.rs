//! Fused ops that carry a gradient. candle 0.11's fused `softmax_last_dim`, `rms_norm` and
//! `rope` are built with `*_no_bwd`: training through them silently updates only the embedding.
//! Each op here runs the fused kernel forward and defines the backward by hand:
//! attention (softmax inside, probabilities recomputed) `dS = P⊙(dP − Σ dP⊙P)` (one pass per
//! row on the CPU); rms_norm `r·(gα − x̂·mean(gα⊙x̂))`, `dα = Σ g⊙x̂`; rope `rope(g, cos, −sin)`.
//!
//! Every backward detaches its inputs first: a gradient computed from a tracked tensor (a
//! `Var` weight, an activation) carries an op node that keeps its operands alive, and weight
//! gradients stay in the gradient store until the backward pass ends — measured: +1.5 GB peak
//! RSS for a 4 × 256 step when `linear`'s backward did not.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D};

use super::sgemm::{sgemm, Operand};

/// Hands a precomputed result to candle as the op's output, so the graph gets our backward.
fn take_cpu(slot: &Mutex<Option<Tensor>>) -> Result<(CpuStorage, Shape)> {
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
fn take_cuda(slot: &Mutex<Option<Tensor>>) -> Result<(candle_core::CudaStorage, Shape)> {
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
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            take_cpu(&self.$slot)
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
            take_cuda(&self.$slot)
        }
    };
}

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
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
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
        let mut dx = vec![0f32; xv.len()];
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
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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
        if self.trainable { "cotlab-linear" } else { "cotlab-frozen-linear" }
    }
    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, wt) = self.bmnk(xl, wl)?;
        let (_, n, out, k) = bmnk;
        if let (Some(x), Some(w)) = (contiguous_f32(xs, xl), contiguous_f32(ws, wl)) {
            let mut y = vec![0f32; n * out];
            sgemm(n, out, k, &mut y, out, false, Operand::new(x, k, 1), Operand::new(w, 1, k), 1.0, threads());
            return Ok((CpuStorage::F32(y), Shape::from((n, out))));
        }
        Ok((xs.matmul(ws, bmnk, xl, &wt)?, Shape::from((n, out))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (bmnk, wt) = self.bmnk(xl, wl)?;
        Ok((xs.matmul(ws, bmnk, xl, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (&x.detach(), &w.detach());
        let dx = matmul(g, w)?;
        if !self.trainable {
            // Skipping the frozen weight's GEMM is most of what makes LoRA cheaper than full FT.
            return Ok((Some(dx), None));
        }
        let (g2, x2) = (g.flatten_to(g.rank() - 2)?, x.flatten_to(x.rank() - 2)?);
        if let Some(slot) = &self.sink {
            add_weight_grad(slot, &g2, &x2, w.dims2()?)?;
            return Ok((Some(dx), None));
        }
        Ok((Some(dx), Some(g2.t()?.matmul(&x2)?)))
    }
}

/// `x Wᵀ` for W (out, in), x (N, in), gradients to both (W's into its [`GradSink`] when one is
/// open for it).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, Linear { trainable: true, sink: GradSink::slot_of(w) })
}

/// `x Wᵀ` for a frozen weight W (out, in), x (N, in): gradient flows to x only.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2(w, Linear { trainable: false, sink: None })
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
/// sum (zeros the first time, so the first pass's bits are those of a plain `gᵀ·x`).
fn add_weight_grad(slot: &Slot, g: &Tensor, x: &Tensor, (out, inp): (usize, usize)) -> Result<()> {
    let ((n, go), (n2, xi)) = (g.dims2()?, x.dims2()?);
    if n != n2 || go != out || xi != inp {
        candle_core::bail!("linear backward: gradient {:?} and input {:?} do not fit a ({out}, {inp}) weight", g.shape(), x.shape());
    }
    with_f32(&[g, x], "linear backward", |v| {
        let mut sum = slot.lock().unwrap();
        let dst = sum.get_or_insert_with(|| vec![0f32; out * inp]);
        sgemm(out, inp, n, dst, inp, true, Operand::new(v[0], 1, out), Operand::new(v[1], inp, 1), 1.0, threads());
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

/// `a · b` for 2-D f32 CPU tensors through [`sgemm`] (contiguous copies made if need be);
/// candle's matmul for anything else.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.rank() == 2;
    if !(f32_cpu(a) && f32_cpu(b)) {
        return a.matmul(b);
    }
    let ((m, k), (k2, n)) = (a.dims2()?, b.dims2()?);
    if k != k2 {
        candle_core::bail!("matmul: {:?} against {:?}", a.shape(), b.shape());
    }
    let y = with_f32(&[a, b], "matmul", |v| {
        let mut y = vec![0f32; m * n];
        sgemm(m, n, k, &mut y, n, false, Operand::new(v[0], k, 1), Operand::new(v[1], n, 1), 1.0, threads());
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
fn with_f32<R>(ts: &[&Tensor], what: &str, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
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
        let mut y = vec![0f32; g.len()];
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
            let (mut dg, mut du) = (vec![0f32; gv.len()], vec![0f32; gv.len()]);
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
    if super::simd::Kernel::detect() == super::simd::Kernel::Avx2 {
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
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
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
fn block_probs(q: &[f32], k: &[f32], mask: &[f32], seen: &[(usize, usize)], hd: usize, s: usize, rows: std::ops::Range<usize>, scale: f32, p: &mut Vec<f32>) -> (usize, usize) {
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
        // gets on a slow underflow path: masked scores took 1 % of a training step there.
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
        use rayon::prelude::*;
        let x = f32_slice(s, l, "cross-entropy logits")?;
        let (n, v) = l.shape().dims2()?;
        if self.targets.len() != n {
            candle_core::bail!("cross-entropy: {} targets for {n} rows", self.targets.len());
        }
        let rows: Vec<(f32, f32)> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = super::simd::sum_exp(row, m);
                let lse = m + sum.ln();
                (lse - row[t as usize], lse)
            })
            .collect();
        *self.lse.lock().unwrap() = rows.iter().map(|r| r.1).collect();
        Ok((CpuStorage::F32(rows.iter().map(|r| r.0).collect()), Shape::from(n)))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (n, v) = x.dims2()?;
        let lse = self.lse.lock().unwrap();
        let out = with_f32(&[x, g], "cross-entropy backward", |t| {
            let (xs, gs) = (t[0], t[1]);
            let mut out = vec![0f32; n * v];
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
        let rows = (0..2)
            .map(|b| candle_nn::rotary_emb::rope_slow(&x.narrow(0, b, 1)?, &cos3.get(b)?, &sin3.get(b)?))
            .collect::<Result<Vec<_>>>()?;
        check(rope(&x, &cos3, &sin3)?, Tensor::cat(&rows, 0)?, &[&x])?;
        let m = Var::randn(0f32, 1., (30, 8), &dev)?;
        let w = Var::randn(0f32, 1., (30, 6), &dev)?;
        let lin = Tensor::randn(0f32, 1., (6, 8), &dev)?;
        let fast = frozen_linear(m.as_tensor(), &lin)?;
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

    /// A weight's gradient summed in its sink over two backward passes equals the sum of
    /// candle's two (the first pass alone to the bit); the store gets none for it, the input's
    /// gradient is unchanged, and another thread's passes are not captured.
    #[test]
    fn grad_sink_sums_linear_weight_gradients_in_place() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 1., (70, 24), &dev)?;
        let xs = [Var::randn(0f32, 1., (33, 24), &dev)?, Var::randn(0f32, 1., (9, 24), &dev)?];
        let rs = [Tensor::randn(0f32, 1., (33, 70), &dev)?, Tensor::randn(0f32, 1., (9, 70), &dev)?];
        let pass = |i: usize| (linear(xs[i].as_tensor(), w.as_tensor()).unwrap() * &rs[i]).unwrap().sum_all().unwrap().backward();
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
