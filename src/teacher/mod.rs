//! Stage 3 — teachers: who writes rationales, behind one interface.
//!
//! * `openai`: any OpenAI-compatible endpoint (GPT-4o, Gemini, vLLM/Ollama/llama.cpp servers);
//! * `local`: a candle student used as a teacher (offline);
//! * `replay`: the paper's released rationales, served for the asked level and format;
//! * `rule`: the rule-based teacher of the embedded `arith` set (see `rule`).
//!
//! Every answer from `openai` and `local` goes through a per-request disk cache (JSON lines,
//! appended and flushed as each answer arrives): a crash loses nothing, and a re-run sends only
//! the requests that never got an answer. A cache key covers all that decides the answer: the
//! prompt, the sampling options, the sample's seed and, for `local`, a fingerprint of the weights
//! (see [`Student::weights_fingerprint`]: a student trained since, in memory or at the same path, is
//! another teacher).
//!
//! Reasoning traces (a reasoning model's `reasoning_content`, or `<think>…</think>` inline) are
//! kept apart from the answer in every row; a corpus chooses what to train on ([`Trace`]).
//! Costs are per row; a report separates what this run spent from what the cache served.
//!
//! Sample k of a question is drawn with seed `seed + k` (`openai` sends it, `local` samples with it), so the `n` samples at
//! temperature > 0 differ from each other and a re-run draws the same ones; with `native_n` a
//! question's samples are the choices of one request (seeded as its first sample), cached under
//! keys of their own.

pub mod batch;
pub mod cache;
pub mod openai;
pub mod prompts;
pub mod rate;
pub mod rule;
pub mod sampling;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::answer::judge;
use crate::cot::{check_level, Format};
use crate::data::{Catalog, DataDir, Dataset, RationaleQuery};
use crate::error::Result;
use crate::frame::{ColumnData, Frame};
use crate::model::generate::{generate, GenOptions};
use crate::model::Student;
use crate::usage;
use cache::Cache;
use openai::OpenAi;

pub enum Backend {
    /// Boxed: a client is large beside the other variants.
    OpenAi(Box<OpenAi>),
    Local(Arc<Student>),
    Replay {
        dir: DataDir,
        dataset: String,
        teacher: String,
    },
}

pub struct Teacher {
    pub kind: String,
    pub model: String,
    pub backend: Backend,
    /// None for replay (nothing to cache).
    pub cache: Option<Arc<Cache>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AskOptions {
    pub level: Option<i64>,
    pub format: String,
    /// Give the teacher the gold answer (rationalisation).
    pub with_gold: bool,
    /// Samples per question (more under `max_tries`).
    pub n: usize,
    /// Keep only rationales whose extracted answer matches gold (the older spelling of
    /// `filter: "correct"`).
    pub keep_correct: bool,
    /// Which rationales survive (see [`sampling`]).
    pub filter: sampling::Filter,
    /// With `filter: "correct"`: ask a question again (one sample at a time) until it has a
    /// correct rationale or this many samples; default `n` (no second round).
    pub max_tries: Option<usize>,
    /// Which of a question's surviving rationales are kept.
    pub keep: sampling::Keep,
    /// Self-consistency: each row gets its question's majority answer and its share.
    pub vote: bool,
    pub seed: u64,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    /// Worked examples before each question: 0 (zero-shot) or 1 (one exemplar at the asked level
    /// and format, from the release: see [`exemplars`]).
    pub shots: usize,
    /// Your own system / user prompt templates ([`prompts::render`]); the paper's where `None`.
    pub system: Option<String>,
    pub user: Option<String>,
}

impl Default for AskOptions {
    fn default() -> Self {
        AskOptions {
            level: None,
            format: "plain".into(),
            with_gold: false,
            n: 1,
            keep_correct: false,
            filter: sampling::Filter::None,
            max_tries: None,
            keep: sampling::Keep::All,
            vote: false,
            seed: 0,
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 512,
            shots: 0,
            system: None,
            user: None,
        }
    }
}

/// The release teachers an exemplar is taken from, in this order of preference.
const EXEMPLAR_TEACHERS: [&str; 4] = ["gpt-4o", "gemini", "llama-3-70b", "rule"];

/// Candidate exemplars for `shots: 1`, best first: rationales of the release at this level and
/// format, for this dataset (the first of gpt-4o, gemini, llama-3-70b that the release has; `rule`
/// for `arith`), else SVAMP's. In file order, keeping only those whose extracted answer agrees
/// with gold; two, so a question never gets itself as its example.
pub fn exemplars(dir: &DataDir, task: crate::data::Task, level: Option<u8>, format: Format) -> Result<Vec<prompts::Exemplar>> {
    let cat = Catalog::new(dir.clone());
    let teachers: Vec<Option<&str>> = if format == Format::AnswerOnly { vec![None] } else { EXEMPLAR_TEACHERS.iter().map(|t| Some(*t)).collect() };
    let mut tried = Vec::new();
    for name in [task.name(), "svamp"] {
        for teacher in &teachers {
            let q =
                RationaleQuery { teacher: teacher.map(str::to_string), level: level.map(i64::from), format: Some(format.name().into()), ..Default::default() };
            let Ok(c) = cat.rationales(name, &q) else { continue };
            let picked: Vec<prompts::Exemplar> = c
                .rationales
                .iter()
                .filter(|r| r.gold.as_deref().is_none_or(|g| judge(&r.text, g, c.kind()).correct))
                .take(2)
                .map(|r| prompts::Exemplar { source: format!("{}#{}", c.source, r.id), question: r.question.clone(), rationale: r.text.clone() })
                .collect();
            if picked.len() == 2 {
                return Ok(picked);
            }
            tried.push(c.source.clone());
        }
    }
    Err(usage!(
        "ask: 'shots: 1' takes its exemplar from the release, which has no {} rationales at level {} for {} or svamp{}",
        format.name(),
        level.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
        task.name(),
        if tried.is_empty() { String::new() } else { format!(" (too few agreeing with gold in {})", tried.join(", ")) }
    ))
}

/// One produced rationale with its provenance.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Row {
    pub id: String,
    pub question: String,
    pub gold: String,
    pub rationale: Option<String>,
    pub error: Option<String>,
    pub teacher: String,
    pub model: String,
    pub level: Option<u8>,
    pub format: String,
    pub template_version: String,
    /// The worked example shown (`shots: 1`): `<release file>#<record id>`.
    pub exemplar: Option<String>,
    pub seed: u64,
    pub sample: usize,
    pub cache_key: Option<String>,
    pub cached: bool,
    pub extracted: Option<String>,
    pub agrees: Option<bool>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The reasoning trace apart from the answer (`rationale`), when the teacher wrote one.
    pub reasoning: Option<String>,
    /// The trace's share of `completion_tokens`, when the endpoint reports it.
    pub reasoning_tokens: Option<u64>,
    /// What this answer cost at the teacher's prices (when first asked, for a cached one).
    pub cost_usd: f64,
    /// `vote: true`: the question's majority answer over its answered samples, and its share.
    pub vote: Option<String>,
    pub vote_share: Option<f64>,
}

crate::choices! {
    /// What a corpus made from a teacher run trains on, for rows with a reasoning trace.
    #[derive(Default)]
    pub enum Trace("trace") {
        /// The answer text alone (the trace is dropped).
        #[default]
        None = "none",
        /// `<think>\n{reasoning}\n</think>\n\n{answer}`, the layout Qwen3 and R1-Distill templates use.
        Think = "think",
        /// The trace alone.
        Only = "only",
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AskReport {
    pub rows: Vec<Row>,
    /// Requests sent to the backend in this run (cache hits excluded).
    pub requests: usize,
    pub cache_hits: usize,
    pub failed: usize,
    /// Rationales dropped by `filter` and `keep`.
    pub dropped: usize,
    /// Per question: kept, all wrong, failed.
    pub questions: sampling::QuestionCounts,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// What this run spent: the rows answered now, not those the cache served.
    pub cost_usd: f64,
    /// What the rows the cache served cost when they were first asked (not spent again).
    pub cached_cost_usd: f64,
}

struct Job {
    idx: usize,
    system: String,
    user: String,
    key: String,
    seed: u64,
}

impl Job {
    /// The request that asks this job with `o`'s sampling.
    fn ask<'a>(&'a self, o: &AskOptions) -> openai::Ask<'a> {
        openai::Ask { system: &self.system, user: &self.user, temperature: o.temperature, top_p: o.top_p, max_tokens: o.max_tokens, seed: self.seed }
    }
}

/// The requests that carry `jobs`: one each, or with `native_n` one per prompt (a question's
/// samples, in the order asked), whose choice k answers the group's job k.
fn request_groups(jobs: Vec<Job>, native_n: bool) -> Vec<Vec<Job>> {
    if !native_n {
        return jobs.into_iter().map(|j| vec![j]).collect();
    }
    let mut groups: Vec<Vec<Job>> = Vec::new();
    let mut at: HashMap<(String, String), usize> = HashMap::new();
    for j in jobs {
        match at.get(&(j.system.clone(), j.user.clone())) {
            Some(&g) => groups[g].push(j),
            None => {
                at.insert((j.system.clone(), j.user.clone()), groups.len());
                groups.push(vec![j]);
            }
        }
    }
    groups
}

impl Teacher {
    /// Ask for a rationale for every example (× n samples), zero-shot (`shots: 1` needs the
    /// release: [`Teacher::ask_with`]).
    pub fn ask(&self, ds: &Dataset, o: &AskOptions) -> Result<AskReport> {
        self.ask_with(ds, o, None)
    }

    /// `ask`, with the release dir `shots: 1` draws its exemplars from.
    pub fn ask_with(&self, ds: &Dataset, o: &AskOptions, release: Option<&DataDir>) -> Result<AskReport> {
        let format = Format::parse(&o.format).map_err(crate::error::Error::Usage)?;
        let level = match (o.level, format) {
            (_, Format::AnswerOnly) => None,
            (Some(l), _) => Some(check_level(l)?),
            (None, _) => return Err(usage!("ask: 'level' (1..6) is required")),
        };
        crate::error::in_range("ask", "n", o.n, 1..=10_000)?;
        crate::error::in_range("ask", "temperature", o.temperature, 0.0..=100.0)?;
        crate::error::in_range("ask", "top_p", o.top_p, 1e-9..=1.0)?;
        crate::error::in_range("ask", "max_tokens", o.max_tokens, 1..=1_000_000)?;
        crate::error::in_range("ask", "shots", o.shots, 0..=1)?;
        let shots = if o.shots == 0 {
            Vec::new()
        } else {
            let dir = release.ok_or_else(|| usage!("ask: 'shots: 1' takes its exemplar from the release: give the data dir (Teacher::ask_with)"))?;
            exemplars(dir, ds.task, level, format)?
        };
        // Once per call: training between two calls changes the weights behind one path.
        let weights = match (&self.backend, &self.cache) {
            (Backend::Local(s), Some(_)) => Some(s.weights_fingerprint()?),
            _ => None,
        };
        let filter = if o.keep_correct { sampling::Filter::Correct } else { o.filter };
        let max_tries = crate::error::in_range("ask", "max_tries", o.max_tries.unwrap_or(o.n), o.n..=10_000)?;
        if max_tries > o.n && filter != sampling::Filter::Correct {
            return Err(usage!("ask: 'max_tries' asks again until a rationale is correct: give filter: \"correct\" with it"));
        }
        let norm = crate::data::contamination::normalize;
        // One row per (question, sample), and the request to send when the cache lacks it.
        // Your own templates are named by their text: another wording, another version.
        let custom = o.system.is_some() || o.user.is_some();
        let template_version = if custom {
            format!("custom:{}", &cache::key(&[o.system.as_deref().unwrap_or(""), o.user.as_deref().unwrap_or("")])[..12])
        } else {
            prompts::TEMPLATE_VERSION.into()
        };
        let prepare = |e: &crate::data::Example, sample: usize, idx: usize| -> Result<(Row, Option<Job>)> {
            // The first exemplar, unless it is this very question.
            let exemplar = shots.iter().find(|x| norm(&x.question) != norm(&e.question));
            let paper = prompts::build_with(&e.question, level.unwrap_or(1), format, o.with_gold.then_some(e.answer.as_str()), exemplar);
            let (system, user) = if custom {
                let fields = prompts::Fields::new(&e.question, &e.choices, &e.answer, level.unwrap_or(1), format, exemplar);
                prompts::build_custom(o.system.as_deref(), o.user.as_deref(), &fields, paper).map_err(|m| usage!("ask: {m}"))?
            } else {
                paper
            };
            let seed = o.seed.wrapping_add(sample as u64);
            let (temperature, top_p, max_tokens, seed_s, sample_s) =
                (o.temperature.to_string(), o.top_p.to_string(), o.max_tokens.to_string(), seed.to_string(), sample.to_string());
            let mut parts: Vec<&str> = vec![&self.kind, &self.model, &system, &user, &temperature, &top_p, &max_tokens, &seed_s, &sample_s, &template_version];
            // Two servers may serve one model name: the endpoint is part of the request.
            if let Backend::OpenAi(client) = &self.backend {
                parts.push(client.endpoint());
                // A choice of one n-request is another draw than a request seeded seed + k.
                if client.opts.native_n {
                    parts.push("native_n");
                }
                // Another request body (no sampling parameters), another answer.
                if client.reasoning() {
                    parts.push("reasoning");
                    parts.push(client.opts.reasoning_effort.map_or("", |e| e.name()));
                }
            }
            // One path may hold other weights by now (sft since): the weights are part of it.
            if let Some(w) = &weights {
                parts.push(w);
            }
            let key = cache::key(&parts);
            let mut row = Row {
                id: e.id.clone(),
                question: e.question.clone(),
                gold: e.answer.clone(),
                rationale: None,
                error: None,
                teacher: self.kind.clone(),
                model: self.model.clone(),
                level,
                format: format.name().into(),
                template_version: template_version.clone(),
                exemplar: exemplar.map(|x| x.source.clone()),
                seed,
                sample,
                cache_key: self.cache.as_ref().map(|_| key.clone()),
                cached: false,
                extracted: None,
                agrees: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                reasoning: None,
                reasoning_tokens: None,
                cost_usd: 0.0,
                vote: None,
                vote_share: None,
            };
            if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(&key)) {
                row.rationale = Some(hit.text);
                row.cached = true;
                row.prompt_tokens = hit.prompt_tokens;
                row.completion_tokens = hit.completion_tokens;
                row.reasoning = hit.reasoning;
                row.reasoning_tokens = hit.reasoning_tokens;
                Ok((row, None))
            } else {
                Ok((row, Some(Job { idx, system, user, key, seed })))
            }
        };
        let (rows, requests, hits) = self.rounds(ds, o, level, format, filter, max_tries, prepare)?;
        Ok(self.report(ds, o, filter, rows, requests, hits))
    }

    /// The rows that survive `filter` and `keep` (votes counted first), their costs, and the
    /// counts this run prints and reports.
    fn report(&self, ds: &Dataset, o: &AskOptions, filter: sampling::Filter, mut rows: Vec<Row>, requests: usize, hits: usize) -> AskReport {
        let requests = if matches!(self.backend, Backend::Replay { .. }) { 0 } else { requests };
        if o.vote {
            sampling::vote(&mut rows);
        }
        let before = rows.len();
        let (mut rows, questions) = sampling::select(rows, filter, o.keep);
        let dropped = before - rows.len();
        let failed = rows.iter().filter(|r| r.error.is_some()).count();
        let (price_in, price_out) = match &self.backend {
            Backend::OpenAi(c) => (c.opts.price_in, c.opts.price_out),
            _ => (0.0, 0.0),
        };
        for r in rows.iter_mut() {
            r.cost_usd = (r.prompt_tokens as f64 * price_in + r.completion_tokens as f64 * price_out) / 1e6;
        }
        let fresh = || rows.iter().filter(|r| !r.cached);
        let (pt, ctok) = (fresh().map(|r| r.prompt_tokens).sum(), fresh().map(|r| r.completion_tokens).sum());
        // `+ 0.0`: an empty f64 sum is -0.0, which a fully cached run would report as "-0" spent.
        let cost = fresh().map(|r| r.cost_usd).sum::<f64>() + 0.0;
        let cached_cost = rows.iter().filter(|r| r.cached).map(|r| r.cost_usd).sum::<f64>() + 0.0;
        if failed > 0 {
            eprintln!("warning: {failed} of {} teacher requests failed (see the 'error' column); re-run to retry them", rows.len());
        }
        if filter == sampling::Filter::Correct || o.n > 1 {
            let q = &questions;
            eprintln!(
                "[teacher] {} questions: {} kept, {} all wrong, {} failed ({requests} requests, {hits} answers from the cache)",
                ds.len(),
                q.kept,
                q.all_wrong,
                q.failed
            );
        }
        AskReport {
            rows,
            requests,
            cache_hits: hits,
            failed,
            dropped,
            questions,
            prompt_tokens: pt,
            completion_tokens: ctok,
            cost_usd: cost,
            cached_cost_usd: cached_cost,
        }
    }

    /// Ask round after round: every question's `n` samples, then, under `filter: "correct"`, one
    /// more sample for each question still without a correct rationale, until `max_tries`.
    /// Returns every row (judged), the requests sent and the cache hits.
    #[allow(clippy::too_many_arguments)]
    fn rounds(
        &self,
        ds: &Dataset,
        o: &AskOptions,
        level: Option<u8>,
        format: Format,
        filter: sampling::Filter,
        max_tries: usize,
        prepare: impl Fn(&crate::data::Example, usize, usize) -> Result<(Row, Option<Job>)>,
    ) -> Result<(Vec<Row>, usize, usize)> {
        let kind = ds.task.kind();
        let ids: Vec<&str> = ds.examples.iter().map(|e| e.id.as_str()).collect();
        let mut tries = vec![o.n; ds.len()];
        let mut asks: Vec<(usize, usize)> = (0..ds.len()).flat_map(|i| (0..o.n).map(move |k| (i, k))).collect();
        let (mut rows, mut requests, mut hits) = (Vec::new(), 0, 0);
        for round in 0.. {
            if asks.is_empty() {
                break;
            }
            if round > 0 {
                eprintln!("[teacher] round {}: asking again for {} questions without a correct rationale (max_tries {max_tries})", round + 1, asks.len());
            }
            let start = rows.len();
            let mut jobs = Vec::new();
            for (i, sample) in asks {
                let (row, job) = prepare(&ds.examples[i], sample, rows.len())?;
                hits += usize::from(row.cached);
                jobs.extend(job);
                rows.push(row);
            }
            requests += jobs.len();
            match &self.backend {
                Backend::OpenAi(client) if client.opts.mode == openai::Mode::Batch && !jobs.is_empty() => batch::run(self, client, jobs, &mut rows, o)?,
                Backend::OpenAi(client) => self.run_openai(client, jobs, &mut rows, o)?,
                Backend::Local(student) => self.run_local(student, jobs, &mut rows, o)?,
                Backend::Replay { dir, dataset, teacher } => replay(dir, dataset, teacher, level, format, &mut rows[start..])?,
            }
            for r in rows[start..].iter_mut() {
                if let Some(t) = &r.rationale {
                    let j = judge(t, &r.gold, kind);
                    r.extracted = j.extracted;
                    r.agrees = Some(j.correct);
                }
            }
            asks = if filter == sampling::Filter::Correct { sampling::next_round(&ids, &rows, &mut tries, max_tries) } else { Vec::new() };
        }
        Ok((rows, requests, hits))
    }

    fn run_openai(&self, client: &OpenAi, jobs: Vec<Job>, rows: &mut [Row], o: &AskOptions) -> Result<()> {
        let total = jobs.len();
        let queue = Mutex::new(request_groups(jobs, client.opts.native_n).into_iter().collect::<VecDeque<_>>());
        let results: Mutex<Vec<(usize, std::result::Result<openai::Completion, String>)>> = Mutex::new(Vec::new());
        // The first refused configuration stops every worker: the other requests would fail alike.
        let refused: Mutex<Option<String>> = Mutex::new(None);
        // (finished, failed): "answered" would be wrong for requests that failed after retries.
        let done = Mutex::new((0usize, 0usize));
        std::thread::scope(|s| {
            for _ in 0..client.opts.concurrency.max(1) {
                s.spawn(|| loop {
                    let Some(group) = queue.lock().unwrap().pop_front() else { break };
                    let first = &group[0];
                    let answers: Vec<std::result::Result<openai::Completion, String>> = match client.request_n(&first.ask(o), group.len()) {
                        Err(openai::RequestError::Config(m)) => {
                            refused.lock().unwrap().get_or_insert(m);
                            queue.lock().unwrap().clear();
                            break;
                        }
                        Err(e) => group.iter().map(|_| Err(e.message().to_string())).collect(),
                        Ok(cs) => cs.into_iter().map(Ok).collect(),
                    };
                    for (job, r) in group.iter().zip(answers) {
                        if let (Ok(c), Some(cache)) = (&r, &self.cache) {
                            // Appended and flushed now: a crash after this loses nothing.
                            let e = cache::Entry {
                                key: job.key.clone(),
                                text: c.text.clone(),
                                prompt_tokens: c.prompt_tokens,
                                completion_tokens: c.completion_tokens,
                                reasoning: c.reasoning.clone(),
                                reasoning_tokens: c.reasoning_tokens,
                            };
                            let _ = cache.put(e);
                        }
                        let mut d = done.lock().unwrap();
                        d.0 += 1;
                        d.1 += usize::from(r.is_err());
                        if d.0 % 10 == 0 || d.0 == total {
                            eprintln!("[teacher] {}/{total} samples done: {} answered, {} failed", d.0, d.0 - d.1, d.1);
                        }
                        results.lock().unwrap().push((job.idx, r));
                    }
                });
            }
        });
        if let Some(m) = refused.into_inner().unwrap() {
            // Answers that came before the refusal are in the cache: a re-run keeps them.
            return Err(usage!("teacher {}: {m}", client.opts.model));
        }
        for (idx, r) in results.into_inner().unwrap() {
            match r {
                Ok(c) => {
                    rows[idx].rationale = Some(c.text);
                    rows[idx].reasoning = c.reasoning;
                    rows[idx].reasoning_tokens = c.reasoning_tokens;
                    rows[idx].prompt_tokens = c.prompt_tokens;
                    rows[idx].completion_tokens = c.completion_tokens;
                }
                Err(e) => rows[idx].error = Some(e),
            }
        }
        Ok(())
    }

    fn run_local(&self, student: &Student, jobs: Vec<Job>, rows: &mut [Row], o: &AskOptions) -> Result<()> {
        let total = jobs.len();
        // Sampling streams are seeded from the options' seed and the prompt, and a question's
        // samples share the prompt: each sample's seed gets a batch of its own.
        let mut by_seed: std::collections::BTreeMap<u64, Vec<Job>> = Default::default();
        for j in jobs {
            by_seed.entry(j.seed).or_default().push(j);
        }
        let mut finished = 0;
        for (seed, jobs) in by_seed {
            let gen = GenOptions {
                max_new_tokens: o.max_tokens,
                temperature: o.temperature,
                top_p: o.top_p,
                seed,
                stop: Vec::new(),
                ignore_eos: false,
                beams: 1,
                ..Default::default()
            };
            for chunk in jobs.chunks(8) {
                let msgs: Vec<String> = chunk.iter().map(|j| format!("{}\n\n{}", j.system, j.user)).collect();
                let outs = generate(student, &msgs, &gen)?;
                for (j, g) in chunk.iter().zip(outs) {
                    // A thinking student writes its trace inline: kept apart as the endpoints do.
                    let t = crate::answer::think::split_think(&g.text);
                    let (text, reasoning) = (t.answer.to_string(), t.reasoning.map(str::to_string));
                    if let Some(cache) = &self.cache {
                        let e = cache::Entry {
                            key: j.key.clone(),
                            text: text.clone(),
                            prompt_tokens: 0,
                            completion_tokens: g.tokens as u64,
                            reasoning: reasoning.clone(),
                            reasoning_tokens: None,
                        };
                        cache.put(e)?;
                    }
                    rows[j.idx].rationale = Some(text);
                    rows[j.idx].reasoning = reasoning;
                    rows[j.idx].completion_tokens = g.tokens as u64;
                }
                finished += chunk.len();
                eprintln!("[teacher] {finished}/{total} generated");
            }
        }
        Ok(())
    }
}

/// Serve the release's rationales for the asked level/format, matched by question text.
fn replay(dir: &DataDir, dataset: &str, teacher: &str, level: Option<u8>, format: Format, rows: &mut [Row]) -> Result<()> {
    let q = RationaleQuery {
        teacher: if format == Format::AnswerOnly { None } else { Some(teacher.to_string()) },
        level: level.map(|l| l as i64),
        format: Some(format.name().into()),
        ..Default::default()
    };
    let corpus = Catalog::new(dir.clone()).rationales(dataset, &q)?;
    let by_q: HashMap<String, &str> = corpus.rationales.iter().map(|r| (crate::data::contamination::normalize(&r.question), r.text.as_str())).collect();
    for r in rows.iter_mut() {
        match by_q.get(&crate::data::contamination::normalize(&r.question)) {
            Some(t) => r.rationale = Some(t.to_string()),
            None => r.error = Some(format!("the release's {} has no rationale for this question", corpus.source)),
        }
    }
    Ok(())
}

impl AskReport {
    pub fn frame(&self) -> Result<Frame> {
        let r = &self.rows;
        let measures: Vec<_> = r.iter().map(|x| x.rationale.as_deref().map(crate::cot::measure)).collect();
        let s = |f: &dyn Fn(&Row) -> Option<String>| ColumnData::Str(r.iter().map(f).collect());
        Frame::from_columns(vec![
            ("id".into(), s(&|x| Some(x.id.clone()))),
            ("question".into(), s(&|x| Some(x.question.clone()))),
            ("gold".into(), s(&|x| Some(x.gold.clone()))),
            ("rationale".into(), s(&|x| x.rationale.clone())),
            ("reasoning".into(), s(&|x| x.reasoning.clone())),
            ("error".into(), s(&|x| x.error.clone())),
            ("teacher".into(), s(&|x| Some(x.teacher.clone()))),
            ("model".into(), s(&|x| Some(x.model.clone()))),
            ("level".into(), ColumnData::Int(r.iter().map(|x| x.level.map(|l| l as i64)).collect())),
            ("format".into(), s(&|x| Some(x.format.clone()))),
            ("template_version".into(), s(&|x| Some(x.template_version.clone()))),
            ("exemplar".into(), s(&|x| x.exemplar.clone())),
            ("seed".into(), ColumnData::Int(r.iter().map(|x| Some(x.seed as i64)).collect())),
            ("sample".into(), ColumnData::Int(r.iter().map(|x| Some(x.sample as i64)).collect())),
            ("cache_key".into(), s(&|x| x.cache_key.clone())),
            ("cached".into(), ColumnData::Bool(r.iter().map(|x| Some(x.cached)).collect())),
            ("extracted".into(), s(&|x| x.extracted.clone())),
            ("agrees".into(), ColumnData::Bool(r.iter().map(|x| x.agrees).collect())),
            ("words".into(), ColumnData::Int(measures.iter().map(|m| m.as_ref().map(|m| m.words as i64)).collect())),
            ("steps".into(), ColumnData::Int(measures.iter().map(|m| m.as_ref().map(|m| m.steps as i64)).collect())),
            ("prompt_tokens".into(), ColumnData::Int(r.iter().map(|x| Some(x.prompt_tokens as i64)).collect())),
            ("completion_tokens".into(), ColumnData::Int(r.iter().map(|x| Some(x.completion_tokens as i64)).collect())),
            ("reasoning_tokens".into(), ColumnData::Int(r.iter().map(|x| x.reasoning_tokens.map(|t| t as i64)).collect())),
            ("cost_usd".into(), ColumnData::Float(r.iter().map(|x| Some(x.cost_usd)).collect())),
            ("vote".into(), s(&|x| x.vote.clone())),
            ("vote_share".into(), ColumnData::Float(r.iter().map(|x| x.vote_share).collect())),
        ])
    }

    /// The successful rationales as a corpus for `sft`, training on what `trace` says: rows
    /// without a trace are skipped (and counted) under `think` and `only`.
    pub fn corpus(&self, ds: &Dataset, trace: Trace) -> crate::data::Corpus {
        let first = self.rows.first();
        let source = format!("teacher:{}:{}", first.map(|r| r.teacher.as_str()).unwrap_or(""), first.map(|r| r.model.as_str()).unwrap_or(""));
        crate::data::Corpus {
            task: ds.task.into(),
            teacher: None,
            level: first.and_then(|r| r.level),
            format: first.and_then(|r| Format::parse(&r.format).ok()).unwrap_or(Format::Plain),
            rationales: self
                .rows
                .iter()
                .enumerate()
                .filter_map(|(row, r)| {
                    let origin = crate::data::Origin {
                        task: ds.task.into(),
                        teacher: Some(format!("{}:{}", r.teacher, r.model)),
                        level: r.level,
                        format: Format::parse(&r.format).unwrap_or(Format::Plain),
                        source: source.clone(),
                        row,
                    };
                    training_text(r, trace).map(|text| crate::data::Rationale {
                        id: r.id.clone(),
                        question: r.question.clone(),
                        gold: Some(r.gold.clone()),
                        text,
                        origin,
                    })
                })
                .collect(),
            source,
            skipped: self.rows.iter().filter(|r| r.rationale.is_some() && training_text(r, trace).is_none()).count(),
            recipe: None,
        }
    }
}

/// What a row trains on under `trace`; `None` for a failed row, or one without a trace when
/// the trace is asked for.
fn training_text(r: &Row, trace: Trace) -> Option<String> {
    let answer = r.rationale.as_ref()?;
    match (trace, r.reasoning.as_deref()) {
        (Trace::None, _) => Some(answer.clone()),
        (Trace::Think, Some(t)) => Some(crate::answer::think::join_think(t, answer)),
        (Trace::Only, Some(t)) => Some(t.to_string()),
        (_, None) => None,
    }
}

/// Where the teacher cache lives unless the options say otherwise.
pub fn default_cache_path() -> PathBuf {
    crate::model::cotlab_home().join("teacher-cache.jsonl")
}
