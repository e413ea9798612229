//! Sweeps: a grid over any point option (see [`super::point`]), each point trained from the base
//! weights and evaluated in its own dir `<runs>/<sweep>/<readable>-<hash>`.
//!
//! * **Plan first.** Every point is resolved and checked against the release catalog before
//!   anything runs; points the release lacks (or with a bad value) are listed with the reason
//!   and skipped. An unknown grid key, an empty grid, a grid of more than 100000 points (its
//!   size multiplied out with overflow checks) or a sweep whose every point is invalid is an
//!   error before any work (and before `sweep.json` is written).
//! * **Resume.** A point is complete when its `point.json` exists (written atomically, last).
//!   A re-run skips complete points; an interrupted point resumes from its SFT checkpoint and
//!   its eval samples. A failed point leaves `failed.json` (config + reason) and is retried on
//!   the next run.
//! * **Tracking.** `log_to` (a `base` key) logs every point's training and evaluation
//!   ([`crate::track`]: the point dir's `tensorboard/`, one MLflow run per point in the
//!   experiment named after the sweep); it is taken out of each point's config before the point
//!   is named, so turning it on resumes the same points.
//! * **Base weights.** Each point loads its student afresh (full SFT updates weights in place),
//!   trains, then evaluates the run's last checkpoint loaded back from disk (LoRA included).
//! * **Failures carry on.** A point that fails (NaN loss, a missing file, any error, even a panic)
//!   is recorded and the sweep goes on; the workspace's failures make `cotlab run` exit non-zero
//!   after publishing the outputs.
//! * **Addressable points.** Point `i` is the i-th of the grid (row-major over the keys in
//!   order, then `include`), so one process can run one point (`point: i`, or a session in
//!   [`SweepMode::Point`]: a job array task; see [`super::slurm`]).
//! * **Concurrent processes.** Several processes may run different points of one sweep at once
//!   (array tasks on one runs dir): each writes only its point's dir, `sweep.json` is replaced
//!   atomically (a temporary file of its own, then a rename) and re-reads the statuses from disk
//!   just before, and results are read from the point dirs, so the last writer's view never
//!   hides a point another process completed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::adaptive;
use super::point::{known_keys, PointConfig, Strategy, LOG_TO};
use super::progress::Progress;
use crate::data::{load_dataset, Catalog};
use crate::error::{Error, Result};
use crate::eval::run::evaluate;
use crate::journal::write_atomic;
use crate::lab::Workspace;
use crate::provenance::Provenance;
use crate::results::runs::{load_runs, EVAL_DIR, FAILED_FILE, POINT_FILE, SWEEP_FILE};
use crate::results::Frame;
use crate::track::{flat_params, LogTo, RunRecord, Target, Tracker};
use crate::train::sft::{sft_tracked, Tracking};
use crate::train::RunDir;
use crate::usage;

/// What a sweep is: `sweep(#{name, grid, base, include, point, stop_after_points})`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// The sweep's dir under the runs dir (a run name: `granularity`, `paper/svamp`).
    pub name: String,
    /// key → list of values; the points are every combination.
    #[serde(default)]
    pub grid: Map<String, Value>,
    /// Options every point shares (a grid value overrides one).
    #[serde(default)]
    pub base: Map<String, Value>,
    /// Extra points beyond the grid (each over `base`), e.g. an answer-only baseline.
    #[serde(default)]
    pub include: Vec<Map<String, Value>>,
    /// Run only this point (by index); the others are reported as they stand on disk.
    #[serde(default)]
    pub point: Option<usize>,
    /// Stop after this many points were run by this call (a time-boxed slice; re-run to go on).
    #[serde(default)]
    pub stop_after_points: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointStatus {
    /// Not run yet (or not selected by `point`).
    Pending,
    Done,
    Failed,
    /// The release lacks it or a value is wrong: never run.
    Invalid,
}

/// One point of a sweep as planned.
#[derive(Clone, Debug, Serialize)]
pub struct PointPlan {
    pub index: usize,
    /// Its dir name inside the sweep dir.
    pub point: String,
    /// The full config (base + grid values), as given.
    pub config: Map<String, Value>,
    pub status: PointStatus,
    pub reason: Option<String>,
    #[serde(skip)]
    pub resolved: Option<PointConfig>,
    #[serde(skip)]
    pub data_files: Vec<PathBuf>,
}

/// What a sweep call did, and the results of every point.
#[derive(Clone, Debug)]
pub struct SweepReport {
    pub name: String,
    pub dir: PathBuf,
    pub total: usize,
    pub done: usize,
    /// Complete before this call (skipped).
    pub already_done: usize,
    /// Run by this call (done or failed).
    pub ran: usize,
    /// Points whose last attempt failed (by this call or, not retried by it, an earlier one).
    pub failed: usize,
    pub invalid: usize,
    pub pending: usize,
    /// `stop_after_points` ended this call early.
    pub stopped: bool,
    pub seconds: f64,
    /// One row per point: meta, config and metrics (`results::runs`).
    pub results: Frame,
    pub points: Vec<PointPlan>,
}

/// `2e-5` → `2e-05`-free short text for dir names.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => format!("{:08x}", crate::rng::fnv1a(crate::rng::FNV_OFFSET, v.to_string().bytes()) as u32),
        other => other.to_string(),
    }
}

/// One option as it reads in a dir name: `level-3`, `teacher-gpt-4o`; a flag as itself or its
/// negation (`train`, `no-train`).
fn readable_option(key: &str, v: &Value) -> String {
    match v {
        Value::Bool(true) => key.to_string(),
        Value::Bool(false) => format!("no-{key}"),
        v => format!("{key}-{}", short(v)),
    }
}

/// `level-3_teacher-gpt-4o-1a2b3c4d`: the options that tell the point apart (the grid's, or an
/// include point's own), readable, then a hash of the whole config. Equal configs get equal
/// names, whichever part of the spec made them.
fn point_name(keys: &[String], config: &Map<String, Value>) -> String {
    let readable: Vec<String> = keys.iter().filter_map(|k| config.get(k).map(|v| readable_option(k, v))).collect();
    let clean: String = readable.join("_").chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    let clean: String = clean.trim_start_matches('.').chars().take(80).collect();
    // serde_json maps are sorted: the text is canonical, so equal configs get equal hashes.
    let hash = crate::rng::fnv1a(crate::rng::FNV_OFFSET, Value::Object(config.clone()).to_string().bytes());
    if clean.is_empty() {
        format!("{:08x}", hash as u32)
    } else {
        format!("{clean}-{:08x}", hash as u32)
    }
}

/// How the `sweep()` calls of one session run their points (`cotlab run`, `--point`, `--collect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SweepMode {
    /// Every pending point (or only the spec's `point`).
    #[default]
    Run,
    /// Only point N of every sweep, whatever the spec's `point` says (a job array task). A sweep
    /// with fewer points runs nothing (a message, not an error), so one array sized to the
    /// largest sweep serves a script with several.
    Point(usize),
    /// No point runs: every sweep reports its points as they stand on disk (the script then only
    /// merges results and writes its tables), and each point not complete is a session failure.
    /// The finalize step of a job array, and the plan `cotlab sweep` reads.
    Collect,
}

/// The sweeps of one session: how they run, and every sweep called so far with its plan (what
/// `cotlab sweep` sizes a job array from).
#[derive(Debug, Default)]
pub struct Sweeps {
    pub mode: SweepMode,
    called: std::sync::Mutex<Vec<PlannedSweep>>,
}

/// One `sweep()` call as planned: its name, dir and points (statuses as on disk after the call).
#[derive(Clone, Debug)]
pub struct PlannedSweep {
    pub name: String,
    pub dir: PathBuf,
    pub points: Vec<PointPlan>,
}

impl Sweeps {
    pub fn new(mode: SweepMode) -> Sweeps {
        Sweeps { mode, called: Default::default() }
    }

    /// The sweeps called so far, in call order (a sweep called twice is listed twice).
    pub fn called(&self) -> Vec<PlannedSweep> {
        self.called.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Statuses as they are on disk now: another process (an array task) may have completed or
/// failed a point since this one planned.
fn refresh(dir: &Path, points: &mut [PointPlan]) {
    for p in points.iter_mut().filter(|p| matches!(p.status, PointStatus::Pending | PointStatus::Failed)) {
        let pdir = dir.join(&p.point);
        if pdir.join(POINT_FILE).is_file() {
            p.status = PointStatus::Done;
            p.reason = None;
            continue;
        }
        // A failed point keeps the reason it has (this call's own, or the one read before).
        if p.status == PointStatus::Pending {
            if let Ok(text) = std::fs::read_to_string(pdir.join(FAILED_FILE)) {
                p.status = PointStatus::Failed;
                p.reason = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["reason"].as_str().map(String::from));
            }
        }
    }
}

/// Expand the grid and check every point (no training): the plan a sweep runs. Errors only for
/// what is wrong with the whole sweep (an unknown key, an empty grid, a bad name).
pub fn plan(ws: &Workspace, spec: &SweepSpec) -> Result<Vec<PointPlan>> {
    crate::lab::RunName::new(&spec.name)?;
    let known = known_keys();
    let mut keys: Vec<String> = Vec::new();
    let mut values: Vec<Vec<Value>> = Vec::new();
    for (k, v) in &spec.grid {
        let Value::Array(vs) = v else {
            return Err(usage!("sweep '{}': grid key '{k}' must be a list of values, e.g. {k}: [1, 2, 3]; got {v}", spec.name));
        };
        if vs.is_empty() {
            return Err(usage!("sweep '{}': grid key '{k}' has no values, so the grid has no points: give at least one", spec.name));
        }
        keys.push(k.clone());
        values.push(vs.clone());
    }
    let all_keys = spec.grid.keys().chain(spec.base.keys()).chain(spec.include.iter().flat_map(|m| m.keys()));
    for k in all_keys {
        if !known.contains(k) {
            return Err(usage!("sweep '{}': unknown option '{k}'; a point takes: {}", spec.name, known.join(", ")));
        }
    }
    let log_to = sweep_log_to(spec)?;
    if keys.is_empty() && spec.include.is_empty() {
        return Err(usage!("sweep '{}': the grid is empty: give grid: #{{level: [1, 2, 3], ...}} (or points in 'include')", spec.name));
    }
    // Row-major: the last key varies fastest.
    let mut configs: Vec<(Map<String, Value>, Option<usize>)> = Vec::new();
    if !keys.is_empty() {
        let total = grid_points(&spec.name, &keys, &values)?;
        for mut i in 0..total {
            let mut c = spec.base.clone();
            for (k, vs) in keys.iter().zip(&values).rev() {
                c.insert(k.clone(), vs[i % vs.len()].clone());
                i /= vs.len();
            }
            configs.push((c, None));
        }
    }
    for (i, extra) in spec.include.iter().enumerate() {
        let mut c = spec.base.clone();
        c.extend(extra.clone());
        configs.push((c, Some(i)));
    }
    let catalog = Catalog::new(ws.data_dir.clone());
    let sweep_dir = ws.run_dir(&spec.name)?;
    let mut names: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (index, (mut config, extra)) in configs.into_iter().enumerate() {
        // Where a point is logged is not what it is: out of its config before it is named.
        config.remove(LOG_TO);
        // Include points are named by their own keys.
        let name_keys: Vec<String> = match extra {
            Some(i) => spec.include[i].keys().cloned().collect(),
            None => keys.clone(),
        };
        let point = point_name(&name_keys, &config);
        let mut p = PointPlan { index, point: point.clone(), config, status: PointStatus::Pending, reason: None, resolved: None, data_files: Vec::new() };
        if let Some(first) = names.iter().position(|n| *n == point) {
            p.status = PointStatus::Invalid;
            p.reason = Some(format!("the same config as point {first}"));
        } else {
            let checked = PointConfig::resolve(&p.config).and_then(|mut r| {
                let user = r.check_corpora(ws)?;
                r.check(&catalog).map(|files| (r, files.into_iter().chain(user).collect()))
            });
            match checked {
                Ok((mut r, files)) => {
                    r.sft.log_to = log_to.clone();
                    p.resolved = Some(r);
                    p.data_files = files;
                }
                Err(e) => {
                    p.status = PointStatus::Invalid;
                    p.reason = Some(e.to_string());
                }
            }
        }
        if p.status != PointStatus::Invalid && sweep_dir.join(&point).join(POINT_FILE).is_file() {
            p.status = PointStatus::Done;
        }
        names.push(point);
        out.push(p);
    }
    Ok(out)
}

/// The sweep's `log_to`: a `base` key only (one choice for every point, never a point's own).
fn sweep_log_to(spec: &SweepSpec) -> Result<LogTo> {
    if spec.grid.contains_key(LOG_TO) || spec.include.iter().any(|m| m.contains_key(LOG_TO)) {
        return Err(usage!("sweep '{}': 'log_to' is sweep-wide: give it in base, e.g. base: #{{log_to: [\"tensorboard\", \"mlflow\"]}}", spec.name));
    }
    match spec.base.get(LOG_TO) {
        None => Ok(LogTo::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| usage!("sweep '{}': {e} (got {v})", spec.name)),
    }
}

/// The MLflow params and tags of a sweep point: its config, seeds and the cotlab build.
fn point_record(p: &PointPlan, seeds: &Map<String, Value>) -> RunRecord {
    let config = Value::Object(p.config.clone());
    let tags = [
        ("cotlab.point_config", config.to_string()),
        ("cotlab.seeds", Value::Object(seeds.clone()).to_string()),
        ("cotlab.git_commit", crate::provenance::git_commit().to_string()),
        ("mlflow.source.git.commit", crate::provenance::git_commit().to_string()),
    ];
    RunRecord { params: flat_params(&config), tags: tags.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
}

/// Most points a grid may have: more is surely a mistake.
const MAX_GRID_POINTS: usize = 100_000;

/// The product of the axes' sizes, checked: past [`MAX_GRID_POINTS`] (or past what a usize
/// holds, which would otherwise wrap to a small number or 0) an error naming every axis.
fn grid_points(name: &str, keys: &[String], values: &[Vec<Value>]) -> Result<usize> {
    let total = values.iter().try_fold(1usize, |acc, vs| acc.checked_mul(vs.len()));
    match total {
        Some(n) if n <= MAX_GRID_POINTS => Ok(n),
        _ => {
            let axes: Vec<String> = keys.iter().zip(values).map(|(k, vs)| format!("{k} ({})", vs.len())).collect();
            let count = total.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
            Err(usage!(
                "sweep '{name}': the grid has {count} points ({}); more than {MAX_GRID_POINTS} is surely a mistake: give fewer values",
                axes.join(" × ")
            ))
        }
    }
}

/// Refuse a sweep none of whose points can run: before `sweep.json` is written and before the
/// script goes on to write (and publish) an empty report over the last one.
fn some_point_valid(name: &str, points: &[PointPlan]) -> Result<()> {
    if points.is_empty() || points.iter().any(|p| p.status != PointStatus::Invalid) {
        return Ok(());
    }
    let reasons: Vec<String> = points.iter().take(5).map(|p| format!("point {} ({}): {}", p.index, p.point, p.reason.as_deref().unwrap_or(""))).collect();
    let more = if points.len() > 5 { format!("\n  … and {} more", points.len() - 5) } else { String::new() };
    Err(usage!("sweep '{name}': all {} points are invalid, so nothing can run:\n  {}{more}", points.len(), reasons.join("\n  ")))
}

fn write_sweep_file(dir: &Path, spec: &SweepSpec, points: &[PointPlan]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let v = serde_json::json!({
        "name": spec.name, "grid": spec.grid, "base": spec.base, "include": spec.include,
        "points": points.iter().map(|p| serde_json::json!({
            "sweep": spec.name, "index": p.index, "point": p.point, "status": p.status, "reason": p.reason, "config": p.config,
        })).collect::<Vec<_>>(),
    });
    write_atomic(&dir.join(SWEEP_FILE), serde_json::to_string_pretty(&v).expect("JSON").as_bytes())
}

/// Train and evaluate one point in `dir`; its metrics, provenance and (with `select`) what the
/// adaptive strategy decided.
fn run_point(ws: &Workspace, sweep: &str, p: &PointPlan, dir: &Path) -> Result<(Map<String, Value>, Provenance, Option<Value>)> {
    let r = p.resolved.as_ref().expect("a planned point is resolved");
    let started = Instant::now();
    let mut seeds = Map::new();
    seeds.insert("sft".into(), r.sft.seed.into());
    seeds.insert("train_data".into(), r.train_seed.into());
    seeds.insert("eval_subset".into(), r.eval_data.seed.map(Value::from).unwrap_or(Value::Null));
    seeds.insert("eval_sampling".into(), r.eval.seed.into());
    let target = Target { mlruns: ws.runs_dir.join("mlruns"), experiment: sweep.to_string(), run_name: p.point.clone() };
    let tracking = Tracking { target: target.clone(), extra: point_record(p, &seeds), finish_with_training: false };
    let mut train_steps = 0u64;
    let catalog = Catalog::new(ws.data_dir.clone());
    let mut metrics = Map::new();
    // The base weights, loaded afresh for every point.
    // A pilot trains students of its own: it runs before the point's copy is loaded, so two
    // copies never share the device.
    let piloted = match &r.strategy {
        Some(s) if s.strategy == Strategy::Pilot => Some(adaptive::pilot(ws, r, s, dir)?),
        _ => None,
    };
    let base = ws.student(&r.student, &r.student_opts)?;
    let model_files = vec![base.source.clone()];
    let mut sft_seconds = 0.0;
    let mut strategy = None;
    let trained = if r.train {
        let corpus = match &r.strategy {
            Some(s) => {
                let d = match piloted {
                    Some(d) => d,
                    None => adaptive::by_loss(ws, r, s, &base, dir)?,
                };
                metrics.insert("selected_level".into(), d.selected_level.into());
                strategy = Some(d.record);
                d.corpus
            }
            None => r.corpus(&catalog)?,
        };
        let t = Instant::now();
        let run = RunDir::new(dir);
        let report = match &r.distill {
            Some(d) => {
                let teacher = ws.student(&d.teacher, &r.student_opts)?;
                crate::train::distill(&base, &teacher, &corpus, &d.opts, &r.sft, &run, None, &tracking)?.sft
            }
            None => sft_tracked(&base, &corpus, &r.sft, &run, None, &tracking)?,
        };
        train_steps = report.steps as u64;
        sft_seconds = t.elapsed().as_secs_f64();
        drop(base);
        for (k, v) in run.summary()?.metrics() {
            metrics.insert(k.into(), v);
        }
        // The steps this invocation's report counts (a resumed run's log already held them).
        metrics.insert("train_steps".into(), report.steps.into());
        metrics.insert("train_examples".into(), report.examples.into());
        // The last checkpoint loaded back: what a user would evaluate later, LoRA included.
        ws.student(&dir.display().to_string(), &r.student_opts)?
    } else {
        base
    };
    let ds = load_dataset(&ws.data_dir, &r.eval_dataset, &r.eval_data)?;
    let t = Instant::now();
    let e = evaluate(&trained, &ds, &r.eval, &dir.join(EVAL_DIR))?;
    for (k, v) in [
        ("accuracy", e.accuracy.into()),
        ("ci95_low", e.ci95_low.into()),
        ("ci95_high", e.ci95_high.into()),
        ("n", e.n.into()),
        ("correct", e.correct.into()),
        ("unparsed", e.unparsed.into()),
        ("truncated", e.truncated.into()),
        ("mean_tokens", e.mean_tokens.into()),
    ] {
        metrics.insert(k.into(), v);
    }
    if !r.sft.log_to.is_empty() {
        // At the last training step, so the evaluation sits at the end of the loss curve.
        let mut t = Tracker::open(&r.sft.log_to, &RunDir::new(dir).track_files(), &target, None, &tracking.extra)?;
        let truncated_frac = if e.n == 0 { 0.0 } else { e.truncated as f64 / e.n as f64 };
        t.scalars(train_steps, &[("eval/accuracy", e.accuracy), ("eval/truncated_frac", truncated_frac), ("eval/mean_tokens", e.mean_tokens)])?;
        t.finish()?;
    }
    metrics.insert("sft_seconds".into(), sft_seconds.into());
    metrics.insert("eval_seconds".into(), t.elapsed().as_secs_f64().into());
    metrics.insert("seconds".into(), started.elapsed().as_secs_f64().into());
    let prov = Provenance::new(&model_files, &p.data_files, seeds)?;
    Ok((metrics, prov, strategy))
}

/// The record a point dir keeps: `point.json` when complete, `failed.json` when not.
#[allow(clippy::too_many_arguments)]
fn record(
    spec: &SweepSpec,
    p: &PointPlan,
    dir: &Path,
    status: PointStatus,
    reason: Option<String>,
    metrics: Map<String, Value>,
    prov: Option<Provenance>,
    strategy: Option<Value>,
) -> Value {
    serde_json::json!({
        "sweep": spec.name, "index": p.index, "point": p.point, "status": status, "reason": reason,
        "config": p.config, "metrics": metrics, "provenance": prov, "strategy": strategy,
        "run_dir": dir.display().to_string(), "eval_dir": dir.join(EVAL_DIR).display().to_string(),
    })
}

/// Run a sweep (see the module doc): plan, then every pending point (or only `spec.point`),
/// then the results of all points as one frame.
pub fn sweep(ws: &Workspace, spec: &SweepSpec) -> Result<SweepReport> {
    sweep_in(ws, spec, &Sweeps::default())
}

/// Say which points are skipped as invalid, and why; returns how many.
fn say_invalid(spec: &SweepSpec, points: &[PointPlan]) -> usize {
    let invalid = points.iter().filter(|p| p.status == PointStatus::Invalid).count();
    if invalid > 0 {
        eprintln!("[sweep {}] {invalid} of {} points are skipped as invalid:", spec.name, points.len());
        for p in points.iter().filter(|p| p.status == PointStatus::Invalid) {
            eprintln!("  point {} ({}): {}", p.index, p.point, p.reason.as_deref().unwrap_or(""));
        }
    }
    invalid
}

/// Which points this call may run: `None` none (collecting), `Some(None)` every one,
/// `Some(Some(i))` point `i` only. The spec's choice, unless the session decides.
fn runnable(spec: &SweepSpec, sweeps: &Sweeps, points: &[PointPlan]) -> Option<Option<usize>> {
    match sweeps.mode {
        SweepMode::Run => Some(spec.point),
        SweepMode::Point(n) => {
            match points.get(n) {
                None => eprintln!("[sweep {}] point {n}: the sweep has only {} points: nothing to run in this task", spec.name, points.len()),
                Some(p) if p.status == PointStatus::Invalid => {
                    eprintln!("[sweep {}] point {n} ({}) is invalid: nothing to run in this task", spec.name, p.point)
                }
                Some(_) => {}
            }
            Some(Some(n))
        }
        SweepMode::Collect => None,
    }
}

/// [`sweep`] in a session whose `sweeps` say which points run ([`SweepMode`]) and record the call.
pub fn sweep_in(ws: &Workspace, spec: &SweepSpec, sweeps: &Sweeps) -> Result<SweepReport> {
    let started = Instant::now();
    let mut points = plan(ws, spec)?;
    let dir = ws.run_dir(&spec.name)?;
    if let Some(i) = spec.point {
        if i >= points.len() {
            return Err(usage!("sweep '{}': point {i} does not exist: the sweep has points 0..{}", spec.name, points.len().saturating_sub(1)));
        }
    }
    if let Some(k) = spec.stop_after_points {
        crate::error::in_range("sweep", "stop_after_points", k, 1..=usize::MAX)?;
    }
    some_point_valid(&spec.name, &points)?;
    let invalid = say_invalid(spec, &points);
    refresh(&dir, &mut points);
    write_sweep_file(&dir, spec, &points)?;
    let only = runnable(spec, sweeps, &points);
    let selected = |p: &PointPlan| only.is_some_and(|o| o.is_none_or(|i| i == p.index));
    let already_done = points.iter().filter(|p| p.status == PointStatus::Done).count();
    // A point failed earlier is retried, as on any re-run.
    let to_run: Vec<usize> = points.iter().filter(|p| matches!(p.status, PointStatus::Pending | PointStatus::Failed) && selected(p)).map(|p| p.index).collect();
    let to_run_now = spec.stop_after_points.map_or(to_run.len(), |k| k.min(to_run.len()));
    let mut progress = Progress::new(&spec.name, points.len() - invalid, already_done, to_run_now);
    let mut ran = 0;
    let mut stopped = false;
    for i in to_run {
        if spec.stop_after_points.is_some_and(|k| ran >= k) {
            stopped = true;
            break;
        }
        let p = &points[i].clone();
        let pdir = ws.run_dir(&format!("{}/{}", spec.name, p.point))?;
        std::fs::create_dir_all(&pdir).map_err(|e| Error::io(&pdir, e))?;
        progress.start(p.index, &p.point);
        let t = Instant::now();
        // A panic deep in a kernel must not end the other points.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_point(ws, &spec.name, p, &pdir))).unwrap_or_else(|panic| {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(Error::usage(format!("internal error (a panic): {msg}")))
        });
        ran += 1;
        let secs = t.elapsed().as_secs_f64();
        match outcome {
            Ok((metrics, prov, strategy)) => {
                let what = format!(
                    "accuracy {:.3} [{:.3}, {:.3}] on {}",
                    metrics["accuracy"].as_f64().unwrap_or(f64::NAN),
                    metrics["ci95_low"].as_f64().unwrap_or(f64::NAN),
                    metrics["ci95_high"].as_f64().unwrap_or(f64::NAN),
                    metrics["n"]
                );
                let v = record(spec, p, &pdir, PointStatus::Done, None, metrics, Some(prov), strategy);
                // Written last and atomically: a point.json is a complete point.
                write_atomic(&pdir.join(POINT_FILE), serde_json::to_string_pretty(&v).expect("JSON").as_bytes())?;
                let _ = std::fs::remove_file(pdir.join(FAILED_FILE));
                // A complete point never resumes: its optimizer moments only fill the disk.
                RunDir::new(&pdir).drop_optimizer_state()?;
                points[i].status = PointStatus::Done;
                progress.finish(p.index, &points[i].point, true, &what, secs);
            }
            Err(e) => {
                let reason = e.to_string();
                let v = record(spec, p, &pdir, PointStatus::Failed, Some(reason.clone()), Map::new(), None, None);
                write_atomic(&pdir.join(FAILED_FILE), serde_json::to_string_pretty(&v).expect("JSON").as_bytes())?;
                ws.failures.add(format!("sweep '{}' point {} ({}): {reason}", spec.name, p.index, p.point));
                points[i].status = PointStatus::Failed;
                points[i].reason = Some(reason.clone());
                progress.finish(p.index, &points[i].point, false, &reason, secs);
            }
        }
    }
    refresh(&dir, &mut points);
    write_sweep_file(&dir, spec, &points)?;
    if sweeps.mode == SweepMode::Collect {
        for p in points.iter().filter(|p| matches!(p.status, PointStatus::Pending | PointStatus::Failed)) {
            let why = match (&p.status, &p.reason) {
                (PointStatus::Failed, Some(r)) => format!("failed: {r}"),
                _ => "not run yet".to_string(),
            };
            ws.failures.add(format!("sweep '{}' point {} ({}): {why}", spec.name, p.index, p.point));
        }
    }
    sweeps.called.lock().unwrap_or_else(|p| p.into_inner()).push(PlannedSweep { name: spec.name.clone(), dir: dir.clone(), points: points.clone() });
    let count = |s: PointStatus| points.iter().filter(|p| p.status == s).count();
    let (done, failed, pending) = (count(PointStatus::Done), count(PointStatus::Failed), count(PointStatus::Pending));
    progress.close(&format!(
        "{done} done, {failed} failed, {invalid} invalid, {pending} pending of {} points{}",
        points.len(),
        if stopped { " (stopped by stop_after_points: run again to go on)" } else { "" }
    ));
    let results = load_runs(std::slice::from_ref(&dir))?;
    Ok(SweepReport {
        name: spec.name.clone(),
        dir,
        total: points.len(),
        done,
        already_done,
        ran,
        failed,
        invalid: count(PointStatus::Invalid),
        pending,
        stopped,
        seconds: started.elapsed().as_secs_f64(),
        results,
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> SweepSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plan_expands_checks_and_names() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        let s = spec(serde_json::json!({
            "name": "t", "grid": {"level": [1, 2], "format": ["plain", "bsm"]}, "base": {"dataset": "arith", "max_steps": 1},
            "include": [{"format": "answer_only"}],
        }));
        let p = plan(&ws, &s).unwrap();
        assert_eq!(p.len(), 5);
        // Row-major over the keys in order (format, level): the last varies fastest.
        assert_eq!((p[0].config["format"].as_str(), p[0].config["level"].as_i64()), (Some("plain"), Some(1)));
        assert_eq!((p[1].config["format"].as_str(), p[1].config["level"].as_i64()), (Some("plain"), Some(2)));
        assert!(p[2].point.starts_with("format-bsm_level-1-"), "{}", p[2].point);
        assert_eq!(p[0].status, PointStatus::Pending);
        // The rule teacher writes no BSM: invalid, with the catalog's reason.
        assert_eq!((p[2].status, p[3].status), (PointStatus::Invalid, PointStatus::Invalid));
        assert!(p[2].reason.as_ref().unwrap().contains("not bsm"), "{:?}", p[2].reason);
        assert!(p[4].point.starts_with("format-answer_only-"), "{}", p[4].point);
        assert_eq!(p[4].status, PointStatus::Pending);
        // Same config, same name; another config, another hash.
        assert_eq!(plan(&ws, &s).unwrap()[1].point, p[1].point);
        assert_ne!(p[0].point, p[1].point);

        let e = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {"lvl": [1]}}))).unwrap_err().to_string();
        assert!(e.contains("unknown option 'lvl'") && e.contains("level"), "{e}");
        let e = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {}}))).unwrap_err().to_string();
        assert!(e.contains("the grid is empty"), "{e}");
        let e = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {"level": []}}))).unwrap_err().to_string();
        assert!(e.contains("has no values"), "{e}");
        let e = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {"level": 3}}))).unwrap_err().to_string();
        assert!(e.contains("must be a list"), "{e}");
        assert!(plan(&ws, &spec(serde_json::json!({"name": "../x", "grid": {"level": [1]}}))).is_err());
    }

    /// A point's dir reads as its options: a flag as itself or `no-…`, an include point by its
    /// own keys with no index; an include equal to a grid point is the same point.
    #[test]
    fn point_names_read_as_their_options() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        let s = spec(serde_json::json!({
            "name": "t", "grid": {"level": [1, 2]}, "base": {"dataset": "arith", "max_steps": 1},
            "include": [{"train": false}, {"level": 2}, {"train": true, "lr": 3e-4}],
        }));
        let p = plan(&ws, &s).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.point.rsplit_once('-').unwrap().0).collect();
        assert_eq!(names, ["level-1", "level-2", "no-train", "level-2", "lr-0.0003_train"]);
        assert!(p.iter().all(|p| p.point.rsplit_once('-').unwrap().1.len() == 8), "a hash ends each name");
        assert_eq!((p[3].status, p[3].reason.as_deref()), (PointStatus::Invalid, Some("the same config as point 1")));
        assert_eq!(p[2].status, PointStatus::Pending);
    }

    /// `log_to` is no part of a point: the same names with it as without (so turning it on
    /// resumes a sweep), every point resolved with it; a grid or include `log_to`, or a bad
    /// value, is an error for the whole sweep.
    #[test]
    fn log_to_is_sweep_wide_and_leaves_point_names_alone() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        let base = serde_json::json!({"dataset": "arith", "max_steps": 1});
        let without = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {"level": [1, 2]}, "base": base, "include": [{"train": false}]}))).unwrap();
        let mut logged = base.clone();
        logged["log_to"] = serde_json::json!(["tensorboard", "mlflow"]);
        let with = plan(&ws, &spec(serde_json::json!({"name": "t", "grid": {"level": [1, 2]}, "base": logged, "include": [{"train": false}]}))).unwrap();
        let names = |p: &[PointPlan]| p.iter().map(|p| p.point.clone()).collect::<Vec<_>>();
        assert_eq!(names(&with), names(&without));
        assert!(with.iter().all(|p| !p.config.contains_key(LOG_TO)));
        let want = crate::track::LogTo(vec![crate::track::Sink::Tensorboard, crate::track::Sink::Mlflow]);
        assert!(with.iter().all(|p| p.resolved.as_ref().unwrap().sft.log_to == want));
        assert!(without.iter().all(|p| p.resolved.as_ref().unwrap().sft.log_to.is_empty()));
        for (v, says) in [
            (serde_json::json!({"name": "t", "grid": {"level": [1], "log_to": ["mlflow"]}, "base": base}), "'log_to' is sweep-wide"),
            (serde_json::json!({"name": "t", "grid": {"level": [1]}, "include": [{"log_to": "mlflow"}]}), "'log_to' is sweep-wide"),
            (
                serde_json::json!({"name": "t", "grid": {"level": [1]}, "base": {"log_to": "wandb"}}),
                "log_to: unknown value 'wandb': expected one of tensorboard, mlflow",
            ),
        ] {
            let e = plan(&ws, &spec(v.clone())).unwrap_err().to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
    }

    /// The grid's size is multiplied out with overflow checks: 65536⁴ wrapped to 0 points.
    #[test]
    fn grid_size_is_checked_not_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        let axis = |n: usize| Value::Array((0..n as u64).map(Value::from).collect());
        for (sizes, count) in [(vec![65536; 4], "more than 2^64"), (vec![10000; 5], "more than 2^64"), (vec![100, 100, 11], "110000")] {
            let keys = ["level", "seed", "lr", "train_n", "train_seed"];
            let grid: Map<String, Value> = keys.iter().zip(&sizes).map(|(k, &n)| (k.to_string(), axis(n))).collect();
            let s = SweepSpec { name: "big".into(), grid, base: Map::new(), ..Default::default() };
            let e = plan(&ws, &s).unwrap_err().to_string();
            let axes: Vec<String> = s.grid.iter().map(|(k, v)| format!("{k} ({})", v.as_array().unwrap().len())).collect();
            assert!(e.contains(&format!("the grid has {count} points ({})", axes.join(" × "))), "{sizes:?}: {e}");
        }
        assert!(!d.path().join("runs/big").exists());
    }

    /// A sweep none of whose points can run is an error before sweep.json is written.
    #[test]
    fn a_sweep_of_invalid_points_only_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        for v in [
            serde_json::json!({"name": "bad", "grid": {"format": ["bsm"]}, "base": {"dataset": "arith", "level": 1}}),
            serde_json::json!({"name": "bad", "grid": {"level": ["abc", -1]}, "base": {"dataset": "arith", "format": "bsm"}}),
            serde_json::json!({"name": "bad", "include": [{"dataset": "nope"}, {"dataset": "arith", "level": 1, "format": "bsm"}]}),
        ] {
            let e = sweep(&ws, &spec(v.clone())).unwrap_err().to_string();
            assert!(e.contains("sweep 'bad': all") && e.contains("points are invalid") && e.contains("point 0 ("), "{v}: {e}");
            assert!(!d.path().join("runs/bad/sweep.json").exists(), "{v}");
        }
    }

    #[test]
    fn collect_and_out_of_range_points_run_nothing_and_record_the_plan() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        // Point 1 is invalid (the rule teacher writes no BSM): no point here needs a model.
        let s = spec(serde_json::json!({"name": "c", "grid": {"format": ["plain", "bsm"]}, "base": {"dataset": "arith", "level": 1, "max_steps": 1}}));
        let collect = Sweeps::new(SweepMode::Collect);
        let r = sweep_in(&ws, &s, &collect).unwrap();
        assert_eq!((r.ran, r.pending, r.invalid, r.done), (0, 1, 1, 0));
        assert!(d.path().join("runs/c/sweep.json").is_file());
        // The point not complete is a session failure; the invalid one is not.
        let f = ws.failures.list();
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("sweep 'c' point 0") && f[0].contains("not run yet"), "{f:?}");
        let called = collect.called();
        assert_eq!((called.len(), called[0].name.as_str(), called[0].points.len()), (1, "c", 2));

        // Point mode: an index past the end, or an invalid point, runs nothing and is no error.
        let ws = Workspace::open(crate::data::DataDir(d.path().join("data")), d.path().join("runs"), None);
        for n in [1, 7] {
            let r = sweep_in(&ws, &s, &Sweeps::new(SweepMode::Point(n))).unwrap();
            assert_eq!((r.ran, r.pending), (0, 1));
        }
        assert!(ws.failures.list().is_empty());
        // A point another process completed meanwhile counts as done.
        let p0 = d.path().join("runs/c").join(&r.points[0].point);
        std::fs::create_dir_all(&p0).unwrap();
        std::fs::write(p0.join(POINT_FILE), serde_json::json!({"status": "done", "point": r.points[0].point, "index": 0}).to_string()).unwrap();
        let r = sweep_in(&ws, &s, &Sweeps::new(SweepMode::Collect)).unwrap();
        assert_eq!((r.done, r.pending), (1, 0));
        assert!(ws.failures.list().is_empty());
    }
}
