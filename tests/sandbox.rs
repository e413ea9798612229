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
    inside.retain(|n| n != "run" && n != "ev"); // the fake run and eval dirs tests make on purpose
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

/// The dir layout of the round-3 escapes: `runs/a/b/share` links to the runs dir itself, so
/// `runs/a/b/share/../outside/...` reads as a path inside the runs dir but leads outside it.
fn escape_through_link(s: &Setup, rest: &str) -> String {
    let b = s.runs.join("a/b");
    if !b.join("share").exists() {
        std::fs::create_dir_all(&b).unwrap();
        std::os::unix::fs::symlink(&s.runs, b.join("share")).unwrap();
    }
    b.join("share/../outside").join(rest).display().to_string()
}

#[test]
fn a_link_plus_dotdot_reads_nothing_outside_for_any_reader() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    // An eval dir and a run dir outside, for the dir readers.
    std::fs::create_dir_all(s.outside.join("ev")).unwrap();
    std::fs::write(s.outside.join("ev/results.json"), r#"{"accuracy": 1.0}"#).unwrap();
    std::fs::create_dir_all(s.outside.join("run/checkpoint")).unwrap();
    std::fs::write(s.outside.join("run/config.json"), "{}").unwrap();
    let p = |rest: &str| escape_through_link(&s, rest);
    for (src, what) in [
        (format!("read_csv(\"{}\")", p("secret.csv")), "read_csv"),
        (format!("read_jsonl(\"{}\")", p("secret.jsonl")), "read_jsonl"),
        (format!("read_parquet(\"{}\")", p("secret.csv")), "read_parquet"),
        (format!("score_predictions(\"svamp\", \"{}\")", p("secret.jsonl")), "score_predictions"),
        (format!("contamination(\"{}\", dataset(\"svamp\"))", p("secret.jsonl")), "contamination"),
        (format!("results(\"{}\")", p("ev")), "results"),
        (format!("student(\"{}\")", p("")), "student"),
        (format!("student(\"{}\")", p("run")), "run"),
        (format!("teacher(\"local\", #{{ model: \"{}\" }})", p("run")), "run"),
        (format!("export_model(\"{}\", \"m\")", p("run")), "run"),
    ] {
        refused(&r, &src, &[what, "outside the dirs a script may read"]);
    }
    nothing_written_outside(&s);
}

#[test]
fn links_planted_inside_run_and_eval_dirs_are_neither_read_nor_written_through() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    let secret = s.outside.join("secret.jsonl");
    let before = std::fs::read(&secret).unwrap();
    let link = |at: &Path, to: &Path| {
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, at).unwrap();
    };
    // Writers of an eval dir: the samples journal, the report, the parquet copy.
    for (i, file) in ["samples.jsonl", "results.json", "samples.parquet"].iter().enumerate() {
        let name = format!("ev{i}");
        link(&s.runs.join(&name).join(file), &secret);
        let src = format!("evaluate(student(\"default\"), dataset(\"svamp\", #{{limit: 1}}), #{{ name: \"{name}\", max_new_tokens: 1 }})");
        refused(&r, &src, &[file, "symbolic link"]);
        assert_eq!(std::fs::read(&secret).unwrap(), before, "{file}: written through the link");
    }
    // Writers of a run dir: the training log, the provenance log, the checkpoint dir.
    let corpus = r#"let c = rationales("arith", #{ level: 1, n: 4, seed: 1 });"#;
    for (i, file) in ["provenance.jsonl", "train_log.jsonl"].iter().enumerate() {
        let name = format!("run{i}");
        link(&s.runs.join(&name).join(file), &secret);
        refused(&r, &format!("{corpus}\nsft(student(\"default\"), c, #{{ run: \"{name}\", max_steps: 1 }})"), &[file, "symbolic link"]);
        assert_eq!(std::fs::read(&secret).unwrap(), before, "{file}: written through the link");
    }
    // Readers of a run dir: a checkpoint that links out is refused before it loads.
    std::fs::create_dir_all(s.runs.join("planted/checkpoint")).unwrap();
    std::fs::write(s.runs.join("planted/config.json"), "{\"model\": \"default\"}").unwrap();
    link(&s.runs.join("planted/checkpoint/model.safetensors"), &secret);
    refused(&r, "student(\"planted\")", &["model.safetensors", "outside the dirs a script may read"]);
    refused(&r, "export_model(\"planted\", \"m\")", &["model.safetensors", "outside the dirs a script may read"]);
    // results(): a dir holding a link out is refused as a whole, naming the link; links that stay
    // inside are not followed either (the aliased eval dir is one row, not two).
    std::fs::create_dir_all(s.outside.join("ev")).unwrap();
    std::fs::write(s.outside.join("ev/results.json"), r#"{"accuracy": 1.0}"#).unwrap();
    link(&s.runs.join("walk/linked"), &s.outside.join("ev"));
    std::fs::create_dir_all(s.runs.join("walk2/real")).unwrap();
    link(&s.runs.join("walk2/real/results.json"), &s.outside.join("ev/results.json"));
    for dir in ["walk", "walk2"] {
        refused(&r, &format!("results(\"{}\")", s.runs.join(dir).display()), &["results", "outside the dirs a script may read"]);
    }
    std::fs::create_dir_all(s.runs.join("walk3/ok")).unwrap();
    std::fs::write(s.runs.join("walk3/ok/results.json"), r#"{"accuracy": 0.5}"#).unwrap();
    link(&s.runs.join("walk3/alias"), &s.runs.join("walk3/ok"));
    let n = r.eval("ok.rhai", &format!("results(\"{}\").height", s.runs.join("walk3").display())).unwrap().as_int().unwrap();
    assert_eq!(n, 1, "a linked dir was walked");
    nothing_written_outside(&s);
}

#[test]
fn dangling_links_are_never_created_through() {
    require!(Data, Model);
    let s = setup();
    let r = runner(&s, &[]);
    std::fs::create_dir_all(&s.runs).unwrap();
    let corpus = r#"let c = rationales("arith", #{ level: 1, n: 4, seed: 1 });"#;
    let cases = [
        ("cache.jsonl", "teacher(\"openai\", #{ base_url: \"http://127.0.0.1:9\", api_key_env: (), cache: \"cache.jsonl\" })".to_string()),
        ("lcache.jsonl", "teacher(\"local\", #{ cache: \"lcache.jsonl\" })".to_string()),
        ("newrun", format!("{corpus}\nsft(student(\"default\"), c, #{{ run: \"newrun\", max_steps: 1 }})")),
        ("neweval", "evaluate(student(\"default\"), dataset(\"svamp\", #{limit: 1}), #{ name: \"neweval\", max_new_tokens: 1 })".to_string()),
    ];
    for (name, src) in cases {
        let target = s.outside.join(format!("created-{name}"));
        std::os::unix::fs::symlink(&target, s.runs.join(name)).unwrap();
        refused(&r, &src, &["outside"]);
        assert!(!target.exists(), "{name}: created through a dangling link");
    }
    nothing_written_outside(&s);
}
