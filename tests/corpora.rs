//! User corpora (issue 29 items 1 and 3): read from files and frames in Rhai and on the CLI, taken
//! by `mix`/`sample`/`order`/`contamination` unchanged, written in the chat formats, and read back
//! by the real readers (Hugging Face datasets, TRL's SFT preparation, LLaMA-Factory's schema).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{cotlab, run};
use cotlab::data::formats::{read_corpus, CorpusOptions, Input};
use cotlab::data::{Catalog, Corpus, DataDir, MixPart, RationaleQuery, Subject};
use cotlab::results::OutputDir;
use cotlab::script::{Context, Runner};

/// A user's Alpaca file: three math questions, one answer given, one to extract, one with none.
const MINE: &str = r#"[
 {"instruction": "Tom has 3 apples and buys 2. How many apples?", "input": "", "output": "3 + 2 = 5.\nThe answer is 5", "answer": "5"},
 {"instruction": "Ann has 10 pens and loses 4.", "input": "How many pens are left?", "output": "10 - 4 = 6. The answer is 6"},
 {"instruction": "A box holds 7 eggs. How many in 2 boxes?", "input": "", "output": "Two boxes hold twice as many eggs."}
]"#;

fn mine(dir: &Path) -> PathBuf {
    let p = dir.join("mine.json");
    std::fs::write(&p, MINE).unwrap();
    p
}

/// The corpus the write test's script makes, built with the Rust API: the user file mixed with
/// rule-teacher rationales.
fn mixed(path: &Path) -> Corpus {
    let user = read_corpus(Input::File(path), &CorpusOptions { kind: Some("number".into()), ..Default::default() }).unwrap();
    let q = RationaleQuery { level: Some(1), n: Some(3), ..Default::default() };
    let arith = Catalog::new(DataDir("unused".into())).rationales("arith", &q).unwrap();
    Corpus::mix(&[MixPart { corpus: user, weight: 1.0 }, MixPart { corpus: arith, weight: 1.0 }], 6, 1).unwrap()
}

#[test]
fn written_corpora_read_back_in_datasets_trl_and_llamafactory() {
    require!(Data, Model, Torch);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let script = d.path().join("write.rhai");
    let src = format!(
        r#"let c = corpus("{}", #{{ kind: "number" }});
let m = mix([#{{ corpus: c, weight: 1.0 }}, #{{ corpus: rationales("arith", #{{ level: 1, n: 3 }}), weight: 1.0 }}], #{{ n: 6, seed: 1 }});
for f in ["alpaca", "sharegpt", "messages", "prompt-completion"] {{
    m.write(f + "__array.json", #{{ format: f }});
    m.write(f + "__lines.jsonl", #{{ format: f }});
}}"#,
        input.display()
    );
    std::fs::write(&script, src).unwrap();
    let out = d.path().join("out");
    let r = run(cotlab().arg("run").arg(&script).arg("--allow-read").arg(d.path()).arg("--out").arg(&out));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("corpus 'mine': 3 rationales from") && r.stdout.contains("sniffed") && r.stdout.contains("1 without an answer"), "{}", r.stdout);
    let expected: Vec<serde_json::Value> =
        mixed(&input).rationales.iter().map(|r| serde_json::json!({"question": r.question, "rationale": r.text, "answer": r.gold})).collect();
    std::fs::write(out.join("expected.json"), serde_json::to_string(&expected).unwrap()).unwrap();
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("dataset_info.json")).unwrap()).unwrap();
    assert_eq!(info.as_object().unwrap().len(), 8, "one entry per written file: {info}");
    let tok = common::smol_tokenizer_dir(d.path());
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab::model::cotlab_home().join("venv/bin/python").display().to_string());
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/read_corpora.py");
    let o = std::process::Command::new(py).arg(reader).arg(&out).arg(&tok).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout.matches("datasets.load_dataset").count(), 8, "{stdout}");
    assert_eq!(stdout.matches("llamafactory schema").count(), 8, "{stdout}");
    assert_eq!(stdout.matches("trl SFTTrainer").count(), 4, "{stdout}");
    // LLaMA-Factory itself pins older datasets/trl than the test venv's, so it is not installed
    // there; pointed at an unpacked wheel, its own parser and converters run too.
    if std::env::var_os("LLAMAFACTORY_SRC").is_some() {
        assert_eq!(stdout.matches("llamafactory converter").count(), 8, "{stdout}");
    }
}

fn runner(out: &Path, allow: &[&Path]) -> Runner {
    let mut ctx = Context::new(common::data_dir(), Some(Arc::new(OutputDir::create(out).unwrap())));
    ctx.allow_read = allow.iter().map(|p| p.to_path_buf()).collect();
    Runner::new(ctx)
}

#[test]
fn a_user_corpus_goes_through_sample_order_mix_and_contamination_unchanged() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let r = runner(&d.path().join("out"), &[d.path()]);
    let p = input.display();
    let int = |src: &str| r.eval("t.rhai", &format!("let c = corpus(\"{p}\", #{{ kind: \"number\" }});\n{src}")).unwrap().as_int().unwrap();
    assert_eq!(int("c.sample(2, 1).len()"), 2);
    assert_eq!(int("c.order(\"coarse_to_fine\", 1).len()"), 3);
    assert_eq!(int("mix([#{ corpus: c, weight: 1.0 }, #{ corpus: rationales(\"svamp\", #{ level: 1 }), weight: 1.0 }], #{ n: 10, seed: 1 }).len()"), 10);
    assert_eq!(int("contamination(c, c).exact"), 3);
    assert_eq!(int("c.report.no_answer"), 1);
    let shown = r.eval("t.rhai", &format!("corpus(\"{p}\", #{{ kind: \"number\" }}).to_string()")).unwrap().into_string().unwrap();
    assert_eq!(shown, format!("Corpus(mine alpaca number, 3 rationales from {})", std::fs::canonicalize(&input).unwrap().display()));
    // Provenance per row: the file, its row, its SHA-256.
    let source = r.eval("t.rhai", &format!("corpus(\"{p}\", #{{ kind: \"number\" }}).source")).unwrap().into_string().unwrap();
    assert_eq!(PathBuf::from(source), std::fs::canonicalize(&input).unwrap());
    assert_eq!(int("c.df().height"), 3);
    let sha = r.eval("t.rhai", &format!("corpus(\"{p}\", #{{ kind: \"number\" }}).report.sha256")).unwrap().into_string().unwrap();
    assert_eq!(sha, sha256_hex(&std::fs::read(&input).unwrap()));
    // A frame: named columns, "frame" as its source.
    let csv = d.path().join("cots.csv");
    std::fs::write(&csv, "q,cot,gold\nWhat is 2+2?,2+2=4. The answer is 4,4\nCapital of France?,It is Paris. The answer is Paris,Paris\n").unwrap();
    let src = format!(
        "let c = corpus(read_csv(\"{}\"), #{{ question: \"q\", rationale: \"cot\", answer: \"gold\" }}); c.kind + \" \" + c.source + \" \" + c[1].gold",
        csv.display()
    );
    assert_eq!(r.eval("t.rhai", &src).unwrap().into_string().unwrap(), "text frame paris");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn corpus_reads_only_inside_the_sandbox_and_errors_name_the_file() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let r = runner(&d.path().join("out"), &[]);
    let e = r.eval("t.rhai", &format!("corpus(\"{}\", #{{ kind: \"number\" }})", input.display())).unwrap_err().to_string();
    assert!(e.contains("corpus") && e.contains("outside the dirs a script may read") && e.contains("--allow-read"), "{e}");
    drop(r);
    let r = runner(&d.path().join("out"), &[d.path()]);
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"q\", \"completion\": \"r\"}\n{\"prompt\": \"q2\", \"completion\": \"r2\", \"id\": \"mine-0\"}\n").unwrap();
    let e = r.eval("t.rhai", &format!("corpus(\"{}\", #{{ kind: \"number\", name: \"mine\" }})", bad.display())).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl") && e.contains("duplicate ids") && e.contains("'mine-0' (line 1 and line 2)"), "{e}");
    let e = r.eval("t.rhai", &format!("corpus(\"{}\", #{{ kind: \"number\", colour: 1 }})", bad.display())).unwrap_err().to_string();
    assert!(e.contains("colour"), "unknown option: {e}");
}

#[test]
fn convert_writes_the_format_and_its_dataset_info_entry_or_nothing() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let out = d.path().join("lf");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("dataset_info.json"), r#"{"theirs": {"file_name": "t.json"}}"#).unwrap();
    let r = run(cotlab().arg("convert").arg(&input).arg(out.join("mine_sharegpt.jsonl")).args(["--to", "sharegpt", "--kind", "number"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("format alpaca (sniffed from the first record)") && r.stderr.contains("entry 'mine_sharegpt'"), "{}", r.stderr);
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("dataset_info.json")).unwrap()).unwrap();
    assert_eq!(info["theirs"]["file_name"], "t.json", "entries already there are kept");
    assert_eq!(info["mine_sharegpt"]["formatting"], "sharegpt");
    let back = read_corpus(Input::File(&out.join("mine_sharegpt.jsonl")), &CorpusOptions::default()).unwrap();
    let orig = read_corpus(Input::File(&input), &CorpusOptions { kind: Some("number".into()), ..Default::default() }).unwrap();
    let qa = |c: &Corpus| c.rationales.iter().map(|r| (r.question.clone(), r.text.clone(), r.gold.clone())).collect::<Vec<_>>();
    assert_eq!(qa(&back), qa(&orig));
    assert!(matches!(&back.task, Subject::User(u) if u.format == "sharegpt"));
    // Bad input: exit 1 (a data error) with the reason, and no file written.
    let none = d.path().join("none.jsonl");
    std::fs::write(&none, "{\"text\": \"just text\"}\n").unwrap();
    for (args, needle) in [
        (vec![none.clone(), out.join("x.json")], "none of the corpus formats"),
        (vec![input.clone(), out.join("y.txt")], "must end in .json"),
        (vec![input.clone(), input.clone()], "OUT is IN"),
    ] {
        let r = run(cotlab().arg("convert").args(&args).args(["--to", "alpaca"]));
        assert_ne!(r.code, 0, "{args:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    assert!(!out.join("x.json").exists() && !out.join("y.txt").exists());
    assert_eq!(std::fs::read_to_string(&input).unwrap(), MINE, "IN untouched");
    let r = run(cotlab().arg("convert").arg(&input).arg(out.join("z.json")).args(["--to", "csv", "--kind", "number"]));
    assert!(r.code != 0 && r.stderr.contains("cannot be written"), "{}", r.stderr);
}

#[test]
fn a_sweep_grid_names_user_corpora_checked_by_the_sandbox() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let outside = tempfile::tempdir().unwrap();
    let secret = mine(outside.path());
    let ws = cotlab::lab::Workspace::sandboxed(common::data_dir(), d.path().join("runs"), None, &[d.path().to_path_buf()]);
    let spec: cotlab::experiment::SweepSpec = serde_json::from_value(serde_json::json!({
        "name": "mine",
        "grid": {"corpus": [input, {"path": input, "kind": "number", "name": "own"}, secret, {"path": input, "colour": 1}]},
        "base": {"eval_dataset": "arith", "max_steps": 1},
        "include": [{"mix": [{"corpus": {"path": input, "kind": "number"}, "weight": 1.0}, {"dataset": "arith", "level": 1, "weight": 1.0}], "train_n": 5, "dataset": "arith"}]
    }))
    .unwrap();
    let points = cotlab::experiment::plan(&ws, &spec).unwrap();
    let status: Vec<String> = points.iter().map(|p| format!("{:?} {}", p.status, p.reason.clone().unwrap_or_default())).collect();
    assert!(status[0].starts_with("Pending") && status[1].starts_with("Pending") && status[4].starts_with("Pending"), "{status:#?}");
    assert!(status[2].contains("Invalid") && status[2].contains("outside the dirs a script may read"), "{status:#?}");
    assert!(status[3].contains("Invalid") && status[3].contains("path"), "an unknown option: {status:#?}");
    let real = std::fs::canonicalize(&input).unwrap();
    let catalog = Catalog::new(common::data_dir());
    for (i, name, n) in [(0, "mine", 3), (1, "own", 3), (4, "mixture", 5)] {
        let p = &points[i];
        assert!(p.data_files.contains(&real), "point {i}: the file is part of its provenance: {:?}", p.data_files);
        let c = p.resolved.as_ref().unwrap().corpus(&catalog).unwrap();
        assert_eq!(c.len(), n, "point {i}");
        if i < 4 {
            assert_eq!(c.task.name(), name);
        } else {
            assert!(c.rationales.iter().any(|r| r.origin.task.name() == "mine") && c.rationales.iter().any(|r| r.origin.task.name() == "arith"));
        }
    }
    // A corpus point must say what to evaluate on.
    let bad: cotlab::experiment::SweepSpec = serde_json::from_value(serde_json::json!({"name": "x", "grid": {"corpus": [input]}})).unwrap();
    let points = cotlab::experiment::plan(&ws, &bad).unwrap();
    assert!(points[0].reason.as_deref().is_some_and(|r| r.contains("eval_dataset")), "{:?}", points[0].reason);
}

#[test]
fn sft_trains_on_a_user_corpus_and_records_where_it_came_from() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let input = mine(d.path());
    let script = d.path().join("sft.rhai");
    let src = format!(
        "let c = corpus(\"{}\", #{{ kind: \"number\", name: \"own\" }});\nlet r = sft(student(\"default\"), c.sample(2, 1), #{{ run: \"own\", max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 96 }});\nprint(`steps ${{r.steps}} examples ${{r.examples}}`);",
        input.display()
    );
    std::fs::write(&script, src).unwrap();
    let runs = d.path().join("runs");
    let r = run(cotlab().arg("run").arg(&script).arg("--allow-read").arg(d.path()).arg("--out").arg(d.path().join("out")).arg("--runs").arg(&runs));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("steps 1 examples 2"), "{}", r.stdout);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs.join("own/config.json")).unwrap()).unwrap();
    assert_eq!(config["data"]["dataset"], "own");
    assert_eq!(config["data"]["source"], std::fs::canonicalize(&input).unwrap().display().to_string());
}
