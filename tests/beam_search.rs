//! Beam search against the reference implementation: transformers writes a tiny random Llama and
//! runs `generate(num_beams=N, do_sample=False, max_new_tokens=M)` on prompts of several lengths;
//! cotlab, decoding all prompts in one left-padded batch, must produce the same tokens for every
//! prompt, with one stop id and with two. On the real SmolLM2, beam width 1 is greedy decoding.
//! Needs a Python with torch + transformers (scripts/setup.sh --torch).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::process::Command;

use candle_core::Device;
use cotlab::model::generate::{generate, generate_ids, Finish, GenOptions};
use cotlab::model::DecodeWeights;
use cotlab::model::{cotlab_home, default_model_path, Student};

#[test]
fn beam_search_matches_transformers() {
    require!(Model, Torch);
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string());
    let d = tempfile::tempdir().unwrap();
    // transformers needs a tokenizer beside a model: SmolLM2's, as cotlab exports it.
    let tok_dir = common::smol_tokenizer_dir(d.path());
    // Ten prompts of 5..14 random ids (a fixed LCG: no ids below 3, the special tokens).
    let mut x: u64 = 12345;
    let prompts: Vec<Vec<u32>> = (0..10)
        .map(|i| {
            (0..5 + i)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    3 + ((x >> 33) % 49149) as u32
                })
                .collect()
        })
        .collect();
    let max_new = 20;
    let stop_sets: Vec<Vec<u32>> = vec![vec![2], vec![2, 47011]];
    let widths = [5usize, 3];
    let spec = serde_json::json!({"prompts": prompts, "max_new_tokens": max_new, "beams": widths, "stops": stop_sets});
    let model_dir = d.path().join("llama");
    let o = Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/beam_reference.py"))
        .arg(&model_dir)
        .arg(&tok_dir)
        .arg(spec.to_string())
        .output()
        .unwrap_or_else(|e| panic!("{py}: {e}: run scripts/setup.sh --torch"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: HashMap<String, Vec<Vec<u32>>> = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    // Raw prompt ids and explicit stop ids: the template only has to be named (the tiny model has none).
    let s = Student::load_with(&model_dir, &Device::Cpu, Some("llama3")).unwrap();
    let (mut matched, mut total, mut eos_ended) = (0, 0, 0);
    let mut report = Vec::new();
    for &n in &widths {
        for stops in &stop_sets {
            let key = format!("{n}|{}", stops.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","));
            // f32, as transformers ran (`auto` may pick bf16 for these random weights).
            let opts = GenOptions { max_new_tokens: max_new, beams: n, decode_weights: DecodeWeights::F32, ..Default::default() };
            let ours = generate_ids(&s, &prompts, stops, &opts).unwrap();
            for (i, (o, t)) in ours.iter().zip(&theirs[&key]).enumerate() {
                total += 1;
                if &o.ids == t {
                    matched += 1;
                } else {
                    report.push(format!("{key} prompt {i}: cotlab {:?} ({:?}), transformers {t:?}", o.ids, o.finish));
                }
                let ended = o.ids.last().is_some_and(|l| stops.contains(l));
                assert_eq!(o.finish, if ended { Finish::Eos } else { Finish::Length }, "{key} prompt {i}");
                eos_ended += ended as usize;
            }
        }
    }
    // The check has teeth: greedy decoding differs from width 5 on some prompts.
    let greedy = generate_ids(&s, &prompts, &[2], &GenOptions { max_new_tokens: max_new, decode_weights: DecodeWeights::F32, ..Default::default() }).unwrap();
    let differ = greedy.iter().zip(&theirs["5|2"]).filter(|(g, t)| &g.ids != *t).count();
    assert!(differ >= 2, "greedy equals beam search on {} of 10 prompts", 10 - differ);
    eprintln!("greedy differs from width 5 on {differ} of 10 prompts");
    eprintln!("beam search vs transformers: {matched}/{total} prompts identical; {eos_ended} ended with a stop id");
    assert!(report.is_empty(), "{matched}/{total} identical:\n{}", report.join("\n"));
    assert!(eos_ended >= 4 && eos_ended <= total - 4, "both ways of finishing exercised: {eos_ended} of {total} ended with a stop id");
}

#[test]
fn beam_width_one_is_greedy_on_smollm2() {
    require!(Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let qs: Vec<String> =
        ["What is 7 + 5?", "Tom has 12 apples and eats 3. How many apples are left?", "Is 17 prime? Answer yes or no."].iter().map(|q| q.to_string()).collect();
    let greedy = GenOptions { max_new_tokens: 24, ..Default::default() };
    let a = generate(&s, &qs, &greedy).unwrap();
    let b = generate(&s, &qs, &GenOptions { beams: 1, ..greedy.clone() }).unwrap();
    assert_eq!(a, b);
    // Width 5 on the real model: each prompt decodes the same alone as in a batch, and a stop
    // string ends a hypothesis and cuts the text.
    let beam = GenOptions { beams: 5, ..greedy.clone() };
    let batched = generate(&s, &qs, &beam).unwrap();
    for (q, g) in qs.iter().zip(&batched) {
        assert_eq!(&generate(&s, std::slice::from_ref(q), &beam).unwrap()[0], g, "batched != alone for {q}");
        assert!(g.tokens >= 1 && g.tokens <= 24);
    }
    let cut = GenOptions { stop: vec!["apples".into()], ..beam.clone() };
    let c = generate(&s, &qs[1..2], &cut).unwrap();
    assert!(!c[0].text.contains("apples"), "{:?}", c[0]);
    // Out-of-range and contradictory options are refused.
    for bad in
        [GenOptions { beams: 0, ..greedy.clone() }, GenOptions { beams: 17, ..greedy.clone() }, GenOptions { beams: 2, temperature: 0.7, ..greedy.clone() }]
    {
        assert!(generate(&s, &qs[..1], &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn evaluation_defaults_to_the_papers_beam_width() {
    require!(Data, Model);
    use cotlab::data::{load_dataset, Task};
    use cotlab::eval::run::{evaluate, paper_beams, EvalOptions};
    let widths: Vec<usize> = Task::ALL.iter().map(|&t| paper_beams(t)).collect();
    assert_eq!(widths, [1, 1, 1, 1, 5, 5, 5, 1], "{:?}", Task::ALL);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let d = tempfile::tempdir().unwrap();
    let opts = EvalOptions { batch_size: Some(2), max_new_tokens: Some(8), ..Default::default() };
    for (task, want) in [("csqa", 5), ("svamp", 1)] {
        let ds = load_dataset(&common::data_dir(), task, &cotlab::data::DatasetOptions { limit: Some(2), seed: Some(1), ..Default::default() }).unwrap();
        let dir = d.path().join(task);
        let r = evaluate(&s, &ds, &opts, &dir).unwrap();
        assert_eq!(r.options.beams, Some(want), "{task}");
        let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        assert_eq!(results["options"]["beams"], want, "{task}: results.json");
        // The default and the same width given explicitly are one identity (resumes, no regeneration).
        let again = evaluate(&s, &ds, &EvalOptions { beams: Some(want), ..opts.clone() }, &dir).unwrap();
        assert_eq!(again.generated_now, 0);
        assert!(
            evaluate(&s, &ds, &EvalOptions { beams: Some(if want == 5 { 1 } else { 5 }), ..opts.clone() }, &dir).is_err(),
            "another width is another evaluation"
        );
    }
    // From Rhai: `beams` in generate and evaluate, range-checked.
    use cotlab::script::{Context, Runner};
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().to_path_buf();
    let runner = Runner::new(ctx);
    let r = runner
        .eval("b.rhai", r#"let s = student("default"); let e = evaluate(s, dataset("obqa", #{limit: 1, seed: 2}), #{max_new_tokens: 6, beams: 2, name: "b"}); [e.options.beams, generate(s, "What is 2 + 2?", #{max_new_tokens: 6, beams: 3}).tokens]"#)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    assert_eq!(r[0].as_int().unwrap(), 2);
    assert!(r[1].as_int().unwrap() <= 6);
    let err = runner.eval("c.rhai", r#"generate(student("default"), "Hi", #{beams: 17})"#).err().unwrap().to_string();
    assert!(err.contains("'beams' must be in 1..=16, got 17"), "{err}");
}
