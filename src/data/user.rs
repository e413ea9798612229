//! A user's own test set, from a file (JSON array, JSON lines, CSV, Parquet) or a frame, as a
//! [`Dataset`] of [`Task::User`]: scored by its kind's rule like the built-in sets.
//!
//! Invariants:
//! - Every example has a question, a gold answer valid for the set's kind (canonical for number,
//!   choice and bool; trimmed text for text; normalised LaTeX for latex) and an id unique in the
//!   set: the `id` column's, else `<name>-<row>`.
//! - A question with choices shows them the way the built-in choice sets do
//!   (`… Answer Choices: (A) x (B) y`), so the paper's prompts and extractors read it unchanged.
//! - Bad input is one error naming the source, the rows and the columns found: a mapping naming a
//!   missing column, rows without a question or answer (counted), answers that are not of the
//!   kind (counted, the first three shown), duplicate ids, an empty file, a file in no format.
//!   Never a partial or empty set.
//! - What was guessed (the format of `auto`, the kind when none is given) is printed on stderr.

use std::collections::HashMap;
use std::path::Path;

use polars::prelude::AnyValue;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::loaders::{parse_choices, read_records};
use super::{AnswerKind, Dataset, Example, Task};
use crate::answer::canonical_gold;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::usage;

crate::choices! {
    /// How a test set file is read: `auto` (from the extension, else the first bytes; said on
    /// stderr), `json` (a JSON array or JSON lines), `jsonl`, `csv` (with a header) or `parquet`.
    #[derive(Default)]
    pub enum TestFormat("format") {
        #[default]
        Auto = "auto",
        Json = "json",
        Jsonl = "jsonl",
        Csv = "csv",
        Parquet = "parquet",
    }
}

/// The mapping from a file's or frame's columns to a test set: `dataset(path, #{...})`,
/// `cotlab eval --data FILE ...`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserOptions {
    pub format: TestFormat,
    /// The question column (default: the first of question, problem, input, prompt, query, instruction).
    pub question: Option<String>,
    /// The answer column (default: the first of answer, label, target, answerKey, output, gold).
    pub answer: Option<String>,
    /// The choices column, a list or a string (default: choices or options when present).
    pub choices: Option<String>,
    /// number, choice, bool, latex or text (default: inferred from the answers, and said).
    pub kind: Option<String>,
    /// The set's name (default: the file's stem; a frame's is `frame`).
    pub name: Option<String>,
    /// The split's label (default `test`): part of the default eval dir name.
    pub split: Option<String>,
    /// Keep only the first `limit` examples (after shuffling, when `seed` is given).
    pub limit: Option<usize>,
    /// Shuffle with this seed before `limit`.
    pub seed: Option<u64>,
}

const QUESTION_COLUMNS: [&str; 6] = ["question", "problem", "input", "prompt", "query", "instruction"];
const ANSWER_COLUMNS: [&str; 6] = ["answer", "label", "target", "answerKey", "output", "gold"];
const CHOICE_COLUMNS: [&str; 2] = ["choices", "options"];
/// The letters the extractors know.
const MAX_CHOICES: usize = 5;

/// Rows with their column names, whatever they were read from.
struct Table {
    /// The path, or "frame": where errors point.
    source: String,
    columns: Vec<String>,
    /// (where the row is, for messages: "line 3", "record 2", "row 4"; its cells by column).
    rows: Vec<(String, Map<String, Value>)>,
}

/// Read a test set file (the caller has checked the path against the sandbox).
pub fn load_user_file(path: &Path, opts: &UserOptions) -> Result<Dataset> {
    let table = read_table(path, opts.format)?;
    let name = opts.name.clone().unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "data".into()));
    build(table, &name, opts)
}

/// A frame as a test set (columns mapped as for a file).
pub fn load_user_frame(frame: &Frame, opts: &UserOptions) -> Result<Dataset> {
    let table = frame_table(frame, "frame", |i| format!("row {i}"))?;
    build(table, opts.name.as_deref().unwrap_or("frame"), opts)
}

fn read_table(path: &Path, format: TestFormat) -> Result<Table> {
    let format = match format {
        TestFormat::Auto => {
            let f = sniff(path)?;
            eprintln!("{}: read as {} (format auto; give format to choose)", path.display(), f.name());
            f
        }
        f => f,
    };
    match format {
        TestFormat::Json | TestFormat::Jsonl | TestFormat::Auto => json_table(path),
        // The header is line 1: row i is line i + 2.
        TestFormat::Csv => frame_table(&Frame::read_csv(path)?, &path.display().to_string(), |i| format!("line {}", i + 2)),
        TestFormat::Parquet => frame_table(&Frame::read_parquet(path)?, &path.display().to_string(), |i| format!("row {i}")),
    }
}

/// The format of `auto`: the extension, else the first bytes (`PAR1`, `[`/`{`, a header line with commas).
fn sniff(path: &Path) -> Result<TestFormat> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "json" => return Ok(TestFormat::Json),
        "jsonl" | "ndjson" => return Ok(TestFormat::Jsonl),
        "csv" => return Ok(TestFormat::Csv),
        "parquet" | "pq" => return Ok(TestFormat::Parquet),
        _ => {}
    }
    let bytes = crate::paths::read_bytes(path)?;
    if bytes.starts_with(b"PAR1") {
        return Ok(TestFormat::Parquet);
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_string();
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if start.is_empty() {
        return Err(Error::data(path, "file is empty: expected a test set (JSON array, JSON lines, CSV or Parquet)"));
    }
    if start.starts_with('[') || start.starts_with('{') {
        return Ok(TestFormat::Json);
    }
    if start.lines().next().is_some_and(|l| l.contains(',')) {
        return Ok(TestFormat::Csv);
    }
    Err(Error::data(path, "in none of the test set formats (a JSON array, JSON lines, CSV with a header, Parquet): give format: json, jsonl, csv or parquet"))
}

fn json_table(path: &Path) -> Result<Table> {
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for rec in read_records(path)? {
        let Value::Object(obj) = rec.value else {
            return Err(Error::data(path, format!("{}: expected a JSON object (one test example), found {}", rec.loc, rec.value)));
        };
        for k in obj.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        rows.push((rec.loc, obj));
    }
    Ok(Table { source: path.display().to_string(), columns, rows })
}

fn frame_table(frame: &Frame, source: &str, loc: impl Fn(usize) -> String) -> Result<Table> {
    let columns = frame.columns();
    let mut rows: Vec<(String, Map<String, Value>)> = (0..frame.height()).map(|i| (loc(i), Map::new())).collect();
    for name in &columns {
        let col = frame.0.column(name).map_err(|e| usage!("{source}: column '{name}': {e}"))?;
        for (i, row) in rows.iter_mut().enumerate() {
            let v = col.get(i).map_err(|e| usage!("{source}: {}, column '{name}': {e}", row.0))?;
            row.1.insert(name.clone(), json_of(&v));
        }
    }
    Ok(Table { source: source.to_string(), columns, rows })
}

/// A polars cell as JSON: lists (a Parquet `choices` column) stay lists.
fn json_of(v: &AnyValue) -> Value {
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Int8(_) | AnyValue::Int16(_) | AnyValue::Int32(_) | AnyValue::Int64(_) => Value::from(v.extract::<i64>().unwrap_or_default()),
        AnyValue::UInt8(_) | AnyValue::UInt16(_) | AnyValue::UInt32(_) | AnyValue::UInt64(_) => Value::from(v.extract::<u64>().unwrap_or_default()),
        AnyValue::Float32(_) | AnyValue::Float64(_) => v.extract::<f64>().map(Value::from).unwrap_or(Value::Null),
        AnyValue::List(s) => Value::Array(s.iter().map(|x| json_of(&x)).collect()),
        other => Value::String(other.to_string()),
    }
}

/// The column for `option`: the one named (an error listing the columns found when absent), else
/// the first default present.
fn pick_column(t: &Table, option: &str, given: Option<&str>, defaults: &[&str]) -> Result<Option<String>> {
    let found = || t.columns.join(", ");
    match given {
        Some(c) if t.columns.iter().any(|x| x == c) => Ok(Some(c.to_string())),
        Some(c) => Err(usage!("{}: no column '{c}' for {option} (columns found: {}); name one of them", t.source, found())),
        None => Ok(defaults.iter().find(|d| t.columns.iter().any(|x| x == *d)).map(|d| d.to_string())),
    }
}

fn required_column(t: &Table, option: &str, given: Option<&str>, defaults: &[&str]) -> Result<String> {
    pick_column(t, option, given, defaults)?.ok_or_else(|| {
        usage!(
            "{}: no {option} column (looked for {}; columns found: {}): name it with {option}: \"COLUMN\" (CLI: --{option}-col)",
            t.source,
            defaults.join(", "),
            t.columns.join(", ")
        )
    })
}

/// A cell as text: strings as they are, numbers as written, booleans as `True`/`False`.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        other => Some(other.to_string()),
    }
}

/// A choices cell: a list, Hugging Face's `{text: [...], label: [...]}`, or a string (a JSON
/// list, `(A) x (B) y`, or items split by `|`, `;` or newlines).
fn choices_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| text_of(Some(x))).collect(),
        Some(Value::Object(o)) => choices_of(o.get("text")),
        Some(Value::String(s)) => choices_of_text(s),
        _ => Vec::new(),
    }
}

fn choices_of_text(s: &str) -> Vec<String> {
    let s = s.trim();
    if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(s) {
        return choices_of(Some(&Value::Array(a)));
    }
    let lettered = parse_choices(&format!("Answer Choices: {s}"));
    if lettered.len() > 1 {
        return lettered;
    }
    let sep = ['|', ';', '\n'].into_iter().find(|c| s.contains(*c));
    match sep {
        Some(c) => s.split(c).map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect(),
        None if s.is_empty() => Vec::new(),
        None => vec![s.to_string()],
    }
}

/// One row before its answer is judged against the kind.
struct Raw {
    loc: String,
    id: String,
    question: String,
    answer: String,
    choices: Vec<String>,
}

fn build(t: Table, name: &str, opts: &UserOptions) -> Result<Dataset> {
    if name.trim().is_empty() {
        return Err(usage!("{}: the test set's name is empty: give name", t.source));
    }
    if t.rows.is_empty() {
        return Err(usage!("{}: no rows: a test set needs at least one example", t.source));
    }
    let qcol = required_column(&t, "question", opts.question.as_deref(), &QUESTION_COLUMNS)?;
    let acol = required_column(&t, "answer", opts.answer.as_deref(), &ANSWER_COLUMNS)?;
    let ccol = pick_column(&t, "choices", opts.choices.as_deref(), &CHOICE_COLUMNS)?;
    let raws = raw_rows(&t, name, &qcol, &acol, ccol.as_deref())?;
    no_duplicate_ids(&t.source, &raws)?;
    let kind = match &opts.kind {
        Some(k) => AnswerKind::parse(k).map_err(crate::error::Error::Usage)?,
        None => {
            let (kind, why) = infer_kind(&raws);
            eprintln!("{}: kind {} ({why}; give kind to choose another)", t.source, kind.name());
            kind
        }
    };
    let examples = examples(&t.source, raws, kind, &acol)?;
    let split = opts.split.clone().unwrap_or_else(|| "test".into());
    let ds = Dataset { name: name.to_string(), split, task: Task::User(kind), examples, subset: None };
    Ok(ds.apply(opts.seed, opts.limit))
}

/// Every row's question, answer, choices and id; rows without a question or an answer are one
/// counted error each.
fn raw_rows(t: &Table, name: &str, qcol: &str, acol: &str, ccol: Option<&str>) -> Result<Vec<Raw>> {
    let (mut no_q, mut no_a) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(t.rows.len());
    for (i, (loc, row)) in t.rows.iter().enumerate() {
        let q = text_of(row.get(qcol));
        let a = text_of(row.get(acol));
        if q.is_none() {
            no_q.push(loc.clone());
        }
        if a.is_none() {
            no_a.push(loc.clone());
        }
        let (Some(question), Some(answer)) = (q, a) else { continue };
        let id = text_of(row.get("id")).unwrap_or_else(|| format!("{name}-{i}"));
        let choices = ccol.map(|c| choices_of(row.get(c))).unwrap_or_default();
        out.push(Raw { loc: loc.clone(), id, question, answer, choices });
    }
    for (missing, col, what) in [(&no_q, qcol, "question"), (&no_a, acol, "answer")] {
        if !missing.is_empty() {
            return Err(usage!(
                "{}: {} of {} rows have no {what} (column '{col}' empty or absent): {}; fill them in or drop those rows",
                t.source,
                missing.len(),
                t.rows.len(),
                first_few(missing, 10)
            ));
        }
    }
    Ok(out)
}

fn first_few(items: &[String], n: usize) -> String {
    let shown = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        format!("{shown}, … ({} more)", items.len() - n)
    } else {
        shown
    }
}

fn no_duplicate_ids(source: &str, raws: &[Raw]) -> Result<()> {
    let mut first: HashMap<&str, &str> = HashMap::new();
    let mut dups = Vec::new();
    for r in raws {
        if let Some(at) = first.insert(&r.id, &r.loc) {
            dups.push(format!("'{}' ({at} and {})", r.id, r.loc));
        }
    }
    if dups.is_empty() {
        return Ok(());
    }
    Err(usage!("{source}: {} duplicate ids: {}; ids must be unique (drop the 'id' column to number the rows instead)", dups.len(), first_few(&dups, 3)))
}

/// The kind the rows' answers are all of ([`AnswerKind::infer`]).
fn infer_kind(raws: &[Raw]) -> (AnswerKind, &'static str) {
    AnswerKind::infer(raws.iter().map(|r| (r.answer.as_str(), !r.choices.is_empty() || !parse_choices(&r.question).is_empty())))
}

/// The gold answer of `r` for `kind`, or None when it is not one.
fn gold_of(r: &Raw, kind: AnswerKind) -> Option<String> {
    match kind {
        AnswerKind::Choice => {
            let from_text = || r.choices.iter().position(|c| c.trim().eq_ignore_ascii_case(&r.answer)).map(|i| (b'A' + i as u8) as char);
            let c = crate::answer::choice_letter(&r.answer).or_else(from_text)?;
            let n = if r.choices.is_empty() { MAX_CHOICES } else { r.choices.len() };
            ((c as u8 - b'A') < n as u8).then(|| c.to_string())
        }
        // Kept as written (shown in samples); both protocols normalise it when comparing.
        AnswerKind::Text => canonical_gold(&r.answer, kind).map(|_| r.answer.clone()),
        AnswerKind::Latex => canonical_gold(&r.answer, kind).filter(|s| !s.is_empty()),
        _ => canonical_gold(&r.answer, kind),
    }
}

fn examples(source: &str, raws: Vec<Raw>, kind: AnswerKind, acol: &str) -> Result<Vec<Example>> {
    let too_many: Vec<String> = raws.iter().filter(|r| r.choices.len() > MAX_CHOICES).map(|r| format!("{} ({} choices)", r.loc, r.choices.len())).collect();
    if !too_many.is_empty() {
        return Err(usage!("{source}: {} rows have more than {MAX_CHOICES} choices (the answer letters are A-E): {}", too_many.len(), first_few(&too_many, 3)));
    }
    let bad: Vec<String> = raws.iter().filter(|r| gold_of(r, kind).is_none()).map(|r| format!("{}: {:?}", r.loc, r.answer)).collect();
    if !bad.is_empty() {
        let hint = match kind {
            AnswerKind::Choice => "a letter A-E within the row's choices, or the text of one choice",
            AnswerKind::Number => "a number",
            AnswerKind::Bool => "yes/no or true/false",
            AnswerKind::Latex | AnswerKind::Text => "non-empty",
        };
        return Err(usage!(
            "{source}: {} of {} answers (column '{acol}') are not {} answers ({hint}): {}; fix them, or give another kind",
            bad.len(),
            raws.len(),
            kind.name(),
            first_few(&bad, 3)
        ));
    }
    Ok(raws
        .into_iter()
        .map(|r| {
            let answer = gold_of(&r, kind).expect("checked above");
            let listed = !r.choices.is_empty() && !r.question.to_ascii_lowercase().contains("answer choices:");
            let question = if listed { with_choices(&r.question, &r.choices) } else { r.question.clone() };
            let choices = if r.choices.is_empty() { parse_choices(&r.question) } else { r.choices };
            Example { id: r.id, question, choices, answer, kind }
        })
        .collect())
}

/// The question as AQuA's is shown: `… Answer Choices: (A) x (B) y`.
fn with_choices(question: &str, choices: &[String]) -> String {
    let listed: Vec<String> = choices.iter().enumerate().map(|(i, c)| format!("({}) {c}", (b'A' + i as u8) as char)).collect();
    format!("{} Answer Choices: {}", question.trim(), listed.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(answer: &str, choices: &[&str]) -> Raw {
        Raw { loc: "line 1".into(), id: "x".into(), question: "Q?".into(), answer: answer.into(), choices: choices.iter().map(|c| c.to_string()).collect() }
    }

    #[test]
    fn kind_is_inferred_from_every_answer() {
        let k = |rs: Vec<Raw>| infer_kind(&rs).0;
        assert_eq!(k(vec![raw("3", &[]), raw("1,200.5", &[])]), AnswerKind::Number);
        assert_eq!(k(vec![raw("B", &["x", "y"]), raw("(a)", &["x", "y"])]), AnswerKind::Choice);
        // Letters without choices are not multiple choice.
        assert_eq!(k(vec![raw("B", &[]), raw("A", &[])]), AnswerKind::Text);
        assert_eq!(k(vec![raw("yes", &[]), raw("False", &[])]), AnswerKind::Bool);
        assert_eq!(k(vec![raw("\\frac{1}{2}", &[]), raw("3", &[])]), AnswerKind::Latex);
        assert_eq!(k(vec![raw("Paris", &[]), raw("3", &[])]), AnswerKind::Text);
    }

    #[test]
    fn choice_golds_are_letters_within_the_choices() {
        assert_eq!(gold_of(&raw("b)", &["x", "y"]), AnswerKind::Choice).as_deref(), Some("B"));
        assert_eq!(gold_of(&raw("Y", &["x", "y"]), AnswerKind::Choice).as_deref(), Some("B"));
        assert_eq!(gold_of(&raw("C", &["x", "y"]), AnswerKind::Choice), None);
        assert_eq!(gold_of(&raw("Berlin", &["x", "y"]), AnswerKind::Choice), None);
    }

    #[test]
    fn choices_strings_split_every_documented_way() {
        assert_eq!(choices_of_text(r#"["red", "blue"]"#), ["red", "blue"]);
        assert_eq!(choices_of_text("(A) red (B) dark blue"), ["red", "dark blue"]);
        assert_eq!(choices_of_text("red | blue|green"), ["red", "blue", "green"]);
        assert_eq!(choices_of(Some(&serde_json::json!({"text": ["a1", "b1"], "label": ["A", "B"]}))), ["a1", "b1"]);
    }
}
