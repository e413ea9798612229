//! Answers, at the base of the crate: the answer kinds, the extractors and the one place that
//! decides whether an output is right (scoring students, filtering teacher rationales, measuring
//! agreement with gold). One definition, so that a student's accuracy and a teacher's agreement
//! can never be computed two different ways.
//!
//! Two scoring protocols ([`Protocol`]):
//!
//! - `paper` ([`paper`]): the paper's own evaluators, rule for rule. Math tasks (SVAMP, GSM8K,
//!   AQuA, MATH, arith) follow MAmmoTH's `answer_clean` as the paper's repository ships it
//!   (EIT-NLP/Distilling-CoT-Reasoning `Evaluation/reasoning_eval/utils.py`, copied from
//!   TIGER-AI-Lab/MAmmoTH `math_eval/utils.py`) and MAmmoTH's comparisons (`math_eval/run_open.py`,
//!   `run_choice.py`); commonsense tasks (CSQA, OBQA, StrategyQA) follow the paper's own
//!   `Evaluation/reasoning_eval/run_reasoning.py`.
//! - `lenient` ([`judge`]): cotlab's original, more forgiving rules: the text after the last "The
//!   answer is" (any case); numbers drop commas and take the first number after the trigger (the
//!   last number of the whole text when there is no trigger), compared with a tolerance; letters
//!   A–E (also "(b)", "b", or a bare letter without trigger) for multiple choice; True/False and
//!   yes/no for StrategyQA; `\boxed{}` and LaTeX normalisation for MATH. Teachers' rationales
//!   are filtered and measured with these rules.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub mod paper;
pub mod think;

crate::choices! {
    /// How a gold answer is written and compared.
    pub enum AnswerKind("kind") {
        /// SVAMP, GSM8K, arith: a number, compared with a numeric tolerance.
        Number = "number" | "numeric",
        /// AQuA, CSQA, OBQA: a letter A–E.
        Choice = "choice" | "letter",
        /// StrategyQA: True / False.
        Bool = "bool" | "true-false" | "boolean",
        /// MATH: a LaTeX expression, normalised before comparison.
        Latex = "latex" | "math",
        /// Free text (a user test set's `kind: "text"`): equal after SQuAD's `normalize_answer`
        /// ([`normalize_text`]).
        Text = "text",
    }
}

impl AnswerKind {
    /// The kind a set of gold answers is all of, and why (for the message that says the choice):
    /// numbers; letters A–E where the rows have choices (`with_choices`); yes/no or true/false;
    /// LaTeX when one holds a backslash; else free text. The one rule for user test sets and
    /// user corpora alike.
    pub fn infer<'a>(answers: impl Iterator<Item = (&'a str, bool)> + Clone) -> (AnswerKind, &'static str) {
        let all = |f: &dyn Fn(&str, bool) -> bool| answers.clone().all(|(a, c)| f(a, c));
        if all(&|a, _| parse_number(&a.replace(',', "")).is_some()) {
            (AnswerKind::Number, "every answer is a number")
        } else if all(&|a, with_choices| with_choices && choice_letter(a).is_some()) {
            (AnswerKind::Choice, "every answer is a letter A-E and the rows have choices")
        } else if all(&|a, _| canonical_gold(a, AnswerKind::Bool).is_some()) {
            (AnswerKind::Bool, "every answer is yes/no or true/false")
        } else if answers.clone().any(|(a, _)| a.contains('\\')) {
            (AnswerKind::Latex, "an answer holds LaTeX")
        } else {
            (AnswerKind::Text, "the answers are free text, compared after normalisation")
        }
    }
}

/// A letter A–E, alone or in parentheses ("B", "(b)", "B)").
pub fn choice_letter(s: &str) -> Option<char> {
    let t = s.trim().trim_start_matches('(').trim_end_matches(['.', ')']);
    let mut cs = t.chars();
    let c = cs.next()?.to_ascii_uppercase();
    (cs.next().is_none() && ('A'..='E').contains(&c)).then_some(c)
}

/// The paper's trigger phrase. Matched case-insensitively; the *last* occurrence wins, so a
/// rationale that restates an intermediate "the answer is" is scored on its conclusion.
pub const TRIGGER: &str = "the answer is";

static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"-?\d+(?:/\d+|\.\d+)?").unwrap());
static CHOICE_AFTER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)(?:^|[^A-Za-z0-9])\(?([A-E])\)?(?:$|[^A-Za-z0-9])").unwrap());
static CHOICE_BARE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:^|[^A-Za-z0-9])\(?([A-E])\)?(?:$|[^A-Za-z0-9])").unwrap());
/// SQuAD's `re.compile(r'\b(a|an|the)\b', re.UNICODE)`.
static ARTICLE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").unwrap());
static BOOL_WORD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\b(true|false|yes|no)\b").unwrap());

/// Numeric tolerance per answer kind. Integers and decimals from word problems compare with a
/// tight tolerance ("145.0" equals "145"); MATH answers compare as normalised strings first and
/// then numerically when both sides parse as numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    pub fn for_kind(kind: AnswerKind) -> Self {
        match kind {
            AnswerKind::Number => Tolerance { abs: 1e-4, rel: 1e-6 },
            AnswerKind::Latex => Tolerance { abs: 1e-6, rel: 1e-6 },
            AnswerKind::Choice | AnswerKind::Bool | AnswerKind::Text => Tolerance { abs: 0.0, rel: 0.0 },
        }
    }

    pub fn close(&self, a: f64, b: f64) -> bool {
        (a - b).abs() <= self.abs.max(self.rel * b.abs())
    }
}

/// Split off the text after the last trigger. Returns (segment, trigger_found).
pub fn after_trigger(text: &str) -> (&str, bool) {
    let lower = text.to_ascii_lowercase();
    match lower.rfind(TRIGGER) {
        // ASCII lowercasing keeps byte offsets, so the index is valid in `text`.
        Some(i) => (&text[i + TRIGGER.len()..], true),
        None => (text, false),
    }
}

/// Extract the final answer of `kind` from a model or teacher output, in canonical form
/// (numbers without trailing zeros, a capital letter, "True"/"False", normalised LaTeX).
/// `None` means nothing parseable was found: the output counts as "unparsed".
pub fn extract_answer(text: &str, kind: AnswerKind) -> Option<String> {
    let (segment, found) = after_trigger(text);
    let segment = segment.trim();
    match kind {
        AnswerKind::Number => {
            let cleaned = segment.replace(',', "");
            let mut numbers = NUMBER.find_iter(&cleaned).map(|m| m.as_str().to_string());
            let pick = if found { numbers.next() } else { numbers.last() };
            pick.and_then(|s| parse_number(&s)).map(format_number)
        }
        AnswerKind::Choice => {
            let caps: Vec<String> = if found {
                CHOICE_AFTER.captures_iter(segment).map(|c| c[1].to_ascii_uppercase()).collect()
            } else {
                CHOICE_BARE.captures_iter(segment).map(|c| c[1].to_string()).collect()
            };
            if found {
                caps.into_iter().next()
            } else {
                caps.into_iter().last()
            }
        }
        AnswerKind::Bool => {
            let words: Vec<&str> = BOOL_WORD.find_iter(segment).map(|m| m.as_str()).collect();
            let w = if found { words.first() } else { words.last() }?;
            Some(canonical_bool(w)?.to_string())
        }
        AnswerKind::Latex => {
            let raw = if text.contains("boxed") {
                find_boxed(text)?
            } else if found {
                let s = segment.rsplit('=').next().unwrap_or(segment).trim();
                s.trim_end_matches('.').to_string()
            } else {
                let cleaned = segment.replace(',', "");
                NUMBER.find_iter(&cleaned).last()?.as_str().to_string()
            };
            let s = strip_latex(&raw);
            (!s.is_empty()).then_some(s)
        }
        // The line after the trigger, else the last non-empty line.
        AnswerKind::Text => {
            let line = if found { segment.lines().next() } else { segment.lines().rev().find(|l| !l.trim().is_empty()) }?;
            let s = normalize_text(line);
            (!s.is_empty()).then_some(s)
        }
    }
}

/// SQuAD's `normalize_answer` (the official evaluation script): lower case, ASCII punctuation
/// removed, the articles a/an/the removed, whitespace collapsed to single spaces.
pub fn normalize_text(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    ARTICLE.replace_all(&no_punct, " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Canonical form of a gold answer, so that gold and extracted answers compare like with like.
pub fn canonical_gold(gold: &str, kind: AnswerKind) -> Option<String> {
    let g = gold.trim();
    match kind {
        AnswerKind::Number => parse_number(&g.replace(',', "")).map(format_number),
        AnswerKind::Choice => {
            let g = g.trim_matches(|c: char| c == '(' || c == ')' || c.is_whitespace());
            let c = g.chars().next()?.to_ascii_uppercase();
            ('A'..='E').contains(&c).then(|| c.to_string())
        }
        AnswerKind::Bool => canonical_bool(g).map(str::to_string),
        AnswerKind::Latex => Some(strip_latex(g)),
        AnswerKind::Text => Some(normalize_text(g)).filter(|s| !s.is_empty()),
    }
}

/// Is `prediction` (already extracted) equal to `gold` (canonical) for this kind?
pub fn answers_match(prediction: &str, gold: &str, kind: AnswerKind, tol: Tolerance) -> bool {
    match kind {
        AnswerKind::Number => match (parse_number(prediction), parse_number(gold)) {
            (Some(p), Some(g)) => tol.close(p, g),
            _ => false,
        },
        AnswerKind::Choice | AnswerKind::Bool => prediction.eq_ignore_ascii_case(gold),
        AnswerKind::Text => normalize_text(prediction) == normalize_text(gold),
        AnswerKind::Latex => {
            let (p, g) = (strip_latex(prediction), strip_latex(gold));
            if p == g {
                return true;
            }
            match (latex_number(&p), latex_number(&g)) {
                (Some(a), Some(b)) => tol.close(a, b),
                _ => false,
            }
        }
    }
}

/// What the extractor made of an output, and whether that is the gold answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The canonical extracted answer; `None` when nothing of the kind was found ("unparsed").
    pub extracted: Option<String>,
    pub correct: bool,
}

/// The lenient protocol: extract the answer of `kind` from `output` and compare it with `gold`.
/// `gold` may be raw
/// ("145.0", "(C)") or already canonical, as loaders store it: canonicalising a stored gold
/// again does not change what is compared (`tests/extract_real.rs` checks this on the whole
/// release; LaTeX normalisation is not idempotent on every string, only on those).
pub fn judge(output: &str, gold: &str, kind: AnswerKind) -> Judgement {
    let extracted = extract_answer(output, kind);
    let correct = match (&extracted, canonical_gold(gold, kind)) {
        (Some(p), Some(g)) => answers_match(p, &g, kind, Tolerance::for_kind(kind)),
        _ => false,
    };
    Judgement { extracted, correct }
}

crate::choices! {
    /// Which rules score an output: the paper's evaluators (the default wherever a student is
    /// scored) or cotlab's lenient extractor. Option `protocol: "paper" | "lenient"` of `evaluate`,
    /// `score_predictions`, `cotlab eval` and `cotlab score`.
    #[derive(Default)]
    pub enum Protocol("protocol") {
        #[default]
        Paper = "paper",
        Lenient = "lenient",
    }
}

impl Protocol {
    /// Extract the answer from `output` and compare it with `gold` under this protocol.
    /// `evaluator` says which of the paper's evaluators the task belongs to (the lenient rules
    /// only look at `kind`). A thinking student's trace is taken out first, so only its answer is
    /// read; one cut before `</think>` has no answer ([`think::split_think`]).
    pub fn judge(self, output: &str, gold: &str, kind: AnswerKind, evaluator: Evaluator) -> Judgement {
        let t = think::split_think(output);
        if !t.closed {
            return Judgement { extracted: None, correct: false };
        }
        match self {
            Protocol::Paper => paper::judge(t.answer, gold, kind, evaluator),
            Protocol::Lenient => judge(t.answer, gold, kind),
        }
    }
}

/// Which of the paper's two evaluators scores a task: MAmmoTH's math evaluator (SVAMP, GSM8K,
/// AQuA, MATH; also `arith`) or the paper's commonsense script (CSQA, OBQA, StrategyQA). AQuA and
/// CSQA are both multiple choice but are scored by different rules, so the kind alone does not
/// say it (`data::Task::evaluator` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Evaluator {
    Math,
    Commonsense,
}

fn canonical_bool(w: &str) -> Option<&'static str> {
    match w.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" => Some("True"),
        "false" | "no" => Some("False"),
        _ => None,
    }
}

/// Parse "145", "145.0", "-3.5", "3/4".
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('/') {
        let (a, b): (f64, f64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (b != 0.0).then(|| a / b);
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// "145.0" → "145", "0.50" → "0.5".
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The content of the last `\boxed{...}` (braces balanced), or the token after `\boxed `.
pub fn find_boxed(text: &str) -> Option<String> {
    let start = text.rfind("boxed")? + "boxed".len();
    let rest = &text[start..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut depth = 1;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].to_string());
                    }
                }
                _ => {}
            }
        }
        None
    } else {
        Some(rest.split('$').next().unwrap_or("").trim().to_string())
    }
}

/// The first steps of Hendrycks' MATH normalisation, shared by both protocols: linebreaks, `\!`,
/// `\\`, `tfrac`/`dfrac`, `\left`/`\right`, degrees, dollars, units after `\text{ `, `\%`.
fn strip_markup(s: &str) -> String {
    let mut s = s.replace('\n', "").replace("\\!", "").replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    s = s.trim_matches('$').replace("\\$", "");
    if let Some(i) = s.find("\\text{ ") {
        s.truncate(i);
    }
    s.replace("\\%", "")
}

/// MATH answer normalisation (the usual Hendrycks rules): drop `\left`/`\right`, `\!`,
/// dollars, degree marks, `\%`, units in `\text{ }`, spaces; `tfrac`/`dfrac` → `frac`;
/// `\frac12` → `\frac{1}{2}`; `a/b` → `\frac{a}{b}`; `\sqrt3` → `\sqrt{3}`; a leading `x =`.
pub fn strip_latex(s: &str) -> String {
    let mut s = strip_markup(s).replace('%', "");
    // `\text{abc}` → `abc`
    while let Some(i) = s.find("\\text{") {
        let body = &s[i + 6..];
        match body.find('}') {
            Some(j) => s = format!("{}{}{}", &s[..i], &body[..j], &body[j + 1..]),
            None => break,
        }
    }
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    if let Some((lhs, rhs)) = s.split_once('=') {
        if lhs.trim().len() <= 2 && !rhs.contains('=') {
            s = rhs.to_string();
        }
    }
    s = fix_sqrt(&s).replace(' ', "");
    s = fix_fracs(&s);
    if let Some((a, b)) = s.split_once('/') {
        if a.parse::<i64>().is_ok() && b.parse::<i64>().is_ok() {
            s = format!("\\frac{{{a}}}{{{b}}}");
        }
    }
    s.trim_end_matches('.').to_string()
}

pub(crate) fn fix_sqrt(s: &str) -> String {
    let mut parts = s.split("\\sqrt");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        out.push_str("\\sqrt");
        match p.chars().next() {
            Some(c) if c != '{' => {
                out.push('{');
                out.push(c);
                out.push('}');
                out.push_str(&p[c.len_utf8()..]);
            }
            _ => out.push_str(p),
        }
    }
    out
}

pub(crate) fn fix_fracs(s: &str) -> String {
    let mut parts = s.split("\\frac");
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        out.push_str("\\frac");
        let chars: Vec<char> = p.chars().collect();
        if chars.first() == Some(&'{') || chars.len() < 2 {
            out.push_str(p);
            continue;
        }
        let (a, b) = (chars[0], chars[1]);
        let rest: String = chars[2..].iter().collect();
        if b != '{' {
            out.push_str(&format!("{{{a}}}{{{b}}}{rest}"));
        } else {
            out.push_str(&format!("{{{a}}}{b}{rest}"));
        }
    }
    out
}

/// A normalised LaTeX answer as a number, when it is one: "12", "-0.5", "\frac{3}{4}",
/// "-\frac{1}{2}".
fn latex_number(s: &str) -> Option<f64> {
    if let Some(x) = parse_number(s) {
        return Some(x);
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let body = body.strip_prefix("\\frac{")?;
    let (num, rest) = body.split_once("}{")?;
    let den = rest.strip_suffix('}')?;
    let v = num.parse::<f64>().ok()? / den.parse::<f64>().ok()?;
    v.is_finite().then_some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use AnswerKind::*;

    #[test]
    fn numbers_follow_the_paper() {
        assert_eq!(extract_answer("290 / 2 = 145. The answer is 145", Number).as_deref(), Some("145"));
        assert_eq!(extract_answer("The answer is 1,234.50 dollars", Number).as_deref(), Some("1234.5"));
        assert_eq!(extract_answer("so 3 + 4 = 7", Number).as_deref(), Some("7"));
        assert_eq!(extract_answer("The answer is 3. Check: 1 + 2 = 3", Number).as_deref(), Some("3"));
        assert_eq!(extract_answer("The answer is -4", Number).as_deref(), Some("-4"));
        assert_eq!(extract_answer("no digits here", Number), None);
    }

    #[test]
    fn last_trigger_wins() {
        let t = "First the answer is 5 for part one. Then 5 * 2 = 10. The answer is 10";
        assert_eq!(extract_answer(t, Number).as_deref(), Some("10"));
    }

    #[test]
    fn choices_and_bools() {
        assert_eq!(extract_answer("... The answer is (B)", Choice).as_deref(), Some("B"));
        assert_eq!(extract_answer("The answer is b: populated areas", Choice).as_deref(), Some("B"));
        assert_eq!(extract_answer("D", Choice).as_deref(), Some("D"));
        assert_eq!(extract_answer("The answer is True", Bool).as_deref(), Some("True"));
        assert_eq!(extract_answer("So no. The answer is no", Bool).as_deref(), Some("False"));
    }

    #[test]
    fn latex_normalisation() {
        assert_eq!(extract_answer("thus $\\boxed{\\dfrac{1}{2}}$", Latex).as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(strip_latex("\\frac12"), "\\frac{1}{2}");
        assert_eq!(strip_latex("3/4"), "\\frac{3}{4}");
        assert_eq!(strip_latex("x = 5"), "5");
        assert_eq!(strip_latex("90^\\circ"), "90");
        let t = Tolerance::for_kind(Latex);
        assert!(answers_match("0.5", "\\frac{1}{2}", Latex, t));
        assert!(answers_match("\\sqrt{2}", "\\sqrt2", Latex, t));
        assert!(!answers_match("\\sqrt{3}", "\\sqrt2", Latex, t));
    }

    #[test]
    fn gold_and_tolerance() {
        assert_eq!(canonical_gold("145.0", Number).as_deref(), Some("145"));
        assert_eq!(canonical_gold("(C)", Choice).as_deref(), Some("C"));
        assert!(judge("The answer is 145.0", "145", Number).correct);
        assert!(!judge("The answer is 146", "145", Number).correct);
        assert_eq!(judge("The answer is 146", "145", Number).extracted.as_deref(), Some("146"));
        assert_eq!(judge("no answer", "(B)", Choice), Judgement { extracted: None, correct: false });
        assert!(judge("The answer is (b)", "(B)", Choice).correct);
    }

    #[test]
    fn text_is_squad_normalised_exact_match() {
        assert_eq!(normalize_text("  The  Eiffel-Tower! "), "eiffeltower");
        assert_eq!(normalize_text("A cat, an owl and THE dog."), "cat owl and dog");
        assert_eq!(normalize_text("Théâtre"), "théâtre");
        assert!(judge("Paris is big. The answer is paris.", "Paris", Text).correct);
        assert!(judge("I think so.\nThe Nile", "the nile", Text).correct);
        assert!(!judge("The answer is Lyon", "Paris", Text).correct);
        assert_eq!(judge("The answer is ...", "Paris", Text).extracted, None);
        assert_eq!(canonical_gold(" . ", Text), None);
        assert_eq!(AnswerKind::parse("TEXT").unwrap(), Text);
    }
}
