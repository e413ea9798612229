//! Reasoning traces written inline: `<think>…</think>` before the answer, as DeepSeek-R1, QwQ,
//! Qwen3 and the R1-Distill students write them (and as servers without a reasoning parser
//! pass them on).
//!
//! Invariants:
//! - The answer is what follows the first `</think>`; the trace is what precedes it, after an
//!   opening `<think>` when there is one (R1-Distill templates put the opening tag in the prompt,
//!   so the generation starts inside the trace and only the closing tag appears).
//! - A text with an opening tag and no closing one was cut inside its trace: it has no answer
//!   (`closed` is false), so nothing is extracted from thinking that never finished.
//! - A text with neither tag is all answer, unchanged.

/// A text split into its reasoning trace and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Think<'a> {
    /// The trace without its tags and surrounding whitespace; `None` when the text has none.
    pub reasoning: Option<&'a str>,
    /// What the model answered after its trace (the whole text when there is no trace).
    pub answer: &'a str,
    /// False when a trace was opened and never closed: a generation cut while thinking.
    pub closed: bool,
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Split `text` into trace and answer (see the module head).
pub fn split_think(text: &str) -> Think<'_> {
    let opened = text.trim_start().strip_prefix(OPEN);
    match text.find(CLOSE) {
        Some(end) => {
            let before = &text[..end];
            let trace = before.trim_start().strip_prefix(OPEN).unwrap_or(before);
            Think { reasoning: Some(trace.trim()), answer: text[end + CLOSE.len()..].trim_start(), closed: true }
        }
        None => match opened {
            Some(trace) => Think { reasoning: Some(trace.trim()), answer: "", closed: false },
            None => Think { reasoning: None, answer: text, closed: true },
        },
    }
}

/// `reasoning` and `answer` in the layout Qwen3 and the R1-Distill chat templates train on:
/// `<think>\n{reasoning}\n</think>\n\n{answer}`.
pub fn join_think(reasoning: &str, answer: &str) -> String {
    format!("{OPEN}\n{}\n{CLOSE}\n\n{}", reasoning.trim(), answer.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_what_follows_the_closing_tag() {
        let t = split_think("<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5");
        assert_eq!(t, Think { reasoning: Some("2 + 3 = 5"), answer: "The answer is 5", closed: true });
        // Only the closing tag: the template opened the trace in the prompt.
        let t = split_think("First, 2 + 3 = 5.\n</think>\nThe answer is 5");
        assert_eq!((t.reasoning, t.answer), (Some("First, 2 + 3 = 5."), "The answer is 5"));
        // An empty trace (Qwen3 with thinking off) is still a trace.
        assert_eq!(split_think("<think>\n\n</think>\n\nThe answer is 5").reasoning, Some(""));
    }

    #[test]
    fn a_trace_never_closed_has_no_answer() {
        let t = split_think("  <think>\nLet me count: 1, 2, 3, the answer is 4");
        assert!(!t.closed);
        assert_eq!((t.reasoning, t.answer), (Some("Let me count: 1, 2, 3, the answer is 4"), ""));
    }

    #[test]
    fn a_text_without_tags_is_all_answer() {
        let text = "Step 1: 2 + 3 = 5. The answer is 5";
        assert_eq!(split_think(text), Think { reasoning: None, answer: text, closed: true });
    }

    #[test]
    fn join_writes_the_layout_split_reads() {
        let joined = join_think(" 2 + 3 = 5 ", "The answer is 5");
        assert_eq!(joined, "<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5");
        assert_eq!(split_think(&joined), Think { reasoning: Some("2 + 3 = 5"), answer: "The answer is 5", closed: true });
    }

    #[test]
    fn both_protocols_read_only_the_answer_after_the_trace() {
        use crate::answer::{AnswerKind, Evaluator, Protocol};
        for p in [Protocol::Paper, Protocol::Lenient] {
            // The trace's own "answer is 3" is not the answer.
            let j = p.judge("<think>\nMaybe the answer is 3. No: 2 + 3 = 5.\n</think>\n\nThe answer is 5", "5", AnswerKind::Number, Evaluator::Math);
            assert!(j.correct, "{p}: {j:?}");
            let cut = p.judge("<think>\nThe answer is 5, let me check that again", "5", AnswerKind::Number, Evaluator::Math);
            assert_eq!((cut.extracted, cut.correct), (None, false), "{p}: cut while thinking is unparsed");
            assert!(p.judge("The answer is 5", "5", AnswerKind::Number, Evaluator::Math).correct, "{p}: no trace, unchanged");
        }
    }
}
