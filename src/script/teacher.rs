//! Rhai bindings for teachers.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Engine, Map};

use super::train::StudentH;
use super::{options, rt, Context, RhaiResult};
use crate::data::{Corpus, Dataset};
use crate::model::{device, resolve, Student};
use crate::results::Frame;
use crate::teacher::cache::Cache;
use crate::teacher::openai::{OpenAi, OpenAiOptions};
use crate::teacher::{default_cache_path, AskOptions, AskReport, Backend, Teacher};
use crate::usage;

#[derive(Clone)]
pub struct TeacherH(pub Arc<Teacher>);

#[derive(Clone)]
pub struct AskH(pub Arc<AskReport>, pub Dataset);

fn take_str(m: &mut Map, k: &str) -> RhaiResult<Option<String>> {
    match m.remove(k) {
        Some(v) => Ok(Some(v.into_string().map_err(|t| rt(usage!("teacher: '{k}' must be a string, found {t}")))?)),
        None => Ok(None),
    }
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<TeacherH>("Teacher");
    engine.register_type_with_name::<AskH>("TeacherRun");
    let dir = ctx.data_dir.clone();
    engine.register_fn("teacher", move |kind: &str, opts: Map| -> RhaiResult<TeacherH> {
        let mut opts = opts;
        let cache_path = take_str(&mut opts, "cache")?.map(PathBuf::from).unwrap_or_else(default_cache_path);
        let cache = || -> RhaiResult<Option<Arc<Cache>>> { Ok(Some(Arc::new(Cache::open(&cache_path).map_err(rt)?))) };
        let t = match kind {
            "openai" => {
                let o: OpenAiOptions = options(opts)?;
                let model = o.model.clone();
                Teacher { kind: "openai".into(), model, backend: Backend::OpenAi(OpenAi::new(o).map_err(|e| rt(usage!("teacher: {e}")))?), cache: cache()? }
            }
            "local" => {
                let spec = take_str(&mut opts, "model")?.unwrap_or_else(|| "default".into());
                let dev = take_str(&mut opts, "device")?.unwrap_or_else(|| "cpu".into());
                if let Some(k) = opts.keys().next() {
                    return Err(rt(usage!("teacher(\"local\"): unknown option '{k}' (model, device, cache)")));
                }
                let s = Student::load(&resolve(&spec).map_err(rt)?, &device(&dev).map_err(rt)?).map_err(rt)?;
                Teacher { kind: "local".into(), model: s.source.display().to_string(), backend: Backend::Local(Arc::new(s)), cache: cache()? }
            }
            "replay" => {
                let dataset = take_str(&mut opts, "dataset")?.ok_or_else(|| rt(usage!("teacher(\"replay\"): give 'dataset'")))?;
                let teacher = take_str(&mut opts, "teacher")?.unwrap_or_else(|| "gpt-4o".into());
                if let Some(k) = opts.keys().next() {
                    return Err(rt(usage!("teacher(\"replay\"): unknown option '{k}' (dataset, teacher)")));
                }
                Teacher { kind: "replay".into(), model: teacher.clone(), backend: Backend::Replay { dir: dir.clone(), dataset, teacher }, cache: None }
            }
            other => return Err(rt(usage!("unknown teacher kind '{other}': expected openai, local or replay"))),
        };
        Ok(TeacherH(Arc::new(t)))
    });
    engine.register_fn("teacher", |s: &mut StudentH, opts: Map| -> RhaiResult<TeacherH> {
        // A loaded student as a local teacher.
        let mut opts = opts;
        let cache_path = take_str(&mut opts, "cache")?.map(PathBuf::from).unwrap_or_else(default_cache_path);
        let c = Arc::new(Cache::open(&cache_path).map_err(rt)?);
        Ok(TeacherH(Arc::new(Teacher { kind: "local".into(), model: s.0.source.display().to_string(), backend: Backend::Local(s.0.clone()), cache: Some(c) })))
    });
    engine.register_fn("ask", |t: &mut TeacherH, ds: Dataset, opts: Map| -> RhaiResult<AskH> {
        let o: AskOptions = options(opts)?;
        Ok(AskH(Arc::new(t.0.ask(&ds, &o).map_err(rt)?), ds))
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
