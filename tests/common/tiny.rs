//! Tiny Llama students for tests that need a real model, not a real vocabulary: a word-level
//! tokenizer small enough that a top-k can be the whole vocabulary, and weights drawn from a
//! seed (the CPU's random initialisation cannot be seeded), so two calls with one seed give the
//! same model in separate weights.

use candle_core::{Device, Tensor};
use cotlab::model::{Family, ModelConfig, Student};
use cotlab::rng::Rng;

/// The chat markers' pieces, numbers 0..100, arithmetic signs and a few words (the rest is
/// `<unk>`), then `extra` tokens; `swap` exchanges two tokens' ids.
pub fn word_tokenizer(swap: bool, extra: usize) -> tokenizers::Tokenizer {
    let mut words: Vec<String> = ["<unk>", "<|", "|>", "im_start", "im_end", "user", "assistant", "system"].iter().map(|s| s.to_string()).collect();
    words.extend((0..100).map(|i| i.to_string()));
    words.extend(["+", "-", "*", "/", "=", "?", ".", ",", ":", "The", "answer", "is", "What", "So", "the", "of"].iter().map(|s| s.to_string()));
    words.extend((0..extra).map(|i| format!("extra{i}")));
    if swap {
        words.swap(110, 111);
    }
    let vocab = words.into_iter().enumerate().map(|(i, w)| (w, i as u32)).collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder().vocab(vocab).unk_token("<unk>".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok
}

/// A tiny Llama's size and the spread of its seeded weights (uniform in ±`spread`, norms
/// around 1).
#[derive(Clone, Copy)]
pub struct Size {
    pub hidden: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub spread: f32,
}

/// Two layers of width 16: the KD and distill tests' students.
pub const SMALL: Size = Size { hidden: 16, intermediate: 32, max_positions: 512, spread: 0.5 };

/// A two-layer Llama over `tok` with `rows` output rows and weights drawn from `seed`.
pub fn llama(name: &str, tok: tokenizers::Tokenizer, rows: usize, size: Size, seed: u64) -> Student {
    let config = ModelConfig {
        family: Family::Llama,
        hidden_act: "silu".into(),
        head_dim: None,
        rope_llama3: None,
        vocab_size: rows,
        hidden_size: size.hidden,
        intermediate_size: size.intermediate,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: size.max_positions,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let mut s = cotlab::model::random::random_student_with(config, name, "none", &Device::Cpu, 0).unwrap();
    s.tokenizer = tok;
    let mut rng = Rng::new(seed);
    for (n, v) in s.params() {
        let base = if n.contains("norm") { 1.0 } else { 0.0 };
        let vals: Vec<f32> = (0..v.elem_count()).map(|_| base + ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * size.spread).collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    s
}
