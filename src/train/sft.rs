//! Supervised fine-tuning with the paper's recipe as the default: full fine-tuning, lr 5e-5,
//! 3 epochs, cosine schedule without warm-up, global batch 64 (micro-batch × accumulation),
//! max grad norm 1.0, loss on the response tokens only.
//!
//! The loss of an optimizer step is the sum of response-token NLL over the whole accumulation
//! window divided by the window's response-token count (tokens, not batches), so micro-batches
//! of different lengths weigh what their tokens weigh. A [`BatchLoss`] (on-policy distillation)
//! replaces the NLL and may replace a micro-batch's examples; its loss is normalised the same way,
//! over the tokens of the examples actually trained on.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWConfig};
use super::data::{tokenize, Tokenized, TrainExample};
use super::kd::{kd_loss_rows, KdOptions, Store};
use super::pack::Packing;
use super::run::{RunDir, TrainState};
use crate::data::Corpus;
use crate::error::{ModelContext, Result};
use crate::journal::Journal;
use crate::model::lora::LoraConfig;
use crate::model::Student;
use crate::rng::Rng;
use crate::track::{flat_params, LogTo, RunRecord, Target, Tracker};
use crate::usage;

crate::choices! {
    /// The learning-rate schedule after warm-up.
    #[derive(Default)]
    pub enum Schedule("schedule") {
        #[default]
        Cosine = "cosine",
        Linear = "linear",
        Constant = "constant",
    }
}

crate::choices! {
    /// A named recipe. Only the paper's exists: it is the default, named for clarity in scripts.
    #[derive(Default)]
    pub enum Preset("preset") {
        #[default]
        Paper = "paper",
    }
}

pub use super::data::{corpus_fingerprint, PAPER_CUTOFF_LEN};
/// The paper's training seed: `seed: 100` in the same configs.
pub const PAPER_SEED: u64 = 100;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SftOptions {
    pub preset: Preset,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Micro-batch size (sequences per forward pass).
    pub batch_size: usize,
    /// Micro-batches per optimizer step; global batch = batch_size × grad_accum.
    pub grad_accum: usize,
    /// Tokens per example (prompt + response); longer responses are cut (the paper: 4096).
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
    /// Shuffle the examples each epoch (seeded). Off: the corpus order is kept (a curriculum;
    /// `sft` turns it off for an ordered corpus). Written to a run's identity only when off, so
    /// runs made before the option existed still resume.
    #[serde(skip_serializing_if = "is_true")]
    pub shuffle: bool,
    /// Pack each micro-batch's examples into as few rows as fit (rows of up to
    /// [`PACK_ROW_TOKENS`], filled evenly), each example at its own positions and seeing only itself:
    /// the same loss and gradients as right-padding (`tests`: within f32 rounding; LoRA dropout
    /// draws its masks over the laid-out tokens, so those differ), fewer tokens computed. Off:
    /// pad every example to the longest. Written to a run's identity only when off, so runs
    /// made before the option existed still resume.
    #[serde(skip_serializing_if = "is_true")]
    pub pack: bool,
    /// Token-level KD from stored teacher logits (see `train::kd`): part of the run's identity
    /// when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd: Option<KdOptions>,
    /// Where the run is also logged: `tensorboard`, `mlflow` (see [`crate::track`]). Never
    /// serialised: where a run is logged is no part of its identity, so turning it on resumes.
    #[serde(skip_serializing)]
    pub log_to: LogTo,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            preset: Preset::Paper,
            epochs: 3.0,
            max_steps: None,
            lr: 5e-5,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            batch_size: 4,
            grad_accum: 16,
            max_len: PAPER_CUTOFF_LEN,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: PAPER_SEED,
            group_by_length: false,
            save_every: 50,
            lora: None,
            shuffle: true,
            pack: true,
            kd: None,
            log_to: LogTo::default(),
        }
    }
}

impl SftOptions {
    /// Every numeric option in a range that trains (and cannot overflow a step count or an
    /// allocation); the error names the option and its range.
    pub fn validate(&self) -> Result<()> {
        use crate::error::in_range;
        const S: &str = "sft";
        in_range(S, "epochs", self.epochs, 1e-6..=1000.0)?;
        if let Some(m) = self.max_steps {
            in_range(S, "max_steps", m, 1..=Self::MAX_STEPS)?;
        }
        in_range(S, "lr", self.lr, 1e-12..=1.0)?;
        in_range(S, "warmup_steps", self.warmup_steps, 0..=Self::MAX_STEPS)?;
        in_range(S, "batch_size", self.batch_size, 1..=4096)?;
        in_range(S, "grad_accum", self.grad_accum, 1..=65_536)?;
        in_range(S, "max_len", self.max_len, 8..=131_072)?;
        in_range(S, "max_grad_norm", self.max_grad_norm, 0.0..=1e6)?;
        in_range(S, "weight_decay", self.weight_decay, 0.0..=1.0)?;
        in_range(S, "save_every", self.save_every, 1..=Self::MAX_STEPS)?;
        if let Some(l) = &self.lora {
            in_range("sft lora", "r", l.r, 1..=4096)?;
            in_range("sft lora", "alpha", l.alpha, 1e-6..=1e6)?;
            in_range("sft lora", "dropout", l.dropout, 0.0..=0.99)?;
        }
        if let Some(k) = &self.kd {
            k.validate()?;
        }
        Ok(())
    }

    /// More optimizer steps than any run on any machine will make; a bound keeps the example
    /// schedule (one index per example seen) finite.
    pub const MAX_STEPS: usize = 10_000_000;
    /// Examples in a run's schedule (steps × global batch): 800 MB of indices at most.
    pub const MAX_SCHEDULED_EXAMPLES: usize = 100_000_000;

    /// Learning rate after `step` completed steps (for step `step + 1`).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (total - self.warmup_steps).max(1) as f64;
        let p = (step - self.warmup_steps) as f64 / span;
        match self.schedule {
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Schedule::Linear => self.lr * (1.0 - p),
            Schedule::Constant => self.lr,
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
    /// How `max_len` cut this run's corpus (its level), also in the run dir's `truncation.json`.
    pub truncation: Truncation,
    /// Loss of each optimizer step of this invocation (after a resume: only the new steps).
    pub losses: Vec<f64>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

/// How `max_len` cut the training data of one corpus (one teacher, level and format).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Truncation {
    /// The corpus: "<dataset> <teacher> level <L> <format>" (what its rationales share).
    pub label: String,
    pub level: Option<u8>,
    pub max_len: usize,
    /// Examples trained on (after drops).
    pub examples: usize,
    /// Examples whose response was cut.
    pub truncated: usize,
    /// Cut examples that lost their final "The answer is …" sentence.
    pub answer_lost: usize,
    /// Examples dropped: the prompt alone filled `max_len`.
    pub dropped: usize,
    /// Examples whose rationale states an answer ("The answer is").
    pub with_answer: usize,
    /// The longest example in tokens before the cut.
    pub longest: usize,
}

impl Truncation {
    fn new(data: &Tokenized, max_len: usize, corpus: &Corpus) -> Truncation {
        let parts: Vec<String> = [
            Some(corpus.task.name().to_string()),
            corpus.teacher.map(|t| t.name().to_string()),
            corpus.level.map(|l| format!("level {l}")),
            Some(corpus.format.name().to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Truncation {
            label: parts.join(" "),
            level: corpus.level,
            max_len,
            examples: data.examples.len(),
            truncated: data.truncated,
            answer_lost: data.answer_lost,
            dropped: data.dropped,
            with_answer: data.with_answer,
            longest: data.longest,
        }
    }

    /// The line the run's console log shows.
    pub fn line(&self) -> String {
        format!(
            "[sft] {}: {} of {} examples cut to max_len {} ({} lost their \"The answer is\"), {} dropped (prompt alone too long); longest {} tokens",
            self.label,
            self.truncated,
            self.examples + self.dropped,
            self.max_len,
            self.answer_lost,
            self.dropped,
            self.longest
        )
    }
}

/// The example order for the whole run: one seeded shuffle per epoch, concatenated, so that
/// step k always sees the same examples (what makes resume exact).
fn schedule_order(examples: &[TrainExample], opts: &SftOptions, total_examples: usize) -> Vec<usize> {
    let n = examples.len();
    let mut order = Vec::with_capacity(total_examples);
    let mut epoch = 0u64;
    while order.len() < total_examples {
        let mut idx: Vec<usize> = (0..n).collect();
        if opts.shuffle {
            Rng::new(opts.seed.wrapping_add(epoch)).shuffle(&mut idx);
        }
        // A kept order is the point of a curriculum: no regrouping by length either.
        if opts.group_by_length && opts.shuffle {
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

/// Sum of response-token NLL for one micro-batch, packed (see [`batch_nll_with`]).
pub fn batch_nll(student: &Student, batch: &[&TrainExample]) -> candle_core::Result<Tensor> {
    batch_nll_with(student, batch, true)
}

/// Sum of response-token NLL for one micro-batch: packed rows (`pack`, see [`Packing`]) or
/// right-padded (the causal mask makes padding invisible to real tokens); padded positions
/// carry no loss either way.
pub fn batch_nll_with(student: &Student, batch: &[&TrainExample], pack: bool) -> candle_core::Result<Tensor> {
    token_nll(student, batch, pack)?.sum_all()
}

/// The student's mean NLL per response token of each example (no training): how hard it finds
/// each rationale. In packed batches of `batch_size`, in the examples' order.
pub fn response_nll(student: &Student, examples: &[TrainExample], batch_size: usize) -> Result<Vec<f64>> {
    crate::error::in_range("response_nll", "batch_size", batch_size, 1..=4096)?;
    let mut out = Vec::with_capacity(examples.len());
    for (i, chunk) in examples.chunks(batch_size).enumerate() {
        let refs: Vec<&TrainExample> = chunk.iter().collect();
        let rows = token_nll(student, &refs, true).and_then(|t| t.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()).model_ctx(format!(
            "scoring examples {}..{}",
            i * batch_size,
            i * batch_size + chunk.len()
        ))?;
        // Rows come example by example, response tokens in order.
        let mut at = 0;
        for e in chunk {
            let k = e.response_tokens();
            let sum: f64 = rows[at..at + k].iter().map(|&x| x as f64).sum();
            out.push(if k == 0 { f64::NAN } else { sum / k as f64 });
            at += k;
        }
    }
    Ok(out)
}

/// Tokens a packed row holds at most (or the longest example, if longer): a micro-batch of
/// short examples becomes one row with no padding. Attention skips the key ranges a sequence
/// cannot see on the CPU, so a long row costs about what its sequences cost apart; the
/// composed ops (CUDA) compute the whole row × row, hence a bound.
pub const PACK_ROW_TOKENS: usize = 1024;

/// How a micro-batch is laid out: packed (`pack`, rows of up to [`PACK_ROW_TOKENS`]) or one
/// padded row per example.
pub fn layout(batch: &[&TrainExample], pack: bool) -> Packing {
    let lengths: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
    if pack {
        Packing::pack(&lengths, PACK_ROW_TOKENS)
    } else {
        Packing::padded(&lengths)
    }
}

/// NLL of every response token of a micro-batch, example by example (whatever the layout).
fn token_nll(student: &Student, batch: &[&TrainExample], pack: bool) -> candle_core::Result<Tensor> {
    let (hidden, targets) = response_hidden(student, batch, pack)?;
    student.model.token_nll(&hidden, &targets)
}

/// The logits (N, V) that predict each response token of a micro-batch and those tokens (N),
/// example by example, response tokens in order (whatever the layout).
pub fn response_logits(student: &Student, batch: &[&TrainExample], pack: bool) -> candle_core::Result<(Tensor, Vec<u32>)> {
    let (hidden, targets) = response_hidden(student, batch, pack)?;
    Ok((student.model.logits(&hidden)?, targets))
}

/// The final hidden states (N, d) whose logits predict each response token of a micro-batch,
/// and those tokens (N), as [`response_logits`] orders them.
fn response_hidden(student: &Student, batch: &[&TrainExample], pack: bool) -> candle_core::Result<(Tensor, Vec<u32>)> {
    let device = &student.model.device;
    let lengths: Vec<usize> = batch.iter().map(|e| e.ids.len()).collect();
    let p = layout(batch, pack);
    let (r, t) = (p.rows, p.width.max(1));
    let seqs: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
    let ids = Tensor::from_vec(p.ids(&seqs), (r, t), device)?;
    // One example per row (nothing packed, or packing off): the plain causal pass, whose mask
    // and positions are shared by every row.
    let hidden = if r == batch.len() {
        student.model.hidden(&ids)?
    } else {
        let (pos, mask) = p.positions_and_mask(&lengths, device)?;
        student.model.hidden_packed(&ids, &pos, &mask)?
    };
    let mut positions = Vec::new(); // flat index of the position whose output predicts a response token
    let mut targets = Vec::new();
    for (e, &(row, off)) in batch.iter().zip(&p.place) {
        for j in e.prompt_len..e.ids.len() {
            positions.push((row * t + off + j - 1) as u32);
            targets.push(e.ids[j]);
        }
    }
    let d = hidden.dim(D::Minus1)?;
    let pos = Tensor::new(positions.as_slice(), device)?;
    let h = hidden.reshape((r * t, d))?.index_select(&pos, 0)?;
    Ok((h, targets))
}

/// A loss that replaces the response-token NLL of a run (on-policy distillation,
/// `train::distill`): it may replace a micro-batch's examples (e.g. by the student's own
/// responses) before its loss is computed. Its identity enters the run's (`config.json` key
/// `loss`), so a run with another loss never resumes into this one.
pub trait BatchLoss {
    /// What makes this loss this one (its options, the teacher's weights).
    fn identity(&self) -> Result<serde_json::Value>;
    /// The examples micro-batch `k` of step `step` (0-based) trains on instead of `mb`, or
    /// `None` to keep `mb`. Called with the step's weights, before any of its backward passes;
    /// a function of (step, k, weights) only, so a resumed run replays it.
    fn examples(&self, student: &Student, step: usize, k: usize, mb: &[&TrainExample]) -> Result<Option<Vec<TrainExample>>>;
    /// The micro-batch's loss summed over its response tokens (differentiable in the student).
    fn loss(&self, student: &Student, mb: &[&TrainExample], pack: bool) -> Result<Tensor>;
}

/// One SFT run, step by step: [`Trainer::new`] tokenizes, lays out the example order and the
/// schedule, builds the optimizer and resumes from the run dir's checkpoint; [`Trainer::step`]
/// makes one optimizer step; [`Trainer::finish`] checkpoints what is not yet saved and reports.
pub struct Trainer<'a> {
    /// The student as given, or its LoRA-wrapped copy (owned here) when `opts.lora` is set.
    base: &'a Student,
    lora: Option<Student>,
    /// The options as given, with `shuffle` off for an ordered corpus (a curriculum).
    opts: SftOptions,
    run: &'a RunDir,
    data: Tokenized,
    truncation: Truncation,
    order: Vec<usize>,
    /// Examples per optimizer step (micro-batch × accumulation).
    global: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    params: Vec<(String, Var)>,
    opt: AdamW,
    state: TrainState,
    resumed_from: Option<usize>,
    /// The step the checkpoint on disk holds.
    saved_step: usize,
    log: Journal<serde_json::Value>,
    losses: Vec<f64>,
    tokens_this_run: u64,
    started: Instant,
    /// The run dir's lock, held as long as the trainer.
    _lock: crate::paths::DirLock,
    /// When the first step of this invocation began (throughput and ETA are measured from it).
    loop_start: Option<Instant>,
    /// The teacher logits of a KD run (`opts.kd`), checked against the student and the data.
    kd: Option<Store>,
    /// A loss other than the NLL ([`BatchLoss`]), e.g. on-policy distillation.
    custom: Option<&'a dyn BatchLoss>,
    /// The run's identity ([`run_config`]): what MLflow records as params and a tag.
    config: serde_json::Value,
    /// The `log_to` sinks, once [`Trainer::track`] opened them; whether completing the run
    /// finishes the MLflow run.
    tracker: Option<(Tracker, bool)>,
}

/// A step's averaged gradients and loss, before clipping.
struct Accumulated {
    grads: Vec<Tensor>,
    loss: f64,
    tokens: u64,
    /// Token positions the forward passes computed (rows × row length, padding included).
    computed: u64,
    /// Micro-batches whose examples a [`BatchLoss`] replaced (none without one).
    replaced: Option<usize>,
}

impl<'a> Trainer<'a> {
    /// Prepare a run of `student` on `corpus`. Resumes from `run`'s checkpoint when it holds
    /// one of the same identity ([`run_config`]); an ordered corpus (a curriculum,
    /// `data::corpus`) is trained in its order, without shuffling.
    pub fn new(student: &'a Student, corpus: &Corpus, opts: &SftOptions, run: &'a RunDir) -> Result<Trainer<'a>> {
        Trainer::with_loss(student, corpus, opts, run, None)
    }

    /// [`Trainer::new`] training on `custom`'s loss (its identity part of the run's).
    pub fn with_loss(student: &'a Student, corpus: &Corpus, opts: &SftOptions, run: &'a RunDir, custom: Option<&'a dyn BatchLoss>) -> Result<Trainer<'a>> {
        opts.validate()?;
        let opts = SftOptions { shuffle: opts.shuffle && !corpus.is_ordered(), ..opts.clone() };
        let mut run_config = run_config(student, corpus, &opts);
        if let Some(c) = custom {
            run_config["loss"] = c.identity()?;
        }
        let lora = match &opts.lora {
            Some(cfg) => Some(student.with_lora(cfg.clone(), opts.seed)?),
            None => None,
        };
        let started = Instant::now();
        let s = lora.as_ref().unwrap_or(student);
        let data = tokenize(&s.tokenizer, &s.template, &corpus.pairs(), opts.max_len)?;
        let truncation = Truncation::new(&data, opts.max_len, corpus);
        eprintln!("{}", truncation.line());
        let kd = match &opts.kd {
            Some(k) => {
                let store = Store::open(Path::new(&k.logits))?;
                store.check(s, opts.max_len, k.temperature, &data.examples)?;
                Some(store)
            }
            None => None,
        };
        let global = opts.batch_size * opts.grad_accum;
        let steps_per_epoch = data.examples.len().div_ceil(global);
        let total_steps = opts.max_steps.unwrap_or(((steps_per_epoch as f64) * opts.epochs).ceil() as usize).max(1);
        let scheduled = total_steps.checked_mul(global).filter(|&n| n <= SftOptions::MAX_SCHEDULED_EXAMPLES).ok_or_else(|| {
            usage!("sft: {total_steps} steps × global batch {global} is more than {} examples: lower epochs or max_steps", SftOptions::MAX_SCHEDULED_EXAMPLES)
        })?;
        let order = schedule_order(&data.examples, &opts, scheduled);

        let params = s.model.trainable_named();
        let vars: Vec<&Var> = params.iter().map(|(_, v)| v).collect();
        let mut opt = AdamW::new(&vars, AdamWConfig { weight_decay: opts.weight_decay, ..Default::default() }).model_ctx("creating the optimizer")?;
        // One trainer per run dir: two would interleave steps and checkpoints. Taken once the
        // options are checked (a refused run leaves no dir), before the run's state is read.
        let lock = crate::paths::DirLock::take(&run.path, "training")?;
        let resumable = run.init(&run_config)?;
        let tp = run.truncation_path();
        crate::paths::write(&tp, serde_json::to_string_pretty(&truncation).unwrap().as_bytes())?;
        let mut state = TrainState { step: 0, total_steps, adam_t: 0, tokens_seen: 0 };
        let mut resumed_from = None;
        if resumable {
            let named: Vec<(&String, &Var)> = params.iter().map(|(n, v)| (n, v)).collect();
            state = run.load(&named, &mut opt, &s.model.device)?;
            if state.total_steps != total_steps {
                return Err(usage!("checkpoint in {} was made for {} steps, this run has {}", run.path.display(), state.total_steps, total_steps));
            }
            resumed_from = Some(state.step);
            eprintln!("resuming {} at step {}/{}", run.path.display(), state.step, total_steps);
        }
        // Log lines past the checkpoint come from a crash after logging but before saving: they
        // are redone, so they go (all of them when there is no checkpoint yet).
        let (log, _) = run.open_log()?;
        let step = state.step;
        log.retain(|line| line["step"].as_u64().is_some_and(|s| s as usize <= step))?;
        Ok(Trainer {
            _lock: lock,
            base: student,
            lora,
            opts,
            run,
            data,
            truncation,
            order,
            global,
            steps_per_epoch,
            total_steps,
            params,
            opt,
            saved_step: state.step,
            state,
            resumed_from,
            log,
            losses: Vec::new(),
            tokens_this_run: 0,
            started,
            loop_start: None,
            kd,
            custom,
            config: run_config,
            tracker: None,
        })
    }

    /// Log every step from now on to the options' `log_to` sinks ([`crate::track`]), in
    /// `tracking`'s MLflow experiment; nothing without `log_to`.
    pub fn track(&mut self, tracking: &Tracking) -> Result<()> {
        if self.opts.log_to.is_empty() {
            return Ok(());
        }
        let mut record = RunRecord { params: flat_params(&self.config), tags: run_tags(&self.config, self.opts.seed) };
        record.params.extend(tracking.extra.params.iter().cloned());
        record.tags.extend(tracking.extra.tags.iter().cloned());
        let from = Some(self.state.step as u64);
        let tracker = Tracker::open(&self.opts.log_to, &self.run.track_files(), &tracking.target, from, &record)?;
        self.tracker = Some((tracker, tracking.finish_with_training));
        Ok(())
    }

    /// The student being trained (the LoRA-wrapped copy when training adapters).
    pub fn student(&self) -> &Student {
        self.lora.as_ref().unwrap_or(self.base)
    }

    /// Optimizer steps completed, resumed ones included.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.total_steps
    }

    /// The examples of optimizer step `step` (0-based), in micro-batch order: what
    /// [`Trainer::step`] trains on then (`bench job` hands them to the PyTorch side).
    pub fn window(&self, step: usize) -> Vec<&TrainExample> {
        let (from, to) = ((step * self.global).min(self.order.len()), ((step + 1) * self.global).min(self.order.len()));
        self.order[from..to].iter().map(|&i| &self.data.examples[i]).collect()
    }

    fn vars(&self) -> Vec<&Var> {
        self.params.iter().map(|(_, v)| v).collect()
    }

    /// One optimizer step: accumulate the micro-batches, check the loss, clip, update, log, and
    /// checkpoint when due. Returns the step's loss.
    pub fn step(&mut self) -> Result<f64> {
        if self.is_done() {
            return Err(usage!("the run in {} is complete: all {} steps are done", self.run.path.display(), self.total_steps));
        }
        let loop_start = *self.loop_start.get_or_insert_with(Instant::now);
        let acc = self.accumulate()?;
        let loss = acc.loss;
        if !loss.is_finite() {
            return Err(usage!(
                "loss is {loss} at step {}: training diverged (lower lr, check the data); the last good checkpoint is in {}",
                self.state.step + 1,
                self.run.checkpoint().display()
            ));
        }
        let (grad_norm, scale) = self.clip(&acc.grads)?;
        let lr = self.opts.lr_at(self.state.step, self.total_steps);
        let vars: Vec<&Var> = self.params.iter().map(|(_, v)| v).collect();
        self.opt.step(&vars, &acc.grads, lr, scale).model_ctx(format!("optimizer step {}", self.state.step + 1))?;
        self.state.step += 1;
        self.state.adam_t = self.opt.t;
        self.state.tokens_seen += acc.tokens;
        self.tokens_this_run += acc.tokens;
        self.losses.push(loss);
        self.log_step(loss, lr, grad_norm, &acc, loop_start)?;
        if self.state.step % self.opts.save_every.max(1) == 0 || self.state.step == self.total_steps {
            self.checkpoint()?;
        }
        Ok(loss)
    }

    /// Forward and backward over the step's window, micro-batch by micro-batch. The loss of each
    /// micro-batch is divided by the whole window's response tokens, so the summed gradients
    /// are those of the window's token-mean loss.
    fn accumulate(&self) -> Result<Accumulated> {
        let step = self.state.step;
        let student = self.student();
        let (window, replaced) = self.micro_batches(step)?;
        let micro: Vec<Vec<&TrainExample>> = window
            .iter()
            .zip(&replaced)
            .map(|(mb, r)| match r {
                Some(new) => new.iter().collect(),
                None => mb.clone(),
            })
            .collect();
        let window_tokens: usize = micro.iter().flatten().map(|e| e.response_tokens()).sum();
        let vars = self.vars();
        // The projections' and the embedding's gradients are summed in place by their backward
        // (see `GradSink`); the rest (norms, LoRA adapters) come through candle's store.
        let sink = crate::kernels::ops::GradSink::open(vars.iter().map(|v| v.as_tensor()));
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut nll_sum = 0.0;
        let mut computed = 0u64;
        for (k, mb) in micro.iter().enumerate() {
            let mb = mb.as_slice();
            computed += layout(mb, self.opts.pack).computed_tokens() as u64;
            let what = || format!("step {} micro-batch {}", step + 1, k + 1);
            if let Some(l) = &student.model.lora {
                // Dropout masks depend on (seed, step, micro-batch) only: resume draws the same.
                l.set_dropout_key(self.opts.seed.wrapping_mul(0x9E37_79B9).wrapping_add((step * 4096 + k) as u64));
            }
            let nll = self.batch_loss(mb, &what())?;
            let loss = (&nll / window_tokens as f64).model_ctx(format!("loss, {}", what()))?;
            let g = loss.backward().model_ctx(format!("backward pass, {}", what()))?;
            nll_sum += nll.to_dtype(DType::F64).and_then(|x| x.to_scalar::<f64>()).model_ctx(format!("reading the loss, {}", what()))?;
            for (slot, v) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(v) {
                    // candle leaves a Var's gradient attached to the op that made it (e.g. the
                    // matmul with this micro-batch's activations), so a kept gradient keeps the
                    // micro-batch's whole forward graph alive: detached, each micro-batch's
                    // activations go when it ends, not at the end of the step (otherwise the
                    // peak grows by gigabytes per micro-batch).
                    let gv = gv.detach();
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv).model_ctx(format!("accumulating gradients, {}", what()))?,
                        None => gv,
                    });
                }
            }
        }
        let grads = grads
            .into_iter()
            .zip(&vars)
            .enumerate()
            .map(|(i, (g, v))| sink.gradient(i, v.as_tensor(), g))
            .collect::<candle_core::Result<_>>()
            .model_ctx(format!("summing gradients, step {}", step + 1))?;
        let tokens = micro.iter().flatten().map(|e| e.ids.len() as u64).sum();
        let replaced = self.custom.map(|_| replaced.iter().filter(|r| r.is_some()).count());
        Ok(Accumulated { grads, loss: nll_sum / window_tokens as f64, tokens, computed, replaced })
    }

    /// Step `step`'s micro-batches, and the examples a [`BatchLoss`] puts in place of each (all
    /// computed before any backward pass: the step's weights throughout).
    #[allow(clippy::type_complexity)]
    fn micro_batches(&self, step: usize) -> Result<(Vec<Vec<&TrainExample>>, Vec<Option<Vec<TrainExample>>>)> {
        let window: Vec<Vec<&TrainExample>> = self.window(step).chunks(self.opts.batch_size).map(|c| c.to_vec()).collect();
        let Some(custom) = self.custom else {
            let none = vec![None; window.len()];
            return Ok((window, none));
        };
        let student = self.student();
        if let Some(l) = &student.model.lora {
            // No dropout while the student answers: what it generates depends on its weights only.
            l.set_dropout_key(u64::MAX);
        }
        let replaced = window.iter().enumerate().map(|(k, mb)| custom.examples(student, step, k, mb)).collect::<Result<_>>()?;
        Ok((window, replaced))
    }

    /// The summed loss of one micro-batch: response-token NLL, or with `kd` the KD loss
    /// ([`kd_loss_rows`]) over the same positions.
    fn batch_loss(&self, mb: &[&TrainExample], what: &str) -> Result<Tensor> {
        if let Some(c) = self.custom {
            return c.loss(self.student(), mb, self.opts.pack);
        }
        let (Some(store), Some(k)) = (&self.kd, &self.opts.kd) else {
            return batch_nll_with(self.student(), mb, self.opts.pack).model_ctx(format!("forward pass, {what}"));
        };
        let (logits, targets) = response_logits(self.student(), mb, self.opts.pack).model_ctx(format!("forward pass, {what}"))?;
        let (ids, p) = store.rows(mb, logits.device())?;
        kd_loss_rows(&logits, &targets, &ids, &p, k.alpha, k.temperature).model_ctx(format!("KD loss, {what}"))
    }

    /// The global gradient norm and the factor that clips it to `max_grad_norm`.
    fn clip(&self, grads: &[Tensor]) -> Result<(f64, f64)> {
        let mut sq = 0.0f64;
        for g in grads {
            sq += g
                .sqr()
                .and_then(|x| x.sum_all())
                .and_then(|x| x.to_dtype(DType::F64))
                .and_then(|x| x.to_scalar::<f64>())
                .model_ctx(format!("gradient norm, step {}", self.state.step + 1))?;
        }
        let grad_norm = sq.sqrt();
        let max = self.opts.max_grad_norm;
        Ok((grad_norm, if max > 0.0 && grad_norm > max { max / (grad_norm + 1e-6) } else { 1.0 }))
    }

    fn log_step(&mut self, loss: f64, lr: f64, grad_norm: f64, acc: &Accumulated, loop_start: Instant) -> Result<()> {
        let step = self.state.step;
        let elapsed = loop_start.elapsed().as_secs_f64();
        let tps = self.tokens_this_run as f64 / elapsed.max(1e-9);
        let eta = elapsed / self.losses.len() as f64 * (self.total_steps - step) as f64;
        let mut line = serde_json::json!({
            "step": step, "epoch": step as f64 / self.steps_per_epoch as f64, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens": self.state.tokens_seen, "tokens_per_s": tps, "elapsed_s": elapsed,
            // This step's token positions computed, padding included (`pack` lowers it).
            "computed_tokens": acc.computed,
        });
        if let Some(r) = acc.replaced {
            // On-policy distillation: the micro-batches the student answered itself.
            line["on_policy_batches"] = r.into();
        }
        self.log.append(&line)?;
        if let Some((t, _)) = &mut self.tracker {
            t.scalars(step as u64, &[("train/loss", loss), ("train/lr", lr), ("train/grad_norm", grad_norm), ("train/tokens_per_s", tps)])?;
        }
        // Line-mode progress: readable in terminals, CI logs and notebooks alike.
        eprintln!("[sft] step {}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s eta {:.0}s", step, self.total_steps, loss, lr, grad_norm, tps, eta);
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let named: Vec<(&String, &Var)> = self.params.iter().map(|(n, v)| (n, v)).collect();
        self.run.save(&named, &self.opt, &self.state)?;
        self.saved_step = self.state.step;
        Ok(())
    }

    /// Checkpoint the steps made since the last save, and report this invocation.
    pub fn finish(mut self) -> Result<SftReport> {
        if self.saved_step != self.state.step {
            self.checkpoint()?;
        }
        if let Some(l) = &self.student().model.lora {
            l.set_dropout_key(u64::MAX);
        }
        let loop_s = self.loop_start.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        if let Some((t, true)) = &self.tracker {
            if self.state.step >= self.total_steps {
                t.finish()?;
            }
        }
        Ok(SftReport {
            run_dir: self.run.path.display().to_string(),
            steps: self.state.step,
            total_steps: self.total_steps,
            resumed_from: self.resumed_from,
            examples: self.data.examples.len(),
            truncated: self.data.truncated,
            dropped: self.data.dropped,
            truncation: self.truncation.clone(),
            first_loss: self.losses.first().copied(),
            last_loss: self.losses.last().copied(),
            losses: self.losses,
            tokens_per_s: self.tokens_this_run as f64 / loop_s.max(1e-9),
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Fine-tune `student` on `corpus` (see [`Trainer::new`]). Resumes from `run`'s checkpoint
/// when it holds one of the same identity. `stop_after` ends this invocation after that many
/// steps (a time-boxed slice of a longer run, e.g. a cluster job); it is not part of the run's
/// identity.
pub fn sft(student: &Student, corpus: &Corpus, opts: &SftOptions, run: &RunDir, stop_after: Option<usize>) -> Result<SftReport> {
    sft_tracked(student, corpus, opts, run, stop_after, &Tracking::beside(run))
}

/// Where `log_to` logs a run (see [`crate::track`]): the MLflow experiment and run name, the
/// params and tags the caller adds (a sweep: the point's config), and whether completing the
/// training finishes the MLflow run (a sweep point finishes it after its evaluation).
#[derive(Clone, Debug)]
pub struct Tracking {
    pub target: Target,
    pub extra: RunRecord,
    pub finish_with_training: bool,
}

impl Tracking {
    /// A plain run: experiment `cotlab` in `mlruns/` beside the run dir, named as its dir.
    pub fn beside(run: &RunDir) -> Tracking {
        let parent = run.path.parent().unwrap_or(std::path::Path::new("."));
        let name = run.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        Tracking {
            target: Target { mlruns: parent.join("mlruns"), experiment: "cotlab".into(), run_name: name },
            extra: RunRecord::default(),
            finish_with_training: true,
        }
    }
}

/// The MLflow tags of a training run: its config, seed and the cotlab build.
fn run_tags(config: &serde_json::Value, seed: u64) -> Vec<(String, String)> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    [
        ("cotlab.config", config.to_string()),
        ("cotlab.seeds", serde_json::json!({ "sft": seed }).to_string()),
        ("cotlab.git_commit", crate::provenance::git_commit().to_string()),
        ("mlflow.source.git.commit", crate::provenance::git_commit().to_string()),
        ("mlflow.source.name", "cotlab".to_string()),
        ("mlflow.source.type", "LOCAL".to_string()),
        ("mlflow.user", user),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// [`sft`] logging to `opts.log_to` as `tracking` says.
pub fn sft_tracked(student: &Student, corpus: &Corpus, opts: &SftOptions, run: &RunDir, stop_after: Option<usize>, tracking: &Tracking) -> Result<SftReport> {
    let mut t = Trainer::new(student, corpus, opts, run)?;
    t.track(tracking)?;
    record_provenance(student, run, opts)?;
    let stop_at = stop_after.map(|k| (t.state().step + k).min(t.total_steps())).unwrap_or(t.total_steps());
    while t.state().step < stop_at {
        t.step()?;
    }
    t.finish()
}

/// Append this invocation's build, model hash and seed to `provenance.jsonl` in the run dir (one
/// line per invocation: a run resumed by another build shows both).
fn record_provenance(student: &Student, run: &RunDir, opts: &SftOptions) -> Result<()> {
    let mut seeds = serde_json::Map::new();
    seeds.insert("sft".into(), opts.seed.into());
    // A student built in code (tests, random-weight benches) has no file to hash.
    let model: Vec<std::path::PathBuf> = std::iter::once(&student.source).filter(|p| p.exists()).cloned().collect();
    let p = crate::provenance::Provenance::new(&model, &[], seeds)?;
    let (log, _) = Journal::<crate::provenance::Provenance>::open(&run.provenance_path())?;
    log.append(&p)
}

/// What identifies a run on disk (`runs/<name>/config.json`): the base model, the options, and
/// the training data down to a fingerprint of every (question, rationale) pair. Resuming
/// requires the same identity.
pub fn run_config(student: &Student, corpus: &Corpus, opts: &SftOptions) -> serde_json::Value {
    let fingerprint = corpus_fingerprint(corpus);
    let mut v = serde_json::json!({
        "model": student.source.display().to_string(),
        // The chat template trained with (a base model may have none of its own, or another):
        // `load_run_on` restores it.
        "template": student.template,
        "options": opts,
        "data": {
            "dataset": corpus.task.name(),
            "teacher": corpus.teacher.map(|t| t.name()),
            "level": corpus.level,
            "format": corpus.format.name(),
            "source": corpus.source,
            "examples": corpus.len(),
            "fingerprint": fingerprint,
        },
    });
    // Only a combined corpus has one: runs on one file keep the identity they always had.
    if let Some(r) = &corpus.recipe {
        v["data"]["recipe"] = r.text.clone().into();
    }
    v
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::{Family, ModelConfig};

    fn config(family: Family) -> ModelConfig {
        let bloom = family == Family::Bloom;
        ModelConfig {
            family,
            hidden_act: match family {
                Family::Llama | Family::Qwen2 | Family::Qwen3 => "silu",
                _ => "gelu_pytorch_tanh",
            }
            .into(),
            head_dim: None,
            rope_llama3: None,
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: if bloom { 128 } else { 48 },
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: if bloom { 4 } else { 2 },
            rms_norm_eps: 1e-5,
            rope_theta: if bloom { 0.0 } else { 10_000.0 },
            max_position_embeddings: 256,
            tie_word_embeddings: bloom || family == Family::Gemma,
            attention_bias: family == Family::Qwen2 || bloom,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// A random student whose weights (biases and norms too) are large enough that attention
    /// is far from uniform: a wrong position or a leaking mask then moves the loss well past
    /// the tolerance.
    fn student(family: Family, seed: u64) -> Student {
        let s = crate::model::random::random_student_with(config(family), family.name(), "none", &Device::Cpu, seed).unwrap();
        let mut rng = Rng::new(seed);
        for (n, v) in s.params() {
            let base = if n.contains("norm") || n.contains("ln_f") {
                if n.ends_with("bias") {
                    0.0
                } else {
                    1.0
                }
            } else {
                0.0
            };
            let vals: Vec<f32> = (0..v.elem_count()).map(|_| base + ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * 0.3).collect();
            v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        s
    }

    /// Examples of quite different lengths (3 to 41 tokens), prompts of 1 to 9 tokens.
    fn examples(seed: u64) -> Vec<TrainExample> {
        let mut rng = Rng::new(seed);
        [41, 6, 17, 3, 25, 9, 12, 30]
            .iter()
            .enumerate()
            .map(|(i, &n)| TrainExample { ids: (0..n).map(|_| (rng.next_u64() % 97) as u32).collect(), prompt_len: 1 + i % n.min(9) })
            .collect()
    }

    /// max |a − b| relative to max(|b|, 1e-3): the tensors agree to f32 rounding.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        d / scale
    }

    /// Packed and padded micro-batches: the same NLL token by token, the same summed loss, the
    /// same gradient for every trainable tensor.
    fn packed_equals_padded(s: &Student, what: &str) {
        let ex = examples(3);
        let batch: Vec<&TrainExample> = ex.iter().collect();
        let packed = layout(&batch, true);
        assert!(packed.rows < batch.len(), "{what}: nothing packed");
        let nll_packed = token_nll(s, &batch, true).unwrap();
        let nll_padded = token_nll(s, &batch, false).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (nll_packed.to_vec1().unwrap(), nll_padded.to_vec1().unwrap());
        assert_eq!(a.len(), batch.iter().map(|e| e.response_tokens()).sum::<usize>());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: token {i}: packed NLL {x}, padded {y}");
        }
        let (sa, sb) = (nll_packed.sum_all().unwrap(), nll_padded.sum_all().unwrap());
        let (la, lb) = (sa.to_scalar::<f32>().unwrap(), sb.to_scalar::<f32>().unwrap());
        assert!((la - lb).abs() <= 1e-5 * lb.abs(), "{what}: summed loss {la} packed, {lb} padded");
        let (ga, gb) = (sa.backward().unwrap(), sb.backward().unwrap());
        let params = s.model.trainable_named();
        assert!(!params.is_empty());
        for (n, v) in &params {
            let (x, y) = (ga.get(v).unwrap_or_else(|| panic!("{what}: packed: no gradient for {n}")), gb.get(v).unwrap());
            let r = rel_diff(x, y);
            assert!(r < 1e-4, "{what}: gradient of {n} differs by {r} (relative)");
        }
    }

    #[test]
    fn packed_loss_and_gradients_equal_padded_for_every_family() {
        for &family in Family::ALL {
            packed_equals_padded(&student(family, 11), family.name());
        }
    }

    #[test]
    fn packed_lora_gradients_equal_padded() {
        for (family, targets) in [(Family::Llama, vec!["q_proj", "v_proj", "down_proj"]), (Family::Bloom, vec!["query_key_value", "dense_4h_to_h"])] {
            let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, targets: targets.into_iter().map(String::from).collect() };
            let s = student(family, 5).with_lora(cfg, 1).unwrap();
            // B starts at zero (A's gradient too): give it values so both gradients are real.
            let mut rng = Rng::new(9);
            for (_, b) in s.model.lora.as_ref().unwrap().adapters.values() {
                let vals: Vec<f32> = (0..b.elem_count()).map(|_| ((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * 0.2).collect();
                b.set(&Tensor::from_vec(vals, b.shape(), &Device::Cpu).unwrap()).unwrap();
            }
            packed_equals_padded(&s, &format!("{} + LoRA", family.name()));
        }
    }

    /// A skewed micro-batch (one long example, several short ones) computes far fewer tokens
    /// packed, and no layout ever computes more than padding.
    #[test]
    fn packing_cuts_rows_and_computed_tokens() {
        let batch = |lens: &[usize]| -> Vec<TrainExample> { lens.iter().map(|&n| TrainExample { ids: vec![5; n], prompt_len: 1 }).collect() };
        let ex = batch(&[200, 40, 60, 30, 50, 20, 70, 10]);
        let refs: Vec<&TrainExample> = ex.iter().collect();
        let (packed, padded) = (layout(&refs, true), layout(&refs, false));
        assert_eq!((padded.rows, padded.computed_tokens()), (8, 1600));
        // 480 real tokens: one row of 480, no padding.
        assert_eq!((packed.rows, packed.computed_tokens()), (1, 480));
        // More than a row holds: rows filled evenly up to PACK_ROW_TOKENS.
        let ex = batch(&[300, 200, 100, 250, 150, 50, 280, 20]);
        let refs: Vec<&TrainExample> = ex.iter().collect();
        let p = layout(&refs, true);
        assert_eq!((p.rows, p.width), (2, 680));
        // Equal lengths: padding wastes nothing, and packing cannot beat it.
        let ex = batch(&[300; 7]);
        let refs: Vec<&TrainExample> = ex.iter().collect();
        assert_eq!(layout(&refs, true), layout(&refs, false));
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let lens: Vec<usize> = (0..1 + rng.next_u64() % 16).map(|_| 1 + (rng.next_u64() % 300) as usize).collect();
            let ex = batch(&lens);
            let refs: Vec<&TrainExample> = ex.iter().collect();
            let (p, q) = (layout(&refs, true), layout(&refs, false));
            assert!(p.computed_tokens() <= q.computed_tokens() && p.computed_tokens() >= lens.iter().sum::<usize>(), "{lens:?}");
        }
    }

    /// `log_to` is read, never written: a run's identity is the same with it as without.
    #[test]
    fn log_to_is_read_but_no_part_of_the_identity() {
        let logged: SftOptions = serde_json::from_value(serde_json::json!({"log_to": ["tensorboard", "mlflow"]})).unwrap();
        assert_eq!(logged.log_to, LogTo(vec![crate::track::Sink::Tensorboard, crate::track::Sink::Mlflow]));
        assert_eq!(serde_json::to_value(&logged).unwrap(), serde_json::to_value(SftOptions::default()).unwrap());
    }

    /// `pack` defaults to on and, like `shuffle`, enters a run's identity only when off.
    #[test]
    fn pack_option_defaults_on_and_serialises_only_when_off() {
        let on = SftOptions::default();
        assert!(on.pack);
        let v = serde_json::to_value(&on).unwrap();
        assert!(v.get("pack").is_none());
        let back: SftOptions = serde_json::from_value(v).unwrap();
        assert!(back.pack);
        let off = serde_json::to_value(SftOptions { pack: false, ..Default::default() }).unwrap();
        assert_eq!(off["pack"], false);
        assert!(!serde_json::from_value::<SftOptions>(off).unwrap().pack);
    }
}
