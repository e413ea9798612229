//! Every supported architecture family against transformers, the reference implementation:
//! transformers writes tiny random Llama, Qwen2, Qwen3, Gemma and BLOOM models; cotlab loads each, must
//! compute the same logits, give every weight a gradient, and export a dir that loads back the same.
//! Needs a Python with torch + transformers (scripts/setup.sh --torch).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::process::Command;

use candle_core::{Device, Tensor};
use cotlab::model::{cotlab_home, Student};
use cotlab::train::data::TrainExample;
use cotlab::train::export::export_hf;
use cotlab::train::sft::batch_nll;

#[test]
fn llama_qwen2_qwen3_gemma_bloom_match_transformers() {
    require!(Model, Torch);
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string());
    let d = tempfile::tempdir().unwrap();
    // transformers needs a tokenizer beside a model: SmolLM2's, as cotlab exports it.
    let tok_dir = common::smol_tokenizer_dir(d.path());
    let o = Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/tiny_hf_models.py"))
        .arg(d.path())
        .arg(&tok_dir)
        .output()
        .unwrap_or_else(|e| panic!("{py}: {e}: run scripts/setup.sh --torch"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: HashMap<String, serde_json::Value> = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let ids: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    for name in ["llama", "llama3", "qwen2", "qwen3", "qwen3_tied", "gemma", "bloom"] {
        let family = name;
        // The tiny models declare no chat template: loading one is an error naming the choices,
        // and a template given explicitly is used.
        let e = Student::load(&d.path().join(name), &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no chat template") && e.contains("chatml, llama3, gemma, alpaca") && e.contains("#{template"), "{name}: {e}");
        let template = match name {
            "llama" | "llama3" => "llama3",
            "gemma" => "gemma",
            "bloom" => "alpaca",
            _ => "chatml",
        };
        let s = Student::load_with(&d.path().join(name), &Device::Cpu, Some(template)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.template.name(), template);
        assert_eq!(s.config.family.name(), name.trim_end_matches("_tied").replace("llama3", "llama"));
        if name == "llama3" {
            assert!(s.config.rope_llama3.is_some());
        }
        if name.starts_with("qwen3") {
            // Qwen3Config's defaults: head_dim 128 whatever hidden_size / heads is; no biases.
            assert_eq!(
                (s.config.head_dim(), s.config.tie_word_embeddings, s.config.attention_bias),
                if name == "qwen3" { (24, false, false) } else { (128, true, false) }
            );
        }
        let ours: Vec<f32> = s.model.last_logits(&input).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = v[family].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "{family}: max |logit difference| vs transformers {max}");
        // Every weight of every family trains.
        let ex = TrainExample { ids: ids.clone(), prompt_len: 2 };
        let g = batch_nll(&s, &[&ex]).unwrap().backward().unwrap();
        let missing: Vec<&String> = s.params().iter().filter(|(_, v)| g.get(v).is_none()).map(|(n, _)| n).collect();
        assert!(missing.is_empty(), "{family}: no gradient for {missing:?}");
        // KV-cache decoding (batched with another, shorter prompt) gives the cache-free tokens.
        let q = "Tom has 12 apples. How many?".to_string();
        let prompt = s.tokenizer.encode(s.template.prompt(&q).unwrap(), false).unwrap().get_ids().to_vec();
        let reference = s.model.greedy(&prompt, 6, &[]).unwrap();
        // f32, the reference's path (`auto` may pick bf16 for these random weights).
        let opts = cotlab::model::generate::GenOptions {
            max_new_tokens: 6,
            ignore_eos: true,
            decode_weights: cotlab::model::DecodeWeights::F32,
            ..Default::default()
        };
        let got = cotlab::model::generate::generate(&s, &[q.clone(), "Hi".to_string()], &opts).unwrap();
        assert_eq!(got[0].text, s.tokenizer.decode(&reference, true).unwrap(), "{family}: cached decoding");
        // Export and load back.
        let out = d.path().join(format!("{name}-export"));
        export_hf(&s, &out).unwrap();
        let back = Student::load(&out, &Device::Cpu).unwrap();
        let again: Vec<f32> = back.model.last_logits(&input).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        assert_eq!(again, ours, "{family}: export round trip");
        // The same weights as llama.cpp writes a Qwen GGUF compute the same logits.
        if name.starts_with("qwen") {
            let gguf = d.path().join(format!("{name}.gguf"));
            common::gguf::write_qwen(&gguf, &s);
            let g = Student::load_with(&gguf, &Device::Cpu, Some("chatml")).unwrap_or_else(|e| panic!("{name} GGUF: {e}"));
            assert_eq!(g.config.family, s.config.family, "{name} GGUF");
            let from_gguf: Vec<f32> = g.model.last_logits(&input).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            let max = from_gguf.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max < 1e-4, "{name} GGUF: max |logit difference| vs transformers {max}");
        }
    }
}
