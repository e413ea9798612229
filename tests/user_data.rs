//! A user's own test set (issue 29 item 2): read from JSON, JSON lines, CSV, Parquet or a frame,
//! evaluated end to end from Rhai and the CLI, scored by its kind under both protocols, asked of
//! a teacher; bad input is one clear error and leaves nothing behind; the built-in tasks keep
//! their rules.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{cotlab, run};
use cotlab::answer::{AnswerKind, Evaluator, Protocol};
use cotlab::data::user::{load_user_file, load_user_frame, UserOptions};
use cotlab::data::Task;
use cotlab::eval::run::paper_beams;
use cotlab::eval::score_predictions;
use cotlab::results::Frame;
use cotlab::script::{Context, Runner};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn lines(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// Three arithmetic questions in columns named the user's way.
fn arithmetic(dir: &Path) -> PathBuf {
    let rows = [
        serde_json::json!({"body": "What is 2 + 3?", "value": "5"}),
        serde_json::json!({"body": "What is 10 - 4?", "value": 6}),
        serde_json::json!({"body": "What is 3 * 3?", "value": "9.0"}),
    ];
    write(dir, "asdiv.jsonl", &lines(&rows))
}

fn runner(dir: &Path) -> Runner {
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = dir.join("runs");
    ctx.allow_read.push(dir.to_path_buf());
    Runner::new(ctx)
}

fn err(dir: &Path, src: &str) -> String {
    runner(dir).eval("t.rhai", src).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("no error from {src}"))
}

#[test]
fn a_user_jsonl_set_is_evaluated_end_to_end_from_rhai() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let p = arithmetic(d.path());
    let src = format!(
        r#"let ds = dataset("{}", #{{ question: "body", answer: "value", limit: 2, seed: 1 }});
           let r = student("default").evaluate(ds, #{{ max_new_tokens: 8, batch_size: 2 }});
           [ds.kind, ds.name, r.n, r.task, r.eval_dir, r.max_new_tokens]"#,
        p.display()
    );
    let v: Vec<rhai::Dynamic> = runner(d.path()).eval("e.rhai", &src).unwrap_or_else(|e| panic!("{e}")).into_array().unwrap();
    let v: Vec<String> = v.into_iter().map(|x| x.to_string()).collect();
    assert_eq!(&v[..4], ["number", "asdiv", "2", "asdiv"]);
    assert!(v[4].ends_with("runs/eval-asdiv-test-SmolLM2-135M-Instruct.Q4_1-n2-s1"), "{}", v[4]);
    assert_eq!(v[5], "8");
    let samples = std::fs::read_to_string(Path::new(&v[4]).join("samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 2);
}

#[test]
fn a_user_jsonl_set_is_evaluated_end_to_end_from_the_cli() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let p = arithmetic(d.path());
    let runs = d.path().join("runs");
    let r = run(cotlab()
        .args(["eval", "--data"])
        .arg(&p)
        .args(["--question-col", "body", "--answer-col", "value", "--name", "mine", "--limit", "2", "--max-new-tokens", "8", "--runs"])
        .arg(&runs));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The guesses are said: the format from the extension, the kind from the answers.
    assert!(r.stderr.contains("read as jsonl") && r.stderr.contains("kind number (every answer is a number"), "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (rep["task"].as_str(), rep["split"].as_str(), rep["n"].as_u64(), rep["options"]["beams"].as_u64()),
        (Some("mine"), Some("test"), Some(2), Some(1))
    );
    assert!(runs.join("eval-mine-test-SmolLM2-135M-Instruct.Q4_1-n2-s1/results.json").is_file());
    // --kind picks the rule: text under the commonsense evaluator (its paper beam width, 5).
    let r = run(cotlab()
        .args(["eval", "--data"])
        .arg(&p)
        .args(["--question-col", "body", "--answer-col", "value", "--kind", "text", "--beams", "1"])
        .args(["--limit", "1", "--max-new-tokens", "4", "--runs"])
        .arg(&runs));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("kind number"), "a given kind is not inferred: {}", r.stderr);
}

/// Predictions for one kind, with the accuracies each protocol must give them.
struct Case {
    kind: &'static str,
    rows: Vec<serde_json::Value>,
    predictions: Vec<&'static str>,
    paper: f64,
    lenient: f64,
}

fn cases() -> Vec<Case> {
    use serde_json::json;
    vec![
        // MAmmoTH's trigger is case-sensitive; the lenient one is not.
        Case {
            kind: "number",
            rows: vec![json!({"question": "2 + 3?", "answer": 5}), json!({"question": "2 + 4?", "answer": "6.0"})],
            predictions: vec!["The answer is 5.", "the answer is 6, not 7"],
            paper: 0.5,
            lenient: 1.0,
        },
        // The commonsense rule takes a bare letter after "The answer is" only.
        Case {
            kind: "choice",
            rows: vec![
                json!({"question": "Sky?", "choices": ["red", "blue"], "answer": "B"}),
                json!({"question": "Grass?", "choices": "(A) green (B) pink", "answer": "green"}),
            ],
            predictions: vec!["The answer is B", "The answer is (A)"],
            paper: 0.5,
            lenient: 1.0,
        },
        Case {
            kind: "bool",
            rows: vec![json!({"question": "Is ice cold?", "answer": "yes"}), json!({"question": "Is fire cold?", "answer": false})],
            predictions: vec!["The answer is True", "The answer is no"],
            paper: 0.5,
            lenient: 1.0,
        },
        Case {
            kind: "latex",
            rows: vec![json!({"question": "Half?", "answer": "\\frac{1}{2}"}), json!({"question": "Root of 4?", "answer": "2"})],
            predictions: vec!["so \\boxed{\\frac12}", "so \\boxed{3}"],
            paper: 0.5,
            lenient: 0.5,
        },
        // SQuAD normalisation (case, punctuation, articles); no trigger is unparsed under `paper`.
        Case {
            kind: "text",
            rows: vec![
                json!({"question": "Longest river?", "answer": "the Nile"}),
                json!({"question": "Capital of France?", "answer": "Paris"}),
                json!({"question": "Red planet?", "answer": "Mars"}),
            ],
            predictions: vec!["The answer is Nile.", "I think\nParis!", "The answer is Venus"],
            paper: 1.0 / 3.0,
            lenient: 2.0 / 3.0,
        },
    ]
}

#[test]
fn scoring_follows_the_kind_under_both_protocols() {
    let d = tempfile::tempdir().unwrap();
    for c in cases() {
        let data = write(d.path(), &format!("{}.jsonl", c.kind), &lines(&c.rows));
        let ds = load_user_file(&data, &UserOptions { kind: Some(c.kind.into()), ..Default::default() }).unwrap();
        let preds: Vec<serde_json::Value> = ds.examples.iter().zip(&c.predictions).map(|(e, p)| serde_json::json!({"id": e.id, "prediction": p})).collect();
        let pf = write(d.path(), &format!("{}-preds.jsonl", c.kind), &lines(&preds));
        // Lines may also name the question as the user's file writes it (without the listed choices).
        let by_question: Vec<serde_json::Value> =
            c.rows.iter().zip(&c.predictions).map(|(r, p)| serde_json::json!({"question": r["question"], "prediction": p})).collect();
        let pq = write(d.path(), &format!("{}-by-question.jsonl", c.kind), &lines(&by_question));
        for (protocol, want) in [(Protocol::Paper, c.paper), (Protocol::Lenient, c.lenient)] {
            for p in [&pf, &pq] {
                let r = score_predictions(&ds, p, protocol).unwrap();
                assert!((r.accuracy - want).abs() < 1e-9, "{} under {protocol}: {} (want {want})", c.kind, r.accuracy);
            }
        }
    }
}

#[test]
fn cotlab_score_takes_a_user_file() {
    let d = tempfile::tempdir().unwrap();
    let c = cases().into_iter().find(|c| c.kind == "text").unwrap();
    let data = write(d.path(), "quiz.json", &serde_json::Value::Array(c.rows.clone()).to_string());
    let preds: Vec<serde_json::Value> =
        c.rows.iter().zip(&c.predictions).map(|(r, p)| serde_json::json!({"question": r["question"], "prediction": p})).collect();
    let pf = write(d.path(), "preds.jsonl", &lines(&preds));
    for (protocol, want) in [("paper", c.paper), ("lenient", c.lenient)] {
        let r = run(cotlab().args(["score", "--data"]).arg(&data).args(["--kind", "text", "--protocol", protocol, "--predictions"]).arg(&pf));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let rep: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(rep["task"], "quiz");
        assert!((rep["accuracy"].as_f64().unwrap() - want).abs() < 1e-9, "{protocol}: {}", r.stdout);
    }
    // --kind without --data, or neither --task nor --data, is a usage error.
    let r = run(cotlab().args(["score", "--task", "svamp", "--kind", "text", "--predictions"]).arg(&pf));
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(cotlab().args(["score", "--predictions"]).arg(&pf));
    assert!(r.code == 2 && r.stderr.contains("--task"), "{}", r.stderr);
    let r = run(cotlab().args(["score", "--task", "svamp", "--data"]).arg(&data).arg("--predictions").arg(&pf));
    assert!(r.code != 0 && r.stderr.contains("not both"), "{}", r.stderr);
}

/// The same set as a JSON array, JSON lines, CSV, Parquet and a frame gives the same examples;
/// choices are shown in the question as the built-in choice sets show them.
#[test]
fn every_format_gives_the_same_examples() {
    use polars::prelude::*;
    let d = tempfile::tempdir().unwrap();
    let rows = [
        serde_json::json!({"id": "q1", "question": "Sky?", "choices": ["red", "blue"], "answer": "B"}),
        serde_json::json!({"id": "q2", "question": "Grass?", "choices": ["green", "pink"], "answer": "A"}),
    ];
    let json = write(d.path(), "set.json", &serde_json::Value::Array(rows.to_vec()).to_string());
    let jsonl = write(d.path(), "set.data", &lines(&rows));
    let csv = write(d.path(), "set.csv", "id,question,choices,answer\nq1,Sky?,red|blue,B\nq2,Grass?,green|pink,A\n");
    let list = |a: &str, b: &str| Series::new("".into(), &[a, b]);
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("id".into(), ["q1", "q2"]),
        Column::new("question".into(), ["Sky?", "Grass?"]),
        Column::new("choices".into(), [list("red", "blue"), list("green", "pink")]),
        Column::new("answer".into(), ["B", "A"]),
    ])
    .unwrap();
    let parquet = d.path().join("set.parquet");
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap()).finish(&mut df).unwrap();
    let o = || UserOptions { name: Some("set".into()), ..Default::default() };
    let want = load_user_file(&json, &o()).unwrap();
    assert_eq!(want.task, Task::User(AnswerKind::Choice));
    assert_eq!(want.examples[0].question, "Sky? Answer Choices: (A) red (B) blue");
    assert_eq!((want.examples[0].id.as_str(), want.examples[0].answer.as_str()), ("q1", "B"));
    for p in [&jsonl, &csv, &parquet] {
        assert_eq!(load_user_file(p, &o()).unwrap().examples, want.examples, "{}", p.display());
    }
    assert_eq!(load_user_frame(&Frame(df), &o()).unwrap().examples, want.examples);
    // From Rhai: a frame, without an id column: ids are <name>-<row>.
    let src = r#"let ds = dataset(df(#{ q: ["Is ice cold?", "Is fire cold?"], a: ["yes", "no"] }), #{ question: "q", answer: "a" });
                 [ds.kind, ds.name, ds[1].id, ds[1].answer]"#;
    let v: Vec<String> = runner(d.path()).eval("f.rhai", src).unwrap().into_array().unwrap().into_iter().map(|x| x.to_string()).collect();
    assert_eq!(v, ["bool", "frame", "frame-1", "False"]);
}

#[test]
fn a_teacher_is_asked_about_a_user_set() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let rows =
        [serde_json::json!({"question": "Longest river?", "answer": "The Nile"}), serde_json::json!({"question": "Capital of France?", "answer": "Paris"})];
    let p = write(d.path(), "geo.jsonl", &lines(&rows));
    let server = common::fake_server(|_, _, stream| common::write_http_response(stream, "200 OK", "", &common::chat_answer("Rivers. The answer is the nile")));
    let src = format!(
        r#"let t = teacher("openai", #{{ base_url: "http://{}/v1", model: "m", api_key_env: (), cache: "caches/t.jsonl" }});
           let r = t.ask(dataset("{}"), #{{ level: 1 }});
           [r.df(), r.corpus().len()]"#,
        server.addr,
        p.display()
    );
    let v = runner(d.path()).eval("t.rhai", &src).unwrap_or_else(|e| panic!("{e}")).into_array().unwrap();
    let f = v[0].clone().cast::<Frame>();
    let agrees: Vec<String> = f.column_cells("agrees").unwrap().iter().map(|c| format!("{c:?}")).collect();
    assert_eq!(agrees, ["Bool(true)", "Bool(false)"], "judged as text: 'the nile' is 'The Nile', not 'Paris'");
    assert_eq!(v[1].as_int().unwrap(), 2);
}

/// Each bad input is one error naming what and where; `cotlab eval` makes no eval dir for it.
#[test]
fn bad_user_sets_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ok = write(dir, "ok.jsonl", "{\"question\": \"q\", \"answer\": \"1\"}\n");
    let answers = ["1", "abc", "x", "?", "1/0"];
    let five = lines(&answers.iter().enumerate().map(|(i, a)| serde_json::json!({"question": format!("q{i}"), "answer": a})).collect::<Vec<_>>());
    let cases: Vec<(PathBuf, &str, Vec<&str>)> = vec![
        // A mapping naming a missing column lists the columns found.
        (ok.clone(), "#{ question: \"body\" }", vec!["no column 'body' for question (columns found: answer, question)"]),
        (ok.clone(), "#{ choices: \"opts\" }", vec!["no column 'opts' for choices (columns found: answer, question)"]),
        (write(dir, "noq.jsonl", "{\"text\": \"q\", \"answer\": \"1\"}\n"), "#{}", vec!["no question column", "columns found: answer, text"]),
        // Rows without a question (or answer): counted, with their lines.
        (
            write(
                dir,
                "holes.jsonl",
                "{\"question\": \"q\", \"answer\": 1}\n{\"answer\": 2}\n{\"question\": \" \", \"answer\": 3}\n{\"question\": \"q4\", \"answer\": null}\n",
            ),
            "#{}",
            vec!["2 of 4 rows have no question", "line 2, line 3"],
        ),
        (write(dir, "noa.json", "[{\"question\": \"q\", \"answer\": 1}, {\"question\": \"q2\"}]"), "#{}", vec!["1 of 2 rows have no answer", "record 2"]),
        // Answers that are not of the kind: the count and the first three.
        (
            write(dir, "five.jsonl", &five),
            "#{ kind: \"number\" }",
            vec!["4 of 5 answers", "not number answers", "line 2: \"abc\", line 3: \"x\", line 4: \"?\", … (1 more)"],
        ),
        (
            write(dir, "maybe.jsonl", "{\"question\": \"q\", \"answer\": \"maybe\"}\n"),
            "#{ kind: \"bool\" }",
            vec!["1 of 1 answers", "not bool answers", "line 1: \"maybe\""],
        ),
        (
            write(dir, "range.jsonl", "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": \"D\"}\n"),
            "#{ kind: \"choice\" }",
            vec!["not choice answers", "within the row's choices", "line 1: \"D\""],
        ),
        (
            write(dir, "six.jsonl", "{\"question\": \"q\", \"choices\": [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\"], \"answer\": \"A\"}\n"),
            "#{}",
            vec!["more than 5 choices", "line 1 (6 choices)"],
        ),
        // Duplicate ids: which, and where.
        (write(dir, "dup.csv", "id,question,answer\na,q1,1\nb,q2,2\na,q3,3\n"), "#{}", vec!["1 duplicate ids: 'a' (line 2 and line 4)"]),
        // Empty files, whatever the format; a file in none of the formats.
        (write(dir, "empty.jsonl", ""), "#{}", vec!["file is empty"]),
        (write(dir, "empty.json", "[]"), "#{}", vec!["the JSON array is empty"]),
        (write(dir, "header.csv", "question,answer\n"), "#{}", vec!["no rows"]),
        (write(dir, "notes.txt", "just some notes\nno structure\n"), "#{}", vec!["in none of the test set formats"]),
        (ok.clone(), "#{ kind: \"words\" }", vec!["kind: unknown value 'words'"]),
        (ok.clone(), "#{ format: \"xml\" }", vec!["format: unknown value 'xml'"]),
    ];
    for (path, opts, wants) in &cases {
        let e = err(dir, &format!("dataset(\"{}\", {opts})", path.display()));
        for w in wants {
            assert!(e.contains(w), "{} {opts}: want '{w}' in: {e}", path.display());
        }
    }
    // The same errors from the CLI, and no eval dir left behind.
    let runs = dir.join("runs");
    for (path, flags, want) in [
        (&cases[0].0, vec!["--question-col", "body"], "no column 'body' for question (columns found: answer, question)"),
        (&cases[5].0, vec!["--kind", "number"], "4 of 5 answers"),
        (&cases[9].0, vec![], "duplicate ids"),
    ] {
        let r = run(cotlab().args(["eval", "--data"]).arg(path).args(&flags).arg("--runs").arg(&runs));
        assert!(r.code != 0 && r.stderr.contains(want), "{}: {}", path.display(), r.stderr);
        assert!(!runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(), "no eval dir for bad input");
    }
    // Neither a release name nor a file; a file outside the read roots.
    let e = err(dir, "dataset(\"svamq\")");
    assert!(e.contains("'svamq' is not a dataset of the release (svamp, gsm8k"), "{e}");
    let e = err(dir, &format!("dataset(\"{}\")", dir.join("gone.jsonl").display()));
    assert!(e.contains("is neither a dataset of the release") && e.contains("nor a file"), "{e}");
    let outside = tempfile::tempdir().unwrap();
    let secret = write(outside.path(), "secret.jsonl", "{\"question\": \"q\", \"answer\": \"1\"}\n");
    let e = err(dir, &format!("dataset(\"{}\")", secret.display()));
    assert!(e.contains("outside"), "{e}");
}

/// The built-ins keep their names, rules and paper beam widths; a user set's follow its kind.
#[test]
fn built_in_tasks_keep_their_rules() {
    let got: Vec<(&str, Evaluator, usize)> = Task::ALL.iter().map(|t| (t.name(), t.evaluator(), paper_beams(*t))).collect();
    use Evaluator::*;
    assert_eq!(
        got,
        [
            ("svamp", Math, 1),
            ("gsm8k", Math, 1),
            ("aqua", Math, 1),
            ("math", Math, 1),
            ("csqa", Commonsense, 5),
            ("obqa", Commonsense, 5),
            ("strategyqa", Commonsense, 5),
            ("arith", Math, 1)
        ]
    );
    assert!(Task::parse("user").is_err(), "a user set is never named like a built-in");
    let user: Vec<(Evaluator, usize)> = [AnswerKind::Number, AnswerKind::Latex, AnswerKind::Choice, AnswerKind::Bool, AnswerKind::Text]
        .map(|k| (Task::User(k).evaluator(), paper_beams(Task::User(k))))
        .to_vec();
    assert_eq!(user, [(Math, 1), (Math, 1), (Commonsense, 5), (Commonsense, 5), (Commonsense, 5)]);
}
