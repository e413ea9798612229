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

/// The placeholders a user's `system`/`user` template may name.
pub const PLACEHOLDERS: [&str; 6] = ["question", "choices", "answer", "level_instruction", "format_instruction", "exemplar"];

/// What a user's template is filled with for one question.
#[derive(Clone, Debug, Default)]
pub struct Fields<'a> {
    pub question: &'a str,
    /// `A. …` lines, one per choice (empty when the task has none).
    pub choices: String,
    /// The gold answer (a template naming it asks for a rationalisation).
    pub answer: &'a str,
    pub level_instruction: &'a str,
    pub format_instruction: &'a str,
    /// The worked example (`shots: 1`) as the paper's prompt shows it; empty without one.
    pub exemplar: String,
}

impl<'a> Fields<'a> {
    pub fn new(question: &'a str, choices: &[String], answer: &'a str, level: u8, format: Format, exemplar: Option<&Exemplar>) -> Fields<'a> {
        Fields {
            question: question.trim(),
            choices: choices.iter().enumerate().map(|(i, c)| format!("{}. {c}", (b'A' + (i % 26) as u8) as char)).collect::<Vec<_>>().join("\n"),
            answer,
            level_instruction: level_instruction(level),
            format_instruction: format_instruction(format),
            exemplar: exemplar.map(|x| format!("Example question:\n{}\n\nExample solution:\n{}", x.question.trim(), x.rationale.trim())).unwrap_or_default(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "question" => self.question,
            "choices" => &self.choices,
            "answer" => self.answer,
            "level_instruction" => self.level_instruction,
            "format_instruction" => self.format_instruction,
            "exemplar" => &self.exemplar,
            _ => return None,
        })
    }
}

/// `template` with each `{name}` replaced by its field, `{{` and `}}` written as braces (Python's
/// `str.format` rules); an unknown name or an unpaired brace is an error naming its column and
/// the placeholders there are.
pub fn render(template: &str, fields: &Fields) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let column = || template[..i].chars().count() + 1;
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &template[i + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!("'{{' at column {} is never closed: write '{{{{' for a literal brace", column()));
                };
                let name = &rest[..end];
                let value = fields.get(name.trim()).ok_or_else(|| {
                    format!(
                        "unknown placeholder '{{{name}}}' at column {}: the placeholders are {}",
                        column(),
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    )
                })?;
                out.push_str(value);
                for _ in 0..name.chars().count() + 1 {
                    chars.next();
                }
            }
            '}' => return Err(format!("a lone '}}' at column {}: write '}}}}' for a literal brace", column())),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A user's own prompts (`system`, `user` templates; the paper's where one is not given) for one
/// question, after checking both templates render.
pub fn build_custom(system: Option<&str>, user: Option<&str>, fields: &Fields, default: (String, String)) -> Result<(String, String), String> {
    let system = match system {
        Some(t) => render(t, fields).map_err(|e| format!("system: {e}"))?,
        None => default.0,
    };
    let user = match user {
        Some(t) => render(t, fields).map_err(|e| format!("user: {e}"))?,
        None => default.1,
    };
    Ok((system, user))
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

    #[test]
    fn a_template_renders_its_placeholders_and_refuses_unknown_ones() {
        let x = Exemplar { source: "f#1".into(), question: "Ex?".into(), rationale: "It is 4.".into() };
        let f = Fields::new(" What is 2+2? ", &["3".into(), "4".into()], "B", 2, Format::Sym, Some(&x));
        let t = "{level_instruction}|{format_instruction}|{question}|{choices}|{answer}|{exemplar}|{{literal}}";
        let r = render(t, &f).unwrap();
        assert_eq!(
            r,
            format!(
                "{}|{}|What is 2+2?|A. 3\nB. 4|B|Example question:\nEx?\n\nExample solution:\nIt is 4.|{{literal}}",
                level_instruction(2),
                format_instruction(Format::Sym)
            )
        );
        let e = render("Solve {question} in {steps} steps", &f).unwrap_err();
        assert!(e.contains("'{steps}'") && e.contains("column 21") && e.contains("{level_instruction}"), "{e}");
        assert!(render("open { brace", &f).unwrap_err().contains("never closed"));
        assert!(render("a } alone", &f).unwrap_err().contains("lone"));
        // Only the template given replaces the paper's.
        let (s, u) = build_custom(None, Some("Q: {question}"), &f, ("paper system".into(), "paper user".into())).unwrap();
        assert_eq!((s.as_str(), u.as_str()), ("paper system", "Q: What is 2+2?"));
        assert!(build_custom(Some("{nope}"), None, &f, Default::default()).unwrap_err().starts_with("system: "));
    }
}
