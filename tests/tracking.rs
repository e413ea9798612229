//! `log_to`: TensorBoard event files and MLflow's file store, read back by the tools' own
//! readers (tensorboard's `EventAccumulator`, `mlflow.search_runs` / `MlflowClient`) from the
//! venv (`scripts/setup.sh --torch`; `$COTLAB_PYTHON` overrides). Toy sizes: the default student,
//! a few rationales, 1-3 SFT steps, two arith questions of eight tokens.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{cotlab, run};
use serde_json::Value;

/// Each test fine-tunes the full student: one at a time (peak memory of one).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn python() -> String {
    std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab::model::cotlab_home().join("venv/bin/python").display().to_string())
}

/// The readers are there (a missing one fails: the test would otherwise check nothing).
fn readers() {
    let ok = Command::new(python()).args(["-c", "import tensorboard, mlflow"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{} lacks tensorboard / mlflow-skinny: run scripts/setup.sh --torch", python());
}

/// `tests/py/tracking_read.py`'s JSON.
fn read(args: &[&Path]) -> Value {
    let mut c = Command::new(python());
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/tracking_read.py"));
    let o = c.args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap().to_vec();
    serde_json::from_slice(&line).unwrap()
}

fn tensorboard(dir: &Path) -> Value {
    read(&[Path::new("tensorboard"), dir])
}

fn mlflow(mlruns: &Path, experiment: &str) -> Vec<Value> {
    read(&[Path::new("mlflow"), mlruns, Path::new(experiment)]).as_array().cloned().unwrap_or_else(|| panic!("no MLflow experiment '{experiment}'"))
}

/// `cotlab run` of `script`; its stdout.
fn run_script(dir: &Path, name: &str, script: &str) -> common::Out {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    run(cotlab().arg("run").arg(&path).arg("--runs").arg(dir.join("runs")).arg("--out").arg(dir.join(format!("out-{name}"))))
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (step, value) pairs of a reader's series.
fn series(v: &Value) -> Vec<(u64, f64)> {
    v.as_array().unwrap_or_else(|| panic!("not a series: {v}")).iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()
}

fn assert_close(got: &[(u64, f64)], want: &[(u64, f64)], tol: f64, what: &str) {
    assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), want.iter().map(|p| p.0).collect::<Vec<_>>(), "{what}: steps");
    for ((s, a), (_, b)) in got.iter().zip(want) {
        assert!((a - b).abs() <= tol * b.abs().max(1.0), "{what} at step {s}: {a} vs {b}");
    }
}

fn event_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents.")).count()).unwrap_or(0)
}

const CORPUS: &str = r#"let c = rationales("svamp", #{ teacher: "gpt-4o", level: 3, limit: 4 });"#;

fn sft_call(run: &str, extra: &str) -> String {
    format!(
        r#"{{ let s = student("default"); let r = sft(s, c, #{{ run: "{run}", max_steps: 3, batch_size: 2, grad_accum: 1, max_len: 96, save_every: 1{extra} }}); print(`{run} resumed ${{r.resumed_from}}`); }}"#
    )
}

/// A 3-step `sft` with `log_to: ["tensorboard", "mlflow"]`, stopped after 2 steps and resumed:
/// TensorBoard reads the steps and losses of train_log.jsonl (from two event files), MLflow one
/// FINISHED run (the same run id across the two invocations) with the config's params, the
/// config, seed and commit as tags, and the same loss series. A run begun without `log_to`
/// resumes with it (where it logs is no part of its identity). A bad value names the choices.
#[test]
fn sft_logs_what_tensorboard_and_mlflow_read() {
    require!(Data, Model, Torch);
    readers();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    let both = r#", log_to: ["tensorboard", "mlflow"]"#;
    let first = format!("{CORPUS}\n{}\n{}\n", sft_call("tracked", &format!("{both}, stop_after: 2")), sft_call("plain", ", stop_after: 1"));
    let o = run_script(d.path(), "first.rhai", &first);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let tracked = runs.join("tracked");
    let ids: Value = serde_json::from_str(&std::fs::read_to_string(tracked.join("mlflow_run.json")).unwrap()).unwrap();
    assert!(!runs.join("plain/mlflow_run.json").exists() && !runs.join("plain/tensorboard").exists(), "no log_to, no tracking files");

    let second = format!("{CORPUS}\n{}\n{}\n", sft_call("tracked", both), sft_call("plain", r#", log_to: "mlflow""#));
    let o = run_script(d.path(), "second.rhai", &second);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("tracked resumed 2") && o.stdout.contains("plain resumed 1"), "turning log_to on resumes: {}", o.stdout);

    let log = lines(&tracked.join("train_log.jsonl"));
    assert_eq!(log.len(), 3);
    let col = |k: &str| -> Vec<(u64, f64)> { log.iter().map(|l| (l["step"].as_u64().unwrap(), l[k].as_f64().unwrap())).collect() };
    assert_eq!(event_files(&tracked.join("tensorboard")), 2, "one event file per invocation");
    let tb = tensorboard(&tracked.join("tensorboard"));
    for (tag, key) in [("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"), ("train/tokens_per_s", "tokens_per_s")] {
        // TensorBoard scalars are f32.
        assert_close(&series(&tb[tag]), &col(key), 1e-6, &format!("tensorboard {tag}"));
    }

    let ml = mlflow(&runs.join("mlruns"), "cotlab");
    assert_eq!(ml.len(), 2, "{ml:?}");
    let t = ml.iter().find(|r| r["name"] == "tracked").unwrap();
    assert_eq!(
        (t["run_id"].as_str(), t["experiment_id"].as_str()),
        (ids["run_id"].as_str(), ids["experiment_id"].as_str()),
        "one MLflow run across the resume"
    );
    assert_eq!(t["status"], "FINISHED");
    assert_close(&series(&t["metrics"]["train/loss"]), &col("loss"), 1e-12, "mlflow train/loss");
    assert_close(&series(&t["metrics"]["train/grad_norm"]), &col("grad_norm"), 1e-12, "mlflow train/grad_norm");
    let (p, tags) = (&t["params"], &t["tags"]);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(tracked.join("config.json")).unwrap()).unwrap();
    let lr = config["options"]["lr"].to_string();
    assert_eq!((p["options.max_steps"].as_str(), p["options.lr"].as_str(), p["data.dataset"].as_str()), (Some("3"), Some(lr.as_str()), Some("svamp")), "{p}");
    assert_eq!(p["options.seed"], "100");
    assert_eq!(serde_json::from_str::<Value>(tags["cotlab.config"].as_str().unwrap()).unwrap(), config);
    assert_eq!(serde_json::from_str::<Value>(tags["cotlab.seeds"].as_str().unwrap()).unwrap()["sft"], 100);
    assert_eq!(tags["mlflow.runName"], "tracked");
    let commit = tags["mlflow.source.git.commit"].as_str().unwrap();
    assert!(!commit.is_empty() && commit == tags["cotlab.git_commit"], "{tags}");
    let plain = ml.iter().find(|r| r["name"] == "plain").unwrap();
    assert_eq!(plain["status"], "FINISHED");
    assert_eq!(series(&plain["metrics"]["train/loss"]).iter().map(|p| p.0).collect::<Vec<_>>(), [2, 3], "logged from when log_to was turned on");

    let o = run_script(d.path(), "bad.rhai", &format!("{CORPUS}\n{}\n", sft_call("bad", r#", log_to: ["tensorboard", "wandb"]"#)));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("log_to: unknown value 'wandb': expected one of tensorboard, mlflow"), "{}", o.stderr);
}

fn sweep_script(stop_after_points: usize, log_to: bool) -> String {
    let log = if log_to { r#"spec.base.log_to = ["tensorboard", "mlflow"];"# } else { "" };
    format!(
        r#"let spec = #{{ name: "tracksweep", grid: #{{ level: [1, 2] }}, base: #{{ dataset: "arith", teacher: "rule", train_n: 4, max_steps: 1, batch_size: 2, eval_n: 2, eval_max_new_tokens: 8, max_len: 96 }}, stop_after_points: {stop_after_points} }};
{log}
let r = sweep(spec);
print(`sweep ran ${{r.ran}} done ${{r.done}} of ${{r.total}}`);
"#
    )
}

fn point_dirs(sweep: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(sweep).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "slurm")).collect();
    v.sort();
    v
}

/// A sweep begun without `log_to` goes on with it (the same points: `log_to` is no part of a
/// point's name); the point run with it logs its training and its evaluation (eval/accuracy,
/// truncated_frac, mean_tokens, at the last training step) to TensorBoard and to one FINISHED
/// MLflow run in the experiment named after the sweep.
#[test]
fn sweep_points_log_training_and_evaluation() {
    require!(Data, Model, Torch);
    readers();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let sweep = d.path().join("runs/tracksweep");
    let o = run_script(d.path(), "first.rhai", &sweep_script(1, false));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("sweep ran 1 done 1 of 2"), "{}", o.stdout);
    let before = point_dirs(&sweep);
    let o = run_script(d.path(), "second.rhai", &sweep_script(5, true));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("sweep ran 1 done 2 of 2"), "log_to resumes the sweep: {}", o.stdout);
    let after = point_dirs(&sweep);
    assert_eq!(after.len(), 2, "no new point dirs: {after:?}");
    assert!(before.iter().all(|p| after.contains(p)));
    let logged: Vec<&PathBuf> = after.iter().filter(|p| p.join("mlflow_run.json").is_file()).collect();
    assert_eq!(logged.len(), 1, "only the point run with log_to is logged");
    let point = logged[0];
    let name = point.file_name().unwrap().to_string_lossy().to_string();
    let metrics = &serde_json::from_str::<Value>(&std::fs::read_to_string(point.join("point.json")).unwrap()).unwrap()["metrics"];

    let tb = tensorboard(&point.join("tensorboard"));
    let acc = metrics["accuracy"].as_f64().unwrap();
    assert_close(&series(&tb["eval/accuracy"]), &[(1, acc)], 1e-6, "tensorboard eval/accuracy");
    assert_close(&series(&tb["eval/mean_tokens"]), &[(1, metrics["mean_tokens"].as_f64().unwrap())], 1e-6, "tensorboard eval/mean_tokens");
    assert_eq!(series(&tb["eval/truncated_frac"]).len(), 1);
    let loss = lines(&point.join("train_log.jsonl"))[0]["loss"].as_f64().unwrap();
    assert_close(&series(&tb["train/loss"]), &[(1, loss)], 1e-6, "tensorboard train/loss");

    let ml = mlflow(&d.path().join("runs/mlruns"), "tracksweep");
    assert_eq!(ml.len(), 1, "{ml:?}");
    let r = &ml[0];
    assert_eq!((r["name"].as_str(), r["status"].as_str()), (Some(name.as_str()), Some("FINISHED")));
    assert_close(&series(&r["metrics"]["eval/accuracy"]), &[(1, acc)], 1e-12, "mlflow eval/accuracy");
    assert_close(&series(&r["metrics"]["train/loss"]), &[(1, loss)], 1e-12, "mlflow train/loss");
    assert_eq!((r["params"]["level"].as_str(), r["params"]["dataset"].as_str()), (Some("2"), Some("arith")), "{}", r["params"]);
    assert!(r["params"].get("log_to").is_none(), "log_to is not a param of the point");
    let seeds: Value = serde_json::from_str(r["tags"]["cotlab.seeds"].as_str().unwrap()).unwrap();
    assert_eq!((seeds["sft"].as_u64(), seeds["train_data"].as_u64()), (Some(100), Some(1)));
}
