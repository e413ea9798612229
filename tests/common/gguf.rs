//! Writing tiny GGUF files for tests, with candle's writer: a Hugging Face tokenizer's vocabulary
//! and merges as llama.cpp's `tokenizer.ggml.*` keys, and f32 tensors under GGUF names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

/// The `tokenizer.ggml.*` keys of a BPE tokenizer, with pre-tokenizer name `pre`: special added
/// tokens as control tokens (type 3), the others as user-defined (type 4).
pub fn tokenizer_metadata(tok: &tokenizers::Tokenizer, pre: &str) -> Vec<(String, Value)> {
    let json: serde_json::Value = serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
    let vocab = tok.get_vocab(true);
    let mut tokens = vec![String::new(); vocab.values().map(|&i| i as usize + 1).max().unwrap()];
    for (t, i) in &vocab {
        tokens[*i as usize] = t.clone();
    }
    let added = |special: bool| -> Vec<u32> {
        json["added_tokens"].as_array().unwrap().iter().filter(|t| t["special"] == special).map(|t| t["id"].as_u64().unwrap() as u32).collect()
    };
    let (control, user) = (added(true), added(false));
    let types = (0..tokens.len() as u32)
        .map(|i| {
            Value::I32(if control.contains(&i) {
                3
            } else if user.contains(&i) {
                4
            } else {
                1
            })
        })
        .collect();
    // tokenizer.json writes a merge as "a b" (older) or ["a", "b"].
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Value::String(m.as_str().map(str::to_string).unwrap_or_else(|| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
    ]
}

/// A GGUF of architecture `qwen2`/`qwen3` holding a student's weights (f32), config and
/// tokenizer (pre-tokenizer `qwen2`), as llama.cpp's converter writes one: q/k rows as in the
/// Hugging Face checkpoint (Qwen uses the half-split rope), no `output.weight` when tied.
pub fn write_qwen(path: &Path, s: &cotlab::model::Student) {
    let c = &s.config;
    let arch = c.family.name();
    assert!(arch.starts_with("qwen"), "write_qwen: a {arch} student");
    let tensors: HashMap<String, Tensor> = s.params().iter().map(|(n, v)| (gguf_name(n), v.as_tensor().clone())).collect();
    let k = |key: &str| format!("{arch}.{key}");
    let mut meta = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        (k("block_count"), Value::U32(c.num_hidden_layers as u32)),
        (k("context_length"), Value::U32(c.max_position_embeddings as u32)),
        (k("embedding_length"), Value::U32(c.hidden_size as u32)),
        (k("feed_forward_length"), Value::U32(c.intermediate_size as u32)),
        (k("attention.head_count"), Value::U32(c.num_attention_heads as u32)),
        (k("attention.head_count_kv"), Value::U32(c.num_key_value_heads as u32)),
        (k("attention.key_length"), Value::U32(c.head_dim() as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32)),
        (k("rope.freq_base"), Value::F32(c.rope_theta as f32)),
    ];
    meta.extend(c.eos_token_id.map(|e| ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(e))));
    meta.extend(tokenizer_metadata(&s.tokenizer, "qwen2"));
    write(path, &meta, &tensors);
}

/// Write `path` with `metadata` and the f32 `tensors` (GGUF names).
pub fn write(path: &Path, metadata: &[(String, Value)], tensors: &HashMap<String, Tensor>) {
    let q: Vec<(String, QTensor)> = tensors.iter().map(|(n, t)| (n.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap())).collect();
    let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &meta, &ts).unwrap();
}

/// The GGUF name of a Llama-style Hugging Face tensor name (llama.cpp's convert_hf_to_gguf.py).
pub fn gguf_name(hf: &str) -> String {
    let fixed = [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, tail) = rest.split_once('.').unwrap();
    let parts = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    let g = parts.iter().find(|(h, _)| *h == tail).unwrap_or_else(|| panic!("no GGUF name for {hf}")).1;
    format!("blk.{layer}.{g}")
}
