//! The catalog: names, not file names. `rationales("svamp", teacher: "gpt-4o", level: 3)` finds
//! `paper/SVAMP_ChatGPT_level3_ranked.json`; the table below is the release as dataset_info.json
//! describes it, so a combination the release never had is told apart from a file that is
//! merely missing from this copy.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::corpus::{Corpus, Origin, Rationale, ReleaseTeacher};
use super::loaders::{load_alpaca, read_records};
use super::{arith, DataDir, Task};
use crate::answer::canonical_gold;
use crate::cot::{Format, Level, LEVELS};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::usage;

/// One file of the release: which (dataset, teacher, level, format) it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogEntry {
    pub task: Task,
    /// None for answer-only files (no teacher wrote them).
    pub teacher: Option<ReleaseTeacher>,
    pub level: Option<u8>,
    pub format: Format,
    /// Path relative to the data dir.
    pub file: String,
    pub prompt_col: &'static str,
    pub response_col: &'static str,
}

/// What to look up. `teacher` defaults to gpt-4o unless `format` is answer-only.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RationaleQuery {
    pub teacher: Option<String>,
    pub level: Option<i64>,
    pub format: Option<String>,
    pub limit: Option<usize>,
    pub seed: Option<u64>,
    /// `arith` only: the generated set's size and seed (match `dataset("arith", ...)`).
    pub n: Option<usize>,
}

const PLAIN_TEACHERS: [ReleaseTeacher; 3] = [ReleaseTeacher::Gpt4o, ReleaseTeacher::Gemini, ReleaseTeacher::Llama70b];

fn entry(task: Task, teacher: Option<ReleaseTeacher>, level: Option<u8>, format: Format, file: String) -> CatalogEntry {
    CatalogEntry { task, teacher, level, format, file: format!("paper/{file}"), prompt_col: "instruction", response_col: "output" }
}

/// Every file the release has (or had: some are ≥ 4 MiB and absent from the shared copy).
pub fn release_entries() -> Vec<CatalogEntry> {
    use Format::*;
    use ReleaseTeacher::*;
    let mut v = Vec::new();
    let levels = |t: ReleaseTeacher, task: Task| -> Vec<u8> {
        match (task, t) {
            (Task::Svamp, Llama70b) => (1..=4).collect(), // the release never had levels 5-6
            (Task::Gsm8k, Llama70b) => (1..=5).collect(), // ... nor level 6
            _ => LEVELS.collect(),
        }
    };
    // (task, file name for (teacher, level), human file, answer-only file)
    for task in [Task::Svamp, Task::Gsm8k, Task::Aqua, Task::Csqa, Task::Obqa, Task::StrategyQa] {
        for t in PLAIN_TEACHERS {
            for l in levels(t, task) {
                let f = match (task, t) {
                    (Task::Svamp, Gpt4o) => format!("SVAMP_ChatGPT_level{l}_ranked.json"),
                    (Task::Svamp, Gemini) => format!("SVAMP_gemini_level{l}_ranked.json"),
                    (Task::Svamp, _) => format!("SVAMP_llama_level{l}_ranked.json"),
                    (Task::Gsm8k, Gpt4o) => format!("gsm8k_ChatGPT_level{l}_ranked.json"),
                    (Task::Gsm8k, Gemini) => format!("gsm8k_gemini_level{l}_ranked.json"),
                    (Task::Gsm8k, _) => format!("gsm8k_llama_level{l}_ranked.json"),
                    (Task::Aqua, Gpt4o) => format!("aqua_chatgpt_level{l}_ranked.json"),
                    (Task::Aqua, Gemini) => format!("aqua_gemini_level{l}_ranked.json"),
                    (Task::Aqua, _) => format!("aqua_llama_level{l}_ranked.json"),
                    (Task::Csqa, Gpt4o) => format!("commonsenseQA_chatgpt_level_{l}_ranked.json"),
                    (Task::Csqa, Gemini) => format!("csqa_gemini_level{l}_ranked.json"),
                    (Task::Csqa, _) => format!("csqa_llama_level{l}_ranked.json"),
                    (Task::Obqa, Gpt4o) => format!("openbookQA_chatgpt_level_{l}_ranked.json"),
                    (Task::Obqa, Gemini) => format!("obqa_gemini_level{l}_ranked.json"),
                    (Task::Obqa, _) => format!("obqa_llama_level{l}_ranked.json"),
                    (Task::StrategyQa, Gpt4o) => format!("strategyQA_chatgpt_level_{l}_ranked.json"),
                    (Task::StrategyQa, Gemini) => format!("stqa_gemini_level{l}_ranked.json"),
                    (Task::StrategyQa, _) => format!("stqa_llama_level{l}_ranked.json"),
                    _ => unreachable!(),
                };
                v.push(entry(task, Some(t), Some(l), Plain, f));
            }
        }
    }
    // GPT-4o format variants.
    for (l, fmt, tag) in [(3, Bsm, "BSM"), (3, Rar, "RaR"), (3, Sym, "SYM"), (5, Bsm, "BSM"), (5, Rar, "RaR"), (5, Sym, "SYM")] {
        v.push(entry(Task::Svamp, Some(Gpt4o), Some(l), fmt, format!("0_SVAMP_chatgpt_level{l}{tag}.json")));
        v.push(entry(Task::Gsm8k, Some(Gpt4o), Some(l), fmt, format!("0_gsm8k_chatgpt_level{l}{tag}.json")));
    }
    for (l, fmt, tag) in [(5, Bsm, "BSM"), (5, Rar, "RaR"), (5, Sym, "Sym"), (6, Bsm, "BSM"), (6, Rar, "RaR")] {
        v.push(entry(Task::Aqua, Some(Gpt4o), Some(l), fmt, format!("0_aqua_chatgpt_level{l}{tag}.json")));
    }
    for (fmt, tag) in [(Bsm, "bsm"), (Rar, "rar"), (Sym, "symbolic")] {
        v.push(entry(Task::Obqa, Some(Gpt4o), Some(3), fmt, format!("openbookqa_chatgpt_{tag}_level3_ranked.json")));
    }
    // Human rationales and answer-only files.
    for (task, human, only) in [
        (Task::Svamp, Some("svamp_human_annotation.json"), "SVAMP_only_ans.json"),
        (Task::Gsm8k, Some("gsm8k_human.json"), "gsm_train_onlyans.json"),
        (Task::Aqua, Some("aqua_human.json"), "aqua_only_ans.json"),
        (Task::Csqa, Some("ecqa_train.json"), "commonsenseQA_onlyans.json"),
        (Task::Obqa, None, "openbookQA_onlyans.json"),
        (Task::StrategyQa, Some("stqa_human_annotation.json"), "strategyQA_onlyans.json"),
    ] {
        if let Some(h) = human {
            v.push(entry(task, Some(Human), None, Plain, h.to_string()));
        }
        v.push(entry(task, None, None, AnswerOnly, only.to_string()));
    }
    // MATH: the prompt is `problem` and the teacher's text sits in its own column.
    let math = |teacher, level, format, file: String, col| CatalogEntry {
        task: Task::Math,
        teacher,
        level,
        format,
        file: format!("paper/{file}"),
        prompt_col: "problem",
        response_col: col,
    };
    for l in LEVELS {
        v.push(math(Some(Gpt4o), Some(l), Plain, format!("math_mix_level{l}.json"), "chatgpt_output"));
        v.push(math(Some(Gemini), Some(l), Plain, format!("math_gemini_level{l}_ranked.json"), "gemini_output"));
        v.push(math(Some(Llama70b), Some(l), Plain, format!("math_llama_level{l}_ranked.json"), "llama_output"));
    }
    v.push(math(Some(Human), None, Plain, "math_human.json".into(), "solution"));
    v.push(math(None, None, AnswerOnly, "math_human.json".into(), "output"));
    v
}

/// The release's entries, resolved against a data dir.
pub struct Catalog {
    pub dir: DataDir,
    pub entries: Vec<CatalogEntry>,
}

impl Catalog {
    pub fn new(dir: DataDir) -> Catalog {
        Catalog { dir, entries: release_entries() }
    }

    pub fn present(&self, e: &CatalogEntry) -> bool {
        self.dir.path(&e.file).is_file()
    }

    pub fn entries_for(&self, task: Task) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.iter().filter(move |e| e.task == task)
    }

    /// Find the entry for a query, or say precisely why there is none.
    pub fn lookup(&self, task: Task, q: &RationaleQuery) -> Result<&CatalogEntry> {
        let format = match &q.format {
            Some(f) => Format::parse(f).map_err(crate::error::Error::Usage)?,
            None => Format::Plain,
        };
        let teacher = match (&q.teacher, format) {
            (Some(t), _) => Some(ReleaseTeacher::parse(t).map_err(crate::error::Error::Usage)?),
            (None, Format::AnswerOnly) => None,
            (None, _) => Some(ReleaseTeacher::Gpt4o),
        };
        let level = match q.level {
            Some(l) => Some(Level::new(l)?.get()),
            None => None,
        };
        if format == Format::AnswerOnly && q.level.is_some() {
            return Err(usage!("answer-only data has no granularity level: drop 'level'"));
        }
        if teacher == Some(ReleaseTeacher::Human) && q.level.is_some() {
            return Err(usage!("human rationales have no granularity level: drop 'level'"));
        }
        let wanted_teacher = if format == Format::AnswerOnly { None } else { teacher };
        let needs_level = !(format == Format::AnswerOnly || teacher == Some(ReleaseTeacher::Human));
        if needs_level && level.is_none() {
            return Err(usage!("'level' (1..6) is required for {} rationales", teacher.map(|t| t.name()).unwrap_or("teacher")));
        }
        let found = self.entries.iter().find(|e| e.task == task && e.teacher == wanted_teacher && e.level == level && e.format == format);
        let Some(e) = found else {
            let have: Vec<String> = self.entries_for(task).filter(|e| e.teacher == wanted_teacher || format == Format::AnswerOnly).map(describe).collect();
            return Err(usage!(
                "the release has no {} {} rationales for {}{}; it has: {}",
                wanted_teacher.map(|t| t.name()).unwrap_or("answer-only"),
                format_level(format, level),
                task.name(),
                if teacher == Some(ReleaseTeacher::Rule) { " (the rule teacher writes only for 'arith')" } else { "" },
                if have.is_empty() { "none from this teacher".to_string() } else { have.join(", ") }
            ));
        };
        let path = self.dir.path(&e.file);
        if !path.is_file() {
            return Err(Error::data(
                path,
                "not found: this file is part of the paper's release (EIT-NLP/Distilling-CoT-Reasoning, data/) \
                 but missing from the data dir; clone that repository and point --data-dir / $COTLAB_DATA at a \
                 folder holding it under paper/ (datasets/README.md explains the layout)",
            ));
        }
        Ok(e)
    }

    /// Check a query without loading it: Ok with the files it would read (the rationale file and
    /// the gold answers; none for generated `arith`), or the reason the release lacks it (the
    /// same error `rationales` would give). Sweeps use it to reject points before any work.
    pub fn check(&self, task_name: &str, q: &RationaleQuery) -> Result<Vec<PathBuf>> {
        let task = Task::parse(task_name)?;
        if task == Task::Arith {
            arith_check(q)?;
            return Ok(Vec::new());
        }
        if q.n.is_some() {
            return Err(usage!("'n' applies to the generated 'arith' set only"));
        }
        let e = self.lookup(task, q)?;
        let mut files = vec![self.dir.path(&e.file)];
        if task != Task::Math {
            if let Some(g) = self.entries.iter().find(|g| g.task == task && g.format == Format::AnswerOnly) {
                files.push(self.dir.path(&g.file));
            }
        }
        files.dedup();
        Ok(files)
    }

    /// Load the rationales a query names.
    pub fn rationales(&self, task_name: &str, q: &RationaleQuery) -> Result<Corpus> {
        let task = Task::parse(task_name)?;
        if task == Task::Arith {
            return arith_rationales(q);
        }
        if q.n.is_some() {
            return Err(usage!("'n' applies to the generated 'arith' set only"));
        }
        let e = self.lookup(task, q)?.clone();
        let path = self.dir.path(&e.file);
        let pairs = load_alpaca(&path, e.prompt_col, e.response_col)?;
        let kind = task.kind();
        let golds = if task == Task::Math { HashMap::new() } else { self.gold_index(task)? };
        let mut rationales = Vec::with_capacity(pairs.len());
        let mut skipped = 0;
        for p in pairs {
            let Some(text) = p.response else {
                skipped += 1;
                continue;
            };
            let gold = match &p.answer {
                Some(a) => canonical_gold(a, kind),
                None => golds.get(&p.prompt).cloned(),
            };
            let origin = Origin {
                task: task.into(),
                teacher: e.teacher.map(|t| t.name().to_string()),
                level: e.level,
                format: e.format,
                source: e.file.clone(),
                row: p.index,
            };
            rationales.push(Rationale { id: format!("{}-train-{}", task.name(), p.index), question: p.prompt, gold, text, origin });
        }
        if rationales.is_empty() {
            return Err(Error::data(&path, format!("no record has the '{}' column", e.response_col)));
        }
        if skipped > 0 {
            eprintln!("warning: {}: skipped {skipped} records without '{}' (they carry another teacher's column)", path.display(), e.response_col);
        }
        let mut corpus =
            Corpus { task: task.into(), teacher: e.teacher, level: e.level, format: e.format, source: e.file.clone(), rationales, skipped, recipe: None };
        apply_limit(&mut corpus.rationales, q.seed, q.limit);
        corpus.task = task.into();
        Ok(corpus)
    }

    /// Gold answers of the training questions, from the release's answer-only file (exact
    /// instruction → canonical answer).
    fn gold_index(&self, task: Task) -> Result<HashMap<String, String>> {
        let e = self.entries.iter().find(|e| e.task == task && e.format == Format::AnswerOnly).expect("every released task has an answer-only file");
        let path = self.dir.path(&e.file);
        let mut map = HashMap::new();
        for rec in read_records(&path)? {
            let q = rec.str(&path, e.prompt_col)?;
            let a = rec.str(&path, e.response_col)?;
            if let Some(g) = canonical_gold(&a, task.kind()) {
                map.insert(q, g);
            }
        }
        Ok(map)
    }
}

fn apply_limit<T>(items: &mut Vec<T>, seed: Option<u64>, limit: Option<usize>) {
    if let Some(seed) = seed {
        Rng::new(seed).shuffle(items);
    }
    if let Some(limit) = limit {
        items.truncate(limit);
    }
}

fn format_level(format: Format, level: Option<u8>) -> String {
    match level {
        Some(l) => format!("level-{l} {}", format.name()),
        None => format.name().to_string(),
    }
}

/// "gpt-4o level-3 plain" etc.
pub fn describe(e: &CatalogEntry) -> String {
    format!("{} {}", e.teacher.map(|t| t.name()).unwrap_or("answer-only"), format_level(e.format, e.level)).replace("answer-only answer-only", "answer-only")
}

/// `arith` rationales come from the rule teacher, generated on the fly.
fn arith_rationales(q: &RationaleQuery) -> Result<Corpus> {
    let (level, format) = arith_check(q)?;
    let problems = arith::generate(q.n.unwrap_or(500), q.seed.unwrap_or(1));
    let mut rationales: Vec<Rationale> = problems
        .iter()
        .enumerate()
        .map(|(row, p)| {
            let ex = p.example();
            Rationale {
                id: ex.id.clone(),
                question: ex.question.clone(),
                gold: Some(ex.answer.clone()),
                text: p.rationale(level.unwrap_or(1), format),
                origin: Origin { task: Task::Arith.into(), teacher: Some("rule".into()), level, format, source: "generated".into(), row },
            }
        })
        .collect();
    apply_limit(&mut rationales, None, q.limit);
    Ok(Corpus {
        task: Task::Arith.into(),
        teacher: Some(ReleaseTeacher::Rule),
        level,
        format,
        source: "generated".into(),
        rationales,
        skipped: 0,
        recipe: None,
    })
}

/// The level and format of an `arith` query, or why the rule teacher cannot write it.
fn arith_check(q: &RationaleQuery) -> Result<(Option<u8>, Format)> {
    let format = match &q.format {
        Some(f) => Format::parse(f).map_err(crate::error::Error::Usage)?,
        None => Format::Plain,
    };
    let teacher = match &q.teacher {
        Some(t) => ReleaseTeacher::parse(t).map_err(crate::error::Error::Usage)?,
        None => ReleaseTeacher::Rule,
    };
    if teacher != ReleaseTeacher::Rule {
        return Err(usage!("'arith' rationales come from the rule teacher (teacher: \"rule\"), not {}", teacher.name()));
    }
    let level = match (q.level, format) {
        (_, Format::AnswerOnly) => None,
        (Some(l), _) => Some(Level::new(l)?.get()),
        (None, _) => return Err(usage!("'level' (1..6) is required for rule rationales")),
    };
    if !matches!(format, Format::Plain | Format::EquationOnly | Format::AnswerOnly) {
        return Err(usage!("the rule teacher writes plain, equation-only and answer-only rationales, not {}", format.name()));
    }
    Ok((level, format))
}

/// Where a catalog entry's file is, for error messages and listings.
pub fn entry_path(dir: &DataDir, e: &CatalogEntry) -> PathBuf {
    dir.path(&e.file)
}
