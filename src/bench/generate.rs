//! `cotlab bench generate`: greedy decoding with the KV cache. Two benches: fixed arith prompts
//! decoded for exactly `new_tokens` tokens at batch 1 and batch N ([`fixed`]), and real
//! questions decoded to EOS in static batches against continuous batching ([`prompts`]). The
//! decoding copy of the weights (bf16, Q8_0, Q4_1) is made once before timing, as `evaluate`
//! makes it once per run; both sides of a comparison share it.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{cpu_seconds, device_memory_used_mb, dtype_name, StudentSpec};
use crate::data::{load_dataset, DataDir, DatasetOptions};
use crate::error::{in_range, Error, ModelContext, Result};
use crate::model::generate::{generate, generate_batched, prompt_ids, GenOptions};
use crate::model::{DecodeWeights, Student};

/// What `cotlab bench generate` decodes: `batch` rows at a time, at most `new_tokens` each,
/// reading `decode_weights`.
#[derive(Clone, Debug)]
pub struct GenerateBench {
    pub batch: usize,
    pub new_tokens: usize,
    pub decode_weights: DecodeWeights,
    /// Where to write the prompts' token ids (JSON) for `benches/torch_generate.py`.
    pub save_prompts: Option<PathBuf>,
}

/// The fixed-prompt bench. Fields in the order of the JSON line it has always printed
/// (alphabetical), so earlier outputs compare line for line.
#[derive(Clone, Debug, Serialize)]
pub struct FixedReport {
    pub batch: usize,
    pub batch1_tokens_per_cpu_s: f64,
    pub batch1_tokens_per_s: f64,
    #[serde(rename = "batchN_tokens_per_cpu_s")]
    pub batch_n_tokens_per_cpu_s: f64,
    #[serde(rename = "batchN_tokens_per_s")]
    pub batch_n_tokens_per_s: f64,
    pub decode_weights: &'static str,
    /// As asked (`--device`).
    pub device: String,
    pub device_mem_mb: Option<f64>,
    pub dtype: String,
    /// Achieved GFLOP/s (2 × the projections' and LM head's weights per token) at batch 1 and N.
    pub gflops_batch1: f64,
    #[serde(rename = "gflops_batchN")]
    pub gflops_batch_n: f64,
    pub model: String,
    pub new_tokens: usize,
    /// What this device's GEMM achieves in the decoding's dtype (`bench::gemm_peak_gflops`).
    pub peak_gflops: f64,
}

impl super::Report for FixedReport {
    /// The human line `cotlab bench generate` prints on stderr.
    fn summary(&self) -> String {
        format!(
            "cotlab greedy decoding ({}, {}, {}, {} weights), {} new tokens: batch 1 {:.1} tokens/s ({:.1} per CPU-s, {:.1} GFLOP/s), batch {} {:.1} tokens/s ({:.1} per CPU-s, {:.1} GFLOP/s); the GEMM peak in this dtype {:.1} GFLOP/s (batch 1 {:.1}%, batch {} {:.1}%){}",
            self.model,
            self.device,
            self.dtype,
            self.decode_weights,
            self.new_tokens,
            self.batch1_tokens_per_s,
            self.batch1_tokens_per_cpu_s,
            self.gflops_batch1,
            self.batch,
            self.batch_n_tokens_per_s,
            self.batch_n_tokens_per_cpu_s,
            self.gflops_batch_n,
            self.peak_gflops,
            100.0 * self.gflops_batch1 / self.peak_gflops,
            self.batch,
            100.0 * self.gflops_batch_n / self.peak_gflops,
            self.device_mem_mb.map(|m| format!(", device memory in use {m:.0} MB")).unwrap_or_default()
        )
    }
}

/// The real-questions bench (`--prompts TASK:N`). Fields in the order of the JSON line it has
/// always printed (alphabetical); the human line's extras are not in the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct PromptsReport {
    #[serde(skip)]
    pub device: String,
    #[serde(skip)]
    pub decode_weights: &'static str,
    #[serde(skip)]
    pub task: String,
    pub batch: usize,
    pub continuous_s: f64,
    pub continuous_tokens_per_s: f64,
    pub dtype: String,
    /// The longest answer, in tokens.
    pub longest: usize,
    pub model: String,
    pub new_tokens: usize,
    pub questions: usize,
    /// Whether both ways decoded the same answers (they must: rows are independent).
    pub same_outputs: bool,
    pub speedup: f64,
    pub static_s: f64,
    pub static_tokens_per_s: f64,
    /// Tokens generated in all.
    pub tokens: usize,
}

impl super::Report for PromptsReport {
    /// The human line `cotlab bench generate --prompts` prints on stderr.
    fn summary(&self) -> String {
        format!(
            "cotlab greedy decoding ({}, {}, {}, {} weights), {} {} questions, batch {}, at most {} new tokens ({} generated, longest {}): static batches {:.1} tokens/s ({:.1} s), continuous batching {:.1} tokens/s ({:.1} s), {:.2}x; same outputs: {}",
            self.model,
            self.device,
            self.dtype,
            self.decode_weights,
            self.questions,
            self.task,
            self.batch,
            self.new_tokens,
            self.tokens,
            self.longest,
            self.static_tokens_per_s,
            self.static_s,
            self.continuous_tokens_per_s,
            self.continuous_s,
            self.speedup,
            self.same_outputs
        )
    }
}

fn check_batch(b: &GenerateBench) -> Result<()> {
    in_range("bench generate", "batch", b.batch, 1..=1024).map(drop)
}

/// `--prompts TASK:N`: the task and the number of questions.
pub fn parse_prompts(spec: &str) -> Result<(String, usize)> {
    let (task, n) = spec.split_once(':').ok_or_else(|| Error::usage(format!("--prompts: '{spec}' is not TASK:N (e.g. svamp:48)")))?;
    let n: usize = n.parse().map_err(|_| Error::usage(format!("--prompts: '{n}' is not a number of questions")))?;
    in_range("bench generate", "--prompts N", n, 1..=100_000)?;
    Ok((task.to_string(), n))
}

fn save_prompts(s: &Student, b: &GenerateBench, qs: &[String]) -> Result<()> {
    match &b.save_prompts {
        Some(p) => super::save_json(p, &prompt_ids(s, qs)?),
        None => Ok(()),
    }
}

/// `batch` fixed arith prompts decoded for exactly `new_tokens` tokens (EOS ignored): batch 1
/// (the median of 3 runs) and all of them at once, in tokens per wall and per CPU second (the
/// machine may be shared).
pub fn fixed(spec: &StudentSpec, b: &GenerateBench) -> Result<FixedReport> {
    check_batch(b)?;
    let (s, _) = super::student(spec)?;
    let qs: Vec<String> = crate::data::arith::generate(b.batch, 7).iter().map(|p| p.example().question).collect();
    save_prompts(&s, b, &qs)?;
    let opts = GenOptions { max_new_tokens: b.new_tokens, ignore_eos: true, decode_weights: b.decode_weights, ..Default::default() };
    let time = |qs: &[String]| -> Result<(f64, f64)> {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = generate(&s, qs, &opts)?;
        let toks = out.iter().map(|g| g.tokens).sum::<usize>() as f64;
        Ok((toks / t0.elapsed().as_secs_f64(), toks / (cpu_seconds() - c0).max(1e-9)))
    };
    // A guard held here keeps the decoding copy across the calls; then a warm-up (allocator).
    let copy = s.model.decode_weights(b.decode_weights).model_ctx("making the decoding copy of the weights")?;
    let _warm = time(&qs[..1])?;
    // Batch 1 is one short generation, which a busy host moves a lot: the median of 3
    // (benches/llamacpp_generate.py does the same).
    let mut ones = (0..3).map(|_| time(&qs[..1])).collect::<Result<Vec<_>>>()?;
    ones.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (one, one_cpu) = ones[1];
    let (many, many_cpu) = time(&qs)?;
    let flops = flops_per_token(&s);
    // The decoding's dtype: f32 activations but for bf16 weights (cotlab's kernel on the CPU).
    let bf16 = copy.mode() == DecodeWeights::Bf16 || (copy.mode() == DecodeWeights::Auto && s.model.compute_dtype() == candle_core::DType::BF16);
    let peak =
        super::gemm_peak_gflops(&s.model.device, if bf16 { candle_core::DType::BF16 } else { candle_core::DType::F32 }, bf16 && s.model.device.is_cpu())?;
    Ok(FixedReport {
        batch: qs.len(),
        batch1_tokens_per_cpu_s: one_cpu,
        batch1_tokens_per_s: one,
        batch_n_tokens_per_cpu_s: many_cpu,
        batch_n_tokens_per_s: many,
        decode_weights: copy.mode().name(),
        device: spec.device.clone(),
        device_mem_mb: device_memory_used_mb(&s.model.device),
        dtype: dtype_name(&s),
        gflops_batch1: one * flops / 1e9,
        gflops_batch_n: many * flops / 1e9,
        model: s.name.clone(),
        new_tokens: b.new_tokens,
        peak_gflops: peak,
    })
}

/// FLOPs per decoded token: 2 × every weight a projection or the LM head multiplies (embedding
/// tables other than the head are gathered; attention's own products, small at these lengths,
/// are left out).
fn flops_per_token(s: &Student) -> f64 {
    let head = s.model.family().head_weight(&s.model.config);
    2.0 * s.model.params.iter().filter(|(n, v)| v.rank() == 2 && (n.as_str() == head || !n.contains("embed"))).map(|(_, v)| v.elem_count() as f64).sum::<f64>()
}

/// The first `n` questions of a seeded shuffle of `task`'s test split, decoded to EOS (at most
/// `new_tokens`), `batch` at a time: static batches (one `generate` call per chunk: a batch
/// waits for its longest answer) against continuous batching (a finished row takes the next
/// prompt); tokens/s of each and whether both produced the same answers.
pub fn prompts(spec: &StudentSpec, b: &GenerateBench, task: &str, n: usize, data_dir: Option<PathBuf>) -> Result<PromptsReport> {
    check_batch(b)?;
    in_range("bench generate", "--prompts N", n, 1..=100_000)?;
    let (s, _) = super::student(spec)?;
    let ds = load_dataset(&DataDir::resolve(data_dir), task, &DatasetOptions { limit: Some(n), seed: Some(0), ..Default::default() })?;
    let qs: Vec<String> = ds.examples.iter().map(|e| e.question.clone()).collect();
    save_prompts(&s, b, &qs)?;
    let (batch, new_tokens) = (b.batch, b.new_tokens);
    let opts = GenOptions { max_new_tokens: new_tokens, decode_weights: b.decode_weights, ..Default::default() };
    // The static side makes one `generate` call per batch and would otherwise pay for a copy
    // each time, the continuous side once.
    let copy = s.model.decode_weights(b.decode_weights).model_ctx("making the decoding copy of the weights")?;
    // Warm-up (allocator, weight caches).
    generate(&s, &qs[..1], &GenOptions { max_new_tokens: 4, ..opts.clone() })?;
    let t0 = Instant::now();
    let mut fixed = Vec::new();
    for chunk in qs.chunks(batch) {
        fixed.extend(generate(&s, chunk, &opts)?);
    }
    let static_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut cont = vec![None; qs.len()];
    generate_batched(&s, &qs, &opts, batch, &mut |i, g| {
        cont[i] = Some(g);
        Ok(())
    })?;
    let continuous_s = t1.elapsed().as_secs_f64();
    let cont: Vec<_> = cont.into_iter().flatten().collect();
    let tokens: usize = cont.iter().map(|g| g.tokens).sum();
    Ok(PromptsReport {
        device: spec.device.clone(),
        decode_weights: copy.mode().name(),
        task: task.to_string(),
        batch,
        continuous_s,
        continuous_tokens_per_s: tokens as f64 / continuous_s,
        dtype: dtype_name(&s),
        longest: cont.iter().map(|g| g.tokens).max().unwrap_or(0),
        model: s.name.clone(),
        new_tokens,
        questions: qs.len(),
        same_outputs: fixed == cont,
        speedup: static_s / continuous_s,
        static_s,
        static_tokens_per_s: tokens as f64 / static_s,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON lines keep the keys (and their order) they had before the reports were structs:
    /// benches/ scripts and saved outputs read them.
    #[test]
    fn reports_serialise_to_their_old_json_keys() {
        let fixed = FixedReport {
            batch: 2,
            batch1_tokens_per_cpu_s: 1.0,
            batch1_tokens_per_s: 1.0,
            batch_n_tokens_per_cpu_s: 1.0,
            batch_n_tokens_per_s: 1.0,
            decode_weights: "auto",
            device: "cpu".into(),
            device_mem_mb: None,
            dtype: "f32".into(),
            gflops_batch1: 1.0,
            gflops_batch_n: 1.0,
            model: "m".into(),
            new_tokens: 2,
            peak_gflops: 1.0,
        };
        let keys = |v: serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let text = serde_json::to_string(&fixed).unwrap();
        assert!(
            text.starts_with(r#"{"batch":2,"batch1_tokens_per_cpu_s":1.0,"#)
                && text.contains(r#""batchN_tokens_per_s":1.0"#)
                && text.contains(r#""device_mem_mb":null"#)
                && text.contains(r#""gflops_batchN":1.0"#),
            "{text}"
        );
        let prompts = PromptsReport {
            device: "cpu".into(),
            decode_weights: "auto",
            task: "svamp".into(),
            batch: 2,
            continuous_s: 1.0,
            continuous_tokens_per_s: 1.0,
            dtype: "f32".into(),
            longest: 1,
            model: "m".into(),
            new_tokens: 4,
            questions: 2,
            same_outputs: true,
            speedup: 1.0,
            static_s: 1.0,
            static_tokens_per_s: 1.0,
            tokens: 2,
        };
        let want = [
            "batch",
            "continuous_s",
            "continuous_tokens_per_s",
            "dtype",
            "longest",
            "model",
            "new_tokens",
            "questions",
            "same_outputs",
            "speedup",
            "static_s",
            "static_tokens_per_s",
            "tokens",
        ];
        assert_eq!(keys(serde_json::to_value(&prompts).unwrap()), want);
        let text = serde_json::to_string(&prompts).unwrap();
        assert!(text.starts_with(r#"{"batch":2,"continuous_s":"#) && text.ends_with(r#""tokens":2}"#), "{text}");
    }

    #[test]
    fn prompts_spec_is_task_colon_count() {
        assert_eq!(parse_prompts("svamp:48").unwrap(), ("svamp".to_string(), 48));
        for (bad, says) in [("svamp", "is not TASK:N"), ("svamp:x", "'x' is not a number"), ("svamp:0", "'--prompts N' must be in")] {
            let e = parse_prompts(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
