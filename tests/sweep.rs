//! Sweeps end to end on the embedded `arith` data and the default student, at toy sizes (one SFT
//! step, two test questions of eight tokens): `scripts/granularity_sweep.rhai` stopped and killed
//! midway then finished, invalid and failing points, and the same numbers from the same config.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{cotlab, run};

const TINY: [&str; 16] = [
    "--set",
    "dataset=arith",
    "--set",
    "teachers=rule",
    "--set",
    "train_n=4",
    "--set",
    "max_steps=1",
    "--set",
    "batch_size=2",
    "--set",
    "eval_n=2",
    "--set",
    "eval_max_new_tokens=8",
    "--set",
    "max_len=96",
];

/// Each test fine-tunes the full student (weights, gradients, optimizer state, several GB): one
/// at a time, so the suite's peak memory stays that of one.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn point_files(sweep_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(sweep_dir).map(|rd| rd.flatten().map(|e| e.path().join("point.json")).filter(|p| p.is_file()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn granularity(dir: &Path, extra: &[&str]) -> Command {
    let mut c = cotlab();
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "scripts/granularity_sweep.rhai", "--out"])
        .arg(dir.join("out"))
        .arg("--runs")
        .arg(dir.join("runs"))
        .args(TINY)
        .args(extra);
    c
}

#[test]
fn granularity_sweep_stopped_and_killed_midway_finishes_only_the_missing_points() {
    require!(Model);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let sweep_dir = d.path().join("runs/granularity-arith");
    let levels = ["--set", "levels=1,2,3", "--set", "baseline=false"];

    // 1. Stopped after one point (a time-boxed slice).
    let r = run(granularity(d.path(), &levels).args(["--set", "stop_after_points=1"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("0 of 3 points complete, 1 to run now"), "{}", r.stderr);
    let first = point_files(&sweep_dir);
    assert_eq!(first.len(), 1, "{first:?}");
    let first_bytes = std::fs::read(&first[0]).unwrap();

    // 2. Killed (SIGKILL) once a second point is complete. The script runs in this very process
    // (the variable `cotlab run` sets for its script process), so killing this pid kills it.
    let mut cmd = granularity(d.path(), &levels);
    let mut child = cmd.env("COTLAB_SCRIPT_PROCESS", "1").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while point_files(&sweep_dir).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(600), "no second point within 10 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it was killed");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let second = point_files(&sweep_dir);
    assert_eq!(second.len(), 2, "killed after the second point: {second:?}");
    let snapshot: Vec<Vec<u8>> = second.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // A killed run publishes nothing: the output dir still holds the first run's one-level table.
    assert!(std::fs::read_to_string(d.path().join("out/granularity.csv")).unwrap().starts_with("student,level 1\n"));

    // 3. The re-run does only the third point; the two complete ones are untouched.
    let r = run(&mut granularity(d.path(), &levels));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("2 of 3 points complete, 1 to run now"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("): running").count(), 1, "{}", r.stderr);
    let all = point_files(&sweep_dir);
    assert_eq!(all.len(), 3);
    assert_eq!(std::fs::read(&first[0]).unwrap(), first_bytes);
    for (p, bytes) in second.iter().zip(&snapshot) {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} was rewritten", p.display());
    }

    // The results: one row per point, and the student × level table and chart.
    let points = std::fs::read_to_string(d.path().join("out/points.csv")).unwrap();
    assert_eq!(points.lines().count(), 1 + 3, "{points}");
    assert!(points.lines().skip(1).all(|l| l.contains(",done,")), "{points}");
    let table = std::fs::read_to_string(d.path().join("out/granularity.csv")).unwrap();
    assert!(table.starts_with("student,level 1,level 2,level 3"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    let html = std::fs::read_to_string(d.path().join("out/granularity.html")).unwrap();
    assert!(html.contains("Plotly.newPlot") && html.contains("\"arrayminus\""), "a chart with CI bars");
    assert!(d.path().join("out/granularity.parquet").is_file());
}

#[test]
fn invalid_points_are_skipped_and_a_failing_point_fails_the_run() {
    require!(Model);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("bad.rhai");
    // bsm: the rule teacher does not write it (invalid, known before anything runs);
    // missing.gguf: a student that is not there (fails when the point runs).
    std::fs::write(
        &script,
        r#"
        let r = sweep(#{ name: "bad", grid: #{ format: ["plain", "bsm"], student: ["default", "runs/missing.gguf"] },
                         base: #{ dataset: "arith", level: 2, train_n: 4, max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 96,
                                  eval_n: 2, eval_max_new_tokens: 8 } });
        r.results.write_csv("points.csv");
        print(`ran ${r.ran} failed ${r.failed} invalid ${r.invalid}`);
        "#,
    )
    .unwrap();
    let mut c = cotlab();
    c.current_dir(d.path()).args(["run"]).arg(&script).args(["--out", "out", "--runs", "runs"]);
    let r = run(&mut c);
    assert_ne!(r.code, 0, "a failed point fails the run\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ran 2 failed 1 invalid 2"), "{}", r.stdout);
    assert!(r.stderr.contains("2 of 4 points are skipped as invalid"), "{}", r.stderr);
    assert!(r.stderr.contains("1 sweep point(s) failed") && r.stderr.contains("missing.gguf"), "{}", r.stderr);
    // The results were still published: one row per point with its status and reason.
    let csv = std::fs::read_to_string(d.path().join("out/points.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert_eq!(rows.iter().filter(|l| l.contains(",done,")).count(), 1, "{csv}");
    assert_eq!(rows.iter().filter(|l| l.contains(",failed,")).count(), 1, "{csv}");
    assert_eq!(rows.iter().filter(|l| l.contains(",invalid,") && l.contains("not bsm")).count(), 2, "{csv}");
    let failed: Vec<_> = std::fs::read_dir(d.path().join("runs/bad")).unwrap().flatten().filter(|e| e.path().join("failed.json").is_file()).collect();
    assert_eq!(failed.len(), 1);

    // Bad grids stop before any work, with what to do.
    std::fs::write(&script, r#"sweep(#{ name: "bad2", grid: #{ lvl: [1] } })"#).unwrap();
    let r = run(&mut c);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown option 'lvl'") && r.stderr.contains("level"), "{}", r.stderr);
    std::fs::write(&script, r#"sweep(#{ name: "bad2", grid: #{ level: [] }, base: #{ dataset: "arith" } })"#).unwrap();
    let r = run(&mut c);
    assert!(r.code != 0 && r.stderr.contains("has no values"), "{}", r.stderr);
}

/// A sweep none of whose points can run fails the run (exit 1) before anything is written:
/// the last published report and the sweep's `sweep.json` stay as they were.
#[test]
fn a_sweep_of_invalid_points_only_fails_and_keeps_the_last_report() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("allbad.rhai");
    let report = d.path().join("out/report.csv");
    let run_with = |sweep: &str, sets: &[&str]| {
        std::fs::write(&script, format!("df(#{{run: [label]}}).write_csv(\"report.csv\");\n{sweep}\n")).unwrap();
        let mut c = cotlab();
        c.current_dir(d.path()).arg("run").arg(&script).args(["--out", "out", "--runs", "runs"]);
        for s in sets {
            c.args(["--set", s]);
        }
        run(&mut c)
    };
    let r = run_with("", &["label=first"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "run\nfirst\n");
    for (sweep, sets, needle) in [
        // The issue's case: the rule teacher writes no BSM.
        (
            "sweep(#{ name: \"allbad\", grid: #{ format: [\"bsm\"] }, base: #{ dataset: \"arith\", level: 1 } });",
            vec!["label=second"],
            "all 1 points are invalid",
        ),
        (
            "sweep(#{ name: \"allbad\", grid: #{ level: [1, 2] }, base: #{ dataset: \"arith\", format: \"bsm\" }, include: [#{ dataset: \"nope\" }] });",
            vec!["label=second"],
            "all 3 points are invalid",
        ),
        // A --set value of the wrong type: every point invalid, the key named.
        (
            "sweep(#{ name: \"allbad\", grid: #{ level: [level] }, base: #{ dataset: \"arith\" } });",
            vec!["label=second", "level=abc"],
            "note: `level` comes from --set",
        ),
    ] {
        let r = run_with(sweep, &sets);
        assert_eq!(r.code, 1, "{sweep}: {}", r.stderr);
        assert!(r.stderr.contains("sweep 'allbad': all") && r.stderr.contains(needle), "{sweep}: {}", r.stderr);
        assert!(r.stderr.contains("nothing was published") && !r.stderr.contains("`label`"), "{sweep}: {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&report).unwrap(), "run\nfirst\n", "{sweep}: the last report was replaced");
        assert!(!d.path().join("runs/allbad/sweep.json").exists(), "{sweep}");
    }
}

#[test]
fn the_same_config_gives_the_same_numbers_and_records_its_provenance() {
    require!(Model);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use cotlab::experiment::{sweep, SweepSpec};
    let d = tempfile::tempdir().unwrap();
    let ws = cotlab::lab::Workspace::open(cotlab::data::DataDir::resolve(None), d.path().join("runs"), None);
    let spec = |name: &str| -> SweepSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "grid": {"level": [3]},
            "base": {"dataset": "arith", "train_n": 4, "max_steps": 2, "batch_size": 2, "grad_accum": 1, "max_len": 96, "save_every": 1,
                     "eval_n": 3, "eval_max_new_tokens": 12, "seed": 7},
        }))
        .unwrap()
    };
    let (a, b) = (sweep(&ws, &spec("a")).unwrap(), sweep(&ws, &spec("b")).unwrap());
    assert_eq!((a.done, b.done), (1, 1));
    let read = |r: &cotlab::experiment::SweepReport| -> serde_json::Value {
        let p = r.dir.join(&r.points[0].point);
        serde_json::from_str(&std::fs::read_to_string(p.join("point.json")).unwrap()).unwrap()
    };
    let (pa, pb) = (read(&a), read(&b));
    for k in ["train_loss_first", "train_loss_last", "train_tokens", "accuracy", "mean_tokens", "correct"] {
        assert_eq!(pa["metrics"][k], pb["metrics"][k], "{k}");
    }
    assert!(pa["metrics"]["train_loss_last"].as_f64().unwrap() != pa["metrics"]["train_loss_first"].as_f64().unwrap(), "two different steps");
    // The generated answers themselves, token for token.
    let samples = |r: &cotlab::experiment::SweepReport| std::fs::read_to_string(r.dir.join(&r.points[0].point).join("eval/samples.jsonl")).unwrap();
    assert_eq!(samples(&a), samples(&b));

    // Provenance: the build, the seeds, and the model file's SHA-256 as sha256sum computes it.
    let prov = &pa["provenance"];
    assert_eq!(prov["cotlab_version"], env!("CARGO_PKG_VERSION"));
    assert!(prov["git_commit"].as_str().is_some_and(|c| c.len() >= 40 || c == "unknown"), "{prov}");
    assert_eq!(prov["seeds"]["sft"], 7);
    let model = cotlab::model::default_model_path();
    let out = Command::new("sha256sum").arg(&model).output().unwrap();
    let want = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(prov["model"][0]["sha256"], want.as_str());
    // Each training run's invocations are recorded in the run dir too.
    assert!(a.dir.join(&a.points[0].point).join("provenance.jsonl").is_file());

    // results() over both sweeps: one row each, and the two seeds-free configs aggregate to one.
    let f = cotlab::results::runs::load_runs(&[a.dir.clone(), b.dir.clone()]).unwrap();
    assert_eq!(f.height(), 2);
    let agg = cotlab::results::runs::aggregate_seeds(&f, &["seed".into()]).unwrap();
    assert_eq!(agg.height(), 1, "{}", agg.to_table_string());
    assert_eq!(agg.cell(0, "seeds").unwrap(), cotlab::frame::Cell::Int(2));
}

/// `method` is a grid key: a sweep of sft, kd (stored teacher logits of the base student) and
/// distill (the base student as live teacher) names each point's method and trains each point
/// with its own map only.
#[test]
fn a_method_grid_trains_sft_kd_and_distill_points() {
    require!(Model);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("kd.rhai");
    std::fs::write(
        &script,
        r#"
        let l = teacher_logits(student("default"), rationales("arith", #{ level: 2, n: 4, seed: 1 }), #{ top_k: 8, max_len: 96 });
        let base = #{ dataset: "arith", level: 2, train_n: 4, max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 96,
                      eval_n: 2, eval_max_new_tokens: 8, kd: #{ logits: l.dir, alpha: 0.5 },
                      distill: #{ teacher: "default", lmbda: 1.0, max_new_tokens: 4 } };
        let r = sweep(#{ name: "methods", grid: #{ method: ["sft", "kd", "distill"] }, base: base });
        for row in r.results.rows() { print(`point ${row.point} method ${row.method} ${row.status}`); }
        print(`ran ${r.ran} failed ${r.failed} invalid ${r.invalid}`);
        "#,
    )
    .unwrap();
    let mut c = cotlab();
    c.current_dir(d.path()).args(["run"]).arg(&script).args(["--out", "out", "--runs", "runs"]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ran 3 failed 0 invalid 0"), "{}", r.stdout);
    // The results frame names each point's method.
    let rows: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("point ")).collect();
    assert_eq!(rows.len(), 3, "{}", r.stdout);
    for m in ["sft", "kd", "distill"] {
        assert!(rows.iter().any(|l| l.starts_with(&format!("point method-{m}-")) && l.ends_with(&format!("method {m} done"))), "{rows:?}");
    }
    let (mut kd_points, mut distill_points) = (0, 0);
    for e in std::fs::read_dir(d.path().join("runs/methods")).unwrap().flatten().filter(|e| e.path().join("point.json").is_file()) {
        let name = e.file_name().to_string_lossy().to_string();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.path().join("config.json")).unwrap()).unwrap();
        let (kd, loss) = (&config["options"]["kd"], &config["loss"]);
        if name.starts_with("method-kd-") {
            kd_points += 1;
            assert!(kd["alpha"] == 0.5 && loss.is_null(), "{name}: {config}");
        } else if name.starts_with("method-distill-") {
            distill_points += 1;
            assert!(kd.is_null() && loss["method"] == "distill" && loss["options"]["lmbda"] == 1.0, "{name}: {config}");
            let log = std::fs::read_to_string(e.path().join("train_log.jsonl")).unwrap();
            assert!(log.contains("\"on_policy_batches\":1"), "{log}");
        } else {
            assert!(name.starts_with("method-sft-") && kd.is_null() && loss.is_null(), "{name}: {config}");
        }
    }
    assert_eq!((kd_points, distill_points), (1, 1));
}
