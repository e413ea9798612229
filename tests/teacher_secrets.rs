//! The teacher's API key and endpoint: a key goes only over https or to a loopback host, never
//! to a custom endpoint by default, and never into an error, a frame, a file or stderr, even when
//! the server echoes it back, raw, JSON-escaped or percent-encoded; answers are cached per
//! endpoint, not just per model name. base_url is read once, as the HTTP client reads it: what
//! the key policy judges is where the request goes.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cotlab::data::{load_dataset, DatasetOptions};
use cotlab::teacher::cache::Cache;
use cotlab::teacher::openai::{Ask, OpenAi, OpenAiOptions};
use cotlab::teacher::{AskOptions, Backend, Teacher};

#[derive(Clone, Copy)]
enum Reply {
    /// 200 with `content` as the answer.
    Answer(&'static str),
    /// `status` with the request's Authorization header in the body.
    Echo(&'static str),
    /// 200 with the Authorization header in the answer.
    EchoOk,
}

struct Server {
    url: String,
    count: Arc<AtomicUsize>,
    /// The Authorization header of each request ("" when none).
    auth: Arc<Mutex<Vec<String>>>,
}

fn serve(reply: Reply) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (c, a) = (count.clone(), auth.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let a = a.clone();
            std::thread::spawn(move || {
                let Some(head) = common::read_http_request(&mut stream) else { return };
                let authz = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_string()))
                    .unwrap_or_default();
                a.lock().unwrap().push(authz.clone());
                let answer = common::chat_answer;
                let (status, body) = match reply {
                    Reply::Answer(content) => ("200 OK", answer(content)),
                    Reply::Echo(status) => (status, format!("{{\"error\": \"bad key: {authz}\"}}")),
                    Reply::EchoOk => ("200 OK", answer(&format!("you sent {authz}. The answer is 7"))),
                };
                common::write_http_response(&mut stream, status, "", &body);
            });
        }
    });
    Server { url, count, auth }
}

fn opts(url: &str, key_env: Option<&str>) -> OpenAiOptions {
    OpenAiOptions {
        base_url: url.into(),
        model: "loopback".into(),
        api_key_env: key_env.map(str::to_string),
        concurrency: 1,
        timeout_s: 5.0,
        max_retries: 1,
        backoff_s: 0.01,
        ..Default::default()
    }
}

fn arith(n: usize) -> cotlab::data::Dataset {
    load_dataset(&common::data_dir(), "arith", &DatasetOptions { n: Some(n), seed: Some(1), ..Default::default() }).unwrap()
}

/// The key never appears in anything a run leaves behind, though the servers echo it back.
#[test]
fn an_echoed_key_never_reaches_the_frame_files_or_stderr() {
    require!(Data, Model);
    let key = format!("sk-cotlab-test-{}-secret", std::process::id());
    let bad = serve(Reply::Echo("400 Bad Request"));
    let boom = serve(Reply::Echo("500 Internal Server Error"));
    let ok = serve(Reply::EchoOk);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("echo.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let i = 0;
               for url in ["{}", "{}", "{}"] {{
                   let t = teacher("openai", #{{ base_url: url, model: "echo", api_key_env: "COTLAB_TEST_KEY", concurrency: 1, timeout_s: 5.0, max_retries: 1, backoff_s: 0.01, cache: "c.jsonl" }});
                   let r = t.ask(dataset("arith", #{{ n: 2, seed: 1 }}), #{{ level: 1 }});
                   let f = r.df();
                   print(f);
                   for e in f.column("error") {{ print(e); }}
                   for x in f.column("rationale") {{ print(x); }}
                   f.write_csv(`t${{i}}.csv`);
                   f.write_parquet(`t${{i}}.parquet`);
                   i += 1;
               }}"#,
            bad.url, boom.url, ok.url
        ),
    )
    .unwrap();
    let out = d.path().join("o");
    let r = common::run(common::cotlab().env("COTLAB_TEST_KEY", &key).arg("run").arg(&script).arg("--out").arg(&out).arg("--runs").arg(d.path().join("runs")));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // The servers did get the key (loopback http is allowed) and echoed it.
    for s in [&bad, &boom, &ok] {
        let auth = s.auth.lock().unwrap();
        assert!(!auth.is_empty() && auth.iter().all(|a| *a == format!("Bearer {key}")), "{auth:?}");
    }
    assert_eq!(boom.count.load(Ordering::SeqCst), 4, "500 is retried once per request");
    assert!(r.stdout.contains("HTTP 400: {\"error\": \"bad key: Bearer [redacted]\"}"), "{}", r.stdout);
    assert!(r.stdout.contains("gave up after 2 attempts: HTTP 500: {\"error\": \"bad key: Bearer [redacted]\"}"), "{}", r.stdout);
    assert!(r.stdout.contains("you sent Bearer [redacted]. The answer is 7"), "{}", r.stdout);
    assert!(!r.stdout.contains(&key) && !r.stderr.contains(&key), "the key leaked to stdout/stderr");
    let mut files = vec![d.path().join("runs/c.jsonl")];
    for i in 0..3 {
        files.push(out.join(format!("t{i}.csv")));
        files.push(out.join(format!("t{i}.parquet")));
    }
    files.push(out.join("run.json"));
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "the key is in {}", f.display());
    }
    let csv = std::fs::read_to_string(out.join("t0.csv")).unwrap();
    assert!(csv.contains("[redacted]"), "{csv}");
    // Parquet may be compressed: check the decoded cells as well.
    for i in 0..3 {
        let f = cotlab::frame::Frame::read_parquet(&out.join(format!("t{i}.parquet"))).unwrap();
        let mut redacted = 0;
        for col in ["error", "rationale"] {
            for c in f.column_cells(col).unwrap() {
                if let cotlab::frame::Cell::Str(t) = c {
                    assert!(!t.contains(&key), "the key is in t{i}.parquet's {col}: {t}");
                    redacted += t.matches("[redacted]").count();
                }
            }
        }
        assert_eq!(redacted, 2, "t{i}.parquet: both rows carry the echo, redacted");
    }

    // The library API redacts too (errors and answers).
    std::env::set_var("COTLAB_TEST_KEY_LIB", &key);
    let t = Teacher {
        kind: "openai".into(),
        model: "echo".into(),
        backend: Backend::OpenAi(Box::new(OpenAi::new(opts(&bad.url, Some("COTLAB_TEST_KEY_LIB"))).unwrap())),
        cache: None,
    };
    let rep = t.ask(&arith(1), &AskOptions { level: Some(1), ..Default::default() }).unwrap();
    let err = rep.rows[0].error.as_deref().unwrap();
    assert!(err.contains("Bearer [redacted]") && !err.contains(&key), "{err}");
}

#[test]
fn a_key_is_not_sent_over_plain_http_to_a_remote_host() {
    require!(Data, Model);
    std::env::set_var("COTLAB_TEST_KEY_HTTP", "sk-never-sent");
    // A non-routable address: any connection attempt would hang until the timeout.
    let started = Instant::now();
    let e = OpenAi::new(OpenAiOptions { timeout_s: 30.0, ..opts("http://10.255.255.1/v1", Some("COTLAB_TEST_KEY_HTTP")) }).err().expect("refused");
    assert!(started.elapsed() < Duration::from_secs(1), "refused before any request");
    assert!(e.contains("refusing to send the API key from COTLAB_TEST_KEY_HTTP over plain http to 10.255.255.1") && e.contains("allow_insecure_key"), "{e}");
    assert!(!e.contains("sk-never-sent"));
    // Also through a script: the error names the option, and nothing is sent.
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("http.rhai");
    std::fs::write(&script, "teacher(\"openai\", #{ base_url: \"HTTP://Example.COM:8080/v1\", model: \"m\", api_key_env: \"COTLAB_TEST_KEY_HTTP\" });\n")
        .unwrap();
    let r = common::run(common::cotlab().env("COTLAB_TEST_KEY_HTTP", "sk-never-sent").arg("run").arg(&script).arg("--out").arg(d.path().join("o")));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("http.rhai:1:") && r.stderr.contains("over plain http to example.com"), "{}", r.stderr);
    // Allowed: https anywhere, loopback hosts over http, or an explicit opt-in.
    for url in ["https://10.255.255.1/v1", "http://127.0.0.1:9/v1", "http://127.3.2.1/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"] {
        assert!(OpenAi::new(opts(url, Some("COTLAB_TEST_KEY_HTTP"))).is_ok(), "{url}");
    }
    assert!(OpenAi::new(OpenAiOptions { allow_insecure_key: true, ..opts("http://10.255.255.1/v1", Some("COTLAB_TEST_KEY_HTTP")) }).is_ok());
    // Without a key, plain http anywhere is fine.
    assert!(OpenAi::new(opts("http://10.255.255.1/v1", None)).is_ok());
    // A named variable that is not set is an error, not a silent keyless call.
    let e = OpenAi::new(opts("http://127.0.0.1:9/v1", Some("COTLAB_TEST_KEY_UNSET"))).err().expect("unset var");
    assert!(e.contains("COTLAB_TEST_KEY_UNSET") && e.contains("not set"), "{e}");
    let e = OpenAi::new(opts("ftp://example.com", None)).err().expect("bad scheme");
    assert!(e.contains("not an http(s) URL"), "{e}");
}

#[test]
fn openai_api_key_is_not_sent_to_a_custom_endpoint_by_default() {
    require!(Data, Model);
    let server = serve(Reply::Answer("The answer is 7"));
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("default.rhai");
    // No api_key_env given: the default policy applies.
    std::fs::write(
        &script,
        format!(
            "let t = teacher(\"openai\", #{{ base_url: \"{}\", model: \"m\", max_retries: 0, cache: \"c.jsonl\" }});\nprint(`failed ${{t.ask(dataset(\"arith\", #{{ n: 2, seed: 1 }}), #{{ level: 1 }}).failed}}`);\n",
            server.url
        ),
    )
    .unwrap();
    let r = common::run(
        common::cotlab()
            .env("OPENAI_API_KEY", "sk-openai-only")
            .arg("run")
            .arg(&script)
            .arg("--out")
            .arg(d.path().join("o"))
            .arg("--runs")
            .arg(d.path().join("runs")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("failed 0"), "{}", r.stdout);
    let auth = server.auth.lock().unwrap().clone();
    assert_eq!(auth, ["", ""], "no Authorization header was sent");
    assert!(r.stderr.contains("no API key is sent to") && r.stderr.contains("set api_key_env"), "the user is told: {}", r.stderr);
    assert!(!r.stderr.contains("sk-openai-only"));
    // api.openai.com itself still defaults to OPENAI_API_KEY.
    std::env::remove_var("OPENAI_API_KEY");
    let e = OpenAi::new(OpenAiOptions::default()).err().expect("no OPENAI_API_KEY");
    assert!(e.contains("OPENAI_API_KEY") && e.contains("not set"), "{e}");
}

#[test]
fn two_endpoints_with_one_model_name_do_not_share_the_cache() {
    require!(Data, Model);
    let first = serve(Reply::Answer("First server. The answer is 1"));
    let second = serve(Reply::Answer("Second server. The answer is 2"));
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("shared.jsonl");
    let ds = arith(3);
    let o = AskOptions { level: Some(1), ..Default::default() };
    let teacher = |url: &str| Teacher {
        kind: "openai".into(),
        model: "same-name".into(),
        backend: Backend::OpenAi(Box::new(OpenAi::new(opts(url, None)).unwrap())),
        cache: Some(Arc::new(Cache::open(&path).unwrap())),
    };
    let a = teacher(&first.url).ask(&ds, &o).unwrap();
    assert_eq!((a.requests, a.cache_hits), (3, 0));
    let b = teacher(&second.url).ask(&ds, &o).unwrap();
    assert_eq!((b.requests, b.cache_hits), (3, 0), "the second server is asked, not answered from the first's cache");
    assert_eq!(second.count.load(Ordering::SeqCst), 3);
    assert!(b.rows.iter().all(|r| r.rationale.as_deref() == Some("Second server. The answer is 2")), "{:?}", b.rows);
    assert!(a.rows.iter().zip(&b.rows).all(|(x, y)| x.cache_key != y.cache_key));
    // Each endpoint hits its own entries; the URL is normalised (case of scheme and host,
    // trailing slash).
    let again = teacher(&format!("{}/", first.url.replace("http://", "HTTP://"))).ask(&ds, &o).unwrap();
    assert_eq!((again.requests, again.cache_hits), (0, 3));
    assert!(again.rows.iter().all(|r| r.rationale.as_deref() == Some("First server. The answer is 1")));
    assert_eq!(first.count.load(Ordering::SeqCst), 3);
}

/// Every form a server may echo `key` (ASCII, with a '/' and a '+') in: JSON escapes (every char,
/// the first only with '/' as '\/', upper-case hex mixed with raw chars, escaped twice) and
/// percent-encoding (every byte, reserved chars only in lower case, twice), and both mixed.
fn echo_forms(key: &str) -> Vec<String> {
    let u = |c: char| format!("\\u{:04x}", c as u32);
    let all_u: String = key.chars().map(u).collect();
    let half = key.len() / 2;
    vec![
        all_u.clone(),
        format!("{}{}", u(key.chars().next().unwrap()), key[1..].replace('/', "\\/")),
        key.chars().enumerate().map(|(i, c)| if i % 2 == 0 { format!("\\u{:04X}", c as u32) } else { c.to_string() }).collect(),
        all_u.replace('\\', "\\\\"),
        key.bytes().map(|b| format!("%{b:02X}")).collect(),
        key.replace('/', "%2f").replace('+', "%2b"),
        key.replace('/', "%252F").replace('+', "%252B"),
        format!("{}{}", key[..half].chars().map(u).collect::<String>(), key[half..].bytes().map(|b| format!("%{b:02x}")).collect::<String>()),
    ]
}

fn url_key() -> String {
    format!("sk-cotlab/url+{}-secret", std::process::id())
}

/// A base_url the client would read other than a person reads it is refused before any request,
/// with what to give instead, and never echoes the key or a password.
#[test]
fn base_urls_read_two_ways_are_refused() {
    std::env::set_var("COTLAB_TEST_KEY_URL", url_key());
    for (url, says) in [
        ("http://evil.example\\@127.0.0.1/v1", "a backslash"),
        ("http://127.0.0.1:8000\\@evil.example/v1", "a backslash"),
        ("http://127.0.0.1\t.evil.example/v1", "a tab"),
        ("http://127.0.0.1\n.evil.example/v1", "a line break"),
        (" http://127.0.0.1/v1", "a space"),
        ("http://127.0.0.1/v1 ", "a space"),
        ("http://127.0.0.1\u{7f}/v1", "U+007F"),
        ("http://user:pw@127.0.0.1/v1", "user name or password"),
        ("http://evil.example@127.0.0.1/v1", "user name or password"),
        ("http://evil.example?@127.0.0.1/v1", "query or fragment"),
        ("http://evil.example#@127.0.0.1/v1", "query or fragment"),
        ("http://127.0.0.1.evil.example/v1", "over plain http to 127.0.0.1.evil.example"),
        ("http://localhost.evil.example/v1", "over plain http to localhost.evil.example"),
    ] {
        let e = OpenAi::new(opts(url, Some("COTLAB_TEST_KEY_URL"))).err().unwrap_or_else(|| panic!("{url:?} accepted"));
        assert!(e.contains(says), "{url:?}: {e}");
        assert!(["give e.g.", "api_key_env", "allow_insecure_key"].iter().any(|w| e.contains(w)), "{url:?}: says what to give instead: {e}");
        assert!(!e.contains(&url_key()) && !e.contains(":pw@"), "{e}");
        // Misreadable URLs are refused with no key as well: the key is not what makes them wrong.
        if !says.starts_with("over plain http") {
            assert!(OpenAi::new(opts(url, None)).is_err(), "{url:?} accepted without a key");
        }
    }
}

/// The request goes where the policy looked: the parsed base_url's host (loopback spellings the
/// client reads as 127.0.0.1 included), its path kept, with chat/completions appended.
#[test]
fn requests_go_to_the_url_the_key_policy_judged() {
    std::env::set_var("COTLAB_TEST_KEY_URL2", url_key());
    let server = common::fake_server(|_, _, s| common::write_http_response(s, "200 OK", "", &common::chat_answer("The answer is 7")));
    let port = server.addr.rsplit(':').next().unwrap();
    let cases = [
        (format!("http://{}/v1", server.addr), "/v1/chat/completions"),
        (format!("http://{}/v1/", server.addr), "/v1/chat/completions"),
        (format!("http://{}", server.addr), "/chat/completions"),
        (format!("http://127.1:{port}/api/v1"), "/api/v1/chat/completions"),
        (format!("HTTP://0x7F.0.0.1:{port}/v1"), "/v1/chat/completions"),
    ];
    for (i, (url, path)) in cases.iter().enumerate() {
        let client = OpenAi::new(opts(url, Some("COTLAB_TEST_KEY_URL2"))).unwrap_or_else(|e| panic!("{url}: {e}"));
        let c = client.complete(&Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 8, seed: 1 }).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.text, "The answer is 7");
        let head = server.heads.lock().unwrap()[i].clone();
        assert!(head.starts_with(&format!("POST {path} HTTP/1.1")), "{url}: {head}");
        assert_eq!(server.auth()[i], format!("Bearer {}", url_key()));
    }
}

/// A server echoing the key JSON-escaped or percent-encoded, in an error body or an answer,
/// gets `[redacted]` in every form, and nothing of the key is left around it.
#[test]
fn an_escaped_or_encoded_echo_of_the_key_is_redacted() {
    let key = url_key();
    std::env::set_var("COTLAB_TEST_KEY_ECHO", &key);
    let forms = echo_forms(&key);
    let (f1, f2) = (forms.clone(), forms.clone());
    let errors = common::fake_server(move |k, _, s| {
        common::write_http_response(s, "401 Unauthorized", "", &format!("{{\"error\": \"bad key: {}\"}}", f1[k % f1.len()]))
    });
    // The answer's JSON string decodes to the form itself.
    let answers = common::fake_server(move |k, _, s| {
        common::write_http_response(s, "200 OK", "", &common::chat_answer(&format!("you sent {}. The answer is 7", f2[k % f2.len()])))
    });
    let client = |server: &common::FakeServer| OpenAi::new(opts(&format!("http://{}/v1", server.addr), Some("COTLAB_TEST_KEY_ECHO"))).unwrap();
    let (e, a) = (client(&errors), client(&answers));
    for form in &forms {
        let err = e.complete(&Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 8, seed: 1 }).expect_err("401 is an error");
        assert_eq!(err, "HTTP 401: {\"error\": \"bad key: [redacted]\"}", "echoed as {form}");
        let text = a.complete(&Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 8, seed: 1 }).unwrap().text;
        assert_eq!(text, "you sent [redacted]. The answer is 7", "echoed as {form}");
    }
    assert_eq!(errors.count.load(Ordering::SeqCst), forms.len());
}

/// Through a script, the escaped and encoded echoes reach neither the rows, nor the CSV, nor
/// the terminal.
#[test]
fn an_escaped_echo_never_reaches_the_frame_files_or_stderr() {
    require!(Data);
    let key = format!("sk-cotlab/zq9x+{}-secret", std::process::id());
    let forms = echo_forms(&key);
    let f = forms.clone();
    let server = common::fake_server(move |k, head, s| {
        let sent = head.lines().find_map(|l| l.strip_prefix("Authorization: Bearer ")).unwrap_or("none").to_string();
        common::write_http_response(s, "400 Bad Request", "", &format!("{{\"error\": \"bad key: {}\"}}", echo_forms(&sent)[k % f.len()]));
    });
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("escaped.rhai");
    std::fs::write(
        &script,
        format!(
            r#"let t = teacher("openai", #{{ base_url: "http://{}/v1", model: "echo", api_key_env: "COTLAB_TEST_KEY_ESC", concurrency: 1, timeout_s: 5.0, max_retries: 0 }});
               let f = t.ask(dataset("arith", #{{ n: {}, seed: 1 }}), #{{ level: 1 }}).df();
               print(f);
               for e in f.column("error") {{ print(e); }}
               f.write_csv("t.csv");"#,
            server.addr,
            forms.len()
        ),
    )
    .unwrap();
    let out = d.path().join("o");
    let r = common::run(common::cotlab().env("COTLAB_TEST_KEY_ESC", &key).arg("run").arg(&script).arg("--out").arg(&out));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(server.count.load(Ordering::SeqCst), forms.len());
    assert_eq!(r.stdout.matches("HTTP 400: {\"error\": \"bad key: [redacted]\"}").count(), forms.len(), "{}", r.stdout);
    let csv = std::fs::read_to_string(out.join("t.csv")).unwrap();
    assert_eq!(csv.matches("[redacted]").count(), forms.len(), "{csv}");
    for (what, text) in [("stdout", &r.stdout), ("stderr", &r.stderr), ("t.csv", &csv)] {
        for form in forms.iter().chain([&key]) {
            assert!(!text.contains(form.as_str()), "the key is in {what} as {form}: {text}");
        }
        // Nothing of the key is left: not even its distinctive middle part.
        assert!(!text.contains("zq9x"), "{what}: {text}");
    }
}
