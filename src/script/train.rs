//! Rhai bindings for students and SFT: argument adapters over `lab::Workspace`.

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map};

use super::{options, rt, Context, RhaiResult};
use crate::data::Corpus;
use crate::lab::StudentOptions;
use crate::model::Student;
use crate::train::export::export_run;
use crate::train::sft::sft;
use crate::train::{RunDir, SftOptions};
use crate::usage;

/// A loaded student, shared (its weights are `Var`s and train in place).
#[derive(Clone)]
pub struct StudentH(pub Arc<Student>);

/// Remove a string option from a map; `what` names the function in errors.
pub(super) fn take_str(m: &mut Map, key: &str, what: &str) -> RhaiResult<Option<String>> {
    match m.remove(key) {
        Some(v) => Ok(Some(v.into_string().map_err(|t| rt(usage!("{what}: '{key}' must be a string, found {t}")))?)),
        None => Ok(None),
    }
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<StudentH>("Student");
    let ws = ctx.workspace();
    let w = ws.clone();
    engine.register_fn("student", move |spec: &str| -> RhaiResult<StudentH> {
        Ok(StudentH(Arc::new(w.student(spec, &StudentOptions::default()).map_err(rt)?)))
    });
    let w = ws.clone();
    engine.register_fn("student", move |spec: &str, opts: Map| -> RhaiResult<StudentH> {
        Ok(StudentH(Arc::new(w.student(spec, &options(opts)?).map_err(rt)?)))
    });
    engine.register_get("name", |s: &mut StudentH| s.0.name.clone());
    engine.register_get("num_params", |s: &mut StudentH| s.0.model.num_params() as i64);
    engine.register_get("template", |s: &mut StudentH| s.0.template.name().to_string());
    engine.register_get("family", |s: &mut StudentH| s.0.config.family.name().to_string());
    let show = |s: &mut StudentH| format!("Student({}, {:.1}M params, {})", s.0.name, s.0.model.num_params() as f64 / 1e6, s.0.template.name());
    engine.register_fn("to_string", show);
    engine.register_fn("to_debug", show);

    let w = ws.clone();
    engine.register_fn("sft", move |s: &mut StudentH, corpus: Corpus, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name = take_str(&mut opts, "run", "sft")?
            .ok_or_else(|| rt(usage!("sft: give the run a name: #{{run: \"svamp-l3\", ...}} (its dir is runs/<name>)")))?;
        let run = RunDir::new(w.run_dir(&name).map_err(rt)?);
        let stop_after = match opts.remove("stop_after") {
            Some(v) => {
                let k = v.as_int().map_err(|t| rt(usage!("sft: 'stop_after' must be an integer, found {t}")))?;
                Some(usize::try_from(k).ok().filter(|&k| k > 0).ok_or_else(|| rt(usage!("sft: 'stop_after' must be at least 1, got {k}")))?)
            }
            None => None,
        };
        let o: SftOptions = options(opts)?;
        let report = sft(&s.0, &corpus, &o, &run, stop_after).map_err(rt)?;
        rhai::serde::to_dynamic(report)
    });

    let w = ws.clone();
    engine.register_fn("evaluate", move |s: &mut StudentH, ds: crate::data::Dataset, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name = take_str(&mut opts, "name", "evaluate")?;
        let o: crate::eval::run::EvalOptions = options(opts)?;
        let dir = w.eval_dir(name.as_deref(), &ds, &s.0).map_err(rt)?;
        rhai::serde::to_dynamic(crate::eval::run::evaluate(&s.0, &ds, &o, &dir).map_err(rt)?)
    });
    engine.register_fn("generate", |s: &mut StudentH, question: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: crate::model::generate::GenOptions = options(opts)?;
        let g = crate::model::generate::generate(&s.0, &[question.to_string()], &o).map_err(rt)?;
        rhai::serde::to_dynamic(&g[0])
    });

    let w = ws.clone();
    engine.register_fn("export_model", move |run: &str, name: &str| -> RhaiResult<String> {
        let run_dir = w.find_run(run).map_err(rt)?;
        let Some(o) = &w.out else {
            return Err(rt(usage!("export_model needs an output dir: run with `cotlab run --out DIR`")));
        };
        // Written into the staging area; published to OUT/<name> when the script succeeds.
        let target = o.path_for(name).map_err(rt)?;
        export_run(&run_dir, &target).map_err(rt)?;
        Ok(o.root().join(name).display().to_string())
    });
}
