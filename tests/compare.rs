//! Issue 32: `compare(a, b)` on two eval dirs: counts paired by question, McNemar's exact p equal
//! to scipy's binomtest, the paired-bootstrap interval within Monte Carlo error of a numpy
//! bootstrap, and other question sets refused.

mod common;

use std::path::Path;

use cotlab::script::{Context, Runner};

/// An eval dir as `evaluate` leaves it, with these outcomes (question i correct or not).
fn eval_dir(dir: &Path, outcomes: &[bool], protocol: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let lines: String = outcomes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({"id": format!("q{i}"), "question": "?", "gold": "1", "generated": "", "extracted": null, "correct": c, "tokens": 1, "finish": "eos"})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("samples.jsonl"), lines).unwrap();
    std::fs::write(dir.join("results.json"), serde_json::json!({"protocol": protocol}).to_string()).unwrap();
}

#[test]
fn compare_is_paired_and_agrees_with_scipy_and_numpy() {
    require!(Data, Torch);
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    // 300 questions: a right on 60 % and b on 52 %, correlated as two settings of one student are.
    let mut rng = cotlab::rng::Rng::new(7);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let easy = rng.chance(0.5);
        a.push(if easy { rng.chance(0.9) } else { rng.chance(0.3) });
        b.push(if easy { rng.chance(0.85) } else { rng.chance(0.19) });
    }
    eval_dir(&runs.join("a"), &a, "paper");
    eval_dir(&runs.join("b"), &b, "paper");
    eval_dir(&runs.join("short"), &b[..299], "paper");
    eval_dir(&runs.join("lenient"), &b, "lenient");
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = runs.clone();
    let r = Runner::new(ctx);
    let c = r.eval("c.rhai", "compare(\"a\", \"b\")").unwrap_or_else(|e| panic!("{e}")).cast::<rhai::Map>();
    let int = |k: &str| c[k].as_int().unwrap() as usize;
    let float = |k: &str| c[k].as_float().unwrap();
    let count = |f: &dyn Fn(bool, bool) -> bool| a.iter().zip(&b).filter(|(x, y)| f(**x, **y)).count();
    assert_eq!(
        (int("n"), int("both"), int("only_a"), int("only_b"), int("neither")),
        (300, count(&|x, y| x && y), count(&|x, y| x && !y), count(&|x, y| !x && y), count(&|x, y| !x && !y))
    );
    // The reference: scipy's exact binomial test and a numpy paired bootstrap of the same pairs.
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab::model::cotlab_home().join("venv/bin/python").display().to_string());
    let pairs: Vec<[u8; 2]> = a.iter().zip(&b).map(|(x, y)| [u8::from(*x), u8::from(*y)]).collect();
    let script = format!(
        "import json, numpy as np\nfrom scipy.stats import binomtest\np = np.array({})\nd = p[:, 0] - p[:, 1]\nb = int(((p[:, 0] == 1) & (p[:, 1] == 0)).sum()); c = int(((p[:, 0] == 0) & (p[:, 1] == 1)).sum())\nrng = np.random.default_rng(0)\nboot = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(20000)])\nprint(json.dumps({{'p': binomtest(min(b, c), b + c, 0.5).pvalue, 'lo': float(np.percentile(boot, 2.5)), 'hi': float(np.percentile(boot, 97.5)), 'diff': float(d.mean())}}))",
        serde_json::to_string(&pairs).unwrap()
    );
    let out = std::process::Command::new(&py).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("compare: ours {c:?}\nscipy/numpy: {reference}");
    assert!((float("diff") - reference["diff"].as_f64().unwrap()).abs() < 1e-12);
    let p = reference["p"].as_f64().unwrap();
    assert!((float("mcnemar_p") - p).abs() <= 1e-9 * p.max(1e-300) + 1e-15, "mcnemar {} vs scipy {p}", float("mcnemar_p"));
    // Two bootstraps of 10000 and 20000 resamples: their percentiles agree to about one question.
    for (ours, theirs) in [("ci95_low", "lo"), ("ci95_high", "hi")] {
        assert!((float(ours) - reference[theirs].as_f64().unwrap()).abs() < 0.006, "{ours}: {} vs numpy {}", float(ours), reference[theirs]);
    }
    // An evaluate() result is accepted as well as a dir, and the seed is an option.
    let again = r.eval("c2.rhai", &format!("compare(#{{ eval_dir: \"{}\" }}, \"b\", #{{ seed: 0 }})", runs.join("a").display())).unwrap().cast::<rhai::Map>();
    assert_eq!(again["ci95_low"].as_float().unwrap(), float("ci95_low"), "the same seed, the same interval");
    // Other questions, another protocol: refused, saying which.
    let e = r.eval("c3.rhai", "compare(\"a\", \"short\")").unwrap_err().to_string();
    assert!(e.contains("not on the same questions") && e.contains("1 only in the first: q299"), "{e}");
    let e = r.eval("c4.rhai", "compare(\"a\", \"lenient\")").unwrap_err().to_string();
    assert!(e.contains("protocol 'paper'") && e.contains("'lenient'"), "{e}");
    let e = r.eval("c5.rhai", "compare(\"a\", \"nowhere\")").unwrap_err().to_string();
    assert!(e.contains("nowhere"), "{e}");
}

/// A point dir as a sweep leaves it: `point.json` and its evaluation in `eval/`.
fn point_dir(dir: &Path, student: &str, level: i64, outcomes: &[bool]) {
    eval_dir(&dir.join("eval"), outcomes, "paper");
    let v = serde_json::json!({"sweep": "s", "point": dir.file_name().unwrap().to_str(), "index": 0, "status": "done",
        "config": {"student": student, "level": level}, "metrics": {"accuracy": 0.0, "n": outcomes.len()}});
    std::fs::write(dir.join("point.json"), v.to_string()).unwrap();
}

/// Issue 32: `vs_baseline` pairs each row with its own group's baseline (the same numbers as
/// `compare`), leaves baselines and rows without one null, and refuses two baselines in a group.
#[test]
fn vs_baseline_pairs_each_row_with_its_groups_baseline() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    let q = |bits: &str| bits.chars().map(|c| c == '1').collect::<Vec<_>>();
    point_dir(&runs.join("sw/a0"), "a", 0, &q("1100110000"));
    point_dir(&runs.join("sw/a1"), "a", 1, &q("1111110000"));
    point_dir(&runs.join("sw/a2"), "a", 2, &q("0100110011"));
    point_dir(&runs.join("sw/b0"), "b", 0, &q("0000000000"));
    point_dir(&runs.join("sw/b1"), "b", 1, &q("1111111111"));
    point_dir(&runs.join("sw/c1"), "c", 1, &q("1111111111"));
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = runs.clone();
    let r = Runner::new(ctx);
    let script = r#"
        let t = results("sw").vs_baseline(col("level") == 0, #{ by: ["student"], seed: 3 }).sort(["student", "level"]);
        let out = [];
        for row in t.rows() { out.push([row.student, row.level, row.vs_baseline, row.vs_baseline_low, row.vs_baseline_high, row.p_vs_baseline]); }
        out.push(compare("sw/a1/eval", "sw/a0/eval", #{ seed: 3 }));
        out.push(compare("sw/a2/eval", "sw/a0/eval", #{ seed: 3 }));
        out
    "#;
    let out = r.eval("v.rhai", script).unwrap_or_else(|e| panic!("{e}")).cast::<rhai::Array>();
    let row = |i: usize| out[i].clone().cast::<rhai::Array>();
    let float = |d: &rhai::Dynamic| d.as_float().ok();
    for (i, cmp) in [(1, 6), (2, 7)] {
        let c = out[cmp].clone().cast::<rhai::Map>();
        let want: Vec<Option<f64>> = ["diff", "ci95_low", "ci95_high", "mcnemar_p"].iter().map(|k| c[*k].as_float().ok()).collect();
        let got: Vec<Option<f64>> = row(i)[2..].iter().map(float).collect();
        assert_eq!(got, want, "row {i}: the same numbers as compare()");
    }
    // a1 − a0: +0.2 (two questions only a1 has); b1 − b0: +1.0 with p = 2/2^10.
    assert_eq!(float(&row(1)[2]), Some(0.2));
    assert_eq!(float(&row(4)[2]), Some(1.0));
    assert!((float(&row(4)[5]).unwrap() - 2.0 / 1024.0).abs() < 1e-15);
    // The baselines, and student c (no baseline of its own: never compared with a's or b's).
    for i in [0, 3, 5] {
        assert!(row(i)[2..].iter().all(|v| v.is_unit()), "row {i} is null: {:?}", row(i));
    }
    // Without `by`, the two level-0 rows are two baselines of one group.
    let e = r.eval("v2.rhai", r#"results("sw").vs_baseline(col("level") == 0)"#).unwrap_err().to_string();
    assert!(e.contains("both baselines of one group") && e.contains("`by`"), "{e}");
    let e = r.eval("v3.rhai", r#"results("sw").vs_baseline(col("level") == 0, #{ group: ["student"] })"#).unwrap_err().to_string();
    assert!(e.contains("unknown option 'group'") && e.contains("by, seed"), "{e}");
    let e = r.eval("v4.rhai", r#"results("sw").vs_baseline(col("level") + 1)"#).unwrap_err().to_string();
    assert!(e.contains("true or false"), "{e}");
}
