//! Rhai bindings for teachers: argument adapters over `lab::Workspace::teacher`.

use std::sync::Arc;

use rhai::{Engine, Map};

use super::docs::{def, get};
use super::train::{take_str, StudentH};
use super::{options, rt, Context, RhaiResult};
use crate::data::{Corpus, Dataset};
use crate::lab::TeacherSpec;
use crate::results::Frame;
use crate::teacher::{AskOptions, AskReport, Teacher, Trace};
use crate::usage;

#[derive(Clone)]
pub struct TeacherH(pub Arc<Teacher>);

#[derive(Clone)]
pub struct AskH(pub Arc<AskReport>, pub Dataset);

fn no_more(opts: &Map, what: &str, known: &str) -> RhaiResult<()> {
    match opts.keys().next() {
        Some(k) => Err(rt(usage!("{what}: unknown option '{k}' ({known})"))),
        None => Ok(()),
    }
}

pub(super) const INTRO: &str = "What the options mean, the prompts, one-shot exemplars, retries and the request cache: \
[teachers.md](teachers.md). `cache` (`openai`, `local`, a student): a run name, i.e. a file under the runs dir \
(`\"caches/gpt4o.jsonl\"`); default `~/.cache/cotlab/teacher-cache.jsonl`.";

const TEACHER: &str = r#"A `Teacher`: what writes rationales for `t.ask(dataset, ..)`.

Kinds:
- `teacher("openai", #{...})`: any OpenAI-compatible chat-completions endpoint; options below.
- `teacher("local", #{model, device, cache})`: a candle model as teacher (offline): `model` a
  student spec (default `"default"`), `device` as `student`.
- `teacher("replay", #{dataset, teacher})`: the release's rationales for the asked level/format,
  matched by question: `dataset` (required), `teacher` (default `gpt-4o`); nothing is cached.
- `teacher(student, #{cache})`: a loaded `Student` as teacher.

`teacher("openai")` options:

| option | default | range / values |
|---|---|---|
| `base_url` | `"https://api.openai.com/v1"` | the endpoint |
| `model` | `"gpt-4o"` | the model name the endpoint serves |
| `api_key_env` | none: `OPENAI_API_KEY` for api.openai.com only, no key elsewhere | the name of the environment variable holding the key (it must be set) |
| `allow_insecure_key` | false | send the key over plain http to a non-loopback host |
| `concurrency` | 4 | `1..=256` requests in flight |
| `timeout_s` | 60 | `0.001..=86400`: one attempt as a whole, slow answers included |
| `max_retries` | 5 | `0..=100` |
| `backoff_s` | 1 | `0..=3600`: the first wait, doubling each retry (capped at `max_wait_s`) |
| `max_wait_s` | 60 | `0..=3600`: the longest wait between attempts, Retry-After (seconds or an HTTP date) included |
| `price_in`, `price_out` | 0, 0 | `0..=1000000` USD per million prompt / completion tokens (a reasoning model's trace is billed as completion tokens), for `cost_usd` |
| `rpm`, `tpm` | none | requests / tokens per minute for all of this teacher's workers (a token bucket with one second of burst; a request's tokens estimated as prompt bytes / 4 + `max_tokens`) |
| `reasoning` | by the model's name: true for the o1/o3/o4/gpt-5 families (not `gpt-5-chat-*`) | send `max_completion_tokens` and no `temperature`/`top_p` (reasoning models refuse them) |
| `reasoning_effort` | none (the endpoint's default) | `none`, `minimal`, `low`, `medium`, `high`, `xhigh` (reasoning models only) |
| `mode` | `"sync"` | `sync` (one request per row), `batch` (the Batch API, `/files` and `/batches`: half the price, answered within 24 h; the batch id is journaled beside the cache, so a killed run resumes polling it and never submits twice) |
| `batch_retry` | `"batch"` | how requests that got no answer in a batch are asked again (once): `batch` (a smaller batch of only those), `sync` (the normal client) |
| `poll_s`, `poll_max_s` | 30, 600 | `0.001..=86400`: the first wait between two polls of a batch, doubling up to `poll_max_s` |
| `batch_timeout_s` | 90000 | `0..=2592000`: the longest one run waits for its batches (they run on; a re-run resumes polling) |
| `native_n` | false | ask a question's `n` samples as one request's `n` choices (vLLM and OpenAI take `n`: the prompt is sent and billed once; the completion tokens are shared out evenly over the rows) instead of `n` requests seeded `seed + k`; `mode: "sync"` only; an endpoint that refuses `n` or returns fewer choices stops the run saying to turn it off |
| `cache` | `~/.cache/cotlab/teacher-cache.jsonl` | a run name: a file under the runs dir (`"caches/gpt4o.jsonl"`) |

```rhai
let t = teacher("openai", #{ model: "gpt-4o-mini", concurrency: 8, cache: "caches/mini.jsonl" });
let o = teacher("openai", #{ model: "o4-mini", reasoning_effort: "low", price_in: 1.1, price_out: 4.4 });
let b = teacher("openai", #{ model: "gpt-4o-mini", mode: "batch", batch_retry: "sync", cache: "caches/mini.jsonl" });
let r = teacher("replay", #{ dataset: "svamp" });
```"#;

const CORPUS: &str = r#"The rationales as a `Corpus`, choosing what a reasoning teacher's rows train on.

`trace`: `"none"` (default: the answer text), `"think"` (`<think>\n{reasoning}\n</think>\n\n{answer}`,
the layout Qwen3 and the R1-Distill templates train on), `"only"` (the trace alone). Under `think`
and `only`, answers without a trace are left out and counted (`c.skipped`, and a note).

```rhai
let run = teacher("openai", #{ model: "o4-mini" }).ask(dataset("svamp", #{ limit: 20 }), #{ level: 3 });
sft(student("default"), run.corpus(#{ trace: "think" }), #{ run: "r1-style" });
```"#;

const ASK: &str = r#"Ask the teacher for one rationale per question and sample of a dataset: a `TeacherRun`.

Options:

| option | default | range / values |
|---|---|---|
| `level` | required (none for answer-only) | 1–6 |
| `format` | `"plain"` | `plain`, `bsm`, `rar`, `sym`, `equation-only`, `answer-only` |
| `with_gold` | false | give the teacher the gold answer (rationalisation) |
| `n` | 1 | `1..=10000` samples per question (sample k is drawn with seed `seed + k`; with the teacher's `native_n`, the choices of one request) |
| `filter` | `"none"` | `"correct"`: keep a rationale only if its answer equals gold (the scoring judge) |
| `keep_correct` | false | the older spelling of `filter: "correct"` |
| `max_tries` | `n` | `n..=10000`, with `filter: "correct"`: ask a question again, one sample at a time, until it has a correct rationale or this many samples (rejection sampling) |
| `keep` | `"all"` | which of a question's surviving rationales to keep: `all`, `first`, `shortest`, `longest` |
| `vote` | false | self-consistency: every row gets its question's majority answer over the samples (`vote`) and its share (`vote_share`) |
| `seed` | 0 | |
| `temperature` | 0 | `0..=100` |
| `top_p` | 1 | `1e-9..=1` |
| `max_tokens` | 512 | `1..=1000000` |
| `shots` | 0 | `0..=1`: one worked example from the release before each question |
| `system`, `user` | the paper's prompts | your own templates: `{question}`, `{choices}` (`A. …` lines), `{answer}` (gold), `{level_instruction}`, `{format_instruction}`, `{exemplar}`; `{{`/`}}` for braces. The rendered prompt is part of the cache key; rows name the templates in `template_version` (`custom:<hash>`) |

```rhai
let run = t.ask(dataset("svamp", #{ limit: 20 }), #{ level: 3, format: "sym", keep_correct: true });
print(run);   // TeacherRun(18 rationales, 20 requests, 0 cached, 0 failed)
let c = run.corpus();
// Rejection sampling: up to 4 tries per question, the shortest correct rationale kept.
let rs = t.ask(dataset("gsm8k", #{ limit: 40 }), #{ level: 2, temperature: 0.8, filter: "correct", max_tries: 4, keep: "shortest" });
print(`${rs.questions_kept} kept, ${rs.questions_all_wrong} all wrong, ${rs.requests} requests`);
// Your own prompt: the level's instruction, then the question.
let own = t.ask(dataset("svamp", #{ limit: 5 }), #{ level: 2, system: "You are a math tutor. {level_instruction}", user: "Problem: {question}" });
```"#;

fn run_count(engine: &mut Engine, prop: &str, what: &str, f: fn(&AskReport) -> i64) {
    get(engine, "run", prop, &format!("{what}\n\n```rhai\nprint(run.{prop});\n```"), move |r: &mut AskH| f(&r.0));
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    let ws = ctx.workspace();
    let w = ws.clone();
    def(engine, "teacher", ["kind", "opts"], TEACHER, move |kind: &str, opts: Map| -> RhaiResult<TeacherH> {
        let mut opts = opts;
        let what = format!("teacher(\"{kind}\")");
        let spec = match kind {
            "openai" => {
                let cache = take_str(&mut opts, "cache", &what)?;
                TeacherSpec::OpenAi { options: options(opts)?, cache }
            }
            "local" => {
                let cache = take_str(&mut opts, "cache", &what)?;
                let model = take_str(&mut opts, "model", &what)?.unwrap_or_else(|| "default".into());
                let device = take_str(&mut opts, "device", &what)?;
                no_more(&opts, &what, "model, device, cache")?;
                TeacherSpec::Local { model, device, cache }
            }
            "replay" => {
                let dataset = take_str(&mut opts, "dataset", &what)?.ok_or_else(|| rt(usage!("{what}: give 'dataset'")))?;
                let teacher = take_str(&mut opts, "teacher", &what)?.unwrap_or_else(|| "gpt-4o".into());
                no_more(&opts, &what, "dataset, teacher")?;
                TeacherSpec::Replay { dataset, teacher }
            }
            other => return Err(rt(usage!("unknown teacher kind '{other}': expected openai, local or replay"))),
        };
        Ok(TeacherH(Arc::new(w.teacher(spec).map_err(rt)?)))
    });
    let w = ws.clone();
    def(engine, "teacher", ["student", "opts"], TEACHER, move |s: &mut StudentH, opts: Map| -> RhaiResult<TeacherH> {
        // A loaded student as a local teacher.
        let mut opts = opts;
        let cache = take_str(&mut opts, "cache", "teacher(student)")?;
        no_more(&opts, "teacher(student)", "cache")?;
        Ok(TeacherH(Arc::new(w.student_teacher(s.0.clone(), cache.as_deref()).map_err(rt)?)))
    });
    let w = ws.clone();
    def(engine, "ask", ["t", "dataset", "opts"], ASK, move |t: &mut TeacherH, ds: Dataset, opts: Map| -> RhaiResult<AskH> {
        let o: AskOptions = options(opts)?;
        Ok(AskH(Arc::new(t.0.ask_with(&ds, &o, Some(&w.data_dir)).map_err(rt)?), ds))
    });
    def(
        engine,
        "to_string",
        ["t"],
        "A short summary, `Teacher(<kind> <model>)`.\n\n```rhai\nprint(teacher(\"replay\", #{ dataset: \"svamp\" }));\n```",
        |t: &mut TeacherH| format!("Teacher({} {})", t.0.kind, t.0.model),
    );
    run_count(engine, "requests", "Requests sent.", |r| r.requests as i64);
    run_count(engine, "cache_hits", "Answers that came from the cache.", |r| r.cache_hits as i64);
    run_count(engine, "failed", "Requests that failed (after retries); their rows carry `error` in `run.df()`.", |r| r.failed as i64);
    run_count(engine, "dropped", "Rationales dropped by `filter` (or `keep_correct`) and `keep`.", |r| r.dropped as i64);
    run_count(engine, "questions_kept", "Questions with at least one rationale kept.", |r| r.questions.kept as i64);
    run_count(engine, "questions_all_wrong", "Questions answered, but never correctly (every try wrong).", |r| r.questions.all_wrong as i64);
    run_count(engine, "questions_failed", "Questions whose every request failed.", |r| r.questions.failed as i64);
    run_count(engine, "prompt_tokens", "Prompt tokens the endpoint reported for this run's requests (cached answers not counted).", |r| r.prompt_tokens as i64);
    run_count(engine, "completion_tokens", "Completion tokens the endpoint reported for this run's requests (cached answers not counted).", |r| {
        r.completion_tokens as i64
    });
    get(
        engine,
        "run",
        "cost_usd",
        "What this run spent in USD (from the teacher's `price_in`/`price_out`): answers the cache served are not counted (see `cached_cost_usd`).\n\n```rhai\nprint(run.cost_usd);\n```",
        |r: &mut AskH| r.0.cost_usd,
    );
    get(
        engine,
        "run",
        "cached_cost_usd",
        "What the answers the cache served cost when they were first asked, in USD (not spent again).\n\n```rhai\nprint(run.cached_cost_usd);\n```",
        |r: &mut AskH| r.0.cached_cost_usd,
    );
    def(engine, "len", ["run"], "The number of rationales the run kept.\n\n```rhai\nprint(run.len());\n```", |r: &mut AskH| r.0.rows.len() as i64);
    def(
        engine,
        "df",
        ["run"],
        "One row per rationale with its provenance: teacher, model, level, format, template_version, exemplar, seed, sample, cache_key, cached, plus extracted, agrees, words, steps, `reasoning` (a reasoning model's trace, apart from the answer in `rationale`), `prompt_tokens`, `completion_tokens` (the trace's included), `reasoning_tokens` (when the endpoint reports them), `cost_usd` (at the teacher's prices; for a cached row, what it cost when first asked), and `error` for requests that failed.\n\n```rhai\nrun.df().filter(col(\"agrees\")).show();\n```",
        |r: &mut AskH| -> RhaiResult<Frame> { r.0.frame().map_err(rt) },
    );
    def(
        engine,
        "corpus",
        ["run"],
        "The rationales as a `Corpus` (for `sft`): the answer texts, without reasoning traces.\n\n```rhai\nsft(s, run.corpus(), #{ run: \"from-teacher\" });\n```",
        |r: &mut AskH| -> Corpus { r.0.corpus(&r.1, Trace::None) },
    );
    def(engine, "corpus", ["run", "opts"], CORPUS, |r: &mut AskH, opts: Map| -> RhaiResult<Corpus> {
        let mut opts = opts;
        let trace = match take_str(&mut opts, "trace", "run.corpus")? {
            Some(t) => Trace::parse(&t).map_err(|e| rt(usage!("run.corpus: {e}")))?,
            None => Trace::None,
        };
        no_more(&opts, "run.corpus", "trace")?;
        let c = r.0.corpus(&r.1, trace);
        if c.skipped > 0 {
            eprintln!(
                "note: run.corpus: {} of {} answers have no reasoning trace and are left out (trace: {trace})",
                c.skipped,
                c.skipped + c.rationales.len()
            );
        }
        Ok(c)
    });
    def(
        engine,
        "to_string",
        ["run"],
        "A short summary, `TeacherRun(18 rationales, 20 requests, 0 cached, 0 failed)`.\n\n```rhai\nprint(run);\n```",
        |r: &mut AskH| format!("TeacherRun({} rationales, {} requests, {} cached, {} failed)", r.0.rows.len(), r.0.requests, r.0.cache_hits, r.0.failed),
    );
}
