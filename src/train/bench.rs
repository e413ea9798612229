//! `cotlab bench train`: time optimizer steps (forward + backward + AdamW) of a student on a
//! fixed batch, and report tokens/s, seconds per step, CPU-seconds per step and peak RSS; on
//! CUDA also the device memory in use (the most seen at the step's phase boundaries) and, given
//! the card's peak, the model FLOP utilisation (MFU). The batch can be saved so
//! `benches/torch_train.py` trains PyTorch on exactly the same ids.

use std::time::Instant;

use candle_core::DType;
use serde::Serialize;

use super::adamw::{AdamW, AdamWConfig};
use super::data::TrainExample;
use super::sft::batch_nll;
use crate::error::{ModelContext, Result};
use crate::model::Student;
use crate::rng::Rng;

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub step_s: f64,
    pub cpu_s_per_step: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mb: f64,
    pub losses: Vec<f64>,
    pub threads: usize,
    /// Mean wall seconds per step in forward (incl. loss), backward and the optimizer.
    pub fwd_s: f64,
    pub bwd_s: f64,
    pub opt_s: f64,
    /// "cpu" or "cuda:N", and the compute dtype ("f32", "bf16").
    pub device: String,
    pub dtype: String,
    pub params: usize,
    /// Model FLOPs per step (6·N·tokens + attention, see `model::random::train_flops_per_token`)
    /// and what that makes per second.
    pub flops_per_step: f64,
    pub tflops: f64,
    /// `tflops` over the peak given (`--peak-tflops`), when given.
    pub mfu: Option<f64>,
    /// CUDA: the most device memory in use (driver's view: total − free) seen after the forward,
    /// the backward and the optimizer step, minus what was in use before the model was loaded
    /// when the caller measured that; MB.
    pub device_mem_mb: Option<f64>,
}

/// Device memory in use on a CUDA device (total − free, MB); None on the CPU.
pub fn device_memory_used_mb(dev: &candle_core::Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, total)| (total - free) as f64 / (1u64 << 20) as f64);
    }
    let _ = dev;
    None
}

fn device_name(dev: &candle_core::Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Peak resident set size of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of this process.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat (utime, stime); `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// A deterministic batch of token ids (the same for every run with this seed).
pub fn fixed_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..batch).map(|_| (0..seq).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()).collect()
}

/// Time `steps` optimizer steps (after one warm-up step) on the batch `ids`. `peak_tflops`: the
/// device's dense peak in the compute dtype, for the MFU; `mem_base_mb`: device memory in use
/// before the model was loaded (subtracted from the reported use).
pub fn bench_train(student: &Student, ids: &[Vec<u32>], steps: usize, lr: f64, peak_tflops: Option<f64>, mem_base_mb: Option<f64>) -> Result<BenchReport> {
    use crate::error::in_range;
    in_range("bench train", "batch", ids.len(), 1..=4096)?;
    // A sequence needs a prompt token and at least one token to predict.
    let context = student.config.max_position_embeddings;
    in_range("bench train", "seq", ids.iter().map(Vec::len).min().unwrap_or(0), 2..=context)?;
    in_range("bench train", "steps", steps, 1..=100_000)?;
    in_range("bench train", "lr", lr, 0.0..=1.0)?;
    let examples: Vec<TrainExample> = ids.iter().map(|v| TrainExample { ids: v.clone(), prompt_len: 1 }).collect();
    let refs: Vec<&TrainExample> = examples.iter().collect();
    let tokens: usize = examples.iter().map(|e| e.response_tokens()).sum();
    let vars: Vec<&candle_core::Var> = student.model.trainable();
    let mut opt = AdamW::new(&vars, AdamWConfig::default()).model_ctx("bench: creating the optimizer")?;
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut losses = Vec::new();
    let (mut fwd, mut bwd, mut optt) = (Vec::new(), Vec::new(), Vec::new());
    let dev = &student.model.device;
    // Device work is asynchronous: wait for it at each phase boundary so the split is real.
    let sync = |what: &str| dev.synchronize().model_ctx(format!("bench: waiting for the {what}"));
    let mut mem: Option<f64> = None;
    let mut sample = || {
        if let Some(m) = device_memory_used_mb(dev) {
            mem = Some(mem.map_or(m, |x: f64| x.max(m)));
        }
    };
    sync("model")?;
    for _ in 0..steps + 1 {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        // Weight gradients summed in place, as the trainer does (see `Trainer::accumulate`); open
        // before the forward pass, which hands each projection its sink.
        let sink = crate::kernels::ops::GradSink::open(vars.iter().map(|v| v.as_tensor()));
        let nll = batch_nll(student, &refs).model_ctx("bench: forward pass")?;
        let loss = (&nll / tokens as f64).model_ctx("bench: loss")?;
        sync("forward pass")?;
        sample();
        fwd.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let grads = loss.backward().model_ctx("bench: backward pass")?;
        let g: Vec<candle_core::Tensor> = vars
            .iter()
            .enumerate()
            .map(|(i, v)| sink.gradient(i, v.as_tensor(), grads.get(v).cloned()))
            .collect::<candle_core::Result<_>>()
            .model_ctx("bench: gradients")?;
        drop(sink);
        sync("backward pass")?;
        sample();
        bwd.push(t1.elapsed().as_secs_f64());
        let t2 = Instant::now();
        opt.step(&vars, &g, lr, 1.0).model_ctx("bench: optimizer step")?;
        sync("optimizer step")?;
        sample();
        drop((grads, g));
        optt.push(t2.elapsed().as_secs_f64());
        losses.push(loss.to_dtype(DType::F64).and_then(|l| l.to_scalar::<f64>()).model_ctx("bench: reading the loss")?);
        times.push(t0.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c0);
    }
    // The first step warms caches and allocators: report the mean of the rest.
    let mean = |v: &[f64]| v[1..].iter().sum::<f64>() / (v.len() - 1) as f64;
    let step_s = mean(&times);
    let seq = ids.first().map(|v| v.len()).unwrap_or(0);
    let frozen = student.model.lora.is_some();
    let flops_per_step = crate::model::random::train_flops_per_token(&student.model, seq, frozen) * (ids.len() * seq) as f64;
    let tflops = flops_per_step / step_s / 1e12;
    Ok(BenchReport {
        device: device_name(dev),
        dtype: format!("{:?}", student.model.compute_dtype()).to_lowercase(),
        params: student.model.num_params(),
        flops_per_step,
        tflops,
        mfu: peak_tflops.filter(|p| *p > 0.0).map(|p| tflops / p),
        device_mem_mb: mem.map(|m| m - mem_base_mb.unwrap_or(0.0)),
        mode: if student.model.lora.is_some() { "lora".into() } else { "full".into() },
        batch: ids.len(),
        seq: ids.first().map(|v| v.len()).unwrap_or(0),
        steps,
        step_s,
        cpu_s_per_step: mean(&cpu),
        tokens_per_s: (ids.len() * ids.first().map(|v| v.len()).unwrap_or(0)) as f64 / step_s,
        peak_rss_mb: peak_rss_mb(),
        losses,
        threads: candle_core::utils::get_num_threads(),
        fwd_s: mean(&fwd),
        bwd_s: mean(&bwd),
        opt_s: mean(&optt),
    })
}

/// `cotlab bench job`: the real SFT job (a release corpus, the paper's recipe) timed step by
/// step through the same [`Trainer`](super::sft::Trainer) that `sft` runs, so everything a real
/// run does per step (length-varied micro-batches, response-only loss, accumulation, clipping,
/// the schedule, the train log) is in the numbers; only checkpoints are left out.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub corpus: String,
    pub examples: usize,
    /// Steps timed (after one warm-up step).
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
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

/// Time `steps` optimizer steps (after one warm-up step) of `opts`'s SFT run on `corpus`, in a
/// scratch run dir that is removed afterwards. `save`: write each step's examples (token ids,
/// prompt lengths, micro-batches) and learning rate as JSON for `benches/torch_job.py`.
pub fn bench_job(student: &Student, corpus: &crate::data::Corpus, opts: &super::sft::SftOptions, steps: usize, save: Option<&std::path::Path>) -> Result<JobReport> {
    use crate::error::{in_range, Error};
    in_range("bench job", "steps", steps, 1..=10_000)?;
    // No checkpoint inside the timed steps: the PyTorch side saves nothing either.
    let opts = super::sft::SftOptions { save_every: super::sft::SftOptions::MAX_STEPS, ..opts.clone() };
    let scratch = std::env::temp_dir().join(format!("cotlab-bench-job-{}", crate::paths::unique_suffix()));
    let _ = std::fs::remove_dir_all(&scratch);
    let run = super::run::RunDir::new(&scratch);
    let result = (|| {
        let mut t = super::sft::Trainer::new(student, corpus, &opts, &run)?;
        if steps + 1 > t.total_steps() {
            return Err(crate::usage!(
                "bench job: {} steps (+1 warm-up) is more than the run's {} (epochs {}, {} examples, global batch {}): lower --steps",
                steps,
                t.total_steps(),
                opts.epochs,
                corpus.len(),
                opts.batch_size * opts.grad_accum
            ));
        }
        if let Some(p) = save {
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
            let doc = serde_json::json!({ "max_grad_norm": opts.max_grad_norm, "weight_decay": opts.weight_decay, "steps": plan });
            std::fs::write(p, doc.to_string()).map_err(|e| Error::io(p, e))?;
        }
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
            corpus: corpus.label(),
            examples: corpus.len(),
            steps,
            batch_size: opts.batch_size,
            grad_accum: opts.grad_accum,
            tokens_per_step: mean(&tokens),
            step_s,
            cpu_s_per_step: mean(&cpu),
            tokens_per_s: mean(&tokens) / step_s,
            peak_rss_mb: peak_rss_mb(),
            losses,
            threads: candle_core::utils::get_num_threads(),
        })
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
