//! BLOOM: ALiBi position biases instead of rotary embeddings, LayerNorm (also right after the
//! embedding), a fused query_key_value projection with per-head interleaving, a GELU MLP,
//! biases everywhere, and the output tied to the embedding.

use std::collections::HashMap;

use candle_core::{DType, Tensor, D};

use super::super::config::ModelConfig;
use super::super::transformer::{Pass, Transformer};

pub const EMBEDDING: &str = "transformer.word_embeddings.weight";
pub const HEAD_WEIGHT: &str = EMBEDDING;
/// PEFT's default BLOOM target is query_key_value; these are all its linear modules.
pub const LORA_MODULES: &[&str] = &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

pub fn tensor_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, v) = (c.hidden_size, c.vocab_size);
    let mut out = vec![(EMBEDDING.to_string(), vec![v, d])];
    let ln = |out: &mut Vec<(String, Vec<usize>)>, p: &str| {
        out.push((format!("{p}.weight"), vec![d]));
        out.push((format!("{p}.bias"), vec![d]));
    };
    ln(&mut out, "transformer.word_embeddings_layernorm");
    for i in 0..c.num_hidden_layers {
        let p = format!("transformer.h.{i}");
        ln(&mut out, &format!("{p}.input_layernorm"));
        ln(&mut out, &format!("{p}.post_attention_layernorm"));
        for (m, o, inp) in
            [("self_attention.query_key_value", 3 * d, d), ("self_attention.dense", d, d), ("mlp.dense_h_to_4h", 4 * d, d), ("mlp.dense_4h_to_h", d, 4 * d)]
        {
            out.push((format!("{p}.{m}.weight"), vec![o, inp]));
            out.push((format!("{p}.{m}.bias"), vec![o]));
        }
    }
    ln(&mut out, "transformer.ln_f");
    out
}

/// BloomModel checkpoints may lack the `transformer.` prefix; the tied lm_head copy is dropped.
pub fn canonical_tensor_names(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| k != "lm_head.weight")
        .map(|(k, v)| if k.starts_with("transformer.") { (k, v) } else { (format!("transformer.{k}"), v) })
        .collect()
}

/// BLOOM's config.json uses its own key names; map them onto cotlab's.
pub fn normalise_hf_config(raw: serde_json::Value) -> serde_json::Value {
    let g = |k: &str, alt: &str| raw.get(k).or(raw.get(alt)).cloned().unwrap_or(serde_json::Value::Null);
    let (d, layers, heads) = (g("hidden_size", "n_embed"), g("n_layer", "num_hidden_layers"), g("n_head", "num_attention_heads"));
    let hidden = d.as_u64().unwrap_or(0);
    serde_json::json!({
        "family": "bloom", "hidden_act": "gelu", "vocab_size": raw["vocab_size"], "hidden_size": d,
        "intermediate_size": hidden.saturating_mul(4), "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "rms_norm_eps": raw.get("layer_norm_epsilon").cloned().unwrap_or(1e-5.into()),
        "rope_theta": 0.0, "max_position_embeddings": 2048, "tie_word_embeddings": true, "attention_bias": true,
        "bos_token_id": raw.get("bos_token_id").cloned(), "eos_token_id": raw.get("eos_token_id").cloned(),
    })
}

pub fn to_hf_config(c: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BloomForCausalLM"],
        "model_type": "bloom",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "n_layer": c.num_hidden_layers,
        "n_head": c.num_attention_heads,
        "layer_norm_epsilon": c.rms_norm_eps,
        "apply_residual_connection_post_layernorm": false,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    })
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

/// The decoder, for training and cached decoding alike. ALiBi adds slope·(key index) to each
/// score; with left padding a row's true key positions differ from the index by a constant,
/// which softmax ignores, so decoding needs no positions. Packed rows add slope·(key position in
/// its own sequence) instead: the very scores of the sequence trained alone (the keys of other
/// sequences are masked).
pub fn hidden(m: &Transformer, ids: &Tensor, pass: &mut Pass) -> candle_core::Result<Tensor> {
    let c = &m.config;
    let (b, t) = ids.dims2()?;
    let grad = pass.grad();
    let (h, d) = (c.num_attention_heads, c.hidden_size);
    let hd = d / h;
    let mask = m.mask(pass, t)?;
    let keys = mask.dim(D::Minus1)?;
    let slopes = Tensor::from_vec(alibi_slopes(h), (h, 1, 1), &m.device)?;
    let alibi = match pass {
        Pass::Packed { pos, .. } => {
            let key_pos = pos.to_dtype(DType::F32)?.reshape((b, 1, 1, keys))?;
            slopes.unsqueeze(0)?.broadcast_mul(&key_pos)? // (B, H, 1, keys)
        }
        _ => {
            let key_pos = Tensor::arange(0u32, keys as u32, &m.device)?.to_dtype(DType::F32)?.reshape((1, 1, keys))?;
            slopes.broadcast_mul(&key_pos)?.unsqueeze(0)? // (1, H, 1, keys)
        }
    };
    let mut x = m.embed(ids, EMBEDDING, grad)?;
    x = m.layer_norm(&x, "transformer.word_embeddings_layernorm", grad)?;
    for i in 0..c.num_hidden_layers {
        let p = |s: &str| format!("transformer.h.{i}.{s}");
        let hn = m.layer_norm(&x, &p("input_layernorm"), grad)?;
        let qkv = m.linear(&hn, &p("self_attention.query_key_value"), grad)?.reshape((b, t, h, 3, hd))?;
        let part = |j: usize| qkv.narrow(3, j, 1)?.squeeze(3)?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let att = m.attend(&q, k, v, i, pass, &mask, Some(&alibi))?.transpose(1, 2)?.reshape((b * t, d))?;
        x = (x + m.linear(&att, &p("self_attention.dense"), grad)?)?;
        let hn = m.layer_norm(&x, &p("post_attention_layernorm"), grad)?;
        let up = m.act(&m.linear(&hn, &p("mlp.dense_h_to_4h"), grad)?)?;
        x = (x + m.linear(&up, &p("mlp.dense_4h_to_h"), grad)?)?;
    }
    m.layer_norm(&x, "transformer.ln_f", grad)?.reshape((b, t, d))
}
