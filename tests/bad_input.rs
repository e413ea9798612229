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
    assert!(e.contains("svamp.json: record 2: missing field 'Question'"), "{e}");
    let p = write(d.path(), "svamp2.json", br#"[{"ID": "a", "Body": "b", "Question": "q?", "Answer": [3]}]"#);
    let e = load_svamp(&p, None).err().unwrap().to_string();
    assert!(e.contains("record 1: field 'Answer' is an array, expected a number"), "{e}");
    let p = write(d.path(), "alp.json", br#"[{"instruction": 5, "output": "x"}]"#);
    let e = load_alpaca(&p, "instruction", "output").err().unwrap().to_string();
    assert!(e.contains("record 1: field 'instruction' is a number, expected a string"), "{e}");
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
    let q =
        |t: &str, l: Option<i64>, f: Option<&str>| RationaleQuery { teacher: Some(t.into()), level: l, format: f.map(str::to_string), ..Default::default() };
    let e = cat.rationales("svamp", &q("gpt5", Some(1), None)).err().unwrap().to_string();
    assert!(e.contains("teacher: unknown value 'gpt5'"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(7), None)).err().unwrap().to_string();
    assert!(e.contains("level must be 1..6"), "{e}");
    // A combination the release never had: say so, and list what it has.
    let e = cat.rationales("svamp", &q("llama-3-70b", Some(5), None)).err().unwrap().to_string();
    assert!(e.contains("the release has no llama-3-70b level-5 plain rationales for svamp") && e.contains("level-4 plain"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(4), Some("bsm"))).err().unwrap().to_string();
    assert!(e.contains("no gpt-4o level-4 bsm"), "{e}");
    let e = cat.rationales("svamp", &q("gpt-4o", Some(3), Some("fancy"))).err().unwrap().to_string();
    assert!(e.contains("format: unknown value 'fancy'"), "{e}");
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

/// A small Llama config.json with `changes` applied (a `null` removes the key).
fn model_config(dir: &Path, name: &str, changes: serde_json::Value) -> std::path::PathBuf {
    let mut c = serde_json::json!({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "tie_word_embeddings": true,
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("config.json");
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

/// The error reading `config.json` with `changes`, which must name the file.
fn config_error(dir: &Path, changes: serde_json::Value) -> String {
    let p = model_config(dir, "m", changes.clone());
    let e = cotlab::model::random::config_of(p.to_str().unwrap()).err().unwrap_or_else(|| panic!("{changes}: accepted")).to_string();
    assert!(e.contains(&p.display().to_string()), "{changes}: the file is not named: {e}");
    e
}

/// Sizes no machine can hold are refused from the config alone, naming the file, the key and
/// the machine's memory, before any weight is allocated (which aborted the process).
#[test]
fn absurd_config_sizes_are_refused_before_allocating() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    for (changes, needles) in [
        (serde_json::json!({"num_hidden_layers": 1e9}), &["num_hidden_layers 1000000000", "of memory"][..]),
        (serde_json::json!({"num_hidden_layers": 1000000000u64}), &["num_hidden_layers 1000000000", "of memory"]),
        (serde_json::json!({"vocab_size": 1000000000u64, "hidden_size": 4096}), &["vocab_size 1000000000 × hidden_size 4096", "of memory"]),
        (serde_json::json!({"hidden_size": 1u64 << 30, "intermediate_size": 1u64 << 30}), &["hidden_size", "of memory"]),
        (serde_json::json!({"intermediate_size": 1u64 << 62}), &["intermediate_size 4611686018427387904", "overflows 64 bits"]),
        (serde_json::json!({"hidden_size": 1u64 << 34, "num_attention_heads": 1, "num_key_value_heads": 1}), &["hidden_size 17179869184", "overflows 64 bits"]),
        (serde_json::json!({"vocab_size": 1u64 << 40}), &["vocab_size 1099511627776", "u32"]),
        (serde_json::json!({"num_hidden_layers": 2.5}), &["'num_hidden_layers' must be a whole number"]),
        (serde_json::json!({"hidden_size": -64}), &["'hidden_size' must be a whole number"]),
    ] {
        let e = config_error(d.path(), changes.clone());
        assert!(needles.iter().all(|n| e.contains(n)), "{changes}: {e}");
    }
    // `bench --random` with the issue's 1e9 vocabulary: exit 1 with the reason, no abort.
    let p = model_config(d.path(), "big", serde_json::json!({"vocab_size": 1e9, "hidden_size": 4096}));
    let o = common::run(common::cotlab().args(["bench", "generate", "--batch", "1", "--new-tokens", "1", "--tokenizer", "none", "--random"]).arg(&p));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("config.json") && o.stderr.contains("vocab_size 1000000000") && o.stderr.contains("of memory"), "{}", o.stderr);
}

/// A rope base that is not a positive number made every logit NaN and every answer empty; it
/// is refused naming the file and the key. BLOOM (ALiBi, no rope) keeps its 0.
#[test]
fn rope_theta_must_be_a_positive_number() {
    let d = tempfile::tempdir().unwrap();
    for theta in [serde_json::json!(0), serde_json::json!(-1.0), serde_json::json!(-10000)] {
        let e = config_error(d.path(), serde_json::json!({ "rope_theta": theta }));
        assert!(e.contains("rope_theta must be a positive number"), "{theta}: {e}");
    }
    let mut c = cotlab::model::random::preset("smollm2-135m").unwrap();
    for theta in [f64::NAN, f64::INFINITY, 0.0] {
        c.rope_theta = theta;
        let e = c.validate().err().unwrap_or_else(|| panic!("{theta}: accepted")).to_string();
        assert!(e.contains("rope_theta must be a positive number"), "{theta}: {e}");
    }
    c.family = cotlab::model::Family::Bloom;
    assert!(c.check_values().is_ok(), "BLOOM has no rope");
    // The neighbours: a zero epsilon, heads that do not divide, a degenerate llama3 scaling.
    for (changes, needle) in [
        (serde_json::json!({"rms_norm_eps": 0.0}), "rms_norm_eps must be a positive number"),
        (serde_json::json!({"num_attention_heads": 3, "num_key_value_heads": 3}), "hidden_size 64 is not a multiple of num_attention_heads 3"),
        (serde_json::json!({"intermediate_size": 0}), "intermediate_size is 0"),
        (serde_json::json!({"head_dim": 0}), "head_dim is 0"),
        (
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
            "low_freq_factor < high_freq_factor",
        ),
    ] {
        let e = config_error(d.path(), changes.clone());
        assert!(e.contains(needle), "{changes}: {e}");
    }
}

/// Numeric options out of range: a clear error naming the option and its range, never a panic,
/// an abort or a run that starts anyway.
#[test]
fn numeric_options_are_range_checked() {
    require!(Data, Model);
    use cotlab::script::{Context, Runner};
    let d = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().join("runs");
    let r = Runner::new(ctx);
    let corpus = "let c = rationales(\"arith\", #{ level: 1, n: 4, seed: 1 });\nlet s = student(\"default\");\n";
    for (opts, needle) in [
        ("epochs: 1e300", "'epochs' must be in"),
        ("epochs: 0.0", "'epochs' must be in"),
        ("max_steps: 100000000000000", "'max_steps' must be in"),
        ("lr: -1.0", "'lr' must be in"),
        ("lr: 1e300", "'lr' must be in"),
        ("batch_size: 0", "'batch_size' must be in"),
        ("max_grad_norm: -1.0", "'max_grad_norm' must be in"),
        ("stop_after: -1", "'stop_after' must be at least 1"),
        ("stop_after: 0", "'stop_after' must be at least 1"),
        ("lora: #{ r: 8, alpha: 16.0, dropout: 1.5, targets: [\"q_proj\"] }", "'dropout' must be in"),
        ("max_len: 4", "'max_len' must be in"),
    ] {
        let e = r.eval("o.rhai", &format!("{corpus}sft(s, c, #{{ run: \"r\", {opts} }})")).err().unwrap_or_else(|| panic!("{opts}: accepted")).to_string();
        assert!(e.contains(needle), "{opts}: {e}");
    }
    assert!(!d.path().join("runs/r").exists(), "a refused run left a run dir");
    for (src, needle) in [
        ("teacher(\"openai\", #{ base_url: \"http://127.0.0.1:9\", api_key_env: (), timeout_s: 1e300 })", "'timeout_s' must be in"),
        ("teacher(\"openai\", #{ base_url: \"http://127.0.0.1:9\", api_key_env: (), concurrency: 0 })", "'concurrency' must be in"),
        ("generate(student(\"default\"), \"Hi\", #{ top_p: 0.0 })", "'top_p' must be in"),
        ("generate(student(\"default\"), \"Hi\", #{ temperature: -1.0 })", "'temperature' must be in"),
        ("generate(student(\"default\"), \"Hi\", #{ beams: 0 })", "'beams' must be in 1..=16"),
        ("generate(student(\"default\"), \"Hi\", #{ beams: 17 })", "'beams' must be in 1..=16"),
        ("generate(student(\"default\"), \"Hi\", #{ beams: 5, temperature: 0.7 })", "leave 'temperature' at 0"),
        ("evaluate(student(\"default\"), dataset(\"csqa\", #{limit: 1}), #{ beams: 0 })", "'beams' must be in 1..=16"),
        (
            "teacher(\"replay\", #{ dataset: \"svamp\", teacher: \"gpt-4o\" }).ask(dataset(\"svamp\", #{limit: 1}), #{ level: 1, shots: 2 })",
            "'shots' must be in 0..=1",
        ),
        ("evaluate(student(\"default\"), dataset(\"svamp\", #{limit: 1}), #{ batch_size: 0 })", "'batch_size' must be in"),
        ("contamination([\"a b c\"], [\"a b c\"], #{ threshold: 2.0 })", "'threshold' must be in"),
        ("dataset(\"arith\", #{ n: 1000000000000 })", "'n' must be in"),
    ] {
        let e = r.eval("o.rhai", src).err().unwrap_or_else(|| panic!("{src}: accepted")).to_string();
        assert!(e.contains(needle), "{src}: {e}");
    }
    // The CLI: no panic, exit 1, the option named.
    for (args, needle) in [
        (vec!["bench", "train", "--seq", "0", "--steps", "1"], "'seq' must be in"),
        (vec!["bench", "train", "--batch", "0"], "'batch' must be in"),
        (vec!["bench", "generate", "--batch", "0"], "'batch' must be in"),
        (vec!["bench", "matmul", "--m", "1,0"], "'m' must be in"),
        (vec!["bench", "gemm", "--tokens", "0"], "'tokens' must be in"),
        (vec!["contamination", "--threshold", "nan"], "'threshold' must be in"),
        (vec!["eval", "--task", "csqa", "--limit", "1", "--beams", "17"], "'beams' must be in 1..=16"),
    ] {
        let mut cmd = common::cotlab();
        cmd.args(&args);
        if args[0] == "eval" {
            cmd.arg("--runs").arg(d.path().join("cli-runs"));
        }
        if args[0] == "contamination" {
            let p = d.path().join("q.jsonl");
            std::fs::write(&p, "{\"question\": \"a b c\"}\n").unwrap();
            cmd.args(["--train"]).arg(&p).args(["--test"]).arg(&p);
        }
        let o = common::run(&mut cmd);
        assert_eq!(o.code, 1, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(needle) && !o.stderr.contains("panicked"), "{args:?}: {}", o.stderr);
    }
    assert!(!d.path().join("cli-runs").exists(), "a refused evaluation left an eval dir");
}

/// A predictions file with one line repeated is not a perfect score on the whole test set.
#[test]
fn duplicate_predictions_are_an_error() {
    require!(Data);
    let ds = load_dataset(&common::data_dir(), "svamp", &DatasetOptions::default()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let line = format!("{{\"id\": \"{}\", \"prediction\": \"The answer is {}\"}}\n", ds.examples[0].id, ds.examples[0].answer);
    let p = write(d.path(), "dup.jsonl", line.repeat(500).as_bytes());
    let e = cotlab::eval::score_predictions(&ds, &p, cotlab::answer::Protocol::Paper).err().unwrap().to_string();
    assert!(e.contains("dup.jsonl: line 2: a second prediction") && e.contains("line 1"), "{e}");
    let p = write(d.path(), "one.jsonl", line.as_bytes());
    let r = cotlab::eval::score_predictions(&ds, &p, cotlab::answer::Protocol::Paper).unwrap();
    assert_eq!((r.n, r.correct, r.test_size), (1, 1, 300));
}

#[test]
fn byte_order_marks_and_empty_json_lines() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "bom.json", "\u{feff}[{\"instruction\": \"q\", \"output\": \"a\"}]".as_bytes());
    assert_eq!(read_records(&p).unwrap().len(), 1);
    let p = write(d.path(), "bom.jsonl", "\u{feff}{\"a\": 1}\n{\"a\": 2}\n".as_bytes());
    assert_eq!(cotlab::frame::Frame::read_jsonl(&p).unwrap().height(), 2);
    let p = write(d.path(), "empty.jsonl", b"\n\n");
    let e = cotlab::frame::Frame::read_jsonl(&p).err().unwrap().to_string();
    assert!(e.contains("empty.jsonl") && e.contains("file is empty"), "{e}");
}

#[test]
fn ragged_csv_names_the_line() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "r.csv", b"a,b\n1,2\n3,4,5\n6,7\n");
    let e = cotlab::frame::Frame::read_csv(&p).err().unwrap().to_string();
    assert!(e.contains("r.csv: line 3: 3 fields, the header has 2"), "{e}");
}

/// Round 3, class 9: a FIFO, a device or a dir given as an input file is refused at once (no
/// hang, no endless read), by every reader a script reaches, from a script run by the CLI.
#[test]
fn non_regular_inputs_are_refused_at_once() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("in.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir_all(d.path().join("adir")).unwrap();
    let mut cases = Vec::new();
    for (input, needle) in [(fifo.display().to_string(), "FIFO"), ("/dev/zero".into(), "a device"), (d.path().join("adir").display().to_string(), "directory")]
    {
        for call in
            ["read_csv(\"P\")", "read_jsonl(\"P\")", "read_parquet(\"P\")", "score_predictions(\"svamp\", \"P\")", "contamination(\"P\", dataset(\"svamp\"))"]
        {
            // A dir given to score_predictions is read as an eval dir (cotlab's or lm-eval's): an
            // empty one is refused as not being one.
            let needle = if call.starts_with("score_predictions") && needle == "directory" { "not an eval dir" } else { needle };
            cases.push((call.replace('P', &input), needle));
        }
    }
    for (src, needle) in cases {
        let s = write(d.path(), "s.rhai", src.as_bytes());
        let t0 = std::time::Instant::now();
        let mut child = common::cotlab()
            .arg("run")
            .arg(&s)
            .arg("--out")
            .arg(d.path().join("o"))
            .args(["--allow-read", "/dev", "--allow-read"])
            .arg(d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("{src}: still running after 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{src}: accepted");
        let kind_said = needle == "not an eval dir" || err.contains("not a regular file");
        assert!(err.contains("s.rhai:1:") && err.contains(needle) && kind_said, "{src}: {err}");
    }
}
