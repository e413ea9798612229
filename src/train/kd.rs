//! Offline token-level knowledge distillation: a teacher's top-k log-probabilities at every
//! response position, stored once ([`teacher_logits`]), then trained on beside the CE
//! ([`kd_loss_rows`], used by `sft` with `kd`).
//!
//! Invariants:
//! * The loss at a response position is `(1 − alpha)·CE + alpha·T²·KL(p_T ‖ q_S)`, the forward
//!   KL (teacher first), as TRL's `generalized_jsd_loss` with `beta = 0` computes it
//!   (`F.kl_div(student_log_probs, teacher_log_probs, log_target=True)`).
//! * Renormalisation: the teacher's distribution is its top-k log-probabilities (at `T`)
//!   renormalised over the top-k set (`p_T = softmax(stored log-probs)`); the student's
//!   log-probabilities are a log-softmax over the whole vocabulary at `T`, then read at the
//!   top-k ids, not renormalised. The KL is over the top-k support: teacher mass outside it is
//!   dropped, student mass outside it costs loss (the KL is ≥ 0 and 0 only when the student puts
//!   all its mass on the teacher's top-k, in the teacher's proportions).
//! * A store (`runs/logits/<name>/`) holds `identity.json` (teacher, its weights fingerprint, its
//!   vocabulary, template, corpus fingerprint, `top_k`, `temperature`, `max_len`) and
//!   `logits.jsonl`, one line per example appended as it is done (a [`Journal`]): a killed run
//!   keeps finished examples and a torn line is recomputed; a complete store is reused.
//! * Entries are keyed by the example's token ids (prompt + response, as `sft` tokenizes them
//!   at `max_len`), so `sft` finds each example's teacher positions whatever its order, packing
//!   or batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::data::{corpus_fingerprint, tokenize, TrainExample, PAPER_CUTOFF_LEN};
use crate::data::Corpus;
use crate::error::{Error, ModelContext, Result};
use crate::journal::{ensure_identity, Journal};
use crate::model::Student;
use crate::usage;

/// Options of [`teacher_logits`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogitsOptions {
    /// Teacher tokens kept per position.
    pub top_k: usize,
    /// Softmax temperature of the stored log-probabilities.
    pub temperature: f64,
    /// The store's name under `runs/logits/` (default: teacher name + identity hash).
    pub name: Option<String>,
    /// Tokens per example, as `sft`'s `max_len` (they must match).
    pub max_len: usize,
}

impl Default for LogitsOptions {
    fn default() -> Self {
        LogitsOptions { top_k: 20, temperature: 1.0, name: None, max_len: PAPER_CUTOFF_LEN }
    }
}

/// `sft`'s `kd` option.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KdOptions {
    /// The store's dir (what [`teacher_logits`] returned).
    pub logits: String,
    /// Weight of the KL term; `1 − alpha` weighs the CE.
    pub alpha: f64,
    /// Temperature of the student's softmax; must be the store's.
    pub temperature: f64,
}

impl Default for KdOptions {
    fn default() -> Self {
        KdOptions { logits: String::new(), alpha: 0.5, temperature: 1.0 }
    }
}

impl KdOptions {
    pub fn validate(&self) -> Result<()> {
        crate::error::in_range("sft kd", "alpha", self.alpha, 0.0..=1.0)?;
        crate::error::in_range("sft kd", "temperature", self.temperature, 1e-3..=100.0)?;
        if self.logits.is_empty() {
            return Err(usage!("sft kd: give 'logits': the result of teacher_logits(..) or its dir"));
        }
        Ok(())
    }
}

/// A tokenizer's vocabulary as KD needs it equal: its size and a hash of every (id, token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Vocab {
    /// Tokens the tokenizer knows (added tokens included).
    pub tokens: usize,
    /// Rows of the model's output layer.
    pub logits: usize,
    /// FNV-1a over the (id, token) pairs in id order.
    pub hash: String,
}

impl Vocab {
    pub fn of(s: &Student) -> Vocab {
        let mut pairs: Vec<(u32, String)> = s.tokenizer.get_vocab(true).into_iter().map(|(t, i)| (i, t)).collect();
        pairs.sort();
        let h = pairs.iter().fold(crate::rng::FNV_OFFSET, |h, (i, t)| crate::rng::fnv1a(h, i.to_le_bytes().into_iter().chain(t.bytes()).chain([0])));
        Vocab { tokens: pairs.len(), logits: s.config.vocab_size, hash: format!("{h:016x}") }
    }
}

/// Teacher and student share a vocabulary (size, output rows and token → id map), else an
/// error naming both models and what differs.
pub fn check_same_vocab(teacher: &str, t: &Vocab, student: &str, s: &Vocab) -> Result<()> {
    let what = if t.tokens != s.tokens {
        format!("the teacher's tokenizer has {} tokens, the student's {}", t.tokens, s.tokens)
    } else if t.logits != s.logits {
        format!("the teacher's output layer has {} rows, the student's {}", t.logits, s.logits)
    } else if t.hash != s.hash {
        format!("both have {} tokens but map tokens to other ids (vocabulary hash {} vs {})", t.tokens, t.hash, s.hash)
    } else {
        return Ok(());
    };
    Err(usage!("kd: teacher {teacher} and student {student} do not share a vocabulary: {what}; token-level KD needs the same tokenizer"))
}

/// One example's teacher positions: for each response token, the top-k ids and log-probs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// [`example_key`] of the example.
    pub key: String,
    pub prompt_len: usize,
    /// Response positions × top_k, row-major.
    pub ids: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// The key of an example: a hash of its ids and prompt length.
pub fn example_key(e: &TrainExample) -> String {
    let h = crate::rng::fnv1a(crate::rng::FNV_OFFSET, (e.prompt_len as u64).to_le_bytes().into_iter().chain(e.ids.iter().flat_map(|i| i.to_le_bytes())));
    format!("{h:016x}-{}", e.ids.len())
}

const IDENTITY: &str = "identity.json";
const LOG: &str = "logits.jsonl";

/// What [`teacher_logits`] returns.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LogitsReport {
    pub dir: String,
    pub examples: usize,
    /// Examples computed by this call (0: the store was complete).
    pub computed: usize,
    pub complete: bool,
    pub positions: usize,
    pub top_k: usize,
    pub temperature: f64,
    pub max_len: usize,
}

/// A store read back: its identity and entries by key.
pub struct Store {
    pub dir: PathBuf,
    pub identity: serde_json::Value,
    pub entries: HashMap<String, Entry>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store> {
        let ip = dir.join(IDENTITY);
        let identity: serde_json::Value = serde_json::from_str(&crate::paths::read_text(&ip)?)
            .map_err(|e| Error::data(&ip, format!("not valid JSON ({e}): delete {} and run teacher_logits again", dir.display())))?;
        let (_, entries) = Journal::<Entry>::open(&dir.join(LOG))?;
        Ok(Store { dir: dir.to_path_buf(), entries: entries.into_iter().map(|e| (e.key.clone(), e)).collect(), identity })
    }

    /// Write a store for `examples` (already tokenized) in `dir` and read it back: the teacher's
    /// top-k at every response position, as [`teacher_logits`] computes it (benches).
    pub fn create(dir: &Path, teacher: &Student, examples: &[TrainExample], opts: &LogitsOptions) -> Result<Store> {
        let id = serde_json::json!({
            "teacher": teacher.source.display().to_string(), "vocab": Vocab::of(teacher),
            "top_k": opts.top_k, "temperature": opts.temperature, "max_len": opts.max_len,
        });
        ensure_identity(&dir.join(IDENTITY), &id, "teacher logits of another teacher or setting")?;
        let (journal, _) = Journal::<Entry>::open(&dir.join(LOG))?;
        for e in examples {
            let entry = top_k_entry(teacher, e, opts).model_ctx("computing teacher logits")?;
            journal.append(&Entry { key: example_key(e), ..entry })?;
        }
        Store::open(dir)
    }

    fn num(&self, key: &str) -> Result<f64> {
        self.identity[key].as_f64().ok_or_else(|| Error::data(self.dir.join(IDENTITY), format!("lacks '{key}'")))
    }

    pub fn top_k(&self) -> Result<usize> {
        Ok(self.num("top_k")? as usize)
    }

    /// The store is usable for `student` training at `max_len` and `temperature` on `examples`:
    /// same vocabulary, settings, and an entry for every example. The error says which.
    pub fn check(&self, student: &Student, max_len: usize, temperature: f64, examples: &[TrainExample]) -> Result<()> {
        let vocab: Vocab = serde_json::from_value(self.identity["vocab"].clone()).map_err(|e| Error::data(self.dir.join(IDENTITY), format!("vocab: {e}")))?;
        let teacher = self.identity["teacher"].as_str().unwrap_or("?");
        check_same_vocab(teacher, &vocab, &student.source.display().to_string(), &Vocab::of(student))?;
        let (t, m) = (self.num("temperature")?, self.num("max_len")? as usize);
        if (t - temperature).abs() > 1e-12 {
            return Err(usage!(
                "sft kd: temperature {temperature} but the logits in {} are at {t}: give kd temperature {t}, or run teacher_logits at {temperature}",
                self.dir.display()
            ));
        }
        if m != max_len {
            return Err(usage!(
                "sft kd: max_len {max_len} but the logits in {} were made at {m}: run teacher_logits with max_len {max_len}",
                self.dir.display()
            ));
        }
        let missing = examples.iter().filter(|e| !self.entries.contains_key(&example_key(e))).count();
        if missing > 0 {
            return Err(usage!(
                "sft kd: {missing} of {} examples have no teacher logits in {} (an unfinished store, another corpus, or another chat template): run teacher_logits on this corpus to finish it",
                examples.len(),
                self.dir.display()
            ));
        }
        Ok(())
    }

    /// The batch's teacher rows in `sft::response_logits` order (example by example,
    /// response tokens in order): ids (N, k) and renormalised probabilities (N, k).
    pub fn rows(&self, batch: &[&TrainExample], device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let k = self.top_k()?;
        let (mut ids, mut lp) = (Vec::new(), Vec::new());
        for e in batch {
            let entry = &self.entries[&example_key(e)];
            ids.extend_from_slice(&entry.ids);
            lp.extend_from_slice(&entry.logprobs);
        }
        let n = ids.len() / k;
        let p = renormalised(&lp, k);
        let ids = Tensor::from_vec(ids, (n, k), device).model_ctx("kd: teacher ids")?;
        let p = Tensor::from_vec(p, (n, k), device).model_ctx("kd: teacher probabilities")?;
        Ok((ids, p))
    }
}

/// Each row of `k` log-probabilities as probabilities renormalised over the row.
fn renormalised(logprobs: &[f32], k: usize) -> Vec<f32> {
    logprobs
        .chunks(k)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            row.iter().map(move |&x| (x as f64 - lse).exp() as f32).collect::<Vec<_>>()
        })
        .collect()
}

/// Sum over rows of `T²·KL(p ‖ q)` on the top-k support: `p` (N, k) the teacher's renormalised
/// probabilities at `ids` (N, k); `q` the student's full-vocabulary softmax of `logits / T`
/// (N, V), read at `ids`. Differentiable in `logits`.
pub fn kl_rows_sum(logits: &Tensor, ids: &Tensor, p: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let z = (logits.to_dtype(DType::F32)? / temperature)?;
    let logq = candle_nn::ops::log_softmax(&z, D::Minus1)?.gather(&ids.contiguous()?, 1)?;
    // p·log p is constant in the logits; zero probabilities contribute nothing.
    let logp = p.clamp(1e-30f32, 1f32)?.log()?;
    let kl = (p * (logp - logq)?)?.sum_all()?;
    kl * (temperature * temperature)
}

/// The KD loss summed over rows: `(1 − alpha)·Σ CE(logits, targets) + alpha·Σ T²·KL` (divide
/// by the window's response tokens for the step's loss, as for the CE alone).
pub fn kd_loss_rows(logits: &Tensor, targets: &[u32], ids: &Tensor, p: &Tensor, alpha: f64, temperature: f64) -> candle_core::Result<Tensor> {
    let ce = crate::kernels::ops::cross_entropy_rows(logits, targets)?.sum_all()?;
    let kl = kl_rows_sum(logits, ids, p, temperature)?;
    (ce * (1.0 - alpha))? + (kl * alpha)?
}

/// The store's identity: what makes its logits these and not others.
fn identity(teacher: &Student, corpus: &Corpus, opts: &LogitsOptions) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "teacher": teacher.source.display().to_string(),
        "teacher_fingerprint": teacher.weights_fingerprint()?,
        "vocab": Vocab::of(teacher),
        "template": teacher.template,
        "corpus": corpus_fingerprint(corpus),
        "examples": corpus.len(),
        "top_k": opts.top_k,
        "temperature": opts.temperature,
        "max_len": opts.max_len,
    }))
}

/// The default store name: the teacher's name and a hash of the identity.
fn default_name(teacher: &Student, identity: &serde_json::Value) -> String {
    let h = crate::rng::fnv1a(crate::rng::FNV_OFFSET, identity.to_string().bytes());
    let clean: String = teacher.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    format!("{clean}-{h:016x}")
}

/// The dir of a store: `<logits_root>/<name>` (`name` given, or the default).
pub fn store_dir(logits_root: &Path, teacher: &Student, corpus: &Corpus, opts: &LogitsOptions) -> Result<PathBuf> {
    let id = identity(teacher, corpus, opts)?;
    Ok(logits_root.join(opts.name.clone().unwrap_or_else(|| default_name(teacher, &id))))
}

/// Run `teacher` teacher-forced over `corpus` (tokenized as `sft` does, at `opts.max_len`) and
/// append each example's top-k log-probabilities at every response position to the store in
/// `dir`. Examples already stored are skipped; `stop_after` ends the call after that many new
/// examples (an interrupted run, resumed by the next call).
pub fn teacher_logits(teacher: &Student, corpus: &Corpus, opts: &LogitsOptions, dir: &Path, stop_after: Option<usize>) -> Result<LogitsReport> {
    crate::error::in_range("teacher_logits", "top_k", opts.top_k, 1..=teacher.config.vocab_size)?;
    crate::error::in_range("teacher_logits", "temperature", opts.temperature, 1e-3..=100.0)?;
    crate::error::in_range("teacher_logits", "max_len", opts.max_len, 8..=131_072)?;
    let id = identity(teacher, corpus, opts)?;
    let _lock = crate::paths::DirLock::take(dir, "teacher_logits")?;
    ensure_identity(&dir.join(IDENTITY), &id, "teacher logits of another teacher, corpus or setting")?;
    let data = tokenize(&teacher.tokenizer, &teacher.template, &corpus.pairs(), opts.max_len)?;
    let (journal, old) = Journal::<Entry>::open(&dir.join(LOG))?;
    let mut done: std::collections::HashSet<String> = old.into_iter().map(|e| e.key).collect();
    let mut computed = 0;
    let mut positions = 0;
    for (i, e) in data.examples.iter().enumerate() {
        positions += e.response_tokens();
        let key = example_key(e);
        if done.contains(&key) || stop_after.is_some_and(|s| computed >= s) {
            continue;
        }
        let entry = top_k_entry(teacher, e, opts).model_ctx(format!("teacher_logits: example {} of {}", i + 1, data.examples.len()))?;
        journal.append(&Entry { key: key.clone(), ..entry })?;
        done.insert(key);
        computed += 1;
    }
    let complete = data.examples.iter().all(|e| done.contains(&example_key(e)));
    Ok(LogitsReport {
        dir: dir.display().to_string(),
        examples: data.examples.len(),
        computed,
        complete,
        positions,
        top_k: opts.top_k,
        temperature: opts.temperature,
        max_len: opts.max_len,
    })
}

/// The teacher's top-k (id, log-prob at T) at each response position of one example, the
/// highest first (ties: the lower id).
fn top_k_entry(teacher: &Student, e: &TrainExample, opts: &LogitsOptions) -> candle_core::Result<Entry> {
    let dev = &teacher.model.device;
    let ids = Tensor::new(e.ids.as_slice(), dev)?.unsqueeze(0)?;
    let hidden = teacher.model.hidden(&ids)?.squeeze(0)?;
    let pos: Vec<u32> = (e.prompt_len - 1..e.ids.len() - 1).map(|p| p as u32).collect();
    let h = hidden.index_select(&Tensor::new(pos.as_slice(), dev)?, 0)?;
    let logits: Vec<Vec<f32>> = teacher.model.logits(&h)?.detach().to_dtype(DType::F32)?.to_vec2()?;
    let (mut top_ids, mut top_lp) = (Vec::new(), Vec::new());
    for row in logits {
        let t = opts.temperature;
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64 / t));
        let lse = m + row.iter().map(|&x| (x as f64 / t - m).exp()).sum::<f64>().ln();
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = opts.top_k.min(row.len());
        let by = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        idx.select_nth_unstable_by(k - 1, by);
        idx.truncate(k);
        idx.sort_by(by);
        top_lp.extend(idx.iter().map(|&i| (row[i as usize] as f64 / t - lse) as f32));
        top_ids.extend(idx);
    }
    Ok(Entry { key: String::new(), prompt_len: e.prompt_len, ids: top_ids, logprobs: top_lp })
}
