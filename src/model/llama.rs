//! A trainable Llama-family decoder (Llama, SmolLM2, Qwen2 with q/k/v biases). Every op on the
//! path from the loss to every weight has a backward (see `ops`); `tests/model.rs` checks that
//! every parameter receives a non-zero gradient.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var, D};

use super::config::LlamaConfig;
use super::lora::{Lora, LoraConfig};
use super::ops;
use crate::error::{Error, Result};
use crate::usage;

/// Keys and values of every layer for the tokens decoded so far: (B, KV heads, T, head dim).
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { k: vec![None; layers], v: vec![None; layers] }
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    /// Every weight as a `Var`, under its Hugging Face name.
    pub params: BTreeMap<String, Var>,
    pub device: Device,
    /// LoRA adapters; when present the base weights are frozen.
    pub lora: Option<Lora>,
    cos: Tensor,
    sin: Tensor,
}

fn ce(e: candle_core::Error) -> Error {
    Error::usage(format!("model: {e}"))
}

/// Every tensor name and shape a config implies.
pub fn expected_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    if c.family == "bloom" {
        return bloom_shapes(c);
    }
    let (d, f, v, hd) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim());
    let kv = c.num_key_value_heads * hd;
    let q = c.num_attention_heads * hd;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, d]));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        if c.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
    }
    out
}


impl Llama {
    pub fn new(config: LlamaConfig, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Llama> {
        let mut params = BTreeMap::new();
        for (name, shape) in expected_shapes(&config) {
            let t = tensors.remove(&name).ok_or_else(|| usage!("model weights lack tensor '{name}'"))?;
            if t.dims() != shape.as_slice() {
                return Err(usage!("tensor '{name}' has shape {:?}, the config implies {:?}", t.dims(), shape));
            }
            let t = t.to_dtype(DType::F32).map_err(ce)?.to_device(device).map_err(ce)?;
            params.insert(name, Var::from_tensor(&t).map_err(ce)?);
        }
        // Unused extras (rotary caches some exporters write) are fine; unknown weights are not.
        if let Some(extra) = tensors.keys().find(|k| !k.contains("rotary_emb")) {
            return Err(usage!("unexpected tensor '{extra}': the architecture does not use it"));
        }
        let (cos, sin) = if config.family == "bloom" {
            // ALiBi, no rotary tables; keep a (context, 1) placeholder for the length check.
            let z = Tensor::zeros((2048, 1), DType::F32, device).map_err(ce)?;
            (z.clone(), z)
        } else {
            rope_tables(&config, device).map_err(ce)?
        };
        Ok(Llama { config, params, device: device.clone(), lora: None, cos, sin })
    }

    /// Another handle on the same base weights (Vars share storage), without adapters.
    pub fn share(&self) -> Llama {
        Llama {
            config: self.config.clone(),
            params: self.params.clone(),
            device: self.device.clone(),
            lora: None,
            cos: self.cos.clone(),
            sin: self.sin.clone(),
        }
    }

    /// Attach fresh LoRA adapters (base weights become frozen).
    pub fn attach_lora(&mut self, config: LoraConfig, seed: u64) -> Result<()> {
        self.lora = Some(Lora::init(config, &self.params, seed, &self.device)?);
        Ok(())
    }

    /// What an optimizer updates, by name: the adapters with LoRA, else every weight.
    pub fn trainable_named(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => l
                .adapters
                .iter()
                .flat_map(|(m, (a, b))| [(format!("{m}.lora_A.weight"), a.clone()), (format!("{m}.lora_B.weight"), b.clone())])
                .collect(),
            None => self.params.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        }
    }

    pub fn trainable(&self) -> Vec<&Var> {
        match &self.lora {
            Some(l) => l.adapters.values().flat_map(|(a, b)| [a, b]).collect(),
            None => self.params.values().collect(),
        }
    }

    /// A base weight as the forward uses it: detached (no gradient) when LoRA freezes it.
    fn w(&self, name: &str) -> Tensor {
        let t = self.params[name].as_tensor();
        if self.lora.is_some() { t.detach() } else { t.clone() }
    }

    /// One projection `x Wᵀ (+ b) (+ LoRA)` for module path `m` (e.g. model.layers.0.mlp.up_proj).
    fn proj(&self, x: &Tensor, m: &str) -> candle_core::Result<Tensor> {
        let w = self.w(&format!("{m}.weight"));
        let mut y = if self.lora.is_some() { ops::frozen_linear(x, &w)? } else { x.matmul(&w.t()?)? };
        if let Some(b) = self.params.get(&format!("{m}.bias")) {
            y = y.broadcast_add(&if self.lora.is_some() { b.as_tensor().detach() } else { b.as_tensor().clone() })?;
        }
        if let Some(l) = &self.lora {
            if let Some(d) = l.delta(m, x)? {
                y = (y + d)?;
            }
        }
        Ok(y)
    }


    /// The norm of this family: RMSNorm (Gemma: weight 1 + w).
    fn norm(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let w = self.w(name);
        let eps = self.config.rms_norm_eps as f32;
        if self.config.family == "gemma" {
            ops::rms_norm(x, &(w + 1.0)?, eps)
        } else {
            ops::rms_norm(x, &w, eps)
        }
    }

    fn act(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.config.hidden_act.as_str() {
            "silu" | "swish" => candle_nn::ops::silu(x),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu" => x.gelu(),
            "gelu_exact" => x.gelu_erf(),
            other => candle_core::bail!("activation '{other}' is not supported"),
        }
    }

    /// Hidden states (B, T, D) after the final norm.
    pub fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        if self.config.family == "bloom" {
            return self.bloom_hidden(ids);
        }
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        if t > self.cos.dim(0)? {
            candle_core::bail!("sequence of {t} tokens exceeds the model's context of {}", self.cos.dim(0)?);
        }
        let (h, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = causal_mask(t, &self.device)?;
        let emb = self.w("model.embed_tokens.weight");
        let mut x = emb.index_select(&ids.flatten_all()?, 0)?.reshape((b * t, c.hidden_size))?;
        if c.family == "gemma" {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let hn = self.norm(&x, &p("input_layernorm.weight"))?;
            let q = self.proj(&hn, &p("self_attn.q_proj"))?;
            let k = self.proj(&hn, &p("self_attn.k_proj"))?;
            let v = self.proj(&hn, &p("self_attn.v_proj"))?;
            let q = q.reshape((b, t, h, hd))?.transpose(1, 2)?;
            let k = k.reshape((b, t, kvh, hd))?.transpose(1, 2)?;
            let v = v.reshape((b, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
            let q = ops::rope(&q, &cos, &sin)?;
            let k = ops::rope(&k, &cos, &sin)?;
            let (k, v) = (repeat_kv(&k, h / kvh)?, repeat_kv(&v, h / kvh)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
            let att = ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let att = att.transpose(1, 2)?.reshape((b * t, h * hd))?;
            x = (x + self.proj(&att, &p("self_attn.o_proj"))?)?;
            let hn = self.norm(&x, &p("post_attention_layernorm.weight"))?;
            let gate = self.act(&self.proj(&hn, &p("mlp.gate_proj"))?)?;
            let up = self.proj(&hn, &p("mlp.up_proj"))?;
            x = (x + self.proj(&(gate * up)?, &p("mlp.down_proj"))?)?;
        }
        let x = self.norm(&x, "model.norm.weight")?;
        x.reshape((b, t, c.hidden_size))
    }

    /// Inference: run new tokens `ids` (B, T) at positions `pos` (B, T) against the cache,
    /// with additive attention mask (B, 1, T, T_cached + T); returns last-position logits (B, V).
    /// No autograd graph is built (weights are detached, fused kernels used directly).
    pub fn step(&self, ids: &Tensor, pos: &Tensor, mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        if self.config.family == "bloom" {
            return self.bloom_step(ids, mask, cache);
        }
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (h, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let eps = c.rms_norm_eps as f32;
        let w = |n: &str| self.params[n].as_tensor().detach();
        let norm = |x: &Tensor, n: &str| -> candle_core::Result<Tensor> {
            let a = if c.family == "gemma" { (w(n) + 1.0)? } else { w(n) };
            candle_nn::ops::rms_norm(x, &a, eps)
        };
        let proj = |x: &Tensor, m: &str| -> candle_core::Result<Tensor> {
            let mut y = x.matmul(&w(&format!("{m}.weight")).t()?)?;
            if let Some(bias) = self.params.get(&format!("{m}.bias")) {
                y = y.broadcast_add(&bias.as_tensor().detach())?;
            }
            if let Some(l) = &self.lora {
                if let Some(d) = l.delta(m, x)? {
                    y = (y + d.detach())?;
                }
            }
            Ok(y)
        };
        let flat = pos.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, hd / 2))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, hd / 2))?;
        let mut x = w("model.embed_tokens.weight").index_select(&ids.flatten_all()?, 0)?.reshape((b * t, c.hidden_size))?;
        if c.family == "gemma" {
            x = (x * (c.hidden_size as f64).sqrt())?;
        }
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let hn = norm(&x, &p("input_layernorm.weight"))?;
            let q = proj(&hn, &p("self_attn.q_proj"))?.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?;
            let k = proj(&hn, &p("self_attn.k_proj"))?.reshape((b, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
            let v = proj(&hn, &p("self_attn.v_proj"))?.reshape((b, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let (k, v) = match (cache.k[i].take(), cache.v[i].take()) {
                (Some(pk), Some(pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                _ => (k, v),
            };
            cache.k[i] = Some(k.clone());
            cache.v[i] = Some(v.clone());
            let (k, v) = (repeat_kv(&k, h / kvh)?, repeat_kv(&v, h / kvh)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(mask)?;
            let att = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let att = att.transpose(1, 2)?.reshape((b * t, h * hd))?;
            x = (x + proj(&att, &p("self_attn.o_proj"))?)?;
            let hn = norm(&x, &p("post_attention_layernorm.weight"))?;
            let gate = self.act(&proj(&hn, &p("mlp.gate_proj"))?)?;
            x = (x + proj(&(gate * proj(&hn, &p("mlp.up_proj"))?)?, &p("mlp.down_proj"))?)?;
        }
        let x = norm(&x, "model.norm.weight")?.reshape((b, t, c.hidden_size))?;
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let head = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        last.matmul(&w(head).t()?)
    }

    /// BLOOM inference step. ALiBi adds slope·(key index); with left padding a row's true key
    /// positions differ from the index by a constant, which softmax ignores, so no positions are
    /// needed.
    fn bloom_step(&self, ids: &Tensor, mask: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (h, d) = (c.num_attention_heads, c.hidden_size);
        let hd = d / h;
        let w = |n: &str| self.params[n].as_tensor().detach();
        let ln = |x: &Tensor, p: &str| layer_norm(x, &w(&format!("{p}.weight")), &w(&format!("{p}.bias")), c.rms_norm_eps);
        let proj = |x: &Tensor, m: &str| -> candle_core::Result<Tensor> {
            let mut y = x.matmul(&w(&format!("{m}.weight")).t()?)?.broadcast_add(&w(&format!("{m}.bias")))?;
            if let Some(l) = &self.lora {
                if let Some(dl) = l.delta(m, x)? {
                    y = (y + dl.detach())?;
                }
            }
            Ok(y)
        };
        let total = mask.dim(D::Minus1)?;
        let slopes = Tensor::from_vec(alibi_slopes(h), (h, 1, 1), &self.device)?;
        let keys = Tensor::arange(0u32, total as u32, &self.device)?.to_dtype(DType::F32)?.reshape((1, 1, total))?;
        let alibi = slopes.broadcast_mul(&keys)?.unsqueeze(0)?;
        let mut x = w("transformer.word_embeddings.weight").index_select(&ids.flatten_all()?, 0)?.reshape((b * t, d))?;
        x = ln(&x, "transformer.word_embeddings_layernorm")?;
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("transformer.h.{i}.{s}");
            let hn = ln(&x, &p("input_layernorm"))?;
            let qkv = proj(&hn, &p("self_attention.query_key_value"))?.reshape((b, t, h, 3, hd))?;
            let q = qkv.narrow(3, 0, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let k = qkv.narrow(3, 1, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let v = qkv.narrow(3, 2, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let (k, v) = match (cache.k[i].take(), cache.v[i].take()) {
                (Some(pk), Some(pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                _ => (k, v),
            };
            cache.k[i] = Some(k.clone());
            cache.v[i] = Some(v.clone());
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&alibi)?.broadcast_add(mask)?;
            let att = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((b * t, d))?;
            x = (x + proj(&att, &p("self_attention.dense"))?)?;
            let hn = ln(&x, &p("post_attention_layernorm"))?;
            x = (x + proj(&self.act(&proj(&hn, &p("mlp.dense_h_to_4h"))?)?, &p("mlp.dense_4h_to_h"))?)?;
        }
        let x = ln(&x, "transformer.ln_f")?.reshape((b, t, d))?;
        x.narrow(1, t - 1, 1)?.squeeze(1)?.matmul(&w("transformer.word_embeddings.weight").t()?)
    }

    fn bloom_hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (h, d) = (c.num_attention_heads, c.hidden_size);
        let hd = d / h;
        let eps = c.rms_norm_eps;
        let ln = |x: &Tensor, p: &str| layer_norm(x, &self.w(&format!("{p}.weight")), &self.w(&format!("{p}.bias")), eps);
        let mask = causal_mask(t, &self.device)?;
        // ALiBi: head h adds slope[h] · (key position) to every score.
        let slopes = Tensor::from_vec(alibi_slopes(h), (h, 1, 1), &self.device)?;
        let pos = Tensor::arange(0u32, t as u32, &self.device)?.to_dtype(DType::F32)?.reshape((1, 1, t))?;
        let alibi = slopes.broadcast_mul(&pos)?.unsqueeze(0)?; // (1, H, 1, T)
        let emb = self.w("transformer.word_embeddings.weight");
        let mut x = emb.index_select(&ids.flatten_all()?, 0)?.reshape((b * t, d))?;
        x = ln(&x, "transformer.word_embeddings_layernorm")?;
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("transformer.h.{i}.{s}");
            let hn = ln(&x, &p("input_layernorm"))?;
            let qkv = self.proj(&hn, &p("self_attention.query_key_value"))?.reshape((b, t, h, 3, hd))?;
            let q = qkv.narrow(3, 0, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let k = qkv.narrow(3, 1, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let v = qkv.narrow(3, 2, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous()?;
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&alibi)?.broadcast_add(&mask)?;
            let att = ops::softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((b * t, d))?;
            x = (x + self.proj(&att, &p("self_attention.dense"))?)?;
            let hn = ln(&x, &p("post_attention_layernorm"))?;
            let up = self.act(&self.proj(&hn, &p("mlp.dense_h_to_4h"))?)?;
            x = (x + self.proj(&up, &p("mlp.dense_4h_to_h"))?)?;
        }
        ln(&x, "transformer.ln_f")?.reshape((b, t, d))
    }

    /// Logits (N, V) for hidden states (N, D).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let head = match (self.config.family.as_str(), self.config.tie_word_embeddings) {
            ("bloom", _) => "transformer.word_embeddings.weight",
            (_, true) => "model.embed_tokens.weight",
            _ => "lm_head.weight",
        };
        let w = self.w(head);
        if self.lora.is_some() { ops::frozen_linear(hidden, &w) } else { hidden.matmul(&w.t()?) }
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
    pub fn merge_lora(&mut self) -> candle_core::Result<()> {
        let Some(l) = self.lora.take() else { return Ok(()) };
        let scale = l.scale();
        for (m, (a, b)) in &l.adapters {
            let w = &self.params[&format!("{m}.weight")];
            let delta = (b.as_tensor().matmul(a.as_tensor())? * scale)?;
            w.set(&(w.as_tensor() + delta)?)?;
        }
        Ok(())
    }
}

fn bloom_shapes(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, v) = (c.hidden_size, c.vocab_size);
    let mut out = vec![("transformer.word_embeddings.weight".to_string(), vec![v, d])];
    let ln = |out: &mut Vec<(String, Vec<usize>)>, p: &str| {
        out.push((format!("{p}.weight"), vec![d]));
        out.push((format!("{p}.bias"), vec![d]));
    };
    ln(&mut out, "transformer.word_embeddings_layernorm");
    for i in 0..c.num_hidden_layers {
        let p = format!("transformer.h.{i}");
        ln(&mut out, &format!("{p}.input_layernorm"));
        ln(&mut out, &format!("{p}.post_attention_layernorm"));
        for (m, o, inp) in [
            ("self_attention.query_key_value", 3 * d, d),
            ("self_attention.dense", d, d),
            ("mlp.dense_h_to_4h", 4 * d, d),
            ("mlp.dense_4h_to_h", d, 4 * d),
        ] {
            out.push((format!("{p}.{m}.weight"), vec![o, inp]));
            out.push((format!("{p}.{m}.bias"), vec![o]));
        }
    }
    ln(&mut out, "transformer.ln_f");
    out
}

/// LayerNorm over the last dim from differentiable primitives (candle's fused one has no backward).
fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
}

/// BLOOM's ALiBi slopes, one per head.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f32> = (1..=closest).map(|p| base.powi(p as i32) as f32).collect();
    if closest != heads {
        let extra = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let remaining = closest.min(heads - closest);
        slopes.extend((0..remaining).map(|k| extra.powi((1 + 2 * k) as i32) as f32));
    }
    slopes
}

fn repeat_kv(x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, n, t, hd))?.contiguous()?.reshape((b, kv * n, t, hd))
}

fn causal_mask(t: usize, device: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
    Tensor::from_vec(m, (t, t), device)
}

fn rope_tables(c: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
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
