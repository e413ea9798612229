//! A client for OpenAI-compatible chat-completions endpoints (OpenAI, Gemini's compatible
//! endpoint, vLLM, Ollama, llama.cpp servers). Retries 429/5xx/timeouts/dropped connections/
//! malformed JSON with exponential backoff and jitter, honouring Retry-After.
//!
//! Invariants:
//! - `base_url` is parsed once, by the `url` crate the HTTP client (ureq) parses with (WHATWG
//!   rules); the key policy and the request URL both come from that one parse, so the host the
//!   policy judges is the host the request goes to. What a reader could misread is refused:
//!   `\` (read as `/`), whitespace, control characters, `user:pass@`, a query or a fragment.
//! - The API key comes from the environment variable named by `api_key_env`; without one,
//!   `OPENAI_API_KEY` is used for `api.openai.com` only, never for another endpoint. A key is sent
//!   only over https or to a loopback host (127.0.0.0/8, ::1, localhost) unless
//!   `allow_insecure_key` is set; ureq never forwards it on a redirect.
//! - The key is replaced by `[redacted]` in every text this client returns (errors, answers),
//!   raw, JSON-escaped (`\uXXXX`, `\/`, nested) or percent-encoded, before a server's text is cut
//!   or stored, so it is never written anywhere.
//! - Waiting is bounded: one attempt (connecting, sending, reading the whole answer) ends within
//!   `timeout_s`, and no wait between attempts exceeds `max_wait_s`, whatever Retry-After says.
//! - `rpm`/`tpm` budgets hold across all workers and retries ([`super::rate`]); a 429 waits what
//!   Retry-After or the `x-ratelimit-reset-*` headers ask (capped at `max_wait_s`), and a storm of
//!   them ends in counted per-row failures after `max_retries`, never a hang.
//! - Reasoning models (`reasoning`, on by default for the o1/o3/o4/gpt-5 families) are sent
//!   `max_completion_tokens` and no sampling parameters; an endpoint refusing a parameter is a
//!   [`RequestError::Config`] naming the option to change, never a per-row failure to retry.
//! - A trace is kept apart from the answer: `reasoning_content` (or `reasoning`) when the server
//!   splits it, else an inline `<think>…</think>` ([`crate::answer::think`]).
//! - `mode: "batch"` sends the same bodies through the Batch API instead ([`super::batch`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::rng::Rng;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiOptions {
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the key (it must be set). None: `OPENAI_API_KEY`
    /// for api.openai.com, no key for any other endpoint.
    pub api_key_env: Option<String>,
    /// Send the key over plain http to a non-loopback host (off: refused before any request).
    pub allow_insecure_key: bool,
    pub concurrency: usize,
    /// Longest one attempt may take, from connecting to the last byte of the answer.
    pub timeout_s: f64,
    pub max_retries: usize,
    /// First backoff delay; doubles on each retry (with jitter), capped at `max_wait_s`.
    pub backoff_s: f64,
    /// Longest wait between two attempts, backoff and Retry-After alike: a server asking for
    /// more (or for `inf`) gets this.
    pub max_wait_s: f64,
    /// USD per million prompt / completion tokens, for the cost estimate.
    pub price_in: f64,
    pub price_out: f64,
    /// A reasoning model: send `max_completion_tokens`, no `temperature`/`top_p`. `None`: by
    /// the model's name ([`is_reasoning_model`]).
    pub reasoning: Option<bool>,
    /// How hard a reasoning model thinks, sent as `reasoning_effort` (reasoning models only).
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Requests per minute this client may send (all its workers together); `None`: no limit.
    pub rpm: Option<f64>,
    /// Tokens per minute, each request counted before it goes ([`super::rate::estimate_tokens`]).
    pub tpm: Option<f64>,
    /// `sync` (one request at a time) or `batch` (the Batch API: half the price, up to 24 h).
    pub mode: Mode,
    /// What asks again for the rows that failed inside a batch: a smaller batch, or `sync`.
    pub batch_retry: Retry,
    /// First wait between two polls of a batch; doubles up to `poll_max_s`.
    pub poll_s: f64,
    pub poll_max_s: f64,
    /// Longest one run waits for its batches; the batch runs on, and a re-run resumes polling.
    pub batch_timeout_s: f64,
    /// Ask a question's `n` samples as one request's `n` choices (vLLM, OpenAI: the prompt is
    /// sent and billed once) instead of `n` requests seeded `seed + k`. Sync mode only.
    pub native_n: bool,
}

crate::choices! {
    /// OpenAI's `reasoning_effort` values.
    pub enum ReasoningEffort("reasoning_effort") {
        Off = "none",
        Minimal = "minimal",
        Low = "low",
        Medium = "medium",
        High = "high",
        Xhigh = "xhigh",
    }
}

crate::choices! {
    /// How an `openai` teacher sends its requests.
    #[derive(Default)]
    pub enum Mode("mode") {
        /// One chat-completions request per row, `concurrency` at a time.
        #[default]
        Sync = "sync",
        /// The Batch API: `/files` and `/batches`.
        Batch = "batch",
    }
}

crate::choices! {
    /// How the rows that failed inside a batch are asked again.
    #[derive(Default)]
    pub enum Retry("batch_retry") {
        /// A smaller batch of only those rows.
        #[default]
        Batch = "batch",
        /// Through the sync client.
        Sync = "sync",
    }
}

/// OpenAI's reasoning families, by model name (a `provider/` prefix ignored): `o1`, `o3-mini`,
/// `o4-mini`, `gpt-5`, `gpt-5-mini`, … — not `gpt-5-chat-*`, which samples like gpt-4o.
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model).to_ascii_lowercase();
    let b = m.as_bytes();
    let o_series = b.len() >= 2 && b[0] == b'o' && b[1].is_ascii_digit();
    (o_series || m.starts_with("gpt-5")) && !m.contains("-chat")
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        OpenAiOptions {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o".into(),
            api_key_env: None,
            allow_insecure_key: false,
            concurrency: 4,
            timeout_s: 60.0,
            max_retries: 5,
            backoff_s: 1.0,
            max_wait_s: 60.0,
            price_in: 0.0,
            price_out: 0.0,
            reasoning: None,
            reasoning_effort: None,
            rpm: None,
            tpm: None,
            mode: Mode::Sync,
            batch_retry: Retry::Batch,
            poll_s: 30.0,
            poll_max_s: 600.0,
            batch_timeout_s: 90_000.0,
            native_n: false,
        }
    }
}

/// One chat request: the two messages and how to sample the answer.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub system: &'a str,
    pub user: &'a str,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The answer, its trace taken out.
    pub text: String,
    /// The reasoning trace, when the model wrote one (see the module head).
    pub reasoning: Option<String>,
    pub prompt_tokens: u64,
    /// All generated tokens, the trace's included (as the endpoints bill them).
    pub completion_tokens: u64,
    /// The trace's share of `completion_tokens`, when the endpoint reports it.
    pub reasoning_tokens: Option<u64>,
    /// Attempts it took (1 = first try).
    pub attempts: usize,
}

pub struct OpenAi {
    pub opts: OpenAiOptions,
    agent: ureq::Agent,
    key: Option<String>,
    endpoint: String,
    /// The parsed `base_url`, which the Batch API's paths extend.
    base: Url,
    /// Where every request goes: the parsed `base_url` with `chat/completions` appended.
    chat_url: Url,
    limiter: super::rate::RateLimiter,
}

enum Failure {
    /// Worth another attempt; the seconds Retry-After asked for, unclamped.
    Retry(String, Option<f64>),
    Fatal(String),
    /// The request itself is wrong for this endpoint: every other request would fail the same way.
    Config(String),
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestError {
    /// This request failed (after its retries); others may succeed.
    Failed(String),
    /// The endpoint refuses how requests are made (an option to change): stop asking.
    Config(String),
}

impl RequestError {
    pub fn message(&self) -> &str {
        match self {
            RequestError::Failed(m) | RequestError::Config(m) => m,
        }
    }
}

/// What an HTTP 400 naming a refused parameter means for the teacher's options, if it does: the
/// parameter (OpenAI's `error.param`, else the quoted name in `Unsupported parameter: 'x'`) and
/// the option that decides whether it is sent.
fn refused_parameter(body: &str, model: &str, reasoning: bool) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let err = &v["error"];
    let message = err["message"].as_str().unwrap_or("");
    let code = err["code"].as_str().unwrap_or("");
    let unsupported =
        matches!(code, "unsupported_parameter" | "unsupported_value") || message.contains("Unsupported parameter") || message.contains("Unsupported value");
    if !unsupported {
        return None;
    }
    let param = err["param"].as_str().map(str::to_string).or_else(|| message.split('\'').nth(1).map(str::to_string))?;
    let fix = match (param.as_str(), reasoning) {
        ("max_tokens" | "temperature" | "top_p", false) => {
            format!("'{model}' is a reasoning model: set reasoning: true on the teacher (it sends max_completion_tokens and no temperature or top_p)")
        }
        ("max_completion_tokens" | "reasoning_effort", true) => {
            format!("'{model}' is not served as a reasoning model here: set reasoning: false on the teacher (it sends max_tokens, temperature and top_p)")
        }
        ("reasoning_effort", false) => "remove reasoning_effort (only reasoning models take it)".to_string(),
        ("n", _) => "this endpoint returns one choice per request: set native_n: false on the teacher (each sample is then its own seeded request)".to_string(),
        _ => format!("remove or change the option that sends '{param}'"),
    };
    Some(format!("the endpoint refuses the parameter '{param}' ({}): {fix}", message.chars().take(200).collect::<String>()))
}

/// The completion of one chat-completions response body: the answer apart from its trace.
pub(super) fn parse_completion(v: &serde_json::Value) -> Option<Completion> {
    parse_choice(v, 0)
}

/// Every choice of a response, in `index` order. The usage covers them all: the prompt's tokens
/// go to the first choice (it was sent once), the completion tokens are shared out evenly (the
/// endpoints do not report them per choice), so the rows' sums are the response's.
pub(super) fn parse_choices(v: &serde_json::Value) -> Option<Vec<Completion>> {
    let k = v["choices"].as_array()?.len();
    let mut out: Vec<Completion> = (0..k).map(|i| parse_choice(v, i)).collect::<Option<_>>()?;
    let (total, reasoning) = (v["usage"]["completion_tokens"].as_u64().unwrap_or(0), v["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64());
    // Choice i's even share of t tokens; the first `t % k` choices take one more.
    let share = |t: u64, i: usize| t / k as u64 + u64::from((i as u64) < t % k as u64);
    for (i, c) in out.iter_mut().enumerate() {
        c.completion_tokens = share(total, i);
        c.reasoning_tokens = reasoning.map(|r| share(r, i));
        if i > 0 {
            c.prompt_tokens = 0;
        }
    }
    Some(out)
}

/// Choice `i` (by its `index` field, else its place), its usage the whole response's.
fn parse_choice(v: &serde_json::Value, i: usize) -> Option<Completion> {
    let choices = v["choices"].as_array()?;
    let choice = choices.iter().find(|c| c["index"].as_u64() == Some(i as u64)).or_else(|| choices.get(i))?;
    let message = &choice["message"];
    // A server's reasoning parser: vLLM and llama.cpp say `reasoning_content`, others `reasoning`.
    let split = ["reasoning_content", "reasoning"].iter().find_map(|k| message[*k].as_str().filter(|t| !t.is_empty()));
    let content = match (message["content"].as_str(), split) {
        (Some(c), _) => c,
        // A reasoning model cut before its answer: the trace came, the content did not.
        (None, Some(_)) => "",
        (None, None) => return None,
    };
    let (reasoning, text) = match split {
        Some(r) => (Some(r.trim().to_string()), content.to_string()),
        None => {
            let t = crate::answer::think::split_think(content);
            (t.reasoning.map(str::to_string), t.answer.to_string())
        }
    };
    let usage = &v["usage"];
    Some(Completion {
        text,
        reasoning,
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
        reasoning_tokens: usage["completion_tokens_details"]["reasoning_tokens"].as_u64(),
        attempts: 1,
    })
}

const EXAMPLE_URLS: &str = "give e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1";

/// `raw` for an error message, with a password in a `user:pass@` part masked.
fn shown(raw: &str) -> String {
    let masked = match (raw.find("://"), raw.rfind('@')) {
        (Some(s), Some(at)) if s + 3 < at => match raw[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &raw[..s + 3 + c], &raw[at..]),
            None => raw.to_string(),
        },
        _ => raw.to_string(),
    };
    // Quoted with escapes where a tab or line break would otherwise hide in the message.
    if masked.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("{masked:?}")
    } else {
        format!("'{masked}'")
    }
}

/// `base_url` parsed as the HTTP client parses it, refusing what a reader could misread: the
/// host this returns is the host requests go to.
fn parse_base_url(raw: &str) -> Result<Url, String> {
    if let Some(c) = raw.chars().find(|c| *c == '\\' || c.is_whitespace() || c.is_control()) {
        let what = match c {
            '\\' => "a backslash '\\' (HTTP clients read it as '/', so the host would not be the one it seems)".to_string(),
            ' ' => "a space".to_string(),
            '\t' => "a tab".to_string(),
            '\n' | '\r' => "a line break".to_string(),
            c => format!("the character U+{:04X}", c as u32),
        };
        return Err(format!("base_url {} contains {what}: write it with '/' only and nothing around it; {EXAMPLE_URLS}", shown(raw)));
    }
    let url = Url::parse(raw).map_err(|e| format!("base_url {} is not an http(s) URL ({e}): {EXAMPLE_URLS}", shown(raw)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("base_url {} is not an http(s) URL: {EXAMPLE_URLS}", shown(raw)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "base_url {} has a user name or password before the host ('user:pass@'): remove it, and give the API key through api_key_env (the name of the environment variable holding it)",
            shown(raw)
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "base_url {} has a query or fragment ('?…' or '#…'): give only the API root that chat/completions is appended to; {EXAMPLE_URLS}",
            shown(raw)
        ));
    }
    Ok(url)
}

/// `base` with `chat/completions` appended to its path (`/v1` and `/v1/` → `/v1/chat/completions`).
fn chat_url(base: &Url) -> Url {
    let mut url = base.clone();
    // http(s) URLs always have a path to extend (parse_base_url checked the scheme).
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(["chat", "completions"]);
    }
    url
}

/// 127.0.0.0/8, ::1 (also as ::ffff:127.x), localhost and *.localhost, judged on the parsed
/// host (so `0x7f.1` is 127.0.0.1 here as it is to the client).
fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => *d == "localhost" || d.ends_with(".localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl OpenAi {
    pub fn new(opts: OpenAiOptions) -> Result<OpenAi, String> {
        opts.validate().map_err(|e| e.to_string())?;
        let base = parse_base_url(&opts.base_url)?;
        let host = base.host().ok_or_else(|| format!("base_url {} has no host: {EXAMPLE_URLS}", shown(&opts.base_url)))?;
        let endpoint = base.as_str().trim_end_matches('/').to_string();
        let official = host == Host::Domain("api.openai.com");
        let var = match &opts.api_key_env {
            Some(v) => Some(v.clone()),
            None if official => Some("OPENAI_API_KEY".to_string()),
            None => {
                if std::env::var_os("OPENAI_API_KEY").is_some_and(|k| !k.is_empty()) {
                    eprintln!(
                        "note: teacher: no API key is sent to {endpoint} (OPENAI_API_KEY is only used for api.openai.com); set api_key_env to name the variable holding this endpoint's key"
                    );
                }
                None
            }
        };
        let key = match &var {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => {
                    return Err(format!(
                        "environment variable {var} (api_key_env) is not set: export it with your API key{}",
                        if official { "" } else { ", or give api_key_env: () for a server without keys" }
                    ))
                }
            },
            None => None,
        };
        if key.is_some() && base.scheme() != "https" && !is_loopback(&host) && !opts.allow_insecure_key {
            return Err(format!(
                "refusing to send the API key from {} over plain http to {host}: anyone on the way could read it. Use https, a loopback host, or set allow_insecure_key: true if you trust the network",
                var.as_deref().unwrap_or("?"),
            ));
        }
        // One deadline for the whole attempt: a server dripping its answer byte by byte cannot
        // reset it as it would a per-read timeout.
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs_f64(opts.timeout_s)).build();
        let chat_url = chat_url(&base);
        let limiter = super::rate::RateLimiter::new(opts.rpm, opts.tpm);
        Ok(OpenAi { opts, agent, key, endpoint, base, chat_url, limiter })
    }

    /// The base URL normalised (as parsed: scheme and host lowercased, default port dropped; no
    /// trailing slash): part of every cache key, so two servers with one model name never share
    /// answers.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `text` with every occurrence of the key, raw, JSON-escaped or percent-encoded, replaced by
    /// `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) if !k.is_empty() => redact_key(text, k),
            _ => text.to_string(),
        }
    }

    /// A request to `base_url` extended by `segments` (the Batch API's `files`, `batches/{id}`),
    /// carrying the key under the same policy as chat requests.
    pub(super) fn api_request(&self, method: &str, segments: &[&str]) -> ureq::Request {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let req = self.agent.request_url(method, &url);
        match &self.key {
            Some(k) => req.set("Authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    fn timed_out(&self) -> Failure {
        Failure::Retry(
            format!(
                "the server did not finish answering within timeout_s = {} s (one attempt, from connecting to the last byte): raise timeout_s if it is slow",
                self.opts.timeout_s
            ),
            None,
        )
    }

    fn once(&self, body: &serde_json::Value) -> Result<Vec<Completion>, Failure> {
        let mut req = self.agent.request_url("POST", &self.chat_url).set("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send_json(body.clone()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                // Retry-After first; else the longest reset the rate-limit headers announce.
                let reset = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
                    .iter()
                    .filter_map(|h| r.header(h).and_then(super::rate::reset_s))
                    .reduce(f64::max);
                let retry_after = r.header("Retry-After").and_then(|v| retry_after_s(v, SystemTime::now())).or(reset);
                let body = match r.into_string() {
                    Ok(b) => b,
                    Err(e) if is_timeout(&e) => return Err(self.timed_out()),
                    Err(_) => String::new(),
                };
                // Redacted before truncating: a cut could leave part of the key unmatched.
                let body = self.redact(&body);
                if code == 400 {
                    if let Some(m) = refused_parameter(&body, &self.opts.model, self.reasoning()) {
                        return Err(Failure::Config(m));
                    }
                }
                let msg = format!("HTTP {code}: {}", body.chars().take(200).collect::<String>());
                return Err(if code == 429 || code >= 500 { Failure::Retry(msg, retry_after) } else { Failure::Fatal(msg) });
            }
            Err(ureq::Error::Transport(t)) if is_timeout(&t) => return Err(self.timed_out()),
            Err(e) => return Err(Failure::Retry(format!("transport: {e}"), None)),
        };
        let text = resp.into_string().map_err(|e| if is_timeout(&e) { self.timed_out() } else { Failure::Retry(format!("reading the body: {e}"), None) })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Retry(format!("malformed JSON: {e}"), None))?;
        let cs = parse_choices(&v).filter(|c| !c.is_empty()).ok_or_else(|| Failure::Retry("response without choices[].message.content".into(), None))?;
        Ok(cs.into_iter().map(|c| Completion { text: self.redact(&c.text), reasoning: c.reasoning.map(|r| self.redact(&r)), ..c }).collect())
    }

    /// Whether requests go out as to a reasoning model (the option, else the model's name).
    pub fn reasoning(&self) -> bool {
        self.opts.reasoning.unwrap_or_else(|| is_reasoning_model(&self.opts.model))
    }

    /// The request body: a reasoning model gets `max_completion_tokens` (its trace counts
    /// against it) and no sampling parameters, which those models refuse.
    pub(super) fn body(&self, a: &Ask) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": self.opts.model,
            "messages": [{"role": "system", "content": a.system}, {"role": "user", "content": a.user}],
            "seed": a.seed,
        });
        if self.reasoning() {
            body["max_completion_tokens"] = a.max_tokens.into();
            if let Some(e) = self.opts.reasoning_effort {
                body["reasoning_effort"] = e.name().into();
            }
        } else {
            body["temperature"] = a.temperature.into();
            body["top_p"] = a.top_p.into();
            body["max_tokens"] = a.max_tokens.into();
        }
        body
    }

    /// One chat completion, retried within limits. Every text it returns has the key redacted.
    pub fn complete(&self, a: &Ask) -> Result<Completion, String> {
        self.request(a).map_err(|e| e.message().to_string())
    }

    /// `complete`, telling a failed request from a refused configuration.
    pub fn request(&self, a: &Ask) -> Result<Completion, RequestError> {
        let mut cs = self.request_n(a, 1)?;
        Ok(cs.swap_remove(0))
    }

    /// `n` choices of one request (`n` sent only above 1); exactly `n` come back, or an error that
    /// says the endpoint gave fewer.
    pub fn request_n(&self, a: &Ask, n: usize) -> Result<Vec<Completion>, RequestError> {
        let mut cs = self.complete_raw(a, n).map_err(|e| match e {
            RequestError::Failed(m) => RequestError::Failed(self.redact(&m)),
            RequestError::Config(m) => RequestError::Config(self.redact(&m)),
        })?;
        if cs.len() < n {
            return Err(RequestError::Config(format!(
                "asked for n = {n} choices, the endpoint returned {}: it does not honour n; set native_n: false on the teacher (each sample is then its own seeded request)",
                cs.len()
            )));
        }
        cs.truncate(n);
        Ok(cs)
    }

    fn complete_raw(&self, a: &Ask, n: usize) -> Result<Vec<Completion>, RequestError> {
        let mut body = self.body(a);
        if n > 1 {
            body["n"] = n.into();
        }
        let tokens = super::rate::estimate_tokens(a.system.len() + a.user.len(), a.max_tokens * n);
        let mut rng = Rng::new(a.seed ^ 0x5eed);
        let mut last = String::new();
        for attempt in 0..=self.opts.max_retries {
            // Every attempt counts against the budgets: a retry is a request too.
            self.limiter.acquire(tokens);
            match self.once(&body) {
                Ok(mut cs) => {
                    cs.iter_mut().for_each(|c| c.attempts = attempt + 1);
                    return Ok(cs);
                }
                Err(Failure::Config(m)) => return Err(RequestError::Config(m)),
                Err(Failure::Fatal(m)) => return Err(RequestError::Failed(m)),
                Err(Failure::Retry(m, after)) => {
                    last = m;
                    if attempt == self.opts.max_retries {
                        break;
                    }
                    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    std::thread::sleep(wait_before_retry(after, self.opts.backoff_s, attempt, unit, self.opts.max_wait_s));
                }
            }
        }
        Err(RequestError::Failed(format!("gave up after {} attempts: {last}", self.opts.max_retries + 1)))
    }
}

/// Whether an error comes from a deadline running out (ureq reports these as io TimedOut, or
/// WouldBlock from a socket read timeout, somewhere in its source chain).
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The wait before the retry after `attempt` (0-based): exponential backoff with `unit` ∈ [0, 1)
/// of up to 50 % jitter, or what the server asked for if longer; always in [0, `cap`] s, so a
/// non-finite, negative or huge Retry-After can neither panic nor stall the run.
pub(super) fn wait_before_retry(asked_s: Option<f64>, backoff_s: f64, attempt: usize, unit: f64, cap: f64) -> Duration {
    let backoff = (backoff_s * 2f64.powi(attempt.min(1000) as i32)).min(cap);
    let jittered = backoff + backoff * 0.5 * unit;
    let asked = match asked_s {
        Some(s) if !s.is_finite() => cap,
        Some(s) => s.max(0.0),
        None => 0.0,
    };
    Duration::from_secs_f64(jittered.max(asked).min(cap).max(0.0))
}

/// The seconds a Retry-After value asks for, counted from `now`: delta-seconds (any number,
/// `inf` and `1e300` included, clamped by the caller) or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`); None when it is neither.
pub(super) fn retry_after_s(value: &str, now: SystemTime) -> Option<f64> {
    let value = value.trim();
    if let Ok(s) = value.parse::<f64>() {
        return Some(s);
    }
    let at = imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    Some(at as f64 - now)
}

/// Seconds since the Unix epoch of an IMF-fixdate (RFC 7231 §7.1.1.1); None if `v` is not one.
fn imf_fixdate(v: &str) -> Option<i64> {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (day_name, rest) = v.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let &[day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let [h, m, s]: [&str; 3] = time.split(':').collect::<Vec<_>>().try_into().ok()?;
    let digits = |t: &str, n: usize| if t.len() == n && t.bytes().all(|b| b.is_ascii_digit()) { t.parse::<i64>().ok() } else { None };
    let (day, year, h, m, s) = (digits(day, 2)?, digits(year, 4)?, digits(h, 2)?, digits(m, 2)?, digits(s, 2)?);
    let month = MONTHS.iter().position(|x| *x == month)? as i64 + 1;
    if !DAYS.contains(&day_name) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `text` with `key` replaced by `[redacted]` wherever it appears in any mix of the forms a
/// server may echo it in: raw, JSON-escaped and percent-encoded (see `key_end`).
fn redact_key(text: &str, key: &str) -> String {
    let key: Vec<char> = key.chars().collect();
    let t = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut kept) = (0, 0);
    while i < t.len() {
        match key_end(t, i, &key) {
            // Encodings start with an ASCII byte or a char's first byte and end after a whole
            // char; the boundary check only keeps the slicing panic-free.
            Some(end) if end > i && text.is_char_boundary(i) && text.is_char_boundary(end) => {
                out.push_str(&text[kept..i]);
                out.push_str("[redacted]");
                (i, kept) = (end, end);
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[kept..]);
    out
}

/// Where an encoding of `key` that starts at `t[i]` ends. Each char may be itself; a JSON
/// escape (`\uXXXX`, a surrogate pair, `\/`-style or `\n`-style) behind any run of
/// backslashes, since escaped text may be escaped again; or its UTF-8 bytes percent-encoded
/// (`%XX`, `%25XX` when encoded twice; `+` for a space). A `%` or `\\` in the key can be read
/// two ways, so the forms are tried in turn.
fn key_end(t: &[u8], i: usize, key: &[char]) -> Option<usize> {
    let Some((&c, rest)) = key.split_first() else { return Some(i) };
    let mut buf = [0u8; 4];
    let bytes = c.encode_utf8(&mut buf).as_bytes();
    let literal = t.get(i..)?.starts_with(bytes).then_some(i + bytes.len());
    let encoded = match t.get(i) {
        Some(b'\\') => json_escape_end(t, i, c),
        Some(b'%' | b'+') => percent_end(t, i, bytes),
        _ => None,
    };
    [literal, encoded].into_iter().flatten().find_map(|end| key_end(t, end, rest))
}

/// The end of a JSON escape of `c` at `t[i]` (see `key_end`).
fn json_escape_end(t: &[u8], i: usize, c: char) -> Option<usize> {
    // A bounded run: nesting deeper than this is not an echo, and a long run of backslashes
    // must not make redaction quadratic.
    let after_backslashes = |p: usize| {
        let n = t.get(p..)?.iter().take(64).take_while(|b| **b == b'\\').count();
        (n > 0 && n < 64).then_some(p + n)
    };
    let q = after_backslashes(i)?;
    let short = match c {
        '\\' => return Some(q),
        '\n' => Some(b'n'),
        '\r' => Some(b'r'),
        '\t' => Some(b't'),
        '\u{8}' => Some(b'b'),
        '\u{c}' => Some(b'f'),
        c if c.is_ascii_punctuation() => Some(c as u8),
        _ => None,
    };
    if short.is_some() && t.get(q) == short.as_ref() {
        return Some(q + 1);
    }
    let mut units = [0u16; 2];
    let mut p = i;
    for &u in c.encode_utf16(&mut units).iter() {
        let q = after_backslashes(p)?;
        if t.get(q) != Some(&b'u') || hex(t, q + 1, 4)? != u32::from(u) {
            return None;
        }
        p = q + 5;
    }
    Some(p)
}

/// The end of `bytes` percent-encoded at `t[i]`, each byte `%XX` or literal (see `key_end`).
fn percent_end(t: &[u8], mut i: usize, bytes: &[u8]) -> Option<usize> {
    for &b in bytes {
        i = match (percent_byte_end(t, i, b), t.get(i)) {
            (Some(end), _) => end,
            (None, Some(&x)) if x == b || (b == b' ' && x == b'+') => i + 1,
            _ => return None,
        };
    }
    Some(i)
}

/// The end of `b` as `%XX` at `t[i]`, behind up to 8 `25`s (`%` encoded again each round).
fn percent_byte_end(t: &[u8], i: usize, b: u8) -> Option<usize> {
    if t.get(i) != Some(&b'%') {
        return None;
    }
    let mut p = i + 1;
    for _ in 0..9 {
        match hex(t, p, 2)? {
            x if x == u32::from(b) => return Some(p + 2),
            0x25 => p += 2,
            _ => return None,
        }
    }
    None
}

/// The value of the `n` hex digits at `t[i..]`, either case.
fn hex(t: &[u8], i: usize, n: usize) -> Option<u32> {
    let digits = std::str::from_utf8(t.get(i..i + n)?).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

impl OpenAiOptions {
    /// Numbers in ranges a client can use (a huge `timeout_s` would overflow a `Duration`).
    pub fn validate(&self) -> crate::error::Result<()> {
        use crate::error::in_range;
        const T: &str = "teacher(\"openai\")";
        in_range(T, "concurrency", self.concurrency, 1..=256)?;
        in_range(T, "timeout_s", self.timeout_s, 0.001..=86_400.0)?;
        in_range(T, "max_retries", self.max_retries, 0..=100)?;
        in_range(T, "backoff_s", self.backoff_s, 0.0..=3600.0)?;
        in_range(T, "max_wait_s", self.max_wait_s, 0.0..=3600.0)?;
        in_range(T, "price_in", self.price_in, 0.0..=1e6)?;
        in_range(T, "price_out", self.price_out, 0.0..=1e6)?;
        if let Some(r) = self.rpm {
            in_range(T, "rpm", r, 0.001..=1e9)?;
        }
        if let Some(t) = self.tpm {
            in_range(T, "tpm", t, 0.001..=1e12)?;
        }
        in_range(T, "poll_s", self.poll_s, 0.001..=86_400.0)?;
        in_range(T, "poll_max_s", self.poll_max_s, self.poll_s..=86_400.0)?;
        in_range(T, "batch_timeout_s", self.batch_timeout_s, 0.0..=30.0 * 86_400.0)?;
        if self.native_n && self.mode == Mode::Batch {
            return Err(crate::usage!("{T}: native_n is for mode: \"sync\" (a batch's requests carry one choice each): drop native_n or use mode: \"sync\""));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_families_are_known_by_name() {
        for m in ["o1", "o1-mini", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini", "gpt-5.1", "openai/o3", "GPT-5-nano"] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5-chat-latest", "ollama", "qwen3-8b", "deepseek-r1", "o", "omni"] {
            assert!(!is_reasoning_model(m), "{m}");
        }
    }

    fn client(model: &str, reasoning: Option<bool>, effort: Option<ReasoningEffort>) -> OpenAi {
        let opts = OpenAiOptions { base_url: "http://127.0.0.1:9/v1".into(), model: model.into(), reasoning, reasoning_effort: effort, ..Default::default() };
        OpenAi::new(opts).unwrap()
    }

    #[test]
    fn reasoning_requests_carry_no_sampling_parameters() {
        let b =
            client("o3-mini", None, Some(ReasoningEffort::High)).body(&Ask { system: "s", user: "u", temperature: 0.7, top_p: 0.9, max_tokens: 64, seed: 3 });
        assert_eq!(b["max_completion_tokens"], 64);
        assert_eq!(b["reasoning_effort"], "high");
        for k in ["max_tokens", "temperature", "top_p"] {
            assert!(b.get(k).is_none(), "{k} in {b}");
        }
        let b = client("gpt-4o", None, None).body(&Ask { system: "s", user: "u", temperature: 0.7, top_p: 0.9, max_tokens: 64, seed: 3 });
        assert_eq!((b["max_tokens"].as_u64(), b["temperature"].as_f64(), b["top_p"].as_f64()), (Some(64), Some(0.7), Some(0.9)));
        assert!(b.get("max_completion_tokens").is_none() && b.get("reasoning_effort").is_none());
        // The option overrides the name, both ways.
        assert!(client("my-r1", Some(true), None)
            .body(&Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 8, seed: 0 })
            .get("max_completion_tokens")
            .is_some());
        assert!(client("o3", Some(false), None)
            .body(&Ask { system: "s", user: "u", temperature: 0.0, top_p: 1.0, max_tokens: 8, seed: 0 })
            .get("max_tokens")
            .is_some());
    }

    #[test]
    fn a_refused_parameter_names_the_option_to_set() {
        let max_tokens = r#"{"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}"#;
        let m = refused_parameter(max_tokens, "o3", false).unwrap();
        assert!(m.contains("'max_tokens'") && m.contains("set reasoning: true"), "{m}");
        let temperature = r#"{"error": {"message": "Unsupported value: 'temperature' does not support 0.0 with this model. Only the default (1) value is supported.", "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}}"#;
        assert!(refused_parameter(temperature, "o3", false).unwrap().contains("set reasoning: true"));
        // Without `param`, the quoted name in the message.
        let bare = r#"{"error": {"message": "Unsupported parameter: 'max_completion_tokens'"}}"#;
        assert!(refused_parameter(bare, "llama", true).unwrap().contains("set reasoning: false"));
        let n = r#"{"error": {"message": "Unsupported value: 'n' must be 1 for this endpoint", "code": "unsupported_value"}}"#;
        assert!(refused_parameter(n, "llama", false).unwrap().contains("set native_n: false"));
        // Any other 400 stays an ordinary failure.
        assert_eq!(refused_parameter(r#"{"error": {"message": "context too long", "code": "context_length_exceeded"}}"#, "o3", true), None);
        assert_eq!(refused_parameter("not json", "o3", true), None);
    }

    #[test]
    fn traces_are_kept_apart_from_the_answer() {
        let split = serde_json::json!({"choices": [{"message": {"content": "The answer is 5", "reasoning_content": "2 + 3 = 5"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 22}}});
        let c = parse_completion(&split).unwrap();
        assert_eq!((c.text.as_str(), c.reasoning.as_deref(), c.completion_tokens, c.reasoning_tokens), ("The answer is 5", Some("2 + 3 = 5"), 30, Some(22)));
        let named = serde_json::json!({"choices": [{"message": {"content": "5", "reasoning": "think"}}]});
        assert_eq!(parse_completion(&named).unwrap().reasoning.as_deref(), Some("think"));
        let inline = serde_json::json!({"choices": [{"message": {"content": "<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5"}}]});
        let c = parse_completion(&inline).unwrap();
        assert_eq!((c.text.as_str(), c.reasoning.as_deref(), c.reasoning_tokens), ("The answer is 5", Some("2 + 3 = 5"), None));
        // Cut while thinking: the trace, no answer.
        let cut = serde_json::json!({"choices": [{"message": {"content": null, "reasoning_content": "Let me"}, "finish_reason": "length"}]});
        assert_eq!(parse_completion(&cut).unwrap().text, "");
        let plain = serde_json::json!({"choices": [{"message": {"content": "The answer is 5"}}]});
        assert_eq!(parse_completion(&plain).unwrap().reasoning, None);
        assert_eq!(parse_completion(&serde_json::json!({"choices": [{"message": {}}]})), None);
    }
}
