//! On-policy token-level knowledge distillation from a live teacher ([`distill`]), as TRL's
//! `GKDTrainer` does it: for a share `lmbda` of micro-batches the student answers the batch's
//! prompts itself, the teacher and the student are then run teacher-forced over prompt +
//! response, and the loss at the response positions is the generalized JSD of TRL's
//! `generalized_jsd_loss`; the other micro-batches use the corpus's responses with the same loss.
//!
//! Invariants:
//! * The loss at a response position, with `s`, `t` the log-softmax of the student's and the
//!   teacher's logits divided by `temperature`, over the FULL vocabulary: `beta = 0` the
//!   forward `KL(t ‖ s)`, `beta = 1` the reverse `KL(s ‖ t)`, else
//!   `beta·KL(t ‖ m) + (1 − beta)·KL(s ‖ m)` with `m = log((1 − beta)·e^s + beta·e^t)` computed
//!   as a log-sum-exp ([`generalized_jsd_rows_sum`]; no `T²` factor, as in TRL). The teacher's
//!   logits carry no gradient.
//! * A step's loss is the sum over its window's response positions divided by their number (the
//!   generated responses' tokens where the student answered), as `sft` normalises its NLL.
//! * Which micro-batches are on-policy is a seeded function of (`seed`, step, micro-batch), and
//!   sampling is seeded by the same and each prompt: a run resumed from its checkpoint replays
//!   the same choices and answers, so its loss curve is the uninterrupted one.
//! * The run's identity (`config.json`) is `sft`'s plus `loss`: every option here, the teacher's
//!   path, weights fingerprint and vocabulary. Teacher and student share a vocabulary
//!   ([`check_same_vocab`]), else nothing runs.

use std::cell::Cell;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::data::TrainExample;
use super::kd::{check_same_vocab, Vocab};
use super::run::RunDir;
use super::sft::{response_logits, BatchLoss, SftOptions, SftReport, Tracking, Trainer};
use crate::data::Corpus;
use crate::error::{ModelContext, Result};
use crate::journal::Journal;
use crate::model::generate::{generate_ids, stop_ids, GenOptions};
use crate::model::transformer::DecodeWeights;
use crate::model::Student;
use crate::rng::Rng;
use crate::usage;

/// `distill`'s own options (the rest are `sft`'s).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DistillOptions {
    /// The JSD's interpolation: 0 forward KL(teacher ‖ student), 1 reverse KL.
    pub beta: f64,
    /// Share of micro-batches whose responses the student generates.
    pub lmbda: f64,
    /// Longest generated response (cut further to the run's `max_len`).
    pub max_new_tokens: usize,
    /// Divides both models' logits in the loss; the student samples at it.
    pub temperature: f64,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions { beta: 0.5, lmbda: 0.5, max_new_tokens: 128, temperature: 1.0 }
    }
}

impl DistillOptions {
    /// The keys these options take (the rest of a `distill` options map is `sft`'s).
    pub const KEYS: &'static [&'static str] = &["beta", "lmbda", "max_new_tokens", "temperature"];

    pub fn validate(&self) -> Result<()> {
        use crate::error::in_range;
        in_range("distill", "beta", self.beta, 0.0..=1.0)?;
        in_range("distill", "lmbda", self.lmbda, 0.0..=1.0)?;
        in_range("distill", "max_new_tokens", self.max_new_tokens, 1..=131_072)?;
        in_range("distill", "temperature", self.temperature, 1e-3..=100.0)?;
        Ok(())
    }
}

/// Sum over rows of TRL's generalized JSD between the student's (N, V) and the teacher's
/// (N, V) logits at `temperature` (see the module head). Differentiable in `student`.
pub fn generalized_jsd_rows_sum(student: &Tensor, teacher: &Tensor, beta: f64, temperature: f64) -> candle_core::Result<Tensor> {
    let s = candle_nn::ops::log_softmax(&(student.to_dtype(DType::F32)? / temperature)?, D::Minus1)?;
    let t = candle_nn::ops::log_softmax(&(teacher.detach().to_dtype(DType::F32)? / temperature)?, D::Minus1)?;
    // KL(p ‖ q) from log-probabilities, as `F.kl_div(q, p, log_target=True)` summed.
    let kl = |p: &Tensor, q: &Tensor| (p.exp()? * (p - q)?)?.sum_all();
    if beta == 0.0 {
        return kl(&t, &s);
    }
    if beta == 1.0 {
        return kl(&s, &t);
    }
    let (a, b) = ((&s + (1.0 - beta).ln())?, (&t + beta.ln())?);
    // log(e^a + e^b) shifted by the larger: the shift cancels in value and gradient, so it
    // carries none.
    let top = a.maximum(&b)?.detach();
    let m = ((((&a - &top)?.exp()? + (&b - &top)?.exp()?)?.log()?) + &top)?;
    (kl(&t, &m)? * beta)? + (kl(&s, &m)? * (1.0 - beta))?
}

/// Whether micro-batch `k` of step `step` is on-policy: a draw seeded by (`seed`, step, k).
pub fn on_policy(seed: u64, step: usize, k: usize, lmbda: f64) -> bool {
    Rng::new(draw_seed(seed, step, k)).chance(lmbda)
}

fn draw_seed(seed: u64, step: usize, k: usize) -> u64 {
    crate::rng::fnv1a(crate::rng::FNV_OFFSET, seed.to_le_bytes().into_iter().chain((step as u64).to_le_bytes()).chain((k as u64).to_le_bytes()))
}

/// What [`distill`] returns: `sft`'s report and how much the student generated in this
/// invocation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DistillReport {
    #[serde(flatten)]
    pub sft: SftReport,
    /// Micro-batches trained on the student's own responses (this invocation).
    pub on_policy_batches: usize,
    /// Micro-batches trained on the corpus's responses (this invocation).
    pub corpus_batches: usize,
    /// Response tokens the student generated (this invocation).
    pub generated_tokens: usize,
}

/// The generalized JSD against a live teacher, over the student's own responses for a share
/// `lmbda` of micro-batches ([`BatchLoss`]).
struct OnPolicy<'t> {
    teacher: &'t Student,
    opts: DistillOptions,
    seed: u64,
    max_len: usize,
    on_policy: Cell<usize>,
    corpus: Cell<usize>,
    generated: Cell<usize>,
}

impl BatchLoss for OnPolicy<'_> {
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "method": "distill",
            "options": self.opts,
            "teacher": self.teacher.source.display().to_string(),
            "teacher_fingerprint": self.teacher.weights_fingerprint()?,
            "teacher_vocab": Vocab::of(self.teacher),
        }))
    }

    fn examples(&self, student: &Student, step: usize, k: usize, mb: &[&TrainExample]) -> Result<Option<Vec<TrainExample>>> {
        if !on_policy(self.seed, step, k, self.opts.lmbda) {
            self.corpus.set(self.corpus.get() + 1);
            return Ok(None);
        }
        let prompts: Vec<Vec<u32>> = mb.iter().map(|e| e.ids[..e.prompt_len].to_vec()).collect();
        let gen = GenOptions {
            max_new_tokens: self.opts.max_new_tokens,
            temperature: self.opts.temperature,
            seed: draw_seed(self.seed, step, k),
            // The student's own distribution, not a quantized copy's.
            decode_weights: DecodeWeights::F32,
            ..GenOptions::default()
        };
        let answers = generate_ids(student, &prompts, &stop_ids(student), &gen)?;
        let mut out = Vec::with_capacity(mb.len());
        for (mut ids, d) in prompts.into_iter().zip(answers) {
            let prompt_len = ids.len();
            // `tokenize` kept every prompt at least a token shorter than max_len.
            let room = self.max_len.saturating_sub(prompt_len).max(1);
            ids.extend(d.ids.into_iter().take(room));
            self.generated.set(self.generated.get() + ids.len() - prompt_len);
            out.push(TrainExample { ids, prompt_len });
        }
        self.on_policy.set(self.on_policy.get() + 1);
        Ok(Some(out))
    }

    fn loss(&self, student: &Student, mb: &[&TrainExample], pack: bool) -> Result<Tensor> {
        // The teacher first, its graph dropped at once: only its logits stay alive beside the
        // student's forward graph.
        let t = {
            let (t, _) = response_logits(self.teacher, mb, pack).model_ctx("distill: the teacher's forward pass")?;
            t.detach()
        };
        let (s, _) = response_logits(student, mb, pack).model_ctx("distill: the student's forward pass")?;
        let t = t.to_device(s.device()).model_ctx("distill: the teacher's logits to the student's device")?;
        generalized_jsd_rows_sum(&s, &t, self.opts.beta, self.opts.temperature).model_ctx("distill: the generalized JSD")
    }
}

/// Distil `teacher` into `student` on `corpus` (see the module head) in `run`, as `sft` trains
/// (schedule, optimizer, checkpoints, resume, `train_log.jsonl`, `log_to`); `stop_after` ends
/// this invocation after that many steps.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    student: &Student,
    teacher: &Student,
    corpus: &Corpus,
    opts: &DistillOptions,
    sft: &SftOptions,
    run: &RunDir,
    stop_after: Option<usize>,
    tracking: &Tracking,
) -> Result<DistillReport> {
    opts.validate()?;
    if sft.kd.is_some() {
        return Err(usage!("distill: 'kd' is offline KD from stored logits; distill computes its teacher's logits live: drop 'kd'"));
    }
    check_same_vocab(&teacher.source.display().to_string(), &Vocab::of(teacher), &student.source.display().to_string(), &Vocab::of(student))?;
    let loss =
        OnPolicy { teacher, opts: opts.clone(), seed: sft.seed, max_len: sft.max_len, on_policy: Cell::new(0), corpus: Cell::new(0), generated: Cell::new(0) };
    let mut t = Trainer::with_loss(student, corpus, sft, run, Some(&loss))?;
    t.track(tracking)?;
    record_provenance(student, teacher, run, sft.seed)?;
    let stop_at = stop_after.map(|k| (t.state().step + k).min(t.total_steps())).unwrap_or(t.total_steps());
    while t.state().step < stop_at {
        t.step()?;
    }
    let sft = t.finish()?;
    Ok(DistillReport { sft, on_policy_batches: loss.on_policy.get(), corpus_batches: loss.corpus.get(), generated_tokens: loss.generated.get() })
}

/// Append this invocation's build, both models' hashes and the seed to `provenance.jsonl`.
fn record_provenance(student: &Student, teacher: &Student, run: &RunDir, seed: u64) -> Result<()> {
    let mut seeds = serde_json::Map::new();
    seeds.insert("sft".into(), seed.into());
    // Models built in code (tests) have no file to hash.
    let models: Vec<std::path::PathBuf> = [&student.source, &teacher.source].into_iter().filter(|p| p.exists()).cloned().collect();
    let p = crate::provenance::Provenance::new(&models, &[], seeds)?;
    let (log, _) = Journal::<crate::provenance::Provenance>::open(&run.provenance_path())?;
    log.append(&p)
}
