//! `dtype: bf16` training on the CPU (the bf16 GEMM, `kernels::bf16_gemm`, in every projection;
//! everything else f32): a short SFT run, full fine-tuning and LoRA, tracks f32's losses —
//! the first within 2 % and the last within 2 % — and, where the CPU has bf16 instructions, is
//! not f32 under another name (where it has none, bf16 falls back to f32: the same bits).

use candle_core::{DType, Device, Tensor};
use cotlab::model::lora::LoraConfig;
use cotlab::model::{Family, ModelConfig, Student};
use cotlab::rng::Rng;
use cotlab::train::{sft, RunDir, SftOptions};

/// A word-level tokenizer over the arithmetic corpus's words: chat markers, numbers 0..100,
/// signs and a few words; the rest is `<unk>`.
fn tokenizer() -> tokenizers::Tokenizer {
    let mut words: Vec<String> = ["<unk>", "<|", "|>", "im_start", "im_end", "user", "assistant", "system"].iter().map(|s| s.to_string()).collect();
    words.extend((0..100).map(|i| i.to_string()));
    words.extend(["+", "-", "*", "/", "=", "?", ".", ",", ":", "The", "answer", "is", "What", "So", "the", "of"].iter().map(|s| s.to_string()));
    let vocab = words.into_iter().enumerate().map(|(i, w)| (w, i as u32)).collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder().vocab(vocab).unk_token("<unk>".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok
}

/// A small Llama (hidden 64: products long enough for bf16 rounding to show) with deterministic
/// weights, computing in `dtype`.
fn student(dtype: DType) -> Student {
    let tok = tokenizer();
    let config = ModelConfig {
        family: Family::Llama,
        hidden_act: "silu".into(),
        head_dim: None,
        rope_llama3: None,
        vocab_size: tok.get_vocab_size(true),
        hidden_size: 64,
        intermediate_size: 160,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let mut s = cotlab::model::random::random_student_with(config, "tiny", "none", &Device::Cpu, 0).unwrap();
    s.tokenizer = tok;
    let mut rng = Rng::new(11);
    for (n, v) in s.params() {
        let base = if n.contains("norm") { 1.0 } else { 0.0 };
        let vals: Vec<f32> = (0..v.elem_count()).map(|_| base + ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * 0.2).collect();
        v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    s.model.set_compute_dtype(dtype).unwrap();
    s
}

#[test]
fn bf16_sft_tracks_f32_losses_within_2_percent() {
    let q = cotlab::data::RationaleQuery { level: Some(2), n: Some(16), seed: Some(4), ..Default::default() };
    let corpus = cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into())).rationales("arith", &q).unwrap();
    let d = tempfile::tempdir().unwrap();
    let rounds = cotlab::kernels::bf16_gemm::kernel().is_some();
    for lora in [None, Some(LoraConfig::default())] {
        let opts =
            SftOptions { max_steps: Some(8), batch_size: 4, grad_accum: 1, lr: 3e-3, max_len: 64, save_every: 100, lora: lora.clone(), ..Default::default() };
        let run =
            |dtype: DType| sft(&student(dtype), &corpus, &opts, &RunDir::new(d.path().join(format!("{dtype:?}-{}", lora.is_some()))), None).unwrap().losses;
        let (f32_losses, bf16_losses) = (run(DType::F32), run(DType::BF16));
        let what = if lora.is_some() { "LoRA" } else { "full" };
        assert_eq!(f32_losses.len(), 8, "{what}: {f32_losses:?}");
        assert!(f32_losses[7] < f32_losses[0], "{what}: f32 did not learn: {f32_losses:?}");
        for i in [0, 7] {
            let rel = (bf16_losses[i] - f32_losses[i]).abs() / f32_losses[i];
            assert!(rel <= 0.02, "{what} step {}: bf16 loss {} vs f32 {} ({:.2} %)", i + 1, bf16_losses[i], f32_losses[i], rel * 100.0);
        }
        if rounds {
            assert_ne!(bf16_losses, f32_losses, "{what}: bf16 gave f32's exact losses: its GEMM is not in the step");
        } else {
            assert_eq!(bf16_losses, f32_losses, "{what}: without bf16 instructions bf16 trains in f32");
        }
    }
}
