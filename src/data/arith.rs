//! `arith`: arithmetic word problems in the style of SVAMP, generated from a seed, so every
//! user (and every test) has a real task with gold answers and no download. One to four
//! operations over small quantities, often with a distractor quantity, integer answers.

use super::{AnswerKind, Example};
use crate::cot::Format;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "subtract",
            Op::Mul => "multiply",
            Op::Div => "divide",
        }
    }
}

/// One event of the story and the calculation it stands for.
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub operand: i64,
    pub before: i64,
    pub after: i64,
    /// The sentence of the problem that states this step.
    pub sentence: String,
    /// Why this operation, in words ("buying more increases the number").
    pub reason: &'static str,
    /// A short phrase for the event ("buys 5 more").
    pub event: String,
}

#[derive(Clone, Debug)]
pub struct ArithProblem {
    pub id: String,
    pub name: &'static str,
    pub pronoun: &'static str,
    pub item: &'static str,
    pub start: i64,
    pub steps: Vec<Step>,
    /// A quantity of another item that does not matter for the question.
    pub distractor: Option<(i64, &'static str)>,
    pub body: String,
    pub question: String,
    pub answer: i64,
}

impl ArithProblem {
    /// The rule teacher's rationale for this problem at granularity `level` (clamped to
    /// 1..=6) in `format`. Its levels follow what the paper's released data shows: 1 = the one
    /// key operation, 2–3 = main steps with their calculations, 4–5 = why each operation plus
    /// an explicit goal, 6 = every sub-step plus a verification. Formats other than
    /// equation-only and answer-only are written as plain.
    pub fn rationale(&self, level: u8, format: Format) -> String {
        let p = self;
        let ans = p.answer;
        let end = format!("The answer is {ans}");
        match format {
            Format::AnswerOnly => return ans.to_string(),
            Format::EquationOnly => {
                let body = if level <= 1 {
                    format!("{} = {ans}.", expression(p))
                } else {
                    p.steps.iter().map(|s| format!("{}.", eq(s.before, s.op, s.operand, s.after))).collect::<Vec<_>>().join(" ")
                };
                return format!("{body} {end}");
            }
            _ => {}
        }
        let (name, pron, item) = (p.name, p.pronoun, p.item);
        let mut out: Vec<String> = Vec::new();
        match level.clamp(1, 6) {
            1 => {
                let key = if p.steps.len() == 1 {
                    format!("{} {} and {}", cap(p.steps[0].op.verb()), p.start, p.steps[0].operand)
                } else {
                    "Apply each change in order".to_string()
                };
                out.push(format!("{key}: {} = {ans}.", expression(p)));
            }
            2 => {
                for s in &p.steps {
                    out.push(format!("{}: {}.", cap(s.op.verb()), eq(s.before, s.op, s.operand, s.after)));
                }
            }
            3 => {
                out.push(format!("{name} starts with {} {item}.", p.start));
                for s in &p.steps {
                    out.push(format!("{} {}, so {}.", cap(pron), s.event, eq(s.before, s.op, s.operand, s.after)));
                }
            }
            4 => {
                out.push(format!("We need to find how many {item} {name} has at the end."));
                out.push(format!("{name} starts with {} {item}.", p.start));
                for s in &p.steps {
                    out.push(format!("{} {}; {}, so we {}: {}.", cap(pron), s.event, s.reason, s.op.verb(), eq(s.before, s.op, s.operand, s.after)));
                }
                if let Some((d, other)) = p.distractor {
                    out.push(format!("The {d} {other} are not {item}, so we ignore them."));
                }
            }
            level => {
                // 5 and 6: a goal, then numbered steps with reasons; 6 adds sub-steps and a check.
                out.push(format!("Goal: find how many {item} {name} has at the end."));
                let mut k = 1;
                out.push(format!("{k}. Identify the starting amount: {name} has {} {item}.", p.start));
                for s in &p.steps {
                    k += 1;
                    let mut line = format!(
                        "{k}. {} {}. Since {}, we {}: {}.",
                        cap(pron),
                        s.event,
                        s.reason,
                        apply(s.op, s.operand),
                        eq(s.before, s.op, s.operand, s.after)
                    );
                    if level == 6 {
                        line.push_str(&format!(" Before this step {pron} had {}; we {}; now {pron} has {} {item}.", s.before, apply(s.op, s.operand), s.after));
                    }
                    out.push(line);
                }
                if let Some((d, other)) = p.distractor {
                    k += 1;
                    out.push(format!("{k}. The {d} {other} are a different item, so they do not change the number of {item}."));
                }
                if level == 6 {
                    k += 1;
                    let mut back = ans;
                    let mut checks = Vec::new();
                    for s in p.steps.iter().rev() {
                        let (inv, prev) = match s.op {
                            Op::Add => (Op::Sub, back - s.operand),
                            Op::Sub => (Op::Add, back + s.operand),
                            Op::Mul => (Op::Div, back / s.operand),
                            Op::Div => (Op::Mul, back * s.operand),
                        };
                        checks.push(eq(back, inv, s.operand, prev));
                        back = prev;
                    }
                    out.push(format!(
                        "{k}. Verification: undo each step in reverse order: {}. We are back at the starting amount {}, so the result is correct.",
                        checks.join(", "),
                        back
                    ));
                }
                return format!("{}\n{end}", out.join("\n"));
            }
        }
        format!("{} {end}", out.join(" "))
    }

    pub fn example(&self) -> Example {
        Example {
            id: self.id.clone(),
            question: format!("{} {}", self.body, self.question),
            choices: vec![],
            answer: self.answer.to_string(),
            kind: AnswerKind::Number,
        }
    }
}

const NAMES: [(&str, &str); 12] = [
    ("Maria", "she"),
    ("Tom", "he"),
    ("Aisha", "she"),
    ("Ken", "he"),
    ("Lucia", "she"),
    ("Omar", "he"),
    ("Nina", "she"),
    ("Raj", "he"),
    ("Sofia", "she"),
    ("Ben", "he"),
    ("Mei", "she"),
    ("Jonas", "he"),
];
const ITEMS: [&str; 12] = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards", "balloons", "candies", "coins"];

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Generate `n` problems. Deterministic for a seed: problem `i` depends only on (seed, i), so
/// `n: 20` is a prefix of `n: 500`.
pub fn generate(n: usize, seed: u64) -> Vec<ArithProblem> {
    (0..n).map(|i| one(seed, i)).collect()
}

fn one(seed: u64, i: usize) -> ArithProblem {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    let (name, pronoun) = *rng.pick(&NAMES);
    let item = *rng.pick(&ITEMS);
    let n_ops = 1 + rng.below(4);
    let start = rng.range(5, 60);
    let mut cur = start;
    let mut steps = Vec::with_capacity(n_ops);
    let p = cap(pronoun);
    for _ in 0..n_ops {
        // Pick an operation that keeps the answer a small positive integer.
        let mut choices = vec![Op::Add, Op::Add];
        if cur > 3 {
            choices.push(Op::Sub);
            choices.push(Op::Sub);
        }
        if cur <= 60 {
            choices.push(Op::Mul);
        }
        if (2..=5).any(|k| cur % k == 0 && cur / k >= 2) {
            choices.push(Op::Div);
        }
        let op = *rng.pick(&choices);
        let (operand, sentence, event, reason) = match op {
            Op::Add => {
                let x = rng.range(2, 40);
                let (s, e) = match rng.below(3) {
                    0 => (format!("{p} buys {x} more {item}."), format!("buys {x} more")),
                    1 => (format!("{p} finds {x} more {item}."), format!("finds {x} more")),
                    _ => (format!("A friend gives {name} {x} {item}."), format!("gets {x} from a friend")),
                };
                (x, s, e, "getting more increases the number")
            }
            Op::Sub => {
                let x = rng.range(1, cur - 1);
                let (s, e) = match rng.below(3) {
                    0 => (format!("{p} gives away {x} {item}."), format!("gives away {x}")),
                    1 => (format!("{p} loses {x} {item}."), format!("loses {x}")),
                    _ => (format!("{p} uses {x} of the {item}."), format!("uses {x}")),
                };
                (x, s, e, "giving away or using some decreases the number")
            }
            Op::Mul => {
                let k = rng.range(2, 4);
                let word = ["", "", "doubles", "triples", "quadruples"][k as usize];
                (k, format!("Then {pronoun} {word} the number of {item}."), format!("{word} them"), "making several times as many multiplies the number")
            }
            Op::Div => {
                let ks: Vec<i64> = (2..=5).filter(|k| cur % k == 0 && cur / k >= 2).collect();
                let k = *rng.pick(&ks);
                (
                    k,
                    format!("{p} splits the {item} equally into {k} bags and keeps one bag."),
                    format!("keeps one of {k} equal bags"),
                    "sharing equally into groups divides the number",
                )
            }
        };
        let after = match op {
            Op::Add => cur + operand,
            Op::Sub => cur - operand,
            Op::Mul => cur * operand,
            Op::Div => cur / operand,
        };
        steps.push(Step { op, operand, before: cur, after, sentence, reason, event });
        cur = after;
    }
    let distractor = rng.chance(0.6).then(|| {
        let other = loop {
            let o = *rng.pick(&ITEMS);
            if o != item {
                break o;
            }
        };
        (rng.range(2, 90), other)
    });
    let mut sentences = vec![format!("{name} has {start} {item}.")];
    for s in &steps {
        sentences.push(s.sentence.clone());
    }
    if let Some((d, other)) = distractor {
        // The distractor goes anywhere after the opening sentence.
        let at = 1 + rng.below(sentences.len());
        sentences.insert(at, format!("{p} also has {d} {other}."));
    }
    ArithProblem {
        id: format!("arith-{seed}-{i}"),
        name,
        pronoun,
        item,
        start,
        body: sentences.join(" "),
        question: format!("How many {item} does {name} have now?"),
        answer: cur,
        steps,
        distractor,
    }
}

/// The whole computation as one expression: "(12 + 5) * 3".
fn expression(p: &ArithProblem) -> String {
    let mut e = p.start.to_string();
    for (i, s) in p.steps.iter().enumerate() {
        let needs_paren = i > 0 && matches!(s.op, Op::Mul | Op::Div) && matches!(p.steps[i - 1].op, Op::Add | Op::Sub);
        if needs_paren {
            e = format!("({e})");
        }
        e = format!("{e} {} {}", s.op.symbol(), s.operand);
    }
    e
}

/// "add 5", "multiply by 3".
fn apply(op: Op, operand: i64) -> String {
    match op {
        Op::Add | Op::Sub => format!("{} {operand}", op.verb()),
        Op::Mul | Op::Div => format!("{} by {operand}", op.verb()),
    }
}

fn eq(before: i64, op: Op, operand: i64, after: i64) -> String {
    format!("{before} {} {operand} = {after}", op.symbol())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::judge;

    #[test]
    fn every_level_and_format_ends_in_the_gold_answer() {
        for p in generate(40, 3) {
            for level in 1..=6 {
                for f in [Format::Plain, Format::EquationOnly, Format::AnswerOnly] {
                    let t = p.rationale(level, f);
                    assert!(judge(&t, &p.answer.to_string(), AnswerKind::Number).correct, "{t}");
                }
            }
            assert!(p.rationale(6, Format::Plain).contains("Verification"));
        }
    }

    #[test]
    fn deterministic_prefix_and_valid_answers() {
        let a = generate(50, 7);
        let b = generate(10, 7);
        assert_eq!(a[..10].iter().map(|p| p.body.clone()).collect::<Vec<_>>(), b.iter().map(|p| p.body.clone()).collect::<Vec<_>>());
        assert_ne!(generate(5, 8)[0].body, a[0].body);
        for p in &a {
            let mut cur = p.start;
            for s in &p.steps {
                cur = match s.op {
                    Op::Add => cur + s.operand,
                    Op::Sub => cur - s.operand,
                    Op::Mul => cur * s.operand,
                    Op::Div => {
                        assert_eq!(cur % s.operand, 0);
                        cur / s.operand
                    }
                };
                assert!(cur > 0);
            }
            assert_eq!(cur, p.answer);
            assert!((1..=4).contains(&p.steps.len()));
        }
    }
}
