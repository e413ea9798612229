//! The architecture hyper-parameters of a student, in one struct for every family. Field names
//! follow transformers' Llama config; each family's file maps its own config.json onto them.

use serde::{Deserialize, Serialize};

use super::family::Family;
use crate::error::Result;
use crate::usage;

/// Architecture hyper-parameters. `family` picks the decoder (see [`Family`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub family: Family,
    /// transformers' activation name; checked when the model is built (see [`Activation`]).
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
    /// RMSNorm epsilon (LayerNorm epsilon for BLOOM).
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

fn default_act() -> String {
    "silu".into()
}

/// The MLP's non-linearity, parsed once from `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh-approximated GELU (transformers' gelu_pytorch_tanh / gelu_new; BLOOM's gelu).
    GeluTanh,
    GeluErf,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu" => Ok(Activation::GeluTanh),
            "gelu_exact" => Ok(Activation::GeluErf),
            other => Err(usage!("activation '{other}' is not supported (silu, swish, gelu, gelu_new, gelu_pytorch_tanh, gelu_exact)")),
        }
    }

    pub fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
        }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The config.json transformers expects for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        self.family.to_hf_config(self)
    }

    /// Reject configs that would fail deep inside a forward pass (zero sizes, heads that do not
    /// divide), naming the field.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(usage!("model config: {name} is 0"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(usage!(
                "model config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            ));
        }
        if self.family.uses_rope() && self.head_dim() % 2 != 0 {
            return Err(usage!("model config: head_dim {} must be even for rotary embeddings", self.head_dim()));
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }
}
