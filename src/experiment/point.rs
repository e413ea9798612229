//! One sweep point's configuration: a flat map of options (what the grid varies and the base
//! sets), resolved into the data to train on, the student, the SFT options and the evaluation.
//! Flat, so any option is a grid key: `level`, `teacher`, `lr`, `seed`, `student`, `mix`, ….
//!
//! Keys (defaults in brackets):
//! * data: `dataset` [svamp], `teacher` [gpt-4o; rule for arith], `level`, `format` [plain],
//!   `train_n` (a seeded subset of the corpus; the generated set's size for arith [500]),
//!   `train_seed` [1], `mix` (a list of parts `#{dataset, teacher, level, format, weight}` mixed
//!   to `train_n` rationales; a part may be `#{corpus, weight}`), `order` (`coarse_to_fine` /
//!   `fine_to_coarse`: a curriculum), `corpus` (a user corpus instead of the release's: a path, or
//!   `#{path, format, question, rationale, answer, kind, name}` as `corpus()` takes; read through
//!   the sandbox when the sweep is planned; `train_n` samples it);
//! * student: `student` [default], `device` [cpu], `template`;
//! * `train` [true]: false evaluates the base student (a before-training baseline);
//! * evaluation: `eval_dataset` [= dataset], `eval_split` [test], `eval_n` (a seeded subset),
//!   `eval_seed` [1; the generated set's seed for arith: 2, apart from the training problems],
//!   `eval_batch_size`, `eval_max_new_tokens`, `eval_protocol`, `eval_prompt`, `eval_beams`, `eval_decode_weights`;
//! * method: `method` [`sft`; `kd` given `kd`, `distill` given `distill`]: `sft`, `kd` (the
//!   `kd` map, `#{logits, alpha, temperature}`, an `sft` option) or `distill` (on-policy KD:
//!   `distill: #{teacher, beta, lmbda, max_new_tokens, temperature}`, `teacher` a student spec
//!   or a run); with `method` a grid key, one base holds both maps and each point uses its own;
//! * every other key is an `sft` option (`lr`, `epochs`, `max_steps`, `seed`, `batch_size`, …);
//!   `log_to` is sweep-wide (a `base` key) and no part of a point's name (see `sweep::plan`).

use serde_json::{Map, Value};

use crate::cot::Level;
use crate::data::{Catalog, DatasetOptions, RationaleQuery, Task};
use crate::error::{Error, Result};
use crate::eval::run::EvalOptions;
use crate::lab::StudentOptions;
use crate::train::SftOptions;
use crate::usage;

/// A point's corpus parts: release rationales (dataset, query, weight) and user corpora (spec, weight).
type Parts = (Vec<(String, RationaleQuery, f64)>, Vec<(UserCorpusSpec, f64)>);

pub const DATA_KEYS: &[&str] = &["dataset", "teacher", "level", "format", "train_n", "train_seed", "mix", "order", "corpus"];
/// The student-adaptive strategy's keys (parsed by `take_strategy`; run by [`super::adaptive`]).
pub const STRATEGY_KEYS: &[&str] = &["select", "select_levels", "select_temperature", "pilot_n", "pilot_steps", "pilot_eval_n"];
pub const STUDENT_KEYS: &[&str] = &["student", "device", "dtype", "template", "train"];
/// How a point trains: `method`, and the `distill` map (`kd` is an `sft` option).
pub const METHOD_KEYS: &[&str] = &["method", "distill", "kd"];
pub const EVAL_KEYS: &[&str] = &[
    "eval_dataset",
    "eval_split",
    "eval_n",
    "eval_seed",
    "eval_batch_size",
    "eval_max_new_tokens",
    "eval_protocol",
    "eval_prompt",
    "eval_beams",
    "eval_decode_weights",
];

/// Where every point is also logged (`tensorboard`, `mlflow`): a `base` key of the whole sweep.
pub const LOG_TO: &str = "log_to";

/// Every key a point accepts, for checking a grid before anything runs.
pub fn known_keys() -> Vec<String> {
    let sft = serde_json::to_value(SftOptions { shuffle: false, pack: false, ..Default::default() }).expect("options serialise");
    let mut keys: Vec<String> = DATA_KEYS.iter().chain(STRATEGY_KEYS).chain(STUDENT_KEYS).chain(EVAL_KEYS).chain(METHOD_KEYS).map(|k| k.to_string()).collect();
    keys.extend(sft.as_object().expect("an object").keys().filter(|k| !METHOD_KEYS.contains(&k.as_str())).cloned());
    // Never serialised (no part of a run's identity), but a key all the same.
    keys.push(LOG_TO.to_string());
    keys
}

/// A user corpus named by a point: a path, or a path with `corpus()`'s options.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum UserCorpusSpec {
    Path(String),
    Options(UserCorpusOptions),
}

/// `#{path, format, question, rationale, answer, kind, name}`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCorpusOptions {
    pub path: String,
    #[serde(default)]
    pub format: crate::data::formats::CorpusFormat,
    pub question: Option<String>,
    pub rationale: Option<String>,
    pub answer: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl UserCorpusSpec {
    /// The file and the options to read it with.
    fn split(&self) -> (std::path::PathBuf, crate::data::formats::CorpusOptions) {
        match self {
            UserCorpusSpec::Path(p) => (p.into(), Default::default()),
            UserCorpusSpec::Options(o) => (
                o.path.clone().into(),
                crate::data::formats::CorpusOptions {
                    format: o.format,
                    question: o.question.clone(),
                    rationale: o.rationale.clone(),
                    answer: o.answer.clone(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                },
            ),
        }
    }

    fn read(&self) -> Result<crate::data::Corpus> {
        let (path, o) = self.split();
        crate::data::formats::read_corpus(crate::data::formats::Input::File(&path), &o)
    }

    /// The same spec naming `path` (the sandbox-checked real path).
    fn at(&self, path: &std::path::Path) -> UserCorpusSpec {
        let path = path.display().to_string();
        match self {
            UserCorpusSpec::Path(_) => UserCorpusSpec::Path(path),
            UserCorpusSpec::Options(o) => UserCorpusSpec::Options(UserCorpusOptions { path, ..o.clone() }),
        }
    }
}

/// One part of a `mix`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    /// A user corpus instead of a release one (then no dataset, teacher, level or format).
    pub corpus: Option<UserCorpusSpec>,
    pub dataset: Option<String>,
    pub teacher: Option<String>,
    pub level: Option<i64>,
    pub format: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

crate::choices! {
    /// How a point trains its student.
    #[derive(Default)]
    pub enum Method("method") {
        /// Fine-tuning on the corpus's text.
        #[default]
        Sft = "sft",
        /// `sft` with `kd`: CE beside the KL to stored teacher logits.
        Kd = "kd",
        /// On-policy KD from a live teacher (`train::distill`).
        Distill = "distill",
    }
}

/// A point's `distill` map: the teacher (a student spec or a run) and `distill`'s options.
#[derive(Clone, Debug)]
pub struct DistillSpec {
    pub teacher: String,
    pub opts: crate::train::DistillOptions,
}

impl DistillSpec {
    fn parse(v: Value) -> Result<DistillSpec> {
        let Value::Object(mut m) = v else {
            return Err(usage!("'distill' must be a map #{{teacher, beta, lmbda, max_new_tokens, temperature}} (got {v})"));
        };
        let teacher = match m.remove("teacher") {
            Some(Value::String(t)) => t,
            other => return Err(usage!("'distill' needs 'teacher': a student spec or a run name (got {})", other.unwrap_or(Value::Null))),
        };
        let opts: crate::train::DistillOptions = serde_json::from_value(Value::Object(m)).map_err(|e| usage!("'distill': {e}"))?;
        opts.validate()?;
        Ok(DistillSpec { teacher, opts })
    }
}

/// The point's method and its `distill` map, from `method`, `kd` and `distill` (removed from
/// `m` but for the `kd` of a `kd` point, an `sft` option). An explicit `method` ignores the
/// other method's map, so one base can serve a `method` grid.
fn take_method(m: &mut Map<String, Value>) -> Result<(Method, Option<DistillSpec>)> {
    let method: Option<Method> = take(m, "method")?;
    let distill = m.remove("distill").filter(|v| !v.is_null());
    let has_kd = m.get("kd").is_some_and(|v| !v.is_null());
    let method = match method {
        Some(x) => x,
        None if has_kd && distill.is_some() => return Err(usage!("both 'kd' and 'distill' given: say which with 'method' (sft, kd, distill)")),
        None if has_kd => Method::Kd,
        None if distill.is_some() => Method::Distill,
        None => Method::Sft,
    };
    if method != Method::Kd {
        m.remove("kd");
    } else if !has_kd {
        return Err(usage!("method 'kd' needs 'kd': #{{logits: <teacher_logits dir>, alpha: 0.5, temperature: 1.0}}"));
    }
    let distill = match (method, distill) {
        (Method::Distill, Some(d)) => Some(DistillSpec::parse(d)?),
        (Method::Distill, None) => return Err(usage!("method 'distill' needs 'distill': #{{teacher: \"<student spec or run>\", beta: 0.5, lmbda: 0.5}}")),
        _ => None,
    };
    Ok((method, distill))
}

/// A point resolved into what runs.
#[derive(Clone, Debug)]
pub struct PointConfig {
    /// (dataset, query, weight) of each corpus; one part unless `mix`.
    pub parts: Vec<(String, RationaleQuery, f64)>,
    /// User corpora (`corpus`, or `mix` parts naming one) and their weights, after `parts`.
    pub user: Vec<(UserCorpusSpec, f64)>,
    pub mixed: bool,
    /// Rationales in a mixture (`train_n`).
    pub mix_n: Option<usize>,
    pub train_seed: u64,
    pub order: Option<crate::data::CurriculumOrder>,
    /// The student-adaptive strategy (`select`): `parts` are then its candidate levels, each as
    /// the fixed-level point of that level would read it.
    pub strategy: Option<StrategyConfig>,
    pub student: String,
    pub student_opts: StudentOptions,
    pub train: bool,
    pub method: Method,
    /// The teacher and options of a `distill` point.
    pub distill: Option<DistillSpec>,
    pub sft: SftOptions,
    pub eval_dataset: String,
    pub eval_data: DatasetOptions,
    pub eval: EvalOptions,
}

fn take<T: serde::de::DeserializeOwned>(m: &mut Map<String, Value>, key: &str) -> Result<Option<T>> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| usage!("'{key}': {e} (got {v})")),
    }
}

crate::choices! {
    /// `select`: how a point chooses its rationales.
    pub enum Strategy("select") {
        Pilot = "pilot",
        MinLoss = "min_loss",
        Softmin = "softmin",
    }
}

/// The strategy of one point, its candidates and sizes.
#[derive(Clone, Debug)]
pub struct StrategyConfig {
    pub strategy: Strategy,
    /// Candidate levels (`select_levels`, default 1–6), each a part of the point's `parts`.
    pub levels: Vec<Level>,
    /// `softmin` only (`select_temperature`, default 0.1 nats per token).
    pub temperature: f64,
    /// `pilot` only: rationales per pilot run (`pilot_n`, default the point's `train_n`, else 64).
    pub pilot_n: usize,
    /// `pilot` only: optimizer steps per pilot run (`pilot_steps`, default the point's
    /// `max_steps`, else 20).
    pub pilot_steps: usize,
    /// `pilot` only: held-out training questions each pilot is evaluated on (`pilot_eval_n`, 20).
    pub pilot_eval_n: usize,
}

/// Parse the strategy keys of a point (`select`, `select_levels`, `select_temperature`,
/// `pilot_n`, `pilot_steps`, `pilot_eval_n`), removing them from `m`.
fn take_strategy(m: &mut Map<String, Value>, train_n: Option<usize>, max_steps: Option<usize>) -> Result<Option<StrategyConfig>> {
    let take = |m: &mut Map<String, Value>, k: &str| m.remove(k).filter(|v| !v.is_null());
    let parse = |k: &str, v: Value| -> Result<u64> { v.as_u64().ok_or_else(|| usage!("'{k}' must be a positive integer (got {v})")) };
    let select = take(m, "select");
    let levels = take(m, "select_levels");
    let temperature = take(m, "select_temperature");
    let (pilot_n, pilot_steps, pilot_eval_n) = (take(m, "pilot_n"), take(m, "pilot_steps"), take(m, "pilot_eval_n"));
    let Some(select) = select else {
        if let Some(k) = [
            ("select_levels", &levels),
            ("select_temperature", &temperature),
            ("pilot_n", &pilot_n),
            ("pilot_steps", &pilot_steps),
            ("pilot_eval_n", &pilot_eval_n),
        ]
        .iter()
        .find_map(|(k, v)| v.is_some().then_some(*k))
        {
            return Err(usage!("'{k}' belongs to the adaptive strategy: give 'select' (pilot, min_loss, softmin) with it, or drop it"));
        }
        return Ok(None);
    };
    let strategy: Strategy = serde_json::from_value(select.clone()).map_err(|e| usage!("{e}"))?;
    let levels: Vec<Level> = match levels {
        None => Level::all().collect(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| usage!("'select_levels' must be a list of levels 1-6, e.g. [1, 3, 6]: {e} (got {v})"))?,
    };
    if levels.len() < 2 {
        return Err(usage!("'select_levels' must list at least two levels, each 1-6 (got {levels:?})"));
    }
    let mut sorted = levels.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != levels {
        return Err(usage!("'select_levels' must be increasing without repeats, e.g. [1, 3, 6] (got {levels:?})"));
    }
    let temperature = match temperature {
        None => 0.1,
        Some(v) => v.as_f64().filter(|t| *t > 0.0 && t.is_finite()).ok_or_else(|| usage!("'select_temperature' must be a number > 0 (got {v})"))?,
    };
    let pilot_n = pilot_n.map(|v| parse("pilot_n", v)).transpose()?.map(|n| n as usize).or(train_n).unwrap_or(64);
    let pilot_steps = pilot_steps.map(|v| parse("pilot_steps", v)).transpose()?.map(|n| n as usize).or(max_steps).unwrap_or(20);
    let pilot_eval_n = pilot_eval_n.map(|v| parse("pilot_eval_n", v)).transpose()?.map(|n| n as usize).unwrap_or(20);
    for (k, v) in [("pilot_n", pilot_n), ("pilot_steps", pilot_steps), ("pilot_eval_n", pilot_eval_n)] {
        crate::error::in_range("select pilot", k, v, 1..=1_000_000)?;
    }
    Ok(Some(StrategyConfig { strategy, levels, temperature, pilot_n, pilot_steps, pilot_eval_n }))
}

impl PointConfig {
    /// Resolve a point's flat config. Unknown keys were rejected for the whole sweep already;
    /// what fails here (a wrong type, a value out of range) makes only this point invalid.
    pub fn resolve(config: &Map<String, Value>) -> Result<PointConfig> {
        let mut m = config.clone();
        let dataset: String = take(&mut m, "dataset")?.unwrap_or_else(|| "svamp".into());
        Task::parse(&dataset)?;
        let train_n: Option<usize> = take(&mut m, "train_n")?;
        let train_seed: u64 = take(&mut m, "train_seed")?.unwrap_or(1);
        let teacher: Option<String> = take(&mut m, "teacher")?;
        let level: Option<i64> = take(&mut m, "level")?;
        let format: Option<String> = take(&mut m, "format")?;
        let mix: Option<Vec<MixSpec>> = take(&mut m, "mix")?;
        let order = take(&mut m, "order")?;
        let corpus: Option<UserCorpusSpec> = take(&mut m, "corpus")?;
        // arith is generated: `train_n` is its size and `train_seed` picks the problems.
        let query = |ds: &str, teacher: Option<String>, level, format| {
            let arith = Task::parse(ds).is_ok_and(|t| t == Task::Arith);
            RationaleQuery {
                teacher,
                level,
                format,
                limit: if arith { None } else { train_n },
                seed: if arith { Some(train_seed) } else { train_n.map(|_| train_seed) },
                n: if arith { Some(train_n.unwrap_or(500)) } else { None },
            }
        };
        let max_steps = m.get("max_steps").and_then(Value::as_u64).map(|n| n as usize);
        let strategy = take_strategy(&mut m, train_n, max_steps)?;
        if let Some(st) = &strategy {
            if level.is_some() || mix.is_some() || order.is_some() {
                return Err(usage!("'select' chooses the levels itself (from 'select_levels'): drop 'level', 'mix' and 'order' beside it"));
            }
            if corpus.is_some() {
                return Err(usage!("'select' chooses among the release's levels: it cannot take a 'corpus'"));
            }
            let parts = st.levels.iter().map(|&l| (dataset.clone(), query(&dataset, teacher.clone(), Some(l.get().into()), format.clone()), 1.0)).collect();
            return Self::finish(m, (parts, Vec::new()), false, train_n, train_seed, None, strategy, dataset);
        }
        if let Some(c) = corpus {
            if teacher.is_some() || level.is_some() || format.is_some() || mix.is_some() {
                return Err(usage!("'corpus' is the training data: drop 'teacher', 'level', 'format' and 'mix' beside it (a mix part may name a corpus)"));
            }
            if !m.contains_key("eval_dataset") && !config.contains_key("dataset") {
                return Err(usage!("'corpus' trains on your file: say what to evaluate on with 'eval_dataset'"));
            }
            return Self::finish(m, (Vec::new(), vec![(c, 1.0)]), false, train_n, train_seed, order, None, dataset);
        }
        let (parts, mixed) = match mix {
            Some(parts) => {
                if teacher.is_some() || level.is_some() || format.is_some() {
                    return Err(usage!("'mix' names its parts' teacher, level and format: drop 'teacher', 'level' and 'format' beside it"));
                }
                if parts.is_empty() {
                    return Err(usage!("'mix' has no parts: give #{{level: 1, weight: 1.0}}, ..."));
                }
                if train_n.is_none() {
                    return Err(usage!("'mix' needs 'train_n': how many rationales the mixture holds"));
                }
                let (mut release, mut user) = (Vec::new(), Vec::new());
                for p in parts {
                    if let Some(c) = p.corpus {
                        if p.dataset.is_some() || p.teacher.is_some() || p.level.is_some() || p.format.is_some() {
                            return Err(usage!("a 'mix' part with a 'corpus' has only 'weight' beside it"));
                        }
                        user.push((c, p.weight));
                        continue;
                    }
                    let ds = p.dataset.unwrap_or_else(|| dataset.clone());
                    let q = RationaleQuery { limit: None, seed: None, ..query(&ds, p.teacher, p.level, p.format) };
                    release.push((ds, q, p.weight));
                }
                ((release, user), true)
            }
            None => ((vec![(dataset.clone(), query(&dataset, teacher, level, format), 1.0)], Vec::new()), false),
        };
        Self::finish(m, parts, mixed, train_n, train_seed, order, None, dataset)
    }

    /// The student, evaluation and SFT keys (what is left in `m`).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        mut m: Map<String, Value>,
        (parts, user): Parts,
        mixed: bool,
        train_n: Option<usize>,
        train_seed: u64,
        order: Option<crate::data::CurriculumOrder>,
        strategy: Option<StrategyConfig>,
        dataset: String,
    ) -> Result<PointConfig> {
        let student = take(&mut m, "student")?.unwrap_or_else(|| "default".into());
        let student_opts = StudentOptions { device: take(&mut m, "device")?, template: take(&mut m, "template")?, dtype: take(&mut m, "dtype")? };
        let train = take(&mut m, "train")?.unwrap_or(true);
        if strategy.is_some() && !train {
            return Err(usage!("'select' picks what to train on: it needs train: true"));
        }
        let eval_dataset: String = take(&mut m, "eval_dataset")?.unwrap_or_else(|| dataset.clone());
        let eval_task = Task::parse(&eval_dataset)?;
        let eval_n: Option<usize> = take(&mut m, "eval_n")?;
        let eval_seed: Option<u64> = take(&mut m, "eval_seed")?;
        let eval_data = if eval_task == Task::Arith {
            DatasetOptions { split: take(&mut m, "eval_split")?, limit: None, seed: Some(eval_seed.unwrap_or(2)), n: Some(eval_n.unwrap_or(100)) }
        } else {
            DatasetOptions { split: take(&mut m, "eval_split")?, limit: eval_n, seed: eval_n.map(|_| eval_seed.unwrap_or(1)), n: None }
        };
        let d = EvalOptions::default();
        let eval = EvalOptions {
            // Unset: evaluate's default (not written into the point's config, so its name stays).
            batch_size: take(&mut m, "eval_batch_size")?,
            max_new_tokens: take(&mut m, "eval_max_new_tokens")?,
            protocol: take(&mut m, "eval_protocol")?.unwrap_or(d.protocol),
            prompt: take(&mut m, "eval_prompt")?.unwrap_or(d.prompt),
            beams: take(&mut m, "eval_beams")?,
            decode_weights: take(&mut m, "eval_decode_weights")?.unwrap_or(d.decode_weights),
            ..d
        };
        if let Some(b) = eval.batch_size {
            crate::error::in_range("sweep", "eval_batch_size", b, 1..=4096)?;
        }
        let (method, distill) = take_method(&mut m)?;
        if strategy.is_some() && method == Method::Distill {
            return Err(usage!("'select' pilots with sft: it cannot choose levels for a 'distill' point"));
        }
        // What is left are SFT options.
        // Key by key first, so a wrong value's error names its key (serde's does not).
        for (k, v) in &m {
            let one: Map<String, Value> = [(k.clone(), v.clone())].into_iter().collect();
            serde_json::from_value::<SftOptions>(Value::Object(one)).map_err(|e| usage!("sft option '{k}': {e} (got {v})"))?;
        }
        let sft: SftOptions = serde_json::from_value(Value::Object(m)).map_err(|e| usage!("sft options: {e}"))?;
        sft.validate()?;
        Ok(PointConfig {
            parts,
            user,
            mixed,
            mix_n: train_n,
            train_seed,
            order,
            strategy,
            student,
            student_opts,
            train,
            method,
            distill,
            sft,
            eval_dataset,
            eval_data,
            eval,
        })
    }

    /// The data files this point reads (for provenance), or why the release lacks its corpus.
    pub fn check(&self, catalog: &Catalog) -> Result<Vec<std::path::PathBuf>> {
        let mut files = Vec::new();
        if self.train {
            for (ds, q, _) in &self.parts {
                files.extend(catalog.check(ds, q)?);
            }
        }
        let task = Task::parse(&self.eval_dataset)?;
        let split = self.eval_data.split.clone().unwrap_or_else(|| "test".into());
        files.extend(crate::data::loaders::task_files(task, &split).into_iter().map(|f| catalog.dir.path(f)));
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// The user corpora, each read through the sandbox: the spec then names the checked real
    /// path, and the files are returned for provenance. A file outside the read roots, or one
    /// that does not read as a corpus, makes the point invalid before anything runs.
    pub fn check_corpora(&mut self, ws: &crate::lab::Workspace) -> Result<Vec<std::path::PathBuf>> {
        let mut files = Vec::new();
        for (spec, _) in self.user.iter_mut() {
            let real = ws.readable(&spec.split().0, "sweep: corpus")?;
            *spec = spec.at(&real);
            spec.read()?;
            files.push(real);
        }
        Ok(files)
    }

    /// The training corpus: one query or user corpus (`train_n` of it), or the mixture, then the
    /// curriculum order.
    pub fn corpus(&self, catalog: &Catalog) -> Result<crate::data::Corpus> {
        let mut corpus = if self.mixed {
            let mut parts =
                self.parts.iter().map(|(ds, q, w)| Ok(crate::data::MixPart { corpus: catalog.rationales(ds, q)?, weight: *w })).collect::<Result<Vec<_>>>()?;
            for (spec, w) in &self.user {
                parts.push(crate::data::MixPart { corpus: spec.read()?, weight: *w });
            }
            crate::data::Corpus::mix(&parts, self.mix_n.unwrap_or(0), self.train_seed)?
        } else if let Some((spec, _)) = self.user.first() {
            let c = spec.read()?;
            match self.mix_n {
                Some(n) if n < c.len() => c.sample(n, self.train_seed)?,
                _ => c,
            }
        } else {
            let (ds, q, _) = &self.parts[0];
            catalog.rationales(ds, q)?
        };
        if let Some(o) = self.order {
            corpus = corpus.ordered(o, self.train_seed);
        }
        if corpus.is_empty() {
            return Err(Error::usage("the training corpus is empty"));
        }
        Ok(corpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// `method` picks the map it uses (the other is dropped, so one base serves a method grid);
    /// without `method` a `kd` or `distill` map names it; a method without its map, both maps
    /// without `method`, or a bad `distill` map is an error; a point without any is plain SFT.
    #[test]
    fn method_keys_choose_how_a_point_trains() {
        let kd = serde_json::json!({"logits": "/x/store", "alpha": 0.3});
        let distill = serde_json::json!({"teacher": "runs/t", "beta": 0.0, "lmbda": 1.0});
        let base = |extra: Value| {
            let mut m = map(serde_json::json!({"dataset": "arith", "max_steps": 2}));
            m.extend(map(extra));
            PointConfig::resolve(&m)
        };
        let plain = base(serde_json::json!({})).unwrap();
        assert_eq!((plain.method, plain.sft.kd.is_none(), plain.distill.is_none()), (Method::Sft, true, true));
        let both = serde_json::json!({"kd": kd, "distill": distill});
        let sft = base(serde_json::json!({"method": "sft", "kd": kd, "distill": distill})).unwrap();
        assert_eq!((sft.method, sft.sft.kd.is_none(), sft.distill.is_none()), (Method::Sft, true, true));
        let k = base(serde_json::json!({"method": "kd", "kd": kd, "distill": distill})).unwrap();
        assert_eq!((k.method, k.sft.kd.as_ref().map(|k| k.alpha), k.distill.is_none()), (Method::Kd, Some(0.3), true));
        let d = base(serde_json::json!({"method": "distill", "kd": kd, "distill": distill})).unwrap();
        let spec = d.distill.unwrap();
        assert_eq!(
            (d.method, d.sft.kd.is_none(), spec.teacher.as_str(), spec.opts.beta, spec.opts.lmbda, spec.opts.max_new_tokens),
            (Method::Distill, true, "runs/t", 0.0, 1.0, 128)
        );
        assert_eq!(base(serde_json::json!({"kd": kd})).unwrap().method, Method::Kd);
        assert_eq!(base(serde_json::json!({"distill": distill})).unwrap().method, Method::Distill);
        for (extra, msg) in [
            (both, "say which with 'method'"),
            (serde_json::json!({"method": "kd"}), "method 'kd' needs 'kd'"),
            (serde_json::json!({"method": "distill"}), "method 'distill' needs 'distill'"),
            (serde_json::json!({"distill": {"beta": 0.5}}), "'distill' needs 'teacher'"),
            (serde_json::json!({"distill": {"teacher": "t", "lmbda": 2.0}}), "'lmbda' must be in 0..=1"),
            (serde_json::json!({"distill": {"teacher": "t", "alpha": 1.0}}), "unknown field `alpha`"),
            (serde_json::json!({"method": "gkd"}), "gkd"),
        ] {
            let e = base(extra.clone()).unwrap_err().to_string();
            assert!(e.contains(msg), "{extra}: {e}");
        }
        let keys = known_keys();
        assert!(["method", "kd", "distill"].iter().all(|k| keys.iter().filter(|x| x == k).count() == 1), "{keys:?}");
    }

    #[test]
    fn resolves_flat_keys() {
        let p = PointConfig::resolve(&map(serde_json::json!({"dataset": "arith", "level": 3, "train_n": 8, "lr": 1e-4, "max_steps": 2, "eval_n": 4}))).unwrap();
        assert_eq!(p.parts[0].1.n, Some(8));
        assert_eq!(p.parts[0].1.level, Some(3));
        assert_eq!((p.sft.lr, p.sft.max_steps), (1e-4, Some(2)));
        assert_eq!((p.eval_data.n, p.eval_data.seed), (Some(4), Some(2)));
        let e = PointConfig::resolve(&map(serde_json::json!({"lr": "fast"}))).unwrap_err().to_string();
        assert!(e.contains("sft option 'lr'") && e.contains("fast"), "{e}");
        let e = PointConfig::resolve(&map(serde_json::json!({"lr": 5.0}))).unwrap_err().to_string();
        assert!(e.contains("'lr' must be in"), "{e}");
        let e = PointConfig::resolve(&map(serde_json::json!({"mix": [{"level": 1}], "level": 2}))).unwrap_err().to_string();
        assert!(e.contains("drop 'teacher', 'level'"), "{e}");
        assert!(known_keys().contains(&"shuffle".to_string()) && known_keys().contains(&"pack".to_string()) && known_keys().contains(&"max_steps".to_string()));
        assert!(known_keys().contains(&LOG_TO.to_string()), "log_to is never serialised, but a key all the same");
    }

    #[test]
    fn strategy_keys_parse_and_check() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert!(take_strategy(&mut m(serde_json::json!({})), None, None).unwrap().is_none());
        let s = take_strategy(&mut m(serde_json::json!({"select": "pilot", "select_levels": [1, 3]})), Some(8), Some(2)).unwrap().unwrap();
        assert_eq!(
            (s.strategy, s.levels.iter().map(|l| l.get()).collect::<Vec<_>>(), s.pilot_n, s.pilot_steps, s.pilot_eval_n),
            (Strategy::Pilot, vec![1, 3], 8, 2, 20)
        );
        let e = take_strategy(&mut m(serde_json::json!({"select": "best"})), None, None).unwrap_err().to_string();
        assert!(e.contains("pilot") && e.contains("min_loss"), "{e}");
        let e = take_strategy(&mut m(serde_json::json!({"pilot_n": 4})), None, None).unwrap_err().to_string();
        assert!(e.contains("give 'select'"), "{e}");
        let e = take_strategy(&mut m(serde_json::json!({"select": "softmin", "select_temperature": 0})), None, None).unwrap_err().to_string();
        assert!(e.contains("> 0"), "{e}");
        let e = take_strategy(&mut m(serde_json::json!({"select": "min_loss", "select_levels": [1, 9]})), None, None).unwrap_err().to_string();
        assert!(e.contains("'select_levels'") && e.contains("got 9"), "{e}");
        let e = take_strategy(&mut m(serde_json::json!({"select": "min_loss", "select_levels": [3]})), None, None).unwrap_err().to_string();
        assert!(e.contains("at least two"), "{e}");
        let e = take_strategy(&mut m(serde_json::json!({"select": "min_loss", "select_levels": [3, 1]})), None, None).unwrap_err().to_string();
        assert!(e.contains("increasing"), "{e}");
    }
}
