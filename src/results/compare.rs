//! Paired comparison of two evaluations on the same questions: which setting is better, with the
//! test that fits scoring on one question set (McNemar's exact test on the questions the two
//! disagree on) and a paired-bootstrap interval for the accuracy difference. Overlapping Wilson
//! intervals say little here: both settings answered the same questions.
//!
//! Invariants:
//! - Only the same questions are compared: two evaluations whose question ids differ are an error
//!   naming the difference (counts, and the first ids only one side has), never a comparison of
//!   two sets.
//! - Both evaluations were scored under one protocol (else an error naming both).
//! - `mcnemar_p` is the two-sided exact binomial test of the discordant pairs at p = 1/2 (what
//!   `scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue` gives), summed in log space, so any
//!   number of questions neither overflows nor underflows to a wrong 0.
//! - The interval resamples questions (both outcomes of a question together) with a seeded
//!   generator: the same evaluations and seed give the same interval; percentiles interpolate
//!   linearly between order statistics, as numpy's default does.
//! - Against a baseline ([`against_baseline`]), each row is paired with the one baseline row of its
//!   group (the `by` columns' values); a group with two baselines is an error naming both, a row
//!   without a baseline or an evaluation (pending, failed) gets nulls, never a comparison with
//!   another group's baseline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::run::Sample;
use crate::eval::{RESULTS_FILE, SAMPLES_FILE};
use crate::frame::{Cell, ColumnData, Frame};
use crate::journal::Journal;
use crate::paths::is_real_file;
use crate::results::runs::{BASELINE_COLUMNS, EVAL_DIR};
use crate::rng::Rng;

/// Bootstrap resamples by default: the interval's ends move by about 0.1 point between seeds.
pub const RESAMPLES: usize = 10_000;

/// Two evaluations compared question by question (`a` minus `b`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub n: usize,
    /// Questions both answered correctly, only `a`, only `b`, neither.
    pub both: usize,
    pub only_a: usize,
    pub only_b: usize,
    pub neither: usize,
    /// Accuracy of `a` minus accuracy of `b`.
    pub diff: f64,
    /// The paired-bootstrap 95% interval of `diff`.
    pub ci95_low: f64,
    pub ci95_high: f64,
    /// McNemar's exact test: the chance of a split of the disagreements at least this uneven if
    /// the two settings were equally good.
    pub mcnemar_p: f64,
}

/// Compare outcomes `(question id, correct)` of `a` and `b` (see the module head); `what_a` and
/// `what_b` name them in errors.
pub fn paired(a: &[(String, bool)], b: &[(String, bool)], what: (&str, &str), seed: u64, resamples: usize) -> std::result::Result<Comparison, String> {
    let of_b: HashMap<&str, bool> = b.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    let of_a: HashMap<&str, bool> = a.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    let only_in = |x: &[(String, bool)], other: &HashMap<&str, bool>| -> Vec<String> {
        x.iter().filter(|(id, _)| !other.contains_key(id.as_str())).map(|(id, _)| id.clone()).collect()
    };
    let (a_only, b_only) = (only_in(a, &of_b), only_in(b, &of_a));
    if !a_only.is_empty() || !b_only.is_empty() || of_a.len() != a.len() || of_b.len() != b.len() {
        let first = |ids: &[String]| ids.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        return Err(format!(
            "compare: the two evaluations are not on the same questions ({} has {}, {} has {}; {} only in the first{}, {} only in the second{}): evaluate both on one dataset (same split, limit and seed)",
            what.0,
            of_a.len(),
            what.1,
            of_b.len(),
            a_only.len(),
            if a_only.is_empty() { String::new() } else { format!(": {}", first(&a_only)) },
            b_only.len(),
            if b_only.is_empty() { String::new() } else { format!(": {}", first(&b_only)) },
        ));
    }
    if a.is_empty() {
        return Err(format!("compare: {} has no answered questions", what.0));
    }
    let pairs: Vec<(bool, bool)> = a.iter().map(|(id, c)| (*c, of_b[id.as_str()])).collect();
    let count = |want: (bool, bool)| pairs.iter().filter(|p| **p == want).count();
    let (both, only_a, only_b, neither) = (count((true, true)), count((true, false)), count((false, true)), count((false, false)));
    let n = pairs.len();
    let (ci95_low, ci95_high) = bootstrap_diff(&pairs, seed, resamples);
    Ok(Comparison {
        n,
        both,
        only_a,
        only_b,
        neither,
        diff: (only_a as f64 - only_b as f64) / n as f64,
        ci95_low,
        ci95_high,
        mcnemar_p: mcnemar_exact(only_a, only_b),
    })
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // P(X <= k) for X ~ Binomial(n, 1/2), by log-sum-exp over ln C(n, i) - n ln 2.
    let k = b.min(c);
    let mut ln_c = 0.0f64;
    let mut terms = Vec::with_capacity(k + 1);
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_c - n as f64 * std::f64::consts::LN_2);
    }
    let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let cdf = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * cdf).min(1.0)
}

/// The 2.5th and 97.5th percentiles of the accuracy difference over `resamples` resamplings of
/// the question pairs.
pub fn bootstrap_diff(pairs: &[(bool, bool)], seed: u64, resamples: usize) -> (f64, f64) {
    let n = pairs.len();
    let mut rng = Rng::new(seed);
    let mut diffs: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let d: i64 = (0..n).map(|_| pairs[rng.below(n)]).map(|(a, b)| i64::from(a) - i64::from(b)).sum();
            d as f64 / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    (percentile(&diffs, 2.5), percentile(&diffs, 97.5))
}

/// numpy's default (linear) percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The outcomes of an eval dir's samples (`samples.jsonl`, the journal every evaluation keeps)
/// and the protocol they were scored under (`results.json`).
pub fn outcomes(dir: &Path) -> Result<Outcomes> {
    let journal = dir.join(SAMPLES_FILE);
    if !is_real_file(&journal) {
        return Err(Error::data(dir, format!("no {SAMPLES_FILE}: not an eval dir of cotlab's (give the eval_dir of an evaluate() result or of cotlab eval)")));
    }
    let (_, samples) = Journal::<Sample>::open(&journal)?;
    let report = dir.join(RESULTS_FILE);
    let results: serde_json::Value = serde_json::from_str(&crate::paths::read_text(&report)?).map_err(|e| Error::data(&report, e.to_string()))?;
    let protocol = results["protocol"].as_str().unwrap_or("paper").to_string();
    Ok((samples.into_iter().map(|s| (s.id, s.correct)).collect(), protocol))
}

/// An eval dir's outcomes `(question id, correct)` and the protocol they were scored under.
pub type Outcomes = (Vec<(String, bool)>, String);

/// [`paired`] for two eval dirs.
pub fn compare_dirs(a: &Path, b: &Path, seed: u64) -> Result<Comparison> {
    compare_outcomes((a, &outcomes(a)?), (b, &outcomes(b)?), seed)
}

/// [`paired`] for two eval dirs' outcomes, refusing two protocols.
fn compare_outcomes((a, (oa, pa)): (&Path, &Outcomes), (b, (ob, pb)): (&Path, &Outcomes), seed: u64) -> Result<Comparison> {
    if pa != pb {
        return Err(Error::Usage(format!(
            "compare: {} was scored under protocol '{pa}', {} under '{pb}': compare evaluations under one protocol",
            a.display(),
            b.display()
        )));
    }
    paired(oa, ob, (&a.display().to_string(), &b.display().to_string()), seed, RESAMPLES).map_err(Error::Usage)
}

/// The eval dir a results row points at: the dir itself when it is one, else its `eval/` (a
/// sweep point or a training run evaluated in place).
pub fn eval_dir_of(dir: &Path) -> PathBuf {
    if is_real_file(&dir.join(SAMPLES_FILE)) {
        dir.to_path_buf()
    } else {
        dir.join(EVAL_DIR)
    }
}

/// Each row of a `results()` frame compared with its group's baseline row (`is_baseline`, one per
/// group of equal `by` values), `row − baseline`: the frame with [`BASELINE_COLUMNS`] added.
/// Rows that are baselines themselves, lack one, or are not done get nulls.
/// Every eval dir read is first passed through `readable` (the sandbox's read check: a frame's
/// `dir` values may come from anywhere).
pub fn against_baseline(frame: &Frame, is_baseline: &[bool], by: &[String], seed: u64, readable: &dyn Fn(&Path) -> Result<PathBuf>) -> Result<Frame> {
    let cols = frame.columns();
    for need in ["dir", "status"].iter().map(|s| s.to_string()).chain(by.iter().cloned()) {
        if !cols.contains(&need) {
            return Err(Error::Usage(format!("vs_baseline: the frame has no '{need}' column (columns: {}): give it a results(...) frame", cols.join(", "))));
        }
    }
    let dirs = frame.column_cells("dir")?;
    let status = frame.column_cells("status")?;
    let keys: Vec<Vec<Cell>> = by.iter().map(|c| frame.column_cells(c)).collect::<Result<_>>()?;
    let key_of = |row: usize| -> String { keys.iter().map(|k| format!("{:?}", k[row])).collect::<Vec<_>>().join("\u{1f}") };
    let done = |row: usize| matches!(&status[row], Cell::Str(s) if s == "done") && matches!(dirs[row], Cell::Str(_));
    let mut baseline: HashMap<String, usize> = HashMap::new();
    for row in (0..frame.height()).filter(|&r| is_baseline.get(r) == Some(&true)) {
        if let Some(other) = baseline.insert(key_of(row), row) {
            return Err(Error::Usage(format!(
                "vs_baseline: rows {other} and {row} are both baselines of one group ({}): narrow the baseline filter or add a column to `by`",
                by.iter().zip(&keys).map(|(c, k)| format!("{c} = {}", k[row])).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut out: [Vec<Option<f64>>; 4] = Default::default();
    let mut read: HashMap<PathBuf, Outcomes> = HashMap::new();
    for row in 0..frame.height() {
        let base = baseline.get(&key_of(row)).copied().filter(|&b| b != row && done(b) && done(row));
        let c = match base {
            Some(b) => {
                let dir = |r: usize| match &dirs[r] {
                    Cell::Str(d) => readable(&eval_dir_of(Path::new(d))),
                    _ => unreachable!("done rows have a dir"),
                };
                let (d, base_dir) = (dir(row)?, dir(b)?);
                // Each baseline's samples are read once, however many rows it is compared with.
                if !read.contains_key(&base_dir) {
                    read.insert(base_dir.clone(), outcomes(&base_dir)?);
                }
                Some(compare_outcomes((&d, &outcomes(&d)?), (&base_dir, &read[&base_dir]), seed)?)
            }
            None => None,
        };
        for (col, v) in
            out.iter_mut().zip([c.as_ref().map(|c| c.diff), c.as_ref().map(|c| c.ci95_low), c.as_ref().map(|c| c.ci95_high), c.as_ref().map(|c| c.mcnemar_p)])
        {
            col.push(v);
        }
    }
    let added = BASELINE_COLUMNS.iter().zip(out).map(|(n, v)| (n.to_string(), ColumnData::Float(v)));
    frame.with_added_columns(added.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(bits: &[bool]) -> Vec<(String, bool)> {
        bits.iter().enumerate().map(|(i, c)| (format!("q{i}"), *c)).collect()
    }

    #[test]
    fn counts_and_difference_are_paired_by_question() {
        let a = outcomes(&[true, true, false, false, true]);
        let mut b = outcomes(&[true, false, true, false, false]);
        b.reverse(); // order does not matter, ids do
        let c = paired(&a, &b, ("a", "b"), 1, 2000).unwrap();
        assert_eq!((c.n, c.both, c.only_a, c.only_b, c.neither), (5, 1, 2, 1, 1));
        assert!((c.diff - 0.2).abs() < 1e-12);
        assert!(c.ci95_low <= c.diff && c.diff <= c.ci95_high);
        assert_eq!(paired(&a, &b, ("a", "b"), 1, 2000).unwrap(), c, "the same seed, the same interval");
    }

    #[test]
    fn other_questions_are_refused_naming_them() {
        let a = outcomes(&[true, false, true]);
        let b = outcomes(&[true, false]);
        let e = paired(&a, &b, ("runs/x", "runs/y"), 1, 100).unwrap_err();
        assert!(e.contains("not on the same questions") && e.contains("1 only in the first: q2") && e.contains("runs/x has 3"), "{e}");
        assert!(paired(&[], &[], ("a", "b"), 1, 100).unwrap_err().contains("no answered questions"));
    }

    #[test]
    fn mcnemar_is_the_exact_binomial_test() {
        // Values of scipy.stats.binomtest(k, n, 0.5).pvalue.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        assert!((mcnemar_exact(1, 9) - 0.021484375).abs() < 1e-12);
        assert!((mcnemar_exact(9, 1) - 0.021484375).abs() < 1e-12);
        assert!((mcnemar_exact(0, 10) - 0.001953125).abs() < 1e-12);
        // Large counts stay finite and positive.
        let p = mcnemar_exact(400, 600);
        assert!(p > 0.0 && p < 1e-9, "{p}");
    }

    #[test]
    fn percentiles_interpolate_as_numpys() {
        let v = [0.0, 1.0, 2.0, 3.0];
        assert!((percentile(&v, 50.0) - 1.5).abs() < 1e-12);
        assert!((percentile(&v, 2.5) - 0.075).abs() < 1e-12);
    }
}
