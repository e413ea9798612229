//! Rhai bindings for students and SFT: argument adapters over `lab::Workspace`.

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map};

use super::docs::{def, get};
use super::{options, rt, Context, RhaiResult};
use crate::data::Corpus;
use crate::lab::StudentOptions;
use crate::model::Student;
use crate::train::export::export_run;
use crate::train::kd::{self, LogitsOptions};
use crate::train::sft::{sft_tracked, Tracking};
use crate::train::{distill, DistillOptions, RunDir, SftOptions};
use crate::usage;

/// Where `teacher_logits` stores live, under the runs dir.
const LOGITS_DIR: &str = "logits";

/// `kd.logits` as a store dir: a `teacher_logits` result (its `dir`), a dir, or a store name
/// under `runs/logits/`.
fn resolve_kd_logits(kd: &mut Dynamic, runs_dir: &std::path::Path) -> RhaiResult<()> {
    let Some(mut m) = kd.clone().try_cast::<Map>() else { return Ok(()) };
    let logits = match m.get("logits") {
        Some(v) if v.is_map() => v.clone().cast::<Map>().get("dir").map(|d| d.to_string()),
        Some(v) if v.is_string() => Some(v.to_string()),
        _ => None,
    };
    let Some(l) = logits else { return Ok(()) };
    let p = std::path::Path::new(&l);
    let dir = if p.is_absolute() || p.exists() { p.to_path_buf() } else { runs_dir.join(LOGITS_DIR).join(&l) };
    m.insert("logits".into(), dir.display().to_string().into());
    *kd = m.into();
    Ok(())
}

/// A loaded student, shared (its weights are `Var`s and train in place).
#[derive(Clone)]
pub struct StudentH(pub Arc<Student>);

/// Remove a string option from a map; `what` names the function in errors.
pub(super) fn take_str(m: &mut Map, key: &str, what: &str) -> RhaiResult<Option<String>> {
    match m.remove(key) {
        Some(v) => Ok(Some(v.into_string().map_err(|t| rt(usage!("{what}: '{key}' must be a string, found {t}")))?)),
        None => Ok(None),
    }
}

pub(super) const INTRO: &str = "Model specs, families and devices: `student`. What the training options do: \
[training.md](training.md); what the evaluation defaults reproduce: [evaluation.md](evaluation.md).";

const STUDENT: &str = r#"Load a student model, as a `Student`.

`spec`: `"default"` (SmolLM2-135M-Instruct from `scripts/setup.sh`), a `llama`, `qwen2` or `qwen3`
`.gguf` file, a Hugging Face model dir (config.json, *.safetensors, tokenizer.json), a training
run (its dir, or its name under the runs dir: the last checkpoint on the run's base model), or
`hf:ORG/NAME[@rev]` (downloaded into `$HF_HOME/hub` from `$HF_ENDPOINT`, with `$HF_TOKEN` for
gated models; needs internet). The same specs work for
`cotlab eval --model`, `cotlab export --model`, the benches and `teacher("local", #{model})`.
Families: Llama (incl. Llama-3.x rope scaling), SmolLM2, Mistral, Qwen2/2.5, Qwen3, Gemma, BLOOM,
each checked against transformers in `tests/hf_families.rs`; GGUF files of architecture `llama`,
`qwen2` and `qwen3`.

Options: `device`: `cpu` (default), `cuda`, `cuda:N`, `auto` (CUDA needs a build with
`scripts/build_cuda.sh`: [cuda.md](cuda.md)). `dtype`: `auto` (default: bf16 on CUDA, f32 on
the CPU), `bf16` or `f32`; weights and optimizer state stay f32. `template`: by default the
paper's LLaMA-Factory template of the family the model's own chat template is detected as
(`chatml`, `llama3`, `gemma`, `alpaca`: the paper's students keep the paper's protocol), else the
model's own Jinja template, rendered as transformers' `apply_chat_template` renders it
([chat-templates.md](chat-templates.md)); name one to override: `chatml`, `llama3`, `gemma`,
`alpaca` (the paper: alpaca for BLOOM, llama3 for Llama, gemma for Gemma) or `model` (the model's
own Jinja template, e.g. Llama-3.2's with its date header). A model that declares no chat
template (a base checkpoint) is an error naming these, never a silent guess. Training computes
the loss on the answer only, whichever template. A training run records its template and is
reloaded with it.

```rhai
let s = student("default");
let g = student("hf:google/gemma-2b", #{ device: "cuda", dtype: "bf16", template: "gemma" });
```"#;

const SFT: &str = r#"Fine-tune `s` in place on the corpus's (question, rationale) pairs, in `runs/<run>/`.

`run` (a run name) is required; the same call again resumes. A curriculum corpus (`c.order(..)`)
trains in its order, unshuffled; each invocation appends its build, seed and model SHA-256 to
`provenance.jsonl`. `stop_after` (≥ 1): end this invocation after that many steps (not part of
the run's identity). Returns `#{run_dir, steps, total_steps, resumed_from, examples, truncated,
dropped, truncation, losses, first_loss, last_loss, tokens_per_s, seconds}`.

Options (defaults: the paper's recipe; [training.md](training.md) says what each does):

| option | default | range / values |
|---|---|---|
| `preset` | `"paper"` | `paper` (the only recipe; named for clarity) |
| `epochs` | 3 | `0.000001..=1000` |
| `max_steps` | none (from `epochs`) | `1..=10000000`; overrides `epochs` |
| `lr` | 5e-5 | `1e-12..=1` |
| `schedule` | `"cosine"` | `cosine`, `linear`, `constant` (after warm-up) |
| `warmup_steps` | 0 | `0..=10000000` |
| `batch_size` | 4 (micro-batch) | `1..=4096` |
| `grad_accum` | 16 (global batch 64) | `1..=65536` |
| `max_len` | 4096 (the paper's cut-off) | `8..=131072` tokens, prompt + response |
| `max_grad_norm` | 1.0 | `0..=1000000` |
| `weight_decay` | 0 | `0..=1` |
| `seed` | 100 (the paper's) | any |
| `group_by_length` | false | batch examples of similar length together |
| `save_every` | 50 | `1..=10000000` steps (and always at the end) |
| `lora` | none (full fine-tuning) | `#{r: 8, alpha: 16, dropout: 0.05, targets: ["q_proj", "v_proj"]}`, each key optional with these defaults; `r` `1..=4096`, `alpha` `0.000001..=1000000`, `dropout` `0..=0.99`, `targets`: module names as in PEFT, for Llama, Qwen2, Qwen3 and Gemma `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`; for BLOOM `query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h` (give `targets` there: the default names Llama's modules) |
| `pack` | true | pack each micro-batch into as few rows as fit ([training.md](training.md#options)) |
| `shuffle` | true | shuffle the examples each epoch (seeded); `sft` turns it off for an ordered corpus |
| `kd` | none | token-level KD from stored teacher logits: `#{logits: teacher_logits(..), alpha: 0.5, temperature: 1.0}`; loss `(1 − alpha)·CE + alpha·T²·KL(teacher top-k ‖ student)` ([training.md](training.md#token-level-kd-offline)); `logits`: the result, its dir or its name; `temperature` must be the store's, `max_len` the store's |
| `log_to` | none | `"tensorboard"`, `"mlflow"` or a list of both: each step's loss, lr, grad norm and tokens/s as TensorBoard event files in the run's `tensorboard/` and as an MLflow run (experiment `cotlab`) in `runs/mlruns/` ([training.md](training.md#tracking)); not part of the run's identity |

```rhai
let s = student("default");
let r = sft(s, rationales("svamp", #{ level: 3 }), #{ run: "svamp-l3", max_steps: 60, lr: 3e-4, batch_size: 4, grad_accum: 1 });
print(r.last_loss);
```"#;

const TEACHER_LOGITS: &str = r#"Store `teacher`'s top-k log-probabilities at every response token of `corpus`, for `sft`'s `kd`.

The teacher runs teacher-forced over each (question, rationale) tokenized as `sft` tokenizes it
(its chat template, `max_len`); for every response position the `top_k` most likely ids and
their log-probabilities at `temperature` go to `runs/logits/<name>/` (`identity.json`,
`logits.jsonl`, one line per example, appended as each is done). The store is keyed by the
teacher's weights fingerprint, its vocabulary, template, the corpus's content, `top_k`,
`temperature` and `max_len`: the same call again reuses a complete store and finishes an
interrupted one; another setting under the same `name` is an error. `stop_after` (≥ 1): stop
after that many new examples. The student that trains on it must share the teacher's vocabulary
(checked by `sft`). Returns `#{dir, examples, computed, complete, positions, top_k, temperature,
max_len}`.

| option | default | range / values |
|---|---|---|
| `top_k` | 20 | `1..=` the vocabulary size |
| `temperature` | 1.0 | `0.001..=100` |
| `max_len` | 4096 | `8..=131072`: the `sft` run's `max_len` |
| `name` | teacher name + identity hash | the store's dir name under `runs/logits/` |

```rhai
let t = student("default");
let l = teacher_logits(t, rationales("arith", #{ level: 2, n: 32 }), #{ top_k: 20, max_len: 256 });
sft(student("default"), rationales("arith", #{ level: 2, n: 32 }), #{ run: "kd", max_len: 256, kd: #{ logits: l, alpha: 0.5 } });
```"#;

const DISTILL: &str = r#"On-policy token-level KD: train `s` in place towards `teacher`, in `runs/<run>/`.

For a share `lmbda` of micro-batches (a seeded draw) the student answers the batch's prompts
itself (sampling at `temperature`, up to `max_new_tokens`, cut to `max_len`); teacher and
student then run teacher-forced over prompt + response and the loss at the response tokens is
TRL's generalized JSD over the whole vocabulary (`beta` 0: forward KL(teacher ‖ student), 1:
reverse KL, between: the mixture JSD; both models' logits divided by `temperature`), per
response token as `sft`'s NLL. The other micro-batches score the corpus's responses with the
same loss. A dataset instead of a corpus has no responses: it needs `lmbda: 1`. The teacher
must share the student's vocabulary (else an error naming both). Training is `sft`'s: every
`sft` option but `kd` (`steps` is `max_steps`), the same run dir, resume (the same call again
continues at the saved step with the same on-policy draws and answers), `stop_after`,
`provenance.jsonl` (both models) and `log_to`; each `train_log.jsonl` line has
`on_policy_batches`. The run's identity adds every option below and the teacher's path and
weights fingerprint ([training.md](training.md#on-policy-kd-distill)). Returns `sft`'s map plus
`on_policy_batches`, `corpus_batches`, `generated_tokens` (this invocation).

| option | default | range / values |
|---|---|---|
| `beta` | 0.5 | `0..=1` |
| `lmbda` | 0.5 | `0..=1`: share of on-policy micro-batches |
| `max_new_tokens` | 128 | `1..=131072` |
| `temperature` | 1.0 | `0.001..=100` |
| `run` | required | the run's name |
| every `sft` option | as `sft` | e.g. `max_steps` (or `steps`), `epochs`, `lr`, `batch_size`, `grad_accum`, `max_len`, `seed`, `lora` |

```rhai
let t = student("arith-l2");   // a trained teacher run
let r = distill(student("default"), t, rationales("arith", #{ level: 2, n: 64 }), #{ run: "gkd", steps: 20, lr: 1e-4, batch_size: 4, grad_accum: 1, max_len: 256, lmbda: 1.0 });
print(r.on_policy_batches);
```"#;

/// Split a `distill` options map into the run name, `stop_after`, `distill`'s own options and
/// `sft`'s.
fn distill_options(mut opts: Map) -> RhaiResult<(String, Option<usize>, DistillOptions, SftOptions)> {
    let name =
        take_str(&mut opts, "run", "distill")?.ok_or_else(|| rt(usage!("distill: give the run a name: #{{run: \"gkd\", ...}} (its dir is runs/<name>)")))?;
    let stop_after = take_stop_after(&mut opts, "distill")?;
    let mut own = Map::new();
    for k in DistillOptions::KEYS {
        if let Some(v) = opts.remove(*k) {
            own.insert((*k).into(), v);
        }
    }
    if let Some(v) = opts.remove("steps") {
        if opts.contains_key("max_steps") {
            return Err(rt(usage!("distill: give 'steps' or 'max_steps', not both")));
        }
        opts.insert("max_steps".into(), v);
    }
    // A 'kd' map parses as an sft option; `train::distill` refuses it, naming what to drop.
    Ok((name, stop_after, options(own)?, options(opts)?))
}

/// `stop_after` (≥ 1) removed from a map.
fn take_stop_after(opts: &mut Map, what: &str) -> RhaiResult<Option<usize>> {
    match opts.remove("stop_after") {
        Some(v) => {
            let k = v.as_int().map_err(|t| rt(usage!("{what}: 'stop_after' must be an integer, found {t}")))?;
            Ok(Some(usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| rt(usage!("{what}: 'stop_after' must be at least 1, got {k}")))?))
        }
        None => Ok(None),
    }
}

/// A dataset as a corpus of questions without responses (every batch on-policy).
fn questions_only(ds: &crate::data::Dataset) -> Corpus {
    let source = format!("dataset:{}-{}", ds.name, ds.split);
    let rationales = ds
        .examples
        .iter()
        .enumerate()
        .map(|(row, e)| crate::data::corpus::Rationale {
            id: e.id.clone(),
            question: e.question.clone(),
            gold: Some(e.answer.clone()),
            text: String::new(),
            origin: crate::data::corpus::Origin {
                task: ds.task.into(),
                teacher: None,
                level: None,
                format: crate::cot::Format::Plain,
                source: source.clone(),
                row,
            },
        })
        .collect();
    Corpus { task: ds.task.into(), teacher: None, level: None, format: crate::cot::Format::Plain, source, rationales, skipped: 0, recipe: None }
}

const GENERATE: &str = r#"Generate an answer to one question: `#{text, tokens, finish}` (`finish`: `eos`, `stop`,
`length`; `tokens` counts the stop token).

Options:

| option | default | range / values |
|---|---|---|
| `max_new_tokens` | 320 | `1..=1000000` |
| `temperature` | 0 (greedy) | `0..=100` |
| `top_p` | 1 | `1e-9..=1` |
| `seed` | 0 | the per-prompt sampling stream |
| `stop` | `[]` | extra stop strings (EOS and the template's end marker always stop) |
| `ignore_eos` | false | decode exactly `max_new_tokens` (benchmarks) |
| `beams` | 1 | `1..=16`: beam search of that width ([evaluation.md](evaluation.md#beam-search)); `temperature > 0` with `beams > 1` is an error |
| `decode_weights` | `"auto"` | `auto`, `f32`, `bf16`, `q8_0`, `q4_1`: the weights decoding reads; `auto` the fastest that keeps the results ([evaluation.md](evaluation.md#decoding-weights)) |

```rhai
let g = generate(student("default"), "What is 2 + 3?", #{ max_new_tokens: 64 });
print(g.text);
```"#;

const EVALUATE: &str = r#"Zero-shot evaluation of `s` on a dataset, in `runs/<name>/`.

`name`: the eval dir's run name (default `eval-<task>-<split>-<model>`, plus `-n<N>-s<seed>` for
a subset, the same rule as `cotlab eval`; a run's model is the run dir's name, so a trained
student never resumes into its base model's eval). Returns `#{task, split, model, n, correct,
accuracy, ci95_low, ci95_high, unparsed, truncated, truncated_in_thinking, mean_tokens, truncated_frac,
tokens_per_correct, generated_now, seconds, eval_dir, protocol, accuracy_paper, accuracy_lenient,
max_new_tokens, decoded_with, prompt_template, template, options}`: `decoded_with` names the weights
that ran (`decode_weights` resolved: `auto` is `q4_1` for weights still on their GGUF's Q4_1 grid,
else `bf16` on CPUs with AVX512-BF16, else `f32`), `truncated` counts generations cut at
`max_new_tokens` (`truncated_frac` their share), `truncated_in_thinking` those cut inside a
`<think>` trace (a thinking student's answer is read after `</think>`; one cut before it is
unparsed); `tokens_per_correct` is all generated tokens over the correct answers (`()` with none). What the defaults
reproduce: [evaluation.md](evaluation.md).

Options:

| option | default | range / values |
|---|---|---|
| `batch_size` | 32 cache rows: 32 prompts greedy, 6 at `beams: 5` | `1..=4096` prompts in flight; not part of the eval dir's identity |
| `max_new_tokens` | the paper's: 1024 for math, 640 for commonsense | as `generate` |
| `temperature`, `top_p`, `seed` | 0, 1, 0 | as `generate` |
| `protocol` | `"paper"` | `paper`, `lenient` ([scoring.md](scoring.md)) |
| `prompt` | `"paper"` | `paper` (the paper evaluator's prompt), `train` (the training template's), `model` (the model's own Jinja chat template with the generation prompt; the result's `template` says which was used) |
| `beams` | the paper's: 5 for `csqa`, `obqa`, `strategyqa`; 1 otherwise | `1..=16` |
| `decode_weights` | `"auto"` | as `generate`; a non-default value is part of the eval dir's identity |

```rhai
let r = evaluate(student("default"), dataset("svamp", #{ limit: 60, seed: 1 }), #{ name: "eval-before", max_new_tokens: 128 });
print(`${r.accuracy} (${r.ci95_low}..${r.ci95_high})`);
```"#;

const SHOW: &str = "A short summary: `Student(<name>, 134.5M params, chatml)`.\n\n```rhai\nprint(student(\"default\"));\n```";

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    let ws = ctx.workspace();
    let w = ws.clone();
    def(engine, "student", ["spec"], STUDENT, move |spec: &str| -> RhaiResult<StudentH> {
        Ok(StudentH(Arc::new(w.student(spec, &StudentOptions::default()).map_err(rt)?)))
    });
    let w = ws.clone();
    def(engine, "student", ["spec", "opts"], STUDENT, move |spec: &str, opts: Map| -> RhaiResult<StudentH> {
        Ok(StudentH(Arc::new(w.student(spec, &options(opts)?).map_err(rt)?)))
    });
    get(
        engine,
        "s",
        "name",
        "The model's name (the spec's model, or the run it was trained in).\n\n```rhai\nprint(student(\"default\").name);\n```",
        |s: &mut StudentH| s.0.name.clone(),
    );
    get(engine, "s", "num_params", "The number of parameters.\n\n```rhai\nprint(student(\"default\").num_params);\n```", |s: &mut StudentH| {
        s.0.model.num_params() as i64
    });
    get(engine, "s", "template", "The chat template: `chatml`, `llama3`, `gemma`, `alpaca` (the paper family detected in the model's own, or given) or `model` (the model's own Jinja template).\n\n```rhai\nprint(student(\"default\").template);   // chatml\n```", |s: &mut StudentH| {
        s.0.template.name().to_string()
    });
    get(
        engine,
        "s",
        "family",
        "The architecture family: `llama`, `qwen2`, `qwen3`, `gemma`, `bloom`.\n\n```rhai\nprint(student(\"default\").family);   // llama\n```",
        |s: &mut StudentH| s.0.config.family.name().to_string(),
    );
    let show = |s: &mut StudentH| format!("Student({}, {:.1}M params, {})", s.0.name, s.0.model.num_params() as f64 / 1e6, s.0.template.name());
    def(engine, "to_string", ["s"], SHOW, show);
    def(engine, "to_debug", ["s"], SHOW, show);

    let w = ws.clone();
    def(engine, "sft", ["s", "corpus", "opts"], SFT, move |s: &mut StudentH, corpus: Corpus, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name =
            take_str(&mut opts, "run", "sft")?.ok_or_else(|| rt(usage!("sft: give the run a name: #{{run: \"svamp-l3\", ...}} (its dir is runs/<name>)")))?;
        let run = RunDir::new(w.run_dir(&name).map_err(rt)?);
        let stop_after = match opts.remove("stop_after") {
            Some(v) => {
                let k = v.as_int().map_err(|t| rt(usage!("sft: 'stop_after' must be an integer, found {t}")))?;
                Some(usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| rt(usage!("sft: 'stop_after' must be at least 1, got {k}")))?)
            }
            None => None,
        };
        if let Some(kd) = opts.get_mut("kd") {
            resolve_kd_logits(kd, &w.runs_dir)?;
        }
        let o: SftOptions = options(opts)?;
        let tracking = Tracking {
            target: crate::track::Target { mlruns: w.runs_dir.join("mlruns"), experiment: "cotlab".into(), run_name: name.clone() },
            extra: Default::default(),
            finish_with_training: true,
        };
        let report = sft_tracked(&s.0, &corpus, &o, &run, stop_after, &tracking).map_err(rt)?;
        rhai::serde::to_dynamic(report)
    });

    for with_dataset in [false, true] {
        let w = ws.clone();
        let train = move |s: &StudentH, t: &StudentH, corpus: &Corpus, opts: Map| -> RhaiResult<Dynamic> {
            let (name, stop_after, o, sft_opts) = distill_options(opts)?;
            if with_dataset && o.lmbda < 1.0 {
                return Err(rt(usage!(
                    "distill: a dataset has questions but no responses, so every batch must be on-policy: give lmbda: 1 (got {}), or a corpus",
                    o.lmbda
                )));
            }
            let run = RunDir::new(w.run_dir(&name).map_err(rt)?);
            let tracking = Tracking {
                target: crate::track::Target { mlruns: w.runs_dir.join("mlruns"), experiment: "cotlab".into(), run_name: name.clone() },
                extra: Default::default(),
                finish_with_training: true,
            };
            rhai::serde::to_dynamic(distill(&s.0, &t.0, corpus, &o, &sft_opts, &run, stop_after, &tracking).map_err(rt)?)
        };
        if with_dataset {
            def(engine, "distill", ["s", "teacher", "dataset", "opts"], DISTILL, move |s: &mut StudentH, t: StudentH, ds: crate::data::Dataset, opts: Map| {
                train(s, &t, &questions_only(&ds), opts)
            });
        } else {
            def(engine, "distill", ["s", "teacher", "corpus", "opts"], DISTILL, move |s: &mut StudentH, t: StudentH, corpus: Corpus, opts: Map| {
                train(s, &t, &corpus, opts)
            });
        }
    }

    let w = ws.clone();
    def(engine, "teacher_logits", ["teacher", "corpus", "opts"], TEACHER_LOGITS, move |t: &mut StudentH, corpus: Corpus, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let stop_after = match opts.remove("stop_after") {
            Some(v) => {
                let k = v.as_int().map_err(|t| rt(usage!("teacher_logits: 'stop_after' must be an integer, found {t}")))?;
                Some(usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| rt(usage!("teacher_logits: 'stop_after' must be at least 1, got {k}")))?)
            }
            None => None,
        };
        let o: LogitsOptions = options(opts)?;
        if let Some(n) = &o.name {
            crate::lab::RunName::new(n).map_err(rt)?;
        }
        let dir = kd::store_dir(&w.run_dir(LOGITS_DIR).map_err(rt)?, &t.0, &corpus, &o).map_err(rt)?;
        rhai::serde::to_dynamic(kd::teacher_logits(&t.0, &corpus, &o, &dir, stop_after).map_err(rt)?)
    });

    let w = ws.clone();
    def(engine, "evaluate", ["s", "dataset", "opts"], EVALUATE, move |s: &mut StudentH, ds: crate::data::Dataset, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name = take_str(&mut opts, "name", "evaluate")?;
        let o: crate::eval::run::EvalOptions = options(opts)?;
        let dir = w.eval_dir(name.as_deref(), &ds, &s.0).map_err(rt)?;
        rhai::serde::to_dynamic(crate::eval::run::evaluate(&s.0, &ds, &o, &dir).map_err(rt)?)
    });
    def(engine, "generate", ["s", "question", "opts"], GENERATE, |s: &mut StudentH, question: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: crate::model::generate::GenOptions = options(opts)?;
        let g = crate::model::generate::generate(&s.0, &[question.to_string()], &o).map_err(rt)?;
        rhai::serde::to_dynamic(&g[0])
    });

    let w = ws.clone();
    def(
        engine,
        "export_model",
        ["run", "name"],
        "A run's last checkpoint (a run dir, or a name under the runs dir) as a Hugging Face dir `name` in the output dir (PEFT adapters for LoRA runs); returns its path. Written when the script succeeds.\n\n```rhai\nlet dir = export_model(\"svamp-l3\", \"svamp-l3-hf\");\n```",
        move |run: &str, name: &str| -> RhaiResult<String> {
            let run_dir = w.find_run(run).map_err(rt)?;
            let Some(o) = &w.out else {
                return Err(rt(usage!("export_model needs an output dir: run with `cotlab run --out DIR`")));
            };
            // Written into the staging area; published to OUT/<name> when the script succeeds.
            let target = o.path_for(name).map_err(rt)?;
            export_run(&run_dir, &target).map_err(rt)?;
            Ok(o.root().join(name).display().to_string())
        },
    );
}
