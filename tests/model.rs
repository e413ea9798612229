//! Students: the real SmolLM2-135M GGUF (fetched by scripts/setup.sh) and tiny models built
//! here. Checks the tokenizer against transformers' ids, the forward against the f32 reference
//! text, that every weight gets a gradient, gradients against finite differences, HF export
//! round trips, and SFT with exact resume.

#[macro_use]
mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use cotlab::model::{default_model_path, ChatTemplate, Family, ModelConfig, Student, Transformer};
use cotlab::rng::Rng;
use cotlab::train::data::{tokenize, TrainExample};
use cotlab::train::export::export_hf;
use cotlab::train::sft::{batch_nll, batch_nll_with, layout};
use cotlab::train::{sft, RunDir, Schedule, SftOptions, Trainer};

const BANANAS: &str = "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 groups and oranges are organized into 93 groups How big is each group of bananas?";

fn smollm() -> Student {
    let p = default_model_path();
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    Student::load(&p, &Device::Cpu).unwrap()
}

fn tiny(tok_from: &Student, seed: u64) -> Student {
    let config = ModelConfig {
        family: Family::Llama,
        hidden_act: "silu".into(),
        head_dim: None,
        rope_llama3: None,
        vocab_size: tok_from.config.vocab_size,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let mut rng = Rng::new(seed);
    let tensors: HashMap<String, Tensor> = config
        .family
        .tensor_shapes(&config)
        .into_iter()
        .map(|(n, shape)| {
            let count: usize = shape.iter().product();
            let vals: Vec<f32> =
                if n.ends_with("norm.weight") { vec![1.0; count] } else { (0..count).map(|_| ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * 0.3).collect() };
            (n, Tensor::from_vec(vals, shape, &Device::Cpu).unwrap())
        })
        .collect();
    Student {
        name: "tiny".into(),
        source: "tiny".into(),
        declared_by: "tiny".into(),
        model: Transformer::new(config.clone(), tensors, &Device::Cpu).unwrap(),
        config,
        tokenizer: tok_from.tokenizer.clone(),
        template: tok_from.template.clone(),
    }
}

#[test]
fn gguf_tokenizer_and_forward_match_the_reference() {
    require!(Model);
    let s = smollm();
    assert_eq!(s.config.num_hidden_layers, 30);
    assert_eq!(s.model.num_params(), 134_515_008);
    assert_eq!(s.template, ChatTemplate::Chatml { default_system: Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face".into()) });
    let prompt = s.template.prompt(BANANAS).unwrap();
    let ids = s.tokenizer.encode(prompt.as_str(), false).unwrap().get_ids().to_vec();
    // Ids measured with transformers (see shared/notes/candle-prototype.md).
    assert_eq!(ids.len(), 73);
    assert_eq!(&ids[..7], &[1, 9690, 198, 2683, 359, 253, 5356]);
    assert_eq!(&ids[ids.len() - 8..], &[22861, 47, 2, 198, 1, 520, 9531, 198]);
    for text in ["Hello, world!", "87 and 290\n\n1. Tabs\tand  spaces ", "café naïve 日本語 🙂"] {
        let e = s.tokenizer.encode(text, false).unwrap();
        assert_eq!(s.tokenizer.decode(e.get_ids(), false).unwrap(), text);
    }
    // f32 greedy decoding gives the reference text of transformers and candle's quantized_llama.
    let out = s.model.greedy(&ids, 20, &[2]).unwrap();
    let text = s.tokenizer.decode(&out, true).unwrap();
    assert!(text.starts_with("To find out how many groups of 2 bananas are in each group of 93"), "{text}");
}

/// On the CPU, and also on CUDA (f32 and bf16) when this is a `--features cuda` build with a GPU
/// (tests/cuda.rs checks the same without the model file, against the CPU's gradients).
#[test]
fn every_parameter_of_smollm_gets_a_gradient() {
    require!(Model);
    let mut runs = vec![(Device::Cpu, candle_core::DType::F32)];
    match Device::new_cuda(0) {
        Ok(gpu) => runs.extend([(gpu.clone(), candle_core::DType::F32), (gpu, candle_core::DType::BF16)]),
        Err(e) => eprintln!("CUDA part skipped: {e}"),
    }
    for (dev, dtype) in runs {
        let mut s = Student::load(&default_model_path(), &dev).unwrap();
        s.model.set_compute_dtype(dtype).unwrap();
        let ex = TrainExample { ids: s.tokenizer.encode("Q: 2+3? A: 2 + 3 = 5. The answer is 5", false).unwrap().get_ids().to_vec(), prompt_len: 6 };
        let loss = batch_nll(&s, &[&ex]).unwrap();
        let grads = loss.backward().unwrap();
        let mut missing = Vec::new();
        for (name, v) in s.params() {
            match grads.get(v) {
                Some(g) if g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0 => {}
                _ => missing.push(name.clone()),
            }
        }
        assert!(
            missing.is_empty(),
            "{dev:?} {dtype:?}: {} of {} parameters got no gradient: {:?}",
            missing.len(),
            s.params().len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(s.params().len(), 272);
    }
}

#[test]
fn gradients_match_finite_differences_on_a_tiny_model() {
    require!(Model);
    let base = smollm();
    let s = tiny(&base, 1);
    let ex = TrainExample { ids: vec![5, 17, 300, 42, 9, 1000, 7, 8], prompt_len: 3 };
    let loss_of = |s: &Student| batch_nll(s, &[&ex]).unwrap().to_scalar::<f32>().unwrap() as f64;
    let grads = batch_nll(&s, &[&ex]).unwrap().backward().unwrap();
    let mut rng = Rng::new(9);
    let mut checked = 0;
    for (name, v) in s.params() {
        let g: Vec<f32> = grads.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let orig: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // Probe the entry with the largest gradient and one random entry.
        let big = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for i in [big, rng.below(g.len())] {
            if g[i].abs() < 1e-3 {
                continue;
            }
            let eps = 1e-2f32;
            let at = |delta: f32| {
                let mut w = orig.clone();
                w[i] += delta;
                v.set(&Tensor::from_vec(w, v.shape(), &Device::Cpu).unwrap()).unwrap();
                loss_of(&s)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            v.set(&Tensor::from_vec(orig.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
            let rel = (fd - g[i] as f64).abs() / (g[i].abs() as f64).max(1e-3);
            assert!(rel < 0.05, "{name}[{i}]: analytic {} vs finite difference {fd}", g[i]);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} entries checked");
}

#[test]
fn hf_export_round_trips() {
    require!(Model);
    let base = smollm();
    let s = tiny(&base, 2);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("hf");
    export_hf(&s, &out).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let back = Student::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.config, s.config);
    assert_eq!(back.template, s.template);
    let ids = Tensor::new(&[[1u32, 9690, 198, 2683, 359, 253, 5356]], &Device::Cpu).unwrap();
    let a = s.model.last_logits(&ids).unwrap();
    let b = back.model.last_logits(&ids).unwrap();
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let text = "How many apples? 12 + 5 = 17";
    assert_eq!(back.tokenizer.encode(text, false).unwrap().get_ids(), s.tokenizer.encode(text, false).unwrap().get_ids());
    // Exporting over a non-empty dir is refused.
    assert!(export_hf(&s, &out).is_err());
}

#[test]
fn bad_model_files_give_clear_errors() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let trunc = d.path().join("trunc.gguf");
    let bytes = std::fs::read(default_model_path()).unwrap();
    std::fs::write(&trunc, &bytes[..1_000_000]).unwrap();
    let e = Student::load(&trunc, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("trunc.gguf") && (e.contains("truncated") || e.contains("GGUF")), "{e}");
    std::fs::write(d.path().join("junk.gguf"), b"not a gguf").unwrap();
    let e = Student::load(&d.path().join("junk.gguf"), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("junk.gguf"), "{e}");
    // An HF dir whose weights miss a tensor, or carry a wrong shape.
    let base = smollm();
    let s = tiny(&base, 3);
    let out = d.path().join("hf");
    export_hf(&s, &out).unwrap();
    let mut w = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    w.remove("model.norm.weight");
    candle_core::safetensors::save(&w, out.join("model.safetensors")).unwrap();
    let e = Student::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("lack tensor 'model.norm.weight'"), "{e}");
    w.insert("model.norm.weight".into(), Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&w, out.join("model.safetensors")).unwrap();
    let e = Student::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("'model.norm.weight' has shape [7]"), "{e}");
    std::fs::write(out.join("model.safetensors"), b"garbage").unwrap();
    let e = Student::load(&out, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");
}

/// `n` generated problems (seed 4) with the rule teacher's level-2 rationales.
fn arith_corpus(n: usize) -> cotlab::data::Corpus {
    let q = cotlab::data::RationaleQuery { level: Some(2), n: Some(n), seed: Some(4), ..Default::default() };
    cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into())).rationales("arith", &q).unwrap()
}

fn arith_pairs(n: usize) -> Vec<(String, String)> {
    arith_corpus(n).pairs()
}

#[test]
fn sft_learns_and_resumes_exactly() {
    require!(Model);
    let base = smollm();
    let corpus = arith_corpus(16);
    let opts = SftOptions {
        max_steps: Some(6),
        batch_size: 4,
        grad_accum: 2,
        lr: 3e-3,
        schedule: Schedule::Cosine,
        max_len: 96,
        save_every: 100,
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();

    let whole = tiny(&base, 5);
    let full = sft(&whole, &corpus, &opts, &RunDir::new(d.path().join("a")), None).unwrap();
    assert_eq!(full.losses.len(), 6);
    assert!(full.losses[5] < full.losses[0] - 0.5, "loss falls: {:?}", full.losses);

    let parts = tiny(&base, 5);
    let run = RunDir::new(d.path().join("b"));
    let first = sft(&parts, &corpus, &opts, &run, Some(3)).unwrap();
    assert_eq!((first.steps, first.resumed_from), (3, None));
    assert!(run.checkpoint().join("model.safetensors").is_file());
    // A fresh process would load the base weights again: start from a new tiny model.
    let again = tiny(&base, 5);
    let second = sft(&again, &corpus, &opts, &run, None).unwrap();
    assert_eq!(second.resumed_from, Some(3));
    let stitched: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    for (a, b) in stitched.iter().zip(&full.losses) {
        assert!((a - b).abs() < 1e-5, "resumed curve {stitched:?} != uninterrupted {:?}", full.losses);
    }
    let log = std::fs::read_to_string(run.log_path()).unwrap();
    assert_eq!(log.lines().count(), 6);

    // Step by step with a Trainer: a crash before the first checkpoint (2 steps logged, one
    // line torn) restarts from step 0 with those lines dropped, and gives the same curve.
    let run_c = RunDir::new(d.path().join("c"));
    let crashed = tiny(&base, 5);
    let mut t = Trainer::new(&crashed, &corpus, &opts, &run_c).unwrap();
    t.step().unwrap();
    t.step().unwrap();
    drop(t);
    let mut f = std::fs::OpenOptions::new().append(true).open(run_c.log_path()).unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\": 3, \"lo").unwrap();
    let fresh = tiny(&base, 5);
    let mut t = Trainer::new(&fresh, &corpus, &opts, &run_c).unwrap();
    assert_eq!((t.state().step, t.total_steps()), (0, 6));
    assert_eq!(std::fs::read_to_string(run_c.log_path()).unwrap(), "", "log lines past the (absent) checkpoint are dropped");
    let mut losses = Vec::new();
    while !t.is_done() {
        losses.push(t.step().unwrap());
    }
    assert!(t.step().err().unwrap().to_string().contains("all 6 steps are done"));
    let report = t.finish().unwrap();
    assert_eq!(report.losses, losses);
    assert_eq!(losses, full.losses, "same seed, same data: the same curve bit for bit");
    let steps: Vec<u64> = std::fs::read_to_string(run_c.log_path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // The same dir with another config is refused, nothing overwritten.
    let other = SftOptions { lr: 1e-3, ..opts.clone() };
    let e = sft(&again, &corpus, &other, &run, None).err().unwrap().to_string();
    assert!(e.contains("holds a different run") && e.contains("lr"), "{e}");
}

#[test]
fn truncation_is_reported_not_silent() {
    require!(Model);
    let base = smollm();
    let pairs = arith_pairs(8);
    let t = tokenize(&base.tokenizer, &base.template, &pairs, 60).unwrap();
    assert!(t.truncated > 0 && t.examples.iter().all(|e| e.ids.len() <= 60));
    let e = tokenize(&base.tokenizer, &base.template, &pairs, 10).err().unwrap().to_string();
    assert!(e.contains("raise max_len"), "{e}");
}

#[test]
fn lora_trains_only_adapters_and_exports_peft_and_merged() {
    require!(Model);
    use cotlab::model::lora::LoraConfig;
    let base0 = smollm();
    let d = tempfile::tempdir().unwrap();
    let base_dir = d.path().join("tiny-base");
    export_hf(&tiny(&base0, 7), &base_dir).unwrap();
    let base = Student::load(&base_dir, &Device::Cpu).unwrap();
    let before = base.params()["model.layers.0.self_attn.q_proj.weight"].as_tensor().copy().unwrap();

    // Gradients reach the adapters only.
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    let probe = base.with_lora(cfg.clone(), 1).unwrap();
    assert_eq!(probe.model.trainable().len(), 2 * 3 * 2);
    let ex = TrainExample { ids: vec![5, 17, 300, 42, 9, 1000, 7, 8], prompt_len: 3 };
    let g = batch_nll(&probe, &[&ex]).unwrap().backward().unwrap();
    assert!(probe.params().values().all(|v| g.get(v).is_none()), "frozen weights get no gradient");
    assert!(probe.model.trainable().iter().all(|v| g.get(v).is_some()), "every adapter gets a gradient");

    let opts = SftOptions {
        max_steps: Some(6),
        batch_size: 4,
        grad_accum: 2,
        lr: 2e-2,
        schedule: Schedule::Constant,
        max_len: 96,
        lora: Some(cfg.clone()),
        ..Default::default()
    };
    let run = RunDir::new(d.path().join("run"));
    let r = sft(&base, &arith_corpus(16), &opts, &run, None).unwrap();
    assert!(r.losses[5] < r.losses[0] - 0.2, "loss falls: {:?}", r.losses);
    let after = base.params()["model.layers.0.self_attn.q_proj.weight"].as_tensor();
    assert_eq!((after - &before).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "base untouched");

    // PEFT layout.
    let peft = d.path().join("peft");
    cotlab::train::export::export_run_with(&run.path, &peft, false).unwrap();
    let acfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((acfg["peft_type"].as_str(), acfg["r"].as_u64()), (Some("LORA"), Some(4)));
    let w = candle_core::safetensors::load(peft.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(w.len(), 2 * 3 * 2);
    assert_eq!(w["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].dims(), &[4, 32]);
    assert_eq!(w["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].dims(), &[16, 4]);

    // Merged export computes what base + adapters compute.
    let merged = d.path().join("merged");
    cotlab::train::export::export_run_with(&run.path, &merged, true).unwrap();
    let m = Student::load(&merged, &Device::Cpu).unwrap();
    let with = base.with_lora(cfg, 0).unwrap();
    let ck = candle_core::safetensors::load(run.checkpoint().join("model.safetensors"), &Device::Cpu).unwrap();
    for (n, v) in with.model.trainable_named() {
        v.set(&ck[&n]).unwrap();
    }
    let ids = Tensor::new(&[[1u32, 9690, 198, 2683, 359, 253, 5356]], &Device::Cpu).unwrap();
    let a = with.model.last_logits(&ids).unwrap();
    let b = m.model.last_logits(&ids).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "merged differs by {diff}");
}

#[test]
fn sft_from_a_rhai_script_with_resume() {
    require!(Model);
    use cotlab::script::{Context, Runner};
    let base0 = smollm();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-hf");
    export_hf(&tiny(&base0, 11), &dir).unwrap();
    let mut ctx = Context::new(cotlab::data::DataDir("/nonexistent".into()), None);
    ctx.runs_dir = d.path().join("runs");
    // The tiny model sits beside the runs dir: outside a script's read roots unless allowed.
    ctx.allow_read.push(dir.clone());
    let src = format!(
        r#"let s = student("{}");
           let c = rationales("arith", #{{ level: 3, n: 12, seed: 2 }});
           let o = #{{ run: "t", max_steps: 3, batch_size: 2, grad_accum: 2, lr: 1e-3, max_len: 128, stop_after: 2 }};
           let a = sft(s, c, o);
           o.remove("stop_after");
           let b = sft(s, c, o);
           [a.steps, a.resumed_from, b.steps, b.resumed_from, s.num_params]"#,
        dir.display()
    );
    let v = Runner::new(ctx.clone()).eval("sft.rhai", &src).unwrap_or_else(|e| panic!("{e}")).into_array().unwrap();
    assert_eq!(v[0].as_int().unwrap(), 2);
    assert!(v[1].is_unit());
    assert_eq!(v[2].as_int().unwrap(), 3);
    assert_eq!(v[3].as_int().unwrap(), 2);
    assert!(d.path().join("runs/t/checkpoint/state.json").is_file());
    let e = Runner::new(ctx.clone())
        .eval("bad.rhai", &format!("let s = student(\"{}\");\nsft(s, rationales(\"arith\", #{{level: 1}}), #{{max_steps: 1}})", dir.display()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("bad.rhai:2:1:") && e.contains("give the run a name"), "{e}");
    let e = Runner::new(ctx).eval("m.rhai", "student(\"default-typo\")").err().unwrap().to_string();
    assert!(e.contains("model not found"), "{e}");
}

#[test]
fn nan_loss_stops_the_run_with_a_clear_message() {
    require!(Model);
    let base = smollm();
    let s = tiny(&base, 13);
    let w = &s.params()["model.layers.1.mlp.up_proj.weight"];
    w.set(&(w.as_tensor() * f64::NAN).unwrap()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let opts = SftOptions { max_steps: Some(2), batch_size: 2, grad_accum: 1, max_len: 96, ..Default::default() };
    let e = sft(&s, &arith_corpus(4), &opts, &RunDir::new(d.path().join("r")), None).err().unwrap().to_string();
    assert!(e.contains("loss is NaN at step 1") && e.contains("diverged"), "{e}");
}

/// Packing on the real student and real rationales (SVAMP level 3, gpt-4o): a micro-batch of one
/// long and three short examples packs into fewer rows and gives the padded loss.
#[test]
fn packed_and_padded_losses_agree_on_smollm_with_svamp() {
    require!(Data, Model);
    let s = smollm();
    let cat = cotlab::data::Catalog::new(common::data_dir());
    let q = cotlab::data::RationaleQuery { teacher: Some("gpt-4o".into()), level: Some(3), limit: Some(32), seed: Some(1), ..Default::default() };
    let pairs = cat.rationales("svamp", &q).unwrap().pairs();
    let mut ex = tokenize(&s.tokenizer, &s.template, &pairs, 4096).unwrap().examples;
    ex.sort_by_key(|e| e.ids.len());
    let batch: Vec<&TrainExample> = vec![&ex[ex.len() - 1], &ex[0], &ex[1], &ex[ex.len() / 2]];
    let lens: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
    let (packed, padded) = (layout(&batch, true), layout(&batch, false));
    assert!(packed.rows < 4 && packed.computed_tokens() < padded.computed_tokens(), "{lens:?}: {} rows", packed.rows);
    let loss = |pack: bool| batch_nll_with(&s, &batch, pack).unwrap().to_scalar::<f32>().unwrap();
    let (a, b) = (loss(true), loss(false));
    let tokens: usize = batch.iter().map(|e| e.response_tokens()).sum();
    assert!((a - b).abs() <= 1e-5 * b.abs(), "{lens:?}: packed loss {a}, padded {b} ({tokens} response tokens)");
    assert!(b / tokens as f32 > 0.05 && b / (tokens as f32) < 5.0, "mean NLL {} is not a trained model's", b / tokens as f32);
}
