//! Rhai bindings for sweeps, results across runs and corpus mixing: argument adapters over
//! `experiment`, `results::runs` and `data::corpus`.

use std::path::PathBuf;

use rhai::{Array, Dynamic, Engine, Map};

use super::docs::{def, get};
use super::expr::ExprW;
use super::{options, rt, Context, RhaiResult};
use crate::data::{Corpus, CurriculumOrder, MixPart};
use crate::experiment::{sweep_in, SweepSpec};
use crate::lab::Workspace;
use crate::results::compare::against_baseline;
use crate::results::runs::{aggregate_seeds, load_losses, load_runs};
use crate::results::Frame;
use crate::usage;

/// A path as given, else a name under the runs dir; checked against the read roots.
fn results_path(ws: &Workspace, p: &str) -> RhaiResult<PathBuf> {
    let direct = PathBuf::from(p);
    let path = if direct.exists() { direct } else { ws.run_dir(p).map_err(rt)? };
    ws.readable(&path, "results").map_err(rt)
}

const COMPARE: &str = r#"Compare two evaluations on the same questions, `a` minus `b`: each an eval dir (a path or a
run name) or an `evaluate()` result. Returns `#{n, both, only_a, only_b, neither, diff, ci95_low,
ci95_high, mcnemar_p}`: the questions both / only `a` / only `b` / neither answered correctly,
the accuracy difference with a paired-bootstrap 95% interval (10000 resamples of the questions,
`seed` option, default 0), and McNemar's exact test (two-sided, on the questions the two disagree
on). Two evaluations on other questions, or under other protocols, are an error naming the
difference. The right test for settings scored on one question set: overlapping Wilson intervals
are not.

```rhai
let before = evaluate(student("default"), dataset("svamp", #{ limit: 100, seed: 1 }), #{ name: "before" });
let after = evaluate(student("runs/sft"), dataset("svamp", #{ limit: 100, seed: 1 }), #{ name: "after" });
let c = compare(after, before);
print(`+${c.diff} [${c.ci95_low}, ${c.ci95_high}], p = ${c.mcnemar_p}`);
```"#;

/// `compare(a, b[, opts])`: each side an eval dir (path or run name) or an `evaluate()` result map.
fn compare_evals(ws: &Workspace, a: Dynamic, b: Dynamic, opts: Map) -> RhaiResult<Map> {
    let dir = |side: Dynamic, which: &str| -> RhaiResult<PathBuf> {
        let p = if side.is_map() {
            let m = side.cast::<Map>();
            m.get("eval_dir")
                .and_then(|d| d.clone().into_string().ok())
                .ok_or_else(|| rt(usage!("compare: {which} is a map without 'eval_dir': give an evaluate() result or an eval dir")))?
        } else {
            side.into_string().map_err(|t| rt(usage!("compare: {which} must be an eval dir or an evaluate() result, found {t}")))?
        };
        results_path(ws, &p)
    };
    let (da, db) = (dir(a, "a")?, dir(b, "b")?);
    let mut opts = opts;
    let seed = match opts.remove("seed") {
        Some(s) => s.as_int().map_err(|t| rt(usage!("compare: seed must be an integer, found {t}")))? as u64,
        None => 0,
    };
    if let Some(k) = opts.keys().next() {
        return Err(rt(usage!("compare: unknown option '{k}' (seed)")));
    }
    let c = crate::results::compare::compare_dirs(&da, &db, seed).map_err(rt)?;
    let v = rhai::serde::to_dynamic(&c)?;
    Ok(v.cast::<Map>())
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

pub(super) const INTRO: &str = "What a sweep does, its point options (every `grid`/`base` key) and its files: \
[experiments.md](experiments.md). Every rationale keeps its origin (dataset, teacher, level, format, source file, row) \
through `concat`, `+`, `sample`, `mix` and `order`; `c.df()` shows it per row.";

const SWEEP: &str = r#"Run a sweep: every combination of `grid` values is a point (a training run and its evaluation),
each in its own dir; complete points are skipped, so the same call again resumes.

`name` (required): its dir under the runs dir; `grid`: option → array of values; `base`: options
every point shares; `include`: an array of extra points (maps over `base`); `point`: run only this
index; `stop_after_points` (≥ 1): stop after running that many. `base: #{log_to: ["tensorboard",
"mlflow"]}` logs every point's training and evaluation ([experiments.md](experiments.md#run-dirs-failures-reproducibility);
not part of any point). Every point option: [experiments.md](experiments.md). Returns `#{name, dir, total, done, already_done, ran, failed,
invalid, pending, stopped, seconds, points, results}` (`results`: a DataFrame, one row per point).

```rhai
let r = sweep(#{
    name: "granularity-svamp",
    grid: #{ level: [1, 3, 6], seed: [1, 2] },
    base: #{ dataset: "svamp", teacher: "gpt-4o", train_n: 16, max_steps: 2, eval_n: 20 },
});
r.results.show();
```"#;

const RESULTS: &str = r#"One DataFrame from any set of sweep dirs, point dirs, training runs and eval dirs (a path, or
a name under the runs dir): `sweep, point, index, status, reason, dir`, one column per config
key, then `accuracy, ci95_low, ci95_high, n, correct, unparsed, truncated, mean_tokens,
truncated_frac, tokens_per_correct, train_steps, train_examples, train_tokens, train_loss_first,
train_loss_last, selected_level, sft_seconds, eval_seconds, seconds` (`truncated`: generations cut
at the token limit, `truncated_frac` their share; `tokens_per_correct`: generated tokens over
correct answers).

```rhai
let t = results(["granularity-svamp", "runs/eval-svamp-test-default"]);
```"#;

const LOSSES: &str = r#"Every logged training step of every run under the paths (sweep dirs, points, training runs; a
path, or a name under the runs dir): each run's `sweep, point, index, status, reason, dir` and
config columns repeated on each of its steps, then `step, epoch, loss, lr, grad_norm, tokens,
tokens_per_s, computed_tokens, elapsed_s` (from `train_log.jsonl`). An error when none trained.
A sweep's `r.losses` is this frame for its dir (`()` before any point trained).

```rhai
let l = losses("granularity-svamp");
l.write_parquet("losses.parquet");
l.line_chart(#{ x: "step", y: "loss", color: "point", title: "training loss" }).write_html("loss.html");
```"#;

const VS_BASELINE: &str = r#"Each row of a `results()` frame compared with its baseline on the same questions, paired
(as `compare`, row minus baseline): the frame with `vs_baseline` (the accuracy difference),
`vs_baseline_low`, `vs_baseline_high` (its paired-bootstrap 95% interval) and `p_vs_baseline`
(McNemar's exact test) added. `baseline` is an expression true on the baseline rows: one per
group of rows with equal `by` columns (option `by`, default none: one baseline for the whole
frame; two baselines in a group are an error naming them). The baseline rows themselves, rows
with no baseline in their group and rows not `done` get `()`. Option `seed` (default 0) seeds
the bootstrap.

```rhai
let t = sweep(spec).results.vs_baseline(col("format") == "answer_only", #{ by: ["student"] });
t.select([col("level"), col("accuracy"), col("vs_baseline"), col("p_vs_baseline")]).show();
```"#;

const AGGREGATE: &str = r#"The `done` rows grouped by every config column but the seed columns (default `["seed"]`):
`seeds`, `accuracy` (mean), `accuracy_std`, `ci95_low`, `ci95_high` (the t-interval of the mean
over seeds; one seed: its Wilson interval).

```rhai
let t = results("granularity-svamp").aggregate_seeds();
line_chart(t, #{ x: "level", y: "accuracy", error_low: "ci95_low", error_high: "ci95_high" }).write_html("acc.html");
```"#;

const ORDER: &str = r#"A curriculum: `order` `"coarse_to_fine"` or `"fine_to_coarse"`, sorted by level (no level
first), seeded shuffle within a level (seed default 1); `sft` trains it in this order.

```rhai
let c = concat([rationales("svamp", #{ level: 1 }), rationales("svamp", #{ level: 6 })]).order("coarse_to_fine");
```"#;

/// `f.vs_baseline(expr[, #{by, seed}])`: the baseline mask evaluated on the frame, then
/// [`against_baseline`] with the sandbox's read check.
fn vs_baseline(ws: &Workspace, f: &Frame, baseline: ExprW, opts: Map) -> RhaiResult<Frame> {
    let mut opts = opts;
    let by = match opts.remove("by") {
        Some(v) => strings(v.into_array().map_err(|t| rt(usage!("vs_baseline: by must be a list of column names, found {t}")))?, "vs_baseline")?,
        None => Vec::new(),
    };
    let seed = match opts.remove("seed") {
        Some(s) => s.as_int().map_err(|t| rt(usage!("vs_baseline: seed must be an integer, found {t}")))? as u64,
        None => 0,
    };
    if let Some(k) = opts.keys().next() {
        return Err(rt(usage!("vs_baseline: unknown option '{k}' (by, seed)")));
    }
    const MASK: &str = "__is_baseline";
    let masked = f.with_columns(vec![baseline.0.alias(MASK)]).map_err(rt)?;
    let mask = masked
        .column_cells(MASK)
        .map_err(rt)?
        .into_iter()
        .map(|c| match c {
            crate::frame::Cell::Bool(b) => Ok(b),
            crate::frame::Cell::Null => Ok(false),
            other => Err(rt(usage!("vs_baseline: the baseline expression must be true or false on each row, found {other}"))),
        })
        .collect::<RhaiResult<Vec<bool>>>()?;
    against_baseline(f, &mask, &by, seed, &|p| ws.readable(p, "vs_baseline")).map_err(rt)
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    let ws = ctx.workspace();
    let w = ws.clone();
    let sweeps = ctx.sweeps.clone();
    def(engine, "sweep", ["spec"], SWEEP, move |spec: Map| -> RhaiResult<Map> {
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
        // Before any point trained there are no curves: `()`, not an error.
        let losses = load_losses(std::slice::from_ref(&r.dir)).ok();
        m.insert("losses".into(), losses.map(Dynamic::from).unwrap_or(Dynamic::UNIT));
        Ok(m)
    });

    let w = ws.clone();
    def(engine, "compare", ["a", "b"], COMPARE, move |a: Dynamic, b: Dynamic| -> RhaiResult<Map> { compare_evals(&w, a, b, Map::new()) });
    let w = ws.clone();
    def(engine, "compare", ["a", "b", "opts"], COMPARE, move |a: Dynamic, b: Dynamic, opts: Map| -> RhaiResult<Map> { compare_evals(&w, a, b, opts) });
    let w = ws.clone();
    def(engine, "results", ["path"], RESULTS, move |path: &str| -> RhaiResult<Frame> { load_runs(&[results_path(&w, path)?]).map_err(rt) });
    let w = ws.clone();
    def(engine, "results", ["paths"], RESULTS, move |paths: Array| -> RhaiResult<Frame> {
        let ps = strings(paths, "results")?.iter().map(|p| results_path(&w, p)).collect::<RhaiResult<Vec<_>>>()?;
        load_runs(&ps).map_err(rt)
    });
    let w = ws.clone();
    def(engine, "losses", ["path"], LOSSES, move |path: &str| -> RhaiResult<Frame> { load_losses(&[results_path(&w, path)?]).map_err(rt) });
    let w = ws.clone();
    def(engine, "losses", ["paths"], LOSSES, move |paths: Array| -> RhaiResult<Frame> {
        let ps = strings(paths, "losses")?.iter().map(|p| results_path(&w, p)).collect::<RhaiResult<Vec<_>>>()?;
        load_losses(&ps).map_err(rt)
    });
    let w = ws.clone();
    def(engine, "vs_baseline", ["f", "baseline"], VS_BASELINE, move |f: &mut Frame, b: ExprW| -> RhaiResult<Frame> { vs_baseline(&w, f, b, Map::new()) });
    let w = ws.clone();
    def(engine, "vs_baseline", ["f", "baseline", "opts"], VS_BASELINE, move |f: &mut Frame, b: ExprW, opts: Map| -> RhaiResult<Frame> {
        vs_baseline(&w, f, b, opts)
    });
    def(engine, "aggregate_seeds", ["f"], AGGREGATE, |f: &mut Frame| -> RhaiResult<Frame> { aggregate_seeds(f, &["seed".to_string()]).map_err(rt) });
    def(engine, "aggregate_seeds", ["f", "seed_columns"], AGGREGATE, |f: &mut Frame, seed_columns: Array| -> RhaiResult<Frame> {
        aggregate_seeds(f, &strings(seed_columns, "aggregate_seeds")?).map_err(rt)
    });

    // --- corpora as values (`concat` of corpora shares the name with frames: see frame.rs)
    def(
        engine,
        "+",
        ["a", "b"],
        "A corpus of both corpora's rationales (as `concat([a, b])`).\n\n```rhai\nlet c = rationales(\"svamp\", #{ level: 1 }) + rationales(\"svamp\", #{ level: 6 });\n```",
        |a: Corpus, b: Corpus| -> RhaiResult<Corpus> { Corpus::concat(&[a, b]).map_err(rt) },
    );
    def(
        engine,
        "sample",
        ["c", "n", "seed"],
        "`n` rationales drawn without replacement (`1..=c.len()`; to draw more, `mix` one part).\n\n```rhai\nlet small = rationales(\"svamp\", #{ level: 3 }).sample(100, 1);\n```",
        |c: &mut Corpus, n: i64, seed: i64| -> RhaiResult<Corpus> {
            let n = usize::try_from(n).map_err(|_| rt(usage!("sample: n must be positive, got {n}")))?;
            c.sample(n, seed as u64).map_err(rt)
        },
    );
    def(
        engine,
        "mix",
        ["parts", "opts"],
        "`n` (required, `1..=10000000`) rationales in proportion to the parts' weights (each part's `weight` defaults to 1.0, `1e-9..=1e9`; largest remainder), shuffled together with `seed` (default 1); a part asked for more than it has is repeated evenly (each rationale ⌊q/len⌋ or ⌈q/len⌉ times). `c.recipe` then says how it was made.\n\n```rhai\nlet m = mix([#{ corpus: rationales(\"arith\", #{ level: 1 }), weight: 3 }, #{ corpus: rationales(\"arith\", #{ level: 6 }) }], #{ n: 12, seed: 1 });\n```",
        |parts: Array, opts: Map| -> RhaiResult<Corpus> {
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
        },
    );
    let order = |c: &mut Corpus, order: &str, seed: i64| -> RhaiResult<Corpus> {
        let o = CurriculumOrder::try_from(order.to_string()).map_err(|e| rt(usage!("{e}")))?;
        Ok(c.ordered(o, seed as u64))
    };
    def(engine, "order", ["c", "order"], ORDER, move |c: &mut Corpus, o: &str| order(c, o, 1));
    def(engine, "order", ["c", "order", "seed"], ORDER, order);
    get(
        engine,
        "c",
        "recipe",
        "How a combined corpus was made (`mix(3×arith rule level-1 plain (weight 3), …; n=12, seed=1)`), `()` for one file; part of a training run's identity.\n\n```rhai\nprint(m.recipe);\n```",
        |c: &mut Corpus| c.recipe.as_ref().map(|r| Dynamic::from(r.text.clone())).unwrap_or(Dynamic::UNIT),
    );
}

/// `concat([...])` of corpora (the frame binding hands arrays of corpora here).
pub(super) fn concat_corpora(items: Array) -> RhaiResult<Corpus> {
    let cs = items
        .into_iter()
        .map(|c| c.try_cast::<Corpus>().ok_or_else(|| rt(usage!("concat: expected an array of corpora (or of DataFrames), not a mix of both"))))
        .collect::<RhaiResult<Vec<_>>>()?;
    Corpus::concat(&cs).map_err(rt)
}
