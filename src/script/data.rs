//! Rhai bindings for data, CoT structure, extraction, contamination and scoring.

use std::path::PathBuf;

use rhai::{Array, Dynamic, Engine, Map};

use super::{options, rt, Context, RhaiResult};
use crate::answer::{extract_answer, judge};
use crate::lab::Workspace;
use crate::cot::{measure, split_steps};
use crate::data::contamination;
use crate::data::loaders::load_questions;
use crate::data::{load_dataset, AnswerKind, Catalog, Corpus, Dataset, DatasetOptions, Example, RationaleQuery, Task};
use crate::eval::score_predictions;
use crate::results::tables::{catalog_frame, corpus_frame, dataset_frame};
use crate::results::Frame;
use crate::usage;

fn example_map(e: &Example) -> Map {
    let mut m = Map::new();
    m.insert("id".into(), e.id.clone().into());
    m.insert("question".into(), e.question.clone().into());
    m.insert("choices".into(), e.choices.iter().map(|c| Dynamic::from(c.clone())).collect::<Array>().into());
    m.insert("answer".into(), e.answer.clone().into());
    m.insert("kind".into(), e.kind.name().into());
    m
}

fn opt_str(s: Option<String>) -> Dynamic {
    s.map(Dynamic::from).unwrap_or(Dynamic::UNIT)
}

/// Questions from a Dataset, a Corpus, an array of strings, or a file path.
fn questions(ws: &Workspace, v: Dynamic, what: &str) -> RhaiResult<Vec<String>> {
    if v.is::<Dataset>() {
        return Ok(v.cast::<Dataset>().examples.into_iter().map(|e| e.question).collect());
    }
    if v.is::<Corpus>() {
        return Ok(v.cast::<Corpus>().rationales.into_iter().map(|r| r.question).collect());
    }
    if v.is_string() {
        let p = PathBuf::from(v.into_string().unwrap());
        return load_questions(&ws.readable(&p, what).map_err(rt)?).map_err(rt);
    }
    if v.is_array() {
        return v
            .into_array()
            .unwrap()
            .into_iter()
            .map(|x| x.into_string().map_err(|t| rt(usage!("{what}: array items must be strings, found {t}"))))
            .collect();
    }
    Err(rt(usage!("{what}: expected a Dataset, a Corpus, an array of questions or a file path, found {}", v.type_name())))
}

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ContaminationOptions {
    threshold: Option<f64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ScoreOptions {
    split: Option<String>,
    protocol: crate::answer::Protocol,
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<Dataset>("Dataset");
    engine.register_type_with_name::<Corpus>("Corpus");

    // --- datasets
    let dir = ctx.data_dir.clone();
    engine.register_fn("dataset", move |name: &str| -> RhaiResult<Dataset> {
        load_dataset(&dir, name, &DatasetOptions::default()).map_err(rt)
    });
    let dir = ctx.data_dir.clone();
    engine.register_fn("dataset", move |name: &str, opts: Map| -> RhaiResult<Dataset> {
        load_dataset(&dir, name, &options::<DatasetOptions>(opts)?).map_err(rt)
    });
    engine.register_fn("len", |d: &mut Dataset| d.len() as i64);
    engine.register_get("name", |d: &mut Dataset| d.name.clone());
    engine.register_get("split", |d: &mut Dataset| d.split.clone());
    engine.register_get("kind", |d: &mut Dataset| d.task.kind().name().to_string());
    engine.register_indexer_get(|d: &mut Dataset, i: i64| -> RhaiResult<Map> {
        d.examples.get(i as usize).map(example_map).ok_or_else(|| rt(usage!("index {i} out of range: the dataset has {} examples", d.len())))
    });
    engine.register_fn("examples", |d: &mut Dataset| -> Array { d.examples.iter().map(|e| example_map(e).into()).collect() });
    engine.register_fn("df", |d: &mut Dataset| -> RhaiResult<Frame> { dataset_frame(d).map_err(rt) });
    engine.register_fn("split", |d: &mut Dataset, test_fraction: f64, seed: i64| -> RhaiResult<Map> {
        let (train, test) = d.split_off(test_fraction, seed as u64).map_err(rt)?;
        let mut m = Map::new();
        m.insert("train".into(), Dynamic::from(train));
        m.insert("test".into(), Dynamic::from(test));
        Ok(m)
    });
    engine.register_fn("to_string", |d: &mut Dataset| format!("Dataset({} {}, {} examples)", d.name, d.split, d.len()));
    engine.register_fn("to_debug", |d: &mut Dataset| format!("Dataset({} {}, {} examples)", d.name, d.split, d.len()));

    // --- rationales and the catalog
    let dir = ctx.data_dir.clone();
    engine.register_fn("rationales", move |name: &str, opts: Map| -> RhaiResult<Corpus> {
        Catalog::new(dir.clone()).rationales(name, &options::<RationaleQuery>(opts)?).map_err(rt)
    });
    let dir = ctx.data_dir.clone();
    engine.register_fn("catalog", move |name: &str| -> RhaiResult<Frame> {
        let task = Task::parse(name).map_err(rt)?;
        catalog_frame(&Catalog::new(dir.clone()), Some(task)).map_err(rt)
    });
    let dir = ctx.data_dir.clone();
    engine.register_fn("catalog", move || -> RhaiResult<Frame> { catalog_frame(&Catalog::new(dir.clone()), None).map_err(rt) });
    engine.register_fn("len", |c: &mut Corpus| c.len() as i64);
    engine.register_get("teacher", |c: &mut Corpus| opt_str(c.teacher.map(|t| t.name().to_string())));
    engine.register_get("level", |c: &mut Corpus| c.level.map(|l| Dynamic::from_int(l as i64)).unwrap_or(Dynamic::UNIT));
    engine.register_get("format", |c: &mut Corpus| c.format.name().to_string());
    engine.register_get("source", |c: &mut Corpus| c.source.clone());
    engine.register_get("skipped", |c: &mut Corpus| c.skipped as i64);
    engine.register_indexer_get(|c: &mut Corpus, i: i64| -> RhaiResult<Map> {
        let r = c.rationales.get(i as usize).ok_or_else(|| rt(usage!("index {i} out of range: the corpus has {} rationales", c.len())))?;
        let mut m = Map::new();
        m.insert("id".into(), r.id.clone().into());
        m.insert("question".into(), r.question.clone().into());
        m.insert("gold".into(), opt_str(r.gold.clone()));
        m.insert("rationale".into(), r.text.clone().into());
        Ok(m)
    });
    engine.register_fn("df", |c: &mut Corpus| -> RhaiResult<Frame> { corpus_frame(c).map_err(rt) });
    let show = |c: &mut Corpus| {
        format!(
            "Corpus({} {} {}{}, {} rationales from {})",
            c.task.name(),
            c.teacher.map(|t| t.name()).unwrap_or("answer-only"),
            c.format.name(),
            c.level.map(|l| format!(" level {l}")).unwrap_or_default(),
            c.len(),
            c.source
        )
    };
    engine.register_fn("to_string", show);
    engine.register_fn("to_debug", show);

    // --- CoT structure and answers
    engine.register_fn("measure_cot", |text: &str| -> RhaiResult<Dynamic> {
        rhai::serde::to_dynamic(measure(text))
    });
    engine.register_fn("coarsen", |text: &str, steps: i64| crate::cot::coarsen(text, steps.max(1) as usize));
    engine.register_fn("coarsen", |c: &mut Corpus, steps: i64| -> Corpus {
        let mut out = c.clone();
        for r in out.rationales.iter_mut() {
            r.text = crate::cot::coarsen(&r.text, steps.max(1) as usize);
        }
        out.source = format!("{} (coarsened to {steps} steps)", c.source);
        out
    });
    engine.register_fn("cot_steps", |text: &str| -> Array { split_steps(text).into_iter().map(Dynamic::from).collect() });
    engine.register_fn("extract_answer", |text: &str, kind: &str| -> RhaiResult<Dynamic> {
        let kind = AnswerKind::parse(kind).map_err(rt)?;
        Ok(opt_str(extract_answer(text, kind)))
    });
    engine.register_fn("is_correct", |output: &str, gold: &str, kind: &str| -> RhaiResult<bool> {
        let kind = AnswerKind::parse(kind).map_err(rt)?;
        Ok(judge(output, gold, kind).correct)
    });

    // --- contamination and scoring
    let ws = ctx.workspace();
    let contam = move |train: Dynamic, test: Dynamic, threshold: f64| -> RhaiResult<Dynamic> {
        let train = questions(&ws, train, "contamination: train")?;
        let test = questions(&ws, test, "contamination: test")?;
        let report = contamination::check(&train, &test, threshold).map_err(rt)?;
        let mut m: Map = rhai::serde::to_dynamic(&report)?.cast::<Map>();
        m.insert("summary".into(), report.summary().into());
        Ok(Dynamic::from_map(m))
    };
    let c2 = contam.clone();
    engine.register_fn("contamination", move |train: Dynamic, test: Dynamic| c2(train, test, 0.8));
    engine.register_fn("contamination", move |train: Dynamic, test: Dynamic, opts: Map| -> RhaiResult<Dynamic> {
        let o: ContaminationOptions = options(opts)?;
        contam(train, test, o.threshold.unwrap_or(0.8))
    });
    let ws = ctx.workspace();
    let score = move |task: &str, path: &str, split: Option<String>, protocol: crate::answer::Protocol| -> RhaiResult<Dynamic> {
        let ds = load_dataset(&ws.data_dir, task, &DatasetOptions { split, ..Default::default() }).map_err(rt)?;
        let path = ws.readable(std::path::Path::new(path), "score_predictions").map_err(rt)?;
        rhai::serde::to_dynamic(score_predictions(&ds, &path, protocol).map_err(rt)?)
    };
    let s2 = score.clone();
    engine.register_fn("score_predictions", move |task: &str, path: &str| s2(task, path, None, crate::answer::Protocol::Paper));
    engine.register_fn("score_predictions", move |task: &str, path: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: ScoreOptions = options(opts)?;
        score(task, path, o.split, o.protocol)
    });
}
