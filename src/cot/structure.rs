//! Split a rationale into steps and measure it.
//!
//! Teachers write steps three ways: numbered lists (often run together on one line, as in
//! "...groups.2. We are asked..."), one step per line, or plain sentences. We try them in that
//! order. The closing "The answer is X" is the conclusion, not a step, and is not counted.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::eval::extract::TRIGGER;

/// What a rationale looks like, in numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CotMeasure {
    /// Whitespace-separated tokens of the trimmed rationale (answer sentence included).
    pub words: usize,
    /// Reasoning steps (see `split_steps`).
    pub steps: usize,
    /// Numbers written in the rationale.
    pub numbers: usize,
    /// Equations (`=` signs).
    pub equations: usize,
    /// Does the rationale check its result?
    pub has_verification: bool,
}

static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+(?:[.,]\d+)*").unwrap());
static VERIFY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(verif(y|ied|ication|ying)|double[- ]check(ing)?|let'?s check|to check|checking|check:|sanity check|confirm(s|ed|ing)?|plug(ging)? (it |this |the value )?back|substitut(e|ing) back|work(ing)? backwards?|to ensure|make sure|revers(e|ing) the operation)\b").unwrap()
});
static STEP_WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\bstep\s+(\d+)\s*[:.)-]").unwrap());
static SENTENCE_END: LazyLock<Regex> = LazyLock::new(|| Regex::new(r#"[.!?]["')\]]?\s+"#).unwrap());

/// Drop the closing "The answer is X" sentence.
fn strip_conclusion(text: &str) -> &str {
    let lower = text.to_ascii_lowercase();
    match lower.rfind(TRIGGER) {
        Some(i) => text[..i].trim_end(),
        None => text,
    }
}

/// Find "1." / "2." / ... markers in sequence. A marker for k is the number k followed by '.' or
/// ')' and whitespace, preceded by start of text, whitespace, or punctuation (so "290.2. We"
/// yields marker 2 but "3.5 apples" does not).
fn numbered_markers(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut k = 1usize;
    let mut from = 0usize;
    'next: loop {
        let needle = k.to_string();
        let mut search = from;
        while let Some(off) = text[search..].find(&needle) {
            let s = search + off;
            let e = s + needle.len();
            let before_ok = s == 0 || {
                let b = bytes[s - 1];
                b.is_ascii_whitespace() || matches!(b, b'.' | b':' | b';' | b'(' | b'*' | b'#')
            };
            // Guard against the middle of a number: "12." must not count as marker 2.
            let not_inside_number = s == 0 || !bytes[s - 1].is_ascii_digit();
            let after_ok = e + 1 < bytes.len()
                && matches!(bytes[e], b'.' | b')')
                && (bytes[e + 1].is_ascii_whitespace() || bytes[e + 1] == b'*');
            if before_ok && not_inside_number && after_ok {
                out.push((s, e + 1));
                from = e + 1;
                k += 1;
                continue 'next;
            }
            search = e;
        }
        break;
    }
    out
}

/// Split a rationale into its reasoning steps.
pub fn split_steps(text: &str) -> Vec<String> {
    let trimmed = text.trim();
    let body = strip_conclusion(trimmed);
    // A bare answer ("145", "B", "True") is not a reasoning step.
    if body.is_empty() || (body.len() == trimmed.len() && body.split_whitespace().count() <= 3 && !body.contains('=')) {
        return Vec::new();
    }
    // 1. "Step 1: ... Step 2: ..."
    let step_marks: Vec<(usize, usize)> = STEP_WORD.find_iter(body).map(|m| (m.start(), m.end())).collect();
    if step_marks.len() >= 2 {
        return pieces(body, &step_marks);
    }
    // 2. numbered list "1. ... 2. ..."
    let marks = numbered_markers(body);
    if marks.len() >= 2 {
        return pieces(body, &marks);
    }
    // 3. lines
    let lines: Vec<String> =
        body.lines().map(str::trim).filter(|l| l.chars().any(char::is_alphanumeric)).map(str::to_string).collect();
    if lines.len() >= 2 {
        return lines;
    }
    // 4. sentences
    let mut out = Vec::new();
    let mut start = 0;
    for m in SENTENCE_END.find_iter(body) {
        let next = body[m.end()..].chars().next();
        // A sentence ends where the next one starts with a capital, digit or quote.
        if next.is_some_and(|c| c.is_uppercase() || c.is_ascii_digit() || c == '"' || c == '(') {
            push_piece(&mut out, &body[start..m.end()]);
            start = m.end();
        }
    }
    push_piece(&mut out, &body[start..]);
    out
}

/// Text between markers: an optional preamble before the first marker counts as a step when
/// it says something (e.g. "Let's break it down:" does not; a goal statement does).
fn pieces(body: &str, marks: &[(usize, usize)]) -> Vec<String> {
    let mut out = Vec::new();
    let preamble = body[..marks[0].0].trim();
    if preamble.split_whitespace().count() >= 8 {
        push_piece(&mut out, preamble);
    }
    for (i, &(_, e)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).map(|&(s, _)| s).unwrap_or(body.len());
        push_piece(&mut out, &body[e..end]);
    }
    out
}

fn push_piece(out: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_string());
    }
}

/// Measure a rationale.
pub fn measure(text: &str) -> CotMeasure {
    let t = text.trim();
    CotMeasure {
        words: t.split_whitespace().count(),
        steps: split_steps(t).len(),
        numbers: NUMBER.find_iter(t).count(),
        equations: t.matches('=').count(),
        has_verification: VERIFY.is_match(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_together_numbered_list() {
        let t = "Let's break down the steps in detail:1. First, note that we have 290.2. We are asked to make 2 groups.3. Divide: 290 / 2 = 145. The answer is 145";
        let s = split_steps(t);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].starts_with("First"));
        assert!(s[1].starts_with("We are asked"));
    }

    #[test]
    fn sentences_and_conclusion() {
        let t = "Divide the total number of bananas by the number of groups. The answer is 145";
        assert_eq!(split_steps(t), vec!["Divide the total number of bananas by the number of groups."]);
        let t = "There are 290 bananas. 290 / 2 = 145. So each group has 145.5 kg. The answer is 145";
        assert_eq!(split_steps(t).len(), 3);
    }

    #[test]
    fn lines_and_measures() {
        let t = "x = 3 + 4\ny = x * 2\nVerification: 14 / 2 = 7.\nThe answer is 14";
        let m = measure(t);
        assert_eq!(m.steps, 3);
        assert_eq!(m.equations, 3);
        assert!(m.has_verification);
        assert_eq!(m.words, t.split_whitespace().count());
        assert!(!measure("Add them. The answer is 7").has_verification);
        assert_eq!(measure("145").steps, 0);
        assert_eq!(measure("B").steps, 0);
    }
}
