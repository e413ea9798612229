//! On-policy KD (`train::distill`): the generalized JSD and its gradient against TRL's
//! `generalized_jsd_loss` run in PyTorch, a real on-policy run (the student generates, the loss
//! falls), a teacher equal to the student (no loss), mismatched vocabularies, resume, and the
//! Rhai binding on a dataset.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use cotlab::model::{cotlab_home, Student};
use cotlab::rng::Rng;
use cotlab::train::distill::generalized_jsd_rows_sum;
use cotlab::train::{distill, DistillOptions, DistillReport, RunDir, SftOptions, Tracking};

fn python() -> String {
    std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string())
}

fn tokenizer(extra: usize) -> tokenizers::Tokenizer {
    common::tiny::word_tokenizer(false, extra)
}

/// A tiny Llama with deterministic weights from `seed`: two calls with one seed are the same
/// model (separate weights).
fn tiny(name: &str, extra: usize, seed: u64) -> Student {
    let tok = tokenizer(extra);
    let rows = tok.get_vocab_size(true);
    common::tiny::llama(name, tok, rows, common::tiny::SMALL, seed)
}

fn student(seed: u64) -> Student {
    tiny("tiny", 0, seed)
}

/// `n` generated problems (seed 4) with the rule teacher's level-2 rationales.
fn arith_corpus(n: usize) -> cotlab::data::Corpus {
    let q = cotlab::data::RationaleQuery { level: Some(2), n: Some(n), seed: Some(4), ..Default::default() };
    cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into())).rationales("arith", &q).unwrap()
}

fn sft_opts(steps: usize) -> SftOptions {
    SftOptions { max_steps: Some(steps), batch_size: 2, grad_accum: 2, lr: 1e-2, max_len: 64, save_every: 100, ..Default::default() }
}

fn on(beta: f64, lmbda: f64) -> DistillOptions {
    DistillOptions { beta, lmbda, max_new_tokens: 12, temperature: 1.0 }
}

fn run(s: &Student, t: &Student, o: &DistillOptions, sft: &SftOptions, dir: &Path, stop_after: Option<usize>) -> cotlab::Result<DistillReport> {
    let r = RunDir::new(dir);
    distill(s, t, &arith_corpus(8), o, sft, &r, stop_after, &Tracking::beside(&r))
}

/// One PyTorch check on random logits (7 × 13, the whole vocabulary): loss and gradient w.r.t.
/// the student's logits within 1e-5.
fn matches_pytorch(beta: f64, temperature: f64, seed: u64) {
    let (n, v) = (7usize, 13usize);
    let mut rng = Rng::new(seed);
    let mut uniform = |lo: f32, hi: f32| lo + (rng.next_u64() % 100_001) as f32 / 100_000.0 * (hi - lo);
    let s: Vec<f32> = (0..n * v).map(|_| uniform(-4.0, 4.0)).collect();
    let t: Vec<f32> = (0..n * v).map(|_| uniform(-4.0, 4.0)).collect();
    let var = Var::from_tensor(&Tensor::from_vec(s.clone(), (n, v), &Device::Cpu).unwrap()).unwrap();
    let teacher = Tensor::from_vec(t.clone(), (n, v), &Device::Cpu).unwrap();
    let loss = (generalized_jsd_rows_sum(var.as_tensor(), &teacher, beta, temperature).unwrap() / n as f64).unwrap();
    let grad: Vec<Vec<f32>> = loss.backward().unwrap().get(&var).unwrap().to_vec2().unwrap();
    let loss = loss.to_scalar::<f32>().unwrap();

    let d = tempfile::tempdir().unwrap();
    let case = d.path().join("case.json");
    let rows = |x: &[f32]| -> Vec<Vec<f32>> { x.chunks(v).map(|r| r.to_vec()).collect() };
    let json = serde_json::json!({ "student": rows(&s), "teacher": rows(&t), "beta": beta, "temperature": temperature });
    std::fs::write(&case, json.to_string()).unwrap();
    let o = Command::new(python()).arg(format!("{}/tests/py/jsd_reference.py", env!("CARGO_MANIFEST_DIR"))).arg(&case).output().unwrap();
    assert!(o.status.success(), "jsd_reference.py: {}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let ref_loss = r["loss"].as_f64().unwrap();
    assert!(ref_loss > 1e-3, "beta {beta} T {temperature}: a case with no divergence tests nothing");
    assert!((loss as f64 - ref_loss).abs() < 1e-5, "beta {beta} T {temperature}: loss {loss}, PyTorch {ref_loss}");
    let mut worst = 0.0f64;
    for (i, row) in grad.iter().enumerate() {
        for (j, g) in row.iter().enumerate() {
            worst = worst.max((*g as f64 - r["grad"][i][j].as_f64().unwrap()).abs());
        }
    }
    assert!(worst < 1e-5, "beta {beta} T {temperature}: gradient differs from PyTorch's by {worst}");
}

/// The generalized JSD and its gradient w.r.t. the student's logits equal TRL's
/// `generalized_jsd_loss` (its text, run in PyTorch) within 1e-5: forward KL, the mixture and
/// reverse KL, at T = 1 and T = 2.
#[test]
fn jsd_loss_and_gradient_match_trl_in_pytorch() {
    require!(Torch);
    let mut seed = 1;
    for beta in [0.0, 0.5, 1.0] {
        for t in [1.0, 2.0] {
            matches_pytorch(beta, t, seed);
            seed += 1;
        }
    }
}

/// lmbda = 1: every micro-batch trains on the student's own answers (the report and each log
/// line say how many), and the loss falls over a few steps; lmbda = 0 generates nothing.
#[test]
fn on_policy_run_generates_and_its_loss_falls() {
    let d = tempfile::tempdir().unwrap();
    let (steps, sft) = (6, sft_opts(6));
    let r = run(&student(7), &student(9), &on(0.5, 1.0), &sft, &d.path().join("on"), None).unwrap();
    assert_eq!((r.on_policy_batches, r.corpus_batches), (steps * sft.grad_accum, 0));
    assert!(r.generated_tokens >= steps * sft.grad_accum * sft.batch_size, "{} tokens generated", r.generated_tokens);
    let log = std::fs::read_to_string(d.path().join("on/train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), steps);
    assert!(lines.iter().all(|l| l["on_policy_batches"] == sft.grad_accum), "{log}");
    let l = &r.sft.losses;
    assert!(l.iter().all(|x| x.is_finite() && *x > 0.0), "{l:?}");
    assert!(l[steps - 1] < 0.85 * l[0], "the JSD falls: {l:?}");
    let off = run(&student(7), &student(9), &on(0.5, 0.0), &sft_opts(2), &d.path().join("off"), None).unwrap();
    assert_eq!((off.on_policy_batches, off.corpus_batches, off.generated_tokens), (0, 4, 0));
}

/// A teacher equal to the student (separate weights, the same values): the loss at step 1 is 0
/// for forward KL, the mixture and reverse KL, on-policy and on the corpus; another teacher's
/// is not.
#[test]
fn teacher_equal_to_student_gives_no_loss() {
    let d = tempfile::tempdir().unwrap();
    for (i, beta) in [0.0, 0.3, 1.0].into_iter().enumerate() {
        let o = DistillOptions { temperature: 2.0, ..on(beta, 0.5) };
        let r = run(&student(7), &student(7), &o, &SftOptions { grad_accum: 4, ..sft_opts(1) }, &d.path().join(format!("same{i}")), None).unwrap();
        assert!(r.on_policy_batches > 0 && r.corpus_batches > 0, "both kinds of batch: {r:?}");
        assert!(r.sft.losses[0].abs() < 1e-6, "beta {beta}: the student against itself has loss {}", r.sft.losses[0]);
    }
    let other = run(&student(7), &student(9), &on(0.3, 0.5), &sft_opts(1), &d.path().join("other"), None).unwrap();
    assert!(other.sft.losses[0] > 1e-2, "another teacher: loss {}", other.sft.losses[0]);
}

/// A teacher with another vocabulary size or output layer: nothing trains, and the error names
/// both models and what differs.
#[test]
fn mismatched_vocabularies_fail_naming_both_models() {
    let d = tempfile::tempdir().unwrap();
    let base = tokenizer(0).get_vocab_size(true);
    let cases = [(tiny("bigger", 2, 3), format!("the teacher's tokenizer has {} tokens, the student's {base}", base + 2))];
    for (i, (t, what)) in cases.iter().enumerate() {
        let dir = d.path().join(format!("run{i}"));
        let e = run(&student(7), t, &on(0.5, 0.5), &sft_opts(2), &dir, None).unwrap_err().to_string();
        assert!(e.contains("teacher random:bigger") && e.contains("student random:tiny") && e.contains(what.as_str()), "{e}");
        assert!(!dir.exists(), "a refused run leaves no dir");
    }
}

/// A run stopped after 2 of 4 steps and resumed gives the uninterrupted loss curve (the same
/// on-policy choices and answers); another beta in the same dir is another run, refused.
#[test]
fn resume_after_stop_equals_uninterrupted() {
    let d = tempfile::tempdir().unwrap();
    let (o, sft) = (on(0.5, 0.5), sft_opts(4));
    let whole = run(&student(7), &student(9), &o, &sft, &d.path().join("whole"), None).unwrap();
    assert!(whole.on_policy_batches > 0 && whole.corpus_batches > 0, "{whole:?}");
    let parts = d.path().join("parts");
    let first = run(&student(7), &student(9), &o, &sft, &parts, Some(2)).unwrap();
    let second = run(&student(7), &student(9), &o, &sft, &parts, None).unwrap();
    assert_eq!(second.sft.resumed_from, Some(2));
    assert_eq!(first.on_policy_batches + second.on_policy_batches, whole.on_policy_batches);
    assert_eq!(first.generated_tokens + second.generated_tokens, whole.generated_tokens);
    let stitched: Vec<f64> = first.sft.losses.iter().chain(&second.sft.losses).copied().collect();
    assert_eq!(stitched.len(), 4);
    for (a, b) in stitched.iter().zip(&whole.sft.losses) {
        assert!((a - b).abs() < 1e-6, "resumed curve {stitched:?} != uninterrupted {:?}", whole.sft.losses);
    }
    let e = run(&student(7), &student(9), &on(0.9, 0.5), &sft, &parts, None).unwrap_err().to_string();
    assert!(e.contains("holds a different run") && e.contains("beta"), "{e}");
}

/// The Rhai binding: `distill` on a dataset (questions only) trains fully on-policy, with the
/// sft options beside distill's (`steps` for `max_steps`), and reports the on-policy batches;
/// a dataset with lmbda < 1 (batches without responses) is refused, saying what to give.
#[test]
fn rhai_distill_on_a_dataset_is_on_policy_only() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("d.rhai");
    let write = |lmbda: &str| {
        std::fs::write(
            &script,
            format!(
                r#"
                let s = student("default");
                let r = distill(s, student("default"), dataset("arith", #{{ n: 4, seed: 5 }}),
                                #{{ run: "gkd", steps: 1, batch_size: 2, grad_accum: 2, max_len: 96, max_new_tokens: 6, lmbda: {lmbda}, beta: 0.0 }});
                print(`on-policy ${{r.on_policy_batches}} corpus ${{r.corpus_batches}} generated ${{r.generated_tokens}} steps ${{r.steps}}`);
                "#
            ),
        )
        .unwrap()
    };
    let mut c = common::cotlab();
    c.current_dir(d.path()).args(["run"]).arg(&script).args(["--runs", "runs"]);
    write("0.5");
    let r = common::run(&mut c);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("every batch must be on-policy: give lmbda: 1"), "{}", r.stderr);
    write("1.0");
    let r = common::run(&mut c);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let line = r.stdout.lines().find(|l| l.starts_with("on-policy")).unwrap_or_else(|| panic!("{}", r.stdout));
    let n: Vec<usize> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!((n[0], n[1], n[3]), (2, 0, 1), "{line}");
    assert!(n[2] >= 4 && n[2] <= 4 * 6, "{line}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("runs/gkd/config.json")).unwrap()).unwrap();
    assert_eq!((config["loss"]["method"].as_str(), config["loss"]["options"]["beta"].as_f64()), (Some("distill"), Some(0.0)), "{config}");
    assert_eq!(config["loss"]["teacher_fingerprint"].as_str().map(str::len), Some(64), "{config}");
}
