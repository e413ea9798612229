//! Zero-shot evaluation of a student on a test set, the paper's way by default: the question in
//! the paper evaluator's prompt for the student's template ([`ChatTemplate::paper_eval`]), up to
//! the paper's token limit (1024 new tokens for math, 640 for commonsense), greedy decoding,
//! judged by the `paper` protocol ([`crate::answer::Protocol`]; the other protocol's accuracy is
//! reported too, from the same outputs), accuracy with a 95% Wilson interval. The eval dir holds
//! cotlab's journal `samples.jsonl` (what resume reads), its report `results.json` and
//! `samples.parquet`, and the same evaluation in lm-eval's layout (`results_<timestamp>.json`,
//! `samples_<task>_<timestamp>.jsonl`, written by [`super::lmeval`], the one owner of that layout)
//! once every answer is in. Samples are appended as answers complete (in dataset order), so an interrupted evaluation resumes
//! where it stopped and never generates an answer twice. The eval dir's identity
//! (`eval_config.json`) names the weights (their fingerprint, and a run's checkpoint step) and
//! the questions (count and hash), so it resumes only the same evaluation; one
//! process at a time holds its lock ([`DirLock`]).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::lmeval;
use super::{CONFIG_FILE, RESULTS_FILE, SAMPLES_FILE};
use crate::answer::Protocol;
use crate::data::{Dataset, Task};
use crate::error::{ModelContext, Result};
use crate::frame::{ColumnData, Frame};
use crate::journal::{ensure_identity, Journal};
use crate::model::generate::{generate_batched, Finish, GenOptions};
use crate::model::{ChatTemplate, DecodeWeights, Student};
use crate::paths::{is_real_dir, DirLock};
use crate::train::run::RunDir;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalOptions {
    /// Prompts decoding at once (continuous batching); `None`: [`default_batch_size`]. Not part
    /// of the eval dir's identity: a prompt decodes the same alone or in a batch.
    pub batch_size: Option<usize>,
    /// `None`: the paper's limit for the task ([`crate::data::Task::paper_max_new_tokens`]:
    /// 1024 for math, 640 for commonsense).
    pub max_new_tokens: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Which rules score the outputs (default `paper`).
    pub protocol: Protocol,
    /// Which prompt wraps the question (default `paper`).
    pub prompt: PromptStyle,
    /// Beam width; default (`None`) the paper's: 5 for the commonsense tasks, 1 (greedy) otherwise
    /// (see [`paper_beams`]). Reported resolved in `results.json`.
    pub beams: Option<usize>,
    /// The weights decoding reads: "auto" (default), "f32", "bf16", "q8_0" or "q4_1" (see
    /// [`DecodeWeights`]). Part of the eval dir's identity (other weights, other outputs).
    #[serde(skip_serializing_if = "DecodeWeights::is_auto")]
    pub decode_weights: DecodeWeights,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: None,
            max_new_tokens: None,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            protocol: Protocol::Paper,
            prompt: PromptStyle::Paper,
            beams: None,
            decode_weights: DecodeWeights::Auto,
        }
    }
}

crate::choices! {
    /// The prompt an evaluation gives the student: the paper evaluator's own prompt for the
    /// student's template (`paper`, [`ChatTemplate::paper_eval`]), the training template's prompt
    /// (`train`, what `sft` trained on) or the model's own Jinja chat template with the generation
    /// prompt (`model`, as transformers' `apply_chat_template` renders it).
    #[derive(Default)]
    pub enum PromptStyle("prompt") {
        #[default]
        Paper = "paper",
        Train = "train",
        Model = "model",
    }
}

impl PromptStyle {
    /// The template that wraps each question of `task` for `student`; `model` is an error for a
    /// student whose model declares no chat template.
    pub fn template(self, student: &Student, task: crate::data::Task) -> Result<ChatTemplate> {
        Ok(match self {
            PromptStyle::Paper => student.template.paper_eval(task.evaluator()),
            PromptStyle::Train => student.template.clone(),
            PromptStyle::Model => ChatTemplate::Model(student.own_template()?),
        })
    }
}

/// The paper's beam width per task: its evaluator for CSQA, OBQA and StrategyQA
/// (`Evaluation/reasoning_eval/run_reasoning.py`) decodes with vLLM
/// `SamplingParams(temperature=0, use_beam_search=True, best_of=5)`; the math tasks go through
/// MAmmoTH's greedy decoding. A user set follows the evaluator its kind picks.
pub fn paper_beams(task: Task) -> usize {
    match task.evaluator() {
        crate::answer::Evaluator::Commonsense => 5,
        crate::answer::Evaluator::Math => 1,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub id: String,
    pub question: String,
    pub gold: String,
    pub generated: String,
    pub extracted: Option<String>,
    pub correct: bool,
    pub tokens: usize,
    pub finish: Finish,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EvalReport {
    pub task: String,
    pub split: String,
    pub model: String,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
    pub unparsed: usize,
    /// Generations that hit `max_new_tokens` (`finish: length` in the samples).
    #[serde(default)]
    pub truncated: usize,
    /// Of those, generations cut inside a `<think>` trace: no answer, so unparsed under both
    /// protocols ([`crate::answer::think`]).
    #[serde(default)]
    pub truncated_in_thinking: usize,
    pub mean_tokens: f64,
    /// Share of generations cut at `max_new_tokens` ([`truncated_frac`]).
    #[serde(default)]
    pub truncated_frac: f64,
    /// Generated tokens per correct answer ([`tokens_per_correct`]; null with none correct).
    #[serde(default)]
    pub tokens_per_correct: Option<f64>,
    /// Samples generated by this invocation (the rest were already in the eval dir).
    pub generated_now: usize,
    pub seconds: f64,
    pub eval_dir: String,
    /// The protocol `correct`/`accuracy`/`unparsed` are under.
    pub protocol: Protocol,
    /// The same outputs judged by each protocol (one of them is `accuracy`).
    pub accuracy_paper: f64,
    pub accuracy_lenient: f64,
    /// The generation limit used (the option, else the paper's for the task).
    pub max_new_tokens: usize,
    /// The weights this invocation decoded with, `options.decode_weights` resolved (`auto`
    /// picks per model, see [`DecodeWeights::Auto`]): `f32`, `bf16`, `q8_0` or `q4_1`.
    pub decoded_with: DecodeWeights,
    /// The exact prompt around a question: `{before}` + question + `{after}`.
    pub prompt_template: String,
    /// Which template made it ([`ChatTemplate::label`]; empty in results from before it was recorded).
    #[serde(default)]
    pub template: String,
    pub options: EvalOptions,
}

/// The share of `n` generations that hit the token limit (0 for none).
pub fn truncated_frac(truncated: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        truncated as f64 / n as f64
    }
}

/// What a correct answer costs in generated tokens: all generated tokens over the correct
/// answers (`None` with no correct answer: the cost is unbounded, not 0).
pub fn tokens_per_correct(mean_tokens: f64, n: usize, correct: usize) -> Option<f64> {
    (correct > 0).then(|| mean_tokens * n as f64 / correct as f64)
}

/// Wilson score interval for k successes of n at 95%.
pub fn wilson95(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.959_963_984_540_054);
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / den;
    let clean = |x: f64| if x.abs() < 1e-12 { 0.0 } else { x };
    let hi = (centre + half).min(1.0);
    (clean((centre - half).max(0.0)), if (1.0 - hi).abs() < 1e-12 { 1.0 } else { hi })
}

/// The batch size `evaluate` decodes at when none is given: [`DEFAULT_BATCH_ROWS`] cache rows,
/// that is 32 prompts greedy, 6 at beam width 5 (each prompt takes `beams` rows), at least 1.
pub fn default_batch_size(beams: usize) -> usize {
    (DEFAULT_BATCH_ROWS / beams.max(1)).max(1)
}

/// Cache rows decoding at once by default. Batched decoding reads each weight once for all rows,
/// so throughput grows with the batch until the products become compute-bound; 32 rows of the
/// paper's 1024-token answers keep the KV cache of a 135M student under 2 GB.
pub const DEFAULT_BATCH_ROWS: usize = 32;

/// The options as they identify an eval dir: all but `batch_size`, which changes the schedule,
/// not the answers.
fn identity_options(opts: &EvalOptions) -> serde_json::Value {
    let mut v = serde_json::to_value(opts).expect("options serialise");
    v.as_object_mut().expect("options are a map").remove("batch_size");
    v
}

/// Eval dirs from before the batch size left the identity hold theirs: it is carried over, so
/// they resume at any batch size. (An unreadable file is left to `ensure_identity` to report.)
fn carry_legacy_batch_size(path: &Path, settings: &mut serde_json::Value) {
    let old = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    if let Some(b) = old.as_ref().and_then(|o| o.pointer("/options/batch_size")) {
        settings["options"]["batch_size"] = b.clone();
    }
}

pub fn evaluate(student: &Student, ds: &Dataset, opts: &EvalOptions, dir: &Path) -> Result<EvalReport> {
    let max_new_tokens = opts.max_new_tokens.unwrap_or_else(|| ds.task.paper_max_new_tokens());
    // The beam width and batch size resolved, so the report names what ran.
    let beams = opts.beams.unwrap_or_else(|| paper_beams(ds.task));
    let batch_size = opts.batch_size.unwrap_or_else(|| default_batch_size(beams));
    crate::error::in_range("evaluate", "batch_size", batch_size, 1..=4096)?;
    if opts.batch_size.is_none() {
        eprintln!("[eval] batch {batch_size} (default for {})", if student.model.device.is_cpu() { "cpu" } else { "gpu" });
    }
    let opts = &EvalOptions { beams: Some(beams), batch_size: Some(batch_size), ..opts.clone() };
    let gen = GenOptions {
        max_new_tokens,
        temperature: opts.temperature,
        top_p: opts.top_p,
        seed: opts.seed,
        stop: Vec::new(),
        ignore_eos: false,
        beams: opts.beams.unwrap_or(1),
        decode_weights: opts.decode_weights,
    };
    // Checked before the eval dir is made.
    gen.validate("evaluate")?;
    let evaluator = ds.task.evaluator();
    let template = opts.prompt.template(student, ds.task)?;
    // The same weights, prompted with the evaluation's template.
    let prompted = student.with_template(template.clone());
    let prompt_template = template.prompt("{question}")?;
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    // One evaluation at a time per eval dir: two would both generate the missing answers.
    let _lock = DirLock::take(dir, "evaluating into")?;
    // Taken here (generation joins it) to know what `auto` resolves to; dropped after decoding.
    let weights = student.model.decode_weights(opts.decode_weights).model_ctx("making the decoding copy of the weights")?;
    let decoded_with = weights.mode();
    let mut settings = serde_json::json!({
        "task": ds.name,
        "split": ds.split,
        "model": student.source.display().to_string(),
        "weights": weights_identity(student)?,
        "examples": examples_identity(ds),
        "options": identity_options(opts),
        "max_new_tokens": max_new_tokens,
        "template": template,
    });
    carry_legacy_batch_size(&dir.join(CONFIG_FILE), &mut settings);
    // `auto` resolved to weights that change an f32 model's answers (bf16) is other outputs: part
    // of the identity, so an f32 eval dir never gets bf16 answers appended. Its exact choices
    // (f32, Q4_1 on the grid) leave the identity as it was.
    if opts.decode_weights.is_auto() && decoded_with == DecodeWeights::Bf16 && student.model.compute_dtype() == candle_core::DType::F32 {
        settings["auto_decode_weights"] = "bf16".into();
    }
    ensure_identity(&dir.join(CONFIG_FILE), &settings, "an evaluation with other settings")?;
    // A line torn by a crash is dropped (that example is generated again). An id journaled twice
    // (by a build without the dir lock) counts once.
    let (journal, mut samples) = Journal::<Sample>::open(&dir.join(SAMPLES_FILE))?;
    let mut seen = HashSet::new();
    samples.retain(|s| seen.insert(s.id.clone()));
    let done: HashSet<String> = samples.iter().map(|s| s.id.clone()).collect();
    let todo: Vec<_> = ds.examples.iter().filter(|e| !done.contains(&e.id)).collect();
    if !done.is_empty() {
        eprintln!("resuming {}: {} of {} already evaluated", dir.display(), ds.len() - todo.len(), ds.len());
    }
    let mut generated_now = 0;
    let loop_start = Instant::now();
    let qs: Vec<String> = todo.iter().map(|e| e.question.clone()).collect();
    // Answers end out of order (continuous batching); they are journaled in dataset order, as
    // soon as every earlier one is in, so the files match a batch-by-batch run's. An interrupted
    // run regenerates only those not yet journaled.
    let mut ready: Vec<Option<Sample>> = vec![None; todo.len()];
    let mut reported = 0;
    if !todo.is_empty() {
        eprintln!("[eval] decoding with {} weights{}", decoded_with.name(), if opts.decode_weights.is_auto() { " (auto)" } else { "" });
    }
    generate_batched(&prompted, &qs, &gen, batch_size, &mut |i, g| {
        let e = todo[i];
        let j = opts.protocol.judge(&g.text, &e.answer, e.kind, evaluator);
        ready[i] = Some(Sample {
            id: e.id.clone(),
            question: e.question.clone(),
            gold: e.answer.clone(),
            generated: g.text,
            extracted: j.extracted,
            correct: j.correct,
            tokens: g.tokens,
            finish: g.finish,
        });
        while let Some(s) = ready.get_mut(generated_now).and_then(Option::take) {
            journal.append(&s)?;
            samples.push(s);
            generated_now += 1;
        }
        if generated_now >= reported + batch_size || (generated_now == todo.len() && generated_now > reported) {
            reported = generated_now;
            let el = loop_start.elapsed().as_secs_f64();
            let acc = samples.iter().filter(|s| s.correct).count() as f64 / samples.len() as f64;
            eprintln!(
                "[eval] {}/{} acc {:.3} {:.1} s/example eta {:.0}s",
                samples.len(),
                ds.len(),
                acc,
                el / generated_now as f64,
                el / generated_now as f64 * (todo.len() - generated_now) as f64
            );
        }
        Ok(())
    })?;
    drop(weights);
    let run =
        Finished { generated_now, seconds: started.elapsed().as_secs_f64(), max_new_tokens, prompt_template, template, started: started_at, decoded_with };
    write_report(student, ds, opts, dir, &samples, run)
}

/// What one invocation of [`evaluate`] did, for its report.
struct Finished {
    generated_now: usize,
    seconds: f64,
    max_new_tokens: usize,
    prompt_template: String,
    /// The template that wrapped each question.
    template: ChatTemplate,
    started: std::time::SystemTime,
    decoded_with: DecodeWeights,
}

/// Score the journaled samples of `ds`, write `results.json`, `samples.parquet` and the
/// lm-eval pair.
fn write_report(student: &Student, ds: &Dataset, opts: &EvalOptions, dir: &Path, samples: &[Sample], run: Finished) -> Result<EvalReport> {
    let evaluator = ds.task.evaluator();
    // Only this dataset's examples count (the file may hold the same ids only).
    let ids: HashSet<&str> = ds.examples.iter().map(|e| e.id.as_str()).collect();
    let scored: Vec<&Sample> = samples.iter().filter(|s| ids.contains(s.id.as_str())).collect();
    let n = scored.len();
    let correct = scored.iter().filter(|s| s.correct).count();
    let (lo, hi) = wilson95(correct, n);
    let kinds: std::collections::HashMap<&str, _> = ds.examples.iter().map(|e| (e.id.as_str(), e.kind)).collect();
    let accuracy_under = |p: Protocol| -> f64 {
        let k = scored.iter().filter(|s| p.judge(&s.generated, &s.gold, kinds[s.id.as_str()], evaluator).correct).count();
        if n == 0 {
            0.0
        } else {
            k as f64 / n as f64
        }
    };
    let truncated = scored.iter().filter(|s| s.finish == Finish::Length).count();
    // `+ 0.0`: an empty f64 sum is -0.0, which would print as "-0".
    let mean_tokens = scored.iter().map(|s| s.tokens as f64).sum::<f64>() / n.max(1) as f64 + 0.0;
    let report = EvalReport {
        task: ds.name.clone(),
        split: ds.split.clone(),
        model: student.source.display().to_string(),
        n,
        correct,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        ci95_low: lo,
        ci95_high: hi,
        unparsed: scored.iter().filter(|s| s.extracted.is_none()).count(),
        truncated,
        truncated_in_thinking: scored.iter().filter(|s| s.finish == Finish::Length && !crate::answer::think::split_think(&s.generated).closed).count(),
        mean_tokens,
        truncated_frac: truncated_frac(truncated, n),
        tokens_per_correct: tokens_per_correct(mean_tokens, n, correct),
        generated_now: run.generated_now,
        seconds: run.seconds,
        eval_dir: dir.display().to_string(),
        protocol: opts.protocol,
        accuracy_paper: accuracy_under(Protocol::Paper),
        accuracy_lenient: accuracy_under(Protocol::Lenient),
        max_new_tokens: run.max_new_tokens,
        decoded_with: run.decoded_with,
        prompt_template: run.prompt_template.clone(),
        template: run.template.label(),
        options: opts.clone(),
    };
    let rp = dir.join(RESULTS_FILE);
    crate::paths::write(&rp, serde_json::to_string_pretty(&report).unwrap().as_bytes())?;
    samples_frame(&scored)?.write_parquet(&dir.join("samples.parquet"))?;
    write_lm_eval(student, ds, &report, dir, &scored, &run)?;
    Ok(report)
}

/// The evaluation in lm-eval's layout ([`super::lmeval`]): every sample judged by each protocol.
fn write_lm_eval(student: &Student, ds: &Dataset, report: &EvalReport, dir: &Path, scored: &[&Sample], run: &Finished) -> Result<()> {
    let evaluator = ds.task.evaluator();
    let index: std::collections::HashMap<&str, usize> = ds.examples.iter().enumerate().map(|(i, e)| (e.id.as_str(), i)).collect();
    let judged: Vec<lmeval::Judged> = scored
        .iter()
        .map(|s| -> Result<lmeval::Judged> {
            let e = &ds.examples[index[s.id.as_str()]];
            let by_protocol = Protocol::ALL
                .iter()
                .map(|p| {
                    let j = p.judge(&s.generated, &s.gold, e.kind, evaluator);
                    (*p, j.extracted, j.correct)
                })
                .collect();
            Ok(lmeval::Judged {
                doc_id: index[s.id.as_str()],
                id: &s.id,
                question: &s.question,
                choices: &e.choices,
                gold: &s.gold,
                prompt: run.template.prompt(&s.question)?,
                generated: &s.generated,
                tokens: s.tokens,
                finish: s.finish.name(),
                by_protocol,
            })
        })
        .collect::<Result<_>>()?;
    let m = &student.model;
    let eos = m.config.eos_token_id.map(|id| (crate::model::eos_text(&student.tokenizer, Some(id)), id));
    let info = lmeval::RunInfo {
        task: &ds.name,
        split: &ds.split,
        model: &report.model,
        prompt_template: &report.prompt_template,
        protocol: report.protocol,
        batch_size: report.options.batch_size.unwrap_or(0),
        max_new_tokens: report.max_new_tokens,
        temperature: report.options.temperature,
        top_p: report.options.top_p,
        beams: report.options.beams.unwrap_or(1),
        seed: report.options.seed,
        limit: ds.subset.map(|(n, _)| n),
        original: ds.len(),
        num_params: m.num_params(),
        dtype: format!("{:?}", m.compute_dtype()).to_lowercase(),
        device: if m.device.is_cpu() { "cpu".into() } else { format!("{:?}", m.device.location()).to_lowercase() },
        max_length: m.config.max_position_embeddings,
        eos,
        started: run.started,
        seconds: run.seconds,
        report: serde_json::to_value(report).unwrap_or_default(),
    };
    lmeval::write_pair(dir, &info, &judged)?;
    Ok(())
}

/// What the evaluated weights are, so an eval dir never resumes with other weights: the
/// fingerprint of the weights in memory ([`Student::weights_fingerprint`]: a student trained in
/// place since, or another file at the same path, is another one), and for a run its checkpoint
/// step (the message then says which step each side holds).
fn weights_identity(student: &Student) -> Result<serde_json::Value> {
    let sha256 = student.weights_fingerprint()?;
    let run = RunDir::new(&student.source);
    if is_real_dir(&run.checkpoint()) {
        return Ok(serde_json::json!({"step": run.state()?.step, "sha256": sha256}));
    }
    Ok(serde_json::json!({"sha256": sha256}))
}

/// Which questions the eval dir holds: their count and a hash of every (id, question, gold), so
/// another subset, limit or `arith` seed never appends to this one.
fn examples_identity(ds: &Dataset) -> serde_json::Value {
    let h = ds.examples.iter().fold(crate::rng::FNV_OFFSET, |h, e| {
        crate::rng::fnv1a(h, e.id.bytes().chain([0]).chain(e.question.bytes()).chain([0]).chain(e.answer.bytes()).chain([1]))
    });
    serde_json::json!({"n": ds.examples.len(), "fnv1a": format!("{h:016x}")})
}

fn samples_frame(s: &[&Sample]) -> Result<Frame> {
    let col = |f: &dyn Fn(&Sample) -> String| ColumnData::Str(s.iter().map(|x| Some(f(x))).collect());
    Frame::from_columns(vec![
        ("id".into(), col(&|x| x.id.clone())),
        ("question".into(), col(&|x| x.question.clone())),
        ("gold".into(), col(&|x| x.gold.clone())),
        ("generated".into(), col(&|x| x.generated.clone())),
        ("extracted".into(), ColumnData::Str(s.iter().map(|x| x.extracted.clone()).collect())),
        ("correct".into(), ColumnData::Bool(s.iter().map(|x| Some(x.correct)).collect())),
        ("tokens".into(), ColumnData::Int(s.iter().map(|x| Some(x.tokens as i64)).collect())),
        ("finish".into(), col(&|x| x.finish.name().to_string())),
        ("truncated".into(), ColumnData::Bool(s.iter().map(|x| Some(x.finish == Finish::Length)).collect())),
    ])
}
