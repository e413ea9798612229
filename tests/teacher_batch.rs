//! The Batch API (`mode: "batch"`) against a loopback fake that follows OpenAI's documented
//! JSON (`POST /files` multipart with `purpose=batch`, `POST /batches`, `GET /batches/{id}`,
//! `GET /files/{id}/content`, output lines `{custom_id, response: {status_code, body}, error}`):
//! answers land in the cache and the rows, a re-run sends nothing, failed rows are asked again
//! per `batch_retry`, an expired batch keeps its partial output, and a run killed while polling
//! resumes the same batch (one creation, ever).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use cotlab::data::{load_dataset, DatasetOptions};
use cotlab::teacher::batch::journal_path;
use cotlab::teacher::cache::Cache;
use cotlab::teacher::openai::{Mode, Retry};
use cotlab::teacher::openai::{OpenAi, OpenAiOptions};
use cotlab::teacher::{AskOptions, Backend, Teacher};

/// How the fake's batches behave.
#[derive(Clone, Copy)]
struct Plan {
    /// Polls a batch answers `in_progress` before it ends.
    polls_before_end: usize,
    /// The first batch expires (the first half of its requests answered, the rest in the error
    /// file as `batch_expired`) instead of completing.
    first_expires: bool,
    /// In the first this-many batches, the requests on odd lines fail (HTTP 500 in the error file).
    failing_batches: usize,
}

const PLAN: Plan = Plan { polls_before_end: 3, first_expires: false, failing_batches: 0 };

#[derive(Default)]
struct State {
    /// File id → content.
    files: HashMap<String, String>,
    /// Batch k is `batch_k`: its input file, polls so far, and (once ended) its batch object.
    batches: Vec<(String, usize, Option<Value>)>,
    uploads: usize,
    polls: usize,
    chats: usize,
    /// Every request's (method and path, Authorization header).
    seen: Vec<(String, String)>,
}

struct Fake {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Fake {
    fn creations(&self) -> usize {
        self.state.lock().unwrap().batches.len()
    }
    fn requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
    /// The request lines of batch k's input file.
    fn input(&self, k: usize) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.files[&s.batches[k].0].lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// A chat completion answering `custom_id`, echoing the key it was sent with (redaction checks).
fn answer(custom_id: &str, auth: &str) -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Answer to {custom_id} ({auth}). The answer is 7")}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
}

/// End batch `k` per the plan: its output and error files, and its final batch object.
fn end_batch(s: &mut State, k: usize, plan: Plan, auth: &str) -> Value {
    let lines: Vec<Value> = s.files[&s.batches[k].0].lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expires = k == 0 && plan.first_expires;
    let (mut out, mut err) = (String::new(), String::new());
    for (i, l) in lines.iter().enumerate() {
        let id = l["custom_id"].as_str().unwrap();
        if expires && i >= lines.len() / 2 {
            let e = json!({"id": format!("batch_req_{i}"), "custom_id": id, "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}});
            err += &format!("{e}\n");
        } else if k < plan.failing_batches && i % 2 == 1 {
            let e = json!({"id": format!("batch_req_{i}"), "custom_id": id, "response": {"status_code": 500, "request_id": "r", "body": {"error": {"message": "The server had an error", "type": "server_error"}}}, "error": null});
            err += &format!("{e}\n");
        } else {
            let o = json!({"id": format!("batch_req_{i}"), "custom_id": id, "response": {"status_code": 200, "request_id": "r", "body": answer(id, auth)}, "error": null});
            out += &format!("{o}\n");
        }
    }
    let (failed, completed) = (err.lines().count(), out.lines().count());
    let mut file = |text: String| {
        (!text.is_empty()).then(|| {
            let id = format!("file-{}", s.files.len());
            s.files.insert(id.clone(), text);
            id
        })
    };
    let (output_file_id, error_file_id) = (file(out), file(err));
    json!({"id": format!("batch_{k}"), "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": s.batches[k].0, "completion_window": "24h",
           "status": if expires { "expired" } else { "completed" }, "output_file_id": output_file_id, "error_file_id": error_file_id,
           "request_counts": {"total": lines.len(), "completed": completed, "failed": failed}})
}

fn respond(s: &mut State, plan: Plan, method: &str, path: &str, head: &str, body: &[u8]) -> (String, String) {
    let auth = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    s.seen.push((format!("{method} {path}"), auth.clone()));
    let ok = |v: Value| ("200 OK".to_string(), v.to_string());
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["files"]) => {
            let text = String::from_utf8_lossy(body).to_string();
            assert!(text.contains("name=\"purpose\"\r\n\r\nbatch\r\n"), "purpose=batch in {text}");
            let start = text.find("filename=").unwrap();
            let start = start + text[start..].find("\r\n\r\n").unwrap() + 4;
            let end = text.rfind("\r\n--").unwrap();
            let id = format!("file-{}", s.files.len());
            s.files.insert(id.clone(), text[start..end].to_string());
            s.uploads += 1;
            ok(json!({"id": id, "object": "file", "bytes": end - start, "purpose": "batch", "filename": "cotlab-batch.jsonl"}))
        }
        ("POST", ["batches"]) => {
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!((v["endpoint"].as_str(), v["completion_window"].as_str()), (Some("/v1/chat/completions"), Some("24h")));
            let input = v["input_file_id"].as_str().unwrap().to_string();
            assert!(s.files.contains_key(&input), "unknown input file {input}");
            s.batches.push((input.clone(), 0, None));
            ok(json!({"id": format!("batch_{}", s.batches.len() - 1), "object": "batch", "input_file_id": input, "status": "validating"}))
        }
        ("GET", ["batches", id]) => {
            let k: usize = id.trim_start_matches("batch_").parse().unwrap();
            s.polls += 1;
            s.batches[k].1 += 1;
            if s.batches[k].1 <= plan.polls_before_end {
                return ok(json!({"id": id, "object": "batch", "status": "in_progress", "request_counts": {"total": 0, "completed": 0, "failed": 0}}));
            }
            if s.batches[k].2.is_none() {
                let ended = end_batch(s, k, plan, &auth);
                s.batches[k].2 = Some(ended);
            }
            ok(s.batches[k].2.clone().unwrap())
        }
        ("GET", ["files", id, "content"]) => ("200 OK".to_string(), s.files[*id].clone()),
        ("POST", ["chat", "completions"]) => {
            s.chats += 1;
            ok(answer("sync", &auth))
        }
        _ => ("404 Not Found".to_string(), json!({"error": {"message": format!("no route {method} {path}")}}).to_string()),
    }
}

/// The fake Batch API on 127.0.0.1, one thread per connection.
fn serve(plan: Plan) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let st = st.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some((head, body)) = common::read_http_exchange(&mut stream) else { return };
                let mut first = head.lines().next().unwrap_or("").split(' ');
                let (method, path) = (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
                let (status, text) = respond(&mut st.lock().unwrap(), plan, &method, &path, &head, &body);
                common::write_http_response(&mut stream, &status, "", &text);
            });
        }
    });
    Fake { url, state }
}

fn options(url: &str, retry: Retry) -> OpenAiOptions {
    OpenAiOptions {
        base_url: url.into(),
        model: "loopback".into(),
        api_key_env: None,
        timeout_s: 5.0,
        max_retries: 1,
        backoff_s: 0.01,
        mode: Mode::Batch,
        batch_retry: retry,
        poll_s: 0.01,
        poll_max_s: 0.04,
        batch_timeout_s: 30.0,
        ..Default::default()
    }
}

fn teacher(opts: OpenAiOptions, cache: &std::path::Path) -> Teacher {
    Teacher {
        kind: "openai".into(),
        model: "loopback".into(),
        backend: Backend::OpenAi(Box::new(OpenAi::new(opts).unwrap())),
        cache: Some(Arc::new(Cache::open(cache).unwrap())),
    }
}

fn arith(n: usize) -> cotlab::data::Dataset {
    load_dataset(&cotlab::data::DataDir("unused".into()), "arith", &DatasetOptions { n: Some(n), seed: Some(1), ..Default::default() }).unwrap()
}

fn level1() -> AskOptions {
    AskOptions { level: Some(1), ..Default::default() }
}

#[test]
fn a_batch_completes_after_polls_and_a_rerun_sends_nothing() {
    let fake = serve(PLAN);
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache.jsonl");
    std::env::set_var("COTLAB_TEST_BATCH_KEY", "sk-batch-secret-123");
    let t = teacher(OpenAiOptions { api_key_env: Some("COTLAB_TEST_BATCH_KEY".into()), ..options(&fake.url, Retry::Batch) }, &cache);
    let ds = arith(5);
    let r = t.ask(&ds, &level1()).unwrap();
    assert_eq!((r.requests, r.failed, r.cache_hits), (5, 0, 0));
    {
        let s = fake.state.lock().unwrap();
        assert_eq!((s.uploads, s.batches.len(), s.polls, s.chats), (1, 1, PLAN.polls_before_end + 1, 0));
        assert!(s.seen.iter().all(|(_, a)| a == "Bearer sk-batch-secret-123"), "every call carries the key: {:?}", s.seen);
    }
    // One line per row, under its cache key, with the body the sync client sends.
    let lines: HashMap<String, Value> = fake.input(0).into_iter().map(|l| (l["custom_id"].as_str().unwrap().to_string(), l)).collect();
    assert_eq!(lines.len(), 5);
    for row in &r.rows {
        let line = &lines[row.cache_key.as_deref().unwrap()];
        assert_eq!(
            (line["method"].as_str(), line["url"].as_str(), line["body"]["model"].as_str()),
            (Some("POST"), Some("/v1/chat/completions"), Some("loopback"))
        );
        assert_eq!(line["body"]["messages"][1]["content"].as_str().map(|u| u.contains(&row.question)), Some(true));
    }
    for row in &r.rows {
        let key = row.cache_key.as_deref().unwrap();
        assert_eq!(row.rationale.as_deref(), Some(format!("Answer to {key} (Bearer [redacted]). The answer is 7").as_str()));
        assert_eq!((row.prompt_tokens, row.completion_tokens, row.agrees.is_some()), (10, 5, true));
    }
    let stored = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(stored.lines().count(), 5);
    assert!(!stored.contains("sk-batch-secret") && stored.contains("[redacted]"), "{stored}");
    let journal = std::fs::read_to_string(journal_path(&cache)).unwrap();
    assert_eq!(journal.lines().count(), 2, "submitted, then merged: {journal}");
    let before = fake.requests();
    let again = teacher(options(&fake.url, Retry::Batch), &cache).ask(&ds, &level1()).unwrap();
    assert_eq!((again.requests, again.cache_hits, fake.requests()), (0, 5, before), "a re-run sends nothing");
}

#[test]
fn rows_failed_inside_a_batch_are_asked_again_per_batch_retry() {
    for retry in [Retry::Batch, Retry::Sync] {
        let fake = serve(Plan { failing_batches: 1, ..PLAN });
        let d = tempfile::tempdir().unwrap();
        let r = teacher(options(&fake.url, retry), &d.path().join("cache.jsonl")).ask(&arith(6), &level1()).unwrap();
        assert_eq!((r.requests, r.failed), (6, 0), "{retry}");
        assert!(r.rows.iter().all(|row| row.rationale.as_deref().is_some_and(|t| t.ends_with("The answer is 7"))), "{retry}");
        let s = fake.state.lock().unwrap();
        match retry {
            Retry::Batch => assert_eq!((s.batches.len(), s.chats), (2, 0)),
            Retry::Sync => assert_eq!((s.batches.len(), s.chats), (1, 3)),
        }
        drop(s);
        if retry == Retry::Batch {
            // The smaller batch holds exactly the rows on the first batch's odd lines.
            let first: Vec<Value> = fake.input(0).into_iter().skip(1).step_by(2).map(|l| l["custom_id"].clone()).collect();
            let second: Vec<Value> = fake.input(1).into_iter().map(|l| l["custom_id"].clone()).collect();
            assert_eq!(second, first);
        }
    }
    // Failing again in the retry batch: a row error naming what the batch said, nothing more sent.
    let fake = serve(Plan { failing_batches: 2, ..PLAN });
    let d = tempfile::tempdir().unwrap();
    let r = teacher(options(&fake.url, Retry::Batch), &d.path().join("cache.jsonl")).ask(&arith(6), &level1()).unwrap();
    assert_eq!((fake.creations(), r.failed), (2, 1));
    let err = r.rows.iter().find_map(|row| row.error.as_deref()).unwrap();
    assert!(err.contains("in the batch: HTTP 500") && err.contains("The server had an error"), "{err}");
}

#[test]
fn an_expired_batch_keeps_its_partial_output_and_asks_for_the_rest() {
    let fake = serve(Plan { first_expires: true, ..PLAN });
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache.jsonl");
    let r = teacher(options(&fake.url, Retry::Batch), &cache).ask(&arith(6), &level1()).unwrap();
    assert_eq!((r.requests, r.failed), (6, 0));
    assert_eq!(fake.creations(), 2);
    let first: Vec<Value> = fake.input(0).into_iter().map(|l| l["custom_id"].clone()).collect();
    let second: Vec<Value> = fake.input(1).into_iter().map(|l| l["custom_id"].clone()).collect();
    assert_eq!(second, first[3..].to_vec(), "only the requests the expired batch left unanswered");
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 6);
}

#[test]
fn a_batch_still_running_at_batch_timeout_s_is_resumed_by_the_next_run() {
    let fake = serve(Plan { polls_before_end: 6, ..PLAN });
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache.jsonl");
    let opts = OpenAiOptions { poll_s: 0.05, poll_max_s: 0.05, batch_timeout_s: 0.12, ..options(&fake.url, Retry::Batch) };
    let e = teacher(opts.clone(), &cache).ask(&arith(3), &level1()).unwrap_err().to_string();
    assert!(e.contains("batch_0 is still in_progress") && e.contains("re-run to resume polling"), "{e}");
    let r = teacher(OpenAiOptions { batch_timeout_s: 30.0, ..opts }, &cache).ask(&arith(3), &level1()).unwrap();
    assert_eq!((r.failed, fake.creations(), fake.state.lock().unwrap().uploads), (0, 1, 1));
}

#[test]
fn an_endpoint_without_the_batch_api_is_an_error_saying_so() {
    let server = common::fake_server(|_, _, s| common::write_http_response(s, "404 Not Found", "", r#"{"error": {"message": "Not Found"}}"#));
    let d = tempfile::tempdir().unwrap();
    let e = teacher(options(&format!("http://{}/v1", server.addr), Retry::Batch), &d.path().join("c.jsonl")).ask(&arith(2), &level1()).unwrap_err().to_string();
    assert!(e.contains("POST files") && e.contains("HTTP 404") && e.contains("mode: \"sync\""), "{e}");
    assert_eq!(server.count.load(std::sync::atomic::Ordering::SeqCst), 1, "a 404 is not retried");
}

#[test]
fn a_run_killed_while_polling_resumes_the_same_batch() {
    require!(Data);
    let fake = serve(PLAN);
    let d = tempfile::tempdir().unwrap();
    let runs = d.path().join("runs");
    let script = d.path().join("teach.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let t = teacher("openai", #{{ base_url: "{}", model: "loopback", api_key_env: (), max_retries: 1, backoff_s: 0.01, mode: "batch", poll_s: 0.3, poll_max_s: 0.3, cache: "cache.jsonl" }});
               let r = t.ask(dataset("arith", #{{ n: 4, seed: 1 }}), #{{ level: 1 }});
               print(`requests ${{r.requests}} cached ${{r.cache_hits}} failed ${{r.failed}}`);"#,
            fake.url,
        ),
    )
    .unwrap();
    let run = || {
        let mut c = common::cotlab();
        c.arg("run").arg(&script).arg("--out").arg(d.path().join("o")).arg("--runs").arg(&runs);
        c
    };
    let mut child = run().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    while fake.state.lock().unwrap().polls == 0 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before polling its batch");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let polls_before = fake.state.lock().unwrap().polls;
    let out = common::run(&mut run());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("requests 4 cached 0 failed 0"), "{}", out.stdout);
    assert!(out.stderr.contains("resuming batch batch_0"), "{}", out.stderr);
    let s = fake.state.lock().unwrap();
    assert_eq!((s.batches.len(), s.uploads), (1, 1), "one batch created, ever");
    assert!(s.polls > polls_before, "the second run polled the same batch");
    println!("batch run killed mid-poll and resumed: 1 batch id (batch_0), {} polls", s.polls);
}

#[test]
fn a_run_asking_part_of_a_journaled_batch_resumes_it_and_keeps_every_answer() {
    let fake = serve(Plan { polls_before_end: 4, ..PLAN });
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache.jsonl");
    let opts = OpenAiOptions { poll_s: 0.05, poll_max_s: 0.05, batch_timeout_s: 0.01, ..options(&fake.url, Retry::Batch) };
    let all = arith(4);
    assert!(teacher(opts.clone(), &cache).ask(&all, &level1()).is_err(), "stops waiting at batch_timeout_s");
    let mut part = all.clone();
    part.examples.truncate(2);
    let r = teacher(OpenAiOptions { batch_timeout_s: 30.0, ..opts }, &cache).ask(&part, &level1()).unwrap();
    assert_eq!((r.requests, r.failed, fake.creations()), (2, 0, 1), "the journaled batch holds these requests: none submitted again");
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 4, "the answers this run did not ask are kept too");
}

#[test]
fn batch_options_are_checked_and_name_the_choices() {
    let e = serde_json::from_value::<OpenAiOptions>(json!({"mode": "bulk"})).unwrap_err().to_string();
    assert!(e.contains("sync") && e.contains("batch"), "{e}");
    let e = serde_json::from_value::<OpenAiOptions>(json!({"batch_retry": "later"})).unwrap_err().to_string();
    assert!(e.contains("batch") && e.contains("sync"), "{e}");
    let slow = OpenAiOptions { poll_s: 60.0, poll_max_s: 30.0, ..Default::default() };
    assert!(slow.validate().unwrap_err().to_string().contains("poll_max_s"));
    let never = OpenAiOptions { poll_s: 0.0, ..Default::default() };
    assert!(never.validate().unwrap_err().to_string().contains("poll_s"));
}
