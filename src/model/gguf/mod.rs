//! Load a GGUF of architecture `llama`, `qwen2` or `qwen3`: config from the metadata, every
//! tensor dequantised to f32 and renamed to its Hugging Face name, the tokenizer built from the
//! metadata.
//!
//! `meta` reads the metadata for both this loader and `tokenizer` (which builds the tokenizer),
//! so neither imports the other.
//!
//! For `llama` llama.cpp stores q/k projection rows permuted for its interleaved rope; we undo
//! that here so the rest of cotlab (forward, checkpoints, export) sees standard HF weights and
//! uses the standard half-split rope. Qwen GGUFs use the half-split ("neox") rope and store
//! q/k as Hugging Face does.

mod meta;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};

use super::chat::ChatTemplate;
use super::config::ModelConfig;
use super::family::Family;
use crate::error::{Error, Result};
use meta::{meta, meta_f64, meta_usize};

type Loaded = (ModelConfig, HashMap<String, Tensor>, tokenizers::Tokenizer, Option<ChatTemplate>, String);

/// Undo llama.cpp's q/k row permutation: (heads, 2, hd/2, in) → (heads, hd/2, 2, in).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, hd / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

/// The inverse of `unpermute_qk` (for writing GGUF-ordered weights, and for tests).
pub fn permute_qk(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    w.reshape((heads, 2, hd / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let (mut f, _) = crate::paths::open_regular(path)?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::data(path, format!("not a readable GGUF file ({}); is it truncated or corrupt?", crate::error::candle_message(&e))))?;
    let arch = meta(&content, path, "general.architecture")?.to_string().map_err(|e| Error::data(path, crate::error::candle_message(&e)))?.clone();
    // The family, and whether q/k rows are permuted for llama.cpp's interleaved rope.
    let (family, permuted) = match arch.as_str() {
        "llama" => (Family::Llama, true),
        "qwen2" => (Family::Qwen2, false),
        "qwen3" => (Family::Qwen3, false),
        other => return Err(Error::data(path, format!("architecture '{other}' is not supported yet (llama, qwen2, qwen3)"))),
    };
    // Llama-3.1+ GGUFs carry their rope scaling as per-frequency factors; computing without them
    // would be silently wrong.
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(Error::data(
            path,
            "this GGUF scales its rotary embedding by per-frequency factors (rope_freqs.weight, Llama-3.1 and later), which cotlab does not read from GGUF yet: load the model's Hugging Face dir instead (hf:ORG/NAME or a local dir; its config.json's rope_scaling is supported)",
        ));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let tokens = meta(&content, path, "tokenizer.ggml.tokens")?.to_vec().map_err(|e| Error::data(path, crate::error::candle_message(&e)))?.len();
    let heads = meta_usize(&content, path, &k("attention.head_count"))?;
    let kv_heads = meta_usize(&content, path, &k("attention.head_count_kv")).unwrap_or(heads);
    let has_output = content.tensor_infos.contains_key("output.weight");
    let mut config = ModelConfig {
        family,
        hidden_act: "silu".into(),
        head_dim: meta_usize(&content, path, &k("attention.key_length")).ok(),
        rope_llama3: None,
        vocab_size: meta_usize(&content, path, &k("vocab_size")).unwrap_or(tokens),
        hidden_size: meta_usize(&content, path, &k("embedding_length"))?,
        intermediate_size: meta_usize(&content, path, &k("feed_forward_length"))?,
        num_hidden_layers: meta_usize(&content, path, &k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        rms_norm_eps: meta_f64(&content, path, &k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta_f64(&content, path, &k("rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: meta_usize(&content, path, &k("context_length")).unwrap_or(2048),
        tie_word_embeddings: !has_output,
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        bos_token_id: meta_usize(&content, path, "tokenizer.ggml.bos_token_id").ok().map(|x| x as u32),
        eos_token_id: meta_usize(&content, path, "tokenizer.ggml.eos_token_id").ok().map(|x| x as u32),
    };
    // An explicit key_length equal to the implied one is the same model (as for config.json).
    if config.head_dim.is_some_and(|hd| hd.checked_mul(heads) == Some(config.hidden_size)) {
        config.head_dim = None;
    }
    // Before any tensor is dequantized, so the error names the file.
    config.validate().map_err(|e| Error::data(path, e.to_string()))?;
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name(name) else { continue };
        let q = content
            .tensor(&mut f, name, device)
            .map_err(|e| Error::data(path, format!("tensor '{name}': {} (truncated file?)", crate::error::candle_message(&e))))?;
        let mut t = q.dequantize(device).map_err(|e| Error::data(path, format!("tensor '{name}': {}", crate::error::candle_message(&e))))?;
        if permuted && hf.ends_with("q_proj.weight") {
            t = unpermute_qk(&t, heads).map_err(|e| Error::data(path, crate::error::candle_message(&e)))?;
        } else if permuted && hf.ends_with("k_proj.weight") {
            t = unpermute_qk(&t, kv_heads).map_err(|e| Error::data(path, crate::error::candle_message(&e)))?;
        }
        tensors.insert(hf, t);
    }
    let tok = tokenizer::from_gguf(&content, path)?;
    let eos = super::eos_text(&tok, config.eos_token_id);
    let template = ChatTemplate::from_gguf(&content, &eos);
    let name = content
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| path.file_stem().unwrap_or_default().to_string_lossy().to_string());
    Ok((config, tensors, tok, template, name))
}
