//! Sweep progress: points done / total with an ETA. In a terminal, a progress bar at the bottom
//! (indicatif, redrawn under the training and evaluation lines); elsewhere (notebooks, logs, CI)
//! one plain line per finished point, since terminal escapes would only garble a log.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    name: String,
    total: usize,
    done: usize,
    /// Points this invocation will run (the rest were complete, invalid, or not selected).
    to_run: usize,
    ran: usize,
    started: Instant,
    bar: Option<ProgressBar>,
}

/// `1h02m`, `3m05s`, `42s`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Progress {
    /// `done` of `total` points are already complete; `to_run` will be run now.
    pub fn new(name: &str, total: usize, done: usize, to_run: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            b.set_style(ProgressStyle::with_template("[sweep {prefix}] {wide_bar} {pos}/{len} points, {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
            b.set_prefix(name.to_string());
            b.set_position(done as u64);
            b.set_message("eta unknown");
            // Redrawn on a timer, so the bar comes back under lines SFT and eval print.
            b.enable_steady_tick(Duration::from_millis(500));
            b
        });
        let p = Progress { name: name.to_string(), total, done, to_run, ran: 0, started: Instant::now(), bar };
        p.line(&format!("{done} of {total} points complete, {to_run} to run now"));
        p
    }

    fn line(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("[sweep {}] {msg}", self.name)),
            None => eprintln!("[sweep {}] {msg}", self.name),
        }
    }

    /// Seconds left, from the mean time of the points run so far in this invocation.
    fn eta(&self) -> Option<f64> {
        (self.ran > 0).then(|| self.started.elapsed().as_secs_f64() / self.ran as f64 * (self.to_run - self.ran) as f64)
    }

    /// A point is starting.
    pub fn start(&self, index: usize, point: &str) {
        self.line(&format!("point {index} ({point}): running"));
    }

    /// A point finished (`ok` false: failed, with `what` its reason); `what` otherwise is its result.
    pub fn finish(&mut self, index: usize, point: &str, ok: bool, what: &str, seconds: f64) {
        self.ran += 1;
        if ok {
            self.done += 1;
        }
        let eta = self.eta().map(duration).unwrap_or_else(|| "unknown".into());
        let status = if ok { "done" } else { "FAILED" };
        self.line(&format!(
            "point {index} ({point}) {status} in {}: {what}; {}/{} points complete, {} left to run, eta {eta}",
            duration(seconds),
            self.done,
            self.total,
            self.to_run - self.ran
        ));
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(format!("eta {eta}"));
        }
    }

    pub fn close(self, summary: &str) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.line(&format!("{summary} in {}", duration(self.started.elapsed().as_secs_f64())));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(super::duration(42.4), "42s");
        assert_eq!(super::duration(185.0), "3m05s");
        assert_eq!(super::duration(3720.0), "1h02m");
    }
}
