//! Zero-shot evaluation: results + samples in the eval dir, resume without regenerating, a torn
//! last line recovered, and the Rhai entry point.

#[macro_use]
mod common;

use candle_core::Device;
use cotlab::answer::{Evaluator, Protocol};
use cotlab::data::Task;
use cotlab::data::{load_dataset, DatasetOptions};
use cotlab::eval::run::{evaluate, wilson95, EvalOptions, PromptStyle};
use cotlab::model::ChatTemplate;
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
    let opts = EvalOptions { batch_size: Some(2), max_new_tokens: Some(48), ..Default::default() };
    let first = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((first.n, first.generated_now), (4, 4));
    // An evaluation interrupted after two answers: only the missing ones are generated.
    let journaled = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    std::fs::write(dir.join("samples.jsonl"), journaled.lines().take(2).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let full = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((full.n, full.generated_now), (4, 2), "only the missing examples are generated");
    // Another subset of questions is another evaluation (round 3: it used to append).
    let mut half = ds.clone();
    half.examples.truncate(2);
    let e = evaluate(&s, &half, &opts, &dir).err().unwrap().to_string();
    assert!(e.contains("other settings") && e.contains("examples.n: 4 -> 2"), "{e}");
    assert!(full.ci95_low <= full.accuracy && full.accuracy <= full.ci95_high);
    let lines = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    let sample: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for k in ["id", "question", "gold", "generated", "extracted", "correct", "tokens", "finish"] {
        assert!(sample.get(k).is_some(), "sample field {k}");
    }
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["n"], 4);
    // The protocol, both protocols' accuracies on the same outputs, the limit and the prompt.
    assert_eq!(results["protocol"], "paper");
    assert_eq!(results["accuracy"], results["accuracy_paper"]);
    assert!(results["accuracy_lenient"].as_f64().unwrap() >= 0.0);
    assert_eq!(results["max_new_tokens"], 48);
    assert!(results["prompt_template"].as_str().unwrap().contains("<|im_start|>user\n{question}<|im_end|>"), "{}", results["prompt_template"]);
    // Another protocol is another evaluation (the dir is identified by its options).
    let lenient = EvalOptions { protocol: Protocol::Lenient, ..opts.clone() };
    assert!(evaluate(&s, &ds, &lenient, &dir).err().unwrap().to_string().contains("other settings"));
    assert!(dir.join("samples.parquet").is_file());
    // Generations cut at the token limit are counted, and marked per sample.
    let cut = lines.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["finish"] == "length").count();
    assert_eq!(results["truncated"], cut);
    assert_eq!(results["truncated_in_thinking"], 0, "SmolLM2 does not think");
    let frame = cotlab::frame::Frame::read_parquet(&dir.join("samples.parquet")).unwrap();
    let marked = frame.column_cells("truncated").unwrap().iter().filter(|c| matches!(c, cotlab::frame::Cell::Bool(true))).count();
    assert_eq!(marked, cut);
    // A crash mid-write leaves a torn last line: it is dropped and nothing else is regenerated.
    std::fs::write(dir.join("samples.jsonl"), format!("{lines}{{\"id\": \"chal-")).unwrap();
    let again = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((again.n, again.generated_now), (4, 0));
    // The batch size is not part of the identity: another resumes the dir, and so does a dir
    // written when it was (older builds put `options.batch_size` in eval_config.json).
    let config = dir.join("eval_config.json");
    let mut identity: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert!(identity["options"].get("batch_size").is_none(), "{identity}");
    identity["options"]["batch_size"] = 8.into();
    std::fs::write(&config, identity.to_string()).unwrap();
    let rebatched = evaluate(&s, &ds, &EvalOptions { batch_size: Some(3), ..opts.clone() }, &dir).unwrap();
    assert_eq!((rebatched.n, rebatched.generated_now, rebatched.options.batch_size), (4, 0, Some(3)));
    // Other settings in the same dir are refused.
    let other = EvalOptions { max_new_tokens: Some(49), ..opts.clone() };
    assert!(evaluate(&s, &ds, &other, &dir).err().unwrap().to_string().contains("other settings"));
}

/// Out of the box (`decode_weights: auto`) the untrained default student decodes with the Q4_1
/// kernels on its GGUF's own weights: 8 SVAMP questions get f32's answers, and `results.json`
/// records which weights ran (the option stays `auto`, so the eval dir's identity is unchanged).
#[test]
fn default_decoding_is_exact_and_recorded() {
    require!(Data, Model);
    use cotlab::model::DecodeWeights;
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let ds = load_dataset(&common::data_dir(), "svamp", &DatasetOptions { limit: Some(8), seed: Some(0), ..Default::default() }).unwrap();
    let d = tempfile::tempdir().unwrap();
    let opts = EvalOptions { max_new_tokens: Some(64), ..Default::default() };
    let auto = evaluate(&s, &ds, &opts, &d.path().join("auto")).unwrap();
    let f32 = evaluate(&s, &ds, &EvalOptions { decode_weights: DecodeWeights::F32, ..opts.clone() }, &d.path().join("f32")).unwrap();
    assert_eq!((auto.decoded_with, f32.decoded_with), (DecodeWeights::Q4_1, DecodeWeights::F32));
    let read = |dir: &str| std::fs::read_to_string(d.path().join(dir).join("samples.jsonl")).unwrap();
    assert_eq!(read("auto"), read("f32"), "auto's answers are not f32's");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("auto/results.json")).unwrap()).unwrap();
    assert_eq!(results["decoded_with"], "q4_1");
    let config = std::fs::read_to_string(d.path().join("auto/eval_config.json")).unwrap();
    assert!(!config.contains("decode_weights"), "auto is not part of the identity: {config}");
    // Weights moved off the grid: `auto` is bf16 where the CPU has AVX512-BF16 (then part of the
    // identity, so a dir an older build filled with f32 answers is refused), f32 elsewhere.
    let w = &s.model.params["model.layers.0.mlp.up_proj.weight"];
    w.set(&(w.as_tensor() * 1.001).unwrap()).unwrap();
    let two = cotlab::data::Dataset { examples: ds.examples[..2].to_vec(), ..ds.clone() };
    let moved = evaluate(&s, &two, &opts, &d.path().join("moved")).unwrap();
    let bf16 = cotlab::kernels::simd::avx512_bf16();
    assert_eq!(moved.decoded_with, if bf16 { DecodeWeights::Bf16 } else { DecodeWeights::F32 });
    let config = std::fs::read_to_string(d.path().join("moved/eval_config.json")).unwrap();
    assert_eq!(config.contains(r#""auto_decode_weights": "bf16""#), bf16, "{config}");
    let mut older: serde_json::Value = serde_json::from_str(&config).unwrap();
    older.as_object_mut().unwrap().remove("auto_decode_weights");
    std::fs::write(d.path().join("moved/eval_config.json"), older.to_string()).unwrap();
    match evaluate(&s, &two, &opts, &d.path().join("moved")) {
        Ok(r) => assert!(!bf16 && r.generated_now == 0, "resumed: {r:?}"),
        Err(e) => assert!(bf16 && e.to_string().contains("auto_decode_weights: null -> \"bf16\""), "{e}"),
    }
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

/// Without options an evaluation is the paper's: its protocol, its prompts, its token limits
/// (1024 new tokens for math, 640 for commonsense: `autoevaluate.py`, MAmmoTH `run_open.py`).
#[test]
fn eval_defaults_are_the_papers() {
    let o = EvalOptions::default();
    assert_eq!((o.protocol, o.prompt, o.max_new_tokens, o.temperature), (Protocol::Paper, PromptStyle::Paper, None, 0.0));
    // The batch size is chosen for throughput: 32 cache rows, each prompt taking `beams` of them.
    use cotlab::eval::run::default_batch_size;
    assert_eq!((o.batch_size, default_batch_size(1), default_batch_size(5), default_batch_size(64)), (None, 32, 6, 1));
    for t in [Task::Svamp, Task::Gsm8k, Task::Aqua, Task::Math] {
        assert_eq!((t.paper_max_new_tokens(), t.evaluator()), (1024, Evaluator::Math), "{}", t.name());
    }
    for t in [Task::Csqa, Task::Obqa, Task::StrategyQa] {
        assert_eq!((t.paper_max_new_tokens(), t.evaluator()), (640, Evaluator::Commonsense), "{}", t.name());
    }
    // Rhai options map onto the same defaults and name the choices when wrong.
    let e = serde_json::from_value::<EvalOptions>(serde_json::json!({"protocol": "strict"})).err().unwrap().to_string();
    assert!(e.contains("protocol: unknown value 'strict': expected one of paper, lenient"), "{e}");
    let e = serde_json::from_value::<EvalOptions>(serde_json::json!({"prompt": "chat"})).err().unwrap().to_string();
    assert!(e.contains("prompt: unknown value 'chat': expected one of paper, train"), "{e}");
}

/// The paper evaluator's prompts (`prompt_utils.py`), distinct from the training templates.
#[test]
fn paper_eval_prompts_per_template() {
    let q = "Q?";
    let llama = ChatTemplate::Llama3.paper_eval(Evaluator::Commonsense).prompt(q).unwrap();
    assert_eq!(llama, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    assert_eq!(ChatTemplate::Llama3.paper_eval(Evaluator::Math).prompt(q).unwrap(), llama);
    assert_ne!(ChatTemplate::Llama3.prompt(q).unwrap(), llama, "training has no system turn");
    let alpaca = ChatTemplate::Alpaca { eos: "</s>".into() };
    let head = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nQ?\n\n";
    assert_eq!(alpaca.paper_eval(Evaluator::Commonsense).prompt(q).unwrap(), format!("{head}### Response: \n"));
    assert_eq!(alpaca.paper_eval(Evaluator::Math).prompt(q).unwrap(), format!("{head}### Response:"));
    assert_eq!(alpaca.prompt(q).unwrap(), format!("{head}### Response:\n"), "LLaMA-Factory's training prompt");
    assert_eq!(
        ChatTemplate::Gemma.paper_eval(Evaluator::Commonsense).prompt(q).unwrap(),
        "<bos><start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n\n"
    );
    assert_eq!(ChatTemplate::Gemma.paper_eval(Evaluator::Math).prompt(q).unwrap(), "<bos>\n<start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n");
    // The answer still ends where the training template ends it.
    assert_eq!(alpaca.paper_eval(Evaluator::Math).end(), "</s>");
    // ChatML has no paper prompt: the training prompt is kept.
    let chatml = ChatTemplate::Chatml { default_system: Some("S".into()) };
    assert_eq!(chatml.paper_eval(Evaluator::Math), chatml);
}

/// `student(spec, #{template})` replaces the model's template; a wrong name lists the choices.
#[test]
fn student_template_override_from_rhai() {
    require!(Model);
    use cotlab::script::{Context, Runner};
    let d = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().to_path_buf();
    let runner = Runner::new(ctx);
    let r = runner.eval("t.rhai", r#"[student("default").template, student("default", #{template: "alpaca"}).template]"#).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = r.into_array().unwrap().into_iter().map(|v| v.into_string().unwrap()).collect();
    assert_eq!(names, ["chatml", "alpaca"]);
    let e = runner.eval("t.rhai", r#"student("default", #{template: "vicuna"})"#).err().unwrap().to_string();
    assert!(e.contains("template: unknown value 'vicuna': expected one of chatml, llama3, gemma, alpaca"), "{e}");
}

/// Round 3, class 8: an eval dir resumes only the same weights and the same questions, counts
/// an id once, and takes one evaluation at a time.
#[test]
fn an_eval_dir_is_identified_by_its_weights_and_questions() {
    require!(Data, Model);
    use cotlab::script::{Context, Runner};
    let d = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().join("runs");
    let r = Runner::new(ctx);
    let eval = |student: &str, ds: &str, name: &str| format!("evaluate(student({student}), {ds}, #{{max_new_tokens: 4, name: \"{name}\"}}).n");
    // A run evaluated, trained one step further, evaluated again into the same dir: refused.
    let corpus = r#"let c = rationales("arith", #{ level: 1, n: 8, seed: 1 });"#;
    let train = format!("{corpus}\nsft(student(\"default\"), c, #{{ run: \"r\", max_steps: 2, stop_after: 1, batch_size: 2, grad_accum: 1 }});");
    let _ = r.eval("t.rhai", &train).unwrap_or_else(|e| panic!("{e}"));
    let svamp2 = r#"dataset("svamp", #{limit: 2, seed: 1})"#;
    assert_eq!(r.eval("e.rhai", &eval("\"r\"", svamp2, "er")).unwrap_or_else(|e| panic!("{e}")).as_int().unwrap(), 2);
    let _ = r.eval("t.rhai", &train).unwrap_or_else(|e| panic!("{e}"));
    let e = r.eval("e.rhai", &eval("\"r\"", svamp2, "er")).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("weights.step: 1 -> 2"), "{e}");
    // A student trained in place (sft updates the loaded weights) and evaluated again: other weights.
    let in_place = format!(
        "{corpus}\nlet s = student(\"default\");\nlet a = evaluate(s, {svamp2}, #{{max_new_tokens: 4, name: \"em\"}});\n\
         sft(s, c, #{{ run: \"r2\", max_steps: 1, batch_size: 2, grad_accum: 1 }});\nevaluate(s, {svamp2}, #{{max_new_tokens: 4, name: \"em\"}})"
    );
    let e = r.eval("e.rhai", &in_place).unwrap_err().to_string();
    assert!(e.contains("e.rhai:5:") && e.contains("weights.sha256"), "{e}");
    // Another subset, limit or arith seed into the same dir: refused, never appended.
    assert_eq!(r.eval("e.rhai", &eval("\"default\"", svamp2, "es")).unwrap().as_int().unwrap(), 2);
    for other in [r#"dataset("svamp", #{limit: 2, seed: 2})"#, r#"dataset("svamp", #{limit: 3, seed: 1})"#] {
        let e = r.eval("e.rhai", &eval("\"default\"", other, "es")).unwrap_err().to_string();
        assert!(e.contains("other settings") && e.contains("examples."), "{other}: {e}");
    }
    assert_eq!(r.eval("e.rhai", &eval("\"default\"", r#"dataset("arith", #{n: 2, seed: 1})"#, "ea")).unwrap().as_int().unwrap(), 2);
    let e = r.eval("e.rhai", &eval("\"default\"", r#"dataset("arith", #{n: 2, seed: 2})"#, "ea")).unwrap_err().to_string();
    assert!(e.contains("examples.fnv1a"), "{e}");
    // Ids journaled twice (by an older build, two processes at once) count once on resume.
    let samples = d.path().join("runs/es/samples.jsonl");
    let text = std::fs::read_to_string(&samples).unwrap();
    std::fs::write(&samples, format!("{text}{text}")).unwrap();
    assert_eq!(r.eval("e.rhai", &eval("\"default\"", svamp2, "es")).unwrap().as_int().unwrap(), 2);
    // One evaluation at a time: the dir's lock is held while it runs.
    let held = cotlab::paths::DirLock::take(&d.path().join("runs/es"), "evaluating into").unwrap();
    let e = r.eval("e.rhai", &eval("\"default\"", svamp2, "es")).unwrap_err().to_string();
    assert!(e.contains("another cotlab process") && e.contains("evaluating into"), "{e}");
    drop(held);
}

/// Round 3, class 8: two `cotlab eval` processes on one eval dir never double-count: the second
/// waits for nothing and fails at once on the dir's lock, or (if the first is done) resumes.
#[test]
fn two_evaluations_at_once_count_each_question_once() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ev");
    let eval = || {
        common::cotlab()
            .args(["eval", "--task", "svamp", "--limit", "4", "--max-new-tokens", "24", "--batch-size", "1", "--out"])
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (eval(), eval());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(ok >= 1, "{}\n{}", err(&a), err(&b));
    for o in [&a, &b] {
        assert!(o.status.success() || err(o).contains("another cotlab process"), "{}", err(o));
    }
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["n"], 4);
    assert_eq!(std::fs::read_to_string(dir.join("samples.jsonl")).unwrap().lines().count(), 4);
}
