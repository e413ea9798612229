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
    /// divide, a rope base that is not a positive number), naming the field; then refuse weights
    /// that cannot fit in this machine's memory, before anything is allocated (see
    /// [`ModelConfig::check_fits`]).
    pub fn validate(&self) -> Result<()> {
        self.check_values()?;
        self.check_fits(crate::memory::physical())
    }

    /// The value checks of [`ModelConfig::validate`], without the memory check.
    pub fn check_values(&self) -> Result<()> {
        let mut sizes = vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        // BLOOM's MLP is 4·hidden_size whatever the config says.
        if self.family != Family::Bloom {
            sizes.push(("intermediate_size", self.intermediate_size));
        }
        if let Some(hd) = self.head_dim {
            sizes.push(("head_dim", hd));
        }
        for (name, v) in sizes {
            if v == 0 {
                return Err(usage!("model config: {name} is 0"));
            }
        }
        // Token ids are u32 everywhere (tokenizer, sampling, KV cache).
        if self.vocab_size as u64 > u32::MAX as u64 + 1 {
            return Err(usage!("model config: vocab_size {} is more than token ids (u32) can address (at most {})", self.vocab_size, u32::MAX as u64 + 1));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(usage!(
                "model config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return Err(usage!(
                "model config: hidden_size {} is not a multiple of num_attention_heads {} (set head_dim when the heads are not hidden_size / num_attention_heads wide)",
                self.hidden_size,
                self.num_attention_heads
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(usage!("model config: rms_norm_eps must be a positive number, got {}", self.rms_norm_eps));
        }
        if self.family.uses_rope() {
            if self.head_dim() % 2 != 0 {
                return Err(usage!("model config: head_dim {} must be even for rotary embeddings", self.head_dim()));
            }
            // theta^(-2i/d) is inf or NaN for theta <= 0: every logit NaN, every answer empty.
            if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
                return Err(usage!("model config: rope_theta must be a positive number (10000 is the usual base), got {}", self.rope_theta));
            }
            if let Some((factor, lo, hi, orig)) = self.rope_llama3 {
                let ok = [factor, lo, hi, orig].iter().all(|x| x.is_finite() && *x > 0.0) && lo < hi;
                if !ok {
                    return Err(usage!(
                        "model config: llama3 rope scaling needs positive numbers with low_freq_factor < high_freq_factor; got factor {factor}, low_freq_factor {lo}, high_freq_factor {hi}, original_max_position_embeddings {orig}"
                    ));
                }
            }
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// How many parameters and tensors this config implies, each size multiplied out with
    /// checked arithmetic: a product past 64 bits is an error naming the keys, never a wrapped
    /// small number. Agrees with [`Family::tensor_shapes`] without building that list (whose
    /// length is itself proportional to `num_hidden_layers`).
    pub fn footprint(&self) -> Result<Footprint> {
        let c = self;
        let (v, d, layers) = (c.vocab_size as u64, c.hidden_size as u64, c.num_hidden_layers as u64);
        let embedding = product(&[("vocab_size", v), ("hidden_size", d)])?;
        let (outside, per_layer, tensors_per_layer, tensors_outside) = if c.family == Family::Bloom {
            // Fused QKV 3d·d, dense d·d, MLP 4d·d twice; each with a bias; two LayerNorms.
            let dd = product(&[("hidden_size", d), ("hidden_size", d)])?;
            let per = sum(&[product(&[("12", 12), ("hidden_size²", dd)])?, product(&[("13", 13), ("hidden_size", d)])?])?;
            (sum(&[embedding, product(&[("4", 4), ("hidden_size", d)])?])?, per, 12u64, 5u64)
        } else {
            let hd = c.head_dim() as u64;
            let q = product(&[("num_attention_heads", c.num_attention_heads as u64), ("head_dim", hd)])?;
            let kv = product(&[("num_key_value_heads", c.num_key_value_heads as u64), ("head_dim", hd)])?;
            let f = c.intermediate_size as u64;
            let mut parts = vec![
                product(&[("2", 2), ("hidden_size", d)])?,
                product(&[("2", 2), ("num_attention_heads × head_dim", q), ("hidden_size", d)])?,
                product(&[("2", 2), ("num_key_value_heads × head_dim", kv), ("hidden_size", d)])?,
                product(&[("3", 3), ("intermediate_size", f), ("hidden_size", d)])?,
            ];
            if c.attention_bias {
                parts.push(sum(&[q, kv, kv])?);
            }
            // Qwen3's per-head query and key norms.
            let qk_norm = c.family == Family::Qwen3;
            if qk_norm {
                parts.push(product(&[("2", 2), ("head_dim", hd)])?);
            }
            let head = if c.tie_word_embeddings { 0 } else { embedding };
            let tensors = 9 + 3 * c.attention_bias as u64 + 2 * qk_norm as u64;
            (sum(&[embedding, head, d])?, sum(&parts)?, tensors, 2 + !c.tie_word_embeddings as u64)
        };
        let layers_total = product(&[("num_hidden_layers", layers), ("parameters per layer", per_layer)])?;
        Ok(Footprint {
            params: sum(&[outside, layers_total])?,
            tensors: sum(&[tensors_outside, product(&[("num_hidden_layers", layers), ("tensors per layer", tensors_per_layer)])?])?,
            embedding,
            per_layer,
        })
    }

    /// Refuse a config whose f32 weights (plus the bookkeeping per tensor) exceed `memory`
    /// bytes: allocating them would abort the process, not fail with an error. Names the
    /// largest part (the embedding or the layers) and the machine's memory. `None` (memory
    /// unknown) checks only that the sizes multiply out.
    pub fn check_fits(&self, memory: Option<u64>) -> Result<()> {
        let fp = self.footprint()?;
        let bytes = fp.bytes();
        let Some(memory) = memory else { return Ok(()) };
        if bytes <= memory {
            return Ok(());
        }
        let layers = (self.num_hidden_layers as u64).saturating_mul(fp.per_layer);
        let largest = if fp.embedding >= layers {
            format!("the embedding, vocab_size {} × hidden_size {}, is {} parameters", self.vocab_size, self.hidden_size, fp.embedding)
        } else {
            format!(
                "the layers, num_hidden_layers {} × {} parameters each (hidden_size {}, intermediate_size {}), are {layers} parameters",
                self.num_hidden_layers, fp.per_layer, self.hidden_size, self.intermediate_size
            )
        };
        Err(usage!(
            "model config: {} parameters need {} in f32, more than this machine's {} of memory ({largest}): check the sizes",
            fp.params,
            crate::memory::gib(bytes),
            crate::memory::gib(memory)
        ))
    }
}

/// What a config's weights take (see [`ModelConfig::footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub params: u64,
    pub tensors: u64,
    /// vocab_size × hidden_size.
    pub embedding: u64,
    pub per_layer: u64,
}

/// Host bytes per tensor beyond its data: its name, shape and map entry.
const TENSOR_OVERHEAD: u64 = 256;

impl Footprint {
    /// f32 weights plus the bookkeeping of every tensor (saturating: past 64 bits fits nowhere).
    pub fn bytes(&self) -> u64 {
        self.params.saturating_mul(4).saturating_add(self.tensors.saturating_mul(TENSOR_OVERHEAD))
    }
}

/// The product of named sizes; past 64 bits an error that names them.
fn product(factors: &[(&str, u64)]) -> Result<u64> {
    factors.iter().try_fold(1u64, |acc, (_, x)| acc.checked_mul(*x)).ok_or_else(|| {
        let terms: Vec<String> = factors.iter().map(|(k, x)| if k.parse::<u64>().is_ok() { k.to_string() } else { format!("{k} {x}") }).collect();
        usage!("model config: {} overflows 64 bits: check the sizes", terms.join(" × "))
    })
}

fn sum(parts: &[u64]) -> Result<u64> {
    parts.iter().try_fold(0u64, |acc, x| acc.checked_add(*x)).ok_or_else(|| usage!("model config: the parameter count overflows 64 bits: check the sizes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(family: Family, tie: bool, bias: bool, head_dim: Option<usize>) -> ModelConfig {
        let mut c = crate::model::random::preset("smollm2-135m").unwrap();
        c.family = family;
        c.tie_word_embeddings = tie || family == Family::Bloom;
        c.attention_bias = bias || family == Family::Bloom;
        c.head_dim = head_dim;
        c.num_hidden_layers = 3;
        c
    }

    /// The arithmetic count is the sum over the tensors the model really makes.
    #[test]
    fn footprint_counts_what_tensor_shapes_lists() {
        for &family in Family::ALL {
            for (tie, bias, hd) in [(true, false, None), (false, true, None), (false, false, Some(80))] {
                let c = config(family, tie, bias, hd);
                let shapes = family.tensor_shapes(&c);
                let params: u64 = shapes.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
                let fp = c.footprint().unwrap();
                assert_eq!((fp.params, fp.tensors), (params, shapes.len() as u64), "{family} tie {tie} bias {bias} head_dim {hd:?}");
            }
        }
    }

    /// Sizes whose product passes 64 bits are an error naming the keys, not a wrapped count.
    #[test]
    fn overflowing_sizes_name_the_keys() {
        let mut c = config(Family::Llama, true, false, None);
        (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads) = (1 << 40, 1 << 40, 1 << 20, 1 << 20);
        let e = c.footprint().unwrap_err().to_string();
        assert!(e.contains("overflows 64 bits") && e.contains("hidden_size 1099511627776"), "{e}");
        let mut c = config(Family::Bloom, true, true, None);
        c.hidden_size = 1 << 33;
        let e = c.check_fits(Some(1 << 40)).unwrap_err().to_string();
        assert!(e.contains("overflows 64 bits") && e.contains("hidden_size"), "{e}");
    }

    /// Weights past the memory given are refused, naming the part that is too large.
    #[test]
    fn weights_past_memory_name_the_largest_part() {
        let c = config(Family::Llama, true, false, None);
        assert!(c.check_fits(Some(1 << 30)).is_ok());
        let mut big = c.clone();
        big.num_hidden_layers = 1_000_000_000;
        let e = big.check_fits(Some(24 << 30)).unwrap_err().to_string();
        assert!(e.contains("num_hidden_layers 1000000000") && e.contains("24.00 GiB of memory"), "{e}");
        let mut big = c;
        big.vocab_size = 1_000_000_000;
        let e = big.check_fits(Some(24 << 30)).unwrap_err().to_string();
        assert!(e.contains("the embedding, vocab_size 1000000000 × hidden_size 576"), "{e}");
    }
}
