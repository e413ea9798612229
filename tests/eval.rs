//! Zero-shot evaluation: results + samples in the eval dir, resume without regenerating, a torn
//! last line recovered, and the Rhai entry point.

#[macro_use]
mod common;

use candle_core::Device;
use cotlab::data::{load_dataset, DatasetOptions};
use cotlab::eval::run::{evaluate, wilson95, EvalOptions};
use cotlab::model::{default_model_path, Student};

#[test]
fn wilson_interval() {
    require!(Data, Model);
    let (lo, hi) = wilson95(50, 100);
    assert!((lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3, "{lo} {hi}");
    assert_eq!(wilson95(0, 10).0, 0.0);
    assert_eq!(wilson95(10, 10).1, 1.0);
}

#[test]
fn evaluate_writes_results_and_resumes() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let ds = load_dataset(&common::data_dir(), "svamp", &DatasetOptions { limit: Some(4), seed: Some(1), ..Default::default() }).unwrap();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("eval");
    let opts = EvalOptions { batch_size: 2, max_new_tokens: 48, ..Default::default() };
    let mut half = ds.clone();
    half.examples.truncate(2);
    let first = evaluate(&s, &half, &opts, &dir).unwrap();
    assert_eq!((first.n, first.generated_now), (2, 2));
    let full = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((full.n, full.generated_now), (4, 2), "only the missing examples are generated");
    assert!(full.ci95_low <= full.accuracy && full.accuracy <= full.ci95_high);
    let lines = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    let sample: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for k in ["id", "question", "gold", "generated", "extracted", "correct", "tokens", "finish"] {
        assert!(sample.get(k).is_some(), "sample field {k}");
    }
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["n"], 4);
    assert!(dir.join("samples.parquet").is_file());
    // A crash mid-write leaves a torn last line: it is dropped and nothing else is regenerated.
    std::fs::write(dir.join("samples.jsonl"), format!("{lines}{{\"id\": \"chal-")).unwrap();
    let again = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((again.n, again.generated_now), (4, 0));
    // Other settings in the same dir are refused.
    let other = EvalOptions { max_new_tokens: 49, ..opts };
    assert!(evaluate(&s, &ds, &other, &dir).err().unwrap().to_string().contains("other settings"));
}

#[test]
fn evaluate_from_rhai() {
    require!(Data, Model);
    use cotlab::script::{Context, Runner};
    let d = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().to_path_buf();
    let r = Runner::new(ctx)
        .eval("e.rhai", r#"let r = evaluate(student("default"), dataset("svamp", #{limit: 2, seed: 3}), #{max_new_tokens: 16, name: "e"}); [r.n, r.task, generate(student("default"), "What is 2 + 2?", #{max_new_tokens: 8}).tokens]"#)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_array()
        .unwrap();
    assert_eq!(r[0].as_int().unwrap(), 2);
    assert_eq!(r[1].clone().into_string().unwrap(), "svamp");
    assert!(r[2].as_int().unwrap() <= 8);
    assert!(d.path().join("e/results.json").is_file());
}
