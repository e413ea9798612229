//! Supervised fine-tuning with the paper's recipe as the default: full fine-tuning, lr 5e-5,
//! 3 epochs, cosine schedule without warm-up, global batch 64 (micro-batch × accumulation),
//! max grad norm 1.0, loss on the response tokens only.
//!
//! The loss of an optimizer step is the sum of response-token NLL over the whole accumulation
//! window divided by the window's response-token count (tokens, not batches), so micro-batches
//! of different lengths weigh what their tokens weigh.

use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWConfig};
use super::data::{tokenize, TrainExample};
use super::run::{RunDir, TrainState};
use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::model::Student;
use crate::rng::Rng;
use crate::usage;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SftOptions {
    /// Only "paper" exists: it is the default recipe, named for clarity in scripts.
    pub preset: String,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    pub lr: f64,
    /// "cosine", "linear" or "constant".
    pub schedule: String,
    pub warmup_steps: usize,
    /// Micro-batch size (sequences per forward pass).
    pub batch_size: usize,
    /// Micro-batches per optimizer step; global batch = batch_size × grad_accum.
    pub grad_accum: usize,
    pub max_len: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// Batch sequences of similar length together (less padding).
    pub group_by_length: bool,
    /// Checkpoint every N optimizer steps (and always at the end).
    pub save_every: usize,
    /// Train LoRA adapters instead of every weight: #{r, alpha, dropout, targets}.
    pub lora: Option<LoraConfig>,
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            preset: "paper".into(),
            epochs: 3.0,
            max_steps: None,
            lr: 5e-5,
            schedule: "cosine".into(),
            warmup_steps: 0,
            batch_size: 4,
            grad_accum: 16,
            max_len: 512,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 42,
            group_by_length: false,
            save_every: 50,
            lora: None,
        }
    }
}

impl SftOptions {
    pub fn validate(&self) -> Result<()> {
        if self.preset != "paper" {
            return Err(usage!("unknown preset '{}': the only preset is \"paper\"", self.preset));
        }
        if !matches!(self.schedule.as_str(), "cosine" | "linear" | "constant") {
            return Err(usage!("schedule must be cosine, linear or constant, got '{}'", self.schedule));
        }
        if self.batch_size == 0 || self.grad_accum == 0 || self.max_len < 8 || self.lr <= 0.0 || self.epochs <= 0.0 {
            return Err(usage!("batch_size, grad_accum, lr and epochs must be positive and max_len >= 8"));
        }
        Ok(())
    }

    /// Learning rate after `step` completed steps (for step `step + 1`).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (total - self.warmup_steps).max(1) as f64;
        let p = (step - self.warmup_steps) as f64 / span;
        match self.schedule.as_str() {
            "cosine" => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            "linear" => self.lr * (1.0 - p),
            _ => self.lr,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SftReport {
    pub run_dir: String,
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_from: Option<usize>,
    pub examples: usize,
    pub truncated: usize,
    pub dropped: usize,
    /// Loss of each optimizer step of this invocation (after a resume: only the new steps).
    pub losses: Vec<f64>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

fn ce(e: candle_core::Error) -> Error {
    Error::usage(format!("training: {e}"))
}

/// The example order for the whole run: one seeded shuffle per epoch, concatenated, so that
/// step k always sees the same examples (what makes resume exact).
fn schedule_order(examples: &[TrainExample], opts: &SftOptions, total_examples: usize) -> Vec<usize> {
    let n = examples.len();
    let mut order = Vec::with_capacity(total_examples);
    let mut epoch = 0u64;
    while order.len() < total_examples {
        let mut idx: Vec<usize> = (0..n).collect();
        Rng::new(opts.seed.wrapping_add(epoch)).shuffle(&mut idx);
        if opts.group_by_length {
            // Sort by length inside windows of 50 micro-batches: similar lengths share a batch
            // while the order across windows stays random.
            let w = opts.batch_size * 50;
            for chunk in idx.chunks_mut(w) {
                chunk.sort_by_key(|&i| std::cmp::Reverse(examples[i].ids.len()));
            }
        }
        order.extend(idx);
        epoch += 1;
    }
    order.truncate(total_examples);
    order
}

/// Sum of response-token NLL for one micro-batch (right-padded; the causal mask makes padding
/// invisible to real tokens, and padded positions carry no loss).
pub fn batch_nll(student: &Student, batch: &[&TrainExample]) -> candle_core::Result<Tensor> {
    let device = &student.model.device;
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let b = batch.len();
    let mut ids = vec![0u32; b * t];
    let mut positions = Vec::new(); // flat index of the position whose output predicts a response token
    let mut targets = Vec::new();
    for (r, e) in batch.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        for j in e.prompt_len..e.ids.len() {
            positions.push((r * t + j - 1) as u32);
            targets.push(e.ids[j]);
        }
    }
    let ids = Tensor::from_vec(ids, (b, t), device)?;
    let hidden = student.model.hidden(&ids)?;
    let d = hidden.dim(D::Minus1)?;
    let pos = Tensor::new(positions.as_slice(), device)?;
    let h = hidden.reshape((b * t, d))?.index_select(&pos, 0)?;
    let logits = student.model.logits(&h)?;
    crate::model::ops::cross_entropy_rows(&logits, &targets)?.sum_all()
}

/// Fine-tune `student` on (question, rationale) pairs. Resumes from `run`'s checkpoint when it
/// holds one of the same config. `stop_after` ends this invocation after that many steps (a
/// time-boxed slice of a longer run, e.g. a cluster job); it is not part of the run's config.
pub fn sft(
    student: &Student,
    pairs: &[(String, String)],
    opts: &SftOptions,
    run: &RunDir,
    run_config: serde_json::Value,
    stop_after: Option<usize>,
) -> Result<SftReport> {
    opts.validate()?;
    let lora_student;
    let student = match &opts.lora {
        Some(cfg) => {
            lora_student = student.with_lora(cfg.clone(), opts.seed)?;
            &lora_student
        }
        None => student,
    };
    let started = Instant::now();
    let data = tokenize(&student.tokenizer, &student.template, pairs, opts.max_len)?;
    if data.truncated > 0 || data.dropped > 0 {
        eprintln!(
            "note: {} of {} examples truncated to max_len {} ({} dropped: prompt alone too long)",
            data.truncated,
            pairs.len(),
            opts.max_len,
            data.dropped
        );
    }
    let n = data.examples.len();
    let global = opts.batch_size * opts.grad_accum;
    let steps_per_epoch = n.div_ceil(global);
    let total_steps = opts.max_steps.unwrap_or(((steps_per_epoch as f64) * opts.epochs).ceil() as usize).max(1);
    let order = schedule_order(&data.examples, opts, total_steps * global);

    let owned = student.model.trainable_named();
    let named: Vec<(&String, &Var)> = owned.iter().map(|(n, v)| (n, v)).collect();
    let vars: Vec<&Var> = named.iter().map(|(_, v)| *v).collect();
    let mut opt = AdamW::new(&vars, AdamWConfig { weight_decay: opts.weight_decay, ..Default::default() }).map_err(ce)?;
    let resumable = run.init(&run_config)?;
    let mut state = TrainState { step: 0, total_steps, adam_t: 0, tokens_seen: 0 };
    let mut resumed_from = None;
    if resumable {
        state = run.load(&named, &mut opt, &student.model.device)?;
        if state.total_steps != total_steps {
            return Err(usage!("checkpoint in {} was made for {} steps, this run has {}", run.path.display(), state.total_steps, total_steps));
        }
        run.truncate_log(state.step)?;
        resumed_from = Some(state.step);
        eprintln!("resuming {} at step {}/{}", run.path.display(), state.step, total_steps);
    }

    let mut losses = Vec::new();
    let mut tokens_this_run = 0u64;
    let loop_start = Instant::now();
    let stop_at = stop_after.map(|k| (state.step + k).min(total_steps)).unwrap_or(total_steps);
    while state.step < stop_at {
        let window: Vec<&TrainExample> = order[state.step * global..(state.step + 1) * global].iter().map(|&i| &data.examples[i]).collect();
        let window_tokens: usize = window.iter().map(|e| e.response_tokens()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut nll_sum = 0.0;
        for (k, mb) in window.chunks(opts.batch_size).enumerate() {
            if let Some(l) = &student.model.lora {
                // Dropout masks depend on (seed, step, micro-batch) only: resume draws the same.
                l.set_dropout_key(opts.seed.wrapping_mul(0x9E37_79B9).wrapping_add((state.step * 4096 + k) as u64));
            }
            let nll = batch_nll(student, mb).map_err(ce)?;
            let loss = (&nll / window_tokens as f64).map_err(ce)?;
            let g = loss.backward().map_err(ce)?;
            nll_sum += nll.to_dtype(DType::F64).map_err(ce)?.to_scalar::<f64>().map_err(ce)?;
            for (slot, v) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(v) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv).map_err(ce)?,
                        None => gv.clone(),
                    });
                }
            }
        }
        let loss = nll_sum / window_tokens as f64;
        if !loss.is_finite() {
            return Err(usage!(
                "loss is {loss} at step {}: training diverged (lower lr, check the data); the last good checkpoint is in {}",
                state.step + 1,
                run.checkpoint().display()
            ));
        }
        let grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&vars)
            .map(|(g, v)| g.map(Ok).unwrap_or_else(|| v.zeros_like()))
            .collect::<candle_core::Result<_>>()
            .map_err(ce)?;
        let mut sq = 0.0f64;
        for g in &grads {
            sq += g.sqr().map_err(ce)?.sum_all().map_err(ce)?.to_dtype(DType::F64).map_err(ce)?.to_scalar::<f64>().map_err(ce)?;
        }
        let grad_norm = sq.sqrt();
        let scale = if opts.max_grad_norm > 0.0 && grad_norm > opts.max_grad_norm { opts.max_grad_norm / (grad_norm + 1e-6) } else { 1.0 };
        let lr = opts.lr_at(state.step, total_steps);
        opt.step(&vars, &grads, lr, scale).map_err(ce)?;
        state.step += 1;
        state.adam_t = opt.t;
        state.tokens_seen += window.iter().map(|e| e.ids.len() as u64).sum::<u64>();
        tokens_this_run += window.iter().map(|e| e.ids.len() as u64).sum::<u64>();
        losses.push(loss);
        let elapsed = loop_start.elapsed().as_secs_f64();
        let tps = tokens_this_run as f64 / elapsed.max(1e-9);
        let done_here = losses.len();
        let eta = elapsed / done_here as f64 * (total_steps - state.step) as f64;
        run.append_log(&serde_json::json!({
            "step": state.step, "epoch": state.step as f64 / steps_per_epoch as f64, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens": state.tokens_seen, "tokens_per_s": tps, "elapsed_s": elapsed,
        }))?;
        // Line-mode progress: readable in terminals, CI logs and notebooks alike.
        eprintln!(
            "[sft] step {}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s eta {:.0}s",
            state.step, total_steps, loss, lr, grad_norm, tps, eta
        );
        if state.step % opts.save_every.max(1) == 0 || state.step == stop_at {
            run.save(&named, &opt, &state)?;
        }
    }
    if let Some(l) = &student.model.lora {
        l.set_dropout_key(u64::MAX);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(SftReport {
        run_dir: run.path.display().to_string(),
        steps: state.step,
        total_steps,
        resumed_from,
        examples: n,
        truncated: data.truncated,
        dropped: data.dropped,
        first_loss: losses.first().copied(),
        last_loss: losses.last().copied(),
        losses,
        tokens_per_s: tokens_this_run as f64 / loop_start.elapsed().as_secs_f64().max(1e-9),
        seconds,
    })
}

/// What identifies a run on disk (`runs/<name>/config.json`): the base model, the options, and
/// the training data down to a fingerprint of every (question, rationale) pair. Resuming
/// requires the same identity.
pub fn run_config(student: &Student, corpus: &crate::data::Corpus, opts: &SftOptions) -> serde_json::Value {
    let fingerprint = corpus
        .rationales
        .iter()
        .fold(crate::rng::FNV_OFFSET, |h, r| crate::rng::fnv1a(h, r.question.bytes().chain([0]).chain(r.text.bytes()).chain([1])));
    serde_json::json!({
        "model": student.source.display().to_string(),
        "options": opts,
        "data": {
            "dataset": corpus.task.name(),
            "teacher": corpus.teacher.map(|t| t.name()),
            "level": corpus.level,
            "format": corpus.format.name(),
            "source": corpus.source,
            "examples": corpus.len(),
            "fingerprint": format!("{fingerprint:016x}"),
        },
    })
}
