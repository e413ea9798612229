//! Rhai bindings for sweeps, results across runs and corpus mixing: argument adapters over
//! `experiment`, `results::runs` and `data::corpus`.

use std::path::PathBuf;

use rhai::{Array, Dynamic, Engine, Map};

use super::{options, rt, Context, RhaiResult};
use crate::data::{Corpus, CurriculumOrder, MixPart};
use crate::experiment::{sweep_in, SweepSpec};
use crate::lab::Workspace;
use crate::results::runs::{aggregate_seeds, load_runs};
use crate::results::Frame;
use crate::usage;

/// A path as given, else a name under the runs dir; checked against the read roots.
fn results_path(ws: &Workspace, p: &str) -> RhaiResult<PathBuf> {
    let direct = PathBuf::from(p);
    let path = if direct.exists() { direct } else { ws.run_dir(p).map_err(rt)? };
    ws.readable(&path, "results").map_err(rt)
}

fn strings(a: Array, what: &str) -> RhaiResult<Vec<String>> {
    a.into_iter().map(|x| x.into_string().map_err(|t| rt(usage!("{what}: expected strings, found {t}")))).collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MixOptions {
    n: usize,
    #[serde(default = "one")]
    seed: u64,
}

fn one() -> u64 {
    1
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    let ws = ctx.workspace();
    let w = ws.clone();
    let sweeps = ctx.sweeps.clone();
    engine.register_fn("sweep", move |spec: Map| -> RhaiResult<Map> {
        let spec: SweepSpec = options(spec)?;
        let r = sweep_in(&w, &spec, &sweeps).map_err(rt)?;
        let mut m = Map::new();
        m.insert("name".into(), r.name.into());
        m.insert("dir".into(), r.dir.display().to_string().into());
        for (k, v) in [
            ("total", r.total),
            ("done", r.done),
            ("already_done", r.already_done),
            ("ran", r.ran),
            ("failed", r.failed),
            ("invalid", r.invalid),
            ("pending", r.pending),
        ] {
            m.insert(k.into(), Dynamic::from_int(v as i64));
        }
        m.insert("stopped".into(), r.stopped.into());
        m.insert("seconds".into(), r.seconds.into());
        m.insert("points".into(), rhai::serde::to_dynamic(&r.points)?);
        m.insert("results".into(), Dynamic::from(r.results));
        Ok(m)
    });

    let w = ws.clone();
    engine.register_fn("results", move |path: &str| -> RhaiResult<Frame> { load_runs(&[results_path(&w, path)?]).map_err(rt) });
    let w = ws.clone();
    engine.register_fn("results", move |paths: Array| -> RhaiResult<Frame> {
        let ps = strings(paths, "results")?.iter().map(|p| results_path(&w, p)).collect::<RhaiResult<Vec<_>>>()?;
        load_runs(&ps).map_err(rt)
    });
    engine.register_fn("aggregate_seeds", |f: &mut Frame| -> RhaiResult<Frame> { aggregate_seeds(f, &["seed".to_string()]).map_err(rt) });
    engine.register_fn("aggregate_seeds", |f: &mut Frame, seed_columns: Array| -> RhaiResult<Frame> {
        aggregate_seeds(f, &strings(seed_columns, "aggregate_seeds")?).map_err(rt)
    });

    // --- corpora as values (`concat` of corpora shares the name with frames: see frame.rs)
    engine.register_fn("+", |a: Corpus, b: Corpus| -> RhaiResult<Corpus> { Corpus::concat(&[a, b]).map_err(rt) });
    engine.register_fn("sample", |c: &mut Corpus, n: i64, seed: i64| -> RhaiResult<Corpus> {
        let n = usize::try_from(n).map_err(|_| rt(usage!("sample: n must be positive, got {n}")))?;
        c.sample(n, seed as u64).map_err(rt)
    });
    engine.register_fn("mix", |parts: Array, opts: Map| -> RhaiResult<Corpus> {
        let o: MixOptions = options(opts)?;
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut m = p.try_cast::<Map>().ok_or_else(|| rt(usage!("mix: part {i} must be #{{corpus: c, weight: 1.0}}")))?;
                let corpus = m
                    .remove("corpus")
                    .and_then(|c| c.try_cast::<Corpus>())
                    .ok_or_else(|| rt(usage!("mix: part {i} needs 'corpus': a Corpus from rationales(...)")))?;
                let weight = match m.remove("weight") {
                    None => 1.0,
                    Some(w) => w.as_float().or_else(|_| w.as_int().map(|i| i as f64)).map_err(|t| rt(usage!("mix: part {i}: 'weight' must be a number, found {t}")))?,
                };
                if let Some(k) = m.keys().next() {
                    return Err(rt(usage!("mix: part {i}: unknown key '{k}' (a part has 'corpus' and 'weight')")));
                }
                Ok(MixPart { corpus, weight })
            })
            .collect::<RhaiResult<Vec<_>>>()?;
        Corpus::mix(&parts, o.n, o.seed).map_err(rt)
    });
    let order = |c: &mut Corpus, order: &str, seed: i64| -> RhaiResult<Corpus> {
        let o = CurriculumOrder::try_from(order.to_string()).map_err(|e| rt(usage!("{e}")))?;
        Ok(c.ordered(o, seed as u64))
    };
    engine.register_fn("order", move |c: &mut Corpus, o: &str| order(c, o, 1));
    engine.register_fn("order", order);
    engine.register_get("recipe", |c: &mut Corpus| c.recipe.as_ref().map(|r| Dynamic::from(r.text.clone())).unwrap_or(Dynamic::UNIT));
}

/// `concat([...])` of corpora (the frame binding hands arrays of corpora here).
pub(super) fn concat_corpora(items: Array) -> RhaiResult<Corpus> {
    let cs = items
        .into_iter()
        .map(|c| c.try_cast::<Corpus>().ok_or_else(|| rt(usage!("concat: expected an array of corpora (or of DataFrames), not a mix of both"))))
        .collect::<RhaiResult<Vec<_>>>()?;
    Corpus::concat(&cs).map_err(rt)
}
