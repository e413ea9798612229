//! The architecture hyper-parameters of a Llama-family student.

use serde::{Deserialize, Serialize};

/// Architecture hyper-parameters. `family` picks the variant: "llama" (Llama, SmolLM2, Mistral),
/// "qwen2" (q/k/v biases), "gemma" (RMSNorm·(1+w), √d embedding scale, GeGLU), "bloom" (ALiBi,
/// LayerNorm, fused QKV, GELU MLP).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_family")]
    pub family: String,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Per-head size when it is not hidden_size / heads (Gemma).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Llama-3.1/3.2 rope scaling: (factor, low_freq_factor, high_freq_factor, original context).
    #[serde(default)]
    pub rope_llama3: Option<(f64, f64, f64, f64)>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2-style q/k/v biases.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_family() -> String {
    "llama".into()
}

fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The config.json transformers expects for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        if self.family == "bloom" {
            // BLOOM's config uses its own key names.
            return serde_json::json!({
                "architectures": ["BloomForCausalLM"],
                "model_type": "bloom",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "n_layer": self.num_hidden_layers,
                "n_head": self.num_attention_heads,
                "layer_norm_epsilon": self.rms_norm_eps,
                "apply_residual_connection_post_layernorm": false,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "torch_dtype": "float32",
            });
        }
        let (arch, model_type) = match self.family.as_str() {
            "gemma" => ("GemmaForCausalLM", "gemma"),
            "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
            _ => ("LlamaForCausalLM", "llama"),
        };
        let mut config = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        });
        let family_keys = if self.family == "gemma" {
            serde_json::json!({ "hidden_activation": self.hidden_act })
        } else {
            serde_json::json!({
                "rope_scaling": self.rope_llama3.map(|(f, lo, hi, orig)| serde_json::json!({
                    "rope_type": "llama3", "factor": f, "low_freq_factor": lo, "high_freq_factor": hi,
                    "original_max_position_embeddings": orig, "rope_theta": self.rope_theta,
                })),
                "attention_bias": self.attention_bias,
                "mlp_bias": false,
                "hidden_act": "silu",
            })
        };
        if let (Some(c), serde_json::Value::Object(extra)) = (config.as_object_mut(), family_keys) {
            c.extend(extra);
        }
        config
    }
}
