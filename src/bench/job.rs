//! `cotlab bench job`: the real SFT job (a release corpus, the paper's recipe) timed step by
//! step through the same [`Trainer`](crate::train::Trainer) that `sft` runs, so everything a
//! real run does per step (length-varied micro-batches, response-only loss, accumulation,
//! clipping, the schedule, the train log) is in the numbers; only checkpoints are left out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{cpu_seconds, dtype_name, peak_rss_mb, StudentSpec};
use crate::data::catalog::RationaleQuery;
use crate::data::{Catalog, Corpus, DataDir};
use crate::error::{in_range, Result};
use crate::model::Student;
use crate::train::{RunDir, SftOptions, Trainer};
use crate::usage;

/// What `cotlab bench job` times: `steps` steps of the paper's recipe on the release corpus of
/// `task`, `teacher`, `level`, with this batch (LoRA or full fine-tuning).
#[derive(Clone, Debug)]
pub struct JobBench {
    pub task: String,
    pub teacher: String,
    pub level: i64,
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lora: bool,
    /// Where to write each step's examples and learning rate (JSON) for `benches/torch_job.py`.
    pub save_plan: Option<PathBuf>,
    /// The data dir (None: `$COTLAB_DATA`, then ./datasets).
    pub data_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    /// LoRA or full fine-tuning (the human line's; not in the JSON).
    #[serde(skip)]
    pub lora: bool,
    pub corpus: String,
    pub examples: usize,
    /// Steps timed (after one warm-up step).
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// The compute dtype ("f32", "bf16").
    pub dtype: String,
    /// Tokens of the timed steps' examples (prompt + response, no padding), per step.
    pub tokens_per_step: f64,
    pub step_s: f64,
    pub cpu_s_per_step: f64,
    /// Example tokens per second: padding or any other extra work is not counted.
    pub tokens_per_s: f64,
    pub peak_rss_mb: f64,
    /// Every step's loss, the warm-up's first.
    pub losses: Vec<f64>,
    pub threads: usize,
}

impl super::Report for JobReport {
    /// The human line `cotlab bench job` prints on stderr.
    fn summary(&self) -> String {
        format!(
            "cotlab SFT job on {} ({} examples), {} of {} x {} in {}, {} threads: {:.1} s/step, {:.0} tokens/step, {:.1} tokens/s, {:.1} CPU-s/step, peak RSS {:.0} MB; losses {:?}",
            self.corpus,
            self.examples,
            if self.lora { "LoRA" } else { "full FT" },
            self.batch_size,
            self.grad_accum,
            self.dtype,
            self.threads,
            self.step_s,
            self.tokens_per_step,
            self.tokens_per_s,
            self.cpu_s_per_step,
            self.peak_rss_mb,
            self.losses
        )
    }
}

/// `cotlab bench job`: loads `spec`'s student and the corpus, then times the steps.
pub fn run(spec: &StudentSpec, b: &JobBench) -> Result<JobReport> {
    in_range("bench job", "steps", b.steps, 1..=10_000)?;
    let (s, _) = super::student(spec)?;
    let cat = Catalog::new(DataDir::resolve(b.data_dir.clone()));
    let q = RationaleQuery { teacher: Some(b.teacher.clone()), level: Some(b.level), ..Default::default() };
    let corpus = cat.rationales(&b.task, &q)?;
    let opts = SftOptions {
        batch_size: b.batch_size,
        grad_accum: b.grad_accum,
        lora: b.lora.then(|| crate::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }),
        ..Default::default()
    };
    time_job(&s, &corpus, &opts, b.steps, b.save_plan.as_deref())
}

/// Time `steps` optimizer steps (after one warm-up step) of `opts`'s SFT run on `corpus`, in a
/// scratch run dir that is removed afterwards. `save`: write each step's examples (token ids,
/// prompt lengths, micro-batches) and learning rate as JSON for `benches/torch_job.py`.
pub fn time_job(student: &Student, corpus: &Corpus, opts: &SftOptions, steps: usize, save: Option<&Path>) -> Result<JobReport> {
    in_range("bench job", "steps", steps, 1..=10_000)?;
    // No checkpoint inside the timed steps: the PyTorch side saves nothing either.
    let opts = SftOptions { save_every: SftOptions::MAX_STEPS, ..opts.clone() };
    let scratch = std::env::temp_dir().join(format!("cotlab-bench-job-{}", crate::paths::unique_suffix()));
    let _ = std::fs::remove_dir_all(&scratch);
    let run = RunDir::new(&scratch);
    let result = (|| {
        let mut t = Trainer::new(student, corpus, &opts, &run)?;
        if steps + 1 > t.total_steps() {
            return Err(usage!(
                "bench job: {} steps (+1 warm-up) is more than the run's {} (epochs {}, {} examples, global batch {}): lower --steps",
                steps,
                t.total_steps(),
                opts.epochs,
                corpus.len(),
                opts.batch_size * opts.grad_accum
            ));
        }
        if let Some(p) = save {
            super::save_json(p, &step_plan(&t, &opts, steps))?;
        }
        time_steps(&mut t, corpus, &opts, steps)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Each step's micro-batches (token ids, prompt lengths) and learning rate, the warm-up's first,
/// with the clipping and weight decay: what `benches/torch_job.py` replays.
fn step_plan(t: &Trainer, opts: &SftOptions, steps: usize) -> serde_json::Value {
    let plan: Vec<serde_json::Value> = (0..=steps)
        .map(|k| {
            let mbs: Vec<Vec<serde_json::Value>> = t
                .window(k)
                .chunks(opts.batch_size)
                .map(|mb| mb.iter().map(|e| serde_json::json!({ "ids": e.ids, "prompt_len": e.prompt_len })).collect())
                .collect();
            serde_json::json!({ "lr": opts.lr_at(k, t.total_steps()), "micro_batches": mbs })
        })
        .collect();
    serde_json::json!({ "max_grad_norm": opts.max_grad_norm, "weight_decay": opts.weight_decay, "steps": plan })
}

/// Runs the warm-up step and `steps` timed ones.
fn time_steps(t: &mut Trainer, corpus: &Corpus, opts: &SftOptions, steps: usize) -> Result<JobReport> {
    let (mut times, mut cpu, mut losses, mut tokens) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..=steps {
        tokens.push(t.window(k).iter().map(|e| e.ids.len()).sum::<usize>() as f64);
        let (t0, c0) = (Instant::now(), cpu_seconds());
        losses.push(t.step()?);
        times.push(t0.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c0);
    }
    // The first step warms caches and allocators: report the mean of the rest.
    let mean = |v: &[f64]| v[1..].iter().sum::<f64>() / steps as f64;
    let step_s = mean(&times);
    Ok(JobReport {
        lora: opts.lora.is_some(),
        corpus: corpus.label(),
        examples: corpus.len(),
        steps,
        batch_size: opts.batch_size,
        grad_accum: opts.grad_accum,
        dtype: dtype_name(t.student()),
        tokens_per_step: mean(&tokens),
        step_s,
        cpu_s_per_step: mean(&cpu),
        tokens_per_s: mean(&tokens) / step_s,
        peak_rss_mb: peak_rss_mb(),
        losses,
        threads: candle_core::utils::get_num_threads(),
    })
}
