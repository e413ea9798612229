//! Students with random weights for benchmarks: a named architecture (or an HF config.json)
//! with N(0, 0.02) matrices, unit norms and zero biases, and a tokenizer taken from elsewhere.
//! Speed and memory depend on the shapes alone, so `cotlab bench train --random llama-1b` times
//! a 1B-scale step without downloading 1B weights (a GPU machine without internet can run it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::chat::ChatTemplate;
use super::config::ModelConfig;
use super::family::Family;
use super::transformer::Transformer;
use super::Student;
use crate::error::{Error, ModelContext, Result};
use crate::usage;

/// The named architectures: `smollm2-135m` (the default student's shapes) and `llama-1b`
/// (Llama-3.2-1B's: 16 layers, d 2048, 32/8 heads, FFN 8192, vocab 128256, tied head; 1.24B).
pub const PRESETS: &str = "smollm2-135m, llama-1b";

pub fn preset(name: &str) -> Result<ModelConfig> {
    let base = ModelConfig {
        family: Family::Llama,
        hidden_act: "silu".into(),
        head_dim: None,
        rope_llama3: None,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    match name {
        "smollm2-135m" => Ok(base),
        "llama-1b" => Ok(ModelConfig {
            rope_llama3: Some((32.0, 1.0, 4.0, 8192.0)),
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            rope_theta: 500_000.0,
            max_position_embeddings: 131_072,
            bos_token_id: Some(128_000),
            eos_token_id: Some(128_009),
            ..base
        }),
        other => Err(usage!("unknown architecture '{other}': expected one of {PRESETS}, or a config.json")),
    }
}

/// A preset name, or an HF `config.json` (or a dir holding one; weights, if any, are ignored).
pub fn config_of(spec: &str) -> Result<ModelConfig> {
    let p = Path::new(spec);
    let file = if p.is_dir() { p.join("config.json") } else { p.to_path_buf() };
    if file.is_file() {
        return super::hf::read_config(&file);
    }
    preset(spec)
}

/// A student with architecture `spec` (see [`config_of`]) and random weights, made on `device`,
/// with the tokenizer and chat template of `tokenizer_from`: a tokenizer.json file, a dir
/// holding one, any model spec [`super::resolve`] takes ("default", a .gguf, an HF dir), or
/// `none` (a one-token placeholder: for training on ids, not for text). Ids past the
/// tokenizer's vocabulary are valid model inputs; they decode to nothing.
pub fn random_student(spec: &str, tokenizer_from: &str, device: &Device, seed: u64) -> Result<Student> {
    let config = config_of(spec)?;
    random_student_with(config, spec, tokenizer_from, device, seed)
}

/// [`random_student`] for a config given as such.
pub fn random_student_with(config: ModelConfig, name: &str, tokenizer_from: &str, device: &Device, seed: u64) -> Result<Student> {
    config.validate()?;
    let (tokenizer, template) = tokenizer_of(tokenizer_from)?;
    // candle seeds CUDA's generator; the CPU's cannot be seeded (its weights differ run to run).
    if device.is_cuda() {
        device.set_seed(seed).model_ctx("seeding the random weights")?;
    }
    let tensors: HashMap<String, Tensor> = config
        .family
        .tensor_shapes(&config)
        .into_iter()
        .map(|(n, shape)| {
            let t = if n.contains("norm") || n.ends_with("ln_f.weight") {
                if n.ends_with(".bias") {
                    Tensor::zeros(shape, candle_core::DType::F32, device)
                } else {
                    Tensor::ones(shape, candle_core::DType::F32, device)
                }
            } else if n.ends_with(".bias") {
                Tensor::zeros(shape, candle_core::DType::F32, device)
            } else {
                Tensor::randn(0f32, 0.02, shape, device)
            };
            t.map(|t| (n.clone(), t)).model_ctx(format!("random weights for '{n}'"))
        })
        .collect::<Result<_>>()?;
    let model = Transformer::new(config.clone(), tensors, device)?;
    let source: std::path::PathBuf = format!("random:{name}").into();
    Ok(Student { name: format!("random-{name}"), declared_by: source.clone(), source, config, model, tokenizer, template })
}

fn tokenizer_of(from: &str) -> Result<(tokenizers::Tokenizer, ChatTemplate)> {
    if from == "none" {
        let vocab = [("<unk>".to_string(), 0u32)].into_iter().collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .map_err(|e| usage!("placeholder tokenizer: {e}"))?;
        return Ok((tokenizers::Tokenizer::new(model), ChatTemplate::Chatml { default_system: None }));
    }
    let p = Path::new(from);
    let file = if p.is_dir() && p.join("tokenizer.json").is_file() && !p.join("config.json").is_file() { p.join("tokenizer.json") } else { p.to_path_buf() };
    if file.is_file() && file.extension().is_some_and(|e| e == "json") {
        let tok = tokenizers::Tokenizer::from_file(&file).map_err(|e| Error::data(&file, format!("not a tokenizer.json: {e}")))?;
        return Ok((tok, ChatTemplate::Chatml { default_system: None }));
    }
    let s = Student::load_with(&super::resolve(from)?, &Device::Cpu, Some("chatml"))?;
    Ok((s.tokenizer, s.template))
}

/// Matmul parameters the forward multiplies by, per token: every 2-D weight, the head counted
/// once (an untied embedding table is a gather, not a matmul). For MFU: a training step does
/// 6·this + 12·layers·(heads·head_dim)·seq FLOPs per token (PaLM's count, causal mask ignored).
pub fn matmul_params(m: &Transformer) -> usize {
    let c = &m.config;
    let two_d: usize = m.params.values().filter(|v| v.rank() == 2).map(|v| v.elem_count()).sum();
    let head = c.family.head_weight(c);
    let untied_embedding: usize =
        m.params.iter().filter(|(n, v)| v.rank() == 2 && n.as_str() != head && v.dims()[0] == c.vocab_size).map(|(_, v)| v.elem_count()).sum();
    two_d - untied_embedding
}

/// Training FLOPs per token at sequence length `seq` (see [`matmul_params`]); LoRA (`frozen`)
/// skips the weight-gradient GEMMs: 4·N instead of 6·N.
pub fn train_flops_per_token(m: &Transformer, seq: usize, frozen: bool) -> f64 {
    let c = &m.config;
    let n = matmul_params(m) as f64;
    let attn = 12.0 * c.num_hidden_layers as f64 * (c.num_attention_heads * c.head_dim()) as f64 * seq as f64;
    (if frozen { 4.0 } else { 6.0 }) * n + if frozen { attn * 2.0 / 3.0 } else { attn }
}
