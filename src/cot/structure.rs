//! Split a rationale into steps and measure it.
//!
//! Teachers write steps three ways: numbered lists (often run together on one line, as in
//! "...groups.2. We are asked..."), one step per line, or plain sentences. We try them in that
//! order. The closing "The answer is X" is the conclusion, not a step, and is not counted.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::answer::TRIGGER;

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
            let after_ok = e + 1 < bytes.len() && matches!(bytes[e], b'.' | b')') && (bytes[e + 1].is_ascii_whitespace() || bytes[e + 1] == b'*');
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
    let lines: Vec<String> = body.lines().map(str::trim).filter(|l| l.chars().any(char::is_alphanumeric)).map(str::to_string).collect();
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
        let t =
            "Let's break down the steps in detail:1. First, note that we have 290.2. We are asked to make 2 groups.3. Divide: 290 / 2 = 145. The answer is 145";
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

static CALC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d\s*[-+*/×÷=]\s*\(?\d|=\s*-?\d|\d\s*=").unwrap());

/// Post-hoc granularity: coarsen a rationale to at most `target` steps without a teacher call.
/// Adjacent steps are merged into `target` groups; inside a group, sentences without a
/// calculation are dropped when the group has one (the calculations are what a coarser
/// rationale keeps). The result is a numbered list, so `measure` counts exactly its steps, and it
/// ends with the original "The answer is X".
pub fn coarsen(text: &str, target: usize) -> String {
    let target = target.max(1);
    let steps = split_steps(text);
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let conclusion = lower.rfind(TRIGGER).map(|i| trimmed[i..].trim().to_string());
    if steps.len() <= target {
        return trimmed.to_string();
    }
    let mut groups: Vec<String> = Vec::with_capacity(target);
    for g in 0..target {
        let (a, b) = (g * steps.len() / target, (g + 1) * steps.len() / target);
        let part = &steps[a..b];
        let with_calc: Vec<&String> = part.iter().filter(|s| CALC.is_match(s)).collect();
        let kept: Vec<&String> = if with_calc.is_empty() { part.iter().collect() } else { with_calc };
        let joined = kept.iter().map(|s| s.trim_end_matches('.').to_string()).collect::<Vec<_>>().join("; ");
        groups.push(format!("{}. {joined}.", g + 1));
    }
    let mut out = groups.join("\n");
    if let Some(c) = conclusion {
        out.push('\n');
        out.push_str(&c);
    }
    out
}

#[cfg(test)]
mod coarsen_tests {
    use super::*;

    #[test]
    fn coarsening_keeps_calculations_and_answer() {
        let t = "Goal: find the apples.\n1. Tom starts with 12 apples.\n2. He buys 5 more, so 12 + 5 = 17.\n3. Buying increases the count.\n4. He gives away 3, so 17 - 3 = 14.\n5. Verification: 14 + 3 = 17.\nThe answer is 14";
        let before = measure(t).steps;
        let c = coarsen(t, 2);
        assert_eq!(measure(&c).steps, 2, "{c}");
        assert!(before > 2);
        assert!(c.contains("12 + 5 = 17") && c.contains("17 - 3 = 14") && c.ends_with("The answer is 14"), "{c}");
        assert!(!c.contains("Buying increases"), "prose dropped next to a calculation: {c}");
        assert_eq!(coarsen("Add them: 2 + 3 = 5. The answer is 5", 3), "Add them: 2 + 3 = 5. The answer is 5");
    }
}
