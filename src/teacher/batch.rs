//! The Batch API (`mode: "batch"`): a run's requests go out as one JSONL file of the same bodies
//! the sync client sends, are answered within 24 h at half the price, and land in the teacher
//! cache as if they had been asked one by one.
//!
//! Invariants:
//! - One request per cache key: `custom_id` is the key, so rows asking the same thing share one
//!   answer, and an answer is merged under the key the sync path would have written.
//! - Never submitted twice: a batch's id is journaled (`<cache>.batches.jsonl`, keyed by the set
//!   of cache keys it holds) as soon as the endpoint creates it, and a run asking for a set whose
//!   batch is journaled and not yet merged resumes polling that batch. Only a kill between the
//!   create call's answer and the journal append (one local write) can lose an id.
//! - Waiting is bounded: polls start `poll_s` apart and double up to `poll_max_s`; a run waits at
//!   most `batch_timeout_s` (the batch keeps running, a re-run resumes it); every HTTP call is
//!   retried as chat requests are (429/5xx/transport, `max_retries`, waits capped at `max_wait_s`).
//! - Every text stored or returned (answers, traces, errors) has the key redacted, as in
//!   [`super::openai`].
//! - Requests that got no answer in a batch (error file lines, non-200 responses, the unfinished
//!   rest of an expired or cancelled batch) are asked once more, per `batch_retry`: in a smaller
//!   batch of only those, or through the sync client. What fails then is a row's `error`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cache::{self, Cache, Entry};
use super::openai::{self, Completion, OpenAi, Retry};
use super::{AskOptions, Job, Row, Teacher};
use crate::error::{Error, Result};
use crate::journal::Journal;
use crate::rng::Rng;
use crate::usage;

/// The most requests OpenAI takes in one batch; a larger run goes out as several.
const MAX_REQUESTS: usize = 50_000;
/// The endpoint every request line names.
const ENDPOINT: &str = "/v1/chat/completions";
/// Uploads and downloads may be large: each gets at least this long.
const TRANSFER_S: f64 = 600.0;

/// One journal line: a batch submitted for a set of keys, or (`done`) merged into the cache.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    /// `cache::key` over the sorted cache keys the batch holds.
    set: String,
    batch: String,
    requests: usize,
    #[serde(default)]
    done: bool,
    /// The cache keys it holds, sorted (on the line that journals a submission).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
}

/// Where a cache's batch journal lives: beside it, `<cache file name>.batches.jsonl`.
pub fn journal_path(cache: &Path) -> PathBuf {
    let name = cache.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "teacher-cache".into());
    cache.with_file_name(format!("{name}.batches.jsonl"))
}

/// One request of a batch: its cache key (the `custom_id`) and its chat-completions body.
type Request = (String, Value);

/// What one request of a batch came back as.
type Outcome = std::result::Result<Completion, String>;

/// Answer `jobs` through the Batch API, merging every answer into the cache and `rows`.
pub(super) fn run(teacher: &Teacher, client: &OpenAi, jobs: Vec<Job>, rows: &mut [Row], o: &AskOptions) -> Result<()> {
    let cache = teacher
        .cache
        .as_ref()
        .ok_or_else(|| usage!("teacher {}: mode: \"batch\" merges answers into the cache: give the teacher a cache", client.opts.model))?;
    // One request per key; every row asking it gets the answer.
    let mut by_key: BTreeMap<String, Vec<Job>> = BTreeMap::new();
    for j in jobs {
        by_key.entry(j.key.clone()).or_default().push(j);
    }
    let bodies: Vec<Request> = by_key.iter().map(|(k, js)| (k.clone(), client.body(&js[0].ask(o)))).collect();
    let mut outcomes = ask_in_batches(client, cache, &bodies)?;
    let failed: Vec<&Request> = bodies.iter().filter(|(k, _)| !matches!(outcomes.get(k), Some(Ok(_)))).collect();
    if !failed.is_empty() {
        eprintln!("[teacher] {} of {} batch requests got no answer: asking again ({})", failed.len(), bodies.len(), client.opts.batch_retry);
        match client.opts.batch_retry {
            Retry::Batch => {
                let again: Vec<Request> = failed.into_iter().cloned().collect();
                outcomes.extend(ask_in_batches(client, cache, &again)?);
            }
            Retry::Sync => {
                let keys: Vec<String> = failed.iter().map(|(k, _)| k.clone()).collect();
                let sync_jobs: Vec<Job> = keys.iter().flat_map(|k| by_key.remove(k).unwrap_or_default()).collect();
                teacher.run_openai(client, sync_jobs, rows, o)?;
            }
        }
    }
    for (key, js) in by_key {
        for j in js {
            let row = &mut rows[j.idx];
            match outcomes.get(&key) {
                Some(Ok(c)) => {
                    row.rationale = Some(c.text.clone());
                    row.reasoning = c.reasoning.clone();
                    row.reasoning_tokens = c.reasoning_tokens;
                    row.prompt_tokens = c.prompt_tokens;
                    row.completion_tokens = c.completion_tokens;
                }
                Some(Err(e)) => row.error = Some(e.clone()),
                None => row.error = Some("the batch returned no answer for this request: re-run to ask again".into()),
            }
        }
    }
    Ok(())
}

/// Send `bodies` as batches of at most [`MAX_REQUESTS`] (each resumed from the journal when it
/// was submitted before), wait for them, and return every request's outcome; answers are in
/// the cache when this returns.
fn ask_in_batches(client: &OpenAi, cache: &Cache, bodies: &[Request]) -> Result<HashMap<String, Outcome>> {
    let jpath = journal_path(cache.path());
    let (journal, records) = Journal::<Record>::open(&jpath)?;
    let merged: HashSet<&str> = records.iter().filter(|r| r.done).map(|r| r.batch.as_str()).collect();
    let open: Vec<&Record> = records.iter().filter(|r| !r.done && !merged.contains(r.batch.as_str())).collect();
    // (the journaled set, batch id, the requests asked of it)
    let mut pending: Vec<(String, String, Vec<Request>)> = Vec::new();
    for chunk in bodies.chunks(MAX_REQUESTS) {
        let mut keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let set = cache::key(&keys);
        // This very set, else a batch holding all of it (a run killed while merging, or asking
        // for part of what it asked before): its answers are paid for already.
        let holds = |r: &&&Record| r.set == set || (!r.keys.is_empty() && keys.iter().all(|k| r.keys.binary_search_by(|x| x.as_str().cmp(k)).is_ok()));
        let (set, id) = match open.iter().rev().find(holds) {
            Some(r) => {
                eprintln!("[teacher] resuming batch {} ({} requests, journaled in {})", r.batch, r.requests, jpath.display());
                (r.set.clone(), r.batch.clone())
            }
            None => {
                let id = submit(client, chunk)?;
                let keys = keys.iter().map(|k| k.to_string()).collect();
                journal.append(&Record { set: set.clone(), batch: id.clone(), requests: chunk.len(), done: false, keys })?;
                eprintln!("[teacher] submitted batch {id} ({} requests)", chunk.len());
                (set, id)
            }
        };
        match pending.iter_mut().find(|p| p.1 == id) {
            Some(p) => p.2.extend(chunk.iter().cloned()),
            None => pending.push((set, id, chunk.to_vec())),
        }
    }
    let mut outcomes = HashMap::new();
    for (set, id, asked) in pending {
        let batch = wait(client, &id, &jpath)?;
        let got = collect(client, cache, &id, &batch, &asked)?;
        journal.append(&Record { set, batch: id, requests: asked.len(), done: true, keys: Vec::new() })?;
        outcomes.extend(got);
    }
    Ok(outcomes)
}

/// The request file: one line per request, `{custom_id, method, url, body}`.
fn request_lines(bodies: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, body) in bodies {
        let line = serde_json::json!({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body});
        out.extend(serde_json::to_vec(&line).expect("JSON values serialise"));
        out.push(b'\n');
    }
    out
}

/// Upload the request file (`POST /files`, `purpose=batch`) and create the batch; its id.
fn submit(client: &OpenAi, bodies: &[Request]) -> Result<String> {
    let lines = request_lines(bodies);
    // JSON lines hold no raw line breaks, so "\r\n--" never occurs inside the file.
    let boundary = format!("cotlab-{}", &cache::key(&[&String::from_utf8_lossy(&lines)])[..24]);
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cotlab-batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").into_bytes();
    form.extend(&lines);
    form.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let file = call(client, "POST", &["files"], Payload::Bytes(&content_type, &form), "uploading the batch's request file")?;
    let file_id = field(&file, "id", "POST /files")?;
    let create = serde_json::json!({"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"});
    let batch = call(client, "POST", &["batches"], Payload::Json(&create), "creating the batch")?;
    field(&batch, "id", "POST /batches")
}

/// Poll `GET /batches/{id}` until the batch ends (completed, expired, cancelled), with backoff;
/// the batch object then. A failed batch, or one still running after `batch_timeout_s`, is an
/// error.
fn wait(client: &OpenAi, id: &str, journal: &Path) -> Result<Value> {
    let o = &client.opts;
    let deadline = Instant::now() + Duration::from_secs_f64(o.batch_timeout_s);
    let mut gap = o.poll_s;
    let mut last = String::new();
    loop {
        let b = call(client, "GET", &["batches", id], Payload::Nothing, "polling the batch")?;
        let status = b["status"].as_str().unwrap_or("").to_string();
        let counts = &b["request_counts"];
        if status != last {
            eprintln!("[teacher] batch {id}: {status} ({}/{} done, {} failed)", counts["completed"], counts["total"], counts["failed"]);
            last = status.clone();
        }
        match status.as_str() {
            "completed" | "expired" | "cancelled" => return Ok(b),
            "failed" => {
                let why: Vec<String> = b["errors"]["data"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|e| format!("{} (line {}): {}", e["code"].as_str().unwrap_or("?"), e["line"], e["message"].as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                let why = if why.is_empty() { "no reason given".to_string() } else { why.join("; ") };
                return Err(usage!(
                    "teacher {}: batch {id} failed: {}: fix what it names (the same request bodies go out in sync mode); the next run submits a new batch",
                    o.model,
                    client.redact(&why).chars().take(600).collect::<String>()
                ));
            }
            _ => {}
        }
        if Instant::now() + Duration::from_secs_f64(gap) > deadline {
            return Err(Error::data(
                journal,
                format!(
                    "batch {id} is still {status} after batch_timeout_s = {} s: it runs on at the endpoint; re-run to resume polling it (its id is journaled here), or raise batch_timeout_s",
                    o.batch_timeout_s
                ),
            ));
        }
        std::thread::sleep(Duration::from_secs_f64(gap));
        gap = (gap * 2.0).min(o.poll_max_s);
    }
}

/// Download the output and error files of an ended batch, merge its answers into the cache,
/// and return each request's outcome (requests the files do not name: no answer, with why).
fn collect(client: &OpenAi, cache: &Cache, id: &str, batch: &Value, bodies: &[Request]) -> Result<HashMap<String, Outcome>> {
    let asked: HashMap<&str, ()> = bodies.iter().map(|(k, _)| (k.as_str(), ())).collect();
    let mut out: HashMap<String, Outcome> = HashMap::new();
    let mut unreadable = 0;
    // The error file first: an answer in the output file wins over an error for the same id.
    for which in ["error_file_id", "output_file_id"] {
        let Some(file) = batch[which].as_str().filter(|f| !f.is_empty()) else { continue };
        let text = call_text(client, &["files", file, "content"], "downloading the batch's results")?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Some((key, outcome)) = parse_line(client, line) else {
                unreadable += 1;
                continue;
            };
            if matches!(out.get(&key), Some(Ok(_))) {
                continue;
            }
            // Every answer of the batch is kept (it was paid for), also those this run did not ask.
            let is_asked = asked.contains_key(key.as_str());
            if !is_asked && (outcome.is_err() || cache.get(&key).is_some()) {
                continue;
            }
            if let Ok(c) = &outcome {
                // Appended and flushed now, as the sync path does.
                let e = Entry {
                    key: key.clone(),
                    text: c.text.clone(),
                    prompt_tokens: c.prompt_tokens,
                    completion_tokens: c.completion_tokens,
                    reasoning: c.reasoning.clone(),
                    reasoning_tokens: c.reasoning_tokens,
                };
                cache.put(e)?;
            }
            if is_asked {
                out.insert(key, outcome);
            }
        }
    }
    if unreadable > 0 {
        eprintln!("warning: batch {id}: {unreadable} result lines were not {{custom_id, response|error}} JSON and were ignored");
    }
    let status = batch["status"].as_str().unwrap_or("ended");
    for (k, _) in bodies {
        out.entry(k.clone()).or_insert_with(|| Err(format!("batch {id} {status} without an answer to this request")));
    }
    Ok(out)
}

/// One line of an output or error file: its `custom_id` and what came back, every text
/// redacted; None for a line that is not such JSON.
fn parse_line(client: &OpenAi, line: &str) -> Option<(String, Outcome)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let key = v["custom_id"].as_str()?.to_string();
    let response = &v["response"];
    let code = response["status_code"].as_u64();
    let body = &response["body"];
    if code == Some(200) {
        if let Some(c) = openai::parse_completion(body) {
            let c = Completion { text: client.redact(&c.text), reasoning: c.reasoning.map(|r| client.redact(&r)), ..c };
            return Some((key, Ok(c)));
        }
    }
    let err = if v["error"].is_object() { &v["error"] } else { &body["error"] };
    let message = match (err["code"].as_str(), err["message"].as_str(), code) {
        (c, Some(m), code) => format!("{}{}{m}", code.map(|c| format!("HTTP {c}: ")).unwrap_or_default(), c.map(|c| format!("{c}: ")).unwrap_or_default()),
        (_, None, Some(200)) => "a response without choices[0].message.content".to_string(),
        (_, None, Some(c)) => format!("HTTP {c}"),
        (_, None, None) => "an error line without a message".to_string(),
    };
    let message = client.redact(&message).chars().take(300).collect::<String>();
    Some((key, Err(format!("in the batch: {message}"))))
}

/// What a Batch API call sends.
enum Payload<'a> {
    Nothing,
    Json(&'a Value),
    /// A content type and the bytes.
    Bytes(&'a str, &'a [u8]),
}

/// A Batch API call answered with JSON.
fn call(client: &OpenAi, method: &str, segments: &[&str], send: Payload, what: &str) -> Result<Value> {
    let text = call_raw(client, method, segments, &send, what)?;
    serde_json::from_str(&text).map_err(|e| usage!("teacher {}: {what}: the endpoint answered with malformed JSON ({e})", client.opts.model))
}

/// A Batch API call answered with text (a file's content).
fn call_text(client: &OpenAi, segments: &[&str], what: &str) -> Result<String> {
    call_raw(client, "GET", segments, &Payload::Nothing, what)
}

/// One call, retried as chat requests are; its answer's text, the key redacted. A client error
/// other than 429 (the endpoint has no Batch API, a bad file) is not retried.
fn call_raw(client: &OpenAi, method: &str, segments: &[&str], send: &Payload, what: &str) -> Result<String> {
    let o = &client.opts;
    let path = segments.join("/");
    let mut rng = Rng::new(0xba7c);
    let mut last = String::new();
    let transfer = Duration::from_secs_f64(o.timeout_s.max(TRANSFER_S));
    for attempt in 0..=o.max_retries {
        let req = client.api_request(method, segments);
        let sent = match send {
            Payload::Nothing => req.timeout(if segments.last() == Some(&"content") { transfer } else { Duration::from_secs_f64(o.timeout_s) }).call(),
            Payload::Json(v) => req.timeout(Duration::from_secs_f64(o.timeout_s)).send_json((*v).clone()),
            Payload::Bytes(ct, b) => req.timeout(transfer).set("Content-Type", ct).send_bytes(b),
        };
        let after = match sent {
            Ok(r) => {
                let mut text = String::new();
                match r.into_reader().read_to_string(&mut text) {
                    Ok(_) => return Ok(client.redact(&text)),
                    Err(e) => {
                        last = format!("reading the answer: {e}");
                        None
                    }
                }
            }
            Err(ureq::Error::Status(code, r)) => {
                let asked = r.header("Retry-After").and_then(|v| openai::retry_after_s(v, SystemTime::now()));
                let body = client.redact(&r.into_string().unwrap_or_default());
                last = format!("HTTP {code}: {}", body.chars().take(300).collect::<String>());
                if code != 429 && code < 500 {
                    let hint = match (code, segments) {
                        (404, ["files"]) => " (does this endpoint have the Batch API? use mode: \"sync\" if not)".to_string(),
                        (404, ["batches", id]) => {
                            format!(" (the endpoint does not know batch {id}: remove its lines from the batch journal beside the cache to submit anew)")
                        }
                        _ => String::new(),
                    };
                    return Err(usage!("teacher {}: {what} ({method} {path}): {last}{hint}", o.model));
                }
                asked
            }
            Err(e) => {
                last = client.redact(&format!("transport: {e}"));
                None
            }
        };
        if attempt < o.max_retries {
            let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            std::thread::sleep(openai::wait_before_retry(after, o.backoff_s, attempt, unit, o.max_wait_s));
        }
    }
    Err(usage!(
        "teacher {}: {what} ({method} {path}): gave up after {} attempts: {last}; re-run to resume (a submitted batch's id is journaled)",
        o.model,
        o.max_retries + 1
    ))
}

/// A string field of a Batch API answer, or an error naming the call.
fn field(v: &Value, name: &str, call: &str) -> Result<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| usage!("teacher: {call} answered without '{name}': {}", v.to_string().chars().take(200).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OpenAi {
        OpenAi::new(openai::OpenAiOptions { base_url: "http://127.0.0.1:9/v1".into(), model: "m".into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn request_lines_carry_the_sync_body_under_the_cache_key() {
        let c = client();
        let body = c.body(&super::openai::Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 16, seed: 3 });
        let lines = request_lines(&[("k1".into(), body.clone())]);
        let v: Value = serde_json::from_slice(lines.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"custom_id": "k1", "method": "POST", "url": "/v1/chat/completions", "body": body}));
    }

    #[test]
    fn result_lines_become_answers_or_errors() {
        let c = client();
        let ok = r#"{"id":"r1","custom_id":"a","response":{"status_code":200,"body":{"choices":[{"message":{"content":"<think>t</think>5"}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}},"error":null}"#;
        let (k, r) = parse_line(&c, ok).unwrap();
        let got = r.unwrap();
        assert_eq!((k.as_str(), got.text.as_str(), got.reasoning.as_deref(), got.completion_tokens), ("a", "5", Some("t"), 4));
        let expired = r#"{"id":"r2","custom_id":"b","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}"#;
        assert!(parse_line(&c, expired).unwrap().1.unwrap_err().contains("batch_expired"));
        let bad = r#"{"custom_id":"c","response":{"status_code":400,"body":{"error":{"message":"context too long"}}}}"#;
        assert!(parse_line(&c, bad).unwrap().1.unwrap_err().contains("HTTP 400: context too long"));
        assert!(parse_line(&c, "not json").is_none());
    }
}
