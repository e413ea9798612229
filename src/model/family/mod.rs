//! Model families as types. Each architecture lives in one file that knows its tensor names,
//! how to read and write its Hugging Face `config.json`, and its decoder (one function used by
//! training and by cached decoding alike, see [`super::transformer::Pass`]).
//!
//! Adding a family: write `family/<name>.rs` (copy the closest one), add a variant to
//! [`Family`] and one arm to each `match` below. Nothing outside this folder names a family.

pub mod bloom;
pub mod gemma;
pub mod llama;
pub mod qwen2;
pub mod qwen3;

use candle_core::Tensor;

use super::config::ModelConfig;
use super::transformer::{Pass, Transformer};
use crate::error::Result;

crate::choices! {
    /// A decoder architecture, by its name in config.json and run dirs (`"llama"`, …).
    #[derive(Default)]
    pub enum Family("family") {
        /// Llama 1/2/3 (with Llama-3 rope scaling), SmolLM2, Mistral.
        #[default]
        Llama = "llama",
        /// Llama with q/k/v biases.
        Qwen2 = "qwen2",
        /// Llama with per-head q/k RMSNorm and head_dim from the config.
        Qwen3 = "qwen3",
        /// RMSNorm·(1+w), √d embedding scale, GeGLU.
        Gemma = "gemma",
        /// ALiBi, LayerNorm, fused QKV, GELU MLP.
        Bloom = "bloom",
    }
}

impl Family {
    /// The family that reads a Hugging Face `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "llama" | "mistral" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "gemma" => Some(Family::Gemma),
            "bloom" => Some(Family::Bloom),
            _ => None,
        }
    }

    /// The `model_type` values [`Family::from_model_type`] accepts, for error messages.
    pub const MODEL_TYPES: &'static str = "llama, mistral, qwen2, qwen3, gemma, bloom";

    /// Rewrite a Hugging Face config.json into cotlab's field names (family set, family
    /// defaults filled in). Generic keys (rope, defaults) are handled by the HF loader after.
    pub fn normalise_hf_config(self, raw: serde_json::Value) -> serde_json::Value {
        match self {
            Family::Llama => llama::normalise_hf_config(raw),
            Family::Qwen2 => qwen2::normalise_hf_config(raw),
            Family::Qwen3 => qwen3::normalise_hf_config(raw),
            Family::Gemma => gemma::normalise_hf_config(raw),
            Family::Bloom => bloom::normalise_hf_config(raw),
        }
    }

    /// Why a Hugging Face config.json of this family cannot be computed exactly (a feature
    /// cotlab lacks), or `None`; checked before the config is read further.
    pub fn unsupported_hf_config(self, raw: &serde_json::Value) -> Option<String> {
        match self {
            Family::Qwen3 => qwen3::unsupported(raw),
            _ => None,
        }
    }

    /// The config.json transformers expects for this model.
    pub fn to_hf_config(self, c: &ModelConfig) -> serde_json::Value {
        match self {
            Family::Llama => llama::to_hf_config(c),
            Family::Qwen2 => qwen2::to_hf_config(c),
            Family::Qwen3 => qwen3::to_hf_config(c),
            Family::Gemma => gemma::to_hf_config(c),
            Family::Bloom => bloom::to_hf_config(c),
        }
    }

    /// Every tensor name and shape a config implies, under Hugging Face names.
    pub fn tensor_shapes(self, c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        match self {
            Family::Llama | Family::Qwen2 | Family::Gemma => llama::tensor_shapes(c, llama::Style::LLAMA),
            Family::Qwen3 => llama::tensor_shapes(c, qwen3::STYLE),
            Family::Bloom => bloom::tensor_shapes(c),
        }
    }

    /// Checkpoint tensor names as this family's forward expects them (e.g. BLOOM checkpoints
    /// saved without the `transformer.` prefix; tied output copies dropped).
    pub fn canonical_tensor_names(self, c: &ModelConfig, tensors: std::collections::HashMap<String, Tensor>) -> std::collections::HashMap<String, Tensor> {
        match self {
            Family::Bloom => bloom::canonical_tensor_names(tensors),
            _ => llama::canonical_tensor_names(c, tensors),
        }
    }

    /// The linear modules LoRA can adapt (PEFT's `target_modules` names).
    pub fn lora_modules(self) -> &'static [&'static str] {
        match self {
            Family::Bloom => bloom::LORA_MODULES,
            _ => llama::LORA_MODULES,
        }
    }

    /// Name of the output projection's weight (tied to the embedding when the config says so).
    pub fn head_weight(self, c: &ModelConfig) -> &'static str {
        match self {
            Family::Bloom => bloom::HEAD_WEIGHT,
            _ if c.tie_word_embeddings => llama::EMBEDDING,
            _ => llama::HEAD_WEIGHT,
        }
    }

    /// Whether positions enter through rotary embeddings (BLOOM uses ALiBi instead).
    pub fn uses_rope(self) -> bool {
        !matches!(self, Family::Bloom)
    }

    /// Hidden states (B, T, D) after the final norm.
    pub(crate) fn hidden(self, m: &Transformer, ids: &Tensor, pass: &mut Pass) -> candle_core::Result<Tensor> {
        match self {
            Family::Llama | Family::Qwen2 => llama::hidden(m, ids, pass, llama::Style::LLAMA),
            Family::Qwen3 => llama::hidden(m, ids, pass, qwen3::STYLE),
            Family::Gemma => llama::hidden(m, ids, pass, gemma::STYLE),
            Family::Bloom => bloom::hidden(m, ids, pass),
        }
    }
}

impl std::str::FromStr for Family {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Family> {
        Family::parse(s).map_err(crate::error::Error::Usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialise_as_before() {
        for &f in Family::ALL {
            assert_eq!(f.name().parse::<Family>().unwrap(), f);
            // Run dirs written before families were types hold these same strings.
            assert_eq!(serde_json::to_value(f).unwrap(), serde_json::json!(f.name()));
        }
        assert_eq!(Family::from_model_type("mistral"), Some(Family::Llama));
        let e = "gpt2".parse::<Family>().unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("bloom"), "{e}");
    }
}
