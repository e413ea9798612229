//! Stage 1 — data: the `Example` type, loaders for every native test format and the paper's
//! Alpaca-style training files, the name-based catalog over the release, corpora of rationales as values (`corpus`), the embedded
//! synthetic `arith` set, users' own test sets from files and frames (`user`), and the train/test
//! contamination check.

pub mod arith;
pub mod catalog;
pub mod contamination;
pub mod corpus;
pub mod formats;
pub mod loaders;
pub mod user;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rng::Rng;
use crate::usage;

// AnswerKind lives with the extractor at the base of the crate; re-exported so data paths keep working.
pub use crate::answer::AnswerKind;
use crate::answer::Evaluator;
pub use catalog::{Catalog, CatalogEntry, RationaleQuery};
pub use corpus::{Corpus, CurriculumOrder, MixPart, Origin, Rationale, Recipe, ReleaseTeacher, Subject, UserData};

/// One question with its gold answer, as a student sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Stable id: the upstream id where there is one (SVAMP `chal-1`, MATH `test/algebra/1.json`),
    /// else `<dataset>-<split>-<index>`.
    pub id: String,
    /// The question text as the paper shows it to a model (answer choices included).
    pub question: String,
    /// Answer choices in letter order, when the task is multiple choice.
    pub choices: Vec<String>,
    /// Gold answer in canonical form (see `answer::canonical_gold`).
    pub answer: String,
    pub kind: AnswerKind,
}

/// The seven test sets of the paper plus the embedded synthetic set, and a user's own test set
/// (`User`, from a file or frame: [`user`]), whose answer kind decides how it is scored. `ALL` and
/// `parse` name the built-ins only, so their names, eval dirs and rules never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Svamp,
    Gsm8k,
    Aqua,
    Math,
    Csqa,
    Obqa,
    StrategyQa,
    Arith,
    /// A user test set: scored by its kind's rule (see [`Task::evaluator`]).
    User(AnswerKind),
}

impl Task {
    pub const ALL: [Task; 8] = [Task::Svamp, Task::Gsm8k, Task::Aqua, Task::Math, Task::Csqa, Task::Obqa, Task::StrategyQa, Task::Arith];

    pub fn parse(name: &str) -> Result<Task> {
        let n = name.to_ascii_lowercase().replace(['_', ' '], "-");
        Ok(match n.as_str() {
            "svamp" => Task::Svamp,
            "gsm8k" | "gsm" => Task::Gsm8k,
            "aqua" | "aqua-rat" => Task::Aqua,
            "math" | "math500" | "math-500" => Task::Math,
            "csqa" | "commonsenseqa" | "commonsense-qa" => Task::Csqa,
            "obqa" | "openbookqa" | "openbook-qa" => Task::Obqa,
            "strategyqa" | "stqa" | "strategy-qa" => Task::StrategyQa,
            "arith" => Task::Arith,
            _ => return Err(usage!("unknown dataset '{name}': expected one of svamp, gsm8k, aqua, math, csqa, obqa, strategyqa, arith")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Svamp => "svamp",
            Task::Gsm8k => "gsm8k",
            Task::Aqua => "aqua",
            Task::Math => "math",
            Task::Csqa => "csqa",
            Task::Obqa => "obqa",
            Task::StrategyQa => "strategyqa",
            Task::Arith => "arith",
            // The set's own name is `Dataset::name`.
            Task::User(_) => "user",
        }
    }

    pub fn kind(self) -> AnswerKind {
        match self {
            Task::Svamp | Task::Gsm8k | Task::Arith => AnswerKind::Number,
            Task::Aqua | Task::Csqa | Task::Obqa => AnswerKind::Choice,
            Task::StrategyQa => AnswerKind::Bool,
            Task::Math => AnswerKind::Latex,
            Task::User(kind) => kind,
        }
    }

    /// Which of the paper's evaluators scores this task: MAmmoTH's for the math tasks, the
    /// paper's `run_reasoning.py` for CSQA, OBQA and StrategyQA (see `answer::paper`). A user set
    /// by its kind: numbers and LaTeX the math rule, choice, bool and text the commonsense one.
    pub fn evaluator(self) -> Evaluator {
        match self {
            Task::Csqa | Task::Obqa | Task::StrategyQa => Evaluator::Commonsense,
            Task::Svamp | Task::Gsm8k | Task::Aqua | Task::Math | Task::Arith => Evaluator::Math,
            Task::User(AnswerKind::Number | AnswerKind::Latex) => Evaluator::Math,
            Task::User(AnswerKind::Choice | AnswerKind::Bool | AnswerKind::Text) => Evaluator::Commonsense,
        }
    }

    /// The paper's generation limit: `--model_max_length 640` for the commonsense tasks
    /// (`Evaluation/reasoning_eval/autoevaluate.py`; 320 is only `run_reasoning.py`'s argparse
    /// default) and MAmmoTH's default 1024 for math (`math_eval/run_open.py`, `run_choice.py`).
    pub fn paper_max_new_tokens(self) -> usize {
        match self.evaluator() {
            Evaluator::Commonsense => 640,
            Evaluator::Math => 1024,
        }
    }
}

/// Where the release lives. Resolution order: explicit option, `$COTLAB_DATA`, `./datasets`.
#[derive(Clone, Debug)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub const ENV: &'static str = "COTLAB_DATA";

    pub fn resolve(explicit: Option<PathBuf>) -> DataDir {
        if let Some(p) = explicit {
            return DataDir(p);
        }
        match std::env::var_os(Self::ENV) {
            Some(p) if !p.is_empty() => DataDir(PathBuf::from(p)),
            _ => DataDir(PathBuf::from("datasets")),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

/// Options for `dataset(name, #{...})`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetOptions {
    /// "test" (default), "train" where the release has one, "all" (SVAMP: the 1000 problems),
    /// "full" (MATH: the 5000-problem test set instead of MATH-500).
    pub split: Option<String>,
    /// Keep only the first `limit` examples (after shuffling, when `seed` is given).
    pub limit: Option<usize>,
    /// Shuffle with this seed before `limit`.
    pub seed: Option<u64>,
    /// `arith` only: how many problems to generate (default 500).
    pub n: Option<usize>,
}

/// A named list of examples.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub split: String,
    pub task: Task,
    pub examples: Vec<Example>,
    /// Set when `limit`/`seed` picked a subset: (examples kept, shuffle seed). Part of the
    /// default eval dir name, so a subset never resumes into a full evaluation's dir.
    pub subset: Option<(usize, Option<u64>)>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Seeded shuffle then truncate, as the options ask.
    pub fn apply(mut self, seed: Option<u64>, limit: Option<usize>) -> Self {
        if let Some(seed) = seed {
            Rng::new(seed).shuffle(&mut self.examples);
        }
        if let Some(limit) = limit {
            self.examples.truncate(limit);
        }
        if seed.is_some() || limit.is_some() {
            self.subset = Some((self.examples.len(), seed));
        }
        self
    }

    /// A seeded train/test split for sets the release ships without one. `test_fraction` of the
    /// examples (rounded, at least one of each when possible) go to the test part.
    pub fn split_off(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&test_fraction) || test_fraction == 0.0 {
            return Err(usage!("test_fraction must be in (0, 1), got {test_fraction}"));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut idx);
        let n_test = ((self.len() as f64) * test_fraction).round().max(1.0) as usize;
        let n_test = n_test.min(self.len().saturating_sub(1));
        let mut test_idx = idx[..n_test].to_vec();
        let mut train_idx = idx[n_test..].to_vec();
        // Keep the original order inside each part: easier to read and diff.
        test_idx.sort_unstable();
        train_idx.sort_unstable();
        let pick = |ix: &[usize], split: &str| Dataset {
            name: self.name.clone(),
            split: format!("{}:{split}", self.split),
            task: self.task,
            examples: ix.iter().map(|&i| self.examples[i].clone()).collect(),
            subset: self.subset,
        };
        Ok((pick(&train_idx, "train"), pick(&test_idx, "test")))
    }
}

/// Load a dataset by name: `load_dataset(&dir, "svamp", &opts)`.
pub fn load_dataset(dir: &DataDir, name: &str, opts: &DatasetOptions) -> Result<Dataset> {
    let task = Task::parse(name)?;
    let default_split = if task == Task::Arith { "all" } else { "test" };
    let split = opts.split.clone().unwrap_or_else(|| default_split.to_string());
    let examples = if task == Task::Arith {
        if opts.split.is_some() {
            return Err(usage!("'arith' is generated, it has no splits: use ds.split(test_fraction, seed) to make one"));
        }
        let n = crate::error::in_range("dataset(\"arith\")", "n", opts.n.unwrap_or(500), 1..=1_000_000)?;
        let problems = arith::generate(n, opts.seed.unwrap_or(1));
        problems.iter().map(|p| p.example()).collect()
    } else {
        loaders::load_task(dir, task, &split)?
    };
    // Generated sets are always "a subset": n and seed name the problems.
    let subset = (task == Task::Arith).then(|| (examples.len(), Some(opts.seed.unwrap_or(1))));
    let ds = Dataset { name: task.name().to_string(), split, task, examples, subset };
    // For arith the seed already chose the problems: do not shuffle them a second time.
    let seed = if task == Task::Arith { None } else { opts.seed };
    Ok(ds.apply(seed, opts.limit))
}
