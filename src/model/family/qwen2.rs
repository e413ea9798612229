//! Qwen2: the Llama block with q/k/v biases (always on in its config.json).

use super::super::config::ModelConfig;
use super::llama;

pub fn normalise_hf_config(mut raw: serde_json::Value) -> serde_json::Value {
    raw["family"] = "qwen2".into();
    raw["attention_bias"] = true.into();
    raw
}

pub fn to_hf_config(c: &ModelConfig) -> serde_json::Value {
    llama::with_llama_keys(llama::hf_config_common(c, "Qwen2ForCausalLM", "qwen2"), c)
}
