//! The trainable decoder shared by every family: weights under their Hugging Face names, LoRA
//! adapters, rotary tables, and the kernels a family's block is written with. A family's block
//! (see `family/`) is one function; [`Pass`] decides whether it runs for training (every op
//! with a backward, see `ops`) or for cached decoding (candle's fused kernels, no graph, a KV
//! cache), so both paths compute the same thing by construction. `tests/model.rs` and
//! `tests/hf_families.rs` check gradients reach every weight and cached == cache-free decoding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var, D};

use super::config::{Activation, ModelConfig};
use super::family::Family;
use super::lora::{Lora, LoraConfig};
use crate::error::{ModelContext, Result};
use crate::kernels::quant::{QFormat, QWeight};
use crate::kernels::{attention, decode_ops, ops};
use crate::usage;

/// Keys and values of every layer for the tokens decoded so far: per layer a preallocated
/// buffer (B, KV heads, capacity, head dim) written in place, so a step copies only its own
/// keys/values (concatenating the whole cache every step made decoding O(T²) in copies).
/// Columns are absolute: the live window is `start..len`; a caller may drop leading columns
/// every row masks ([`KvCache::trim_front`]) or move the window ([`KvCache::relayout`]).
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// First live column.
    start: usize,
    /// Columns written (one past the last).
    len: usize,
    /// Columns the first allocation reserves (prompt + new tokens); grown by doubling.
    hint: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache::with_capacity(layers, 0)
    }

    /// A cache whose buffers hold `columns` tokens before they must grow.
    pub fn with_capacity(layers: usize, columns: usize) -> KvCache {
        KvCache { layers: vec![None; layers], start: 0, len: 0, hint: columns }
    }

    /// One past the last column written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.start
    }

    /// The first live column.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Columns the buffers hold (0 before the first step).
    pub fn capacity(&self) -> usize {
        self.layers.iter().flatten().next().map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    /// Keep the cached rows `rows` (indices into the batch, repeats allowed), in that order:
    /// beam search continues each beam from its parent's keys and values; a finished row is
    /// dropped the same way.
    pub fn reorder(&mut self, rows: &Tensor) -> candle_core::Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }

    /// Drop the first `n` live columns (every row masks them): attention then reads fewer keys.
    pub fn trim_front(&mut self, n: usize) {
        self.start = (self.start + n).min(self.len);
    }

    /// Move the live window to start at column `at`, in buffers of at least `capacity` columns
    /// (and room for the window): every column index shifts by `at - start()`.
    pub fn relayout(&mut self, at: usize, capacity: usize) -> candle_core::Result<()> {
        let width = self.len - self.start;
        let cap = capacity.max(at + width);
        for (k, v) in self.layers.iter_mut().flatten() {
            for t in [k, v] {
                let (b, h, _, d) = t.dims4()?;
                let fresh = Tensor::zeros((b, h, cap, d), t.dtype(), t.device())?;
                if width > 0 {
                    fresh.slice_set(&t.narrow(2, self.start, width)?.contiguous()?, 2, at)?;
                }
                *t = fresh;
            }
        }
        self.start = at;
        self.len = at + width;
        Ok(())
    }

    /// A copy in buffers of its own, of at least `capacity` columns, for a prompt that goes on
    /// from these keys/values (writing into the copy never touches this cache).
    pub fn fork(&self, capacity: usize) -> candle_core::Result<KvCache> {
        let mut copy = KvCache { layers: self.layers.clone(), start: self.start, len: self.len, hint: capacity };
        copy.relayout(self.start, capacity)?;
        Ok(copy)
    }

    /// Write row `row`'s keys/values from the one-row cache `one` so its live window ends at
    /// this cache's `len()` (left-padded: the caller masks the columns before it). The window
    /// must fit: `one`'s width ≤ `len()`; the live window widens to the left if needed.
    pub fn set_row(&mut self, row: usize, one: &KvCache) -> candle_core::Result<()> {
        let width = one.len - one.start;
        if width > self.len {
            candle_core::bail!("a {width}-column row does not fit before column {}", self.len);
        }
        let at = self.len - width;
        for ((k, v), other) in self.layers.iter_mut().flatten().zip(one.layers.iter()) {
            let Some((ok, ov)) = other else { candle_core::bail!("set_row: the one-row cache is empty") };
            for (t, o) in [(k, ok), (v, ov)] {
                let (_, h, cap, d) = t.dims4()?;
                let dev = t.device().clone();
                let z = |n: usize| Tensor::zeros((1, h, n, d), t.dtype(), &dev);
                let r = Tensor::cat(&[&z(at)?, &o.narrow(0, 0, 1)?.narrow(2, one.start, width)?, &z(cap - self.len)?], 2)?;
                t.slice_set(&r, 0, row)?;
            }
        }
        self.start = self.start.min(at);
        Ok(())
    }

    /// Write this step's keys/values of `layer` at column `len()`; returns the live window.
    /// [`Transformer::step`] advances `len()` once every layer has written.
    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let need = self.len + t;
        let slot = &mut self.layers[layer];
        if slot.is_none() {
            let (b, h, _, d) = k.dims4()?;
            let cap = self.hint.max(need);
            *slot = Some((Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?, Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?));
        }
        let Some((bk, bv)) = slot.as_mut() else { candle_core::bail!("KV cache layer {layer} has no buffer") };
        let cap = bk.dim(2)?;
        if need > cap {
            // Double, so growth costs O(1) amortised per token.
            let grown = (2 * cap).max(need);
            for buf in [&mut *bk, &mut *bv] {
                let (b, h, _, d) = buf.dims4()?;
                let fresh = Tensor::zeros((b, h, grown, d), buf.dtype(), buf.device())?;
                if self.len > self.start {
                    fresh.slice_set(&buf.narrow(2, self.start, self.len - self.start)?.contiguous()?, 2, self.start)?;
                }
                *buf = fresh;
            }
        }
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((bk.narrow(2, self.start, need - self.start)?, bv.narrow(2, self.start, need - self.start)?))
    }

    fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// How a forward pass runs.
pub enum Pass<'a> {
    /// Training (and the cache-free reference): positions 0..T, a causal mask, and every op
    /// with a backward so gradients reach every trainable tensor.
    Train,
    /// Cached decoding: new tokens at per-row positions `pos` (B, T), attending through the
    /// additive `mask` (B, 1, T, T_cached + T) to the cache. No autograd graph is built.
    Decode { pos: &'a Tensor, mask: &'a Tensor, cache: &'a mut KvCache },
    /// Training on packed rows: several sequences share a row, each at its own positions `pos`
    /// (R, L) (restarting at 0) and seeing only itself through the block-diagonal causal
    /// additive `mask` (R, 1, L, L). Every op has a backward, as for `Train`.
    Packed { pos: &'a Tensor, mask: &'a Tensor },
}

impl Pass<'_> {
    pub fn grad(&self) -> bool {
        matches!(self, Pass::Train | Pass::Packed { .. })
    }

    /// Per-token positions (B, T) when the pass has its own (decoding, packed rows); `None`: 0..T.
    pub fn positions(&self) -> Option<&Tensor> {
        match self {
            Pass::Train => None,
            Pass::Decode { pos, .. } | Pass::Packed { pos, .. } => Some(*pos),
        }
    }
}

crate::choices! {
    /// The weights cached decoding (`generate`, `evaluate`) reads. Batch-1 decoding is bound by
    /// reading every weight each step, so fewer bytes per weight is faster; training never uses
    /// these copies.
    #[derive(Default)]
    pub enum DecodeWeights("decode_weights") {
        /// The fastest weights that keep the results: with a bf16 compute dtype its bf16 copy;
        /// in f32 on the CPU, the Q4_1 kernels when every weight they would read is on the Q4_1
        /// grid (re-quantizing gives back each weight bit for bit, as for an untrained GGUF
        /// student), else bf16 where the CPU has AVX512-BF16 and f32 elsewhere (and on CUDA).
        /// [`InferenceWeights::mode`] says which ran.
        #[default]
        Auto = "auto",
        /// f32 weights and activations, whatever the compute dtype.
        F32 = "f32",
        /// A bf16 copy of the weights; bf16 activations (norms, softmax and logits in f32).
        Bf16 = "bf16",
        /// The projections and the LM head as llama.cpp's Q8_0 blocks (32 int8 weights, one scale),
        /// everything else f32. On the CPU cotlab's kernel multiplies f32 activations by them
        /// (batch-invariant, see `kernels::quant`); on CUDA candle's quantized kernels (activations
        /// quantized to Q8_0 per row). A weight whose rows are not whole blocks stays f32.
        Q8_0 = "q8_0",
        /// The projections as llama.cpp's Q4_1 blocks (32 4-bit weights, an f16 scale and minimum:
        /// 5 bits a weight), the LM head as Q8_0. The default student's GGUF stores exactly these
        /// (Q4_1 layers, a Q8_0 embedding table), so its weights decode bit for bit.
        Q4_1 = "q4_1",
    }
}

impl DecodeWeights {
    /// The block format of a quantized mode.
    pub fn quant_format(self) -> Option<QFormat> {
        match self {
            DecodeWeights::Q8_0 => Some(QFormat::Q8_0),
            DecodeWeights::Q4_1 => Some(QFormat::Q4_1),
            _ => None,
        }
    }

    /// For `skip_serializing_if`: options files written before this option existed stay equal.
    pub fn is_auto(&self) -> bool {
        *self == DecodeWeights::Auto
    }
}

/// Mixed precision: the parameters (`params`, LoRA adapters) are f32 `Var`s whatever the compute
/// dtype, so gradients and optimizer state are f32 too ("master weights").
///
/// With a bf16 compute dtype on the CPU every tensor stays f32 and the projections (forward, dX
/// and dW of each weight, the LM head included) run on the bf16 GEMM (`kernels::bf16_gemm`:
/// operands rounded to bf16 when packed, f32 accumulation), as PyTorch's CPU autocast runs its
/// matmuls; norms, attention (its QKᵀ/PV products included), softmax, the residual stream, the
/// loss and LoRA's rank-r products stay f32.
///
/// On CUDA each forward casts the weights it uses to bf16 (the cast is differentiable: the
/// gradient comes back as f32), matmuls and the residual stream run in bf16, and the numerically
/// touchy parts run in f32: RMSNorm/LayerNorm (on f32 inputs with the f32 weight), the attention
/// softmax (scores, mask and ALiBi in f32), the logits and the cross-entropy. Embedding rows are
/// gathered from the f32 table, then cast. Cached decoding keeps a bf16 copy of every weight for
/// the length of one `generate` call (see [`Transformer::inference_weights`]) instead of casting
/// each step.
pub struct Transformer {
    pub config: ModelConfig,
    /// Every weight as a `Var`, under its Hugging Face name (always f32).
    pub params: BTreeMap<String, Var>,
    pub device: Device,
    /// LoRA adapters; when present the base weights are frozen.
    pub lora: Option<Lora>,
    act: Activation,
    /// Rotary tables (positions, head_dim / 2); `None` for ALiBi families.
    rope: Option<(Tensor, Tensor)>,
    /// The compute dtype: F32 or BF16.
    dtype: DType,
    /// Weights cast or quantized for decoding, while an [`InferenceWeights`] guard lives.
    cast: Arc<Mutex<CastCache>>,
}

#[derive(Default)]
struct CastCache {
    users: usize,
    /// What the live guards decode with (never `Auto`: resolved when the first guard is taken).
    mode: Option<DecodeWeights>,
    weights: HashMap<String, Tensor>,
    /// Q8_0 / Q4_1 copies; `None` for a weight that cannot be quantized (stays f32).
    quant: HashMap<String, Option<Arc<QWeight>>>,
}

/// Keeps the decoding copy of the weights in the compute dtype alive (see
/// [`Transformer::inference_weights`]); dropped, the copy goes when no other guard holds it.
pub struct InferenceWeights(Option<Arc<Mutex<CastCache>>>, DecodeWeights);

impl InferenceWeights {
    /// The weights decoding reads while this guard lives (never `Auto`: resolved).
    pub fn mode(&self) -> DecodeWeights {
        self.1
    }
}

impl Drop for InferenceWeights {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            let mut c = c.lock().unwrap();
            c.users -= 1;
            if c.users == 0 {
                // Dropped with the last guard, so a later optimizer step can never leave a
                // stale copy behind.
                c.weights.clear();
                c.quant.clear();
                c.mode = None;
            }
        }
    }
}

impl Transformer {
    pub fn new(config: ModelConfig, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Transformer> {
        super::tune_candle_threads();
        config.validate()?;
        let mut tensors = config.family.canonical_tensor_names(&config, tensors);
        let mut params = BTreeMap::new();
        for (name, shape) in config.family.tensor_shapes(&config) {
            let t = tensors.remove(&name).ok_or_else(|| usage!("model weights lack tensor '{name}' (a {} model with this config needs it)", config.family))?;
            if t.dims() != shape.as_slice() {
                return Err(usage!("tensor '{name}' has shape {:?}, the config implies {:?}", t.dims(), shape));
            }
            let t = t.to_dtype(DType::F32).and_then(|t| t.to_device(device)).model_ctx(format!("loading '{name}'"))?;
            params.insert(name, Var::from_tensor(&t).model_ctx("loading weights")?);
        }
        // Unused extras (rotary caches some exporters write) are fine; unknown weights are not.
        if let Some(extra) = tensors.keys().find(|k| !k.contains("rotary_emb")) {
            return Err(usage!("unexpected tensor '{extra}': a {} model does not use it", config.family));
        }
        let act = Activation::parse(&config.hidden_act)?;
        let rope = if config.family.uses_rope() { Some(rope_tables(&config, device).model_ctx("rotary tables")?) } else { None };
        Ok(Transformer { config, params, device: device.clone(), lora: None, act, rope, dtype: DType::F32, cast: Default::default() })
    }

    /// The dtype forwards compute in (parameters stay f32).
    pub fn compute_dtype(&self) -> DType {
        self.dtype
    }

    /// Compute in `dtype`: F32, or BF16 (mixed precision, see [`Transformer`]).
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(usage!("compute dtype {dtype:?} is not supported: f32 or bf16"));
        }
        self.dtype = dtype;
        Ok(())
    }

    /// For cached decoding in bf16: while the returned guard lives, each weight a decoding step
    /// uses is cast once and the copy kept (decoding then reads bf16 weights, half the bytes of
    /// f32, instead of casting every step). Nothing to do in f32. Training passes never use the copies, so
    /// weights that change while no guard lives (optimizer steps) are always seen fresh.
    pub fn inference_weights(&self) -> candle_core::Result<InferenceWeights> {
        self.decode_weights(DecodeWeights::Auto)
    }

    /// For cached decoding with `mode`'s weights: while the returned guard lives, decoding passes
    /// read a copy of each weight made once (bf16 cast, Q8_0 or Q4_1 blocks), dropped with the last
    /// guard. `Auto` in f32 (and `F32` in an f32 model) is the plain path: no guard needed.
    /// Two live guards must agree on the mode (decoding reads one copy); `Auto` under a live
    /// guard joins its mode.
    pub fn decode_weights(&self, mode: DecodeWeights) -> candle_core::Result<InferenceWeights> {
        let mut c = self.cast.lock().unwrap();
        let mode = match (mode, c.mode) {
            (DecodeWeights::Auto, _) if self.dtype == DType::BF16 => DecodeWeights::Bf16,
            (DecodeWeights::Auto, Some(live)) if c.users > 0 => live,
            (DecodeWeights::Auto, _) => self.auto_mode(&mut c)?,
            (m, _) => m,
        };
        if mode == DecodeWeights::F32 && self.dtype == DType::F32 {
            return Ok(InferenceWeights(None, mode));
        }
        match c.mode {
            Some(live) if c.users > 0 && live != mode => {
                candle_core::bail!("decoding with {} weights while another decoding of this model uses {} weights", mode.name(), live.name())
            }
            _ => {}
        }
        c.mode = Some(mode);
        c.users += 1;
        Ok(InferenceWeights(Some(self.cast.clone()), mode))
    }

    /// `Auto` for an f32 model: on the CPU, Q4_1 when every weight a quantized kernel would read
    /// re-quantizes to itself bit for bit (then the kernels read exactly the f32 path's weights;
    /// the copies made for the check are kept for decoding), else [`Transformer::off_grid_mode`].
    /// A check rather than a record of where the weights came from: any optimizer step, merge or
    /// edit is seen. Embedding tables other than the LM head are gathered in f32, so they need
    /// not be on a grid.
    fn auto_mode(&self, c: &mut CastCache) -> candle_core::Result<DecodeWeights> {
        if !self.device.is_cpu() {
            return Ok(DecodeWeights::F32);
        }
        let head = self.config.family.head_weight(&self.config);
        let mut names: Vec<&String> =
            self.params.iter().filter(|(n, v)| v.rank() == 2 && (n.as_str() == head || !n.contains("embed"))).map(|(n, _)| n).collect();
        // The (large) head last: trained weights fail on a layer's weight before it is quantized.
        names.sort_by_key(|n| n.as_str() == head);
        let mut quant = HashMap::new();
        for name in names {
            let w = self.w32(name, false);
            match QWeight::new(&w, self.decode_format(name, QFormat::Q4_1))? {
                Some(q) if !q.reads_exactly(&w.flatten_all()?.to_vec1::<f32>()?) => return Ok(Self::off_grid_mode()),
                q => quant.insert(name.clone(), q.map(Arc::new)),
            };
        }
        c.quant = quant;
        Ok(DecodeWeights::Q4_1)
    }

    /// `Auto` on the CPU for weights off the Q4_1 grid: bf16 (the paper's vLLM precision) where
    /// the CPU has AVX512-BF16, whose `vdpbf16ps` kernel decodes faster than f32 there (half the
    /// bytes per weight, see docs/performance.md); else f32, the exact path.
    fn off_grid_mode() -> DecodeWeights {
        if crate::kernels::simd::avx512_bf16() {
            DecodeWeights::Bf16
        } else {
            DecodeWeights::F32
        }
    }

    /// The block format weight `name` decodes in under `format`: the LM head stays Q8_0 under
    /// q4_1, as llama.cpp's quantizer keeps its output weight finer (4-bit logits err by up to
    /// 15 % of their range, measured on SmolLM2's tied table).
    fn decode_format(&self, name: &str, format: QFormat) -> QFormat {
        if name == self.config.family.head_weight(&self.config) {
            QFormat::Q8_0
        } else {
            format
        }
    }

    /// The dtype a pass's activations are in: f32 on the CPU (bf16 there is in the GEMMs:
    /// [`Transformer::gemm`], `kernels::bf16`); on CUDA the compute dtype when training, when
    /// decoding the live guard's (quantized kernels take and give f32).
    fn dt(&self, grad: bool) -> DType {
        if self.device.is_cpu() {
            return DType::F32;
        }
        if grad {
            return self.dtype;
        }
        let c = self.cast.lock().unwrap();
        match c.mode {
            Some(DecodeWeights::F32 | DecodeWeights::Q8_0 | DecodeWeights::Q4_1) if c.users > 0 => DType::F32,
            Some(DecodeWeights::Bf16) if c.users > 0 => DType::BF16,
            _ => self.dtype,
        }
    }

    /// The GEMM of a pass's projections: bf16 ([`ops::Gemm::Bf16`]) for a bf16 compute dtype on
    /// the CPU, unless a decoding guard lives (its weights decide: `quantized`); f32 otherwise
    /// (on CUDA the tensors' dtype decides).
    fn gemm(&self, grad: bool) -> ops::Gemm {
        if !(self.device.is_cpu() && self.dtype == DType::BF16) {
            return ops::Gemm::F32;
        }
        let c = self.cast.lock().unwrap();
        if !grad && c.users > 0 && c.mode.is_some() {
            return ops::Gemm::F32;
        }
        ops::Gemm::Bf16
    }

    /// The kernel copy of weight `name` for a decoding pass under a Q8_0 or Q4_1 guard, or a
    /// bf16 one on the CPU (made on first use).
    fn quantized(&self, name: &str, grad: bool) -> candle_core::Result<Option<Arc<QWeight>>> {
        if grad {
            return Ok(None);
        }
        let mut c = self.cast.lock().unwrap();
        let Some(mode) = c.mode.filter(|_| c.users > 0) else {
            return Ok(None);
        };
        let cpu_bf16 = mode == DecodeWeights::Bf16 && self.device.is_cpu();
        if mode.quant_format().is_none() && !cpu_bf16 {
            return Ok(None);
        }
        if let Some(q) = c.quant.get(name) {
            return Ok(q.clone());
        }
        // Blocks run along a row (the input dim): a weight whose rows are not whole blocks stays f32.
        let w = self.w32(name, false);
        let q = match mode.quant_format() {
            Some(format) => QWeight::new(&w, self.decode_format(name, format))?,
            None => QWeight::bf16(&w)?,
        }
        .map(Arc::new);
        c.quant.insert(name.to_string(), q.clone());
        Ok(q)
    }

    pub fn family(&self) -> Family {
        self.config.family
    }

    /// Another handle on the same base weights (Vars share storage), without adapters.
    pub fn share(&self) -> Transformer {
        Transformer {
            config: self.config.clone(),
            params: self.params.clone(),
            device: self.device.clone(),
            lora: None,
            act: self.act,
            rope: self.rope.clone(),
            dtype: self.dtype,
            cast: Default::default(),
        }
    }

    /// Another handle on the same base weights and the same LoRA adapters (all `Var`s share
    /// storage): what training changes, this handle sees.
    pub fn share_with_adapters(&self) -> Transformer {
        let mut t = self.share();
        t.lora = self.lora.as_ref().map(|l| l.share());
        t
    }

    /// Attach fresh LoRA adapters (base weights become frozen).
    pub fn attach_lora(&mut self, config: LoraConfig, seed: u64) -> Result<()> {
        self.lora = Some(Lora::init(config, self.config.family.lora_modules(), &self.params, seed, &self.device)?);
        Ok(())
    }

    /// What an optimizer updates, by name: the adapters with LoRA, else every weight.
    pub fn trainable_named(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => {
                l.adapters.iter().flat_map(|(m, (a, b))| [(format!("{m}.lora_A.weight"), a.clone()), (format!("{m}.lora_B.weight"), b.clone())]).collect()
            }
            None => self.params.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        }
    }

    pub fn trainable(&self) -> Vec<&Var> {
        match &self.lora {
            Some(l) => l.adapters.values().flat_map(|(a, b)| [a, b]).collect(),
            None => self.params.values().collect(),
        }
    }

    // ---- kernels the family blocks are written with; `grad` comes from the pass.

    /// A base weight in f32: tracked only when training without LoRA.
    fn w32(&self, name: &str, grad: bool) -> Tensor {
        let t = self.params[name].as_tensor();
        if grad && self.lora.is_none() {
            t.clone()
        } else {
            t.detach()
        }
    }

    /// A base weight as a forward uses it, in the compute dtype (decoding: the guard's copy
    /// when one lives, see [`Transformer::inference_weights`]).
    pub(crate) fn w(&self, name: &str, grad: bool) -> candle_core::Result<Tensor> {
        let dt = self.dt(grad);
        if dt == DType::F32 {
            return Ok(self.w32(name, grad));
        }
        if !grad {
            let mut c = self.cast.lock().unwrap();
            if c.users > 0 {
                if let Some(t) = c.weights.get(name) {
                    return Ok(t.clone());
                }
                let t = self.w32(name, false).to_dtype(dt)?;
                c.weights.insert(name.to_string(), t.clone());
                return Ok(t);
            }
        }
        self.w32(name, grad).to_dtype(dt)
    }

    /// Rows of the embedding table for `ids` (B, T): (B·T, D), gathered in f32 then cast.
    pub(crate) fn embed(&self, ids: &Tensor, table: &str, grad: bool) -> candle_core::Result<Tensor> {
        ops::embedding(&self.w32(table, grad), ids)?.to_dtype(self.dt(grad))
    }

    /// One projection `x Wᵀ (+ b) (+ LoRA)` for module path `m` (e.g. model.layers.0.mlp.up_proj).
    pub(crate) fn linear(&self, x: &Tensor, m: &str, grad: bool) -> candle_core::Result<Tensor> {
        let name = format!("{m}.weight");
        let mut y = if let Some(q) = self.quantized(&name, grad)? {
            q.forward(x)?
        } else {
            let w = self.w(&name, grad)?;
            self.project(x, &w, grad)?
        };
        let bias = format!("{m}.bias");
        if self.params.contains_key(&bias) {
            y = y.broadcast_add(&self.w(&bias, grad)?)?;
        }
        if let Some(l) = &self.lora {
            if let Some(d) = l.delta(m, x)? {
                y = (y + if grad { d } else { d.detach() })?;
            }
        }
        Ok(y)
    }

    /// `x Wᵀ` on the pass's GEMM ([`Transformer::gemm`]): a frozen weight under training skips
    /// its weight-gradient GEMM; decoding builds no graph.
    fn project(&self, x: &Tensor, w: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let gemm = self.gemm(grad);
        match (grad, self.lora.is_some()) {
            (true, true) => ops::frozen_linear(x, w, gemm),
            (true, false) => ops::linear(x, w, gemm),
            // Detached inputs: the op records no backward.
            (false, _) if gemm == ops::Gemm::Bf16 => ops::frozen_linear(x, w, gemm),
            (false, _) => x.matmul(&w.t()?),
        }
    }

    /// RMSNorm with weight `name` (`offset`: Gemma's `1 + w`), computed in f32.
    pub(crate) fn rms_norm(&self, x: &Tensor, name: &str, offset: bool, grad: bool) -> candle_core::Result<Tensor> {
        let w = self.w32(name, grad);
        let w = if offset { (w + 1.0)? } else { w };
        let eps = self.config.rms_norm_eps as f32;
        let x = x.to_dtype(DType::F32)?;
        let y = if grad { ops::rms_norm(&x, &w, eps)? } else { candle_nn::ops::rms_norm(&x, &w, eps)? };
        y.to_dtype(self.dt(grad))
    }

    /// LayerNorm `p.weight`, `p.bias` over the last dim, from differentiable primitives
    /// (candle's fused one has no backward).
    pub(crate) fn layer_norm(&self, x: &Tensor, p: &str, grad: bool) -> candle_core::Result<Tensor> {
        let (w, b) = (self.w32(&format!("{p}.weight"), grad), self.w32(&format!("{p}.bias"), grad));
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + self.config.rms_norm_eps)?.sqrt()?)?.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(self.dt(grad))
    }

    pub(crate) fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.act.apply(x)
    }

    /// The gated MLP's `act(gate) · up` (SiLU: one fused op, see `ops::swiglu`).
    pub(crate) fn gated(&self, gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
        match self.act {
            Activation::Silu => ops::swiglu(gate, up),
            _ => self.act.apply(gate)? * up,
        }
    }

    /// cos/sin for the pass's positions, in the compute dtype: (T, hd/2) for training,
    /// (B, T, hd/2) for decoding and packed rows (`ops::rope` takes both, backward included).
    pub(crate) fn rope_for(&self, pass: &Pass, b: usize, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let Some((cos, sin)) = &self.rope else { candle_core::bail!("this family has no rotary embeddings") };
        let (cos, sin) = match pass.positions() {
            None => (cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?),
            Some(pos) => {
                let flat = pos.flatten_all()?;
                let half = cos.dim(1)?;
                (cos.index_select(&flat, 0)?.reshape((b, t, half))?, sin.index_select(&flat, 0)?.reshape((b, t, half))?)
            }
        };
        let dt = self.dt(pass.grad());
        Ok((cos.to_dtype(dt)?, sin.to_dtype(dt)?))
    }

    /// Rotary embedding of x (B, H, T, hd).
    pub(crate) fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        if grad {
            ops::rope(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
        }
    }

    /// The additive attention mask of the pass: causal (T, T) for training, the caller's for
    /// decoding and packed rows. Also refuses training rows longer than the model's context
    /// (a packed row's positions never exceed its length).
    pub(crate) fn mask(&self, pass: &Pass, t: usize) -> candle_core::Result<Tensor> {
        if matches!(pass, Pass::Train | Pass::Packed { .. }) {
            let context = self.rope.as_ref().map(|(c, _)| c.dim(0)).transpose()?.unwrap_or(self.config.max_position_embeddings);
            // A packed row may be longer than the context: its sequences' positions restart.
            let longest = match pass {
                Pass::Packed { pos, .. } => pos.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize + 1,
                _ => t,
            };
            if longest > context {
                candle_core::bail!("sequence of {longest} tokens exceeds the model's context of {context}");
            }
        }
        match pass {
            Pass::Train => {
                let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
                Tensor::from_vec(m, (t, t), &self.device)
            }
            Pass::Decode { mask, .. } | Pass::Packed { mask, .. } => Ok((*mask).clone()),
        }
    }

    /// Scaled dot-product attention of layer `layer`: q (B, H, T, hd), k/v (B, KV, T, hd);
    /// appends k/v to the cache when decoding; `bias` is added to the scores (ALiBi).
    /// Returns (B, H, T, hd).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        layer: usize,
        pass: &mut Pass,
        mask: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let grad = pass.grad();
        let (k, v) = match pass {
            Pass::Decode { cache, .. } => cache.append(layer, k, v)?,
            Pass::Train | Pass::Packed { .. } => (k, v),
        };
        let (h, kv) = (q.dim(1)?, k.dim(1)?);
        let hd = q.dim(D::Minus1)?;
        // Scores in the compute dtype; bias, mask and softmax in f32.
        if !grad {
            // Decoding: each KV head's query heads as one matrix against the cache window in
            // place (a strided view of the preallocated buffer, which the matmul takes as is),
            // instead of copying keys/values once per query head (repeat_kv). Measured on 2
            // cores: no slower than a contiguous copy of the window, and no per-step copies.
            if bias.is_none() {
                if let Some(y) = decode_ops::attention(q, &k, &v, mask, 1.0 / (hd as f64).sqrt())? {
                    return Ok(y);
                }
            }
            let (b, _, t, _) = q.dims4()?;
            let tk = k.dim(2)?;
            let qg = q.contiguous()?.reshape((b, kv, (h / kv) * t, hd))?;
            let mut scores = (qg.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.to_dtype(DType::F32)?.reshape((b, h, t, tk))?;
            if let Some(bb) = bias {
                scores = scores.broadcast_add(bb)?;
            }
            let scores = scores.broadcast_add(mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            return probs.to_dtype(self.dt(false))?.reshape((b, kv, (h / kv) * t, tk))?.matmul(&v)?.reshape((b, h, t, hd));
        }
        attention::attention(q, &k, &v, mask, bias, 1.0 / (hd as f64).sqrt())
    }

    // ---- the forward passes.

    /// Hidden states (B, T, D) after the final norm, with gradients.
    pub fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.config.family.hidden(self, ids, &mut Pass::Train)
    }

    /// Hidden states (R, L, D) of packed rows `ids` (R, L), with gradients: each token at its
    /// position `pos` (R, L), attending through the additive `mask` (R, 1, L, L) (see
    /// [`Pass::Packed`]).
    pub fn hidden_packed(&self, ids: &Tensor, pos: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.config.family.hidden(self, ids, &mut Pass::Packed { pos, mask })
    }

    /// Inference: run new tokens `ids` (B, T) at positions `pos` (B, T) against the cache,
    /// with additive attention mask (B, 1, T, T_cached + T); returns last-position logits (B, V).
    pub fn step(&self, ids: &Tensor, pos: &Tensor, mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let x = self.config.family.hidden(self, ids, &mut Pass::Decode { pos, mask, cache })?;
        let t = x.dim(1)?;
        cache.advance(t);
        self.logits_with(&x.narrow(1, t - 1, 1)?.squeeze(1)?, false)
    }

    /// Logits (N, V) for hidden states (N, D), with gradients.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.logits_with(hidden, true)
    }

    /// Logits in f32 whatever the compute dtype.
    fn logits_with(&self, hidden: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let name = self.config.family.head_weight(&self.config);
        let hidden = hidden.to_dtype(self.dt(grad))?;
        let y = if let Some(q) = self.quantized(name, grad)? {
            q.forward(&hidden)?
        } else {
            let w = self.w(name, grad)?;
            self.project(&hidden, &w, grad)?
        };
        y.to_dtype(DType::F32)
    }

    /// Per-row NLL (N) of `targets` under the logits of `hidden` (N, d), for training: the
    /// head and the cross-entropy as one op where the compute dtype is f32 on the CPU
    /// ([`ops::linear_cross_entropy`]), else [`Transformer::logits`] then the cross-entropy.
    pub fn token_nll(&self, hidden: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
        if self.dt(true) != DType::F32 {
            return ops::cross_entropy_rows(&self.logits(hidden)?, targets);
        }
        let w = self.w(self.config.family.head_weight(&self.config), true)?;
        // Frozen under LoRA, as `project` has it.
        ops::linear_cross_entropy(&hidden.to_dtype(DType::F32)?, &w, targets, self.lora.is_some(), self.gemm(true))
    }

    /// Logits of the last position of each sequence (B, V) — for tests and greedy decoding.
    pub fn last_logits(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.hidden(ids)?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// Greedy decoding without a cache (recomputes the prefix each step): a reference for tests,
    /// not for evaluation runs.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> candle_core::Result<Vec<u32>> {
        let mut ids = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..max_new {
            let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
            let next = self.last_logits(&input)?.squeeze(0)?.argmax(D::Minus1)?.to_scalar::<u32>()?;
            if stop.contains(&next) {
                break;
            }
            ids.push(next);
            out.push(next);
        }
        Ok(out)
    }

    pub fn num_params(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    /// Fold the adapters into the base weights (W += α/r · B A) and drop them.
    pub fn merge_lora(&mut self) -> Result<()> {
        let Some(l) = self.lora.take() else { return Ok(()) };
        let scale = l.scale();
        for (m, (a, b)) in &l.adapters {
            let w = &self.params[&format!("{m}.weight")];
            let merged = (b.as_tensor().matmul(a.as_tensor()).and_then(|d| d * scale)).and_then(|d| w.as_tensor() + d);
            w.set(&merged.model_ctx(format!("merging the LoRA adapter of {m}"))?).model_ctx(format!("merging the LoRA adapter of {m}"))?;
        }
        Ok(())
    }
}

fn rope_tables(c: &ModelConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = c.head_dim();
    // Tables up to the context length, capped to keep memory small for long-context models.
    let n = c.max_position_embeddings.min(8192);
    let mut inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
    if let Some((factor, lo, hi, orig)) = c.rope_llama3 {
        // Llama 3.1's frequency-dependent scaling (as in transformers' _compute_llama3_parameters).
        let (low_wavelen, high_wavelen) = (orig / lo, orig / hi);
        for f in inv.iter_mut() {
            let wavelen = 2.0 * std::f64::consts::PI / *f as f64;
            let x = *f as f64;
            *f = if wavelen < high_wavelen {
                x
            } else if wavelen > low_wavelen {
                x / factor
            } else {
                let smooth = (orig / wavelen - lo) / (hi - lo);
                (1.0 - smooth) * x / factor + smooth * x
            } as f32;
        }
    }
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F32)?.reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(b: usize, t: usize, base: f32) -> Tensor {
        Tensor::arange(0f32, (b * 2 * t * 3) as f32, &Device::Cpu).unwrap().affine(1.0, base as f64).unwrap().reshape((b, 2, t, 3)).unwrap()
    }

    /// Appends past the reserved room, trimming, moving the window and replacing a row keep the
    /// same contents as concatenating.
    #[test]
    fn kv_cache_in_place_matches_cat() {
        let mut c = KvCache::with_capacity(1, 3);
        let first = kv(2, 2, 0.0);
        c.append(0, first.clone(), first.clone()).unwrap();
        c.advance(2);
        let mut all = first;
        for i in 0..5 {
            let step = kv(2, 1, 100.0 * (i + 1) as f32);
            let (k, v) = c.append(0, step.clone(), step.clone()).unwrap();
            c.advance(1);
            all = Tensor::cat(&[&all, &step], 2).unwrap();
            assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), all.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(v.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), all.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert!(c.capacity() >= 7 && (c.start(), c.len()) == (0, 7));
        c.trim_front(2);
        c.relayout(1, 0).unwrap();
        assert_eq!((c.start(), c.len()), (1, 6));
        let step = kv(2, 1, 9.0);
        let (k, _) = c.append(0, step.clone(), step.clone()).unwrap();
        c.advance(1);
        let want = Tensor::cat(&[&all.narrow(2, 2, 5).unwrap(), &step], 2).unwrap();
        assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // A one-row cache of 3 columns written into row 1: right-aligned, masked zeros before.
        let mut one = KvCache::with_capacity(1, 0);
        let r = kv(1, 3, -50.0);
        one.append(0, r.clone(), r.clone()).unwrap();
        one.advance(3);
        c.set_row(1, &one).unwrap();
        let (k, _) = c.append(0, kv(2, 1, 0.0), kv(2, 1, 0.0)).unwrap();
        let row1 = k.narrow(0, 1, 1).unwrap().narrow(2, 3, 3).unwrap();
        assert_eq!(row1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), r.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let row0 = k.narrow(0, 0, 1).unwrap().narrow(2, 0, 6).unwrap();
        assert_eq!(row0.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.narrow(0, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // A row longer than every column so far does not fit.
        let mut long = KvCache::with_capacity(1, 0);
        long.append(0, kv(1, 9, 0.0), kv(1, 9, 0.0)).unwrap();
        long.advance(9);
        assert!(c.set_row(0, &long).is_err());
    }
}
