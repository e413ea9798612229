//! Qwen3: the Llama block with a per-head RMSNorm on queries and keys (`q_norm`, `k_norm`, of
//! width head_dim, applied before the rotary embedding), no q/k/v biases unless the config
//! says so, `head_dim` from the config (not hidden_size / heads), tied or untied embeddings as
//! the config says. Sliding-window attention (off in every released Qwen3) is refused.

use super::super::config::ModelConfig;
use super::llama::{self, Style};

pub const STYLE: Style = Style { qk_norm: true, ..Style::LLAMA };

/// transformers' Qwen3Config defaults for keys a config.json may omit.
pub fn normalise_hf_config(mut raw: serde_json::Value) -> serde_json::Value {
    raw["family"] = "qwen3".into();
    for (k, d) in [("head_dim", serde_json::json!(128)), ("attention_bias", serde_json::json!(false)), ("tie_word_embeddings", serde_json::json!(false))] {
        if raw.get(k).is_none_or(|v| v.is_null()) {
            raw[k] = d;
        }
    }
    raw
}

/// Why a Qwen3 config.json cannot be computed exactly, if it cannot.
pub fn unsupported(raw: &serde_json::Value) -> Option<String> {
    let on = raw.get("use_sliding_window").and_then(|v| v.as_bool()).unwrap_or(false);
    on.then(|| "use_sliding_window is true: sliding-window attention is not supported (set it to false for contexts within max_window_layers)".into())
}

pub fn to_hf_config(c: &ModelConfig) -> serde_json::Value {
    let mut config = llama::with_llama_keys(llama::hf_config_common(c, "Qwen3ForCausalLM", "qwen3"), c);
    config["use_sliding_window"] = false.into();
    config
}
