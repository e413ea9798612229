//! Client-side rate limits for a teacher endpoint: `rpm` requests and `tpm` tokens per minute,
//! shared by every worker of one client, and the reset times servers announce.
//!
//! Invariants:
//! - Over any stretch of time the requests (tokens) sent stay within the budget, plus one
//!   second's worth of burst: each budget is a token bucket holding one second of its rate,
//!   refilled continuously.
//! - A request larger than the bucket is never refused forever: it waits for a full bucket and
//!   leaves it in debt, which later requests wait out.
//! - A request's tokens are estimated before sending (prompt bytes / 4, plus the completion
//!   limit), so the budget holds however long the answer turns out.
//! - Reset headers (`x-ratelimit-reset-requests: 6m0s`, `…-tokens: 20ms`) read as durations; what
//!   is not one reads as nothing, never as a wait of its own making.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One budget: `rate` units per second, holding at most one second of it.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Bucket {
        let rate = per_minute / 60.0;
        Bucket { rate, level: rate.max(1.0), at: now }
    }

    fn capacity(&self) -> f64 {
        self.rate.max(1.0)
    }

    /// Take `need` units at `now`: how long to wait before sending (zero when the bucket holds
    /// enough). The units are taken at once, so concurrent callers queue behind each other.
    fn take(&mut self, need: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity());
        self.at = now;
        // More than a full bucket: wait for a full one and go into debt for the rest.
        let ready_at = need.min(self.capacity());
        let wait = if self.level >= ready_at { 0.0 } else { (ready_at - self.level) / self.rate };
        self.level -= need;
        Duration::from_secs_f64(wait)
    }
}

/// The `rpm` and `tpm` budgets of one client.
#[derive(Debug)]
pub struct RateLimiter {
    requests: Option<Mutex<Bucket>>,
    tokens: Option<Mutex<Bucket>>,
}

impl RateLimiter {
    pub fn new(rpm: Option<f64>, tpm: Option<f64>) -> RateLimiter {
        let now = Instant::now();
        let bucket = |r: Option<f64>| r.map(|r| Mutex::new(Bucket::new(r, now)));
        RateLimiter { requests: bucket(rpm), tokens: bucket(tpm) }
    }

    /// How long to wait at `now` before sending a request of `tokens` (estimated) tokens.
    fn wait(&self, tokens: u64, now: Instant) -> Duration {
        let r = self.requests.as_ref().map_or(Duration::ZERO, |b| b.lock().unwrap().take(1.0, now));
        let t = self.tokens.as_ref().map_or(Duration::ZERO, |b| b.lock().unwrap().take(tokens as f64, now));
        r.max(t)
    }

    /// Block until a request of `tokens` (estimated) tokens may go.
    pub fn acquire(&self, tokens: u64) {
        let wait = self.wait(tokens, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The tokens a request will use at most, as the budget counts them: its prompt's bytes / 4 (the
/// usual rule of thumb for English with BPE tokenizers) plus the completion limit.
pub fn estimate_tokens(prompt_bytes: usize, max_tokens: usize) -> u64 {
    (prompt_bytes as u64).div_ceil(4) + max_tokens as u64
}

/// Seconds in a reset header's duration, as OpenAI writes them: `1s`, `6m0s`, `20ms`,
/// `1h2m3.5s`; a bare number is seconds. None for anything else.
pub fn reset_s(value: &str) -> Option<f64> {
    let v = value.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some(s);
    }
    let (mut total, mut rest) = (0.0, v);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&n| n > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = [("ms", 2), ("h", 1), ("m", 1), ("s", 1)].into_iter().find(|(u, _)| rest.starts_with(u))?;
        total += n * match unit {
            "ms" => 0.001,
            "h" => 3600.0,
            "m" => 60.0,
            _ => 1.0,
        };
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_the_budget_after_a_one_second_burst() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(Some(120.0), None);
        // 2 per second: the first two go at once, then one every half second.
        let waits: Vec<f64> = (0..6).map(|_| limiter.wait(0, t0).as_secs_f64()).collect();
        for (w, expected) in waits.iter().zip([0.0, 0.0, 0.5, 1.0, 1.5, 2.0]) {
            assert!((w - expected).abs() < 1e-9, "{waits:?}");
        }
        // Time refills the bucket.
        let later = RateLimiter::new(Some(120.0), None);
        later.wait(0, t0);
        later.wait(0, t0);
        assert_eq!(later.wait(0, t0 + Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn a_request_larger_than_the_bucket_goes_and_leaves_debt() {
        let t0 = Instant::now();
        // 100 tokens per second; a 300-token request waits for a full bucket only…
        let limiter = RateLimiter::new(None, Some(6000.0));
        assert_eq!(limiter.wait(300, t0), Duration::ZERO);
        // …and the next waits out its debt: -200 back to 50 takes 2.5 s.
        assert!((limiter.wait(50, t0).as_secs_f64() - 2.5).abs() < 1e-9);
        // Both budgets: the longer wait decides.
        let both = RateLimiter::new(Some(60.0), Some(60_000.0));
        both.wait(10, t0);
        assert!((both.wait(10, t0).as_secs_f64() - 1.0).abs() < 1e-9);
        assert_eq!(RateLimiter::new(None, None).wait(1_000_000, t0), Duration::ZERO, "no budget, no wait");
    }

    #[test]
    fn tokens_are_estimated_from_the_prompt_and_the_completion_limit() {
        assert_eq!(estimate_tokens(400, 512), 612);
        assert_eq!(estimate_tokens(1, 0), 1);
    }

    #[test]
    fn reset_headers_read_as_durations() {
        for (v, s) in [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), (" 2s ", 2.0)] {
            assert!((reset_s(v).unwrap() - s).abs() < 1e-9, "{v}");
        }
        for v in ["", "soon", "5x", "-3", "inf", "1s2", "m"] {
            assert_eq!(reset_s(v), None, "{v}");
        }
    }
}
