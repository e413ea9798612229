//! The teaching notebooks, executed headless on the "Rust (cotlab)" evcxr kernel with
//! `jupyter nbconvert --execute notebooks/NAME`, exactly as a user would run them after
//! `scripts/setup.sh`: from a plain shell (an environment without what `cargo test` adds), in the
//! checkout's root; plus the notebook API itself (display HTML, Rhai sessions) without Jupyter.
//!
//! Each notebook is copied into `notebooks/` of a temp dir laid out like a checkout (its runs/ and
//! out/ land in that `notebooks/`, `scripts/` is a copy of this checkout's) with its
//! `:dep cotlab = { path = ".." }` pointed at this checkout. The `cotlab …` commands its prose gives
//! then run from the temp dir's root, as a user would paste them. The kernel's compile cache is
//! shared, so the notebooks run one at a time, and every run must reuse it: no compiled polars or
//! candle in it is rebuilt.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use cotlab::notebook::{Rhai, Value};
use cotlab::results::{Chart, ChartSpec, Frame};
use serde_json::Value as J;

static KERNEL: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn jupyter() -> PathBuf {
    let j = cotlab::model::cotlab_home().join("venv/bin/jupyter");
    assert!(j.is_file(), "no Jupyter at {}: run scripts/setup.sh", j.display());
    let specs = Command::new(&j).args(["kernelspec", "list"]).output().expect("jupyter kernelspec list runs");
    assert!(
        String::from_utf8_lossy(&specs.stdout).lines().any(|l| l.trim_start().starts_with("cotlab ")),
        "the \"Rust (cotlab)\" kernel is not installed: run scripts/setup.sh"
    );
    j
}

/// nbformat stores text either as one string or as a list of lines.
fn notebook_text(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Array(parts) => Some(parts.iter().filter_map(|p| p.as_str()).collect()),
        _ => None,
    }
}

struct Executed {
    ok: bool,
    log: String,
    cells: Vec<J>,
}

impl Executed {
    fn code_cells(&self) -> impl Iterator<Item = &J> {
        self.cells.iter().filter(|c| c["cell_type"] == "code")
    }

    /// Every output of every code cell.
    fn all_outputs(&self) -> impl Iterator<Item = &J> {
        self.code_cells().flat_map(|c| c["outputs"].as_array().into_iter().flatten())
    }

    /// Every output's content for one MIME type, across all cells.
    fn outputs(&self, mime: &str) -> Vec<String> {
        self.all_outputs().filter_map(|o| notebook_text(&o["data"][mime])).collect()
    }

    /// Failed cells. evcxr reports only compile errors as Jupyter errors: a Rhai error shows as
    /// cotlab's error box and a panic (`unwrap()` in a Rust cell) as "panicked at" on stderr.
    fn errors(&self) -> Vec<String> {
        let mut v: Vec<String> = self.all_outputs().filter(|o| o["output_type"] == "error").map(|o| format!("{}: {}", o["ename"], o["evalue"])).collect();
        v.extend(self.outputs("text/html").into_iter().filter(|h| h.contains("cotlab-error")));
        let streams = self.streams();
        v.extend(streams.lines().filter(|l| l.contains("panicked at") || l.starts_with("error: ")).map(str::to_string));
        v
    }

    fn streams(&self) -> String {
        self.all_outputs().filter(|o| o["output_type"] == "stream").filter_map(|o| notebook_text(&o["text"])).collect()
    }

    /// Seconds each code cell took, from the timing nbclient records.
    fn cell_seconds(&self) -> Vec<f64> {
        let t = |c: &J, k: &str| {
            c["metadata"]["execution"][k].as_str().and_then(|s| {
                // 2026-11-26T12:00:01.123456Z
                let (hms, frac) = s.get(11..)?.trim_end_matches('Z').split_once('.').unwrap_or((s.get(11..19)?, "0"));
                let mut it = hms.split(':').map(|x| x.parse::<f64>().ok());
                let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
                Some(h * 3600.0 + m * 60.0 + sec + format!("0.{frac}").parse::<f64>().ok()?)
            })
        };
        self.code_cells()
            .map(|c| match (t(c, "iopub.execute_input"), t(c, "shell.execute_reply")) {
                (Some(a), Some(b)) => (b - a + 86400.0) % 86400.0,
                _ => f64::NAN,
            })
            .collect()
    }
}

/// The environment of a user's shell: the session's own variables, none of those `cargo test`
/// adds (`CARGO_*`, `RUSTUP_*`, `LD_LIBRARY_PATH`, …), and no `CARGO_NET_OFFLINE`.
fn plain_shell(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for k in ["HOME", "PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "SHELL", "TMPDIR", "COTLAB_HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The kernel cache's compiled polars and candle, with their modification times.
fn cached_heavy_deps() -> Vec<(PathBuf, std::time::SystemTime)> {
    let target = cotlab::model::cotlab_home().join("evcxr/build/target");
    let mut dirs = vec![target.join("debug/deps")];
    dirs.extend(std::fs::read_dir(&target).into_iter().flatten().flatten().map(|e| e.path().join("debug/deps")));
    let mut out: Vec<(PathBuf, std::time::SystemTime)> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with("libpolars") || n.starts_with("libcandle")) && n.ends_with(".rlib")
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.modified().ok()?)))
        .collect();
    out.sort();
    out
}

/// A temp dir laid out like a checkout: `notebooks/` (where the notebook runs) and a copy of
/// `scripts/` (which the notebooks' commands name).
fn checkout_like() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notebooks")).unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    for e in std::fs::read_dir(repo().join("scripts")).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join("scripts").join(e.file_name())).unwrap();
        }
    }
    dir
}

/// Execute `notebooks/<name>` (or a notebook given as JSON) in a fresh checkout-like temp dir.
fn execute(name: &str, notebook_json: Option<String>) -> (tempfile::TempDir, Executed) {
    let jupyter = jupyter();
    let _one_at_a_time = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = checkout_like();
    let text = match notebook_json {
        Some(t) => t,
        None => std::fs::read_to_string(repo().join("notebooks").join(name)).unwrap(),
    };
    // Point the `:dep` at this checkout. Same absolute path evcxr makes of ".." from notebooks/,
    // so the kernel's cached build of cotlab is reused.
    let dep = format!(":dep cotlab = {{ path = \\\"{}\\\" }}", repo().display());
    let text = text.replace(r#":dep cotlab = { path = \"..\" }"#, &dep);
    assert!(text.contains(&dep), "{name}: expected a `:dep cotlab = {{ path = \"..\" }}` cell");
    let input = Path::new("notebooks").join(name);
    std::fs::write(dir.path().join(&input), text).unwrap();
    let heavy = cached_heavy_deps();
    assert!(!heavy.is_empty(), "the kernel's compile cache holds no compiled polars or candle: run scripts/setup.sh");
    let start = Instant::now();
    let out = plain_shell(&mut Command::new(&jupyter))
        .args(["nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=3600", "--output-dir", "notebooks", "--output", "executed"])
        .arg(&input)
        .current_dir(dir.path())
        .env("COTLAB_DATA", std::fs::canonicalize(&common::data_dir().0).unwrap())
        .output()
        .expect("jupyter nbconvert runs");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let executed = dir.path().join("notebooks/executed.ipynb");
    let cells = if executed.is_file() {
        let nb: J = serde_json::from_str(&std::fs::read_to_string(&executed).unwrap()).unwrap();
        nb["cells"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let e = Executed { ok: out.status.success(), log, cells };
    let secs = e.cell_seconds();
    eprintln!(
        "{name}: {:.1} s in all (kernel start included); cells: {}",
        start.elapsed().as_secs_f64(),
        secs.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ")
    );
    let rebuilt: Vec<String> =
        heavy.iter().filter(|(p, t)| std::fs::metadata(p).and_then(|m| m.modified()).ok() != Some(*t)).map(|(p, _)| p.display().to_string()).collect();
    assert!(rebuilt.is_empty(), "{name}: run from a plain shell, the kernel rebuilt what scripts/setup.sh had compiled:\n{}", rebuilt.join("\n"));
    (dir, e)
}

/// The `cotlab …` commands a notebook's prose gives (its inline code spans that start so).
fn prose_commands(e: &Executed) -> Vec<String> {
    let prose: String = e.cells.iter().filter(|c| c["cell_type"] == "markdown").filter_map(|c| notebook_text(&c["source"])).collect::<Vec<_>>().join("\n");
    // `cotlab run script.rhai` is the prose's placeholder for "any script", not a command to paste.
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("cotlab ") && !span.split_whitespace().any(|w| w == "script.rhai"))
        .map(|s| s.replace('\n', " "))
        .collect()
}

/// Run every `cotlab …` command of the notebook's prose from the checkout-like dir's root, as a
/// user pastes them after running the notebook; each must succeed. Returns their stdout in order.
fn run_prose_commands(name: &str, dir: &Path, e: &Executed) -> Vec<String> {
    let commands = prose_commands(e);
    assert!(!commands.is_empty(), "{name}: its prose gives no `cotlab …` command");
    commands
        .iter()
        .map(|command| {
            let r = common::run(common::cotlab().current_dir(dir).args(command.split_whitespace().skip(1)));
            assert_eq!(r.code, 0, "{name}: `{command}` failed:\n{}\n{}", r.stdout, r.stderr);
            r.stdout
        })
        .collect()
}

/// Run a notebook and require it to have run cleanly.
fn run_clean(name: &str) -> (tempfile::TempDir, Executed) {
    let (dir, e) = execute(name, None);
    assert!(e.ok && e.errors().is_empty(), "{name} failed: {:?}\n{}", e.errors(), e.log);
    assert!(e.code_cells().all(|c| c["execution_count"].is_number()), "{name}: a cell did not run");
    (dir, e)
}

fn count(outputs: &[String], needle: &str) -> usize {
    outputs.iter().filter(|o| o.contains(needle)).count()
}

/// plotly.js inlined once, every chart drawn from it; every chart also carries plotly's own MIME
/// bundle (its figure), which front ends with a plotly renderer and saved notebooks show.
fn check_charts(name: &str, e: &Executed, charts: usize) {
    let html = e.outputs("text/html");
    assert_eq!(count(&html, "Plotly.newPlot"), charts, "{name}: charts");
    assert_eq!(count(&html, "window.__cotlab_define"), 1, "{name}: plotly.js must be inlined exactly once");
    let first = html.iter().position(|h| h.contains("Plotly.newPlot")).unwrap();
    assert!(html[first].contains("window.__cotlab_define"), "{name}: plotly.js comes with the first chart");
    let figures: Vec<&J> = e.all_outputs().map(|o| &o["data"][cotlab::notebook::PLOTLY_MIME]).filter(|f| !f.is_null()).collect();
    assert_eq!(figures.len(), charts, "{name}: a {} bundle per chart", cotlab::notebook::PLOTLY_MIME);
    for f in figures {
        assert!(f["data"].as_array().is_some_and(|d| !d.is_empty()) && f["layout"].is_object(), "{name}: a figure as JSON, not text: {f}");
    }
}

#[test]
fn notebook_01_quickstart() {
    require!(Data, Model, Jupyter);
    let (dir, e) = run_clean("01_quickstart.ipynb");
    let html = e.outputs("text/html");
    assert!(count(&html, "<table class=\"cotlab-frame\">") >= 4, "01: tables (catalog, test set, levels, summary)");
    check_charts("01", &e, 1);
    // The six levels of one question, with the rationale text.
    let levels = html.iter().find(|h| h.contains("<th>rationale</th>")).expect("01: the levels table");
    assert_eq!(levels.matches("<tr><td>").count(), 6, "01: one row per level");
    // The predictions file: 5 right, 4 wrong, 1 without an answer.
    assert!(dir.path().join("notebooks/out/predictions.jsonl").is_file());
    let plain = e.outputs("text/plain").join("\n");
    for want in ["\"correct\": 5", "\"n\": 10", "\"unparsed\": 1"] {
        assert!(plain.contains(want), "01: score output lacks {want}: {plain}");
    }
    // `cotlab score` from a shell scores the same file the same way.
    let stdout = run_prose_commands("01", dir.path(), &e);
    assert_eq!(stdout.len(), 1, "01: one command");
    for want in ["\"correct\":5", "\"n\":10", "\"unparsed\":1"] {
        assert!(stdout[0].contains(want), "01: `cotlab score` lacks {want}: {}", stdout[0]);
    }
}

#[test]
fn notebook_02_granularity_analysis() {
    require!(Data, Model, Jupyter);
    let (dir, e) = run_clean("02_granularity_analysis.ipynb");
    let html = e.outputs("text/html");
    assert!(count(&html, "<table class=\"cotlab-frame\">") >= 3, "02: tables (files, report, contamination)");
    check_charts("02", &e, 3);
    let contamination = html.iter().find(|h| h.contains("<th>contaminated_pct</th>")).expect("02: contamination table");
    for d in ["svamp", "gsm8k", "aqua", "csqa", "obqa", "strategyqa", "math"] {
        assert!(contamination.contains(&format!("<td>{d}</td>")), "02: contamination has no row for {d}");
    }
    assert!(e.streams().contains(" rationales"), "02: the load cell prints how many rationales it read");
    run_prose_commands("02", dir.path(), &e);
    assert!(dir.path().join("out/corpus_report/corpus_report.csv").is_file(), "02: the report's command wrote its table");
}

#[test]
fn notebook_03_distill_a_student() {
    require!(Data, Model, Jupyter);
    let (dir, e) = run_clean("03_distill_a_student.ipynb");
    let html = e.outputs("text/html");
    check_charts("03", &e, 2);
    assert!(count(&html, "<th>mean_tokens</th>") == 1, "03: the before/after table");
    // Training really happened: a complete run dir with a loss per step.
    let runs = dir.path().join("notebooks/runs");
    let log = std::fs::read_to_string(runs.join("nb03-sft/train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 8, "03: 2 epochs x 4 steps");
    let streams = e.streams();
    assert!(streams.contains("8/8 steps"), "03: {streams}");
    for eval in ["nb03-before", "nb03-after"] {
        let samples = std::fs::read_to_string(runs.join(eval).join("samples.jsonl")).unwrap();
        assert_eq!(samples.lines().count(), 16, "03: {eval} evaluated 16 questions");
    }
    // Progress reaches the notebook as plain lines, without terminal control sequences.
    assert!(!streams.contains('\u{1b}') && !streams.contains('\r'), "03: escape codes in the output");
    // `cotlab export` finds the run dir where the notebook left it.
    run_prose_commands("03", dir.path(), &e);
    assert!(dir.path().join("notebooks/out/nb03-model/config.json").is_file(), "03: the exported model");
}

/// A failing Rhai cell shows its position in an error box, and the test helper sees it.
#[test]
fn notebook_errors_are_reported() {
    require!(Data, Model, Jupyter);
    let nb = serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "cotlab", "display_name": "Rust (cotlab)", "language": "rust"}},
        "cells": [
            {"cell_type": "code", "id": "a", "metadata": {}, "outputs": [], "execution_count": null, "source": ":dep cotlab = { path = \"..\" }"},
            {"cell_type": "code", "id": "b", "metadata": {}, "outputs": [], "execution_count": null,
             "source": "let mut lab = cotlab::notebook::Rhai::new();\nlab.cell(\"let x = 1;\\nlet y = nope(x);\")"},
            {"cell_type": "code", "id": "c", "metadata": {}, "outputs": [], "execution_count": null, "source": "lab.cell(\"x\")"}
        ]
    });
    let (_dir, e) = execute("bad.ipynb", Some(nb.to_string()));
    let errors = e.errors();
    assert!(errors.iter().any(|x| x.contains("cotlab-error") && x.contains("cell 1:2:")), "the error box names the Rhai cell, line and column: {errors:?}");
    assert!(e.streams().contains("error: cell 1:2:"), "and stderr has it: {}", e.streams());
    // The session lives on: `x` from the failing cell's first line is defined.
    assert!(e.outputs("text/plain").iter().any(|t| t == "1"), "{:?}", e.outputs("text/plain"));
}

// --- the notebook API without Jupyter ---

#[test]
fn rhai_session_keeps_variables_and_functions() {
    require!(Data, Model);
    let mut lab = Rhai::new();
    lab.run("let n = 20; fn double(x) { x * 2 }").unwrap();
    let v = lab.run("double(n) + 2").unwrap();
    assert_eq!(v.to_string(), "42");
    // A later cell can redefine a function.
    lab.run("fn double(x) { x * 3 }").unwrap();
    assert_eq!(lab.run("double(n)").unwrap().to_string(), "60");
    // Errors carry the cell number, line and column.
    let err = lab.run("let a = 1;\nlet b = nope(a);").unwrap_err().to_string();
    assert!(err.starts_with("cell 5:2:"), "{err}");
    assert!(err.contains("nope"), "{err}");
    // Variables survive a failing cell.
    assert_eq!(lab.run("n").unwrap().to_string(), "20");
    // `cell` returns the same message as an error value (shown as a red box in a notebook).
    let err = lab.cell("let c = ;");
    assert!(err.is_error() && err.to_string().starts_with("error: cell 7:1:"), "{err}");
}

#[test]
fn rhai_values_display_by_type() {
    require!(Data, Model);
    let mut lab = Rhai::new();
    let frame: Value = lab.run(r#"df(#{ level: [1, 2], words: [10.5, 20.25] })"#).unwrap();
    let f = frame.frame().expect("a frame");
    assert_eq!(f.columns(), vec!["level", "words"], "the frame survives the parquet hand-over");
    assert_eq!(f.height(), 2);
    let html = f.to_html(50);
    assert!(html.contains("<th>level</th>") && html.contains("<td>20.25</td>"), "{html}");
    let chart = lab.run(r#"bar_chart(df(#{ x: ["a", "b"], y: [1, 2] }), #{ x: "x", y: "y", title: "t" })"#).unwrap();
    assert!(chart.frame().is_none() && chart.chart().is_some());
    assert_eq!(lab.run(r#""plain text""#).unwrap().to_string(), "plain text");
    let map = lab.run(r#"#{ n: 10, accuracy: 0.5, task: "svamp" }"#).unwrap();
    assert_eq!(map.json()["n"], 10);
    assert_eq!(map.json()["task"], "svamp");
    assert!(map.to_string().contains("\"accuracy\": 0.5"), "{map}");
    assert!(lab.run("let z = 1;").unwrap().is_unit());
}

#[test]
fn chart_notebook_html_carries_plotly_only_when_asked() {
    require!(Data, Model);
    let f = Frame::from_columns(vec![
        ("x".into(), cotlab::results::ColumnData::Int(vec![Some(1), Some(2)])),
        ("y".into(), cotlab::results::ColumnData::Float(vec![Some(0.5), Some(0.7)])),
    ])
    .unwrap();
    let c = Chart::line(&f, &ChartSpec { x: "x".into(), y: "y".into(), ..Default::default() }).unwrap();
    let with = c.to_notebook_html(true);
    let without = c.to_notebook_html(false);
    assert!(with.len() > 3_000_000, "plotly.js inlined: {} bytes", with.len());
    assert!(without.len() < 10_000, "a chart alone is small: {} bytes", without.len());
    assert!(!without.contains("<script src="), "nothing is loaded from the network");
    // Two charts in one kernel get different div ids.
    let id = |h: &str| h.split("id=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert_ne!(id(&without), id(&c.to_notebook_html(false)));
}

#[test]
fn read_jsonl_infers_column_types() {
    require!(Data, Model);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("log.jsonl");
    std::fs::write(&p, "{\"step\": 1, \"loss\": 2, \"ok\": true, \"note\": \"a\"}\n\n{\"step\": 2, \"loss\": 1.5, \"ok\": false, \"extra\": [1]}\n").unwrap();
    let f = Frame::read_jsonl(&p).unwrap();
    assert_eq!(f.columns(), vec!["step", "loss", "ok", "note", "extra"]);
    let dtypes: Vec<String> = f.0.dtypes().iter().map(|d| d.to_string()).collect();
    assert_eq!(dtypes, vec!["i64", "f64", "bool", "str", "str"]);
    assert_eq!(f.cell(1, "note").unwrap(), cotlab::results::Cell::Null);
    std::fs::write(&p, "{\"step\": 1}\n[1, 2]\n").unwrap();
    let err = Frame::read_jsonl(&p).unwrap_err().to_string();
    assert!(err.contains("log.jsonl") && err.contains("line 2") && err.contains("JSON object"), "{err}");
}
