//! Every bad-input case gives one clear error naming the file and the place, never a panic.

#[macro_use]
mod common;

use std::path::Path;

use cotlab::data::loaders::{load_alpaca, load_gsm8k, load_svamp, read_records};
use cotlab::data::{load_dataset, Catalog, DataDir, DatasetOptions, RationaleQuery};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn malformed_json_names_file_line_and_column() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "bad.json", b"[\n  {\"instruction\": \"q\", \"output\": \"a\"},\n  {\"instruction\": \"q2\" \"output\": 1}\n]");
    let e = read_records(&p).err().unwrap().to_string();
    assert!(e.contains("bad.json") && e.contains("line 3") && e.contains("malformed JSON"), "{e}");
    let p = write(d.path(), "bad.jsonl", b"{\"question\": \"a\", \"answer\": \"#### 1\"}\n{\"question\": \n");
    let e = load_gsm8k(&p, "test").err().unwrap().to_string();
    assert!(e.contains("bad.jsonl: line 2: malformed JSON line"), "{e}");
}

#[test]
fn missing_field_and_wrong_type_name_the_record() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "svamp.json", br#"[{"ID": "a", "Body": "b", "Question": "q?", "Answer": 3.0}, {"ID": "b", "Body": "b", "Answer": 2}]"#);
    let e = load_svamp(&p, None).err().unwrap().to_string();
    assert!(e.contains("svamp.json: record 1: missing field 'Question'"), "{e}");
    let p = write(d.path(), "svamp2.json", br#"[{"ID": "a", "Body": "b", "Question": "q?", "Answer": [3]}]"#);
    let e = load_svamp(&p, None).err().unwrap().to_string();
    assert!(e.contains("record 0: field 'Answer' is an array, expected a number"), "{e}");
    let p = write(d.path(), "alp.json", br#"[{"instruction": 5, "output": "x"}]"#);
    let e = load_alpaca(&p, "instruction", "output").err().unwrap().to_string();
    assert!(e.contains("record 0: field 'instruction' is a number, expected a string"), "{e}");
    let p = write(d.path(), "gsm.jsonl", b"{\"question\": \"q\", \"answer\": \"no marker\"}\n");
    let e = load_gsm8k(&p, "test").err().unwrap().to_string();
    assert!(e.contains("line 1: field 'answer' has no '#### <number>' line"), "{e}");
}

#[test]
fn invalid_utf8_and_empty_files() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "latin1.json", b"[{\"instruction\": \"caf\xe9\",\n \"output\": \"x\"}]");
    let e = read_records(&p).err().unwrap().to_string();
    assert!(e.contains("latin1.json: line 1: invalid UTF-8"), "{e}");
    let p = write(d.path(), "empty.json", b"  \n");
    let e = read_records(&p).err().unwrap().to_string();
    assert!(e.contains("empty.json: file is empty"), "{e}");
    let p = write(d.path(), "emptyarr.json", b"[]");
    assert!(read_records(&p).err().unwrap().to_string().contains("array is empty"));
    let p = write(d.path(), "text.json", b"hello");
    assert!(read_records(&p).err().unwrap().to_string().contains("expected a JSON array"));
}

#[test]
fn unknown_names_say_what_exists() {
    require!(Data);
    let dir = common::data_dir();
    let e = load_dataset(&dir, "svampp", &DatasetOptions::default()).err().unwrap().to_string();
    assert!(e.contains("unknown dataset 'svampp'") && e.contains("gsm8k"), "{e}");
    let cat = Catalog::new(dir.clone());
    let q = |t: &str, l: Option<i64>, f: Option<&str>| RationaleQuery {
        teacher: Some(t.into()),
        level: l,
        format: f.map(str::to_string),
        ..Default::default()
    };
    let e = cat.rationales("svamp", &q("gpt5", Some(1), None)).err().unwrap().to_string();
    assert!(e.contains("unknown teacher 'gpt5'"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(7), None)).err().unwrap().to_string();
    assert!(e.contains("level must be 1..6"), "{e}");
    // A combination the release never had: say so, and list what it has.
    let e = cat.rationales("svamp", &q("llama-3-70b", Some(5), None)).err().unwrap().to_string();
    assert!(e.contains("the release has no llama-3-70b level-5 plain rationales for svamp") && e.contains("level-4 plain"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(4), Some("bsm"))).err().unwrap().to_string();
    assert!(e.contains("no gpt-4o level-4 bsm"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(3), Some("fancy"))).err().unwrap().to_string();
    assert!(e.contains("unknown format 'fancy'"), "{e}");
    // A file of the release that this copy lacks: name it and say where to get it.
    let e = cat.rationales("gsm8k", &q("gpt-4o", Some(3), None)).err().unwrap().to_string();
    assert!(e.contains("gsm8k_ChatGPT_level3_ranked.json") && e.contains("EIT-NLP/Distilling-CoT-Reasoning"), "{e}");
    // Split that the release does not have.
    let e = load_dataset(&dir, "aqua", &DatasetOptions { split: Some("train".into()), ..Default::default() }).err().unwrap().to_string();
    assert!(e.contains("aqua has no 'train' split") && e.contains(".split("), "{e}");
}

#[test]
fn wrong_data_dir_points_to_the_fix() {
    require!(Data);
    let e = load_dataset(&DataDir("/nonexistent".into()), "svamp", &DatasetOptions::default()).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/test/svamp/SVAMP_test.json") && e.contains("--data-dir"), "{e}");
}
