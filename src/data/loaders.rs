//! Readers for the native formats: SVAMP json, GSM8K jsonl (`#### n`), AQuA jsonl, MATH jsonl,
//! the paper's CSQA/OBQA/StrategyQA eval json, and the Alpaca-style training files.
//! Every error names the file, the record (JSON array) or line (JSON lines), and what was
//! expected there.

use std::collections::HashSet;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::{AnswerKind, DataDir, Example, Task};
use crate::answer::{canonical_gold, find_boxed};
use crate::error::{Error, Result};
use crate::usage;

/// A record and where it came from, for error messages ("record 12", "line 40").
pub struct Record {
    pub loc: String,
    pub index: usize,
    pub value: Value,
}

/// Read a whole file as UTF-8, with errors that say which line holds the bad bytes.
pub fn read_text(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(Error::data(path, "file not found (check --data-dir / $COTLAB_DATA; see datasets/README.md)"));
    }
    decode_text(path, crate::paths::read_bytes(path)?)
}

/// A file's bytes as text: UTF-8 (else the line that holds the bad bytes), without a byte-order
/// mark, and not blank.
pub fn decode_text(path: &Path, bytes: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::data(path, format!("line {line}: invalid UTF-8 at byte {at}: expected UTF-8 text"))
    })?;
    // A byte-order mark (some Windows editors write one) is not JSON: drop it rather than
    // report "expected value at line 1 column 1".
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    if text.trim().is_empty() {
        return Err(Error::data(path, "file is empty: expected a JSON array or JSON lines"));
    }
    Ok(text)
}

/// Read a JSON array of objects, or JSON lines (one object per line). The format is detected
/// from the first character, because AQuA's `test.json` is JSON lines despite its name.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    parse_records(path, &read_text(path)?)
}

/// The records of a JSON file's text (see [`read_records`]); at least one. Records are counted
/// from 1 in messages (`record 1` is the array's first), as lines are.
pub fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::data(path, format!("line {}, column {}: malformed JSON: {e}", e.line(), e.column())))?;
        let Value::Array(items) = v else { unreachable!("starts with '['") };
        if items.is_empty() {
            return Err(Error::data(path, "the JSON array is empty: expected at least one record"));
        }
        Ok(items.into_iter().enumerate().map(|(i, value)| Record { loc: format!("record {}", i + 1), index: i, value }).collect())
    } else if trimmed.starts_with('{') {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .map_err(|e| Error::data(path, format!("line {}: malformed JSON line: {e} (expected one JSON object per line)", n + 1)))?;
            out.push(Record { loc: format!("line {}", n + 1), index: out.len(), value });
        }
        Ok(out)
    } else {
        Err(Error::data(path, "expected a JSON array ('[') or JSON lines ('{' per line)"))
    }
}

impl Record {
    /// The record as a JSON object with where it is, else an error naming what it is.
    pub fn into_object(self, path: &Path) -> Result<(String, serde_json::Map<String, Value>)> {
        match self.value {
            Value::Object(m) => Ok((self.loc, m)),
            other => Err(Error::data(path, format!("{}: expected a JSON object, found {}", self.loc, type_name(&other)))),
        }
    }

    fn obj(&self, path: &Path) -> Result<&serde_json::Map<String, Value>> {
        self.value.as_object().ok_or_else(|| Error::data(path, format!("{}: expected a JSON object, found {}", self.loc, type_name(&self.value))))
    }

    /// A required string field.
    pub fn str(&self, path: &Path, field: &str) -> Result<String> {
        let obj = self.obj(path)?;
        match obj.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::data(path, format!("{}: field '{field}' is {}, expected a string", self.loc, type_name(other)))),
            None => Err(self.missing(path, field)),
        }
    }

    /// An optional string field (absent or null gives None; other types are an error).
    pub fn opt_str(&self, path: &Path, field: &str) -> Result<Option<String>> {
        match self.obj(path)?.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(Error::data(path, format!("{}: field '{field}' is {}, expected a string", self.loc, type_name(other)))),
        }
    }

    /// A required number field (SVAMP's `Answer`), accepted as a JSON number or numeric string.
    pub fn number(&self, path: &Path, field: &str) -> Result<f64> {
        match self.obj(path)?.get(field) {
            Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => Ok(s.trim().parse().unwrap()),
            Some(other) => Err(Error::data(path, format!("{}: field '{field}' is {}, expected a number", self.loc, type_name(other)))),
            None => Err(self.missing(path, field)),
        }
    }

    pub fn has(&self, field: &str) -> bool {
        self.value.get(field).is_some_and(|v| !v.is_null())
    }

    fn missing(&self, path: &Path, field: &str) -> Error {
        let present: Vec<&str> = self.value.as_object().map(|o| o.keys().map(|k| k.as_str()).collect()).unwrap_or_default();
        Error::data(path, format!("{}: missing field '{field}' (fields present: {})", self.loc, present.join(", ")))
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn gold(path: &Path, rec: &Record, raw: &str, kind: AnswerKind) -> Result<String> {
    canonical_gold(raw, kind).ok_or_else(|| Error::data(path, format!("{}: gold answer '{raw}' is not a valid {} answer", rec.loc, kind.name())))
}

static CHOICE_MARK: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|[\s,])\(?([A-E])[.:)]\s*").unwrap());

/// Parse the answer choices out of a question that lists them after "Answer choices:".
pub fn parse_choices(question: &str) -> Vec<String> {
    let lower = question.to_ascii_lowercase();
    let Some(i) = lower.find("answer choices:") else { return Vec::new() };
    let tail = &question[i + "answer choices:".len()..];
    let marks: Vec<(usize, usize, char)> = CHOICE_MARK
        .captures_iter(tail)
        .map(|c| {
            let m = c.get(0).unwrap();
            (m.start(), m.end(), c[1].chars().next().unwrap())
        })
        .collect();
    // Keep only the run A, B, C, ... in order; a stray capital letter inside a choice is not a marker.
    let mut out = Vec::new();
    let mut expect = 'A';
    let mut kept: Vec<(usize, usize)> = Vec::new();
    for (s, e, c) in marks {
        if c == expect {
            kept.push((s, e));
            expect = (expect as u8 + 1) as char;
        }
    }
    for (k, &(_, e)) in kept.iter().enumerate() {
        let end = kept.get(k + 1).map(|&(s, _)| s).unwrap_or(tail.len());
        out.push(tail[e..end].trim().trim_end_matches(',').trim().to_string());
    }
    out
}

/// The files (relative to the data dir) [`load_task`] reads for a task and split: hashed into a
/// sweep point's provenance. Empty for generated `arith` and for a split the release lacks.
pub fn task_files(task: Task, split: &str) -> Vec<&'static str> {
    match (task, split) {
        (Task::Svamp, "test") => vec!["test/svamp/SVAMP_test.json"],
        (Task::Svamp, "all") => vec!["test/svamp/SVAMP.json"],
        (Task::Svamp, "train") => vec!["test/svamp/SVAMP.json", "test/svamp/SVAMP_test.json"],
        (Task::Gsm8k, "test") => vec!["test/gsm8k/test.jsonl"],
        (Task::Gsm8k, "train") => vec!["test/gsm8k/train.jsonl"],
        (Task::Aqua, "test") => vec!["test/aqua/test.json"],
        (Task::Math, "test") => vec!["test/math/test.jsonl"],
        (Task::Math, "full") => vec!["test/math/full/test.jsonl"],
        (Task::Csqa, "test") => vec!["paper/eval/csqa_test.json"],
        (Task::Obqa, "test") => vec!["paper/eval/openbookQA_test.json"],
        (Task::StrategyQa, "test") => vec!["paper/eval/strategyQA_test.json"],
        _ => Vec::new(),
    }
}

/// Load one of the seven test sets (or a train split where the release has one).
pub fn load_task(dir: &DataDir, task: Task, split: &str) -> Result<Vec<Example>> {
    let bad_split = |have: &str| {
        usage!(
            "{} has no '{split}' split in the release (available: {have}); for a held-out set use \
             dataset(...).split(test_fraction, seed)",
            task.name()
        )
    };
    match task {
        Task::Svamp => match split {
            "test" => load_svamp(&dir.path("test/svamp/SVAMP_test.json"), None),
            "all" => load_svamp(&dir.path("test/svamp/SVAMP.json"), None),
            "train" => {
                let test = load_svamp(&dir.path("test/svamp/SVAMP_test.json"), None)?;
                let test_ids: HashSet<String> = test.into_iter().map(|e| e.id).collect();
                load_svamp(&dir.path("test/svamp/SVAMP.json"), Some(&test_ids))
            }
            _ => Err(bad_split("test, train, all")),
        },
        Task::Gsm8k => match split {
            "test" => load_gsm8k(&dir.path("test/gsm8k/test.jsonl"), "test"),
            "train" => load_gsm8k(&dir.path("test/gsm8k/train.jsonl"), "train"),
            _ => Err(bad_split("test, train")),
        },
        Task::Aqua => match split {
            "test" => load_aqua(&dir.path("test/aqua/test.json")),
            _ => Err(bad_split("test")),
        },
        Task::Math => match split {
            "test" => load_math500(&dir.path("test/math/test.jsonl")),
            "full" => load_math_full(&dir.path("test/math/full/test.jsonl")),
            _ => Err(bad_split("test (MATH-500), full (5000)")),
        },
        Task::Csqa => match split {
            "test" => load_labelled(&dir.path("paper/eval/csqa_test.json"), "csqa", AnswerKind::Choice),
            _ => Err(bad_split("test")),
        },
        Task::Obqa => match split {
            "test" => load_labelled(&dir.path("paper/eval/openbookQA_test.json"), "obqa", AnswerKind::Choice),
            _ => Err(bad_split("test")),
        },
        Task::StrategyQa => match split {
            "test" => load_labelled(&dir.path("paper/eval/strategyQA_test.json"), "strategyqa", AnswerKind::Bool),
            _ => Err(bad_split("test")),
        },
        Task::Arith => Err(usage!("arith is generated, not loaded from files")),
        Task::User(_) => Err(usage!("a user test set is read from its own file: dataset(path, #{{...}}) or --data FILE")),
    }
}

/// SVAMP: `{ID, Body, Question, Answer}`; the question shown is `Body + " " + Question`.
pub fn load_svamp(path: &Path, exclude_ids: Option<&HashSet<String>>) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for rec in read_records(path)? {
        let id = rec.str(path, "ID")?;
        if exclude_ids.is_some_and(|ex| ex.contains(&id)) {
            continue;
        }
        let body = rec.str(path, "Body")?;
        let q = rec.str(path, "Question")?;
        let answer = rec.number(path, "Answer")?;
        out.push(Example {
            id,
            question: format!("{} {}", body.trim_end(), q.trim()),
            choices: vec![],
            answer: gold(path, &rec, &answer.to_string(), AnswerKind::Number)?,
            kind: AnswerKind::Number,
        });
    }
    Ok(out)
}

/// GSM8K: `{question, answer}` where the answer ends in `#### <number>`.
pub fn load_gsm8k(path: &Path, split: &str) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            let answer = rec.str(path, "answer")?;
            let Some((_, last)) = answer.rsplit_once("####") else {
                return Err(Error::data(path, format!("{}: field 'answer' has no '#### <number>' line", rec.loc)));
            };
            Ok(Example {
                id: format!("gsm8k-{split}-{}", rec.index),
                question: rec.str(path, "question")?,
                choices: vec![],
                answer: gold(path, rec, last, AnswerKind::Number)?,
                kind: AnswerKind::Number,
            })
        })
        .collect()
}

/// AQuA: `{question, options ["A)21", ...], correct}`. The question is written the way the
/// paper's training files write it: `... Answer Choices: (A) 21 (B) ...`.
pub fn load_aqua(path: &Path) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            let options = match rec.value.get("options") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|o| o.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Error::data(path, format!("{}: 'options' must hold strings", rec.loc)))?,
                Some(_) => return Err(Error::data(path, format!("{}: field 'options' is not an array", rec.loc))),
                None => return Err(Error::data(path, format!("{}: missing field 'options'", rec.loc))),
            };
            let choices: Vec<String> = options.iter().map(|o| o.split_once(')').map(|(_, t)| t.trim().to_string()).unwrap_or_else(|| o.clone())).collect();
            let listed: Vec<String> = choices.iter().enumerate().map(|(i, c)| format!("({}) {c}", (b'A' + i as u8) as char)).collect();
            Ok(Example {
                id: format!("aqua-test-{}", rec.index),
                question: format!("{} Answer Choices: {}", rec.str(path, "question")?.trim(), listed.join(" ")),
                choices,
                answer: gold(path, rec, &rec.str(path, "correct")?, AnswerKind::Choice)?,
                kind: AnswerKind::Choice,
            })
        })
        .collect()
}

/// MATH-500: `{problem, answer, unique_id, ...}`.
pub fn load_math500(path: &Path) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            Ok(Example {
                id: rec.str(path, "unique_id")?,
                question: rec.str(path, "problem")?,
                choices: vec![],
                answer: gold(path, rec, &rec.str(path, "answer")?, AnswerKind::Latex)?,
                kind: AnswerKind::Latex,
            })
        })
        .collect()
}

/// Full MATH test: `{problem, solution, idx}`; the gold answer is the last `\boxed{}` of the solution.
pub fn load_math_full(path: &Path) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            let solution = rec.str(path, "solution")?;
            let boxed = find_boxed(&solution).ok_or_else(|| Error::data(path, format!("{}: solution has no \\boxed{{}} answer", rec.loc)))?;
            let id = match rec.value.get("idx") {
                Some(v) => format!("math-full-{v}"),
                None => format!("math-full-{}", rec.index),
            };
            Ok(Example {
                id,
                question: rec.str(path, "problem")?,
                choices: vec![],
                answer: gold(path, rec, &boxed, AnswerKind::Latex)?,
                kind: AnswerKind::Latex,
            })
        })
        .collect()
}

/// The paper's commonsense eval files: `{instruction, label}`.
pub fn load_labelled(path: &Path, name: &str, kind: AnswerKind) -> Result<Vec<Example>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            let question = rec.str(path, "instruction")?;
            Ok(Example {
                id: format!("{name}-test-{}", rec.index),
                choices: parse_choices(&question),
                question,
                answer: gold(path, rec, &rec.str(path, "label")?, kind)?,
                kind,
            })
        })
        .collect()
}

/// One prompt/response pair of an Alpaca-style training file.
#[derive(Clone, Debug)]
pub struct AlpacaPair {
    pub index: usize,
    pub prompt: String,
    /// None when the record lacks the response column (a known defect of one release file).
    pub response: Option<String>,
    /// MATH files carry the final answer in `output` next to the teacher column.
    pub answer: Option<String>,
}

/// Read an Alpaca-style file with the given prompt and response columns. A record without the
/// prompt column is an error; one without the response column yields `response: None` so the
/// caller can decide (the catalog skips and counts them).
pub fn load_alpaca(path: &Path, prompt: &str, response: &str) -> Result<Vec<AlpacaPair>> {
    let records = read_records(path)?;
    let mut out = Vec::with_capacity(records.len());
    for rec in &records {
        let p = rec.str(path, prompt)?;
        let r = if rec.has(response) { Some(rec.str(path, response)?) } else { None };
        let answer = if response != "output" { rec.opt_str(path, "output")? } else { None };
        out.push(AlpacaPair { index: rec.index, prompt: p, response: r, answer });
    }
    Ok(out)
}

/// The question text of any record we know: `instruction`, `question`, `problem`, or SVAMP's
/// `Body` + `Question`. Used by the contamination check on arbitrary files.
pub fn load_questions(path: &Path) -> Result<Vec<String>> {
    read_records(path)?
        .iter()
        .map(|rec| {
            for f in ["instruction", "question", "problem"] {
                if rec.has(f) {
                    return rec.str(path, f);
                }
            }
            if rec.has("Body") && rec.has("Question") {
                return Ok(format!("{} {}", rec.str(path, "Body")?.trim_end(), rec.str(path, "Question")?.trim()));
            }
            Err(Error::data(path, format!("{}: no question field: expected 'instruction', 'question', 'problem' or 'Body'+'Question'", rec.loc)))
        })
        .collect()
}
