//! `cotlab bench train`: time optimizer steps (forward + backward + AdamW) of a student on a
//! fixed batch, and report tokens/s, seconds per step, CPU-seconds per step and peak RSS; on
//! CUDA also the device memory in use (the most seen at the step's phase boundaries) and, given
//! the card's peak, the model FLOP utilisation (MFU). The batch can be saved so
//! `benches/torch_train.py` trains PyTorch on exactly the same ids.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use serde::Serialize;

use super::{cpu_seconds, device_memory_used_mb, device_name, dtype_name, peak_rss_mb, StudentSpec};
use crate::error::{in_range, ModelContext, Result};
use crate::model::Student;
use crate::rng::Rng;
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::data::TrainExample;
use crate::train::kd::{kd_loss_rows, LogitsOptions, Store};
use crate::train::sft::{batch_nll, response_logits};

/// What `cotlab bench train` times.
#[derive(Clone, Debug)]
pub struct TrainBench {
    /// LoRA (the default config, no dropout) instead of full fine-tuning.
    pub lora: bool,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub lr: f64,
    /// The device's dense peak in TFLOP/s for the MFU; default 989 on CUDA in bf16 (H100/H200).
    pub peak_tflops: Option<f64>,
    /// Where to write the batch's token ids (JSON) for `benches/torch_train.py`.
    pub save_batch: Option<PathBuf>,
    /// Also time offline-KD steps on the same batch (teacher: the student itself, top-20 at
    /// T = 1, alpha 0.5, through a store on disk) and report their tokens/s beside SFT's.
    pub kd: bool,
}

/// The offline-KD steps of `cotlab bench train --kd`, beside the plain SFT steps.
#[derive(Clone, Debug, Serialize)]
pub struct KdBench {
    pub top_k: usize,
    pub step_s: f64,
    pub fwd_s: f64,
    pub bwd_s: f64,
    pub tokens_per_s: f64,
    /// KD tokens/s over plain SFT tokens/s on the same batch.
    pub ratio: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// The student's name (the human line's; not in the JSON).
    #[serde(skip)]
    pub model: String,
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
    /// bf16 on the CPU: the kernel its projections' GEMM runs on (`kernels::bf16_gemm`), or
    /// "f32" where the CPU has no bf16 instructions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemm: Option<String>,
    pub params: usize,
    /// Model FLOPs per step (6·N·tokens + attention, see `model::random::train_flops_per_token`)
    /// and what that makes per second.
    pub flops_per_step: f64,
    pub tflops: f64,
    /// `tflops` over the peak given (`--peak-tflops`; default on CUDA in bf16 989, on the CPU
    /// what its GEMM achieves in the compute dtype, measured by a short probe).
    pub mfu: Option<f64>,
    /// CUDA: the most device memory in use (driver's view: total − free) seen after the forward,
    /// the backward and the optimizer step, minus what was in use before the model was loaded
    /// when the caller measured that; MB.
    pub device_mem_mb: Option<f64>,
    /// `--kd`: the offline-KD steps on the same batch.
    pub kd: Option<KdBench>,
}

impl super::Report for TrainReport {
    /// The human line `cotlab bench train` prints on stderr.
    fn summary(&self) -> String {
        format!(
            "cotlab {} fine-tuning of {} ({:.0}M params, {}, {}{}), {}x{} tokens, {} threads: {:.2} s/step (fwd {:.2}, bwd {:.2}, opt {:.2}), {:.1} tokens/s, {:.1} GFLOP/s{}, {:.1} CPU-s/step, peak RSS {:.0} MB{}; losses {:?}{}",
            self.mode,
            self.model,
            self.params as f64 / 1e6,
            self.device,
            self.dtype,
            self.gemm.as_ref().map(|g| format!(" on {g}")).unwrap_or_default(),
            self.batch,
            self.seq,
            self.threads,
            self.step_s,
            self.fwd_s,
            self.bwd_s,
            self.opt_s,
            self.tokens_per_s,
            self.tflops * 1e3,
            self.mfu.filter(|m| *m > 0.0).map(|m| format!(" ({:.1}% of a peak of {:.1} GFLOP/s)", m * 100.0, self.tflops / m * 1e3)).unwrap_or_default(),
            self.cpu_s_per_step,
            self.peak_rss_mb,
            self.device_mem_mb.map(|m| format!(", device memory {m:.0} MB")).unwrap_or_default(),
            self.losses,
            self.kd
                .as_ref()
                .map(|k| format!(
                    "; offline KD (top-{}, alpha 0.5) on the same batch: {:.2} s/step (fwd {:.2}, bwd {:.2}), {:.1} tokens/s = {:.2}x SFT's",
                    k.top_k, k.step_s, k.fwd_s, k.bwd_s, k.tokens_per_s, k.ratio
                ))
                .unwrap_or_default()
        )
    }
}

/// `cotlab bench train`: loads `spec`'s student (with LoRA when asked), makes the fixed batch
/// (saved when asked) and times `b.steps` steps on it.
pub fn run(spec: &StudentSpec, b: &TrainBench) -> Result<TrainReport> {
    in_range("bench train", "batch", b.batch, 1..=4096)?;
    in_range("bench train", "steps", b.steps, 1..=100_000)?;
    in_range("bench train", "lr", b.lr, 0.0..=1.0)?;
    let (base, mem_base) = super::student(spec)?;
    let peak = match b.peak_tflops.or((base.model.device.is_cuda() && base.model.compute_dtype() == DType::BF16).then_some(989.0)) {
        Some(p) => Some(p),
        // On the CPU the peak is what its GEMM achieves in the compute dtype (a short probe).
        None if base.model.device.is_cpu() => Some(super::gemm_peak_gflops(&base.model.device, base.model.compute_dtype(), false)? / 1e3),
        None => None,
    };
    let student = if b.lora { base.with_lora(crate::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }, 0)? } else { base };
    let ids = fixed_batch(student.config.vocab_size, b.batch, b.seq, 1);
    if let Some(p) = &b.save_batch {
        super::save_json(p, &ids)?;
    }
    // The teacher's logits first, from the weights before any step.
    let store = if b.kd { Some(kd_store(&student, &ids)?) } else { None };
    let mut report = time_steps(&student, &ids, b.steps, b.lr, peak, mem_base)?;
    if let Some((dir, store)) = &store {
        let k = time_steps_with(&student, &ids, b.steps, b.lr, peak, mem_base, Some(store));
        let _ = std::fs::remove_dir_all(dir);
        let k = k?;
        report.kd = Some(KdBench {
            top_k: KD_TOP_K,
            step_s: k.step_s,
            fwd_s: k.fwd_s,
            bwd_s: k.bwd_s,
            tokens_per_s: k.tokens_per_s,
            ratio: k.tokens_per_s / report.tokens_per_s,
        });
    }
    Ok(report)
}

const KD_TOP_K: usize = 20;

/// The student's own top-k log-probabilities on the batch, written to a store in a temporary
/// dir of this process and read back as `sft` reads one (the caller removes the dir).
fn kd_store(student: &Student, ids: &[Vec<u32>]) -> Result<(PathBuf, Store)> {
    let dir = std::env::temp_dir().join(format!("cotlab-bench-kd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = LogitsOptions { top_k: KD_TOP_K, ..Default::default() };
    let examples: Vec<TrainExample> = ids.iter().map(|v| TrainExample { ids: v.clone(), prompt_len: 1 }).collect();
    let store = Store::create(&dir, student, &examples, &opts);
    if store.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((dir, store?))
}

/// A deterministic batch of token ids (the same for every run with this seed).
pub fn fixed_batch(vocab: usize, batch: usize, seq: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..batch).map(|_| (0..seq).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()).collect()
}

/// Time `steps` optimizer steps (after one warm-up step) on the batch `ids`. `peak_tflops`: the
/// device's dense peak in the compute dtype, for the MFU; `mem_base_mb`: device memory in use
/// before the model was loaded (subtracted from the reported use).
pub fn time_steps(student: &Student, ids: &[Vec<u32>], steps: usize, lr: f64, peak_tflops: Option<f64>, mem_base_mb: Option<f64>) -> Result<TrainReport> {
    time_steps_with(student, ids, steps, lr, peak_tflops, mem_base_mb, None)
}

/// [`time_steps`], with the offline-KD loss (alpha 0.5, T = 1) on `kd`'s teacher rows when given:
/// the rows are gathered from the store each step, as the trainer does.
#[allow(clippy::too_many_arguments)]
fn time_steps_with(
    student: &Student,
    ids: &[Vec<u32>],
    steps: usize,
    lr: f64,
    peak_tflops: Option<f64>,
    mem_base_mb: Option<f64>,
    kd: Option<&Store>,
) -> Result<TrainReport> {
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
    let mut t = PhaseTimes::default();
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
        let nll = match kd {
            None => batch_nll(student, &refs).model_ctx("bench: forward pass")?,
            Some(store) => {
                let (logits, targets) = response_logits(student, &refs, true).model_ctx("bench: forward pass")?;
                let (top, p) = store.rows(&refs, logits.device())?;
                kd_loss_rows(&logits, &targets, &top, &p, 0.5, 1.0).model_ctx("bench: KD loss")?
            }
        };
        let loss = (&nll / tokens as f64).model_ctx("bench: loss")?;
        sync("forward pass")?;
        sample();
        t.fwd.push(t0.elapsed().as_secs_f64());
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
        t.bwd.push(t1.elapsed().as_secs_f64());
        let t2 = Instant::now();
        opt.step(&vars, &g, lr, 1.0).model_ctx("bench: optimizer step")?;
        sync("optimizer step")?;
        sample();
        drop((grads, g));
        t.opt.push(t2.elapsed().as_secs_f64());
        t.losses.push(loss.to_dtype(DType::F64).and_then(|l| l.to_scalar::<f64>()).model_ctx("bench: reading the loss")?);
        t.step.push(t0.elapsed().as_secs_f64());
        t.cpu.push(cpu_seconds() - c0);
    }
    Ok(t.report(student, ids, steps, peak_tflops, mem.map(|m| m - mem_base_mb.unwrap_or(0.0))))
}

/// Every step's times (the warm-up's first) and losses.
#[derive(Default)]
struct PhaseTimes {
    step: Vec<f64>,
    cpu: Vec<f64>,
    fwd: Vec<f64>,
    bwd: Vec<f64>,
    opt: Vec<f64>,
    losses: Vec<f64>,
}

impl PhaseTimes {
    fn report(self, student: &Student, ids: &[Vec<u32>], steps: usize, peak_tflops: Option<f64>, device_mem_mb: Option<f64>) -> TrainReport {
        // The first step warms caches and allocators: report the mean of the rest.
        let mean = |v: &[f64]| v[1..].iter().sum::<f64>() / (v.len() - 1) as f64;
        let step_s = mean(&self.step);
        let seq = ids.first().map(|v| v.len()).unwrap_or(0);
        let frozen = student.model.lora.is_some();
        let flops_per_step = crate::model::random::train_flops_per_token(&student.model, seq, frozen) * (ids.len() * seq) as f64;
        let tflops = flops_per_step / step_s / 1e12;
        TrainReport {
            model: student.name.clone(),
            device: device_name(&student.model.device),
            dtype: dtype_name(student),
            gemm: (student.model.device.is_cpu() && student.model.compute_dtype() == DType::BF16)
                .then(|| crate::kernels::bf16_gemm::kernel().unwrap_or("f32 (no bf16 instructions)").to_string()),
            params: student.model.num_params(),
            flops_per_step,
            tflops,
            mfu: peak_tflops.filter(|p| *p > 0.0).map(|p| tflops / p),
            device_mem_mb,
            mode: if frozen { "lora".into() } else { "full".into() },
            batch: ids.len(),
            seq,
            steps,
            step_s,
            cpu_s_per_step: mean(&self.cpu),
            tokens_per_s: (ids.len() * seq) as f64 / step_s,
            peak_rss_mb: peak_rss_mb(),
            losses: self.losses,
            threads: candle_core::utils::get_num_threads(),
            fwd_s: mean(&self.fwd),
            bwd_s: mean(&self.bwd),
            opt_s: mean(&self.opt),
            kd: None,
        }
    }
}
