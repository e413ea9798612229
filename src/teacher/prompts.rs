//! Prompt templates that ask a teacher for a rationale at a granularity level and in a format.
//! The wording is ours; the levels follow what the paper's released data shows: 1 = the one key
//! operation, 2–3 = main steps with their calculations, 4–5 = why each operation and an explicit
//! goal, 6 = every sub-step plus a verification.

use crate::cot::Format;

/// Bumped whenever the wording changes: it is part of every rationale's provenance and of the
/// cache key, so old cached answers are never served for new prompts.
pub const TEMPLATE_VERSION: &str = "cotlab-granularity-v1";

pub fn level_instruction(level: u8) -> &'static str {
    match level {
        1 => "Give only the single key operation that solves the problem: one short sentence with its calculation.",
        2 => "Give only the main steps, each with its calculation, as briefly as possible.",
        3 => "Explain the main steps in a few sentences, showing the calculation of each.",
        4 => "State what must be found, then explain each step: which operation you use, why, and its calculation.",
        5 => "State the goal explicitly, then go through every step in a numbered list, explaining why each operation is needed and showing each calculation.",
        _ => "State the goal, then break the solution into every sub-step in a numbered list, explaining each operation and each intermediate result in detail, and finish with a verification step that checks the answer (for example by reversing the operations).",
    }
}

pub fn format_instruction(format: Format) -> &'static str {
    match format {
        Format::Plain => "",
        Format::Bsm => "Write the reasoning as a chain of sub-questions: before each step, ask the sub-question it answers, then answer it.",
        Format::Rar => "First rephrase and expand the question in your own words, then respond to it.",
        Format::Sym => "Write the reasoning symbolically: define variables for the quantities and solve with equations.",
        Format::EquationOnly => "Write only the equations, without words.",
        Format::AnswerOnly => "Give no reasoning at all.",
    }
}

/// A worked example shown before the question (`shots: 1`): a question and its rationale at the
/// asked level and format.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// Where it comes from: `<release file>#<record id>`.
    pub source: String,
    pub question: String,
    pub rationale: String,
}

/// (system, user) messages for one question.
pub fn build(question: &str, level: u8, format: Format, gold: Option<&str>) -> (String, String) {
    build_with(question, level, format, gold, None)
}

/// (system, user) messages for one question, after a worked example when `exemplar` is given.
/// Without one the messages are exactly `build`'s (same cache keys as before `shots` existed).
pub fn build_with(question: &str, level: u8, format: Format, gold: Option<&str>, exemplar: Option<&Exemplar>) -> (String, String) {
    let mut system = String::from("You are a careful teacher who writes step-by-step solutions for students. ");
    if format != Format::AnswerOnly {
        system.push_str(level_instruction(level));
        system.push(' ');
    }
    let f = format_instruction(format);
    if !f.is_empty() {
        system.push_str(f);
        system.push(' ');
    }
    system.push_str("End with the sentence \"The answer is X\", where X is the final answer (a number, a choice letter, or True/False).");
    let mut user = match exemplar {
        Some(x) => format!(
            "Here is an example of a solution at the required level of detail and format.\n\nExample question:\n{}\n\nExample solution:\n{}\n\nNow solve the following question in the same way.\n\n{}",
            x.question.trim(),
            x.rationale.trim(),
            question.trim()
        ),
        None => question.trim().to_string(),
    };
    if let Some(g) = gold {
        user.push_str(&format!("\n\n(The correct answer is {g}. Explain how to reach it.)"));
    }
    (system, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_differ_by_level_and_format() {
        let (s1, _) = build("Q?", 1, Format::Plain, None);
        let (s6, _) = build("Q?", 6, Format::Plain, None);
        assert!(s6.len() > s1.len() && s6.contains("verification"));
        let (b, _) = build("Q?", 3, Format::Bsm, None);
        assert!(b.contains("sub-question"));
        let (_, u) = build("Q?", 3, Format::Plain, Some("7"));
        assert!(u.contains("The correct answer is 7"));
        let (a, _) = build("Q?", 3, Format::AnswerOnly, None);
        assert!(!a.contains("main steps"));
        // A one-shot prompt: the exemplar before the question, the system message unchanged.
        let x = Exemplar { source: "f.json#1".into(), question: "Ex?".into(), rationale: "2 + 2 = 4. The answer is 4".into() };
        let (s3, u) = build_with("Q?", 3, Format::Plain, None, Some(&x));
        assert_eq!(s3, build("Q?", 3, Format::Plain, None).0);
        let (ex, q) = (u.find("Ex?").unwrap(), u.find("Q?").unwrap());
        assert!(ex < u.find("The answer is 4").unwrap() && u.find("The answer is 4").unwrap() < q, "{u}");
    }
}
