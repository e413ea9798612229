//! Batched decoding with a KV cache. Prompts of different lengths are left-padded; each row has
//! its own positions and a key mask, so a batch decodes exactly what each prompt would decode
//! alone. Sampling draws from a per-prompt seeded stream for the same reason.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::transformer::{DecodeWeights, KvCache};
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
    /// Beam width: 1 = greedy (or sampling); N > 1 = beam search as transformers'
    /// `generate(num_beams=N, do_sample=False)` (length_penalty 1.0, early_stopping False).
    pub beams: usize,
    /// The weights decoding reads: "auto" (default: the fastest that keeps the results, see
    /// [`DecodeWeights::Auto`]), "f32", "bf16", "q8_0" or "q4_1" (see [`DecodeWeights`]).
    #[serde(skip_serializing_if = "DecodeWeights::is_auto")]
    pub decode_weights: DecodeWeights,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_new_tokens: 320,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
            beams: 1,
            decode_weights: DecodeWeights::Auto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generation {
    pub text: String,
    /// Tokens generated (the stop token included).
    pub tokens: usize,
    pub finish: Finish,
}

crate::choices! {
    /// Why a generation ended.
    pub enum Finish("finish") {
        /// EOS or the template's end marker.
        Eos = "eos",
        /// One of the extra stop strings.
        Stop = "stop",
        /// `max_new_tokens` reached.
        Length = "length",
    }
}

fn ce(e: candle_core::Error) -> Error {
    Error::Model { context: "generation".into(), msg: crate::error::candle_message(&e) }
}

/// The token ids that end an answer: EOS and the template's end marker when it is one token.
pub fn stop_ids(s: &Student) -> Vec<u32> {
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

impl GenOptions {
    pub fn validate(&self, what: &str) -> Result<()> {
        use crate::error::in_range;
        in_range(what, "max_new_tokens", self.max_new_tokens, 1..=1_000_000)?;
        in_range(what, "temperature", self.temperature, 0.0..=100.0)?;
        in_range(what, "top_p", self.top_p, 1e-9..=1.0)?;
        in_range(what, "beams", self.beams, 1..=MAX_BEAMS)?;
        if self.beams > 1 && self.temperature > 0.0 {
            return Err(crate::usage!("{what}: beam search ('beams' {}) is deterministic: leave 'temperature' at 0 (got {})", self.beams, self.temperature));
        }
        Ok(())
    }
}

/// The widest beam search allowed (`beams`).
pub const MAX_BEAMS: usize = 16;

/// The token ids a decoding produced (the stop token included) and why it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub ids: Vec<u32>,
    pub finish: Finish,
}

/// Generate an answer for each user message (wrapped in the student's chat template), all in
/// one batch.
pub fn generate(s: &Student, questions: &[String], opts: &GenOptions) -> Result<Vec<Generation>> {
    let mut out: Vec<Option<Generation>> = vec![None; questions.len()];
    generate_batched(s, questions, opts, questions.len(), &mut |i, g| {
        out[i] = Some(g);
        Ok(())
    })?;
    Ok(out.into_iter().flatten().collect())
}

/// Generate an answer for each user message with at most `width` prompts decoding at once;
/// `done(i, answer)` is called as question `i`'s answer ends, in completion order. Greedy and
/// sampled decoding refill a finished row with the next waiting prompt (continuous batching),
/// so a long answer does not hold a batch; beam search runs `width` prompts at a time.
pub fn generate_batched(
    s: &Student,
    questions: &[String],
    opts: &GenOptions,
    width: usize,
    done: &mut dyn FnMut(usize, Generation) -> Result<()>,
) -> Result<()> {
    opts.validate("generate")?;
    let prompts = prompt_ids(s, questions)?;
    let keys: Vec<u64> = questions.iter().map(|q| crate::rng::fnv1a(crate::rng::FNV_OFFSET, q.bytes())).collect();
    let stops = if opts.ignore_eos { Vec::new() } else { stop_ids(s) };
    decode(s, &prompts, &keys, &stops, opts, width, &mut |i, d| done(i, to_generation(s, d, &stops, opts)))
}

/// The answer text of decoded ids: stop tokens dropped, cut at the first stop string.
fn to_generation(s: &Student, d: Decoded, stops: &[u32], opts: &GenOptions) -> Generation {
    let body: Vec<u32> = d.ids.iter().copied().filter(|t| !stops.contains(t)).collect();
    let mut text = s.tokenizer.decode(&body, true).unwrap_or_default();
    if d.finish == Finish::Stop {
        if let Some(i) = opts.stop.iter().filter_map(|st| text.find(st.as_str())).min() {
            text.truncate(i);
        }
    }
    Generation { text, tokens: d.ids.len(), finish: d.finish }
}

/// Decode from raw prompt ids (no chat template), stopping at `stops` (token ids) and at
/// `opts.stop` strings: what `generate` runs, exposed for reference checks against other
/// implementations. Sampling streams are seeded from each prompt's ids. All prompts in one batch.
pub fn generate_ids(s: &Student, prompts: &[Vec<u32>], stops: &[u32], opts: &GenOptions) -> Result<Vec<Decoded>> {
    generate_ids_batched(s, prompts, stops, opts, prompts.len())
}

/// [`generate_ids`] with at most `width` prompts decoding at once (see [`generate_batched`]).
pub fn generate_ids_batched(s: &Student, prompts: &[Vec<u32>], stops: &[u32], opts: &GenOptions, width: usize) -> Result<Vec<Decoded>> {
    opts.validate("generate")?;
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(crate::usage!("generate: an empty prompt"));
    }
    let keys: Vec<u64> = prompts.iter().map(|p| crate::rng::fnv1a(crate::rng::FNV_OFFSET, p.iter().flat_map(|t| t.to_le_bytes()))).collect();
    let mut out: Vec<Option<Decoded>> = vec![None; prompts.len()];
    decode(s, prompts, &keys, stops, opts, width, &mut |i, d| {
        out[i] = Some(d);
        Ok(())
    })?;
    Ok(out.into_iter().flatten().collect())
}

type Done<'a> = &'a mut dyn FnMut(usize, Decoded) -> Result<()>;

fn decode(s: &Student, prompts: &[Vec<u32>], keys: &[u64], stops: &[u32], opts: &GenOptions, width: usize, done: Done) -> Result<()> {
    if prompts.is_empty() {
        return Ok(());
    }
    crate::error::in_range("generate", "batch width", width, 1..=1 << 20)?;
    let width = width.min(prompts.len());
    // bf16, Q8_0 or Q4_1 (`auto` resolved here): one copy of the weights for this whole call.
    let _weights = s.model.decode_weights(opts.decode_weights).map_err(ce)?;
    if opts.beams > 1 {
        for (c, chunk) in prompts.chunks(width).enumerate() {
            for (j, d) in beam_search(s, chunk, stops, opts)?.into_iter().enumerate() {
                done(c * width + j, d)?;
            }
        }
        return Ok(());
    }
    continuous(s, prompts, keys, stops, opts, width, done)
}

/// A prompt decoding in a cache row.
struct Row {
    prompt: usize,
    /// The cache column its prompt starts at (columns before it are masked).
    pad: usize,
    out: Vec<u32>,
    rng: Rng,
}

/// Greedy/sampled decoding with continuous batching: `width` rows of one KV cache; when a row's
/// answer ends, the next waiting prompt is prefilled alone and its keys/values written into that
/// row, left-padded to the cache's current length (its mask hides the columns before its
/// prompt, its positions count from its own start), so every prompt decodes what it decodes
/// alone. Leading columns that every row masks are trimmed, so attention reads about as many
/// keys as the longest live row has.
fn continuous(s: &Student, prompts: &[Vec<u32>], keys: &[u64], stops: &[u32], opts: &GenOptions, width: usize, done: Done) -> Result<()> {
    let dev = s.model.device.clone();
    let (logits, mut cache, pads) = prefill(s, &prompts[..width], opts.max_new_tokens)?;
    let prefix = shared_prefix(s, &prompts[width..])?;
    let mut logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32).map_err(ce)?.to_vec2().map_err(ce)?;
    let mut rows: Vec<Row> = (0..width).map(|i| Row { prompt: i, pad: pads[i], out: Vec::new(), rng: Rng::new(opts.seed ^ keys[i]) }).collect();
    let mut waiting = width..prompts.len();
    loop {
        let mut live = Vec::with_capacity(rows.len());
        for r in 0..rows.len() {
            // Pick this row's next token; a finished row takes the next waiting prompt, whose
            // first token comes from its own prefill (and may end it at once).
            loop {
                let row = &mut rows[r];
                let tok = pick(&logits[r], opts, &mut row.rng);
                row.out.push(tok);
                let finish = if stops.contains(&tok) {
                    Some(Finish::Eos)
                } else if hits_stop_string(s, &row.out, &opts.stop) {
                    Some(Finish::Stop)
                } else {
                    (row.out.len() >= opts.max_new_tokens).then_some(Finish::Length)
                };
                let Some(finish) = finish else {
                    live.push(r);
                    break;
                };
                done(row.prompt, Decoded { ids: std::mem::take(&mut row.out), finish })?;
                let Some(next) = waiting.next() else { break };
                logits[r] = admit(s, &mut cache, &mut rows, r, next, &prompts[next], prefix.as_ref(), Rng::new(opts.seed ^ keys[next]))?;
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        if live.len() < rows.len() {
            // Nothing left to admit: drop the finished rows instead of decoding them idle.
            cache.reorder(&Tensor::from_vec(live.iter().map(|&r| r as u32).collect::<Vec<_>>(), live.len(), &dev).map_err(ce)?).map_err(ce)?;
            let mut old: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
            rows = live.iter().filter_map(|&r| old[r].take()).collect();
        }
        let first = rows.iter().map(|r| r.pad).min().unwrap_or(0);
        cache.trim_front(first.saturating_sub(cache.start()));
        if cache.len() + 1 > cache.capacity() && cache.start() > 0 {
            // Out of room with trimmed columns in front: move the window to column 0.
            let (shift, wide) = (cache.start(), cache.len() - cache.start() + 1);
            cache.relayout(0, cache.capacity().max(2 * wide)).map_err(ce)?;
            rows.iter_mut().for_each(|r| r.pad -= shift);
        }
        let next: Vec<u32> = rows.iter().map(|r| *r.out.last().unwrap_or(&0)).collect();
        let pads: Vec<usize> = rows.iter().map(|r| r.pad).collect();
        logits = feed(s, &mut cache, next, &pads, &dev)?.to_dtype(DType::F32).map_err(ce)?.to_vec2().map_err(ce)?;
    }
}

/// Prefill prompt `i` alone (after a copy of the shared `prefix`'s keys/values when there is
/// one) and write its keys/values into cache row `r`, left-padded to the cache's length;
/// returns its last-position logits.
#[allow(clippy::too_many_arguments)]
fn admit(s: &Student, cache: &mut KvCache, rows: &mut [Row], r: usize, i: usize, prompt: &[u32], prefix: Option<&Prefix>, rng: Rng) -> Result<Vec<f32>> {
    let (logits, one) = match prefix {
        Some(p) => p.extend(s, &prompt[p.len..])?,
        None => {
            let (logits, one, _) = prefill(s, std::slice::from_ref(&prompt.to_vec()), 0)?;
            (logits, one)
        }
    };
    let len = prompt.len();
    if len > cache.len() {
        // Longer than every column so far: shift the window right to make room in front.
        let shift = len - cache.len();
        let cap = cache.capacity() + shift;
        cache.relayout(cache.start() + shift, cap).map_err(ce)?;
        rows.iter_mut().for_each(|row| row.pad += shift);
    }
    cache.set_row(r, &one).map_err(ce)?;
    rows[r] = Row { prompt: i, pad: cache.len() - len, out: Vec::new(), rng };
    let mut v: Vec<Vec<f32>> = logits.to_dtype(DType::F32).map_err(ce)?.to_vec2().map_err(ce)?;
    Ok(v.pop().unwrap_or_default())
}

/// The first tokens every waiting prompt shares (a chat template's system turn and user
/// header: 20 of SmolLM2's ~70-token SVAMP prompts), prefilled once; each admitted prompt
/// starts from a copy of their keys/values and prefills only the rest. Same bits as
/// prefilling the whole prompt: each token's projections and norms are computed row by row,
/// and its attention sums over its visible keys in order (hidden keys add exact zeros), so a
/// prefix's keys/values do not depend on what follows it. (With f32 weights the projections
/// are candle's GEMMs, whose blocking may depend on the row count: as close as batching is.)
struct Prefix {
    len: usize,
    cache: KvCache,
}

/// Fewer shared tokens than this are not worth a prefill of their own.
const MIN_SHARED_PREFIX: usize = 4;

fn shared_prefix(s: &Student, prompts: &[Vec<u32>]) -> Result<Option<Prefix>> {
    let Some(first) = prompts.first().filter(|_| prompts.len() >= 2) else { return Ok(None) };
    // Every prompt keeps at least one token of its own: its last position gives the logits.
    let mut len = prompts.iter().map(Vec::len).min().unwrap_or(0).saturating_sub(1);
    for p in &prompts[1..] {
        len = len.min(first.iter().zip(p).take_while(|(a, b)| a == b).count());
    }
    if len < MIN_SHARED_PREFIX {
        return Ok(None);
    }
    let (_, cache, _) = prefill(s, &[first[..len].to_vec()], 0)?;
    Ok(Some(Prefix { len, cache }))
}

impl Prefix {
    /// Prefill `rest` after a copy of the prefix: its last position's logits (1, V) and the
    /// one-row cache of prefix + rest.
    fn extend(&self, s: &Student, rest: &[u32]) -> Result<(Tensor, KvCache)> {
        let dev = &s.model.device;
        let (p, t) = (self.len, rest.len());
        let mut cache = self.cache.fork(p + t).map_err(ce)?;
        let pos: Vec<u32> = (p..p + t).map(|j| j as u32).collect();
        let mask: Vec<f32> = (0..t).flat_map(|q| (0..p + t).map(move |k| if k <= p + q { 0f32 } else { MASK })).collect();
        let ids = Tensor::from_vec(rest.to_vec(), (1, t), dev).map_err(ce)?;
        let pos = Tensor::from_vec(pos, (1, t), dev).map_err(ce)?;
        let mask = Tensor::from_vec(mask, (1, 1, t, p + t), dev).map_err(ce)?;
        let logits = s.model.step(&ids, &pos, &mask, &mut cache).map_err(ce)?;
        Ok((logits, cache))
    }
}

/// Whether the decoded text of `ids` contains one of the stop strings.
fn hits_stop_string(s: &Student, ids: &[u32], stop: &[String]) -> bool {
    if stop.is_empty() {
        return false;
    }
    let text = s.tokenizer.decode(ids, true).unwrap_or_default();
    stop.iter().any(|st| text.contains(st.as_str()))
}

/// Run the left-padded prompts through the model: last-position logits (B, V), the filled cache
/// (room for `new_tokens` more columns) and each row's padding.
fn prefill(s: &Student, prompts: &[Vec<u32>], new_tokens: usize) -> Result<(Tensor, KvCache, Vec<usize>)> {
    let dev = &s.model.device;
    let b = prompts.len();
    let p = prompts.iter().map(|v| v.len()).max().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|v| p - v.len()).collect();
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
    let mut cache = KvCache::with_capacity(s.config.num_hidden_layers, p + new_tokens);
    let t = |v: Vec<u32>| Tensor::from_vec(v, (b, p), dev).map_err(ce);
    let logits = s.model.step(&t(ids)?, &t(pos)?, &Tensor::from_vec(mask, (b, 1, p, p), dev).map_err(ce)?, &mut cache).map_err(ce)?;
    Ok((logits, cache, pads))
}

/// One decoding step: token `next[r]` for each cached row `r` (whose prompt starts at column
/// `pads[r]`) at column `cache.len()`; returns the logits (rows, V).
fn feed(s: &Student, cache: &mut KvCache, next: Vec<u32>, pads: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
    let b = next.len();
    let (start, total) = (cache.start(), cache.len());
    let pos: Vec<u32> = pads.iter().map(|&pad| (total - pad) as u32).collect();
    let mask: Vec<f32> = pads.iter().flat_map(|&pad| (start..=total).map(move |k| if k >= pad { 0f32 } else { -1e9 })).collect();
    let t = |v: Vec<u32>| Tensor::from_vec(v, (b, 1), dev).map_err(ce);
    s.model.step(&t(next)?, &t(pos)?, &Tensor::from_vec(mask, (b, 1, 1, total + 1 - start), dev).map_err(ce)?, cache).map_err(ce)
}

// ---- Beam search.
//
// The algorithm of transformers' `generate(num_beams=N, do_sample=False)` (its vectorised
// `_beam_search`, 4.50 and later), with its defaults `length_penalty=1.0` and
// `early_stopping=False`, per prompt:
// - every step, the accumulated log-probabilities of all N×V continuations of the N running
//   beams; the top K = max(2, 1 + #stop ids)·N of them, best first;
// - a candidate ending in a stop id, containing a stop string, or reaching `max_new_tokens` is
//   finished. Among the top N candidates, finished ones enter the N finished slots with score
//   log-prob / generated length (the stop token counted), if better than the worst slot;
// - the best N unfinished candidates are the next running beams (the cache rows are reordered
//   by parent);
// - the search ends when all N slots are finished and the best running beam, at its current
//   length, cannot beat the worst of them, or when every candidate finished; the best slot is
//   the answer.
// Scores are f32 with the same -1e9 masks, so the choices are transformers' to the last bit
// of their arithmetic (checked against transformers in tests/beam_search.rs).

const MASK: f32 = -1.0e9;

#[derive(Clone)]
struct Slot {
    ids: Vec<u32>,
    score: f32,
    finish: Option<Finish>,
}

struct Search {
    /// Running beams (ids generated so far, accumulated log-prob), best first.
    running: Vec<(Vec<u32>, f32)>,
    /// The cache row of each running beam.
    rows: Vec<usize>,
    /// The N best finished hypotheses, best first (`finish: None` = an empty slot).
    slots: Vec<Slot>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`: a running beam may still win.
    open: bool,
    done: bool,
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = row.iter().map(|&x| (x - m).exp()).sum();
    let lz = z.ln();
    row.iter().map(|&x| (x - m) - lz).collect()
}

/// The `k` best (score, beam, token) over every beam's row, best first; ties by flat index.
fn top_k(rows: &[Vec<f32>], k: usize) -> Vec<(f32, usize, u32)> {
    let mut all: Vec<(f32, usize, u32)> = Vec::new();
    for (j, row) in rows.iter().enumerate() {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let k = k.min(idx.len());
        let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        if k < idx.len() {
            idx.select_nth_unstable_by(k, cmp);
            idx.truncate(k);
        }
        all.extend(idx.into_iter().map(|t| (row[t as usize], j, t)));
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    all.truncate(k);
    all
}

fn beam_search(s: &Student, prompts: &[Vec<u32>], stops: &[u32], opts: &GenOptions) -> Result<Vec<Decoded>> {
    let dev = s.model.device.clone();
    let n = opts.beams;
    let k = 2.max(1 + stops.len()) * n;
    let length_penalty = 1.0f32;
    // No room reserved: every step reorders the whole buffer by parent, so it stays at most twice
    // the live length (grown by doubling).
    let (mut logits, mut cache, prompt_pads) = prefill(s, prompts, 0)?;
    let empty = Slot { ids: Vec::new(), score: MASK, finish: None };
    // As transformers: beam 0 starts at 0, the others at -1e9 (so the first step expands beam 0).
    let mut searches: Vec<Search> = (0..prompts.len())
        .map(|r| Search {
            running: (0..n).map(|j| (Vec::new(), if j == 0 { 0.0 } else { MASK })).collect(),
            rows: vec![r; n],
            slots: vec![empty.clone(); n],
            open: true,
            done: false,
        })
        .collect();
    loop {
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32).map_err(ce)?.to_vec2().map_err(ce)?;
        for st in searches.iter_mut().filter(|st| !st.done) {
            beam_step(st, &rows, s, stops, opts, k, length_penalty);
        }
        let live: Vec<usize> = (0..searches.len()).filter(|&r| !searches[r].done).collect();
        if live.is_empty() {
            break;
        }
        // The cache rows the next step continues from (parents, repeated as needed), then the
        // last token of each running beam.
        let mut parents = Vec::new();
        let mut next = Vec::new();
        let mut pads = Vec::new();
        for &r in &live {
            let st = &mut searches[r];
            for (b, (ids, _)) in st.rows.iter_mut().zip(&st.running) {
                parents.push(*b as u32);
                *b = next.len();
                next.push(*ids.last().expect("a running beam has a token"));
                pads.push(prompt_pads[r]);
            }
        }
        let identity = parents.iter().enumerate().all(|(i, &p)| p as usize == i) && parents.len() == cache_rows(&logits);
        if !identity {
            cache.reorder(&Tensor::from_vec(parents, next.len(), &dev).map_err(ce)?).map_err(ce)?;
        }
        logits = feed(s, &mut cache, next, &pads, &dev)?;
    }
    Ok(searches
        .into_iter()
        .map(|st| {
            let best = st.slots.into_iter().next().filter(|x| x.finish.is_some());
            match best {
                Some(x) => Decoded { ids: x.ids, finish: x.finish.unwrap_or(Finish::Length) },
                // Unreachable in practice (the last step finishes every candidate); the best
                // running beam then.
                None => Decoded { ids: st.running.into_iter().next().map(|b| b.0).unwrap_or_default(), finish: Finish::Length },
            }
        })
        .collect())
}

/// One step of one prompt's search: expand its running beams by the top `k` candidates, keep
/// the best finished ones in its slots and the best unfinished ones running, and decide whether
/// the search is done (transformers' rules, `early_stopping=False`).
fn beam_step(st: &mut Search, rows: &[Vec<f32>], s: &Student, stops: &[u32], opts: &GenOptions, k: usize, length_penalty: f32) {
    let n = opts.beams;
    let acc: Vec<Vec<f32>> =
        st.running.iter().zip(&st.rows).map(|((_, score), &row)| log_softmax(&rows[row]).into_iter().map(|x| x + score).collect()).collect();
    let cands = top_k(&acc, k);
    let generated = st.running[0].0.len() + 1;
    let finished: Vec<Option<Finish>> = cands
        .iter()
        .map(|&(_, j, tok)| {
            if stops.contains(&tok) {
                return Some(Finish::Eos);
            }
            if !opts.stop.is_empty() {
                let mut ids = st.running[j].0.clone();
                ids.push(tok);
                if hits_stop_string(s, &ids, &opts.stop) {
                    return Some(Finish::Stop);
                }
            }
            (generated >= opts.max_new_tokens).then_some(Finish::Length)
        })
        .collect();
    // Finished slots: the top-N candidates that finished, length-normalised, merged with
    // the slots so far (slots first, so a tie keeps the older entry).
    let mut merged: Vec<Slot> = st.slots.clone();
    for (i, (&(score, j, tok), f)) in cands.iter().zip(&finished).enumerate() {
        let mut v = score / (generated as f32).powf(length_penalty);
        if !st.open {
            v += MASK;
        }
        let eligible = i < n && f.is_some();
        if !eligible {
            v += MASK;
        }
        let mut ids = st.running[j].0.clone();
        ids.push(tok);
        merged.push(Slot { ids, score: v, finish: if eligible { *f } else { None } });
    }
    merged.sort_by(|a, b| b.score.total_cmp(&a.score));
    merged.truncate(n);
    st.slots = merged;
    // Running beams: the best N candidates that did not finish (finished ones masked).
    let mut next: Vec<(f32, usize)> = cands.iter().zip(&finished).enumerate().map(|(i, (c, f))| (if f.is_some() { c.0 + MASK } else { c.0 }, i)).collect();
    next.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    next.truncate(n);
    let old_rows = std::mem::take(&mut st.rows);
    let old_running = std::mem::take(&mut st.running);
    for &(score, i) in &next {
        let (_, j, tok) = cands[i];
        let mut ids = old_running[j].0.clone();
        ids.push(tok);
        st.running.push((ids, score));
        st.rows.push(old_rows[j]);
    }
    // transformers' early-stop heuristic (early_stopping=False): the best running beam,
    // normalised by its current length, against the worst finished slot.
    let best = st.running[0].1 / (generated as f32).powf(length_penalty);
    let worst = st.slots.iter().map(|x| x.score).fold(f32::INFINITY, f32::min);
    st.open = st.open && st.slots.iter().any(|x| best > if x.finish.is_some() { worst } else { MASK });
    st.done = !st.open || finished.iter().all(|f| f.is_some());
}

fn cache_rows(logits: &Tensor) -> usize {
    logits.dims().first().copied().unwrap_or(0)
}

/// Chat-templated prompt ids of each question (what `generate` feeds the model).
pub fn prompt_ids(s: &Student, questions: &[String]) -> Result<Vec<Vec<u32>>> {
    questions.iter().map(|q| s.tokenizer.encode(s.template.prompt(q)?, false).map(|e| e.get_ids().to_vec()).model_ctx("tokenizing a prompt")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, ModelConfig};
    use candle_core::Device;

    /// A prompt admitted from the shared prefix's keys/values gets the logits and cache of
    /// prefilling it whole: to the bit with quantized weights (row-by-row kernels), within
    /// rounding with f32 weights (candle's GEMMs).
    #[test]
    fn prefix_extension_equals_whole_prefill() {
        let config = ModelConfig {
            family: Family::Llama,
            hidden_act: "silu".into(),
            head_dim: None,
            rope_llama3: None,
            vocab_size: 96,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        };
        let s = crate::model::random::random_student_with(config, "llama", "none", &Device::Cpu, 7).unwrap();
        let prompts: Vec<Vec<u32>> =
            vec![vec![5, 9, 11, 3, 40, 41, 7, 8, 60, 61, 62], vec![5, 9, 11, 3, 40, 41, 7, 30, 31], vec![5, 9, 11, 3, 40, 41, 7, 8, 50]];
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for mode in [DecodeWeights::Q8_0, DecodeWeights::Q4_1, DecodeWeights::F32] {
            let _w = s.model.decode_weights(mode).unwrap();
            let prefix = shared_prefix(&s, &prompts).unwrap().expect("7 shared tokens make a prefix");
            assert_eq!(prefix.len, 7);
            for p in &prompts {
                let (whole, whole_cache, _) = prefill(&s, std::slice::from_ref(p), 0).unwrap();
                let (part, part_cache) = prefix.extend(&s, &p[prefix.len..]).unwrap();
                let (a, b) = (bits(&whole), bits(&part));
                if mode == DecodeWeights::F32 {
                    let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    assert!(d < 1e-4, "f32: logits differ by {d}");
                } else {
                    assert_eq!(a, b, "{}: logits", mode.name());
                    for c in [&whole_cache, &part_cache] {
                        assert_eq!((c.start(), c.len()), (0, p.len()));
                    }
                    // Both caches hold the same keys/values: decoding one more token from each agrees.
                    let next = |c: &KvCache| {
                        let mut c = c.fork(p.len() + 1).unwrap();
                        bits(&feed(&s, &mut c, vec![12], &[0], &Device::Cpu).unwrap())
                    };
                    assert_eq!(next(&whole_cache), next(&part_cache), "{}: the next step", mode.name());
                }
            }
        }
        assert!(shared_prefix(&s, &prompts[..1]).unwrap().is_none(), "one prompt shares nothing");
        assert!(shared_prefix(&s, &[vec![5, 9, 11, 3], vec![5, 9, 11, 3, 4]]).unwrap().is_none(), "a prompt keeps a token of its own: 3 < the minimum");
    }
}
