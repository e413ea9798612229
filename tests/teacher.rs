//! Teachers against a loopback HTTP server that injects faults: 429 with Retry-After, 500,
//! a hang past the client timeout, a dropped connection, malformed JSON. Requests are retried
//! within limits; answered ones are never asked again; a killed run resumes with only the
//! missing requests. Waiting is bounded: Retry-After (any number, any date) never waits past
//! max_wait_s, and timeout_s bounds a whole attempt, however slowly the server drips.

#[macro_use]
mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cotlab::data::{load_dataset, DatasetOptions};
use cotlab::teacher::cache::{Cache, Entry};
use cotlab::teacher::openai::{Ask, Completion, OpenAi, OpenAiOptions};
use cotlab::teacher::{AskOptions, Backend, Teacher, Trace};

#[derive(Clone, Copy, Debug)]
enum Fault {
    Ok,
    TooMany,
    Error500,
    Hang,
    Drop,
    BadJson,
}

struct Server {
    url: String,
    count: Arc<AtomicUsize>,
}

/// Serve on 127.0.0.1: request k (0-based) gets `script[k]`, later ones `rest`. Each OK answer
/// waits `delay_ms`.
fn serve(script: Vec<Fault>, rest: Fault, delay_ms: u64) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let k = c.fetch_add(1, Ordering::SeqCst);
            let fault = script.get(k).copied().unwrap_or(rest);
            std::thread::spawn(move || {
                if common::read_http_request(&mut stream).is_none() {
                    return;
                }
                let respond = common::write_http_response;
                match fault {
                    Fault::Ok => {
                        std::thread::sleep(Duration::from_millis(delay_ms));
                        let body = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": format!("Reasoning #{k}. The answer is 7")}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}).to_string();
                        respond(&mut stream, "200 OK", "", &body);
                    }
                    Fault::TooMany => respond(&mut stream, "429 Too Many Requests", "Retry-After: 0\r\n", "{\"error\": \"slow down\"}"),
                    Fault::Error500 => respond(&mut stream, "500 Internal Server Error", "", "{\"error\": \"boom\"}"),
                    Fault::Hang => std::thread::sleep(Duration::from_secs(3)),
                    Fault::Drop => drop(stream),
                    Fault::BadJson => respond(&mut stream, "200 OK", "", "{\"choices\": [ not json"),
                }
            });
        }
    });
    Server { url, count }
}

fn client(url: &str, retries: usize) -> OpenAi {
    OpenAi::new(OpenAiOptions {
        base_url: url.into(),
        model: "loopback".into(),
        api_key_env: None,
        allow_insecure_key: false,
        concurrency: 1,
        timeout_s: 0.5,
        max_retries: retries,
        backoff_s: 0.01,
        max_wait_s: 60.0,
        price_in: 2.5,
        price_out: 10.0,
        ..Default::default()
    })
    .unwrap()
}

fn arith(n: usize) -> cotlab::data::Dataset {
    load_dataset(&common::data_dir(), "arith", &DatasetOptions { n: Some(n), seed: Some(1), ..Default::default() }).unwrap()
}

#[test]
fn faults_are_retried_and_answers_cached() {
    require!(Data, Model);
    use Fault::*;
    let server = serve(vec![TooMany, Error500, Hang, Drop, BadJson], Ok, 0);
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("cache.jsonl")).unwrap());
    let t = Teacher {
        kind: "openai".into(),
        model: "loopback".into(),
        backend: cotlab::teacher::Backend::OpenAi(Box::new(client(&server.url, 6))),
        cache: Some(cache),
    };
    let ds = arith(3);
    let o = AskOptions { level: Some(2), ..Default::default() };
    let r = t.ask(&ds, &o).unwrap();
    assert_eq!((r.requests, r.failed, r.cache_hits), (3, 0, 0));
    assert_eq!(server.count.load(Ordering::SeqCst), 8, "5 faults retried + 3 answers");
    assert!(r.rows.iter().all(|row| row.rationale.as_deref().is_some_and(|t| t.ends_with("The answer is 7"))));
    assert_eq!((r.prompt_tokens, r.completion_tokens), (30, 15));
    assert!((r.cost_usd - (30.0 * 2.5 + 15.0 * 10.0) / 1e6).abs() < 1e-12);
    let f = r.frame().unwrap();
    assert!(f.columns().iter().any(|c| c == "template_version") && f.columns().iter().any(|c| c == "cache_key"));
    assert!(r.rows.iter().all(|row| (row.cost_usd - (10.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12), "cost per row");
    // A second run of the same request is free, and says so: nothing spent, what the cache served apart.
    let again = t.ask(&ds, &o).unwrap();
    assert_eq!((again.requests, again.cache_hits), (0, 3));
    assert_eq!((again.cost_usd, again.prompt_tokens, again.completion_tokens), (0.0, 0, 0));
    assert!((again.cached_cost_usd - r.cost_usd).abs() < 1e-12, "{} vs {}", again.cached_cost_usd, r.cost_usd);
    assert_eq!(server.count.load(Ordering::SeqCst), 8);
    // Another level is another prompt: new requests.
    let l6 = t.ask(&ds, &AskOptions { level: Some(6), ..Default::default() }).unwrap();
    assert_eq!(l6.requests, 3);
}

#[test]
fn exhausted_retries_fail_per_request_and_the_run_continues() {
    require!(Data, Model);
    let bad = serve(vec![], Fault::Error500, 0);
    let d = tempfile::tempdir().unwrap();
    let cache_path = d.path().join("cache.jsonl");
    let ds = arith(2);
    let o = AskOptions { level: Some(1), ..Default::default() };
    let t = Teacher {
        kind: "openai".into(),
        model: "loopback".into(),
        backend: Backend::OpenAi(Box::new(client(&bad.url, 2))),
        cache: Some(Arc::new(Cache::open(&cache_path).unwrap())),
    };
    let r = t.ask(&ds, &o).unwrap();
    assert_eq!(r.failed, 2);
    assert!(r.rows[0].error.as_deref().unwrap().contains("gave up after 3 attempts: HTTP 500"), "{:?}", r.rows[0].error);
    assert_eq!(bad.count.load(Ordering::SeqCst), 6);
    // Failures are not cached: a healthy endpoint later gets exactly the failed requests.
    let good = serve(vec![], Fault::Ok, 0);
    let t = Teacher {
        kind: "openai".into(),
        model: "loopback".into(),
        backend: Backend::OpenAi(Box::new(client(&good.url, 2))),
        cache: Some(Arc::new(Cache::open(&cache_path).unwrap())),
    };
    let r = t.ask(&ds, &o).unwrap();
    assert_eq!((r.requests, r.failed), (2, 0));
}

#[test]
fn a_killed_run_resumes_with_only_the_missing_requests() {
    require!(Data, Model);
    let server = serve(vec![], Fault::Ok, 250);
    let d = tempfile::tempdir().unwrap();
    // A script names its cache under the runs dir (the sandbox refuses other paths).
    let runs = d.path().join("runs");
    let cache = runs.join("cache.jsonl");
    let script = d.path().join("teach.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let t = teacher("openai", #{{ base_url: "{}", model: "loopback", api_key_env: (), concurrency: 1, timeout_s: 5.0, max_retries: 1, backoff_s: 0.01, cache: "cache.jsonl" }});
               let r = t.ask(dataset("arith", #{{ n: 12, seed: 1 }}), #{{ level: 1 }});
               print(`requests ${{r.requests}} cached ${{r.cache_hits}} failed ${{r.failed}}`);"#,
            server.url,
        ),
    )
    .unwrap();
    let mut child = common::cotlab().arg("run").arg(&script).arg("--out").arg(d.path().join("o")).arg("--runs").arg(&runs).spawn().unwrap();
    while server.count.load(Ordering::SeqCst) < 5 {
        // A script that fails early would otherwise leave this loop waiting forever.
        assert!(child.try_wait().unwrap().is_none(), "the run ended before sending 5 requests");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let before = server.count.load(Ordering::SeqCst);
    let answered = std::fs::read_to_string(&cache).unwrap().lines().filter(|l| l.contains("\"key\"")).count();
    assert!((4..=5).contains(&answered), "answered {answered} of {before} sent");
    let out = common::run(common::cotlab().arg("run").arg(&script).arg("--out").arg(d.path().join("o")).arg("--runs").arg(&runs));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent_again = server.count.load(Ordering::SeqCst) - before;
    assert_eq!(sent_again, 12 - answered, "only the missing requests are sent");
    assert!(out.stdout.contains(&format!("requests {} cached {answered} failed 0", 12 - answered)), "{}", out.stdout);
}

#[test]
fn replay_and_local_teachers() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let ds = load_dataset(&common::data_dir(), "svamp", &DatasetOptions { split: Some("train".into()), limit: Some(5), ..Default::default() }).unwrap();
    let t = Teacher {
        kind: "replay".into(),
        model: "gpt-4o".into(),
        backend: Backend::Replay { dir: common::data_dir(), dataset: "svamp".into(), teacher: "gpt-4o".into() },
        cache: None,
    };
    let r = t.ask(&ds, &AskOptions { level: Some(1), ..Default::default() }).unwrap();
    assert_eq!((r.failed, r.requests), (0, 0));
    assert!(r.rows.iter().all(|x| x.agrees == Some(true)), "released level-1 rationales agree with gold");
    let r6 = t.ask(&ds, &AskOptions { level: Some(6), ..Default::default() }).unwrap();
    let words = |r: &cotlab::teacher::AskReport| r.rows.iter().map(|x| x.rationale.as_ref().unwrap().split_whitespace().count()).sum::<usize>();
    assert!(words(&r6) > words(&r));
    // The test split has no released rationales: a clear per-row error.
    let test = load_dataset(&common::data_dir(), "svamp", &DatasetOptions { limit: Some(1), ..Default::default() }).unwrap();
    let miss = t.ask(&test, &AskOptions { level: Some(1), ..Default::default() }).unwrap();
    assert!(miss.rows[0].error.as_deref().unwrap().contains("has no rationale for this question"));

    // Local teacher: the default student writes, cached on disk, a second run is free.
    let s = cotlab::model::Student::load(&cotlab::model::default_model_path(), &candle_core::Device::Cpu).unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("local.jsonl")).unwrap());
    let lt = Teacher { kind: "local".into(), model: "smollm2".into(), backend: Backend::Local(Arc::new(s)), cache: Some(cache.clone()) };
    let few = arith(2);
    let o = AskOptions { level: Some(1), max_tokens: 24, ..Default::default() };
    let a = lt.ask(&few, &o).unwrap();
    assert_eq!((a.requests, a.failed), (2, 0));
    assert!(a.rows.iter().all(|r| r.rationale.as_ref().is_some_and(|t| !t.is_empty())));
    let b = lt.ask(&few, &o).unwrap();
    assert_eq!((b.requests, b.cache_hits), (0, 2));
    assert_eq!(cache.len(), 2);
}

#[test]
fn teacher_demo_script_local_then_openai_and_a_free_second_run() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/teacher_demo.rhai");
    let run = |extra: &[String]| {
        let mut c = common::cotlab();
        c.arg("run").arg(&script).arg("--out").arg(d.path().join("o")).arg("--runs").arg(d.path().join("runs"));
        for e in extra {
            c.args(["--set", e]);
        }
        common::run(&mut c)
    };
    let cache = "cache=c.jsonl".to_string();
    let local = run(&[cache.clone(), "max_tokens=40".into()]);
    assert_eq!(local.code, 0, "{}\n{}", local.stdout, local.stderr);
    assert!(local.stdout.contains("level 1: TeacherRun(20 rationales, 20 requests"), "{}", local.stdout);
    assert!(local.stdout.contains("level 6: TeacherRun(20 rationales, 20 requests"), "{}", local.stdout);
    let server = serve(vec![], Fault::Ok, 0);
    let oa = [cache.clone(), "kind=openai".into(), format!("base_url={}", server.url), "model=loopback".into()];
    let first = run(&oa);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("requests 20, cached 0, failed 0"), "{}", first.stdout);
    assert_eq!(server.count.load(Ordering::SeqCst), 40);
    let second = run(&oa);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stdout.contains("requests 0, cached 20, failed 0"), "{}", second.stdout);
    assert_eq!(server.count.load(Ordering::SeqCst), 40, "the second run sends nothing");
    let csv = std::fs::read_to_string(d.path().join("o/teacher_summary.csv")).unwrap();
    assert!(csv.contains("openai,loopback,1,plain,20") && csv.contains("openai,loopback,6,plain,20"), "{csv}");
}

fn bounded(url: &str, timeout_s: f64, max_retries: usize, max_wait_s: f64) -> OpenAi {
    OpenAi::new(OpenAiOptions {
        base_url: url.into(),
        model: "loopback".into(),
        concurrency: 1,
        timeout_s,
        max_retries,
        backoff_s: 0.01,
        max_wait_s,
        ..Default::default()
    })
    .unwrap()
}

/// One request, and how long it took.
fn timed(client: &OpenAi) -> (Result<Completion, String>, Duration) {
    let started = Instant::now();
    let r = client.complete(&Ask { system: "You are a teacher.", user: "What is 3 + 4?", temperature: 0.0, top_p: 1.0, max_tokens: 16, seed: 1 });
    (r, started.elapsed())
}

/// A Retry-After value, however absurd, neither panics nor stalls the run: non-finite and huge
/// values wait `max_wait_s`, negative and past ones nothing beyond the backoff, and an HTTP date
/// in the near future is honoured.
#[test]
fn retry_after_waits_at_most_max_wait_s() {
    // (Retry-After, or "+3s" for an HTTP date 3 s after the 429 is sent; max_wait_s; the
    // shortest and longest the request may take)
    let cases = [
        ("inf", 1.0, 1.0, 4.0),
        ("1e300", 1.0, 1.0, 4.0),
        ("100000", 1.0, 1.0, 4.0),
        ("NaN", 1.0, 1.0, 4.0),
        ("-5", 30.0, 0.0, 2.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 30.0, 0.0, 2.0),
        ("+3s", 30.0, 2.0, 6.0),
        ("soon", 30.0, 0.0, 2.0),
    ];
    std::thread::scope(|s| {
        for (after, max_wait_s, lo, hi) in cases {
            s.spawn(move || {
                let server = common::fake_server(move |k, _, stream| {
                    if k == 0 {
                        let value = if after == "+3s" { common::http_date(SystemTime::now() + Duration::from_secs(3)) } else { after.to_string() };
                        common::write_http_response(stream, "429 Too Many Requests", &format!("Retry-After: {value}\r\n"), "{\"error\": \"slow down\"}");
                    } else {
                        common::write_http_response(stream, "200 OK", "", &common::chat_answer("The answer is 7"));
                    }
                });
                let (r, took) = timed(&bounded(&format!("http://{}/v1", server.addr), 5.0, 1, max_wait_s));
                let c = r.unwrap_or_else(|e| panic!("Retry-After: {after}: {e}"));
                assert_eq!((c.text.as_str(), c.attempts), ("The answer is 7", 2), "Retry-After: {after}");
                let took = took.as_secs_f64();
                assert!((lo..hi).contains(&took), "Retry-After: {after}: took {took:.2} s, expected {lo}..{hi}");
            });
        }
    });
    // The cap itself is a finite, bounded number.
    for bad in [f64::INFINITY, -1.0, 1e9] {
        let e = OpenAi::new(OpenAiOptions { max_wait_s: bad, ..OpenAiOptions::default() }).err().expect("refused");
        assert!(e.contains("'max_wait_s' must be in 0..=3600"), "{e}");
    }
}

/// `timeout_s` bounds a whole attempt: a server that drips its headers, its answer or its
/// error body slower than that fails the attempt with an error naming timeout_s, in about
/// timeout_s, not when the last byte arrives; a fast drip still succeeds.
#[test]
fn timeout_s_bounds_a_whole_attempt_however_slowly_the_server_drips() {
    /// What the server drips, one byte per `gap_ms` (at most 5.5 s of it).
    #[derive(Clone, Copy, Debug)]
    enum Drip {
        Headers,
        Answer,
        ErrorBody,
    }
    fn serve_drip(what: Drip, gap_ms: u64) -> common::FakeServer {
        common::fake_server(move |_, _, stream| {
            let (status, body) = match what {
                Drip::ErrorBody => ("500 Internal Server Error", "{\"error\": \"busy, busy, busy, busy, busy, busy, busy, busy, busy, busy\"}".to_string()),
                _ => ("200 OK", common::chat_answer("Dripped. The answer is 7")),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let (fast, slow) = match what {
                Drip::Headers => (String::new(), head + body.as_str()),
                _ => (head, body),
            };
            if stream.write_all(fast.as_bytes()).is_err() {
                return;
            }
            for b in slow.bytes().take((5500 / gap_ms.max(1)) as usize) {
                if stream.write_all(&[b]).and_then(|_| stream.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(gap_ms));
            }
        })
    }
    std::thread::scope(|s| {
        for (what, retries) in [(Drip::Headers, 0), (Drip::Answer, 0), (Drip::ErrorBody, 0), (Drip::Answer, 1)] {
            s.spawn(move || {
                let server = serve_drip(what, 50);
                let (r, took) = timed(&bounded(&format!("http://{}/v1", server.addr), 0.5, retries, 0.05));
                let e = r.err().unwrap_or_else(|| panic!("{what:?}: a dripped request succeeded"));
                assert!(e.contains("within timeout_s = 0.5 s") && e.contains("raise timeout_s"), "{what:?}: {e}");
                if retries > 0 {
                    assert!(e.starts_with("gave up after 2 attempts: "), "{e}");
                }
                let limit = 0.5 * (retries + 1) as f64 + 1.5;
                assert!(took.as_secs_f64() < limit, "{what:?}: took {took:?}, not about timeout_s per attempt");
                assert_eq!(server.count.load(Ordering::SeqCst), retries + 1);
            });
        }
    });
    // A drip that ends within timeout_s is an answer.
    let server = serve_drip(Drip::Answer, 1);
    let (r, _) = timed(&bounded(&format!("http://{}/v1", server.addr), 10.0, 0, 0.05));
    assert_eq!(r.unwrap().text, "Dripped. The answer is 7");
}

fn entry(key: &str, text: &str) -> Entry {
    Entry { key: key.into(), text: text.into(), prompt_tokens: 1, completion_tokens: 1, reasoning: None, reasoning_tokens: None }
}

/// The shared cache's case from issue 28: one process puts answers while another opens the cache
/// and finds a torn last line (a third died mid-write). Opening must not replace the file under
/// the writer: every answer put is there for the next reader.
#[test]
fn shared_cache_keeps_answers_put_while_another_process_opens_it() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cache.jsonl");
    let writer = Cache::open(&p).unwrap();
    writer.put(entry("k0", "answer 0")).unwrap();
    std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{\"key\":\"dead\",\"text\":\"half an ans").unwrap();
    assert_eq!(Cache::open(&p).unwrap().len(), 1, "the torn line is no answer");
    for k in 1..40 {
        writer.put(entry(&format!("k{k}"), &format!("answer {k}"))).unwrap();
    }
    let back = Cache::open(&p).unwrap();
    assert_eq!(back.len(), 40, "no answer is lost");
    assert_eq!(back.get("k39").unwrap().text, "answer 39");
}

/// A 2-layer student with random weights and a 96-word vocabulary (`w0`..`w95`): nonsense, but
/// text, and no download needed.
fn tiny_student() -> cotlab::model::Student {
    use tokenizers::models::wordlevel::WordLevel;
    let config = cotlab::model::ModelConfig {
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 512,
        ..cotlab::model::random::preset("smollm2-135m").unwrap()
    };
    let mut s = cotlab::model::random::random_student_with(config, "tiny", "none", &candle_core::Device::Cpu, 1).unwrap();
    let vocab = (0..96u32).map(|i| (format!("w{i}"), i)).collect();
    let mut tok = tokenizers::Tokenizer::new(WordLevel::builder().vocab(vocab).unk_token("w0".into()).build().unwrap());
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::WhitespaceSplit));
    s.tokenizer = tok;
    s
}

fn local(s: Arc<cotlab::model::Student>, cache: &Arc<Cache>) -> Teacher {
    // What Workspace::student_teacher names it: the path it was loaded from.
    Teacher { kind: "local".into(), model: s.source.display().to_string(), backend: Backend::Local(s), cache: Some(cache.clone()) }
}

fn arith_offline(n: usize) -> cotlab::data::Dataset {
    load_dataset(&cotlab::data::DataDir("unused".into()), "arith", &DatasetOptions { n: Some(n), seed: Some(1), ..Default::default() }).unwrap()
}

/// Sample k is drawn with seed + k: at temperature > 0 a question's samples differ (they had
/// shared one seed and came out identical), and a re-run without the cache draws the same ones.
#[test]
fn local_teacher_samples_differ_and_a_rerun_draws_the_same() {
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(tiny_student());
    let ds = arith_offline(2);
    let o = AskOptions { level: Some(1), n: 3, temperature: 1.0, max_tokens: 16, seed: 5, ..Default::default() };
    let a = local(s.clone(), &Arc::new(Cache::open(&d.path().join("a.jsonl")).unwrap())).ask(&ds, &o).unwrap();
    assert_eq!((a.rows.len(), a.requests, a.failed), (6, 6, 0));
    for q in a.rows.chunks(3) {
        let texts: Vec<&str> = q.iter().map(|r| r.rationale.as_deref().unwrap()).collect();
        assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2], "{texts:?}");
        assert_eq!(q.iter().map(|r| r.seed).collect::<Vec<_>>(), vec![5, 6, 7]);
    }
    let b = local(s, &Arc::new(Cache::open(&d.path().join("b.jsonl")).unwrap())).ask(&ds, &o).unwrap();
    assert_eq!(b.requests, 6, "a fresh cache: generated again");
    let texts = |r: &cotlab::teacher::AskReport| r.rows.iter().map(|x| x.rationale.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b));
}

/// New weights saved at the same path (sft into the same dir) are another teacher: the cache
/// key covers the weights, not just the path.
#[test]
fn local_teacher_key_changes_when_new_weights_are_saved_at_the_same_path() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    let cache = Arc::new(Cache::open(&d.path().join("c.jsonl")).unwrap());
    let ds = arith_offline(2);
    let o = AskOptions { level: Some(1), max_tokens: 8, ..Default::default() };
    let save_and_load = || {
        let _ = std::fs::remove_dir_all(&m);
        cotlab::train::export::export_hf(&tiny_student(), &m).unwrap();
        Arc::new(cotlab::model::Student::load(&m, &candle_core::Device::Cpu).unwrap())
    };
    let old = save_and_load();
    let a = local(old.clone(), &cache).ask(&ds, &o).unwrap();
    assert_eq!((a.requests, a.cache_hits), (2, 0));
    let again = local(Arc::new(cotlab::model::Student::load(&m, &candle_core::Device::Cpu).unwrap()), &cache).ask(&ds, &o).unwrap();
    assert_eq!((again.requests, again.cache_hits), (0, 2), "the same weights reloaded: served from the cache");
    let new = save_and_load();
    assert_eq!(new.source, old.source);
    let b = local(new, &cache).ask(&ds, &o).unwrap();
    assert_eq!((b.requests, b.cache_hits), (2, 0), "new weights at the old path are asked again");
    assert!(a.rows.iter().zip(&b.rows).all(|(x, y)| x.cache_key != y.cache_key));
}

/// A loaded student trained in place (a script's `s.sft(...)` then `teacher(s, ...)`) is
/// another teacher too, though its path is the same.
#[test]
fn local_teacher_key_changes_when_the_loaded_student_is_trained() {
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("c.jsonl")).unwrap());
    let s = Arc::new(tiny_student());
    let ds = arith_offline(2);
    let o = AskOptions { level: Some(1), max_tokens: 8, ..Default::default() };
    let a = local(s.clone(), &cache).ask(&ds, &o).unwrap();
    assert_eq!(local(s.clone(), &cache).ask(&ds, &o).unwrap().cache_hits, 2);
    let before = s.weights_fingerprint().unwrap();
    let w = &s.params()["model.norm.weight"];
    w.set(&(w.as_tensor() * 1.5).unwrap()).unwrap();
    assert_ne!(s.weights_fingerprint().unwrap(), before);
    let b = local(s, &cache).ask(&ds, &o).unwrap();
    assert_eq!((b.requests, b.cache_hits), (2, 0));
    assert!(a.rows.iter().zip(&b.rows).all(|(x, y)| x.cache_key != y.cache_key));
}

/// An endpoint serving a reasoning model as OpenAI does: a request with `max_tokens`,
/// `temperature` or `top_p` is a 400 naming the parameter; one with `max_completion_tokens`
/// gets the answer, its trace in `reasoning_content` and the trace's tokens in the usage details.
/// Every request body is kept.
fn serve_reasoner() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some((_, body)) = common::read_http_exchange(&mut stream) else { continue };
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push(v.clone());
            let refused = ["max_tokens", "temperature", "top_p"].into_iter().find(|k| v.get(*k).is_some());
            match refused {
                Some(k) => {
                    let e = serde_json::json!({"error": {"message": format!("Unsupported parameter: '{k}' is not supported with this model."), "type": "invalid_request_error", "param": k, "code": "unsupported_parameter"}});
                    common::write_http_response(&mut stream, "400 Bad Request", "", &e.to_string());
                }
                None => {
                    let a = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "The answer is 7", "reasoning_content": "3 + 4 = 7, checked twice."}}],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 50, "completion_tokens_details": {"reasoning_tokens": 44}}});
                    common::write_http_response(&mut stream, "200 OK", "", &a.to_string());
                }
            }
        }
    });
    (url, bodies)
}

/// Issue 30: a reasoning model asked with sampling parameters refuses them; before, every row
/// failed; now the run stops at once with the option to set, and with `reasoning: true` (or a
/// reasoning model's name) the requests carry `max_completion_tokens` and the trace is kept.
#[test]
fn a_reasoning_model_is_asked_as_one_and_its_trace_kept_apart() {
    require!(Data);
    let (url, bodies) = serve_reasoner();
    let d = tempfile::tempdir().unwrap();
    let teacher = |reasoning: Option<bool>, model: &str| Teacher {
        kind: "openai".into(),
        model: model.into(),
        backend: Backend::OpenAi(Box::new(
            OpenAi::new(OpenAiOptions {
                base_url: url.clone(),
                model: model.into(),
                concurrency: 1,
                reasoning,
                price_in: 1.0,
                price_out: 4.0,
                ..Default::default()
            })
            .unwrap(),
        )),
        cache: Some(Arc::new(Cache::open(&d.path().join("cache.jsonl")).unwrap())),
    };
    let ds = arith(4);
    let o = AskOptions { level: Some(3), ..Default::default() };
    let e = teacher(Some(false), "my-reasoner").ask(&ds, &o).unwrap_err().to_string();
    println!("before (reasoning: false): {e}");
    assert!(e.contains("'max_tokens'") && e.contains("set reasoning: true"), "{e}");
    assert_eq!(bodies.lock().unwrap().len(), 1, "a refused configuration stops at the first request");
    for (reasoning, model) in [(Some(true), "my-reasoner"), (None, "o4-mini")] {
        let r = teacher(reasoning, model).ask(&ds, &o).unwrap();
        println!("after (reasoning: {reasoning:?}, model {model}): {} requests, {} failed, ${:.6} spent", r.requests, r.failed, r.cost_usd);
        assert_eq!((r.requests, r.failed), (4, 0), "{model}");
        let last = bodies.lock().unwrap().last().unwrap().clone();
        assert_eq!(last["max_completion_tokens"], 512, "{last}");
        assert!(last.get("temperature").is_none() && last.get("top_p").is_none());
        for row in &r.rows {
            assert_eq!((row.rationale.as_deref(), row.reasoning.as_deref()), (Some("The answer is 7"), Some("3 + 4 = 7, checked twice.")));
            assert_eq!((row.completion_tokens, row.reasoning_tokens), (50, Some(44)));
        }
        assert!((r.cost_usd - 4.0 * (20.0 + 50.0 * 4.0) / 1e6).abs() < 1e-12);
        // What sft trains on: the answer, the R1 layout, or the trace alone.
        let text = |t: Trace| r.corpus(&ds, t).rationales[0].text.clone();
        assert_eq!(text(Trace::None), "The answer is 7");
        assert_eq!(text(Trace::Think), "<think>\n3 + 4 = 7, checked twice.\n</think>\n\nThe answer is 7");
        assert_eq!(text(Trace::Only), "3 + 4 = 7, checked twice.");
        let f = r.frame().unwrap();
        for c in ["reasoning", "reasoning_tokens", "prompt_tokens", "completion_tokens", "cost_usd"] {
            assert!(f.columns().iter().any(|x| x == c), "{c}");
        }
    }
    // Both asks hit the same requests: the second (o4-mini) is another model, so 4 + 4 answered.
    assert_eq!(bodies.lock().unwrap().len(), 9);
    // The trace survives the cache: a re-run serves it without a request.
    let again = teacher(Some(true), "my-reasoner").ask(&ds, &o).unwrap();
    println!("cached re-run: {} requests, ${} spent, ${:.6} served by the cache", again.requests, again.cost_usd, again.cached_cost_usd);
    assert_eq!((again.requests, again.cost_usd), (0, 0.0));
    assert!(again.cost_usd.is_sign_positive(), "0 spent, not -0");
    assert!(again.cached_cost_usd > 0.0);
    assert_eq!(again.rows[0].reasoning.as_deref(), Some("3 + 4 = 7, checked twice."));
    // A run without traces gives an empty corpus under `think`, each row counted as skipped.
    let plain = serve(vec![], Fault::Ok, 0);
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(client(&plain.url, 0))), cache: None };
    let c = t.ask(&ds, &o).unwrap().corpus(&ds, Trace::Think);
    assert_eq!((c.rationales.len(), c.skipped), (0, 4));
}

/// A teacher behind a loopback endpoint whose answer to a request is `answer(user message, times
/// this message was asked before, seed)`; it counts requests.
fn serve_answers(answer: impl Fn(&str, usize, u64) -> String + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (seen, answer, c) = (seen.clone(), answer.clone(), c.clone());
            std::thread::spawn(move || {
                let Some((_, body)) = common::read_http_exchange(&mut stream) else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let user = v["messages"][1]["content"].as_str().unwrap().to_string();
                let before = {
                    let mut m = seen.lock().unwrap();
                    let k = m.entry(user.clone()).or_insert(0);
                    *k += 1;
                    *k - 1
                };
                let text = answer(&user, before, v["seed"].as_u64().unwrap());
                let a = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
                common::write_http_response(&mut stream, "200 OK", "", &a.to_string());
            });
        }
    });
    Server { url, count }
}

/// The gold answer the prompt states under `with_gold` (`The correct answer is X.`).
fn gold_in(user: &str) -> f64 {
    let rest = user.split("The correct answer is ").nth(1).expect("with_gold prompt");
    rest.split(". Explain").next().unwrap().parse().unwrap()
}

/// How many first tries the fake teacher gets wrong for a question: 0, 1 or 2, fixed per question.
fn wrong_tries(user: &str) -> usize {
    user.bytes().map(usize::from).sum::<usize>() % 3
}

/// Issue 30: rejection sampling on `arith` with a teacher wrong on a known share of first tries:
/// every kept rationale is correct, the requests are exactly the tries expected, the counts per
/// question add up, and a re-run is served by the cache.
#[test]
fn rejection_sampling_keeps_only_correct_rationales_within_max_tries() {
    require!(Data);
    let server = serve_answers(|user, before, _| {
        let g = gold_in(user);
        let x = if before < wrong_tries(user) { g + 1.0 } else { g };
        format!("Adding up the parts gives {x}. The answer is {x}")
    });
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("cache.jsonl")).unwrap());
    let mut c = client(&server.url, 0);
    c.opts.concurrency = 4;
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(c)), cache: Some(cache) };
    let ds = arith(40);
    let o = AskOptions {
        level: Some(2),
        with_gold: true,
        filter: cotlab::teacher::sampling::Filter::Correct,
        max_tries: Some(2),
        keep: cotlab::teacher::sampling::Keep::First,
        ..Default::default()
    };
    let r = t.ask(&ds, &o).unwrap();
    // The prompts the server saw, per question: the same as the teacher builds.
    let users: Vec<String> =
        ds.examples.iter().map(|e| cotlab::teacher::prompts::build(&e.question, 2, cotlab::cot::Format::Plain, Some(&e.answer)).1).collect();
    let expected_requests: usize = users.iter().map(|u| (wrong_tries(u) + 1).min(2)).sum();
    let expected_wrong = users.iter().filter(|u| wrong_tries(u) >= 2).count();
    println!(
        "rejection sampling, {} questions, max_tries 2: {} kept, {} all wrong, {} failed; {} requests",
        ds.len(),
        r.questions.kept,
        r.questions.all_wrong,
        r.questions.failed,
        r.requests
    );
    assert!(expected_wrong > 0 && expected_wrong < 40, "the fixture must mix the cases");
    assert_eq!(r.requests, expected_requests);
    assert_eq!(server.count.load(Ordering::SeqCst), expected_requests);
    assert_eq!((r.questions.kept, r.questions.all_wrong, r.questions.failed), (40 - expected_wrong, expected_wrong, 0));
    assert_eq!(r.rows.len(), 40 - expected_wrong, "keep: first, one per solved question");
    assert!(r.rows.iter().all(|row| row.agrees == Some(true)), "every kept rationale is correct");
    // A question solved on its second try keeps that sample.
    assert!(r.rows.iter().any(|row| row.sample == 1));
    // The same run again: every request is a cache hit, the same rationales kept.
    let again = t.ask(&ds, &o).unwrap();
    assert_eq!((again.requests, again.cache_hits), (0, expected_requests));
    assert_eq!(again.rows.iter().map(|r| (&r.id, r.sample)).collect::<Vec<_>>(), r.rows.iter().map(|r| (&r.id, r.sample)).collect::<Vec<_>>());
    // max_tries without the filter would ask again for nothing: refused.
    let e = t.ask(&ds, &AskOptions { filter: Default::default(), ..o.clone() }).unwrap_err().to_string();
    assert!(e.contains("filter: \"correct\""), "{e}");
}

/// Issue 30: `vote` gives every row its question's majority answer over the samples and its share.
#[test]
fn votes_are_the_majority_answer_over_the_samples() {
    require!(Data);
    // Sample k is drawn with seed k: odd seeds answer 1 more.
    let server = serve_answers(|_, _, seed| format!("The answer is {}", 10 + seed % 2));
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(client(&server.url, 0))), cache: None };
    let ds = arith(2);
    let r = t.ask(&ds, &AskOptions { level: Some(1), n: 3, temperature: 0.7, vote: true, ..Default::default() }).unwrap();
    assert_eq!(r.rows.len(), 6);
    assert!(r.rows.iter().all(|row| row.vote.as_deref() == Some("10") && row.vote_share == Some(2.0 / 3.0)), "{:?}", r.rows[0]);
    let f = r.frame().unwrap();
    assert!(f.columns().iter().any(|c| c == "vote") && f.columns().iter().any(|c| c == "vote_share"));
}

/// Issue 30: your own prompts: the templates are rendered per question, sent as written, named in
/// each row's provenance and part of the cache key; a bad template fails before any request.
#[test]
fn your_own_prompts_are_sent_and_named_in_the_provenance() {
    require!(Data);
    let (url, bodies) = serve_reasoner();
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("cache.jsonl")).unwrap());
    let opts = OpenAiOptions { base_url: url, model: "my-reasoner".into(), concurrency: 1, reasoning: Some(true), ..Default::default() };
    let t = Teacher { kind: "openai".into(), model: "my-reasoner".into(), backend: Backend::OpenAi(Box::new(OpenAi::new(opts).unwrap())), cache: Some(cache) };
    let ds = arith(2);
    let own = AskOptions {
        level: Some(2),
        system: Some("Tutor. {level_instruction}".into()),
        user: Some("Problem: {question}\nGold: {answer}".into()),
        ..Default::default()
    };
    let r = t.ask(&ds, &own).unwrap();
    let sent = bodies.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    let e = &ds.examples[0];
    assert_eq!(sent[0]["messages"][0]["content"], format!("Tutor. {}", cotlab::teacher::prompts::level_instruction(2)));
    assert_eq!(sent[0]["messages"][1]["content"], format!("Problem: {}\nGold: {}", e.question.trim(), e.answer));
    assert!(r.rows.iter().all(|row| row.template_version.starts_with("custom:")), "{}", r.rows[0].template_version);
    // The paper's prompt for the same questions is another request; the same templates again are cached.
    let paper = t.ask(&ds, &AskOptions { level: Some(2), ..Default::default() }).unwrap();
    assert_eq!((paper.requests, paper.rows[0].template_version.as_str()), (2, "cotlab-granularity-v1"));
    assert_eq!(t.ask(&ds, &own).unwrap().requests, 0);
    let e = t.ask(&ds, &AskOptions { user: Some("Solve {problem}".into()), ..own }).unwrap_err().to_string();
    assert!(e.contains("unknown placeholder '{problem}'") && e.contains("{question}"), "{e}");
    assert_eq!(bodies.lock().unwrap().len(), 4, "no request for a template that does not render");
}

/// Issue 30: `rpm` paces all workers together; a 429 storm asking for minutes (reset headers)
/// ends, within `max_retries` and `max_wait_s`, in counted per-row failures, never a hang.
#[test]
fn rate_limits_pace_requests_and_a_429_storm_ends_in_counted_failures() {
    require!(Data);
    let ds = arith(6);
    let o = AskOptions { level: Some(1), ..Default::default() };
    let ok = serve(vec![], Fault::Ok, 0);
    let mut c = client(&ok.url, 0);
    c = OpenAi::new(OpenAiOptions { concurrency: 4, rpm: Some(120.0), ..c.opts.clone() }).unwrap();
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(c)), cache: None };
    let start = Instant::now();
    let r = t.ask(&ds, &o).unwrap();
    // 2 per second with a burst of 2: the 6th request goes 2 s after the first.
    assert_eq!(r.failed, 0);
    assert!(start.elapsed() >= Duration::from_millis(1900), "{:?}", start.elapsed());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            if common::read_http_request(&mut stream).is_some() {
                let h = "x-ratelimit-reset-requests: 6m0s\r\nx-ratelimit-reset-tokens: 20ms\r\n";
                common::write_http_response(&mut stream, "429 Too Many Requests", h, "{\"error\": {\"message\": \"Rate limit reached\"}}");
            }
        }
    });
    let storm = OpenAi::new(OpenAiOptions { base_url: url, concurrency: 2, max_retries: 2, backoff_s: 0.01, max_wait_s: 0.05, ..Default::default() }).unwrap();
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(storm)), cache: None };
    let start = Instant::now();
    let r = t.ask(&ds, &o).unwrap();
    assert_eq!((r.failed, r.questions.failed), (6, 6));
    assert!(r.rows.iter().all(|row| row.error.as_deref().is_some_and(|e| e.contains("gave up after 3 attempts") && e.contains("429"))));
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

/// A loopback endpoint answering `n` choices per request (or one, when it does not `honour_n`),
/// choice i reading `The answer is {seed}{i}`; it records each request's `n`.
fn serve_choices(honour_n: bool) -> (Server, Arc<std::sync::Mutex<Vec<u64>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (count, ns) = (Arc::new(AtomicUsize::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let (c, seen) = (count.clone(), ns.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (c, seen) = (c.clone(), seen.clone());
            std::thread::spawn(move || {
                let Some((_, body)) = common::read_http_exchange(&mut stream) else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let n = v["n"].as_u64().unwrap_or(1);
                seen.lock().unwrap().push(n);
                let k = if honour_n { n } else { 1 };
                let seed = v["seed"].as_u64().unwrap();
                // Listed last to first: the `index` field, not the order, says which choice is which.
                let choices: Vec<serde_json::Value> = (0..k)
                    .rev()
                    .map(|i| serde_json::json!({"index": i, "message": {"role": "assistant", "content": format!("The answer is {seed}{i}")}}))
                    .collect();
                let a = serde_json::json!({"choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 7 * k + 1}});
                common::write_http_response(&mut stream, "200 OK", "", &a.to_string());
            });
        }
    });
    (Server { url, count }, ns)
}

/// Issue 30: `native_n` asks a question's samples as one request's `n` choices: one request per
/// question, choice k is sample k, the usage's tokens add up over the rows, each sample is cached
/// under its own key; an endpoint that ignores `n` stops the run saying what to set.
#[test]
fn native_n_asks_a_questions_samples_in_one_request() {
    require!(Data);
    let (server, ns) = serve_choices(true);
    let d = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::open(&d.path().join("cache.jsonl")).unwrap());
    let mut c = client(&server.url, 0);
    c.opts.native_n = true;
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(c)), cache: Some(cache) };
    let ds = arith(4);
    let o = AskOptions { level: Some(1), n: 3, temperature: 0.7, seed: 5, ..Default::default() };
    let r = t.ask(&ds, &o).unwrap();
    assert_eq!((r.requests, server.count.load(Ordering::SeqCst)), (12, 4), "12 samples in 4 requests");
    assert_eq!(*ns.lock().unwrap(), vec![3; 4]);
    assert_eq!(r.rows.len(), 12);
    for row in &r.rows {
        // Every question's request is seeded as its first sample (5); choice k answers sample k.
        assert_eq!(row.rationale.as_deref(), Some(format!("The answer is 5{}", row.sample).as_str()), "{row:?}");
    }
    // Per request 10 prompt tokens (sent once) and 22 completion tokens (7 × 3 + 1), shared out.
    assert_eq!((r.prompt_tokens, r.completion_tokens), (40, 88));
    assert_eq!(r.rows.iter().filter(|x| x.sample == 0).map(|x| x.completion_tokens).collect::<Vec<_>>(), vec![8; 4]);
    let again = t.ask(&ds, &o).unwrap();
    assert_eq!((again.requests, again.cache_hits, server.count.load(Ordering::SeqCst)), (0, 12, 4), "each sample cached under its own key");
    // An endpoint that gives one choice whatever `n` says: refused with the fix.
    let (plain, _) = serve_choices(false);
    let mut c = client(&plain.url, 0);
    c.opts.native_n = true;
    let t = Teacher { kind: "openai".into(), model: "loopback".into(), backend: Backend::OpenAi(Box::new(c)), cache: None };
    let e = t.ask(&ds, &o).unwrap_err().to_string();
    assert!(e.contains("returned 1") && e.contains("native_n: false"), "{e}");
    // Batches carry one choice per request: native_n there is refused up front.
    let bad = cotlab::teacher::openai::OpenAiOptions { native_n: true, mode: cotlab::teacher::openai::Mode::Batch, ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("native_n is for mode: \"sync\""));
}
