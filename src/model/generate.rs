//! Batched decoding with a KV cache. Prompts of different lengths are left-padded; each row has
//! its own positions and a key mask, so a batch decodes exactly what each prompt would decode
//! alone. Sampling draws from a per-prompt seeded stream for the same reason.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::Student;
use crate::error::{Error, ModelContext, Result};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Extra stop strings (the template's end marker and EOS always stop).
    pub stop: Vec<String>,
    /// Decode exactly max_new_tokens (benchmarks).
    pub ignore_eos: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { max_new_tokens: 320, temperature: 0.0, top_p: 1.0, seed: 0, stop: Vec::new(), ignore_eos: false }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generation {
    pub text: String,
    /// Tokens generated (the stop token included).
    pub tokens: usize,
    pub finish: Finish,
}

/// Why a generation ended; serialised as "eos", "stop" or "length".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// EOS or the template's end marker.
    Eos,
    /// One of the extra stop strings.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

fn ce(e: candle_core::Error) -> Error {
    Error::Model { context: "generation".into(), msg: crate::error::candle_message(&e) }
}

/// The token ids that end an answer: EOS and the template's end marker when it is one token.
fn stop_ids(s: &Student) -> Vec<u32> {
    let mut ids: Vec<u32> = s.config.eos_token_id.into_iter().collect();
    let end = s.template.end();
    let marker = end.trim_end();
    if let Some(id) = s.tokenizer.token_to_id(marker) {
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn pick(logits: &[f32], opts: &GenOptions, rng: &mut Rng) -> u32 {
    if opts.temperature <= 0.0 {
        // First maximum, as argmax in PyTorch.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &x)| (i, (((x - m) as f64) / opts.temperature).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (i, p) in probs {
        kept.push((i, p / z));
        mass += p / z;
        if mass >= opts.top_p {
            break;
        }
    }
    let r = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    let mut acc = 0.0;
    for (i, p) in &kept {
        acc += p;
        if r < acc {
            return *i as u32;
        }
    }
    kept.last().map(|k| k.0 as u32).unwrap_or(0)
}

/// Generate an answer for each user message (wrapped in the student's chat template).
impl GenOptions {
    pub fn validate(&self, what: &str) -> Result<()> {
        use crate::error::in_range;
        in_range(what, "max_new_tokens", self.max_new_tokens, 1..=1_000_000)?;
        in_range(what, "temperature", self.temperature, 0.0..=100.0)?;
        in_range(what, "top_p", self.top_p, 1e-9..=1.0)?;
        Ok(())
    }
}

pub fn generate(s: &Student, questions: &[String], opts: &GenOptions) -> Result<Vec<Generation>> {
    opts.validate("generate")?;
    if questions.is_empty() {
        return Ok(Vec::new());
    }
    let dev = s.model.device.clone();
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| s.tokenizer.encode(s.template.prompt(q), false).map(|e| e.get_ids().to_vec()).model_ctx("tokenizing a prompt"))
        .collect::<Result<_>>()?;
    let b = prompts.len();
    let p = prompts.iter().map(|v| v.len()).max().unwrap();
    let pads: Vec<usize> = prompts.iter().map(|v| p - v.len()).collect();
    let stops = if opts.ignore_eos { Vec::new() } else { stop_ids(s) };
    let mut rngs: Vec<Rng> = questions.iter().map(|q| Rng::new(opts.seed ^ crate::rng::fnv1a(crate::rng::FNV_OFFSET, q.bytes()))).collect();

    // Prefill.
    let mut ids = Vec::with_capacity(b * p);
    let mut pos = Vec::with_capacity(b * p);
    let mut mask = Vec::with_capacity(b * p * p);
    for (r, v) in prompts.iter().enumerate() {
        ids.extend(std::iter::repeat_n(0u32, pads[r]).chain(v.iter().copied()));
        pos.extend((0..p).map(|j| j.saturating_sub(pads[r]) as u32));
        for q in 0..p {
            // A padded query row attends to itself only, so its softmax stays finite.
            mask.extend((0..p).map(|k| if (k <= q && k >= pads[r]) || (q < pads[r] && k == q) { 0f32 } else { -1e9 }));
        }
    }
    let mut cache = super::transformer::KvCache::new(s.config.num_hidden_layers);
    let t = |v: Vec<u32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &dev).map_err(ce);
    let mut logits = s
        .model
        .step(&t(ids, (b, p))?, &t(pos, (b, p))?, &Tensor::from_vec(mask, (b, 1, p, p), &dev).map_err(ce)?, &mut cache)
        .map_err(ce)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finish: Vec<Option<Finish>> = vec![None; b];
    let mut total = p;
    for step in 0..opts.max_new_tokens {
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32).map_err(ce)?.to_vec2().map_err(ce)?;
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            if finish[r].is_some() {
                next.push(0);
                continue;
            }
            let tok = pick(&rows[r], opts, &mut rngs[r]);
            out[r].push(tok);
            if stops.contains(&tok) {
                finish[r] = Some(Finish::Eos);
            } else if !opts.stop.is_empty() {
                let text = s.tokenizer.decode(&out[r], true).unwrap_or_default();
                if opts.stop.iter().any(|st| text.contains(st.as_str())) {
                    finish[r] = Some(Finish::Stop);
                }
            }
            next.push(tok);
        }
        if finish.iter().all(|f| f.is_some()) || step + 1 == opts.max_new_tokens {
            break;
        }
        let pos: Vec<u32> = (0..b).map(|r| (total - pads[r]) as u32).collect();
        let mask: Vec<f32> = pads.iter().flat_map(|&pad| (0..=total).map(move |k| if k >= pad { 0f32 } else { -1e9 })).collect();
        total += 1;
        logits = s
            .model
            .step(&t(next, (b, 1))?, &t(pos, (b, 1))?, &Tensor::from_vec(mask, (b, 1, 1, total), &dev).map_err(ce)?, &mut cache)
            .map_err(ce)?;
    }
    Ok(out
        .into_iter()
        .zip(finish)
        .map(|(toks, f)| {
            let body: Vec<u32> = toks.iter().copied().filter(|t| !stops.contains(t)).collect();
            let mut text = s.tokenizer.decode(&body, true).unwrap_or_default();
            if f == Some(Finish::Stop) {
                if let Some(i) = opts.stop.iter().filter_map(|st| text.find(st.as_str())).min() {
                    text.truncate(i);
                }
            }
            Generation { text, tokens: toks.len(), finish: f.unwrap_or(Finish::Length) }
        })
        .collect())
}


/// Chat-templated prompt ids of each question (what `generate` feeds the model).
pub fn prompt_ids(s: &Student, questions: &[String]) -> Result<Vec<Vec<u32>>> {
    questions
        .iter()
        .map(|q| s.tokenizer.encode(s.template.prompt(q), false).map(|e| e.get_ids().to_vec()).model_ctx("tokenizing a prompt"))
        .collect()
}
