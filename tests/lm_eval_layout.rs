//! Eval dirs in lm-eval's real layout, checked against lm-eval itself: real `lm_eval` evaluates a
//! tiny local Hugging Face model on a local JSON task, cotlab evaluates the same model on the same
//! questions, and every key path lm-eval writes (results file, a samples row) is in cotlab's, with
//! the same hashes for the same doc, prompt and target. `results()` and `score` read lm-eval's
//! dirs and cotlab's old-layout dirs (written before the layout); resume continues an old one.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use cotlab::answer::Protocol;
use cotlab::data::{load_dataset, Dataset, DatasetOptions};
use cotlab::eval::run::{evaluate, EvalOptions};
use cotlab::eval::score_predictions;
use cotlab::frame::Cell;
use cotlab::model::{cotlab_home, default_model_path, Student};
use cotlab::results::runs::load_runs;
use serde_json::Value;

/// Every nested key of `v` as a dotted path (`[]` for array elements), with `task` as `<task>`.
fn key_paths(v: &Value, prefix: &str, task: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        let k = if k == task { "<task>" } else { k };
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = join(k);
                out.insert(p.clone());
                key_paths(x, &p, task, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{prefix}[]"), task, out);
            }
        }
        _ => {}
    }
}

fn paths_of(v: &Value, task: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    key_paths(v, "", task, &mut out);
    out
}

/// The one file in `dir` named `prefix…suffix`.
fn one_file(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix)))
        .collect();
    assert_eq!(found.len(), 1, "{prefix}*{suffix} in {}: {found:?}", dir.display());
    found[0].clone()
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn jsonl_file(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn svamp(limit: usize) -> Dataset {
    load_dataset(&common::data_dir(), "svamp", &DatasetOptions { limit: Some(limit), ..Default::default() }).unwrap()
}

/// lm-eval's task for the docs in `data_dir/test.jsonl` (the split named by the file, so no
/// `dataset_kwargs`): the prompt cotlab wrote (`doc_to_text`), one filter per protocol (cotlab's
/// extractors are its own, so both lm-eval filters take the response as it is), as YAML (JSON is
/// YAML).
fn task_yaml(name: &str, data_dir: &Path, doc_to_text: &str, max_new_tokens: usize) -> String {
    serde_json::json!({
        "task": name,
        "dataset_path": data_dir.display().to_string(),
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": doc_to_text,
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [], "max_gen_toks": max_new_tokens, "do_sample": false},
        "filter_list": [
            {"name": "paper", "filter": [{"function": "take_first"}]},
            {"name": "lenient", "filter": [{"function": "take_first"}]},
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": true}],
        "metadata": {"version": 1.0},
    })
    .to_string()
}

#[test]
fn cotlab_writes_every_key_path_lm_eval_writes() {
    require!(Data, Model, Torch);
    let py = std::env::var("COTLAB_PYTHON").map(PathBuf::from).unwrap_or_else(|_| cotlab_home().join("venv/bin/python"));
    let d = tempfile::tempdir().unwrap();
    let tok_dir = common::smol_tokenizer_dir(d.path());
    let model = d.path().join("tiny");
    let o = Command::new(&py).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/tiny_llama.py")).arg(&model).arg(&tok_dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // cotlab first: its prompt becomes the lm-eval task's `doc_to_text`, so prompts hash the same.
    let student = Student::load_with(&model, &Device::Cpu, Some("chatml")).unwrap();
    let ds = svamp(3);
    let ours = d.path().join("cotlab-eval");
    let opts = EvalOptions { batch_size: Some(3), max_new_tokens: Some(4), ..Default::default() };
    evaluate(&student, &ds, &opts, &ours).unwrap();
    let our_results = json_file(&one_file(&ours, "results_", ".json"));
    let our_rows = jsonl_file(&one_file(&ours, "samples_svamp_", ".jsonl"));
    assert_eq!(our_rows.len(), 6, "one row per example and filter (paper, lenient)");

    // The same docs, in lm-eval's own JSON task.
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("test.jsonl"), our_rows[..3].iter().map(|r| format!("{}\n", r["doc"])).collect::<String>()).unwrap();
    let tasks = d.path().join("tasks");
    std::fs::create_dir(&tasks).unwrap();
    let doc_to_text = our_results["configs"]["svamp"]["doc_to_text"].as_str().unwrap();
    std::fs::write(tasks.join("svamp_local.yaml"), task_yaml("svamp_local", &data, doc_to_text, 4)).unwrap();
    let out = d.path().join("lm-eval-out");
    let lm_eval = Command::new(&py)
        .args(["-m", "lm_eval", "--model", "hf", "--model_args"])
        .arg(format!("pretrained={}", model.display()))
        .args(["--tasks", "svamp_local", "--include_path"])
        .arg(&tasks)
        .args(["--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path"])
        .arg(&out)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", d.path().join("hf-home"))
        .output()
        .unwrap();
    assert!(lm_eval.status.success(), "lm_eval failed (scripts/setup.sh --torch installs it):\n{}", String::from_utf8_lossy(&lm_eval.stderr));
    let their_dir = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let their_results = json_file(&one_file(&their_dir, "results_", ".json"));
    let their_rows = jsonl_file(&one_file(&their_dir, "samples_svamp_local_", ".jsonl"));

    let (theirs, mine) = (paths_of(&their_results, "svamp_local"), paths_of(&our_results, "svamp"));
    println!("results_<timestamp>.json key paths compared ({}): {}", theirs.len(), theirs.iter().cloned().collect::<Vec<_>>().join(" "));
    let missing: Vec<&String> = theirs.difference(&mine).collect();
    assert!(missing.is_empty(), "lm-eval's results key paths missing from cotlab's: {missing:?}");
    let (theirs, mine) = (paths_of(&their_rows[0], "svamp_local"), paths_of(&our_rows[0], "svamp"));
    println!("samples_<task>_<timestamp>.jsonl row key paths compared ({}): {}", theirs.len(), theirs.iter().cloned().collect::<Vec<_>>().join(" "));
    let missing: Vec<&String> = theirs.difference(&mine).collect();
    assert!(missing.is_empty(), "lm-eval's samples key paths missing from cotlab's: {missing:?}");

    // The same doc, prompt and target hash the same; the filters are named as the protocols.
    for (t, o) in their_rows.iter().zip(&our_rows) {
        for k in ["doc_id", "doc_hash", "prompt_hash", "target_hash", "target", "filter"] {
            assert_eq!(t[k], o[k], "{k} of doc {}", t["doc_id"]);
        }
    }
    assert_eq!(their_rows.iter().map(|r| r["filter"].as_str().unwrap()).collect::<BTreeSet<_>>(), ["lenient", "paper"].into());

    // results() reads lm-eval's own output dir: one row per filter, lm-eval's numbers.
    let runs = load_runs(std::slice::from_ref(&out)).unwrap();
    assert_eq!(runs.height(), 2);
    for i in 0..2 {
        let filter = match runs.cell(i, "filter").unwrap() {
            Cell::Str(s) => s,
            c => panic!("filter {c:?}"),
        };
        let want = their_results["results"]["svamp_local"][format!("exact_match,{filter}")].as_f64().unwrap();
        assert_eq!(runs.cell(i, "accuracy").unwrap(), Cell::Float(want), "{filter}");
        assert_eq!(runs.cell(i, "task").unwrap(), Cell::Str("svamp_local".into()));
        assert_eq!(runs.cell(i, "n").unwrap(), Cell::Int(3));
    }
    // score reads lm-eval's dir: its docs carry cotlab's ids.
    assert_eq!(score_predictions(&ds, &their_dir, Protocol::Paper).unwrap().n, 3);
}

#[test]
fn old_eval_dirs_are_read_resumed_and_rewritten_in_the_layout() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let ds = svamp(2);
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("eval");
    let opts = EvalOptions { batch_size: Some(2), max_new_tokens: Some(8), ..Default::default() };
    let first = evaluate(&s, &ds, &opts, &dir).unwrap();
    // An eval dir as cotlab wrote it before the layout: no results_*/samples_* files.
    for f in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        let n = f.file_name().unwrap().to_str().unwrap().to_string();
        if n.starts_with("results_") || n.starts_with("samples_") {
            std::fs::remove_file(f).unwrap();
        }
    }
    let runs = load_runs(std::slice::from_ref(&dir)).unwrap();
    assert_eq!((runs.height(), runs.cell(0, "accuracy").unwrap()), (1, Cell::Float(first.accuracy)));
    let old = score_predictions(&ds, &dir, Protocol::Paper).unwrap();
    assert_eq!((old.n, old.correct, old.accuracy_lenient), (2, first.correct, first.accuracy_lenient));
    // Interrupted after one answer: resume generates the other and writes the lm-eval pair.
    let journal = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();
    std::fs::write(dir.join("samples.jsonl"), format!("{}\n", journal.lines().next().unwrap())).unwrap();
    let resumed = evaluate(&s, &ds, &opts, &dir).unwrap();
    assert_eq!((resumed.n, resumed.generated_now, resumed.correct), (2, 1, first.correct));
    let results = json_file(&one_file(&dir, "results_", ".json"));
    assert_eq!(results["results"]["svamp"]["exact_match,paper"].as_f64().unwrap(), first.accuracy_paper);
    assert_eq!(results["results"]["svamp"]["exact_match,lenient"].as_f64().unwrap(), first.accuracy_lenient);
    assert_eq!(results["n-samples"]["svamp"]["effective"], 2);
    assert_eq!(jsonl_file(&one_file(&dir, "samples_svamp_", ".jsonl")).len(), 4);
    let new = score_predictions(&ds, &dir, Protocol::Paper).unwrap();
    assert_eq!((new.n, new.correct, new.accuracy_lenient), (old.n, old.correct, old.accuracy_lenient));
    // Evaluated again: a new pair replaces the earlier one (one pair per dir).
    std::thread::sleep(std::time::Duration::from_millis(5));
    evaluate(&s, &ds, &opts, &dir).unwrap();
    let again = one_file(&dir, "results_", ".json");
    assert_ne!(json_file(&again)["date"], results["date"]);
    one_file(&dir, "samples_svamp_", ".jsonl");
    assert_eq!(load_runs(std::slice::from_ref(&dir)).unwrap().cell(0, "accuracy").unwrap(), Cell::Float(first.accuracy));
}

#[test]
fn bad_lm_eval_files_say_which_file_and_what_is_wrong() {
    require!(Data);
    let ds = svamp(2);
    let d = tempfile::tempdir().unwrap();
    // A results file that is not JSON: results() names it.
    let bad = d.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("results_2026-01-01T00-00-00.json"), "{\"results\": ").unwrap();
    let e = load_runs(std::slice::from_ref(&bad)).err().unwrap().to_string();
    assert!(e.contains("results_2026-01-01T00-00-00.json") && e.contains("not valid JSON"), "{e}");
    // JSON without `results`: not lm-eval's.
    std::fs::write(bad.join("results_2026-01-01T00-00-00.json"), "{\"accuracy\": 1}").unwrap();
    let e = load_runs(std::slice::from_ref(&bad)).err().unwrap().to_string();
    assert!(e.contains("no 'results' object"), "{e}");
    // A samples row without `resps`: score says which line.
    let rows = d.path().join("rows");
    std::fs::create_dir(&rows).unwrap();
    let ok = r#"{"doc_id": 0, "doc": {"id": "chal-1"}, "resps": [["7"]]}"#;
    std::fs::write(rows.join("samples_svamp_2026-01-01T00-00-00.jsonl"), format!("{ok}\n{{\"doc_id\": 1, \"doc\": {{\"id\": \"chal-2\"}}}}\n")).unwrap();
    let e = score_predictions(&ds, &rows, Protocol::Paper).err().unwrap().to_string();
    assert!(e.contains("samples_svamp_2026-01-01T00-00-00.jsonl") && e.contains("line 2") && e.contains("'resps'"), "{e}");
    // A row whose doc has neither id nor question.
    std::fs::write(rows.join("samples_svamp_2026-01-01T00-00-00.jsonl"), "{\"doc_id\": 0, \"doc\": {}, \"resps\": [[\"7\"]]}\n").unwrap();
    let e = score_predictions(&ds, &rows, Protocol::Paper).err().unwrap().to_string();
    assert!(e.contains("line 1") && e.contains("no 'id' or 'question'"), "{e}");
    // Two tasks' samples of one run: which one is ambiguous.
    std::fs::write(rows.join("samples_svamp_2026-01-01T00-00-00.jsonl"), format!("{ok}\n")).unwrap();
    std::fs::write(rows.join("samples_gsm8k_2026-01-01T00-00-00.jsonl"), format!("{ok}\n")).unwrap();
    let e = score_predictions(&ds, &rows, Protocol::Paper).err().unwrap().to_string();
    assert!(e.contains("samples of 2 tasks") && e.contains("give one samples_"), "{e}");
    assert_eq!(score_predictions(&ds, &rows.join("samples_svamp_2026-01-01T00-00-00.jsonl"), Protocol::Paper).unwrap().n, 1);
    // A later samples file without its results file (a write that did not finish) is not read.
    std::fs::remove_file(rows.join("samples_gsm8k_2026-01-01T00-00-00.jsonl")).unwrap();
    std::fs::write(rows.join("results_2026-01-01T00-00-00.json"), r#"{"results": {}}"#).unwrap();
    std::fs::write(rows.join("samples_svamp_2026-01-02T00-00-00.jsonl"), format!("{ok}\n{{\"doc_id\": 1, \"do")).unwrap();
    assert_eq!(score_predictions(&ds, &rows, Protocol::Paper).unwrap().n, 1);
    // A dir with no samples at all.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = score_predictions(&ds, &empty, Protocol::Paper).err().unwrap().to_string();
    assert!(e.contains("not an eval dir"), "{e}");
}
