//! Re-score a predictions file against a test set's gold answers, without generating anything.
//! The file has one JSON object per line with `id` or `question`, and `prediction` (the raw
//! generated text; the paper's extractor finds the answer in it). An eval dir (cotlab's, or
//! lm-eval's `--output_path` model dir) is read as such a file: its generated texts by id.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::answer::Protocol;
use crate::data::contamination::normalize;
use crate::data::loaders::read_records;
use crate::data::{Dataset, Task};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScoreReport {
    pub task: String,
    /// Predictions scored (lines of the file).
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Predictions in which no answer of the task's kind was found (counted wrong).
    pub unparsed: usize,
    /// Examples in the test set: n below it means some examples have no prediction.
    pub test_size: usize,
    /// The protocol `correct`/`accuracy`/`unparsed` are under.
    pub protocol: Protocol,
    /// The same predictions judged by each protocol (one of them is `accuracy`).
    pub accuracy_paper: f64,
    pub accuracy_lenient: f64,
}

/// The questions a prediction line may name an example by: as shown to the student, and for a user
/// set also as written in the user's file (before the appended `Answer Choices:`).
fn question_keys(ds: &Dataset, shown: &str) -> Vec<String> {
    let mut keys = vec![normalize(shown)];
    if let (Task::User(_), Some((asked, _))) = (ds.task, shown.split_once(" Answer Choices: ")) {
        keys.push(normalize(asked));
    }
    keys
}

/// Score `path` against `ds` under `protocol` (the other protocol's accuracy is reported too). A
/// line whose id/question is not in the test set is an error (a predictions file for another
/// task or split would otherwise score silently as garbage).
pub fn score_predictions(ds: &Dataset, path: &Path, protocol: Protocol) -> Result<ScoreReport> {
    let evaluator = ds.task.evaluator();
    let mut right = [0usize; 2];
    let by_id: HashMap<&str, usize> = ds.examples.iter().enumerate().map(|(i, e)| (e.id.as_str(), i)).collect();
    let by_q: HashMap<String, usize> =
        ds.examples.iter().enumerate().flat_map(|(i, e)| question_keys(ds, &e.question).into_iter().map(move |k| (k, i))).collect();
    let (mut n, mut correct, mut unparsed) = (0, 0, 0);
    // Where each example was scored: a second line for one example is an error, so n can never
    // exceed the test set (500 copies of one right answer are not 100% accuracy).
    let mut seen: HashMap<usize, String> = HashMap::new();
    // An eval dir is read through the one owner of its layout.
    let records = match crate::eval::lmeval::predictions(path)? {
        Some(r) => r,
        None => read_records(path)?,
    };
    for rec in records {
        let idx = if rec.has("id") {
            let id = match rec.value.get("id") {
                Some(serde_json::Value::Number(x)) => x.to_string(),
                _ => rec.str(path, "id")?,
            };
            *by_id.get(id.as_str()).ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "{}: id '{id}' is not in {} {} (ids look like '{}')",
                        rec.loc,
                        ds.name,
                        ds.split,
                        ds.examples.first().map(|e| e.id.as_str()).unwrap_or("?")
                    ),
                )
            })?
        } else if rec.has("question") {
            let q = rec.str(path, "question")?;
            *by_q.get(&normalize(&q)).ok_or_else(|| Error::data(path, format!("{}: question not found in {} {}: {:.60}…", rec.loc, ds.name, ds.split, q)))?
        } else {
            return Err(Error::data(path, format!("{}: expected an 'id' or 'question' field", rec.loc)));
        };
        let prediction = rec.str(path, "prediction")?;
        let ex = &ds.examples[idx];
        if let Some(first) = seen.get(&idx) {
            return Err(Error::data(
                path,
                format!("{}: a second prediction for {} example '{}' (the first is at {first}): keep one line per test example", rec.loc, ds.name, ex.id),
            ));
        }
        seen.insert(idx, rec.loc.to_string());
        n += 1;
        for (i, p) in Protocol::ALL.iter().enumerate() {
            right[i] += usize::from(p.judge(&prediction, &ex.answer, ex.kind, evaluator).correct);
        }
        let j = protocol.judge(&prediction, &ex.answer, ex.kind, evaluator);
        if j.correct {
            correct += 1;
        } else if j.extracted.is_none() {
            unparsed += 1;
        }
    }
    Ok(ScoreReport {
        task: ds.name.clone(),
        n,
        correct,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        unparsed,
        test_size: ds.len(),
        protocol,
        accuracy_paper: if n == 0 { 0.0 } else { right[0] as f64 / n as f64 },
        accuracy_lenient: if n == 0 { 0.0 } else { right[1] as f64 / n as f64 },
    })
}
