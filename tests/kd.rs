//! Offline token-level KD (`train::kd`): the loss and its gradient against a PyTorch reference
//! (TRL's `generalized_jsd_loss` with beta = 0 as the KL's spec), the teacher-logits store's
//! resume after an interruption, mismatched vocabularies, and `sft` with `kd` (alpha 0 is plain
//! SFT bit for bit, a teacher equal to the student gives no KL, packing, LoRA and resume).

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use cotlab::model::lora::LoraConfig;
use cotlab::model::{cotlab_home, Student};
use cotlab::rng::Rng;
use cotlab::train::kd::{check_same_vocab, kd_loss_rows, teacher_logits, KdOptions, LogitsOptions, Store, Vocab};
use cotlab::train::{sft, RunDir, SftOptions};

fn python() -> String {
    std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string())
}

fn tokenizer(swap: bool, extra: usize) -> tokenizers::Tokenizer {
    common::tiny::word_tokenizer(swap, extra)
}

fn tiny(name: &str, tok: tokenizers::Tokenizer, rows: usize, seed: u64) -> Student {
    common::tiny::llama(name, tok, rows, common::tiny::SMALL, seed)
}

fn student(seed: u64) -> Student {
    let tok = tokenizer(false, 0);
    let rows = tok.get_vocab_size(true);
    tiny("tiny", tok, rows, seed)
}

/// `n` generated problems (seed 4) with the rule teacher's level-2 rationales.
fn arith_corpus(n: usize) -> cotlab::data::Corpus {
    let q = cotlab::data::RationaleQuery { level: Some(2), n: Some(n), seed: Some(4), ..Default::default() };
    cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into())).rationales("arith", &q).unwrap()
}

const MAX_LEN: usize = 64;

fn opts(kd: Option<KdOptions>) -> SftOptions {
    SftOptions { max_steps: Some(4), batch_size: 2, grad_accum: 2, lr: 1e-2, max_len: MAX_LEN, save_every: 100, kd, ..Default::default() }
}

fn logits_opts(top_k: usize, temperature: f64) -> LogitsOptions {
    LogitsOptions { top_k, temperature, name: None, max_len: MAX_LEN }
}

fn kd(dir: &Path, alpha: f64, temperature: f64) -> Option<KdOptions> {
    Some(KdOptions { logits: dir.display().to_string(), alpha, temperature })
}

/// One PyTorch check: random logits (7 × 13), top-4 teacher rows; loss and gradient within 1e-5.
fn matches_pytorch(alpha: f64, temperature: f64, seed: u64) {
    let (n, v, k) = (7usize, 13usize, 4usize);
    let mut rng = Rng::new(seed);
    let mut uniform = |lo: f32, hi: f32| lo + (rng.next_u64() % 100_001) as f32 / 100_000.0 * (hi - lo);
    let logits: Vec<f32> = (0..n * v).map(|_| uniform(-3.0, 3.0)).collect();
    let mut lp: Vec<f32> = (0..n * k).map(|_| uniform(-6.0, -0.1)).collect();
    lp.chunks_mut(k).for_each(|r| r.sort_by(|a, b| b.total_cmp(a)));
    let mut rng = Rng::new(seed + 1);
    let ids: Vec<u32> = (0..n)
        .flat_map(|_| {
            let mut all: Vec<u32> = (0..v as u32).collect();
            rng.shuffle(&mut all);
            all.truncate(k);
            all
        })
        .collect();
    let targets: Vec<u32> = (0..n).map(|i| ids[i * k + i % k] ^ (i as u32 % 2)).collect();

    let var = Var::from_tensor(&Tensor::from_vec(logits.clone(), (n, v), &Device::Cpu).unwrap()).unwrap();
    let id_t = Tensor::from_vec(ids.clone(), (n, k), &Device::Cpu).unwrap();
    // The trainer's renormalisation: softmax of the stored log-probs over the top-k.
    let p: Vec<f32> = lp
        .chunks(k)
        .flat_map(|r| {
            let z: f64 = r.iter().map(|&x| (x as f64).exp()).sum();
            r.iter().map(move |&x| ((x as f64).exp() / z) as f32).collect::<Vec<_>>()
        })
        .collect();
    let p_t = Tensor::from_vec(p, (n, k), &Device::Cpu).unwrap();
    let loss = (kd_loss_rows(var.as_tensor(), &targets, &id_t, &p_t, alpha, temperature).unwrap() / n as f64).unwrap();
    let grad: Vec<Vec<f32>> = loss.backward().unwrap().get(&var).unwrap().to_vec2().unwrap();
    let loss = loss.to_scalar::<f32>().unwrap();

    let d = tempfile::tempdir().unwrap();
    let case = d.path().join("case.json");
    let rows = |x: &[f32], w: usize| -> Vec<Vec<f32>> { x.chunks(w).map(|r| r.to_vec()).collect() };
    let json = serde_json::json!({
        "logits": rows(&logits, v), "targets": targets, "ids": rows(&ids.iter().map(|&i| i as f32).collect::<Vec<_>>(), k)
            .into_iter().map(|r| r.into_iter().map(|x| x as u32).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "logprobs": rows(&lp, k), "alpha": alpha, "temperature": temperature,
    });
    std::fs::write(&case, json.to_string()).unwrap();
    let o = Command::new(python()).arg(format!("{}/tests/py/kd_reference.py", env!("CARGO_MANIFEST_DIR"))).arg(&case).output().unwrap();
    assert!(o.status.success(), "kd_reference.py: {}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let ref_loss = r["loss"].as_f64().unwrap();
    assert!((loss as f64 - ref_loss).abs() < 1e-5, "alpha {alpha} T {temperature}: loss {loss}, PyTorch {ref_loss}");
    let mut worst = 0.0f64;
    for (i, row) in grad.iter().enumerate() {
        for (j, g) in row.iter().enumerate() {
            worst = worst.max((*g as f64 - r["grad"][i][j].as_f64().unwrap()).abs());
        }
    }
    assert!(worst < 1e-5, "alpha {alpha} T {temperature}: gradient differs from PyTorch's by {worst}");
}

/// The KD loss and its gradient w.r.t. the logits equal a PyTorch implementation of the same
/// formula (TRL's generalized_jsd_loss, beta = 0) within 1e-5, for CE + KL, KL alone and a
/// temperature.
#[test]
fn kd_loss_and_gradient_match_pytorch() {
    require!(Torch);
    matches_pytorch(0.3, 2.0, 1);
    matches_pytorch(1.0, 1.0, 2);
    matches_pytorch(0.5, 0.5, 3);
}

/// A store interrupted after 2 of 6 examples, with a torn line at its end, is finished by the
/// next call and then equals an uninterrupted one; a complete store is reused (nothing
/// computed); another setting under the same dir is refused.
#[test]
fn teacher_logits_resume_after_interruption_equals_uninterrupted() {
    let teacher = student(3);
    let corpus = arith_corpus(6);
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let o = logits_opts(5, 1.5);
    let first = teacher_logits(&teacher, &corpus, &o, &a, Some(2)).unwrap();
    assert_eq!((first.computed, first.complete, first.examples), (2, false, 6));
    let mut f = std::fs::OpenOptions::new().append(true).open(a.join("logits.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"key\": \"0123456789abcdef-40\", \"prompt_len\": 3, \"ids\": [1, 2").unwrap();
    let rest = teacher_logits(&teacher, &corpus, &o, &a, None).unwrap();
    assert_eq!((rest.computed, rest.complete), (4, true));
    let again = teacher_logits(&teacher, &corpus, &o, &a, None).unwrap();
    assert_eq!((again.computed, again.complete), (0, true), "a complete store is reused");
    let whole = teacher_logits(&teacher, &corpus, &o, &b, None).unwrap();
    assert_eq!((whole.computed, whole.positions), (6, rest.positions));
    let (sa, sb) = (Store::open(&a).unwrap(), Store::open(&b).unwrap());
    assert_eq!(sa.entries.len(), 6);
    assert_eq!(sa.entries, sb.entries, "resumed store differs from the uninterrupted one");
    assert_eq!(sa.identity, sb.identity);
    let e = sa.entries.values().next().unwrap();
    assert_eq!(e.ids.len(), e.logprobs.len());
    assert!(e.logprobs.chunks(5).all(|r| r.windows(2).all(|w| w[0] >= w[1]) && r[0] <= 0.0), "top-k sorted, log-probs ≤ 0");
    let err = teacher_logits(&teacher, &corpus, &logits_opts(6, 1.5), &a, None).unwrap_err().to_string();
    assert!(err.contains("teacher logits of another") && err.contains("top_k"), "{err}");
}

/// Teacher and student with another vocabulary size, another output layer or another token → id
/// map: `sft` with `kd` fails before training, naming both models and what differs.
#[test]
fn mismatched_vocabularies_fail_naming_both_models() {
    let teacher = student(3);
    let corpus = arith_corpus(4);
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    teacher_logits(&teacher, &corpus, &logits_opts(4, 1.0), &store, None).unwrap();
    let base = tokenizer(false, 0).get_vocab_size(true);
    let cases = [
        (tiny("swapped", tokenizer(true, 0), base, 3), "map tokens to other ids"),
        (tiny("bigger", tokenizer(false, 2), base + 2, 3), &*format!("the teacher's tokenizer has {base} tokens, the student's {}", base + 2)),
        (tiny("wider", tokenizer(false, 0), base + 8, 3), &*format!("the teacher's output layer has {base} rows, the student's {}", base + 8)),
    ];
    for (i, (s, what)) in cases.iter().enumerate() {
        let run = RunDir::new(d.path().join(format!("run{i}")));
        let e = sft(s, &corpus, &opts(kd(&store, 0.5, 1.0)), &run, None).unwrap_err().to_string();
        let named = ["random:swapped", "random:bigger", "random:wider"][i];
        assert!(e.contains("teacher random:tiny") && e.contains(&format!("student {named}")) && e.contains(what), "{e}");
        assert!(!run.checkpoint().exists());
    }
    let v = Vocab::of(&teacher);
    assert!(check_same_vocab("t", &v, "s", &v).is_ok());
}

/// alpha = 0 trains exactly as plain SFT (the same losses bit for bit); alpha = 0.5 does not.
#[test]
fn kd_alpha_zero_is_plain_sft() {
    let corpus = arith_corpus(8);
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    teacher_logits(&student(9), &corpus, &logits_opts(8, 1.0), &store, None).unwrap();
    let plain = sft(&student(7), &corpus, &opts(None), &RunDir::new(d.path().join("plain")), None).unwrap();
    let zero = sft(&student(7), &corpus, &opts(kd(&store, 0.0, 1.0)), &RunDir::new(d.path().join("zero")), None).unwrap();
    assert_eq!(zero.losses, plain.losses);
    let half = sft(&student(7), &corpus, &opts(kd(&store, 0.5, 1.0)), &RunDir::new(d.path().join("half")), None).unwrap();
    assert!((half.losses[0] - plain.losses[0]).abs() > 1e-3, "kd had no effect: {:?} vs {:?}", half.losses, plain.losses);
}

/// A teacher equal to the student, its whole vocabulary as the top-k: the KL at step 1 is 0
/// (at T = 1 and at T = 2); another teacher's is not.
#[test]
fn kd_with_the_student_as_teacher_has_no_kl() {
    let corpus = arith_corpus(4);
    let d = tempfile::tempdir().unwrap();
    let v = tokenizer(false, 0).get_vocab_size(true);
    for (t, seed, zero) in [(1.0, 7, true), (2.0, 7, true), (1.0, 9, false)] {
        let store = d.path().join(format!("store-{t}-{seed}"));
        teacher_logits(&student(seed), &corpus, &logits_opts(v, t), &store, None).unwrap();
        let o = SftOptions { max_steps: Some(1), ..opts(kd(&store, 1.0, t)) };
        let r = sft(&student(7), &corpus, &o, &RunDir::new(d.path().join(format!("run-{t}-{seed}"))), None).unwrap();
        let kl = r.losses[0];
        if zero {
            assert!(kl.abs() < 1e-5, "T {t}: KL of the student against itself is {kl}");
        } else {
            assert!(kl > 1e-2, "another teacher: KL {kl}");
        }
    }
}

/// With `kd`: packed and padded batches give the same loss; a run stopped after 2 steps and
/// resumed gives the uninterrupted curve; LoRA (B = 0 at the start) gives full fine-tuning's
/// first loss; another alpha is another run.
#[test]
fn kd_works_with_packing_resume_and_lora() {
    let corpus = arith_corpus(8);
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    teacher_logits(&student(9), &corpus, &logits_opts(8, 2.0), &store, None).unwrap();
    let o = opts(kd(&store, 0.7, 2.0));
    let full = sft(&student(7), &corpus, &o, &RunDir::new(d.path().join("full")), None).unwrap();
    assert!(full.losses[3] < full.losses[0], "KD loss falls: {:?}", full.losses);
    let padded = sft(&student(7), &corpus, &SftOptions { pack: false, ..o.clone() }, &RunDir::new(d.path().join("padded")), None).unwrap();
    for (a, b) in padded.losses.iter().zip(&full.losses) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "padded {:?} vs packed {:?}", padded.losses, full.losses);
    }
    let run = RunDir::new(d.path().join("parts"));
    let first = sft(&student(7), &corpus, &o, &run, Some(2)).unwrap();
    let second = sft(&student(7), &corpus, &o, &run, None).unwrap();
    assert_eq!(second.resumed_from, Some(2));
    let stitched: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    for (a, b) in stitched.iter().zip(&full.losses) {
        assert!((a - b).abs() < 1e-6, "resumed KD curve {stitched:?} != uninterrupted {:?}", full.losses);
    }
    let lora = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    let l = sft(&student(7), &corpus, &SftOptions { lora: Some(lora), ..o.clone() }, &RunDir::new(d.path().join("lora")), None).unwrap();
    assert!((l.losses[0] - full.losses[0]).abs() <= 1e-5 * full.losses[0].abs(), "LoRA {:?} vs full {:?}", l.losses, full.losses);
    assert!(l.losses.iter().all(|x| x.is_finite()) && l.losses[3] < l.losses[0], "{:?}", l.losses);
    let e = sft(&student(7), &corpus, &opts(kd(&store, 0.5, 2.0)), &run, None).unwrap_err().to_string();
    assert!(e.contains("holds a different run") && e.contains("alpha"), "{e}");
}
