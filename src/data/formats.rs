//! The chat-data formats, read and written here and nowhere else: `alpaca`
//! (`instruction`/`input`/`output`, LLaMA-Factory), `sharegpt` (`conversations` of `from`/`value`,
//! LLaMA-Factory's tags), `messages` (OpenAI chat: `messages` of `role`/`content`),
//! `prompt-completion` (TRL: `prompt`/`completion`), and named columns (`jsonl`, `csv`,
//! `parquet`, or a frame) mapped by `question`/`rationale`/`answer`.
//!
//! Invariants:
//! * A JSON file is a JSON array of objects or JSON lines; `auto` picks the format from the file's
//!   extension (csv, parquet) or the first record's keys, and says it chose.
//! * Reading yields every record or an error: no question or no rationale is a counted error
//!   naming the records; a missing column lists the columns found; duplicate ids and an empty file
//!   are errors. Never an empty corpus.
//! * A rationale is one question and one answer: a system prompt or earlier turns are left out
//!   and counted (`UserData::context_dropped`).
//! * Writing keeps each rationale's `id`, `answer` (gold) and provenance (`cotlab` object) beside
//!   the format's own fields, so a written file reads back to the same questions, rationales and
//!   answers; `.json` is written as one array, anything else as JSON lines.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::corpus::{Corpus, Origin, Rationale, Subject, UserData};
use super::loaders::{decode_text, parse_records};
use crate::answer::{canonical_gold, extract_answer, AnswerKind};
use crate::cot::Format;
use crate::error::{Error, Result};
use crate::frame::{Cell, Frame};
use crate::usage;

crate::choices! {
    /// How a corpus file is laid out.
    #[derive(Default)]
    pub enum CorpusFormat("format") {
        /// Sniffed: `.csv`/`.parquet` by extension, else from the first JSON record's keys.
        #[default]
        Auto = "auto",
        Alpaca = "alpaca",
        Sharegpt = "sharegpt",
        Messages = "messages",
        PromptCompletion = "prompt-completion",
        Jsonl = "jsonl",
        Csv = "csv",
        Parquet = "parquet",
    }
}

impl CorpusFormat {
    /// The formats a corpus can be written in (the chat formats).
    pub const WRITABLE: [CorpusFormat; 4] = [CorpusFormat::Alpaca, CorpusFormat::Sharegpt, CorpusFormat::Messages, CorpusFormat::PromptCompletion];

    fn named_columns(self) -> bool {
        matches!(self, CorpusFormat::Jsonl | CorpusFormat::Csv | CorpusFormat::Parquet)
    }
}

/// Options of `corpus(path_or_frame, #{...})` and `cotlab convert`: the format, which columns
/// hold what (named-column formats; `answer` also names the extra answer field of a chat
/// format), the answer kind and the corpus's name.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorpusOptions {
    pub format: CorpusFormat,
    pub question: Option<String>,
    pub rationale: Option<String>,
    pub answer: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

/// One record as read: where it is (1-based, a line for JSON lines), and its fields.
#[derive(Clone, Debug, Default)]
struct Record {
    /// 0-based index among the records (the rationale's `origin.row`).
    row: usize,
    /// How a message names it: `record 3` or `line 3`.
    at: String,
    id: Option<String>,
    question: Option<String>,
    rationale: Option<String>,
    answer: Option<String>,
    context_dropped: bool,
}

/// A JSON value as text: strings as they are, numbers and bools written out, null as none.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The chat format a record's keys say, if any.
fn sniff(first: &Map<String, Value>) -> Option<CorpusFormat> {
    let has = |k: &str| first.contains_key(k);
    if has("conversations") {
        Some(CorpusFormat::Sharegpt)
    } else if has("messages") {
        Some(CorpusFormat::Messages)
    } else if has("instruction") && has("output") {
        Some(CorpusFormat::Alpaca)
    } else if has("prompt") && has("completion") {
        Some(CorpusFormat::PromptCompletion)
    } else {
        None
    }
}

/// A turn's text: a string, or OpenAI's list of `{type: "text", text}` parts joined.
fn content_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Array(parts) => {
            let texts: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            (!texts.is_empty()).then(|| texts.concat())
        }
        other => text_of(Some(other)),
    }
}

/// (question, rationale, context dropped) of a conversation: the last user turn and the
/// assistant turn after it. `roles` = (role key, content key, user tags, assistant tags).
fn conversation(turns: &[Value], role_key: &str, content_key: &str, users: &[&str], assistants: &[&str]) -> (Option<String>, Option<String>, bool) {
    let role = |t: &Value| t.get(role_key).and_then(Value::as_str).unwrap_or("").to_string();
    let Some(last) = turns.last() else { return (None, None, false) };
    if users.contains(&role(last).as_str()) {
        // A question nobody answered: said as a record without a rationale.
        return (content_text(last.get(content_key)), None, turns.len() > 1);
    }
    if !assistants.contains(&role(last).as_str()) {
        return (None, None, false);
    }
    let n = turns.len();
    let question = (n >= 2 && users.contains(&role(&turns[n - 2]).as_str())).then(|| content_text(turns[n - 2].get(content_key))).flatten();
    (question, content_text(last.get(content_key)), n > 2)
}

/// A record of chat format `format`, with `answer_key`'s extra field as its answer.
fn chat_record(format: CorpusFormat, row: usize, at: String, m: &Map<String, Value>, answer_key: &str) -> Record {
    let mut r = Record { row, at, id: text_of(m.get("id")), answer: text_of(m.get(answer_key)), ..Default::default() };
    let turns = |k: &str| m.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    match format {
        CorpusFormat::Alpaca => {
            let instruction = text_of(m.get("instruction")).filter(|s| !s.trim().is_empty());
            let input = text_of(m.get("input")).filter(|s| !s.trim().is_empty());
            // LLaMA-Factory's converter: the prompt is instruction and input joined by a newline.
            r.question = match (instruction, input) {
                (Some(i), Some(x)) => Some(format!("{i}\n{x}")),
                (i, x) => i.or(x),
            };
            r.rationale = text_of(m.get("output"));
            let history = m.get("history").and_then(Value::as_array).is_some_and(|h| !h.is_empty());
            r.context_dropped = history || text_of(m.get("system")).is_some_and(|s| !s.is_empty());
        }
        CorpusFormat::Sharegpt => {
            let mut t = turns("conversations");
            let system = t.first().is_some_and(|x| x.get("from").and_then(Value::as_str) == Some("system"));
            if system {
                t.remove(0);
            }
            let (q, a, earlier) = conversation(&t, "from", "value", &["human", "user"], &["gpt", "assistant"]);
            (r.question, r.rationale) = (q, a);
            r.context_dropped = system || earlier || text_of(m.get("system")).is_some_and(|s| !s.is_empty());
        }
        CorpusFormat::Messages => {
            let mut t = turns("messages");
            let system = t.first().is_some_and(|x| matches!(x.get("role").and_then(Value::as_str), Some("system" | "developer")));
            if system {
                t.remove(0);
            }
            let (q, a, earlier) = conversation(&t, "role", "content", &["user"], &["assistant"]);
            (r.question, r.rationale, r.context_dropped) = (q, a, system || earlier);
        }
        CorpusFormat::PromptCompletion => {
            // TRL's standard form has strings; its conversational form lists messages.
            let last_content = |v: Option<&Value>| match v {
                Some(Value::Array(t)) => t.last().and_then(|x| content_text(x.get("content"))),
                other => text_of(other),
            };
            r.question = last_content(m.get("prompt"));
            r.rationale = last_content(m.get("completion"));
            r.context_dropped = m.get("prompt").and_then(Value::as_array).is_some_and(|t| t.len() > 1);
        }
        _ => unreachable!("named columns are read by `column_records`"),
    }
    r
}

/// The mapping's column names, defaulted: (question, rationale, answer, answer named by the user).
fn mapping(o: &CorpusOptions) -> (String, String, String, bool) {
    (
        o.question.clone().unwrap_or_else(|| "question".into()),
        o.rationale.clone().unwrap_or_else(|| "rationale".into()),
        o.answer.clone().unwrap_or_else(|| "answer".into()),
        o.answer.is_some(),
    )
}

/// A named column the mapping asks for is missing: say which, and list what is there.
fn missing_column(where_: &str, option: &str, name: &str, found: &[String]) -> Error {
    usage!("corpus: {where_} has no column '{name}' (the '{option}' mapping); columns found: {}. Name the right one: `{option}` in a script, --{option} on the command line", found.join(", "))
}

/// Records of named columns: `(at, cells by column)` rows.
fn column_records(where_: &str, columns: &[String], rows: Vec<(String, HashMap<String, Option<String>>)>, o: &CorpusOptions) -> Result<Vec<Record>> {
    let (q, ra, a, answer_named) = mapping(o);
    for (option, name) in [("question", &q), ("rationale", &ra)] {
        if !columns.contains(name) {
            return Err(missing_column(where_, option, name, columns));
        }
    }
    if answer_named && !columns.contains(&a) {
        return Err(missing_column(where_, "answer", &a, columns));
    }
    let non_empty = |s: Option<&Option<String>>| s.cloned().flatten().filter(|s| !s.trim().is_empty());
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(row, (at, cells))| Record {
            row,
            at,
            id: non_empty(cells.get("id")),
            question: non_empty(cells.get(&q)),
            rationale: non_empty(cells.get(&ra)),
            answer: non_empty(cells.get(&a)),
            context_dropped: false,
        })
        .collect())
}

fn cell_text(c: Cell) -> Option<String> {
    match c {
        Cell::Null => None,
        Cell::Bool(b) => Some(b.to_string()),
        Cell::Int(i) => Some(i.to_string()),
        Cell::Float(x) => Some(x.to_string()),
        Cell::Str(s) => Some(s),
    }
}

/// One record by field name, with where it came from (`row 3`, `line 7`).
type Fields = (String, HashMap<String, Option<String>>);

/// A frame's rows as named-column cells, and a hash of its content (column names and cells).
fn frame_rows(f: &Frame) -> Result<(Vec<String>, Vec<Fields>, String)> {
    let columns = f.columns();
    let mut h = Sha256::new();
    let mut rows: Vec<Fields> = (0..f.height()).map(|i| (format!("row {}", i + 1), HashMap::new())).collect();
    for c in &columns {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
        for (i, cell) in f.column_cells(c)?.into_iter().enumerate() {
            let t = cell_text(cell);
            // Length-prefixed, with null apart from "", so different tables never hash alike.
            match &t {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    h.update((s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
            }
            rows[i].1.insert(c.clone(), t);
        }
    }
    Ok((columns, rows, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a corpus is read from.
pub enum Input<'a> {
    File(&'a Path),
    Frame(&'a Frame),
}

/// Read a corpus from a file or a frame (see the module doc). `print`s nothing: the caller shows
/// [`UserData::summary`].
pub fn read_corpus(input: Input, o: &CorpusOptions) -> Result<Corpus> {
    let (path_text, stem, records, format, sniffed, sha) = match input {
        Input::Frame(f) => {
            if !matches!(o.format, CorpusFormat::Auto | CorpusFormat::Jsonl | CorpusFormat::Csv | CorpusFormat::Parquet) {
                return Err(usage!("corpus: a frame has named columns: drop format '{}' (or give the file)", o.format));
            }
            let (columns, rows, sha) = frame_rows(f)?;
            let records = column_records("the frame", &columns, rows, o)?;
            ("frame".to_string(), "frame".to_string(), records, CorpusFormat::Jsonl, false, sha)
        }
        Input::File(path) => {
            let (records, format, sniffed, sha) = read_file(path, o)?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "corpus".into());
            (path.display().to_string(), stem, records, format, sniffed, sha)
        }
    };
    let at_path = path_text.clone();
    let fail = |msg: String| if at_path == "frame" { usage!("corpus: the frame: {msg}") } else { Error::data(&at_path, msg) };
    if records.is_empty() {
        return Err(fail("no records: a corpus needs at least one".into()));
    }
    check_present(&records, |r| r.question.is_some(), "no question", &fail)?;
    check_present(&records, |r| r.rationale.is_some(), "no rationale (assistant turn / output)", &fail)?;
    let name = o.name.clone().unwrap_or(stem);
    let kind = decide_kind(o.kind.as_deref(), &records, &fail)?;
    let ids = ids(&records, &name, &fail)?;
    let mut golds = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    let mut no_answer = 0;
    for r in &records {
        let rationale = r.rationale.as_deref().unwrap_or_default();
        let gold = match &r.answer {
            Some(a) => match canonical_gold(a, kind) {
                Some(g) => Some(g),
                None => {
                    bad.push(format!("{}: {a:?}", r.at));
                    None
                }
            },
            None => extract_answer(rationale, kind),
        };
        no_answer += gold.is_none() as usize;
        golds.push(gold);
    }
    if !bad.is_empty() {
        return Err(fail(format!(
            "{} answers do not parse as kind {} (first: {}); give the right kind (number, choice, bool, latex, text): `kind` in a script, --kind on the command line",
            bad.len(),
            kind.name(),
            bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let context_dropped = records.iter().filter(|r| r.context_dropped).count();
    let user = Arc::new(UserData { name, kind, path: path_text.clone(), sha256: sha, format: format.name().into(), sniffed, no_answer, context_dropped });
    let subject = Subject::User(user);
    let rationales = records
        .into_iter()
        .zip(ids)
        .zip(golds)
        .map(|((r, id), gold)| Rationale {
            id,
            question: r.question.unwrap_or_default(),
            gold,
            text: r.rationale.unwrap_or_default(),
            origin: Origin { task: subject.clone(), teacher: None, level: None, format: Format::Plain, source: path_text.clone(), row: r.row },
        })
        .collect();
    Ok(Corpus { task: subject, teacher: None, level: None, format: Format::Plain, source: path_text, rationales, skipped: 0, recipe: None })
}

/// The records of a file, its format (and whether sniffed) and the SHA-256 of its bytes.
fn read_file(path: &Path, o: &CorpusOptions) -> Result<(Vec<Record>, CorpusFormat, bool, String)> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let format = match o.format {
        CorpusFormat::Auto if ext == "csv" => CorpusFormat::Csv,
        CorpusFormat::Auto if ext == "parquet" => CorpusFormat::Parquet,
        f => f,
    };
    if matches!(format, CorpusFormat::Csv | CorpusFormat::Parquet) {
        let sha = hex(&Sha256::digest(crate::paths::read_bytes(path)?));
        let frame = if format == CorpusFormat::Csv { Frame::read_csv(path)? } else { Frame::read_parquet(path)? };
        let (columns, rows, _) = frame_rows(&frame)?;
        // Line numbers: the header is line 1 (a quoted newline inside a value shifts them).
        let rows = rows
            .into_iter()
            .enumerate()
            .map(|(i, (_, c))| (if format == CorpusFormat::Csv { format!("line {}", i + 2) } else { format!("row {}", i + 1) }, c))
            .collect();
        let where_ = path.display().to_string();
        return Ok((column_records(&where_, &columns, rows, o)?, format, o.format == CorpusFormat::Auto, sha));
    }
    let bytes = crate::paths::read_bytes(path)?;
    let sha = hex(&Sha256::digest(&bytes));
    let text = decode_text(path, bytes)?;
    let objects = parse_records(path, &text)?.into_iter().map(|r| r.into_object(path)).collect::<Result<Vec<_>>>()?;
    let (format, sniffed) = match format {
        CorpusFormat::Auto => match sniff(&objects[0].1) {
            Some(f) => (f, true),
            None => {
                let (q, ra, _, _) = mapping(o);
                let keys: Vec<String> = objects[0].1.keys().cloned().collect();
                // A mapping given means named columns: a wrong name is then said as a missing column.
                let mapped = o.question.is_some() || o.rationale.is_some();
                if !(mapped || keys.contains(&q) && keys.contains(&ra)) {
                    return Err(Error::data(
                        path,
                        format!(
                            "{}: in none of the corpus formats (keys: {}): expected alpaca (instruction, input, output), sharegpt (conversations), messages, prompt-completion (prompt, completion), or named columns given by the `question` and `rationale` mapping (--question/--rationale on the command line)",
                            objects[0].0,
                            keys.join(", ")
                        ),
                    ));
                }
                (CorpusFormat::Jsonl, true)
            }
        },
        f => (f, false),
    };
    let (_, _, answer_key, _) = mapping(o);
    let records = if format.named_columns() {
        let mut columns: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for (_, m) in &objects {
            for k in m.keys() {
                if seen.insert(k.clone()) {
                    columns.push(k.clone());
                }
            }
        }
        let rows = objects.into_iter().map(|(at, m)| (at, m.iter().map(|(k, v)| (k.clone(), text_of(Some(v)))).collect())).collect();
        column_records(&path.display().to_string(), &columns, rows, o)?
    } else {
        if let Some(k) = [&o.question, &o.rationale].into_iter().flatten().next() {
            return Err(usage!(
                "corpus: format {format} fixes where the question and rationale are: drop the mapping '{k}' (it is for jsonl, csv, parquet and frames)"
            ));
        }
        let first = &objects[0];
        if sniff(&first.1) != Some(format) {
            let keys: Vec<&String> = first.1.keys().collect();
            return Err(Error::data(
                path,
                format!("{}: not {format} (keys: {}); try format: \"auto\"", first.0, keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")),
            ));
        }
        objects.into_iter().enumerate().map(|(row, (at, m))| chat_record(format, row, at, &m, &answer_key)).collect()
    };
    Ok((records, format, sniffed, sha))
}

/// Every record has the part `ok` checks, or one error counting and naming those without.
fn check_present(records: &[Record], ok: impl Fn(&Record) -> bool, what: &str, fail: &dyn Fn(String) -> Error) -> Result<()> {
    let missing: Vec<&str> = records.iter().filter(|r| !ok(r)).map(|r| r.at.as_str()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let more = if missing.len() > 5 { ", …" } else { "" };
    Err(fail(format!("{} of {} records have {what}: {}{more}; fix or remove them", missing.len(), records.len(), missing[..missing.len().min(5)].join(", "))))
}

/// The `kind` option, else one inferred from the answers: all numbers → number, all A–E →
/// choice, all yes/no/true/false → bool, else text. Without answers a kind must be given.
fn decide_kind(kind: Option<&str>, records: &[Record], fail: &dyn Fn(String) -> Error) -> Result<AnswerKind> {
    if let Some(k) = kind {
        return AnswerKind::parse(k).map_err(crate::error::Error::Usage);
    }
    let answers: Vec<&str> = records.iter().filter_map(|r| r.answer.as_deref()).collect();
    if answers.is_empty() {
        return Err(fail(
            "no answer column, so the answer is extracted from each rationale: say which kind (number, choice, bool, latex, text): #{kind: \"number\"} in a script, --kind number on the command line".into(),
        ));
    }
    // A rationale's question carries its choices in its text: a lone letter is a choice.
    Ok(AnswerKind::infer(answers.iter().map(|a| (*a, true))).0)
}

/// Each record's id (its `id`, else `<name>-<row>`), or an error naming duplicates.
fn ids(records: &[Record], name: &str, fail: &dyn Fn(String) -> Error) -> Result<Vec<String>> {
    let ids: Vec<String> = records.iter().map(|r| r.id.clone().unwrap_or_else(|| format!("{name}-{}", r.row))).collect();
    let mut first: HashMap<&str, &str> = HashMap::new();
    let mut dups = Vec::new();
    for (id, r) in ids.iter().zip(records) {
        if let Some(prev) = first.insert(id, &r.at) {
            dups.push(format!("'{id}' ({prev} and {})", r.at));
        }
    }
    if !dups.is_empty() {
        return Err(fail(format!("{} duplicate ids: {}; ids must be unique", dups.len(), dups[..dups.len().min(3)].join(", "))));
    }
    Ok(ids)
}

/// One rationale in chat format `format`, with its id, gold answer and provenance beside.
fn record_of(r: &Rationale, format: CorpusFormat) -> Value {
    let mut m = match format {
        CorpusFormat::Alpaca => json!({"instruction": r.question, "input": "", "output": r.text}),
        CorpusFormat::Sharegpt => json!({"conversations": [{"from": "human", "value": r.question}, {"from": "gpt", "value": r.text}]}),
        CorpusFormat::Messages => json!({"messages": [{"role": "user", "content": r.question}, {"role": "assistant", "content": r.text}]}),
        CorpusFormat::PromptCompletion => json!({"prompt": r.question, "completion": r.text}),
        _ => unreachable!("checked by `write_corpus`"),
    };
    let o = &r.origin;
    let sha = match &o.task {
        Subject::User(u) => Some(u.sha256.clone()),
        Subject::Task(_) => None,
    };
    let extra = json!({
        "id": r.id,
        "answer": r.gold,
        "cotlab": {"dataset": o.task.name(), "kind": o.task.kind().name(), "teacher": o.teacher, "level": o.level, "format": o.format.name(), "source": o.source, "row": o.row, "sha256": sha},
    });
    m.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    m
}

/// Write `c` to `path` in `format`: one JSON array for a `.json` name, JSON lines for `.jsonl`.
pub fn write_corpus(c: &Corpus, path: &Path, format: CorpusFormat) -> Result<()> {
    if !CorpusFormat::WRITABLE.contains(&format) {
        return Err(usage!("write: format '{format}' cannot be written: use alpaca, sharegpt, messages or prompt-completion"));
    }
    if c.is_empty() {
        return Err(usage!("write: the corpus has no rationales"));
    }
    let records = c.rationales.iter().map(|r| record_of(r, format));
    let text = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::to_string_pretty(&records.collect::<Vec<_>>()).expect("JSON values serialise") + "\n",
        Some("jsonl") => records.map(|v| v.to_string() + "\n").collect(),
        _ => return Err(usage!("write: '{}' must end in .json (one array) or .jsonl (JSON lines)", path.display())),
    };
    crate::paths::write(path, text.as_bytes())
}

/// The LLaMA-Factory `dataset_info.json` entry for a file written in `format` (its data/README.md).
pub fn dataset_info_entry(file_name: &str, format: CorpusFormat) -> Value {
    match format {
        CorpusFormat::Alpaca => {
            json!({"file_name": file_name, "formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}})
        }
        CorpusFormat::Sharegpt => json!({
            "file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
        }),
        CorpusFormat::Messages => json!({
            "file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}
        }),
        // LLaMA-Factory has no prompt-completion formatting: alpaca's, with the columns renamed.
        _ => json!({"file_name": file_name, "formatting": "alpaca", "columns": {"prompt": "prompt", "response": "completion"}}),
    }
}

/// The entries of a `dataset_info.json` (none when there is no file), or why it cannot be merged into.
pub fn dataset_info_entries(info: &Path) -> Result<Map<String, Value>> {
    if !info.exists() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(&crate::paths::read_text(info)?) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::data(info, "not a JSON object of dataset entries: fix or remove it, then write again")),
    }
}

/// Add (or replace) entry `name` in the `dataset_info.json` at `info`, keeping the other entries.
pub fn merge_dataset_info(info: &Path, name: &str, entry: Value) -> Result<()> {
    let mut all = dataset_info_entries(info)?;
    all.insert(name.to_string(), entry);
    crate::paths::write(info, (serde_json::to_string_pretty(&Value::Object(all)).expect("JSON values serialise") + "\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPACA: &str = r#"[{"instruction": "Tom has 3 apples and buys 2. How many?", "input": "", "output": "3 + 2 = 5. The answer is 5"},
 {"instruction": "Ann has 10 pens and loses 4.", "input": "How many are left?", "output": "10 - 4 = 6. The answer is 6", "answer": "6"}]"#;

    fn file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn read(p: &Path, o: CorpusOptions) -> Result<Corpus> {
        read_corpus(Input::File(p), &o)
    }

    fn number() -> CorpusOptions {
        CorpusOptions { kind: Some("number".into()), ..Default::default() }
    }

    fn user(c: &Corpus) -> &UserData {
        match &c.task {
            Subject::User(u) => u,
            Subject::Task(t) => panic!("a release task: {t:?}"),
        }
    }

    fn err(r: Result<Corpus>) -> String {
        r.map(|c| format!("read {} rationales", c.len())).expect_err("an error").to_string()
    }

    #[test]
    fn every_writable_format_round_trips_in_both_layouts() {
        let d = tempfile::tempdir().unwrap();
        let c = read(&file(d.path(), "a.json", ALPACA), number()).unwrap();
        assert_eq!(c.rationales[1].question, "Ann has 10 pens and loses 4.\nHow many are left?", "instruction and input joined as LLaMA-Factory does");
        assert_eq!(c.label(), "a user plain");
        for format in CorpusFormat::WRITABLE {
            for ext in ["json", "jsonl"] {
                let p = d.path().join(format!("out-{format}.{ext}"));
                write_corpus(&c, &p, format).unwrap();
                let back = read(&p, CorpusOptions::default()).unwrap();
                let u = user(&back);
                assert_eq!((u.format.as_str(), u.sniffed, u.kind), (format.name(), true, AnswerKind::Number), "{format} {ext}");
                let strip = |c: &Corpus| c.rationales.iter().map(|r| (r.id.clone(), r.question.clone(), r.text.clone(), r.gold.clone())).collect::<Vec<_>>();
                assert_eq!(strip(&back), strip(&c), "{format} {ext}");
                assert_eq!(back.rationales[1].origin.row, 1);
                assert_eq!(u.sha256, hex(&Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }

    #[test]
    fn auto_sniffs_each_format_from_the_first_record() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("alpaca", "a.jsonl", r#"{"instruction": "Q?", "output": "The answer is 2", "system": "brief"}"#),
            (
                "sharegpt",
                "s.json",
                r#"[{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "The answer is 2"}]}]"#,
            ),
            (
                "messages",
                "m.jsonl",
                r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "Q?"}]}, {"role": "assistant", "content": "The answer is 2"}]}"#,
            ),
            ("prompt-completion", "p.jsonl", r#"{"prompt": "Q?", "completion": "The answer is 2"}"#),
            ("jsonl", "n.jsonl", r#"{"question": "Q?", "rationale": "The answer is 2"}"#),
            ("csv", "c.csv", "question,rationale\nQ?,The answer is 2\n"),
        ];
        for (format, name, text) in cases {
            let c = read(&file(d.path(), name, text), number()).unwrap();
            let u = user(&c);
            assert_eq!((u.format.as_str(), u.sniffed), (format, true), "{name}");
            assert_eq!((c.rationales[0].question.as_str(), c.rationales[0].gold.as_deref()), ("Q?", Some("2")), "{name}");
            assert_eq!(u.context_dropped, usize::from(["alpaca", "sharegpt", "messages"].contains(&format)), "{name}: the system prompt is counted");
        }
        let csv = read(&d.path().join("c.csv"), number()).unwrap();
        let pq = d.path().join("c.parquet");
        Frame::read_csv(&d.path().join("c.csv")).unwrap().write_parquet(&pq).unwrap();
        let c = read(&pq, number()).unwrap();
        assert_eq!((user(&c).format.as_str(), c.rationales[0].question.as_str(), c.rationales[0].gold.as_deref()), ("parquet", "Q?", Some("2")));
        assert_ne!(user(&c).sha256, user(&csv).sha256, "the hash is of the file read");
    }

    #[test]
    fn answers_come_from_the_rationale_when_absent_and_the_missing_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let text = "{\"prompt\": \"a\", \"completion\": \"so 4. The answer is 4\"}\n{\"prompt\": \"b\", \"completion\": \"no idea\"}\n{\"prompt\": \"c\", \"completion\": \"x\", \"answer\": \"7\"}\n";
        let c = read(&file(d.path(), "p.jsonl", text), number()).unwrap();
        let golds: Vec<Option<&str>> = c.rationales.iter().map(|r| r.gold.as_deref()).collect();
        assert_eq!(golds, [Some("4"), None, Some("7")]);
        assert_eq!(user(&c).no_answer, 1);
        assert!(user(&c).summary(3).contains("1 without an answer"), "{}", user(&c).summary(3));
        // Kinds inferred from the answers when not given.
        for (answers, kind) in
            [(["3", "4.5"], AnswerKind::Number), (["B", "(c)"], AnswerKind::Choice), (["yes", "False"], AnswerKind::Bool), (["Paris", "B"], AnswerKind::Text)]
        {
            let rows: String =
                answers.iter().enumerate().map(|(i, a)| format!("{{\"question\": \"q{i}\", \"rationale\": \"r\", \"answer\": \"{a}\"}}\n")).collect();
            let c = read(&file(d.path(), "k.jsonl", &rows), CorpusOptions::default()).unwrap();
            assert_eq!(c.kind(), kind, "{answers:?}");
        }
    }

    #[test]
    fn a_frame_is_read_by_named_columns_with_a_content_hash() {
        use crate::frame::ColumnData;
        let f = |a: &str| {
            Frame::from_columns(vec![
                ("q".into(), ColumnData::Str(vec![Some("Q1".into()), Some("Q2".into())])),
                ("cot".into(), ColumnData::Str(vec![Some("The answer is 1".into()), Some(a.into())])),
            ])
            .unwrap()
        };
        let o = CorpusOptions {
            question: Some("q".into()),
            rationale: Some("cot".into()),
            kind: Some("number".into()),
            name: Some("mine".into()),
            ..Default::default()
        };
        let c = read_corpus(Input::Frame(&f("The answer is 2")), &o).unwrap();
        let u = user(&c);
        assert_eq!(
            (u.path.as_str(), u.name.as_str(), c.rationales[1].origin.source.as_str(), c.rationales[1].id.as_str()),
            ("frame", "mine", "frame", "mine-1")
        );
        let other = read_corpus(Input::Frame(&f("The answer is 3")), &o).unwrap();
        assert_ne!(user(&other).sha256, u.sha256, "other cells, other hash");
        assert_eq!(user(&read_corpus(Input::Frame(&f("The answer is 2")), &o).unwrap()).sha256, u.sha256);
        let e = read_corpus(Input::Frame(&f("x")), &CorpusOptions { kind: Some("number".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("no column 'question'") && e.contains("columns found: q, cot"), "{e}");
    }

    #[test]
    fn bad_input_is_one_clear_error_never_an_empty_corpus() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&str, &str, CorpusOptions, &[&str]); 12] = [
            ("none.jsonl", "{\"foo\": 1, \"bar\": 2}\n", number(), &["line 1", "none of the corpus formats", "keys: bar, foo"]),
            ("empty.jsonl", "  \n", number(), &["file is empty"]),
            ("empty.json", "[]", number(), &["the JSON array is empty"]),
            ("notjson.jsonl", "{\"instruction\": \"q\", \"output\": \"r\"}\nnot json\n", number(), &["line 2", "one JSON object per line"]),
            ("scalar.json", "[{\"instruction\": \"q\", \"output\": \"r\"}, 3]", number(), &["record 2", "expected a JSON object, found a number"]),
            (
                "col.jsonl",
                "{\"q\": \"a\", \"cot\": \"b\"}\n",
                CorpusOptions { question: Some("q".into()), rationale: Some("rationale_text".into()), kind: Some("text".into()), ..Default::default() },
                &["no column 'rationale_text'", "columns found: cot, q", "--rationale"],
            ),
            (
                "noq.jsonl",
                "{\"instruction\": \"q\", \"output\": \"r\"}\n{\"instruction\": \"\", \"output\": \"r\"}\n{\"output\": \"r\"}\n",
                number(),
                &["2 of 3 records have no question: line 2, line 3"],
            ),
            ("nor.json", "[{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}]", number(), &["1 of 1 records have no rationale", "record 1"]),
            (
                "dup.jsonl",
                "{\"id\": \"a\", \"prompt\": \"q\", \"completion\": \"r\"}\n{\"id\": \"a\", \"prompt\": \"q2\", \"completion\": \"r\"}\n",
                number(),
                &["1 duplicate ids", "'a' (line 1 and line 2)"],
            ),
            (
                "badans.jsonl",
                "{\"prompt\": \"q\", \"completion\": \"r\", \"answer\": \"ten\"}\n{\"prompt\": \"q2\", \"completion\": \"r\", \"answer\": \"3\"}\n",
                number(),
                &["1 answers do not parse as kind number", "line 1: \"ten\""],
            ),
            ("nokind.jsonl", "{\"prompt\": \"q\", \"completion\": \"r\"}\n", CorpusOptions::default(), &["no answer column", "--kind number"]),
            (
                "wrong.jsonl",
                "{\"prompt\": \"q\", \"completion\": \"r\"}\n",
                CorpusOptions { format: CorpusFormat::Alpaca, ..number() },
                &["line 1: not alpaca", "keys: completion, prompt"],
            ),
        ];
        for (name, text, o, needles) in cases {
            let e = err(read(&file(d.path(), name, text), o));
            for n in needles {
                assert!(e.contains(n), "{name}: {e:?} lacks {n:?}");
            }
            assert!(e.contains(name), "{name}: the error names the file: {e}");
        }
    }

    #[test]
    fn dataset_info_entries_merge_and_follow_llamafactory_schema() {
        let d = tempfile::tempdir().unwrap();
        let info = d.path().join("dataset_info.json");
        std::fs::write(&info, r#"{"theirs": {"file_name": "t.json"}}"#).unwrap();
        for f in CorpusFormat::WRITABLE {
            merge_dataset_info(&info, f.name(), dataset_info_entry(&format!("{f}.json"), f)).unwrap();
        }
        let all = dataset_info_entries(&info).unwrap();
        assert_eq!(all.len(), 5, "kept theirs: {all:?}");
        assert_eq!(all["sharegpt"]["tags"]["user_tag"], "human");
        assert_eq!(all["messages"]["tags"]["role_tag"], "role");
        assert_eq!(all["prompt-completion"]["columns"]["response"], "completion");
        std::fs::write(&info, "[1]").unwrap();
        assert!(merge_dataset_info(&info, "x", json!({})).unwrap_err().to_string().contains("not a JSON object of dataset entries"));
        assert_eq!(std::fs::read_to_string(&info).unwrap(), "[1]", "left as it was");
    }
}
