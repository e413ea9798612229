//! Gemma: the Llama block with RMSNorm weights applied as `1 + w`, embeddings scaled by
//! √hidden_size, GeGLU (tanh GELU) in the MLP, tied embeddings by default.

use super::super::config::ModelConfig;
use super::llama::{self, Style};

pub const STYLE: Style = Style { norm_offset: true, embed_scale: true, qk_norm: false };

pub fn normalise_hf_config(mut raw: serde_json::Value) -> serde_json::Value {
    raw["family"] = "gemma".into();
    let act = raw.get("hidden_activation").or(raw.get("hidden_act")).cloned().unwrap_or("gelu_pytorch_tanh".into());
    raw["hidden_act"] = act;
    if raw.get("tie_word_embeddings").is_none() {
        raw["tie_word_embeddings"] = true.into();
    }
    raw
}

pub fn to_hf_config(c: &ModelConfig) -> serde_json::Value {
    let mut config = llama::hf_config_common(c, "GemmaForCausalLM", "gemma");
    config["hidden_activation"] = c.hidden_act.clone().into();
    config
}
