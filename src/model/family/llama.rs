//! Llama (1/2/3 with Llama-3 rope scaling), SmolLM2 and Mistral: pre-norm RMSNorm blocks,
//! rotary embeddings, grouped-query attention, SwiGLU MLP. Qwen2, Qwen3 and Gemma reuse this
//! block with their differences (see `qwen2.rs`, `qwen3.rs`, `gemma.rs`).

use std::collections::HashMap;

use candle_core::Tensor;

use super::super::config::ModelConfig;
use super::super::transformer::{Pass, Transformer};

pub const EMBEDDING: &str = "model.embed_tokens.weight";
pub const HEAD_WEIGHT: &str = "lm_head.weight";
pub const LORA_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// What Llama-style families change in the shared block.
#[derive(Clone, Copy)]
pub struct Style {
    /// RMSNorm weight applied as `1 + w` (Gemma).
    pub norm_offset: bool,
    /// Embeddings scaled by √hidden_size (Gemma).
    pub embed_scale: bool,
    /// RMSNorm over each query and key head before the rotary embedding (Qwen3).
    pub qk_norm: bool,
}

impl Style {
    pub const LLAMA: Style = Style { norm_offset: false, embed_scale: false, qk_norm: false };
}

pub fn tensor_shapes(c: &ModelConfig, style: Style) -> Vec<(String, Vec<usize>)> {
    let (d, f, v, hd) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim());
    let kv = c.num_key_value_heads * hd;
    let q = c.num_attention_heads * hd;
    let mut out = vec![(EMBEDDING.to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !c.tie_word_embeddings {
        out.push((HEAD_WEIGHT.into(), vec![v, d]));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![d]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
        if style.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
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

/// A tied checkpoint may still carry an `lm_head.weight` copy; the embedding is the one used.
pub fn canonical_tensor_names(c: &ModelConfig, mut tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if c.tie_word_embeddings {
        tensors.remove(HEAD_WEIGHT);
    }
    tensors
}

pub fn normalise_hf_config(mut raw: serde_json::Value) -> serde_json::Value {
    raw["family"] = "llama".into();
    raw
}

/// The keys every Llama-style config.json shares; families add or override theirs.
pub(super) fn hf_config_common(c: &ModelConfig, arch: &str, model_type: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim(),
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    })
}

/// Llama's config keys on top of the common ones (Qwen2 writes the same with its own names).
pub(super) fn with_llama_keys(mut config: serde_json::Value, c: &ModelConfig) -> serde_json::Value {
    let extra = serde_json::json!({
        "rope_scaling": c.rope_llama3.map(|(f, lo, hi, orig)| serde_json::json!({
            "rope_type": "llama3", "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
            "original_max_position_embeddings": orig, "rope_theta": c.rope_theta,
        })),
        "attention_bias": c.attention_bias,
        "mlp_bias": false,
        "hidden_act": "silu",
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
        obj.extend(extra);
    }
    config
}

pub fn to_hf_config(c: &ModelConfig) -> serde_json::Value {
    with_llama_keys(hf_config_common(c, "LlamaForCausalLM", "llama"), c)
}

/// The decoder: used for training (`Pass::Train`, `Pass::Packed`) and cached decoding (`Pass::Decode`).
pub fn hidden(m: &Transformer, ids: &Tensor, pass: &mut Pass, style: Style) -> candle_core::Result<Tensor> {
    let c = &m.config;
    let (b, t) = ids.dims2()?;
    let grad = pass.grad();
    let (h, kvh, hd, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim(), c.hidden_size);
    let mask = m.mask(pass, t)?;
    let (cos, sin) = m.rope_for(pass, b, t)?;
    let mut x = m.embed(ids, EMBEDDING, grad)?;
    if style.embed_scale {
        x = (x * (d as f64).sqrt())?;
    }
    let norm = |x: &Tensor, name: &str| m.rms_norm(x, name, style.norm_offset, grad);
    for i in 0..c.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let hn = norm(&x, &p("input_layernorm.weight"))?;
        let mut q = m.linear(&hn, &p("self_attn.q_proj"), grad)?.reshape((b, t, h, hd))?;
        let mut k = m.linear(&hn, &p("self_attn.k_proj"), grad)?.reshape((b, t, kvh, hd))?;
        if style.qk_norm {
            q = norm(&q, &p("self_attn.q_norm.weight"))?;
            k = norm(&k, &p("self_attn.k_norm.weight"))?;
        }
        let (q, k) = (q.transpose(1, 2)?, k.transpose(1, 2)?);
        let v = m.linear(&hn, &p("self_attn.v_proj"), grad)?.reshape((b, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
        let q = m.rope(&q, &cos, &sin, grad)?;
        let k = m.rope(&k, &cos, &sin, grad)?;
        let att = m.attend(&q, k, v, i, pass, &mask, None)?.transpose(1, 2)?.reshape((b * t, h * hd))?;
        x = (x + m.linear(&att, &p("self_attn.o_proj"), grad)?)?;
        let hn = norm(&x, &p("post_attention_layernorm.weight"))?;
        let gate = m.linear(&hn, &p("mlp.gate_proj"), grad)?;
        let up = m.linear(&hn, &p("mlp.up_proj"), grad)?;
        x = (x + m.linear(&m.gated(&gate, &up)?, &p("mlp.down_proj"), grad)?)?;
    }
    norm(&x, "model.norm.weight")?.reshape((b, t, d))
}
