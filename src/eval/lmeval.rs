//! lm-eval's eval-dir layout (lm-evaluation-harness 0.4, its `EvaluationTracker`): the one module
//! that knows its file names and keys. An evaluation writes `results_<timestamp>.json` and
//! `samples_<task>_<timestamp>.jsonl` with lm-eval's keys, so what reads lm-eval results reads
//! cotlab's; cotlab's own fields stand beside them under the key `cotlab`.
//!
//! Invariants:
//! * cotlab's metric is lm-eval's `exact_match`, with one filter per protocol, named as the
//!   protocol (`exact_match,paper`, `exact_match,lenient`), the evaluation's protocol first; the
//!   samples file has one row per example and filter, as lm-eval writes a task with two filters;
//! * the hashes are lm-eval's: SHA-256 (hex) of the doc as Python's `json.dumps(doc, indent=2,
//!   ensure_ascii=False)`, of the prompt, of `str(target)`; a task's hash is that of every row's
//!   three hashes concatenated;
//! * the samples file is written before the results file, and an earlier pair is removed only
//!   after both are written: a dir holds the pair of its latest complete evaluation, and a results
//!   file is never beside a torn samples file;
//! * readers take the latest pair by its timestamp, as lm-eval's `get_latest_filename` does.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::answer::Protocol;
use crate::data::loaders::Record;
use crate::error::{Error, Result};
use crate::paths::is_real_file;

/// lm-eval's metric for a generated answer judged right or wrong.
pub const METRIC: &str = "exact_match";
/// The version of the task config cotlab writes (lm-eval's `versions.<task>`); it changes when the
/// config's meaning does.
pub const TASK_VERSION: f64 = 1.0;

/// What an evaluation ran with, for the results file.
pub struct RunInfo<'a> {
    pub task: &'a str,
    pub split: &'a str,
    /// The model as given (a path or hub id).
    pub model: &'a str,
    /// The prompt around a question, `{question}` where it goes.
    pub prompt_template: &'a str,
    /// The evaluation's protocol: its filter comes first.
    pub protocol: Protocol,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub beams: usize,
    pub seed: u64,
    /// `limit` when a subset was evaluated.
    pub limit: Option<usize>,
    /// Examples in the test set, and how many were scored.
    pub original: usize,
    pub num_params: usize,
    pub dtype: String,
    pub device: String,
    pub max_length: usize,
    /// The end-of-sequence token and its id.
    pub eos: Option<(String, u32)>,
    pub started: SystemTime,
    pub seconds: f64,
    /// cotlab's own report, kept whole under `cotlab`.
    pub report: Value,
}

/// One judged example: its sample fields and, per protocol, what that protocol's filter extracted
/// and whether it matched.
pub struct Judged<'a> {
    /// Its index in the test set (lm-eval's `doc_id`).
    pub doc_id: usize,
    pub id: &'a str,
    pub question: &'a str,
    pub choices: &'a [String],
    pub gold: &'a str,
    /// The exact prompt the student was given.
    pub prompt: String,
    pub generated: &'a str,
    pub tokens: usize,
    pub finish: &'a str,
    pub by_protocol: Vec<(Protocol, Option<String>, bool)>,
}

/// The doc of a sample row: the test example as cotlab reads it. Its fields are in name order,
/// the order the row's JSON object has them, since field order is part of lm-eval's doc hash.
#[derive(Serialize)]
struct Doc<'a> {
    answer: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    choices: &'a [String],
    id: &'a str,
    question: &'a str,
}

/// SHA-256 (hex) of `s`'s UTF-8 bytes: lm-eval's `hash_string`.
pub fn hash_string(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// lm-eval's `doc_hash`: the hash of the doc as `json.dumps(doc, indent=2, ensure_ascii=False)`
/// writes it (serde_json's pretty printer writes the same bytes for strings and lists).
pub fn doc_hash<T: Serialize>(doc: &T) -> String {
    hash_string(&serde_json::to_string_pretty(doc).unwrap_or_default())
}

/// lm-eval's file timestamp: `datetime.now().isoformat()` with `:` as `-` (UTC here), e.g.
/// `2026-12-06T08-23-31.405082`; Python leaves out the fraction when it is zero.
pub fn timestamp(t: SystemTime) -> String {
    let utc = chrono::DateTime::<chrono::Utc>::from(t);
    let base = utc.format("%Y-%m-%dT%H-%M-%S").to_string();
    match utc.timestamp_subsec_micros() {
        0 => base,
        us => format!("{base}.{us:06}"),
    }
}

/// lm-eval's `sanitize_task_name` (every non-word character as `_`), for the samples file name.
fn sanitize_task_name(task: &str) -> String {
    task.chars().map(|c| if c.is_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// lm-eval's `sanitize_model_name`: runs of `"<>:/|\?*[]` as `__`.
fn sanitize_model_name(model: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in model.chars() {
        if "\"<>:/|\\?*[]".contains(c) {
            if !in_run {
                out.push_str("__");
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// lm-eval's `mean_stderr` of 0/1 scores (sample standard deviation over √n); "N/A" below two
/// scores, as lm-eval writes it.
fn stderr(k: usize, n: usize) -> Value {
    if n < 2 {
        return "N/A".into();
    }
    let p = k as f64 / n as f64;
    json!((p * (1.0 - p) / (n as f64 - 1.0)).sqrt())
}

/// The generation arguments as lm-eval logs them (`until`: cotlab stops at the end-of-sequence
/// token only).
fn gen_kwargs(run: &RunInfo) -> Value {
    json!({
        "until": [],
        "max_gen_toks": run.max_new_tokens,
        "do_sample": run.temperature > 0.0,
        "temperature": run.temperature,
        "top_p": run.top_p,
        "num_beams": run.beams,
    })
}

/// The protocols in filter order: the evaluation's first.
fn filters(first: Protocol) -> Vec<Protocol> {
    std::iter::once(first).chain(Protocol::ALL.iter().copied().filter(|p| *p != first)).collect()
}

/// The samples rows: one per example and filter, in test-set order.
fn sample_rows(run: &RunInfo, judged: &[Judged]) -> Vec<Value> {
    let mut rows = Vec::new();
    for p in filters(run.protocol) {
        for j in judged {
            let (extracted, correct) = j.by_protocol.iter().find(|(q, ..)| *q == p).map(|(_, e, c)| (e.clone(), *c)).unwrap_or((None, false));
            let doc = Doc { id: j.id, question: j.question, choices: j.choices, answer: j.gold };
            rows.push(json!({
                "doc_id": j.doc_id,
                "doc": doc,
                "target": j.gold,
                "arguments": {"gen_args_0": {"arg_0": j.prompt, "arg_1": gen_kwargs(run)}},
                "resps": [[j.generated]],
                // lm-eval's regex filters answer "[invalid]" where they find nothing.
                "filtered_resps": [extracted.clone().unwrap_or_else(|| "[invalid]".into())],
                "filter": p.name(),
                "metrics": [METRIC],
                "doc_hash": doc_hash(&doc),
                "prompt_hash": hash_string(&j.prompt),
                "target_hash": hash_string(j.gold),
                METRIC: if correct { 1.0 } else { 0.0 },
                "cotlab": {"id": j.id, "extracted": extracted, "tokens": j.tokens, "finish": j.finish},
            }));
        }
    }
    rows
}

/// The task's config as lm-eval writes it under `configs.<task>`.
fn task_config(run: &RunInfo) -> Value {
    let doc_to_text = run.prompt_template.replace("{question}", "{{question}}");
    json!({
        "task": run.task,
        "dataset_path": "cotlab",
        "dataset_name": run.task,
        "test_split": run.split,
        "doc_to_text": doc_to_text,
        "doc_to_target": "{{answer}}",
        "unsafe_code": false,
        "description": "",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "fewshot_config": {
            "sampler": "default", "split": null, "process_docs": null, "fewshot_indices": null, "samples": null,
            "doc_to_text": doc_to_text, "doc_to_choice": null, "doc_to_target": "{{answer}}", "gen_prefix": null,
            "fewshot_delimiter": "\n\n", "target_delimiter": " ",
        },
        "num_fewshot": 0,
        "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": true}],
        "output_type": "generate_until",
        "generation_kwargs": gen_kwargs(run),
        "repeats": 1,
        "filter_list": filters(run.protocol).iter().map(|p| json!({"name": p.name(), "filter": [{"function": format!("cotlab_{}", p.name())}]})).collect::<Vec<_>>(),
        "should_decontaminate": false,
        "metadata": {"version": TASK_VERSION, "pretrained": run.model, "config_source": "cotlab"},
    })
}

/// The results file's content (lm-eval's keys; `null` where cotlab has no such value).
fn results_json(run: &RunInfo, judged: &[Judged], rows: &[Value]) -> Value {
    let t = run.task;
    let n = judged.len();
    let mut metrics = json!({"name": t, "alias": t, "sample_len": n});
    for p in filters(run.protocol) {
        let k = judged.iter().filter(|j| j.by_protocol.iter().any(|(q, _, c)| *q == p && *c)).count();
        metrics[format!("{METRIC},{}", p.name())] = json!(if n == 0 { 0.0 } else { k as f64 / n as f64 });
        metrics[format!("{METRIC}_stderr,{}", p.name())] = stderr(k, n);
    }
    let task_hash = hash_string(
        &rows
            .iter()
            .map(|r| format!("{}{}{}", r["doc_hash"].as_str().unwrap_or(""), r["prompt_hash"].as_str().unwrap_or(""), r["target_hash"].as_str().unwrap_or("")))
            .collect::<String>(),
    );
    let token = |tok: &Option<(String, u32)>| tok.as_ref().map(|(s, id)| json!([s, id.to_string()])).unwrap_or(Value::Null);
    let git = crate::provenance::git_commit();
    let date = run.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    json!({
        "results": {t: metrics},
        "group_subtasks": {},
        "configs": {t: task_config(run)},
        "versions": {t: TASK_VERSION},
        "n-shot": {t: 0},
        "higher_is_better": {t: {METRIC: true}},
        "n-samples": {t: {"original": run.original, "effective": n}},
        "config": {
            "model": "cotlab",
            "model_args": {"pretrained": run.model},
            "model_num_parameters": run.num_params,
            "model_dtype": run.dtype,
            "model_revision": null,
            "model_sha": null,
            // lm-eval writes the batch size as text ("auto" is one).
            "batch_size": run.batch_size.to_string(),
            "batch_sizes": [],
            "device": run.device,
            "use_cache": null,
            "limit": run.limit,
            "bootstrap_iters": 0,
            "gen_kwargs": gen_kwargs(run),
            "random_seed": run.seed,
            "numpy_seed": null,
            "torch_seed": null,
            "fewshot_seed": null,
        },
        "git_hash": if git == "unknown" { Value::Null } else { git.into() },
        "date": date,
        "pretty_env_info": format!("cotlab {} ({})", crate::provenance::VERSION, std::env::consts::ARCH),
        "transformers_version": null,
        "lm_eval_version": null,
        "upper_git_hash": null,
        "tokenizer_pad_token": null,
        "tokenizer_eos_token": token(&run.eos),
        "tokenizer_bos_token": null,
        "eot_token_id": run.eos.as_ref().map(|(_, id)| *id),
        "max_length": run.max_length,
        "task_hashes": {t: task_hash},
        "model_source": "cotlab",
        "model_name": run.model,
        "model_name_sanitized": sanitize_model_name(run.model),
        "system_instruction": null,
        "system_instruction_sha": null,
        "fewshot_as_multiturn": null,
        // The chat template is already in the prompt (`doc_to_text`), not applied by lm-eval.
        "chat_template": null,
        "chat_template_sha": null,
        "total_evaluation_time_seconds": run.seconds.to_string(),
        "cotlab": run.report,
    })
}

/// The files of one written pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub results: PathBuf,
    pub samples: PathBuf,
}

/// Write the pair for `judged` into `dir` (samples first, then results), then remove the dir's
/// earlier pairs.
pub fn write_pair(dir: &Path, run: &RunInfo, judged: &[Judged]) -> Result<Pair> {
    let ts = timestamp(SystemTime::now());
    let rows = sample_rows(run, judged);
    let pair = Pair { results: dir.join(format!("results_{ts}.json")), samples: dir.join(format!("samples_{}_{ts}.jsonl", sanitize_task_name(run.task))) };
    let lines: String = rows.iter().map(|r| format!("{r}\n")).collect();
    crate::paths::write(&pair.samples, lines.as_bytes())?;
    let results = serde_json::to_string_pretty(&results_json(run, judged, &rows)).unwrap_or_default();
    crate::paths::write(&pair.results, results.as_bytes())?;
    for f in files(dir)? {
        if f.stamp != ts && matches!(f.kind, Kind::Results | Kind::Samples(_)) {
            std::fs::remove_file(&f.path).map_err(|e| Error::io(&f.path, e))?;
        }
    }
    Ok(pair)
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Results,
    /// A samples file, with its task as the file name has it.
    Samples(String),
}

/// A file of lm-eval's layout found in a dir.
#[derive(Clone, Debug)]
struct Found {
    path: PathBuf,
    kind: Kind,
    stamp: String,
}

/// The stamp of a name `<stem>_<stamp>.<ext>` (lm-eval's `get_file_datetime`: after the last `_`).
fn parse_name(name: &str) -> Option<(Kind, String)> {
    if let Some(stamp) = name.strip_prefix("results_").and_then(|s| s.strip_suffix(".json")) {
        return (!stamp.contains('_') && !stamp.is_empty()).then(|| (Kind::Results, stamp.to_string()));
    }
    let rest = name.strip_prefix("samples_")?.strip_suffix(".jsonl")?;
    let (task, stamp) = rest.rsplit_once('_')?;
    (!task.is_empty() && !stamp.is_empty()).then(|| (Kind::Samples(task.to_string()), stamp.to_string()))
}

/// The layout's regular files directly in `dir` (links are not read), in name order.
fn files(dir: &Path) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let path = e.path();
        let Some((kind, stamp)) = e.file_name().to_str().and_then(parse_name) else { continue };
        if is_real_file(&path) {
            out.push(Found { path, kind, stamp });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Whether `dir` holds a results file of lm-eval's layout.
pub fn has_results(dir: &Path) -> bool {
    files(dir).is_ok_and(|f| f.iter().any(|f| f.kind == Kind::Results))
}

/// The latest results file in `dir`, parsed; `None` when there is none.
pub fn latest_results(dir: &Path) -> Result<Option<(PathBuf, Value)>> {
    let Some(f) = files(dir)?.into_iter().filter(|f| f.kind == Kind::Results).max_by(|a, b| a.stamp.cmp(&b.stamp)) else { return Ok(None) };
    let text = crate::paths::read_text(&f.path)?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::data(&f.path, format!("line {}: not valid JSON ({e}): not an lm-eval results file", e.line())))?;
    if !v.get("results").is_some_and(Value::is_object) {
        return Err(Error::data(&f.path, "no 'results' object: not an lm-eval results file (lm-eval writes results.<task>.<metric>,<filter>)"));
    }
    Ok(Some((f.path, v)))
}

/// One accuracy of an lm-eval results file: a task's `exact_match`, `acc` or `acc_norm` under
/// one filter.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskScore {
    pub task: String,
    pub metric: String,
    pub filter: String,
    pub value: f64,
    /// `None` where lm-eval wrote "N/A".
    pub stderr: Option<f64>,
    /// Samples scored (`n-samples.<task>.effective`).
    pub n: Option<u64>,
    pub model: Option<String>,
}

/// The accuracies of the latest results file in `dir` (task, then metric and filter in name order).
pub fn scores(dir: &Path) -> Result<Vec<TaskScore>> {
    let Some((_, v)) = latest_results(dir)? else { return Ok(Vec::new()) };
    let model = v["config"]["model_args"]["pretrained"].as_str().or(v["model_name"].as_str()).map(String::from);
    let mut out = Vec::new();
    for (task, m) in v["results"].as_object().into_iter().flatten() {
        for (key, value) in m.as_object().into_iter().flatten() {
            let Some((metric, filter)) = key.split_once(',') else { continue };
            if !matches!(metric, "exact_match" | "acc" | "acc_norm") {
                continue;
            }
            let Some(value) = value.as_f64() else { continue };
            out.push(TaskScore {
                task: task.clone(),
                metric: metric.to_string(),
                filter: filter.to_string(),
                value,
                stderr: m[format!("{metric}_stderr,{filter}")].as_f64(),
                n: v["n-samples"][task]["effective"].as_u64(),
                model: model.clone(),
            });
        }
    }
    Ok(out)
}

/// The predictions an eval dir holds, as records with `id` (or `question`) and `prediction` (the
/// raw generated text), for re-scoring: the latest samples file of lm-eval's layout (one record
/// per doc, its first filter's row; the one beside the latest results file where there is one),
/// else cotlab's journal `samples.jsonl` (eval dirs written
/// before the layout). A samples file of the layout is read the same way. `None` for any other
/// file (a predictions file).
pub fn predictions(path: &Path) -> Result<Option<Vec<Record>>> {
    if !crate::paths::is_real_dir(path) {
        let name = path.file_name().and_then(|n| n.to_str()).and_then(parse_name);
        return match name {
            Some((Kind::Samples(_), _)) => lm_eval_predictions(path).map(Some),
            _ => Ok(None),
        };
    }
    let found = files(path)?;
    let samples: Vec<&Found> = found.iter().filter(|f| matches!(f.kind, Kind::Samples(_))).collect();
    // The samples of the latest results file: a samples file written after it without its results
    // file is from a write that did not finish.
    let complete = found.iter().filter(|f| f.kind == Kind::Results).map(|f| f.stamp.as_str()).max();
    let latest = complete.or_else(|| samples.iter().map(|f| f.stamp.as_str()).max()).map(String::from);
    let latest: Vec<&Found> = samples.into_iter().filter(|f| Some(&f.stamp) == latest.as_ref()).collect();
    match latest.as_slice() {
        [] => {}
        [one] => return lm_eval_predictions(&one.path).map(Some),
        many => {
            return Err(Error::data(
                path,
                format!(
                    "holds samples of {} tasks ({}): give one samples_<task>_<timestamp>.jsonl file instead of the dir",
                    many.len(),
                    many.iter().map(|f| f.path.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }
    let journal = path.join(super::SAMPLES_FILE);
    if !is_real_file(&journal) {
        return Err(Error::data(path, "no samples_<task>_<timestamp>.jsonl and no samples.jsonl: not an eval dir (give a predictions file or an eval dir)"));
    }
    let mut out = Vec::new();
    for rec in crate::data::loaders::read_records(&journal)? {
        let id = rec.value.get("id").cloned().unwrap_or(Value::Null);
        let generated = rec.value.get("generated").cloned().unwrap_or(Value::Null);
        if !generated.is_string() {
            return Err(Error::data(&journal, format!("{}: no 'generated' text: not a cotlab eval journal", rec.loc)));
        }
        let loc = format!("samples.jsonl {}", rec.loc);
        out.push(Record { loc, index: out.len(), value: json!({"id": id, "prediction": generated}) });
    }
    Ok(Some(out))
}

/// The records of an lm-eval samples file: one per `doc_id` (its first row), the id from
/// cotlab's field or the doc's `id`, else the doc's `question`; the prediction is `resps[0][0]`.
fn lm_eval_predictions(file: &Path) -> Result<Vec<Record>> {
    let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for rec in crate::data::loaders::read_records(file)? {
        let v = &rec.value;
        let loc = format!("{name} {}", rec.loc);
        let doc_id = v["doc_id"].as_u64().ok_or_else(|| Error::data(file, format!("{}: no integer 'doc_id': not an lm-eval samples row", rec.loc)))?;
        if !seen.insert(doc_id) {
            continue;
        }
        let prediction =
            v["resps"][0][0].as_str().ok_or_else(|| Error::data(file, format!("{}: 'resps' is not [[text]]: not a generate_until samples row", rec.loc)))?;
        let mut value = json!({"prediction": prediction});
        if let Some(id) = v["cotlab"]["id"].as_str().or(v["doc"]["id"].as_str()) {
            value["id"] = id.into();
        } else if let Some(q) = v["doc"]["question"].as_str() {
            value["question"] = q.into();
        } else {
            return Err(Error::data(file, format!("{}: the doc has no 'id' or 'question' to match the test set by", rec.loc)));
        }
        out.push(Record { loc, index: out.len(), value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Prompt and target hashes as lm-eval 0.4.13 wrote them; doc hashes as its
    // `hash_string(json.dumps(doc, indent=2, ensure_ascii=False))` computes them in Python 3.11.
    #[test]
    fn hashes_are_lm_evals() {
        let doc = Doc { id: "q1", question: "How many apples?", choices: &[], answer: "12" };
        assert_eq!(doc_hash(&doc), "de3b6bffd3913d0d1c07f17744a87e687fa86f11c1f4e8dcfa50244439a2fb19");
        let choices = ["(A) 1".to_string(), "(B) ½".to_string()];
        let doc = Doc { id: "q2", question: "Ünïcode \"quoted\"\n\ttab \x1b end", choices: &choices, answer: "B" };
        assert_eq!(doc_hash(&doc), "b0b8b2a5bd8dd031828f40276f552aead70ab918f3e644b55c756ac11e2f8344");
        assert_eq!(hash_string("How many apples?"), "754f5a5fb868b7befe0508d9fdee42c6425693d943969400b91c9579a86b5dcf");
        assert_eq!(hash_string("12"), "6b51d431df5d7f141cbececcf79edf3dd861c3b4069f0b11661a3eefacbba918");
    }

    #[test]
    fn timestamps_are_pythons_isoformat() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_796_545_411_405_082);
        assert_eq!(timestamp(t), "2026-12-06T08-23-31.405082");
        assert_eq!(timestamp(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)), "2000-02-29T00-00-00");
    }

    #[test]
    fn names_parse_as_lm_evals_get_file_datetime() {
        assert_eq!(parse_name("results_2026-12-06T08-23-31.405082.json"), Some((Kind::Results, "2026-12-06T08-23-31.405082".into())));
        assert_eq!(parse_name("samples_my_task_2026-12-06T08-23-31.jsonl"), Some((Kind::Samples("my_task".into()), "2026-12-06T08-23-31".into())));
        assert_eq!(parse_name("results.json"), None);
        assert_eq!(parse_name("samples.jsonl"), None);
    }

    #[test]
    fn names_are_sanitized_as_lm_eval_does() {
        assert_eq!(sanitize_model_name("/tmp/lmp/model"), "__tmp__lmp__model");
        assert_eq!(sanitize_task_name("my-task.v2"), "my_task_v2");
    }

    #[test]
    fn stderr_is_lm_evals_mean_stderr() {
        assert_eq!(stderr(1, 1), json!("N/A"));
        // [1, 0, 0, 0]: sample std 0.5, over √4.
        assert!((stderr(1, 4).as_f64().unwrap() - 0.25).abs() < 1e-12);
    }
}
