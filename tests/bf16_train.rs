//! `dtype: bf16` training on the CPU (the bf16 GEMM, `kernels::bf16_gemm`, in every projection;
//! everything else f32): a short SFT run, full fine-tuning and LoRA, tracks f32's losses —
//! the first within 2 % and the last within 2 % — and, where the CPU has bf16 instructions, is
//! not f32 under another name (where it has none, bf16 falls back to f32: the same bits).

mod common;

use candle_core::DType;
use cotlab::model::lora::LoraConfig;
use cotlab::model::Student;
use cotlab::train::{sft, RunDir, SftOptions};

/// A small Llama (hidden 64: products long enough for bf16 rounding to show) with deterministic
/// weights, computing in `dtype`.
fn student(dtype: DType) -> Student {
    let tok = common::tiny::word_tokenizer(false, 0);
    let rows = tok.get_vocab_size(true);
    let size = common::tiny::Size { hidden: 64, intermediate: 160, max_positions: 256, spread: 0.2 };
    let mut s = common::tiny::llama("tiny", tok, rows, size, 11);
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
