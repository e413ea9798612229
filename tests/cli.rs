//! The binary end to end: the corpus report, scoring, contamination, script errors, the
//! output-dir guarantees and the exit statuses.

#[macro_use]
mod common;

use common::{cotlab, run};

fn csv_rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

#[test]
fn corpus_report_on_svamp_matches_the_release() {
    require!(Data, Model);
    let out = tempfile::tempdir().unwrap();
    let r = run(cotlab().args(["run", "scripts/corpus_report.rhai", "--out"]).arg(out.path()));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rows = csv_rows(&out.path().join("corpus_report.csv"));
    let find = |teacher: &str, level: &str, format: &str| {
        rows.iter()
            .find(|r| r["teacher"] == teacher && r["level"] == level && r["format"] == format)
            .unwrap_or_else(|| panic!("no row {teacher} {level} {format}"))
    };
    for col in ["dataset", "teacher", "level", "format", "n", "mean_words", "mean_steps", "agree_pct"] {
        assert!(rows[0].contains_key(col), "column {col}");
    }
    let words = |r: &std::collections::HashMap<String, String>| r["mean_words"].parse::<f64>().unwrap();
    let l1 = find("gpt-4o", "1", "plain");
    let l6 = find("gpt-4o", "6", "plain");
    assert!((words(l1) - 35.3).abs() < 0.05, "level 1: {}", words(l1));
    assert!((words(l6) - 81.0).abs() < 0.1, "level 6: {}", words(l6));
    assert_eq!(l1["n"], "700");
    assert!(l6["mean_steps"].parse::<f64>().unwrap() > l1["mean_steps"].parse::<f64>().unwrap());
    assert!(l1["agree_pct"].parse::<f64>().unwrap() > 95.0);
    // Every teacher × level × format of the SVAMP release: 6 + 6 + 4 plain, 6 formats, human, answer-only.
    assert_eq!(rows.len(), 24);
    find("llama-3-70b", "4", "plain");
    find("gpt-4o", "5", "sym");
    find("human", "", "plain");
    // The chart page loads plotly.js from the copy beside it, nothing from a CDN.
    let html = std::fs::read_to_string(out.path().join("corpus_report.html")).unwrap();
    assert!(html.contains("Plotly.newPlot") && html.contains("<script type=\"text/javascript\" src=\"plotly.min.js\">"));
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing from the network");
    assert!(out.path().join("plotly.min.js").is_file());
    assert!(html.contains("\"name\":\"gemini\""));
    assert!(out.path().join("corpus_report.parquet").is_file());
    assert!(out.path().join("run.json").is_file());
    assert!(!out.path().join(".incomplete").exists());
}

/// The charts of one output dir load one local plotly.min.js (listed in run.json); a standalone
/// page inlines it; a chart named like the script is refused.
#[test]
fn chart_pages_share_one_local_plotly() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("charts.rhai"),
        r#"
let f = df(#{ x: [1, 2, 3], y: [0.5, 0.25, 0.75] });
line_chart(f, #{ x: "x", y: "y", title: "a" }).write_html("a.html");
bar_chart(f, #{ x: "x", y: "y", title: "b" }).write_html("b.html");
bar_chart(f, #{ x: "x", y: "y", title: "c" }).write_html("more/c.html");
bar_chart(f, #{ x: "x", y: "y", title: "alone" }).write_html("alone.html", #{ standalone: true });
"#,
    )
    .unwrap();
    let out = d.path().join("out");
    let r = run(cotlab().current_dir(d.path()).args(["run", "charts.rhai", "--out"]).arg(&out));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let js = std::fs::read(out.join("plotly.min.js")).unwrap();
    assert_eq!(js.as_slice(), cotlab::results::Chart::plotly_min_js().as_bytes());
    assert!(js.len() > 3_000_000 && std::str::from_utf8(&js).unwrap().contains("plotly.js v"), "plotly.js itself: {} bytes", js.len());
    for page in ["a.html", "b.html", "more/c.html"] {
        let html = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(html.len() < 20_000 && html.contains("src=\"plotly.min.js\"") && html.contains("Plotly.newPlot"), "{page}: {} bytes", html.len());
    }
    assert!(out.join("more/plotly.min.js").is_file(), "a subfolder's pages load the copy beside them");
    let alone = std::fs::read_to_string(out.join("alone.html")).unwrap();
    assert!(alone.len() > 3_000_000 && !alone.contains("src=\"plotly.min.js\""), "standalone: plotly.js inlined");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert_eq!(files.iter().filter(|f| f.ends_with("plotly.min.js")).count(), 2, "{files:?}");

    std::fs::write(d.path().join("bad.rhai"), r#"bar_chart(df(#{ x: [1], y: [2] }), #{ x: "x", y: "y" }).write_html("plotly.min.js");"#).unwrap();
    let r = run(cotlab().current_dir(d.path()).args(["run", "bad.rhai", "--out"]).arg(d.path().join("bad-out")));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("cannot be written as 'plotly.min.js'"), "{}", r.stderr);
}

#[test]
fn score_prints_the_paper_protocol_accuracy() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("preds.jsonl");
    // chal-… ids of the SVAMP test split; the first three right (two ways), one wrong, one unparsed.
    let ds = cotlab::data::load_dataset(&common::data_dir(), "svamp", &Default::default()).unwrap();
    let e = &ds.examples;
    let lines = [
        serde_json::json!({"id": e[0].id, "prediction": format!("Some steps. The answer is {}", e[0].answer)}),
        serde_json::json!({"id": e[1].id, "prediction": format!("so it is {}.0", e[1].answer)}),
        serde_json::json!({"question": e[2].question, "prediction": format!("The answer is {}", e[2].answer)}),
        serde_json::json!({"id": e[3].id, "prediction": "The answer is 123456789"}),
        serde_json::json!({"id": e[4].id, "prediction": "I do not know"}),
    ];
    std::fs::write(&p, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let r = run(cotlab().args(["score", "--task", "svamp", "--predictions"]).arg(&p));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"task": "svamp", "n": 5, "correct": 3, "accuracy": 0.6, "unparsed": 1, "test_size": 300,
            "protocol": "paper", "accuracy_paper": 0.6, "accuracy_lenient": 0.6})
    );
    // CSQA: "(B)", a bare letter and a lower-case letter score only under the lenient protocol.
    let cs = cotlab::data::load_dataset(&common::data_dir(), "csqa", &Default::default()).unwrap();
    let c = &cs.examples;
    let lines = [
        serde_json::json!({"id": c[0].id, "prediction": format!("The answer is {}: …", c[0].answer)}),
        serde_json::json!({"id": c[1].id, "prediction": format!("The answer is ({})", c[1].answer)}),
        serde_json::json!({"id": c[2].id, "prediction": c[2].answer.clone()}),
        serde_json::json!({"id": c[3].id, "prediction": format!("the answer is {}", c[3].answer.to_lowercase())}),
    ];
    std::fs::write(&p, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    for (protocol, correct, unparsed) in [("paper", 1, 3), ("lenient", 4, 0)] {
        let r = run(cotlab().args(["score", "--task", "csqa", "--protocol", protocol, "--predictions"]).arg(&p));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!((v["protocol"].as_str(), v["correct"].as_i64(), v["unparsed"].as_i64()), (Some(protocol), Some(correct), Some(unparsed)), "{v}");
        assert_eq!((v["accuracy_paper"].as_f64(), v["accuracy_lenient"].as_f64()), (Some(0.25), Some(1.0)));
    }
    let r = run(cotlab().args(["score", "--task", "csqa", "--protocol", "strict", "--predictions"]).arg(&p));
    assert!(r.code == 1 && r.stderr.contains("protocol: unknown value 'strict': expected one of paper, lenient"), "{}", r.stderr);
    // An id from another task is an error naming the line.
    std::fs::write(&p, "{\"id\": \"gsm8k-test-0\", \"prediction\": \"1\"}\n").unwrap();
    let r = run(cotlab().args(["score", "--task", "svamp", "--predictions"]).arg(&p));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("preds.jsonl: line 1: id 'gsm8k-test-0' is not in svamp test"), "{}", r.stderr);
}

#[test]
fn contamination_finds_the_strategyqa_leak() {
    require!(Data, Model);
    let dir = common::data_dir();
    let r = run(cotlab()
        .args(["contamination", "--train"])
        .arg(dir.path("paper/stqa_human_annotation.json"))
        .arg("--test")
        .arg(dir.path("paper/eval/strategyQA_test.json")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["exact"], 290);
    assert_eq!(v["contaminated"], 290);
    assert_eq!(v["n_test"], 290);
    assert!(r.stderr.contains("290 of 290 test questions (100.0%)"), "{}", r.stderr);
    // The clean training file of the same task has no leak.
    let r = run(cotlab()
        .args(["contamination", "--train"])
        .arg(dir.path("paper/strategyQA_onlyans.json"))
        .arg("--test")
        .arg(dir.path("paper/eval/strategyQA_test.json")));
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["exact"], 0);
    assert_eq!(v["stem"], 0);
    // OBQA: 23 shared stems with different answer choices, no full match.
    let r = run(cotlab()
        .args(["contamination", "--train"])
        .arg(dir.path("paper/openbookQA_onlyans.json"))
        .arg("--test")
        .arg(dir.path("paper/eval/openbookQA_test.json")));
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!((v["exact"].as_u64(), v["stem"].as_u64()), (Some(0), Some(23)), "{v}");
}

#[test]
fn script_errors_point_at_file_line_col_and_leave_no_complete_output() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("fails.rhai");
    std::fs::write(&script, "let t = df(#{a: [1, 2, 3]});\nt.write_csv(\"partial.csv\");\nlet x = rationales(\"svamp\", #{teacher: \"gpt-4o\", level: 9});\n")
        .unwrap();
    let out = d.path().join("out");
    let r = run(cotlab().arg("run").arg(&script).arg("--out").arg(&out));
    assert_eq!(r.code, 1);
    let first = r.stderr.lines().next().unwrap();
    assert!(first.contains("fails.rhai:3:9:") && first.contains("level must be 1..6"), "{}", r.stderr);
    assert!(!out.join("partial.csv").exists(), "a failed run must not publish its outputs");
    let staged = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".incomplete-"))
        .expect("a staging dir");
    assert!(staged.join("partial.csv").exists());
    assert!(r.stderr.contains(&staged.display().to_string()), "the error says where the files are: {}", r.stderr);
    assert!(!out.join("run.json").exists());

    std::fs::write(&script, "let a = 1;\nlet b = ;\n").unwrap();
    let r = run(cotlab().arg("run").arg(&script).arg("--out").arg(&out));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("fails.rhai:2:9: Syntax error"), "{}", r.stderr);

    std::fs::write(&script, "let t = df(#{a: [1]});\nt.write_csv(\"../escape.csv\");\n").unwrap();
    let r = run(cotlab().arg("run").arg(&script).arg("--out").arg(&out));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("fails.rhai:2:3:") && r.stderr.contains("not allowed"), "{}", r.stderr);
    assert!(!d.path().join("escape.csv").exists());
}

#[test]
fn set_values_reach_the_script() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("p.rhai");
    std::fs::write(&script, "print(`n=${n} type=${type_of(n)} name=${params.name}`);\n").unwrap();
    let r = run(cotlab().arg("run").arg(&script).args(["--set", "n=5", "--set", "name=svamp", "--out"]).arg(d.path().join("o")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("n=5 type=i64 name=svamp"), "{}", r.stdout);
    let r = run(cotlab().arg("run").arg(&script).args(["--set", "novalue"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--set expects KEY=VALUE"));
}

/// A value in double quotes stays text (`--set 'id="007"'`), unquoted numbers stay numbers, and
/// a type error caused by a --set value names the key.
#[test]
fn quoted_set_values_stay_text_and_type_errors_name_the_key() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("p.rhai");
    std::fs::write(
        &script,
        "print(`${type_of(id)} ${id}|${type_of(n)} ${n}|${type_of(x)} ${x}|${type_of(e)} [${e}]|${type_of(t)} ${t}|${type_of(q)} ${q}`);\n",
    )
    .unwrap();
    let sets = ["id=\"007\"", "n=007", "x=1.5", "e=\"\"", "t=\"true\"", "q=\"a=b\""];
    let mut c = cotlab();
    c.arg("run").arg(&script).arg("--out").arg(d.path().join("o"));
    for s in sets {
        c.args(["--set", s]);
    }
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "string 007|i64 7|f64 1.5|string []|string true|string a=b");

    for (src, set, needle) in [
        ("let y = n * 2;\n", "n=abc", "note: `n` comes from --set and is the string \"abc\""),
        (
            "print(name.to_upper());\n",
            "name=007",
            "note: `name` comes from --set and is the i64 7; to pass text that looks like one, quote it: --set 'name=\"TEXT\"'",
        ),
        ("let c = rationales(\"arith\", #{ level: level, n: 2 });\n", "level=abc", "note: `level` comes from --set and is the string \"abc\""),
        ("let y = flag + [1];\n", "flag=true", "note: `flag` comes from --set and is the bool true"),
    ] {
        std::fs::write(&script, src).unwrap();
        let r = run(cotlab().arg("run").arg(&script).args(["--set", set, "--set", "other=1.5", "--out"]).arg(d.path().join("o")));
        assert_eq!(r.code, 1, "{set}: {}", r.stderr);
        assert!(r.stderr.contains("p.rhai:1:") && r.stderr.contains(needle), "{set}: {}", r.stderr);
        assert!(!r.stderr.contains("`other`"), "only the value the error is about: {}", r.stderr);
    }
    // An error that is not about a type gets no note.
    std::fs::write(&script, "throw `no ${n}`;\n").unwrap();
    let r = run(cotlab().arg("run").arg(&script).args(["--set", "n=abc", "--out"]).arg(d.path().join("o")));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no abc") && !r.stderr.contains("comes from --set"), "{}", r.stderr);
}

/// The exit statuses are documented where a user looks first.
#[test]
fn help_documents_the_exit_status() {
    require!(Data);
    let r = run(cotlab().arg("--help"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Exit status: 0 on success; 1 on an error") && r.stdout.contains("2 on a command-line usage error"), "{}", r.stdout);
    assert!(r.stdout.contains("3 when a script finished but sweep points failed or are not complete"), "{}", r.stdout);
}

/// A sweep whose one point fails at once: its student is not there (nothing is trained).
const FAILING_SWEEP: &str = r#"
let r = sweep(#{ name: "fails", grid: #{ student: ["runs/missing.gguf"] },
                 base: #{ dataset: "arith", level: 2, train_n: 4, max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 96, eval_n: 2, eval_max_new_tokens: 8 } });
r.results.write_csv("points.csv");
"#;

/// A script that finished and published its tables, but whose sweep points failed (or, with
/// --collect, are not complete), exits 3: neither success nor a script that failed.
#[test]
fn failed_sweep_points_exit_3_after_publishing() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("s.rhai");
    std::fs::write(&script, FAILING_SWEEP).unwrap();
    for (out, extra, says) in [("out", None, "1 sweep point(s) failed"), ("collected", Some("--collect"), "1 sweep point(s) are not complete")] {
        let mut c = cotlab();
        c.current_dir(d.path()).arg("run").arg(&script).args(["--runs", "runs", "--out", out]).args(extra);
        let r = run(&mut c);
        assert_eq!(r.code, 3, "{out}: {}", r.stderr);
        assert!(r.stderr.contains(says) && r.stderr.contains("missing.gguf: model not found"), "{out}: {}", r.stderr);
        assert!(d.path().join(out).join("points.csv").is_file() && d.path().join(out).join("run.json").is_file(), "{out}: the tables were published");
    }
}

/// A script that fails exits 1 and publishes nothing; a command line clap rejects exits 2.
#[test]
fn a_script_error_exits_1_and_a_usage_error_2() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("s.rhai");
    std::fs::write(&script, "df(#{a: [1]}).write_csv(\"t.csv\");\nthrow \"boom\";\n").unwrap();
    let out = d.path().join("out");
    let r = run(cotlab().arg("run").arg(&script).arg("--out").arg(&out));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("s.rhai:2:") && r.stderr.contains("boom"), "{}", r.stderr);
    assert!(!out.join("t.csv").exists() && !out.join("run.json").exists(), "a failed script publishes nothing");
    let r = run(cotlab().arg("run").arg(&script).arg("--no-such-flag"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--no-such-flag"), "{}", r.stderr);
}

#[test]
fn quickstart_runs_on_embedded_data() {
    require!(Data, Model);
    let work = tempfile::tempdir().unwrap();
    let (out, runs) = (work.path().join("out"), work.path().join("runs"));
    // Toy sizes (one SFT step, four questions of eight tokens): the report's shape, not learning;
    // the README has the default run's numbers.
    let tiny = [
        "--set",
        "levels=1,3",
        "--set",
        "train_n=4",
        "--set",
        "max_steps=1",
        "--set",
        "batch_size=2",
        "--set",
        "max_len=96",
        "--set",
        "eval_n=4",
        "--set",
        "eval_max_new_tokens=8",
    ];
    let r =
        run(cotlab().args(["run", "scripts/quickstart.rhai"]).args(tiny).arg("--out").arg(&out).arg("--runs").arg(&runs).env("COTLAB_DATA", "/nonexistent"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rows = csv_rows(&out.join("quickstart.csv"));
    let settings: Vec<&str> = rows.iter().map(|r| r["setting"].as_str()).collect();
    assert_eq!(settings, ["before", "level 1", "level 3"]);
    for col in [
        "accuracy",
        "ci95_low",
        "ci95_high",
        "n",
        "correct",
        "vs_before",
        "vs_before_low",
        "vs_before_high",
        "p_vs_before",
        "unparsed",
        "truncated_frac",
        "mean_tokens",
        "tokens_per_correct",
        "mean_words",
        "loss_first",
        "loss_last",
    ] {
        assert!(rows[0].contains_key(col), "column {col}: {:?}", rows[0].keys());
    }
    for row in &rows {
        assert_eq!(row["n"], "4");
        let (acc, lo, hi) = (row["accuracy"].parse::<f64>().unwrap(), row["ci95_low"].parse::<f64>().unwrap(), row["ci95_high"].parse::<f64>().unwrap());
        assert!(lo <= acc && acc <= hi, "{row:?}");
    }
    // Before is the baseline: no paired comparison with itself; each level has one.
    assert!(rows[0]["vs_before"].is_empty() && rows[0]["p_vs_before"].is_empty(), "{:?}", rows[0]);
    for row in &rows[1..] {
        let (d, p) = (row["vs_before"].parse::<f64>().unwrap(), row["p_vs_before"].parse::<f64>().unwrap());
        let acc = |r: &std::collections::HashMap<String, String>| r["accuracy"].parse::<f64>().unwrap();
        assert!((d - (acc(row) - acc(&rows[0]))).abs() < 1e-12 && (0.0..=1.0).contains(&p), "{row:?}");
        // The share of answers cut at the token limit, a fraction.
        assert!((0.0..=1.0).contains(&row["truncated_frac"].parse::<f64>().unwrap()), "{row:?}");
    }
    // Every step of every trained point, and their curves.
    assert!(out.join("losses.parquet").is_file() && std::fs::read_to_string(out.join("loss.html")).unwrap().contains("Plotly.newPlot"));
    assert!(rows[0]["loss_first"].is_empty() && !rows[1]["loss_first"].is_empty(), "only the trained points have a loss");
    let html = std::fs::read_to_string(out.join("quickstart.html")).unwrap();
    assert!(html.contains("Plotly.newPlot") && html.contains("\"arrayminus\""), "a chart with CI bars");
    assert!(out.join("quickstart.parquet").is_file() && out.join("points.csv").is_file());
    assert_eq!(std::fs::read_dir(runs.join("quickstart")).unwrap().flatten().filter(|e| e.path().join("point.json").is_file()).count(), 3);
    // The point dirs read as their options: the untrained student is `no-train-<hash>`.
    let mut points: Vec<String> = std::fs::read_dir(runs.join("quickstart"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    points.sort();
    let readable: Vec<&str> = points.iter().map(|p| p.rsplit_once('-').unwrap().0).collect();
    assert_eq!(readable, ["level-1", "level-3", "no-train"], "{points:?}");
    // The printed summary rounds: percentages and tokens per answer to one decimal.
    let summary: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" tokens per answer")).collect();
    assert_eq!(summary.len(), 3, "{}", r.stdout);
    for line in summary {
        let tokens = line.split(" unparsed, ").nth(1).and_then(|t| t.split(' ').next()).unwrap();
        let decimals = tokens.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(tokens.parse::<f64>().is_ok() && decimals <= 1, "{line}");
        for pct in line.split('%').filter_map(|p| p.rsplit([' ', '[']).next()).filter(|p| !p.is_empty()) {
            assert!(pct.split_once('.').map_or(0, |(_, d)| d.len()) <= 1, "{pct} in {line}");
        }
    }
}

#[test]
fn teacher_and_format_reports_plan_what_the_release_has() {
    require!(Data);
    // Plans only: `point` selects a point the release lacks, so nothing trains; what the sweep
    // lists (and skips as invalid) is the grid each script builds.
    let work = tempfile::tempdir().unwrap();
    let plan = |script: &str, sets: &[&str]| {
        let mut c = cotlab();
        c.args(["run", script]).arg("--out").arg(work.path().join(script.replace('/', "_"))).arg("--runs").arg(work.path().join("runs"));
        for s in sets {
            c.args(["--set", s]);
        }
        let r = run(&mut c);
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        r
    };
    // OBQA has no human rationales: gpt-4o, gemini, llama-3-70b at level 3, human, answer-only.
    let r = plan("scripts/teacher_comparison.rhai", &["dataset=obqa", "point=3"]);
    assert!(r.stdout.contains("0 done, 0 failed, 1 invalid, 4 pending of 5"), "{}", r.stdout);
    assert!(r.stderr.contains("teacher-human") && r.stderr.contains("no human plain rationales for obqa"), "{}", r.stderr);
    // SVAMP has bsm/rar/sym at levels 3 and 5 only: at level 4 only plain and answer-only are valid.
    let r = plan("scripts/format_comparison.rhai", &["levels=4", "point=1"]);
    assert!(r.stdout.contains("0 done, 0 failed, 3 invalid, 2 pending of 5"), "{}", r.stdout);
    assert!(r.stderr.contains("no gpt-4o level-4 bsm rationales for svamp"), "{}", r.stderr);
}

#[test]
fn rationale_report_runs_on_embedded_data() {
    require!(Data);
    let out = tempfile::tempdir().unwrap();
    let r = run(cotlab().args(["run", "scripts/rationale_report.rhai", "--set", "n=60", "--out"]).arg(out.path()).env("COTLAB_DATA", "/nonexistent"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rows = csv_rows(&out.path().join("rationale_report.csv"));
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["agree_pct"] == "100.0"), "the rule teacher is always right");
    assert!(out.path().join("rationale_report.html").is_file());
}

#[test]
fn sft_quick_fine_tunes_smollm_and_resumes() {
    require!(Data, Model);
    let work = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sft_quick.rhai");
    let first = run(cotlab().current_dir(work.path()).arg("run").arg(&script).args(["--out", "out", "--set", "stop_after=3"]));
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(first.stdout.contains("steps 3/6"), "{}", first.stdout);
    let ck = work.path().join("runs/sft_quick/checkpoint");
    assert!(ck.join("model.safetensors").is_file() && ck.join("optimizer.safetensors").is_file());
    let second = run(cotlab().current_dir(work.path()).arg("run").arg(&script).args(["--out", "out"]));
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert!(second.stderr.contains("resuming runs/sft_quick at step 3/6"), "{}", second.stderr);
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(work.path().join("runs/sft_quick/train_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(log.len(), 6);
    let loss = |i: usize| log[i]["loss"].as_f64().unwrap();
    // Epoch 3 sees the same examples as epoch 1: its loss must be clearly lower.
    assert!(loss(4) + loss(5) < loss(0) + loss(1) - 0.2, "loss falls: {:?}", (0..6).map(loss).collect::<Vec<_>>());
    assert!(work.path().join("out/model/model.safetensors").is_file());
    assert!(work.path().join("out/model/tokenizer_config.json").is_file());
}

/// `cotlab functions` lists every signature; with a name, its documentation.
#[test]
fn functions_lists_and_documents_the_script_api() {
    require!(Data);
    let r = run(cotlab().arg("functions"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for sig in [
        "param(name: string, default: any, help: string) -> any",
        "dataset(name: string, opts: map) -> Dataset",
        "ds.name -> string",
        "sft(s: Student, corpus: Corpus, opts: map)",
    ] {
        assert!(r.stdout.contains(sig), "{sig}: {}", r.stdout);
    }
    let r = run(cotlab().args(["functions", "sft"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("| `grad_accum` | 16 (global batch 64) |") && r.stdout.contains("```rhai"), "{}", r.stdout);
    let r = run(cotlab().args(["functions", "no_such_function"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no script function is named `no_such_function`"), "{}", r.stderr);
}

/// A misspelt --set key stops `cotlab run` before any work (no output dir), naming the key and
/// listing the declared parameters; `--help` after the script lists them.
#[test]
fn undeclared_set_keys_fail_at_once_and_help_lists_the_parameters() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let r = run(cotlab().args(["run", "scripts/quickstart.rhai", "--set", "max_step=10", "--out"]).arg(&out));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--set max_step: scripts/quickstart.rhai declares no parameter `max_step` (did you mean `max_steps`?)"), "{}", r.stderr);
    assert!(r.stderr.contains("its parameters are: levels, train_n, max_steps,"), "{}", r.stderr);
    assert!(!out.exists(), "nothing was started");
    let r = run(cotlab().args(["run", "scripts/quickstart.rhai", "--set", "max_steps=ten", "--out"]).arg(&out));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--set max_steps=ten: `max_steps` takes an integer (its default is 60)"), "{}", r.stderr);

    let r = run(cotlab().args(["run", "scripts/quickstart.rhai", "--help"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: cotlab run"), "clap's help first: {}", r.stdout);
    assert!(r.stdout.contains("levels               list of int  [1, 2, 3]     granularity levels to train"), "{}", r.stdout);
    assert!(r.stdout.contains("name                 string       \"quickstart\"  the sweep's dir under the runs dir"), "{}", r.stdout);
    let r = run(cotlab().args(["run", "--help"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: cotlab run") && !r.stdout.contains("Script parameters"), "{}", r.stdout);
}

/// Every shipped script declares its parameters (none reads `params` by hand) and its --help works.
#[test]
fn every_shipped_script_declares_its_parameters() {
    require!(Data);
    for entry in std::fs::read_dir("scripts").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rhai") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        assert!(!src.contains("in params") && !src.contains("fn as_list"), "{} reads params by hand", path.display());
        let r = run(cotlab().arg("run").arg(&path).arg("--help"));
        assert_eq!(r.code, 0, "{}: {}", path.display(), r.stderr);
        assert!(r.stdout.contains("Script parameters of"), "{}: {}", path.display(), r.stdout);
    }
}
