//! The extractor on real teacher rationales of every answer kind: the teachers' final answers
//! must agree with gold for the vast majority (the release keeps rationales that reached the
//! right answer), and almost nothing may be unparsed.

mod common;

use cotlab::data::{Catalog, RationaleQuery};
use cotlab::eval::extract::{answers_match, extract_answer, Tolerance};

fn agreement(dataset: &str, teacher: &str, level: Option<i64>) -> (usize, usize, usize) {
    let cat = Catalog::new(common::data_dir());
    let q = RationaleQuery { teacher: Some(teacher.into()), level, ..Default::default() };
    let c = cat.rationales(dataset, &q).unwrap();
    let kind = c.kind();
    let tol = Tolerance::for_kind(kind);
    let (mut n, mut agree, mut unparsed) = (0, 0, 0);
    for r in &c.rationales {
        let Some(g) = &r.gold else { continue };
        n += 1;
        match extract_answer(&r.text, kind) {
            Some(p) if answers_match(&p, g, kind, tol) => agree += 1,
            Some(_) => {}
            None => unparsed += 1,
        }
    }
    (n, agree, unparsed)
}

fn check(dataset: &str, teacher: &str, level: Option<i64>, min_agree: f64) {
    let (n, agree, unparsed) = agreement(dataset, teacher, level);
    let pct = 100.0 * agree as f64 / n as f64;
    eprintln!("{dataset} {teacher} {level:?}: n={n} agree={pct:.2}% unparsed={unparsed}");
    assert!(n > 100, "{dataset}: gold known for {n}");
    assert!(pct >= min_agree, "{dataset} {teacher} {level:?}: agreement {pct:.2}% < {min_agree}%");
    assert!(unparsed * 100 <= n, "{dataset}: {unparsed} unparsed of {n}");
}

#[test]
fn numbers_svamp_and_gsm8k() {
    check("svamp", "gpt-4o", Some(1), 97.0);
    check("svamp", "gpt-4o", Some(6), 97.0);
    check("svamp", "human", None, 99.0);
    check("gsm8k", "llama-3-70b", Some(2), 95.0);
}

#[test]
fn choice_letters_aqua_csqa_obqa() {
    check("aqua", "llama-3-70b", Some(1), 95.0);
    check("aqua", "human", None, 95.0);
    check("csqa", "llama-3-70b", Some(1), 95.0);
    check("obqa", "gpt-4o", Some(4), 95.0);
}

#[test]
fn true_false_strategyqa() {
    check("strategyqa", "gemini", Some(3), 95.0);
    check("strategyqa", "human", None, 95.0);
}

#[test]
fn latex_math() {
    check("math", "gpt-4o", Some(3), 90.0);
    check("math", "llama-3-70b", Some(5), 92.0);
}
