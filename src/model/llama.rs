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
        let (cos, sin) = rope_tables(&config, device).map_err(ce)?;
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


    /// Hidden states (B, T, D) after the final norm.
    pub fn hidden(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        if t > self.cos.dim(0)? {
            candle_core::bail!("sequence of {t} tokens exceeds the model's context of {}", self.cos.dim(0)?);
        }
        let (h, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let eps = c.rms_norm_eps as f32;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mask = causal_mask(t, &self.device)?;
        let emb = self.w("model.embed_tokens.weight");
        let mut x = emb.index_select(&ids.flatten_all()?, 0)?.reshape((b * t, c.hidden_size))?;
        for i in 0..c.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let hn = ops::rms_norm(&x, &self.w(&p("input_layernorm.weight")), eps)?;
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
            let hn = ops::rms_norm(&x, &self.w(&p("post_attention_layernorm.weight")), eps)?;
            let gate = candle_nn::ops::silu(&self.proj(&hn, &p("mlp.gate_proj"))?)?;
            let up = self.proj(&hn, &p("mlp.up_proj"))?;
            x = (x + self.proj(&(gate * up)?, &p("mlp.down_proj"))?)?;
        }
        let x = ops::rms_norm(&x, &self.w("model.norm.weight"), eps)?;
        x.reshape((b, t, c.hidden_size))
    }

    /// Logits (N, V) for hidden states (N, D).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let head = if self.config.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
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
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / (c.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F32)?.reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}
