//! A client for OpenAI-compatible chat-completions endpoints (OpenAI, Gemini's compatible
//! endpoint, vLLM, Ollama, llama.cpp servers). Retries 429/5xx/timeouts/dropped connections/
//! malformed JSON with exponential backoff and jitter, honouring Retry-After.
//!
//! The API key comes from the environment variable named by `api_key_env`; without one,
//! `OPENAI_API_KEY` is used for `api.openai.com` only, never for another endpoint. A key is sent
//! only over https or to a loopback host (127.0.0.0/8, ::1, localhost) unless
//! `allow_insecure_key` is set, and it is replaced by `[redacted]` in every text this client
//! returns (errors, response bodies), so it is never written anywhere.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    pub timeout_s: f64,
    pub max_retries: usize,
    /// First backoff delay; doubles on each retry (with jitter), capped at 60 s.
    pub backoff_s: f64,
    /// USD per million prompt / completion tokens, for the cost estimate.
    pub price_in: f64,
    pub price_out: f64,
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
            price_in: 0.0,
            price_out: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Attempts it took (1 = first try).
    pub attempts: usize,
}

pub struct OpenAi {
    pub opts: OpenAiOptions,
    agent: ureq::Agent,
    key: Option<String>,
    endpoint: String,
}

enum Failure {
    Retry(String, Option<f64>),
    Fatal(String),
}

/// What the key policy needs of a base URL: lowercase scheme and host, and the URL normalised
/// (scheme and host lowercased, no trailing slash) for cache keys.
struct Endpoint {
    scheme: String,
    host: String,
    normalised: String,
}

fn endpoint(base_url: &str) -> Result<Endpoint, String> {
    let bad = || format!("base_url '{base_url}' is not an http(s) URL: give e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1");
    let (scheme, rest) = base_url.trim().split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = authority.to_ascii_lowercase();
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(&authority);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("").to_string()
    } else {
        hostport.split(':').next().unwrap_or("").to_string()
    };
    if host.is_empty() {
        return Err(bad());
    }
    let normalised = format!("{scheme}://{authority}{}", path.trim_end_matches('/'));
    Ok(Endpoint { scheme, host, normalised })
}

/// 127.0.0.0/8, ::1 (also as ::ffff:127.x), localhost and *.localhost.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return ip.is_loopback();
    }
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

impl OpenAi {
    pub fn new(opts: OpenAiOptions) -> Result<OpenAi, String> {
        opts.validate().map_err(|e| e.to_string())?;
        let ep = endpoint(&opts.base_url)?;
        let official = ep.host == "api.openai.com";
        let var = match &opts.api_key_env {
            Some(v) => Some(v.clone()),
            None if official => Some("OPENAI_API_KEY".to_string()),
            None => {
                if std::env::var_os("OPENAI_API_KEY").is_some_and(|k| !k.is_empty()) {
                    eprintln!(
                        "note: teacher: no API key is sent to {} (OPENAI_API_KEY is only used for api.openai.com); set api_key_env to name the variable holding this endpoint's key",
                        ep.normalised
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
        if key.is_some() && ep.scheme != "https" && !is_loopback(&ep.host) && !opts.allow_insecure_key {
            return Err(format!(
                "refusing to send the API key from {} over plain http to {}: anyone on the way could read it. Use https, a loopback host, or set allow_insecure_key: true if you trust the network",
                var.as_deref().unwrap_or("?"),
                ep.host
            ));
        }
        let t = Duration::from_secs_f64(opts.timeout_s.max(0.01));
        let agent = ureq::AgentBuilder::new().timeout_connect(t).timeout_read(t).timeout_write(t).build();
        Ok(OpenAi { opts, agent, key, endpoint: ep.normalised })
    }

    /// The base URL normalised (scheme and host lowercased, no trailing slash): part of every
    /// cache key, so two servers with one model name never share answers.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `text` with every occurrence of the key replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) if !k.is_empty() => text.replace(k.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }

    fn once(&self, body: &serde_json::Value) -> Result<Completion, Failure> {
        let url = format!("{}/chat/completions", self.opts.base_url.trim_end_matches('/'));
        let mut req = self.agent.post(&url).set("Content-Type", "application/json");
        if let Some(k) = &self.key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let resp = match req.send_json(body.clone()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let retry_after = r.header("Retry-After").and_then(|v| v.trim().parse::<f64>().ok());
                // Redacted before truncating: a cut could leave part of the key unmatched.
                let body = self.redact(&r.into_string().unwrap_or_default());
                let msg = format!("HTTP {code}: {}", body.chars().take(200).collect::<String>());
                return Err(if code == 429 || code >= 500 { Failure::Retry(msg, retry_after) } else { Failure::Fatal(msg) });
            }
            Err(e) => return Err(Failure::Retry(format!("transport: {e}"), None)),
        };
        let text = resp.into_string().map_err(|e| Failure::Retry(format!("reading the body: {e}"), None))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Failure::Retry(format!("malformed JSON: {e}"), None))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| Failure::Retry("response without choices[0].message.content".into(), None))?;
        Ok(Completion {
            text: self.redact(content),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            attempts: 1,
        })
    }

    /// One chat completion, retried within limits. Every text it returns has the key redacted.
    pub fn complete(&self, system: &str, user: &str, temperature: f64, top_p: f64, max_tokens: usize, seed: u64) -> Result<Completion, String> {
        self.complete_raw(system, user, temperature, top_p, max_tokens, seed).map_err(|e| self.redact(&e))
    }

    fn complete_raw(&self, system: &str, user: &str, temperature: f64, top_p: f64, max_tokens: usize, seed: u64) -> Result<Completion, String> {
        let body = serde_json::json!({
            "model": self.opts.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
        });
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut last = String::new();
        for attempt in 0..=self.opts.max_retries {
            match self.once(&body) {
                Ok(mut c) => {
                    c.attempts = attempt + 1;
                    return Ok(c);
                }
                Err(Failure::Fatal(m)) => return Err(m),
                Err(Failure::Retry(m, after)) => {
                    last = m;
                    if attempt == self.opts.max_retries {
                        break;
                    }
                    let backoff = (self.opts.backoff_s * 2f64.powi(attempt as i32)).min(60.0);
                    let jitter = backoff * 0.5 * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
                    let wait = after.unwrap_or(0.0).max(backoff + jitter);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
            }
        }
        Err(format!("gave up after {} attempts: {last}", self.opts.max_retries + 1))
    }
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
        in_range(T, "price_in", self.price_in, 0.0..=1e6)?;
        in_range(T, "price_out", self.price_out, 0.0..=1e6)?;
        Ok(())
    }
}
