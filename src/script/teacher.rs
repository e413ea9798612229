//! Rhai bindings for teachers: argument adapters over `lab::Workspace::teacher`.

use std::sync::Arc;

use rhai::{Engine, Map};

use super::train::{take_str, StudentH};
use super::{options, rt, Context, RhaiResult};
use crate::data::{Corpus, Dataset};
use crate::lab::TeacherSpec;
use crate::results::Frame;
use crate::teacher::{AskOptions, AskReport, Teacher};
use crate::usage;

#[derive(Clone)]
pub struct TeacherH(pub Arc<Teacher>);

#[derive(Clone)]
pub struct AskH(pub Arc<AskReport>, pub Dataset);

fn no_more(opts: &Map, what: &str, known: &str) -> RhaiResult<()> {
    match opts.keys().next() {
        Some(k) => Err(rt(usage!("{what}: unknown option '{k}' ({known})"))),
        None => Ok(()),
    }
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<TeacherH>("Teacher");
    engine.register_type_with_name::<AskH>("TeacherRun");
    let ws = ctx.workspace();
    let w = ws.clone();
    engine.register_fn("teacher", move |kind: &str, opts: Map| -> RhaiResult<TeacherH> {
        let mut opts = opts;
        let what = format!("teacher(\"{kind}\")");
        let spec = match kind {
            "openai" => {
                let cache = take_str(&mut opts, "cache", &what)?;
                TeacherSpec::OpenAi { options: options(opts)?, cache }
            }
            "local" => {
                let cache = take_str(&mut opts, "cache", &what)?;
                let model = take_str(&mut opts, "model", &what)?.unwrap_or_else(|| "default".into());
                let device = take_str(&mut opts, "device", &what)?;
                no_more(&opts, &what, "model, device, cache")?;
                TeacherSpec::Local { model, device, cache }
            }
            "replay" => {
                let dataset = take_str(&mut opts, "dataset", &what)?.ok_or_else(|| rt(usage!("{what}: give 'dataset'")))?;
                let teacher = take_str(&mut opts, "teacher", &what)?.unwrap_or_else(|| "gpt-4o".into());
                no_more(&opts, &what, "dataset, teacher")?;
                TeacherSpec::Replay { dataset, teacher }
            }
            other => return Err(rt(usage!("unknown teacher kind '{other}': expected openai, local or replay"))),
        };
        Ok(TeacherH(Arc::new(w.teacher(spec).map_err(rt)?)))
    });
    let w = ws.clone();
    engine.register_fn("teacher", move |s: &mut StudentH, opts: Map| -> RhaiResult<TeacherH> {
        // A loaded student as a local teacher.
        let mut opts = opts;
        let cache = take_str(&mut opts, "cache", "teacher(student)")?;
        no_more(&opts, "teacher(student)", "cache")?;
        Ok(TeacherH(Arc::new(w.student_teacher(s.0.clone(), cache.as_deref()).map_err(rt)?)))
    });
    let w = ws.clone();
    engine.register_fn("ask", move |t: &mut TeacherH, ds: Dataset, opts: Map| -> RhaiResult<AskH> {
        let o: AskOptions = options(opts)?;
        Ok(AskH(Arc::new(t.0.ask_with(&ds, &o, Some(&w.data_dir)).map_err(rt)?), ds))
    });
    engine.register_fn("to_string", |t: &mut TeacherH| format!("Teacher({} {})", t.0.kind, t.0.model));
    engine.register_get("requests", |r: &mut AskH| r.0.requests as i64);
    engine.register_get("cache_hits", |r: &mut AskH| r.0.cache_hits as i64);
    engine.register_get("failed", |r: &mut AskH| r.0.failed as i64);
    engine.register_get("dropped", |r: &mut AskH| r.0.dropped as i64);
    engine.register_get("prompt_tokens", |r: &mut AskH| r.0.prompt_tokens as i64);
    engine.register_get("completion_tokens", |r: &mut AskH| r.0.completion_tokens as i64);
    engine.register_get("cost_usd", |r: &mut AskH| r.0.cost_usd);
    engine.register_fn("len", |r: &mut AskH| r.0.rows.len() as i64);
    engine.register_fn("df", |r: &mut AskH| -> RhaiResult<Frame> { r.0.frame().map_err(rt) });
    engine.register_fn("corpus", |r: &mut AskH| -> Corpus { r.0.corpus(&r.1) });
    engine.register_fn("to_string", |r: &mut AskH| {
        format!("TeacherRun({} rationales, {} requests, {} cached, {} failed)", r.0.rows.len(), r.0.requests, r.0.cache_hits, r.0.failed)
    });
}
