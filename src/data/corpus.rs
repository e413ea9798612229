//! Corpora as values: who wrote a rationale ([`ReleaseTeacher`]), the rationale with its
//! [`Origin`] (dataset, teacher, level, format, file, row), and the [`Corpus`] that holds them.
//! Corpora concatenate, sample, weight (mix) and order (curriculum); every rationale keeps its
//! origin, so a mixture can be taken apart again in a frame, and the result records how it was
//! made ([`Recipe`]), which becomes part of a training run's identity. All randomness is seeded.
//! A rationale is about a [`Subject`]: a task of the release, or a user's file or frame
//! ([`UserData`]: its name, answer kind and content hash; `formats` reads those).
//! This file imports nothing else of `data` but the `Task` at its root: the catalog makes corpora,
//! it is not needed to hold one.

use std::sync::Arc;

use super::{AnswerKind, Task};
use crate::cot::Format;
use crate::error::Result;
use crate::rng::Rng;
use crate::usage;

crate::choices! {
    /// Who wrote a release rationale (a name in the catalog; `teacher::Teacher` is a live teacher
    /// that writes new ones).
    pub enum ReleaseTeacher("teacher") {
        /// GPT-4o; the release's files say "ChatGPT"/"chatgpt".
        Gpt4o = "gpt-4o" | "gpt4o" | "chatgpt" | "gpt",
        /// Gemini-1.5-Flash.
        Gemini = "gemini" | "gemini-1.5-flash" | "gemini-flash",
        /// LLaMA-3-70B; the files say "llama".
        Llama70b = "llama-3-70b" | "llama3-70b" | "llama" | "llama-70b" | "llama3",
        /// The datasets' own human-written rationales.
        Human = "human",
        /// cotlab's rule-based teacher (the embedded `arith` set only).
        Rule = "rule",
    }
}

/// What a rationale is about: a task of the release, or a user's data. `name` and `kind` say
/// which dataset and answer rule, for both.
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    Task(Task),
    User(Arc<UserData>),
}

impl From<Task> for Subject {
    fn from(t: Task) -> Subject {
        Subject::Task(t)
    }
}

impl Subject {
    /// The task's name (`svamp`) or the name the user gave their data.
    pub fn name(&self) -> &str {
        match self {
            Subject::Task(t) => t.name(),
            Subject::User(u) => &u.name,
        }
    }

    pub fn kind(&self) -> AnswerKind {
        match self {
            Subject::Task(t) => t.kind(),
            Subject::User(u) => u.kind,
        }
    }

    /// The release task, None for user data.
    pub fn task(&self) -> Option<Task> {
        match self {
            Subject::Task(t) => Some(*t),
            Subject::User(_) => None,
        }
    }
}

/// A user's file or frame read as a corpus, and what reading it found.
#[derive(Clone, Debug, PartialEq)]
pub struct UserData {
    /// The `name` option, else the file's stem (`frame` for a frame).
    pub name: String,
    pub kind: AnswerKind,
    /// The file as given, or "frame".
    pub path: String,
    /// SHA-256 of the file's bytes, or of a frame's cells.
    pub sha256: String,
    /// The format read (`alpaca`, …); `sniffed` when `auto` chose it.
    pub format: String,
    pub sniffed: bool,
    /// Records with no answer: no answer column and none extracted from the rationale.
    pub no_answer: usize,
    /// Records whose system prompt or earlier turns were left out (a rationale is one question → one answer).
    pub context_dropped: usize,
}

impl UserData {
    /// One line for the user: what was read, how, and how many records lack an answer.
    pub fn summary(&self, n: usize) -> String {
        let how = if self.sniffed { format!("format {} (sniffed from the first record)", self.format) } else { format!("format {}", self.format) };
        let mut s =
            format!("corpus '{}': {n} rationales from {}, {how}, kind {}; {} without an answer", self.name, self.path, self.kind.name(), self.no_answer);
        if self.context_dropped > 0 {
            s.push_str(&format!("; {} with a system prompt or earlier turns left out", self.context_dropped));
        }
        s
    }
}

/// One rationale with its question and gold answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Rationale {
    pub id: String,
    pub question: String,
    /// Canonical gold answer, when known (from the release's answer-only file or MATH's `output`).
    pub gold: Option<String>,
    pub text: String,
    /// Where it came from: kept through concatenation, sampling and mixing.
    pub origin: Origin,
}

/// Provenance of one rationale: the dataset, teacher, level and format it was written for, and
/// the file and row it was read from.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    pub task: Subject,
    /// A release teacher's name, a live teacher's `kind:model`, or None (answer-only data).
    pub teacher: Option<String>,
    pub level: Option<u8>,
    pub format: Format,
    /// The file read (relative to the data dir), "generated" for `arith`, `teacher:…` for a live
    /// teacher, a user's file as given or "frame" (its hash in the `Subject`).
    pub source: String,
    /// The record's index in that source.
    pub row: usize,
}

/// A set of rationales from one teacher at one level and format.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub task: Subject,
    pub teacher: Option<ReleaseTeacher>,
    pub level: Option<u8>,
    pub format: Format,
    /// The file read (relative to the data dir), or "generated" for `arith`.
    pub source: String,
    pub rationales: Vec<Rationale>,
    /// Records dropped because they lack this teacher's column (see the MATH gemini caveat).
    pub skipped: usize,
    /// How a corpus made of others was made (`concat`, `sample`, `mix`, `order`: see
    /// below), None for one file. Set, it is part of a training run's identity, and
    /// `task`/`teacher`/`level`/`format` hold the value shared by every rationale (None / the
    /// first's when they differ; each rationale's own is in its `origin`).
    pub recipe: Option<Recipe>,
}

impl Corpus {
    pub fn kind(&self) -> AnswerKind {
        self.task.kind()
    }
    pub fn len(&self) -> usize {
        self.rationales.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rationales.is_empty()
    }

    /// (question, rationale) pairs: what SFT trains on.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.rationales.iter().map(|r| (r.question.clone(), r.text.clone())).collect()
    }
}

/// How a corpus made of others was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Human-readable and exact: `mix(2×svamp gpt-4o level-1 plain, …; n=500, seed=1)`.
    pub text: String,
    /// The rationales are in a meaningful order (a curriculum): SFT keeps it instead of shuffling.
    pub ordered: bool,
}

crate::choices! {
    /// The order of a curriculum.
    pub enum CurriculumOrder("order") {
        /// Level 1 (coarsest) first, level 6 last; rationales without a level (answer-only, human)
        /// come before level 1.
        CoarseToFine = "coarse_to_fine",
        FineToCoarse = "fine_to_coarse",
    }
}

/// One part of a mixture and its weight (relative; weights need not sum to 1).
#[derive(Clone, Debug)]
pub struct MixPart {
    pub corpus: Corpus,
    pub weight: f64,
}

/// The shared value of `f` over every rationale, if they all agree.
fn shared<T: PartialEq + Clone>(c: &Corpus, f: impl Fn(&Origin) -> T) -> Option<T> {
    let first = f(&c.rationales.first()?.origin);
    c.rationales.iter().all(|r| f(&r.origin) == first).then_some(first)
}

impl Corpus {
    /// A short name of what this corpus holds: its recipe, or `svamp gpt-4o level-3 plain`.
    pub fn label(&self) -> String {
        if let Some(r) = &self.recipe {
            return r.text.clone();
        }
        // A user corpus has no release teacher: "user", not "answer-only".
        let no_teacher = if matches!(self.task, Subject::User(_)) { "user" } else { "answer-only" };
        let mut parts = vec![self.task.name().to_string(), self.teacher.map(|t| t.name().to_string()).unwrap_or_else(|| no_teacher.into())];
        if let Some(l) = self.level {
            parts.push(format!("level-{l}"));
        }
        parts.push(self.format.name().to_string());
        parts.join(" ")
    }

    /// Set `task`/`teacher`/`level`/`format` to what every rationale shares (None, or the
    /// first's, where they differ) after the rationales changed.
    fn with_recipe(mut self, text: String, ordered: bool) -> Corpus {
        if let Some(t) = shared(&self, |o| o.task.clone()) {
            self.task = t;
        }
        self.teacher = shared(&self, |o| o.teacher.clone()).flatten().and_then(|t| ReleaseTeacher::parse(&t).ok());
        self.level = shared(&self, |o| o.level).flatten();
        if let Some(f) = shared(&self, |o| o.format) {
            self.format = f;
        }
        self.source = shared(&self, |o| o.source.clone()).unwrap_or_else(|| "mixture".into());
        self.recipe = Some(Recipe { text, ordered });
        self
    }

    /// All rationales of `parts`, in order.
    pub fn concat(parts: &[Corpus]) -> Result<Corpus> {
        let Some(first) = parts.first() else { return Err(usage!("concat: give at least one corpus")) };
        let mut out = first.clone();
        out.rationales = parts.iter().flat_map(|c| c.rationales.iter().cloned()).collect();
        out.skipped = parts.iter().map(|c| c.skipped).sum();
        let labels: Vec<String> = parts.iter().map(|c| c.label()).collect();
        Ok(out.with_recipe(format!("concat({})", labels.join(", ")), false))
    }

    /// Rationales picked from `from` by some rule (one per question by a student's loss, say),
    /// the rule described by `how` (the recipe, part of a training run's identity).
    pub fn picked(from: &[Corpus], rationales: Vec<Rationale>, how: String) -> Result<Corpus> {
        let Some(first) = from.first() else { return Err(usage!("picked: give the corpora the rationales come from")) };
        let mut out = first.clone();
        out.rationales = rationales;
        out.skipped = from.iter().map(|c| c.skipped).sum();
        Ok(out.with_recipe(how, false))
    }

    /// `n` rationales drawn without replacement (seeded).
    pub fn sample(&self, n: usize, seed: u64) -> Result<Corpus> {
        if n == 0 || n > self.len() {
            return Err(usage!(
                "sample: n must be in 1..={} (the corpus has {} rationales), got {n}; to draw more than there are, use mix([#{{corpus: c, weight: 1.0}}], #{{n: {n}}})",
                self.len(),
                self.len()
            ));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut idx);
        let mut out = self.clone();
        out.rationales = idx[..n].iter().map(|&i| self.rationales[i].clone()).collect();
        Ok(out.with_recipe(format!("sample({}; n={n}, seed={seed})", self.label()), false))
    }

    /// `n` rationales from `parts` in proportion to their weights (largest-remainder rounding),
    /// then shuffled together (seeded). A part asked for more than it has is repeated: every
    /// rationale of it appears ⌊q/len⌋ or ⌈q/len⌉ times, never one many times by chance.
    pub fn mix(parts: &[MixPart], n: usize, seed: u64) -> Result<Corpus> {
        if parts.is_empty() {
            return Err(usage!("mix: give at least one part: mix([#{{corpus: c, weight: 1.0}}, ...], #{{n: 500}})"));
        }
        crate::error::in_range("mix", "n", n, 1..=10_000_000)?;
        for (i, p) in parts.iter().enumerate() {
            crate::error::in_range("mix", &format!("parts[{i}].weight"), p.weight, 1e-9..=1e9)?;
            if p.corpus.is_empty() {
                return Err(usage!("mix: part {i} ({}) has no rationales", p.corpus.label()));
            }
        }
        let total: f64 = parts.iter().map(|p| p.weight).sum();
        let exact: Vec<f64> = parts.iter().map(|p| n as f64 * p.weight / total).collect();
        let mut quota: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
        by_remainder.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
        for &i in by_remainder.iter().take(n - quota.iter().sum::<usize>()) {
            quota[i] += 1;
        }
        let mut rng = Rng::new(seed);
        let mut rationales = Vec::with_capacity(n);
        for (p, &q) in parts.iter().zip(&quota) {
            let len = p.corpus.len();
            let mut drawn = 0;
            while drawn < q {
                let mut idx: Vec<usize> = (0..len).collect();
                rng.shuffle(&mut idx);
                for &i in idx.iter().take(q - drawn) {
                    rationales.push(p.corpus.rationales[i].clone());
                }
                drawn += len.min(q - drawn);
            }
        }
        rng.shuffle(&mut rationales);
        let mut out = parts[0].corpus.clone();
        out.rationales = rationales;
        out.skipped = 0;
        let labels: Vec<String> = parts.iter().zip(&quota).map(|(p, q)| format!("{q}×{} (weight {})", p.corpus.label(), p.weight)).collect();
        Ok(out.with_recipe(format!("mix({}; n={n}, seed={seed})", labels.join(", ")), false))
    }

    /// A curriculum: the rationales sorted by level (shuffled within a level, seeded), marked
    /// ordered so that `sft` trains in this order instead of shuffling.
    pub fn ordered(&self, order: CurriculumOrder, seed: u64) -> Corpus {
        let mut out = self.clone();
        Rng::new(seed).shuffle(&mut out.rationales);
        // A stable sort keeps the seeded order inside each level.
        out.rationales.sort_by_key(|r| r.origin.level.unwrap_or(0));
        if order == CurriculumOrder::FineToCoarse {
            out.rationales.reverse();
        }
        out.with_recipe(format!("order({}; {}, seed={seed})", self.label(), order.name()), true)
    }

    /// SFT must keep this corpus's order (a curriculum).
    pub fn is_ordered(&self) -> bool {
        self.recipe.as_ref().is_some_and(|r| r.ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Catalog, DataDir, RationaleQuery};

    fn arith(level: i64, n: usize) -> Corpus {
        let q = RationaleQuery { level: Some(level), n: Some(n), ..Default::default() };
        Catalog::new(DataDir("unused".into())).rationales("arith", &q).unwrap()
    }

    #[test]
    fn concat_sample_mix_keep_provenance() {
        let (a, b) = (arith(1, 10), arith(6, 4));
        let c = Corpus::concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(c.len(), 14);
        assert_eq!(c.level, None, "levels differ");
        assert_eq!(c.rationales[12].origin.level, Some(6));
        assert_eq!(c.rationales[12].origin.row, 2);
        assert!(c.recipe.as_ref().unwrap().text.starts_with("concat(arith rule level-1 plain, arith rule level-6 plain)"));

        let s = a.sample(3, 7).unwrap();
        assert_eq!((s.len(), s.level), (3, Some(1)));
        assert_eq!(s.rationales, a.sample(3, 7).unwrap().rationales, "seeded");
        assert_ne!(s.rationales, a.sample(3, 8).unwrap().rationales);
        assert!(a.sample(11, 1).unwrap_err().to_string().contains("1..=10"));

        // Weights 3:1 of 12 → 9 level-1 and 3 level-6; level 6 has 4, so none is repeated,
        // while 9 of level 1's 10 are distinct.
        let m = Corpus::mix(&[MixPart { corpus: a.clone(), weight: 3.0 }, MixPart { corpus: b.clone(), weight: 1.0 }], 12, 1).unwrap();
        let count = |l| m.rationales.iter().filter(|r| r.origin.level == Some(l)).count();
        assert_eq!((count(1), count(6)), (9, 3));
        // Upsampling: 10 from 4 → every rationale 2 or 3 times.
        let up = Corpus::mix(&[MixPart { corpus: b.clone(), weight: 1.0 }], 10, 1).unwrap();
        for r in &b.rationales {
            let k = up.rationales.iter().filter(|x| x.id == r.id).count();
            assert!((2..=3).contains(&k), "{k}");
        }
        assert!(Corpus::mix(&[MixPart { corpus: b, weight: 0.0 }], 10, 1).unwrap_err().to_string().contains("weight"));
    }

    #[test]
    fn curriculum_orders_levels_and_is_kept() {
        let c = Corpus::concat(&[arith(6, 5), arith(1, 5), arith(3, 5)]).unwrap();
        let o = c.ordered(CurriculumOrder::CoarseToFine, 1);
        let levels: Vec<u8> = o.rationales.iter().map(|r| r.origin.level.unwrap()).collect();
        assert_eq!(levels, [1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 6, 6, 6, 6, 6]);
        assert!(o.is_ordered() && !c.is_ordered());
        let f = c.ordered(CurriculumOrder::FineToCoarse, 1);
        assert_eq!(f.rationales[0].origin.level, Some(6));
    }
}
