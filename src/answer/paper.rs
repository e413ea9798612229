//! The `paper` protocol: the answer extraction and comparison of the paper's evaluators, rule for
//! rule. Sources (EIT-NLP/Distilling-CoT-Reasoning is the paper's repository):
//!
//! - **Math** (SVAMP, GSM8K, AQuA, MATH; cotlab's `arith` too): MAmmoTH's `answer_clean`, as the
//!   paper's repository ships it in `Evaluation/reasoning_eval/utils.py` (a copy of
//!   TIGER-AI-Lab/MAmmoTH `math_eval/utils.py`), with MAmmoTH's comparisons: exact string
//!   equality for SVAMP/GSM8K (`math_eval/run_open.py`, answers and golds both through
//!   `delete_extra_zero`), letter equality for AQuA (`math_eval/run_choice.py`), and for MATH
//!   `compare_answer_with_groundtruth` (string equality after `_strip_string`, then a numeric
//!   comparison). The paper's repository has no math driver of its own; its README and configs
//!   point at MAmmoTH's.
//! - **Commonsense** (CSQA, OBQA, StrategyQA): the paper's
//!   `Evaluation/reasoning_eval/run_reasoning.py`: `clean_generated_output`, then the *first*
//!   match of `[Tt]he answer is ([A-E]|True|False)`, compared with the label by `==`. No match is
//!   unparsed and counted wrong. The test files' labels are letters and the strings
//!   "True"/"False" (`strategyQA_test.json`), so "yes"/"no", "(B)" or "b" never score.
//!
//! Where the Python cannot be reproduced exactly it is said at the function.

use std::sync::LazyLock;

use regex::Regex;

use super::{AnswerKind, Evaluator, Judgement};

/// MAmmoTH's `direct_answer_trigger_for_fewshot` in `run_open.py` / `run_choice.py`:
/// `('####', 'The answer is')`, matched case-sensitively by `re.split`.
pub const MATH_TRIGGERS: [&str; 2] = ["####", "The answer is"];

static TRIGGER_SPLIT: LazyLock<Regex> = LazyLock::new(|| Regex::new("####|The answer is").unwrap());
/// `re.findall(r'-?\d+/?\.?\d*', pred)` (gsm8k, svamp).
static MAMMOTH_NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"-?\d+/?\.?\d*").unwrap());
/// `re.findall(r'\b(A|B|C|D|E|F|G|H|I|J)\b', pred.upper())` (aqua).
static MAMMOTH_LETTER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(A|B|C|D|E|F|G|H|I|J)\b").unwrap());
/// `re.findall(r'-?\d*\.?\d+', pred_str)` (MATH without trigger).
static MATH_LAST_NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"-?\d*\.?\d+").unwrap());
/// `re.match(r'[\d\.]+\s\D+$', pred_str)` (MATH: "5 apples" → "5").
static NUMBER_THEN_WORDS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[\d\.]+\s\D+$").unwrap());
/// `re.sub(r"\\frac\{([^{}]+)\}\{([^{}]+)\}", r"\1/\2", num)` in `number_it`.
static FRAC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\\frac\{([^{}]+)\}\{([^{}]+)\}").unwrap());
/// run_reasoning.py `extract_answer_label`.
static COMMONSENSE_LABEL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[Tt]he answer is ([A-E]|True|False)").unwrap());
/// The text answer after the commonsense trigger, to the end of its line.
static TEXT_ANSWER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[Tt]he answer is:?([^\n]*)").unwrap());
static TURN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<start_of_turn>.*?<end_of_turn>").unwrap());
static NEWLINES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\n+").unwrap());
static JUNK_WORDS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:\bedReader\b|\bmodel\b)+").unwrap());
/// run_reasoning.py `clean_generated_output`'s stop phrases, removed in this order.
const COMMONSENSE_STOP_PHRASES: [&str; 8] = ["USER:", "ASSISTANT:", "### Instruction:", "Response:", "<start_of_turn>", "[INST]", "<|eot_id|>", "####"];

/// Judge `output` against `gold` with the paper's rules for `evaluator` (see the module doc).
/// StrategyQA (`Bool`) is always a commonsense task.
pub fn judge(output: &str, gold: &str, kind: AnswerKind, evaluator: Evaluator) -> Judgement {
    if kind == AnswerKind::Text {
        return judge_text(output, gold);
    }
    if evaluator == Evaluator::Commonsense || kind == AnswerKind::Bool {
        let extracted = commonsense_label(output);
        // `generated_label == true_label`; golds are stored as "A".."E" / "True" / "False".
        let correct = extracted.as_deref() == Some(gold.trim());
        return Judgement { extracted, correct };
    }
    let pred = answer_clean(output, kind);
    let correct = match kind {
        // run_open.py: `answer == groundtruth`, the gold through `delete_extra_zero` (data_loader.py).
        AnswerKind::Number => !pred.is_empty() && pred == delete_extra_zero(gold.trim()),
        // run_choice.py: `answer == groundtruth`.
        AnswerKind::Choice => !pred.is_empty() && pred == gold.trim(),
        AnswerKind::Latex => !pred.is_empty() && compare_math(&pred, gold),
        AnswerKind::Bool | AnswerKind::Text => unreachable!("handled above"),
    };
    // AQuA: an answer that is no letter makes MAmmoTH ask the model again for "the closest
    // option" (a second generation, not part of scoring a text): here it is unparsed, i.e. wrong.
    let unparsed = pred.is_empty() || (kind == AnswerKind::Choice && !MAMMOTH_LETTER.is_match(&pred));
    Judgement { extracted: (!unparsed).then_some(pred), correct: correct && !unparsed }
}

/// Free text, which no evaluator of the paper has: the commonsense script's way of finding the
/// answer (`clean_generated_output`, then the *first* case-sensitive `[Tt]he answer is`), the rest
/// of that line compared with gold after SQuAD's `normalize_answer`. No trigger is unparsed.
fn judge_text(output: &str, gold: &str) -> Judgement {
    let cleaned = clean_generated_output(output);
    let extracted = TEXT_ANSWER.captures(&cleaned).map(|c| crate::answer::normalize_text(&c[1])).filter(|s| !s.is_empty());
    let correct = extracted.as_ref().is_some_and(|p| *p == crate::answer::normalize_text(gold));
    Judgement { extracted, correct }
}

/// run_reasoning.py: `extract_answer_label(clean_generated_output(text))`.
pub fn commonsense_label(text: &str) -> Option<String> {
    let cleaned = clean_generated_output(text);
    COMMONSENSE_LABEL.captures(&cleaned).map(|c| c[1].to_string())
}

/// run_reasoning.py `clean_generated_output`: drop Gemma turns, collapse newlines, drop the
/// words "model"/"edReader" and the stop phrases.
pub fn clean_generated_output(text: &str) -> String {
    let s = TURN.replace_all(text, "");
    let s = NEWLINES.replace_all(&s, "\n").trim().to_string();
    let mut s = JUNK_WORDS.replace_all(&s, "").trim().to_string();
    for stop in COMMONSENSE_STOP_PHRASES {
        s = s.replace(stop, "").trim().to_string();
    }
    s
}

/// MAmmoTH `answer_clean(dataset, ('####', 'The answer is'), pred)` for the math tasks, as in
/// the paper's `Evaluation/reasoning_eval/utils.py`; `""` when nothing was found.
///
/// 1. When a trigger occurs more than once (MAmmoTH's few-shot "ICL" case), keep only the text
///    before the first blank line.
/// 2. Split on both triggers (case-sensitive); the text after the last one is the answer
///    (`answer_flag`), else the whole text.
/// 3. Numbers: commas dropped, every `-?\d+/?\.?\d*` through `delete_extra_zero`; the first
///    after a trigger, else the last. AQuA: the letters A–J as words of the upper-cased text,
///    the first after a trigger, else the last. MATH: `extract_math_answer`.
pub fn answer_clean(text: &str, kind: AnswerKind) -> String {
    let mut pred = text.trim_matches('\n');
    if MATH_TRIGGERS.iter().any(|t| pred.matches(t).count() > 1) {
        pred = pred.split("\n\n").next().unwrap_or("");
    }
    let pieces: Vec<&str> = TRIGGER_SPLIT.split(pred).collect();
    let answer_flag = pieces.len() > 1;
    let pred = pieces.last().copied().unwrap_or("");
    let pred = pred.trim_matches('\n').trim_end_matches('.').trim_end_matches('/').trim_matches(' ');
    let candidates: Vec<String> = match kind {
        AnswerKind::Number => {
            let p = pred.replace(',', "");
            MAMMOTH_NUMBER.find_iter(&p).map(|m| delete_extra_zero(m.as_str())).collect()
        }
        AnswerKind::Choice => {
            let up = pred.to_uppercase();
            let letters: Vec<String> = MAMMOTH_LETTER.find_iter(&up).map(|m| m.as_str().to_string()).collect();
            if letters.is_empty() {
                vec![pred.trim().trim_matches('.').to_string()]
            } else {
                letters
            }
        }
        AnswerKind::Latex | AnswerKind::Bool | AnswerKind::Text => vec![extract_math_answer(pred, answer_flag)],
    };
    let pick = if answer_flag { candidates.first() } else { candidates.last() };
    pick.map(|p| p.trim_end_matches('.').trim_end_matches('/').to_string()).unwrap_or_default()
}

/// MAmmoTH `delete_extra_zero`: "145.0" → "145", "2.50" → "2.5", "3/4" → "0.75" (Python's
/// `eval`, here for `a/b` only); anything else that does not parse is returned as is.
/// Python prints floats below 1e-4 or from 1e16 in exponent form; both sides of every comparison
/// go through this one function, so that difference never changes a verdict.
pub fn delete_extra_zero(s: &str) -> String {
    let parsed = py_float(s).or_else(|| {
        let (a, b) = s.split_once('/')?;
        let (a, b) = (py_float(a)?, py_float(b)?);
        (b != 0.0).then(|| a / b)
    });
    match parsed {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e16 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
        None => s.to_string(),
    }
}

/// Python's `float(s)` for the strings the regexes produce ("12", "-3.", ".5", "1e5").
fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.chars().any(|c| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))) {
        return None;
    }
    t.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// MAmmoTH `find_box`: the text after the last "boxed"; its braces' content (to the end when
/// they never close), or up to the next `$`.
pub fn find_box(s: &str) -> String {
    let ans = s.rsplit("boxed").next().unwrap_or("");
    if let Some(body) = ans.strip_prefix('{') {
        let mut depth = 1;
        let mut out = String::new();
        for c in body.chars() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            out.push(c);
        }
        out
    } else {
        ans.split('$').next().unwrap_or("").trim().to_string()
    }
}

/// MAmmoTH `extract_math_answer(pred_str, answer_flag)` (the paper's `utils.py` version): the
/// last `\boxed{}`; else after a trigger the text after the last `=` ("5 apples" → "5"); else
/// the last number; then `_strip_string`.
pub fn extract_math_answer(pred: &str, answer_flag: bool) -> String {
    let raw = if pred.contains("boxed") {
        find_box(pred)
    } else if answer_flag {
        let p = pred.rsplit('=').next().unwrap_or("").trim();
        if NUMBER_THEN_WORDS.is_match(p) {
            p.split(' ').next().unwrap_or("").to_string()
        } else {
            p.to_string()
        }
    } else {
        MATH_LAST_NUMBER.find_iter(pred).last().map(|m| m.as_str().to_string()).unwrap_or_default()
    };
    strip_string(&raw)
}

/// MAmmoTH `_strip_string` (the Hendrycks MATH normalisation) as in the paper's `utils.py`:
/// linebreaks, `\!`, `\\`, `tfrac`/`dfrac`, `\left`/`\right`, degrees, dollars, units after
/// `\text{ `, percent signs, leading `.`, a short `k =` prefix, `\sqrt3`, spaces, `\frac12`,
/// and `a/b` → `\frac{a}{b}` for integers. (cotlab's lenient `strip_latex` goes further: it also
/// unwraps `\text{…}` and drops a trailing period.)
pub fn strip_string(s: &str) -> String {
    let mut s = super::strip_markup(s);
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.is_empty() {
        return s;
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    let parts: Vec<&str> = s.split('=').collect();
    if parts.len() == 2 && parts[0].len() <= 2 {
        s = parts[1].to_string();
    }
    s = super::fix_sqrt(&s).replace(' ', "");
    s = super::fix_fracs(&s);
    fix_a_slash_b(&s)
}

/// `_fix_a_slash_b`: "3/4" → `\frac{3}{4}` when both sides are integers written plainly.
fn fix_a_slash_b(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() == 2 {
        if let (Ok(a), Ok(b)) = (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
            if format!("{a}/{b}") == s {
                return format!("\\frac{{{a}}}{{{b}}}");
            }
        }
    }
    s.to_string()
}

/// MAmmoTH `compare_answer_with_groundtruth(answer, gold_str, gold_num)` for MATH: `\text{`
/// dropped from both, case-insensitive string equality of the normalised answers, else the
/// numbers: an integer gold must equal the answer rounded (Python's `round`, half to even), any
/// other gold must be within 4% of it (`within_eps`). The gold's number is MAmmoTH's
/// `number_it(gold)` (its MATH.json stores the pair).
pub fn compare_math(answer: &str, gold: &str) -> bool {
    let untext = |s: &str| if s.contains("\\text{") { s.replace("\\text{", "").trim_end_matches('}').to_string() } else { s.to_string() };
    let gold = strip_string(gold.trim());
    let (a, g) = (untext(answer), untext(&gold));
    if ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"].contains(&g.to_lowercase().as_str()) {
        return a.to_lowercase().contains(&g.to_lowercase());
    }
    if a.to_lowercase() == g.to_lowercase() {
        return true;
    }
    match (number_it(&g), number_it(&a)) {
        (Some(Num::Int(gt)), Some(p)) => (p.value().round_ties_even() as i64) == gt,
        (Some(Num::Float(gt)), Some(p)) => {
            let (p, eps) = (p.value(), gt.abs() * 0.04);
            p >= gt - eps && p <= gt + eps
        }
        _ => false,
    }
}

/// A value from MAmmoTH's `floatify`: integral floats become ints.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn value(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }
}

/// MAmmoTH `number_it`: `\frac{a}{b}` → `a/b`, commas dropped, then `float`, or Python's `eval`
/// (reproduced for plain numbers and `a/b` only; other expressions are not numbers here).
fn number_it(s: &str) -> Option<Num> {
    let s = if s.contains("frac") { FRAC.replace_all(s, "$1/$2").to_string() } else { s.replace(',', "") };
    let x = py_float(&s).or_else(|| {
        let (a, b) = s.split_once('/')?;
        let (a, b) = (py_float(a)?, py_float(b)?);
        (b != 0.0).then(|| a / b)
    })?;
    if !x.is_finite() {
        return None;
    }
    Some(if x.fract() == 0.0 && x.abs() < 9.2e18 { Num::Int(x as i64) } else { Num::Float(x) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use AnswerKind::*;
    use Evaluator::*;

    fn ok(out: &str, gold: &str, kind: AnswerKind, ev: Evaluator) -> bool {
        judge(out, gold, kind, ev).correct
    }

    #[test]
    fn math_numbers_follow_answer_clean() {
        assert_eq!(answer_clean("290 / 2 = 145. The answer is 145.", Number), "145");
        assert_eq!(answer_clean("The answer is 1,234.50 dollars", Number), "1234.5");
        // No trigger: the last number.
        assert_eq!(answer_clean("so 3 + 4 = 7", Number), "7");
        // After the trigger: the first number.
        assert_eq!(answer_clean("The answer is 3. Check: 1 + 2 = 3 and 9", Number), "3");
        assert_eq!(answer_clean("#### 42", Number), "42");
        // The trigger is case-sensitive in MAmmoTH's re.split: lower case is no trigger.
        assert_eq!(answer_clean("the answer is 5, not 6", Number), "6");
        // Two triggers: only the text before the first blank line counts.
        let icl = "The answer is 5.\n\nQuestion: more? The answer is 9.";
        assert_eq!(answer_clean(icl, Number), "5");
        // One trigger: the blank line is kept and the last trigger wins.
        assert_eq!(answer_clean("5 apples.\n\nThe answer is 9.", Number), "9");
        assert_eq!(answer_clean("The answer is 3/4", Number), "0.75");
        assert_eq!(answer_clean("no digits here", Number), "");
    }

    #[test]
    fn math_numbers_compare_as_strings() {
        assert!(ok("The answer is 145.0", "145", Number, Math));
        assert!(ok("The answer is 2.50", "2.5", Number, Math));
        assert!(!ok("The answer is 146", "145", Number, Math));
        // String comparison: no tolerance.
        assert!(!ok("The answer is 0.3333", "0.333333", Number, Math));
        let j = judge("I don't know", "3", Number, Math);
        assert_eq!((j.extracted, j.correct), (None, false));
    }

    #[test]
    fn aqua_letters() {
        assert!(ok("so (B) 25. The answer is (B)", "B", Choice, Math));
        // Upper-cased before matching, so a lower-case letter counts.
        assert!(ok("The answer is b", "B", Choice, Math));
        // No trigger: the last letter-word.
        assert!(ok("A is wrong, C is right", "C", Choice, Math));
        // No letter at all: MAmmoTH would ask the model again; here unparsed.
        assert_eq!(judge("The answer is 25 apples", "B", Choice, Math).extracted, None);
    }

    #[test]
    fn commonsense_first_exact_trigger_only() {
        assert!(ok("Banks guard money. The answer is A: bank", "A", Choice, Commonsense));
        // First match wins, not the last.
        assert!(!ok("The answer is B. Wait, the answer is A", "A", Choice, Commonsense));
        assert!(ok("the answer is True", "True", Bool, Commonsense));
        // No trigger, a parenthesised or lower-case letter, yes/no: unparsed and wrong.
        for out in ["A", "The answer is (A)", "The answer is a", "Answer: A"] {
            let j = judge(out, "A", Choice, Commonsense);
            assert_eq!((j.extracted.as_deref(), j.correct), (None, false), "{out}");
        }
        assert_eq!(judge("The answer is yes", "True", Bool, Commonsense).extracted, None);
        assert!(!ok("The answer is no", "False", Bool, Commonsense));
        // StrategyQA is a commonsense task whatever the evaluator says.
        assert!(ok("So, the answer is False.", "False", Bool, Math));
        // The cleaning step: stop phrases and newlines go before matching.
        assert_eq!(clean_generated_output("a\n\n\nb ### Instruction: c"), "a\nb  c");
        assert!(ok("The answer is ####C", "C", Choice, Commonsense));
    }

    #[test]
    fn math_latex() {
        assert!(ok("thus $\\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", Latex, Math));
        assert!(ok("The answer is x = 5", "5", Latex, Math));
        assert!(ok("The answer is 5 apples", "5", Latex, Math));
        assert!(ok("The answer is 3/4", "\\frac{3}{4}", Latex, Math));
        // Numbers: an integer gold equals the rounded answer; other golds within 4%.
        assert!(ok("The answer is 4.6", "5", Latex, Math));
        assert!(ok("The answer is 0.51", "\\frac{1}{2}", Latex, Math));
        assert!(!ok("The answer is 0.6", "\\frac{1}{2}", Latex, Math));
        assert!(!ok("The answer is \\sqrt{3}", "\\sqrt{2}", Latex, Math));
        assert_eq!(strip_string("\\frac12"), "\\frac{1}{2}");
        assert_eq!(strip_string("90^\\circ"), "90");
        // Unclosed braces: everything to the end.
        assert_eq!(find_box("\\boxed{\\frac{1}{2}"), "\\frac{1}{2}");
        // No trigger and no box: the last number.
        assert_eq!(answer_clean("area 12, perimeter 14", Latex), "14");
        assert!(ok("round half to even: The answer is 2.5", "2", Latex, Math));
    }

    #[test]
    fn delete_extra_zero_as_python() {
        assert_eq!(delete_extra_zero("145.0"), "145");
        assert_eq!(delete_extra_zero("145."), "145");
        assert_eq!(delete_extra_zero("0.50"), "0.5");
        assert_eq!(delete_extra_zero("-3"), "-3");
        assert_eq!(delete_extra_zero("1/0"), "1/0");
        assert_eq!(delete_extra_zero("abc"), "abc");
    }
}
