//! The exported Hugging Face dir loads in transformers and computes the same next-token logits
//! (max |Δ| < 1e-3 in f32), tokenizes the same, and renders the same chat prompt.
//! Needs a Python with torch + transformers: $COTLAB_PYTHON, else ~/.cache/cotlab/venv
//! (`scripts/setup.sh --torch`, which scripts/test.sh runs).

#[macro_use]
mod common;

use std::process::Command;

use candle_core::{Device, Tensor};
use cotlab::model::{cotlab_home, default_model_path, Student};
use cotlab::train::export::export_hf;

#[test]
fn smollm_export_matches_transformers() {
    require!(Model, Torch);
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string());
    assert!(
        Command::new(&py).args(["-c", "import torch, transformers"]).status().is_ok_and(|s| s.success()),
        "{py} lacks torch/transformers: run scripts/setup.sh --torch"
    );
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smollm2-hf");
    export_hf(&s, &out).unwrap();
    let question = "There are 87 oranges and 290 bananas. How big is each of 2 groups of bananas?";
    let prompt = s.template.prompt(question).unwrap();
    let ids: Vec<u32> = s.tokenizer.encode(prompt.as_str(), false).unwrap().get_ids().to_vec();
    let ours: Vec<f32> =
        s.model.last_logits(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    let o = Command::new(&py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/hf_logits.py"))
        .arg(&out)
        .arg(serde_json::to_string(&ids).unwrap())
        .arg(question)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let theirs: Vec<f32> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(theirs.len(), ours.len());
    let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("max |logit difference| vs transformers: {max:e}");
    assert!(max < 1e-3, "max |Δ| = {max}");
    let text_ids: Vec<u32> = v["text_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(text_ids, s.tokenizer.encode(question, false).unwrap().get_ids());
    assert_eq!(v["chat"].as_str().unwrap(), prompt);
}
