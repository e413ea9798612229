//! Rhai bindings for students and SFT.

use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Dynamic, Engine, Map};

use super::{options, rt, Context, RhaiResult};
use crate::data::Corpus;
use crate::model::{device, resolve, Student};
use crate::train::export::export_run;
use crate::train::{sft, RunDir, SftOptions};
use crate::usage;

/// A loaded student, shared (its weights are `Var`s and train in place).
#[derive(Clone)]
pub struct StudentH(pub Arc<Student>);

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct StudentOptions {
    device: Option<String>,
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<StudentH>("Student");
    let load = |spec: &str, dev: &str| -> RhaiResult<StudentH> {
        let path = resolve(spec).map_err(rt)?;
        let d = device(dev).map_err(rt)?;
        Ok(StudentH(Arc::new(Student::load(&path, &d).map_err(rt)?)))
    };
    engine.register_fn("student", move |spec: &str| load(spec, "cpu"));
    engine.register_fn("student", move |spec: &str, opts: Map| -> RhaiResult<StudentH> {
        let o: StudentOptions = options(opts)?;
        load(spec, o.device.as_deref().unwrap_or("cpu"))
    });
    engine.register_get("name", |s: &mut StudentH| s.0.name.clone());
    engine.register_get("num_params", |s: &mut StudentH| s.0.model.num_params() as i64);
    engine.register_get("template", |s: &mut StudentH| s.0.template.name().to_string());
    let show = |s: &mut StudentH| format!("Student({}, {:.1}M params, {})", s.0.name, s.0.model.num_params() as f64 / 1e6, s.0.template.name());
    engine.register_fn("to_string", show);
    engine.register_fn("to_debug", show);

    let runs = ctx.runs_dir.clone();
    engine.register_fn("sft", move |s: &mut StudentH, corpus: Corpus, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name = opts
            .remove("run")
            .ok_or_else(|| rt(usage!("sft: give the run a name: #{{run: \"svamp-l3\", ...}} (its dir is runs/<name>)")))?
            .into_string()
            .map_err(|t| rt(usage!("sft: 'run' must be a string, found {t}")))?;
        let stop_after = match opts.remove("stop_after") {
            Some(v) => Some(v.as_int().map_err(|t| rt(usage!("sft: 'stop_after' must be an integer, found {t}")))? as usize),
            None => None,
        };
        let o: SftOptions = options(opts)?;
        let pairs = corpus.pairs();
        let run_config = crate::train::sft::run_config(&s.0, &corpus, &o);
        let run = RunDir::new(runs.join(&name));
        let report = sft(&s.0, &pairs, &o, &run, run_config, stop_after).map_err(rt)?;
        rhai::serde::to_dynamic(report)
    });

    let runs = ctx.runs_dir.clone();
    engine.register_fn("evaluate", move |s: &mut StudentH, ds: crate::data::Dataset, opts: Map| -> RhaiResult<Dynamic> {
        let mut opts = opts;
        let name = match opts.remove("name") {
            Some(v) => Some(v.into_string().map_err(|t| rt(usage!("evaluate: 'name' must be a string, found {t}")))?),
            None => None,
        };
        let o: crate::eval::run::EvalOptions = options(opts)?;
        let dir = match name {
            Some(n) => runs.join(n),
            None => crate::eval::run::default_dir(&runs, &ds.name, &ds.split.replace(':', "-"), &s.0.source),
        };
        rhai::serde::to_dynamic(crate::eval::run::evaluate(&s.0, &ds, &o, &dir).map_err(rt)?)
    });
    engine.register_fn("generate", |s: &mut StudentH, question: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: crate::model::generate::GenOptions = options(opts)?;
        let g = crate::model::generate::generate(&s.0, &[question.to_string()], &o).map_err(rt)?;
        rhai::serde::to_dynamic(&g[0])
    });

    let runs = ctx.runs_dir.clone();
    let out = ctx.out.clone();
    engine.register_fn("export_model", move |run: &str, name: &str| -> RhaiResult<String> {
        let run_dir = if PathBuf::from(run).is_dir() { PathBuf::from(run) } else { runs.join(run) };
        let Some(o) = &out else {
            return Err(rt(usage!("export_model needs an output dir: run with `cotlab run --out DIR`")));
        };
        // Written into the staging area; published to OUT/<name> when the script succeeds.
        let target = o.path_for(name).map_err(rt)?;
        export_run(&run_dir, &target).map_err(rt)?;
        Ok(o.root().join(name).display().to_string())
    });
}
