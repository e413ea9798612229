//! Every way a script could name a path outside its sandbox (see `lab::sandbox`): run and eval
//! names, teacher caches, output names, reads by path, model specs, symlinks. Each must be
//! refused with an error that names the offending function and path, before anything is
//! written; and the allowed forms must keep working.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cotlab::results::OutputDir;
use cotlab::script::{Context, Runner};

struct Setup {
    _d: tempfile::TempDir,
    root: PathBuf,
    runs: PathBuf,
    out: PathBuf,
    outside: PathBuf,
}

fn setup() -> Setup {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.csv"), "a,b\n1,2\n").unwrap();
    std::fs::write(outside.join("secret.jsonl"), "{\"id\": \"x\", \"prediction\": \"The answer is 1\"}\n").unwrap();
    Setup { runs: root.join("runs"), out: root.join("out"), outside, root, _d: d }
}

fn runner(s: &Setup, allow: &[&Path]) -> Runner {
    let out = Arc::new(OutputDir::create(&s.out).unwrap());
    let mut ctx = Context::new(common::data_dir(), Some(out));
    ctx.runs_dir = s.runs.clone();
    ctx.allow_read = allow.iter().map(|p| p.to_path_buf()).collect();
    Runner::new(ctx)
}

/// Run `src`; it must fail with a message containing every `needle`.
fn refused(r: &Runner, src: &str, needles: &[&str]) {
    let e = match r.eval("escape.rhai", src) {
        Ok(v) => panic!("{src}: not refused, returned {v:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(e.contains(n), "{src}: error lacks {n:?}: {e}");
    }
}

/// Nothing may have appeared outside the sandbox's dirs.
fn nothing_written_outside(s: &Setup) {
    let mut names: Vec<String> = std::fs::read_dir(&s.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    // out.lock: the run's lock on the output dir, held by cotlab itself.
    assert!(names.iter().all(|n| ["outside", "runs", "out", "out.lock"].contains(&n.as_str())), "{names:?}");
    let mut inside: Vec<String> = std::fs::read_dir(&s.outside).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    inside.retain(|n| n != "run"); // the fake run dir a test makes on purpose
    inside.sort();
    assert_eq!(inside, ["secret.csv", "secret.jsonl"], "files appeared in the outside dir");
}

#[test]
fn run_eval_and_cache_names_cannot_leave_the_runs_dir() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    let corpus = r#"let c = rationales("arith", #{ level: 1, n: 4, seed: 1 });"#;
    for name in ["../escape", "../../tmp/x", "/tmp/cotlab-escape", "a/../../b", ".hidden", "a//b", ""] {
        let src = format!("{corpus}\nsft(student(\"default\"), c, #{{ run: \"{name}\", max_steps: 1 }})");
        refused(&r, &src, &["escape.rhai:2:", "run name", "not allowed"]);
        let src = format!("evaluate(student(\"default\"), dataset(\"svamp\", #{{limit: 1}}), #{{ name: \"{name}\", max_new_tokens: 1 }})");
        refused(&r, &src, &["run name", "not allowed"]);
        let src = format!("teacher(\"openai\", #{{ base_url: \"http://127.0.0.1:9\", api_key_env: (), cache: \"{name}\" }})");
        refused(&r, &src, &["run name", "not allowed"]);
        let src = format!("teacher(\"local\", #{{ cache: \"{name}\" }})");
        refused(&r, &src, &["run name", "not allowed"]);
    }
    // A symlink planted inside the runs dir cannot redirect a run elsewhere.
    std::fs::create_dir_all(&s.runs).unwrap();
    std::os::unix::fs::symlink(&s.outside, s.runs.join("link")).unwrap();
    let src = format!("{corpus}\nsft(student(\"default\"), c, #{{ run: \"link/x\", max_steps: 1 }})");
    refused(&r, &src, &["outside", "symlink"]);
    let src = "teacher(\"openai\", #{ base_url: \"http://127.0.0.1:9\", api_key_env: (), cache: \"link/c.jsonl\" })";
    refused(&r, src, &["outside"]);
    nothing_written_outside(&s);
}

#[test]
fn reads_outside_the_roots_are_refused() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    let secret = s.outside.join("secret.csv");
    let jsonl = s.outside.join("secret.jsonl");
    let dotdot = s.runs.join("../outside/secret.csv");
    for (src, what) in [
        (format!("read_csv(\"{}\")", secret.display()), "read_csv"),
        (format!("read_csv(\"{}\")", dotdot.display()), "read_csv"),
        ("read_csv(\"/etc/passwd\")".to_string(), "read_csv"),
        (format!("read_jsonl(\"{}\")", jsonl.display()), "read_jsonl"),
        (format!("read_parquet(\"{}\")", secret.display()), "read_parquet"),
        (format!("score_predictions(\"svamp\", \"{}\")", jsonl.display()), "score_predictions"),
        (format!("contamination(\"{}\", dataset(\"svamp\"))", jsonl.display()), "contamination: train"),
        (format!("student(\"{}\")", s.outside.display()), "student"),
        (format!("teacher(\"local\", #{{ model: \"{}\" }})", s.outside.display()), "student"),
    ] {
        refused(&r, &src, &[what, "outside the dirs a script may read", "--allow-read"]);
    }
    // A symlink inside a root pointing out is refused too.
    std::fs::create_dir_all(&s.runs).unwrap();
    std::os::unix::fs::symlink(&secret, s.runs.join("innocent.csv")).unwrap();
    refused(&r, &format!("read_csv(\"{}\")", s.runs.join("innocent.csv").display()), &["outside the dirs"]);
    // Allowed: the data dir, and a dir the user adds with --allow-read.
    let n = r.eval("ok.rhai", "dataset(\"svamp\").len()").unwrap().as_int().unwrap();
    assert_eq!(n, 300);
    drop(r); // one run at a time per output dir
    let allowed = runner(&s, &[&s.outside]);
    let h = allowed.eval("ok.rhai", &format!("read_csv(\"{}\").height", secret.display())).unwrap().as_int().unwrap();
    assert_eq!(h, 1);
}

#[test]
fn outputs_and_exports_stay_in_the_output_dir() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    for name in ["../x.csv", "/tmp/cotlab-escape.csv", "a/../../x.csv", ".incomplete/x.csv", ""] {
        refused(&r, &format!("df(#{{a: [1]}}).write_csv(\"{name}\")"), &["output name", "not allowed"]);
        refused(&r, &format!("df(#{{a: [1]}}).write_parquet(\"{name}\")"), &["output name", "not allowed"]);
    }
    // export_model: the run is looked up under the runs dir, the target inside the output dir.
    refused(&r, "export_model(\"../outside\", \"m\")", &["run name", "not allowed"]);
    refused(&r, &format!("export_model(\"{}\", \"m\")", s.outside.display()), &["not allowed"]);
    let fake_run = s.outside.join("run");
    std::fs::create_dir_all(fake_run.join("checkpoint")).unwrap();
    std::fs::write(fake_run.join("config.json"), "{}").unwrap();
    refused(&r, &format!("export_model(\"{}\", \"m\")", fake_run.display()), &["outside the dirs a script may read"]);
    refused(&r, &format!("student(\"{}\")", fake_run.display()), &["outside the dirs a script may read"]);
    nothing_written_outside(&s);
}
