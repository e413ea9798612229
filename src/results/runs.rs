//! Results across runs: any set of sweep dirs, sweep points, training runs and eval dirs read
//! into one frame (config columns + status + metrics), and seeds aggregated to mean ± CI.
//!
//! What a dir holds decides its row(s):
//! * a sweep dir (`sweep.json`): one row per point it lists, done, failed, invalid or pending;
//! * a point dir: `point.json` (complete) or `failed.json` (its last attempt failed);
//! * an eval dir: `results.json` (+ `eval_config.json`);
//! * a dir of lm-eval's layout without `results.json` (lm-eval's own `--output_path` model dir):
//!   one row per task, accuracy metric (`exact_match`, `acc`, `acc_norm`) and filter of its latest
//!   `results_<timestamp>.json` (read by [`crate::eval::lmeval`]);
//! * a training run (a [`RunDir`] with its record): its config and the log's summary;
//! * any other dir: the dirs inside it, in name order.
//!
//! The walk follows no link (a link inside a runs dir is neither entered nor read), and point
//! names read from `sweep.json` are checked as [`RunName`]s, so it never leaves the dirs given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::eval::{CONFIG_FILE, RESULTS_FILE};
use crate::frame::{Cell, ColumnData, Frame};
use crate::paths::{is_real_dir, is_real_file, subdirs, RunName};
use crate::train::RunDir;
use crate::usage;

/// A sweep point's record, complete (`point.json`) or failed (`failed.json`).
pub const POINT_FILE: &str = "point.json";
pub const FAILED_FILE: &str = "failed.json";
pub const SWEEP_FILE: &str = "sweep.json";
/// A point's evaluation, inside its dir.
pub const EVAL_DIR: &str = "eval";

/// Columns that describe where a row came from and how it ended (not configuration).
pub const META_COLUMNS: &[&str] = &["sweep", "point", "index", "status", "reason", "dir"];
/// Measured columns (not configuration).
pub const METRIC_COLUMNS: &[&str] = &[
    "accuracy",
    "ci95_low",
    "ci95_high",
    "n",
    "correct",
    "unparsed",
    "truncated",
    "mean_tokens",
    "truncated_frac",
    "tokens_per_correct",
    "train_steps",
    "train_examples",
    "train_tokens",
    "train_loss_first",
    "train_loss_last",
    "selected_level",
    "sft_seconds",
    "eval_seconds",
    "seconds",
];

/// The columns `vs_baseline` adds ([`crate::results::compare::against_baseline`]): the paired
/// difference from the baseline, its interval, McNemar's p.
pub const BASELINE_COLUMNS: [&str; 4] = ["vs_baseline", "vs_baseline_low", "vs_baseline_high", "p_vs_baseline"];

/// Measured columns [`aggregate_seeds`] averages over seeds (where the frame has them).
const AVERAGED: &[&str] = &["mean_tokens", "truncated_frac", "tokens_per_correct", "train_tokens", "sft_seconds", "eval_seconds", "vs_baseline"];

/// One row: meta fields, flattened config, metrics.
#[derive(Default)]
struct Row {
    meta: Map<String, Value>,
    config: Map<String, Value>,
    metrics: Map<String, Value>,
}

fn read_json(p: &Path) -> Result<Value> {
    let text = crate::paths::read_text(p)?;
    serde_json::from_str(&text).map_err(|e| Error::data(p, format!("not valid JSON ({e})")))
}

/// `{"options": {"lr": 1}}` → `options.lr = 1`; arrays stay values (shown as JSON text).
fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The row of a point record (`point.json`/`failed.json`, or an invalid/pending entry of
/// `sweep.json`, which have the same shape without metrics).
fn point_row(v: &Value, dir: Option<&Path>) -> Row {
    let mut r = Row::default();
    for k in ["sweep", "point", "index", "status", "reason"] {
        r.meta.insert(k.into(), v.get(k).cloned().unwrap_or(Value::Null));
    }
    r.meta.insert("dir".into(), dir.map(|d| Value::from(d.display().to_string())).unwrap_or(Value::Null));
    if let Some(Value::Object(c)) = v.get("config") {
        for (k, x) in c {
            r.config.insert(k.clone(), x.clone());
        }
    }
    if let Some(Value::Object(m)) = v.get("metrics") {
        r.metrics = m.clone();
    }
    // Points recorded before `truncated` was: their eval dir's report has it.
    if let (Some(d), Some(Value::Object(_))) = (dir, v.get("metrics")) {
        let res = d.join(EVAL_DIR).join(RESULTS_FILE);
        if !r.metrics.contains_key("truncated") && is_real_file(&res) {
            if let Ok(t) = read_json(&res).map(|x| x["truncated"].clone()) {
                r.metrics.insert("truncated".into(), t);
            }
        }
    }
    r
}

/// The metrics every row derives from its counts, by the evaluation's own definitions
/// (`truncated_frac`, `tokens_per_correct`; null where a count is missing).
fn derive_metrics(m: &mut Map<String, Value>) {
    let (n, correct, truncated, mean) = (
        m.get("n").and_then(Value::as_u64),
        m.get("correct").and_then(Value::as_u64),
        m.get("truncated").and_then(Value::as_u64),
        m.get("mean_tokens").and_then(Value::as_f64),
    );
    let frac = n.zip(truncated).map(|(n, t)| crate::eval::run::truncated_frac(t as usize, n as usize));
    let per = n.zip(correct).zip(mean).and_then(|((n, c), mean)| crate::eval::run::tokens_per_correct(mean, n as usize, c as usize));
    m.insert("truncated_frac".into(), frac.map(Value::from).unwrap_or(Value::Null));
    m.insert("tokens_per_correct".into(), per.map(Value::from).unwrap_or(Value::Null));
}

/// The row of one accuracy in an lm-eval results file.
fn lm_eval_row(dir: &Path, s: crate::eval::lmeval::TaskScore) -> Row {
    let mut r = Row::default();
    r.meta.insert("status".into(), "done".into());
    r.meta.insert("dir".into(), dir.display().to_string().into());
    r.config.insert("task".into(), s.task.into());
    r.config.insert("model".into(), s.model.map(Value::from).unwrap_or(Value::Null));
    r.config.insert("metric".into(), s.metric.into());
    r.config.insert("filter".into(), s.filter.into());
    r.metrics.insert("accuracy".into(), s.value.into());
    r.metrics.insert("n".into(), s.n.map(Value::from).unwrap_or(Value::Null));
    r
}

fn collect(path: &Path, rows: &mut Vec<Row>) -> Result<()> {
    if !path.is_dir() {
        return Err(Error::data(path, "not a dir: give a runs dir, a sweep dir, a point, run or eval dir"));
    }
    let sweep = path.join(SWEEP_FILE);
    if is_real_file(&sweep) {
        let v = read_json(&sweep)?;
        let points = v["points"].as_array().ok_or_else(|| Error::data(&sweep, "no 'points' list"))?;
        for (i, p) in points.iter().enumerate() {
            let name = p["point"].as_str().unwrap_or_default();
            // A name read back from disk is checked like one a script gives: `../../x` stays out.
            if !name.is_empty() {
                RunName::new(name).map_err(|e| Error::data(&sweep, format!("point {i}: {e}")))?;
            }
            let dir = path.join(name);
            if !name.is_empty() && is_real_dir(&dir) && (is_real_file(&dir.join(POINT_FILE)) || is_real_file(&dir.join(FAILED_FILE))) {
                collect(&dir, rows)?;
            } else {
                rows.push(point_row(p, (!name.is_empty()).then_some(dir.as_path())));
            }
        }
        return Ok(());
    }
    for f in [POINT_FILE, FAILED_FILE] {
        if is_real_file(&path.join(f)) {
            rows.push(point_row(&read_json(&path.join(f))?, Some(path)));
            return Ok(());
        }
    }
    if is_real_file(&path.join(RESULTS_FILE)) {
        let res = read_json(&path.join(RESULTS_FILE))?;
        let mut r = Row::default();
        r.meta.insert("status".into(), "done".into());
        r.meta.insert("dir".into(), path.display().to_string().into());
        if is_real_file(&path.join(CONFIG_FILE)) {
            flatten("", &read_json(&path.join(CONFIG_FILE))?, &mut r.config);
            r.config.remove("template");
        }
        for k in ["accuracy", "ci95_low", "ci95_high", "n", "correct", "unparsed", "truncated", "mean_tokens"] {
            // Missing in eval dirs from before it was recorded: null, not a guess.
            r.metrics.insert(k.into(), res.get(k).cloned().unwrap_or(Value::Null));
        }
        r.metrics.insert("eval_seconds".into(), res["seconds"].clone());
        rows.push(r);
        return Ok(());
    }
    if crate::eval::lmeval::has_results(path) {
        rows.extend(crate::eval::lmeval::scores(path)?.into_iter().map(|s| lm_eval_row(path, s)));
        return Ok(());
    }
    let run = RunDir::new(path);
    if run.is_recorded() {
        let mut r = Row::default();
        r.meta.insert("dir".into(), path.display().to_string().into());
        flatten("", &run.config()?, &mut r.config);
        r.config.remove("template");
        r.meta.insert("status".into(), (if run.is_complete() { "done" } else { "incomplete" }).into());
        for (k, v) in run.summary()?.metrics() {
            r.metrics.insert(k.into(), v);
        }
        rows.push(r);
        return Ok(());
    }
    // Links are not followed: a runs dir's walk stays in it and cannot loop.
    for d in subdirs(path)? {
        // A checkpoint or other plain dir inside holds no rows; skip what is not a result.
        if d.file_name().is_some_and(RunDir::is_own_subdir) {
            continue;
        }
        collect(&d, rows)?;
    }
    Ok(())
}

/// A column from JSON values: integers → Int, numbers → Float, booleans → Bool, else text (a
/// non-string value as its JSON).
fn column(values: Vec<Option<&Value>>) -> ColumnData {
    let present: Vec<&Value> = values.iter().flatten().copied().filter(|v| !v.is_null()).collect();
    if !present.is_empty() && present.iter().all(|v| v.is_i64() || v.is_u64()) {
        return ColumnData::Int(values.iter().map(|v| v.and_then(|v| v.as_i64())).collect());
    }
    if !present.is_empty() && present.iter().all(|v| v.is_number()) {
        return ColumnData::Float(values.iter().map(|v| v.and_then(|v| v.as_f64())).collect());
    }
    if !present.is_empty() && present.iter().all(|v| v.is_boolean()) {
        return ColumnData::Bool(values.iter().map(|v| v.and_then(|v| v.as_bool())).collect());
    }
    ColumnData::Str(
        values
            .iter()
            .map(|v| match v {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            })
            .collect(),
    )
}

/// Every run found under `paths` as one frame: the meta columns (`sweep`, `point`, `index`,
/// `status`, `reason`, `dir`), then each config key seen (first-seen order), then the metrics.
pub fn load_runs(paths: &[PathBuf]) -> Result<Frame> {
    if paths.is_empty() {
        return Err(usage!("results: give at least one dir"));
    }
    let mut rows = Vec::new();
    for p in paths {
        collect(p, &mut rows)?;
    }
    if rows.is_empty() {
        return Err(usage!(
            "results: no runs under {}: expected sweep dirs (sweep.json), points (point.json), eval dirs (results.json or lm-eval's results_<timestamp>.json) or training runs (config.json)",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    for r in &mut rows {
        derive_metrics(&mut r.metrics);
    }
    frame_of(&rows, METRIC_COLUMNS)
}

/// The columns of a training log line that [`load_losses`] keeps, in this order.
pub const LOSS_COLUMNS: &[&str] = &["step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "computed_tokens", "elapsed_s"];

/// Every logged training step of every run under `paths` (the runs [`load_runs`] finds; those
/// that did not train have none): a run's meta and config columns repeated on each of its steps,
/// then [`LOSS_COLUMNS`]. The frame a loss-curve chart is drawn from.
pub fn load_losses(paths: &[PathBuf]) -> Result<Frame> {
    let mut rows = Vec::new();
    for p in paths {
        collect(p, &mut rows)?;
    }
    let mut steps = Vec::new();
    for r in &rows {
        let Some(dir) = r.meta.get("dir").and_then(Value::as_str) else { continue };
        let run = RunDir::new(dir);
        if !is_real_file(&run.log_path()) {
            continue;
        }
        for line in run.log_lines()? {
            let mut s = Row { meta: r.meta.clone(), config: r.config.clone(), metrics: Map::new() };
            for k in LOSS_COLUMNS {
                s.metrics.insert(k.to_string(), line.get(*k).cloned().unwrap_or(Value::Null));
            }
            steps.push(s);
        }
    }
    if steps.is_empty() {
        return Err(usage!(
            "losses: no training logs under {}: give sweep dirs or training runs (train_log.jsonl)",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    frame_of(&steps, LOSS_COLUMNS)
}

/// Rows as one frame: the meta columns, then each config key seen (first-seen order), then
/// `metric_columns`.
fn frame_of(rows: &[Row], metric_columns: &[&str]) -> Result<Frame> {
    let mut config_keys: Vec<String> = Vec::new();
    for r in rows {
        for k in r.config.keys() {
            if !config_keys.contains(k) && !META_COLUMNS.contains(&k.as_str()) && !metric_columns.contains(&k.as_str()) {
                config_keys.push(k.clone());
            }
        }
    }
    let mut cols = Vec::new();
    for k in META_COLUMNS {
        cols.push((k.to_string(), column(rows.iter().map(|r| r.meta.get(*k)).collect())));
    }
    for k in &config_keys {
        cols.push((k.clone(), column(rows.iter().map(|r| r.config.get(k)).collect())));
    }
    for k in metric_columns {
        cols.push((k.to_string(), column(rows.iter().map(|r| r.metrics.get(*k)).collect())));
    }
    Frame::from_columns(cols)
}

/// Two-sided 95% Student-t critical values for 1..=30 degrees of freedom (beyond: 1.96).
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080,
        2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else {
        T.get(df - 1).copied().unwrap_or(1.96)
    }
}

fn cell_key(c: &Cell) -> String {
    match c {
        Cell::Null => "\u{0}null".into(),
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Str(s) => s.clone(),
    }
}

fn cell_value(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Bool(b) => (*b).into(),
        Cell::Int(i) => (*i).into(),
        Cell::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
        Cell::Str(s) => s.clone().into(),
    }
}

/// Aggregate the seeds of each point: rows with status `done` grouped by every config column
/// except `seed_columns` (those the seeds vary), giving `seeds` (how many), `accuracy` (mean),
/// `accuracy_std`, and a 95% CI: the t-interval of the mean across seeds when there are two or
/// more, the single run's own (Wilson) interval when there is one. The measures in [`AVERAGED`]
/// (tokens, truncation, seconds, the paired difference from a baseline) are averaged over the
/// seeds; a paired interval and p-value are one seed's, so they are kept for one seed only
/// (null for several: compare per seed in the results frame).
pub fn aggregate_seeds(frame: &Frame, seed_columns: &[String]) -> Result<Frame> {
    let cols = frame.columns();
    for s in seed_columns {
        if !cols.contains(s) {
            return Err(usage!("aggregate_seeds: no column '{s}' (columns: {})", cols.join(", ")));
        }
    }
    let keys: Vec<String> = cols.iter().filter(|c| !is_measured(c) && !seed_columns.contains(c)).cloned().collect();
    for need in ["status", "accuracy", "ci95_low", "ci95_high"] {
        if !cols.iter().any(|c| c == need) {
            return Err(usage!("aggregate_seeds: the frame has no '{need}' column: give it a results(...) frame"));
        }
    }
    let status = frame.column_cells("status")?;
    let acc = frame.column_cells("accuracy")?;
    let (lo, hi) = (frame.column_cells("ci95_low")?, frame.column_cells("ci95_high")?);
    let key_cells: Vec<Vec<Cell>> = keys.iter().map(|k| frame.column_cells(k)).collect::<Result<_>>()?;
    // Group order: first appearance.
    let mut groups: Vec<(Vec<Cell>, Vec<usize>)> = Vec::new();
    let mut index: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for row in 0..frame.height() {
        if status[row] != Cell::Str("done".into()) {
            continue;
        }
        let cells: Vec<Cell> = key_cells.iter().map(|c| c[row].clone()).collect();
        let k: Vec<String> = cells.iter().map(cell_key).collect();
        let g = *index.entry(k).or_insert_with(|| {
            groups.push((cells, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(row);
    }
    let f = |c: &Cell| match c {
        Cell::Float(x) => Some(*x),
        Cell::Int(i) => Some(*i as f64),
        _ => None,
    };
    let mut out: Vec<(String, ColumnData)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let vals: Vec<Value> = groups.iter().map(|(cells, _)| cell_value(&cells[i])).collect();
        out.push((k.clone(), column(vals.iter().map(Some).collect())));
    }
    let (mut n, mut mean, mut sd, mut low, mut high) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (_, rows) in &groups {
        let xs: Vec<f64> = rows.iter().filter_map(|&r| f(&acc[r])).collect();
        let k = xs.len();
        let m = xs.iter().sum::<f64>() / k.max(1) as f64;
        n.push(Some(k as i64));
        mean.push((k > 0).then_some(m));
        if k >= 2 {
            let s = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
            let half = t95(k - 1) * s / (k as f64).sqrt();
            sd.push(Some(s));
            low.push(Some((m - half).max(0.0)));
            high.push(Some((m + half).min(1.0)));
        } else {
            sd.push(None);
            low.push(rows.first().and_then(|&r| f(&lo[r])));
            high.push(rows.first().and_then(|&r| f(&hi[r])));
        }
    }
    out.push(("seeds".into(), ColumnData::Int(n)));
    out.push(("accuracy".into(), ColumnData::Float(mean)));
    out.push(("accuracy_std".into(), ColumnData::Float(sd)));
    out.push(("ci95_low".into(), ColumnData::Float(low)));
    out.push(("ci95_high".into(), ColumnData::Float(high)));
    for c in AVERAGED.iter().filter(|c| cols.iter().any(|x| x == *c)) {
        let cells = frame.column_cells(c)?;
        let means = groups.iter().map(|(_, rows)| {
            let xs: Vec<f64> = rows.iter().filter_map(|&r| f(&cells[r])).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        });
        out.push((c.to_string(), ColumnData::Float(means.collect())));
    }
    for c in BASELINE_COLUMNS[1..].iter().filter(|c| cols.iter().any(|x| x == *c)) {
        let cells = frame.column_cells(c)?;
        let one = groups.iter().map(|(_, rows)| if rows.len() == 1 { f(&cells[rows[0]]) } else { None });
        out.push((c.to_string(), ColumnData::Float(one.collect())));
    }
    Frame::from_columns(out)
}

/// A column of what was measured (meta, metrics, paired comparisons), not of the configuration.
fn is_measured(c: &str) -> bool {
    META_COLUMNS.contains(&c) || METRIC_COLUMNS.contains(&c) || BASELINE_COLUMNS.contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(dir: &Path, name: &str, seed: i64, level: i64, acc: f64, status: &str) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let v = serde_json::json!({
            "sweep": "s", "point": name, "index": 0, "status": status, "reason": if status == "done" { Value::Null } else { "boom".into() },
            "config": {"level": level, "seed": seed, "lr": 1e-4},
            "metrics": {"accuracy": acc, "ci95_low": acc - 0.1, "ci95_high": acc + 0.1, "n": 10},
        });
        std::fs::write(d.join(if status == "done" { POINT_FILE } else { FAILED_FILE }), v.to_string()).unwrap();
    }

    /// Round 3: names read back from `sweep.json` and links inside a runs dir cannot lead the walk
    /// outside the dirs given, nor make it loop.
    #[test]
    fn the_walk_stays_in_the_dirs_given() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join(POINT_FILE), r#"{"status": "done", "point": "stolen", "metrics": {"accuracy": 1.0}}"#).unwrap();
        let sweep = d.path().join("runs/sw");
        std::fs::create_dir_all(&sweep).unwrap();
        for bad in ["../../outside", "/etc", "a/../../../outside"] {
            let v = serde_json::json!({"points": [{"point": bad, "status": "done", "index": 0}]});
            std::fs::write(sweep.join(SWEEP_FILE), v.to_string()).unwrap();
            let e = load_runs(std::slice::from_ref(&sweep)).unwrap_err().to_string();
            assert!(e.contains("point 0") && e.contains("not allowed"), "{bad}: {e}");
        }
        // A point that is a link out gives the sweep's own row for it, never the linked record.
        std::os::unix::fs::symlink(&outside, sweep.join("p0")).unwrap();
        std::fs::write(sweep.join(SWEEP_FILE), serde_json::json!({"points": [{"point": "p0", "status": "pending", "index": 0}]}).to_string()).unwrap();
        let f = load_runs(std::slice::from_ref(&sweep)).unwrap();
        assert!(matches!(&f.column_cells("status").unwrap()[..], [Cell::Str(s)] if s == "pending"));
        // Two links back to their own dir: the walk neither follows them nor explodes.
        let loops = d.path().join("runs/loops");
        std::fs::create_dir_all(loops.join("ev")).unwrap();
        std::fs::write(loops.join("ev/results.json"), r#"{"accuracy": 0.5, "n": 2}"#).unwrap();
        std::os::unix::fs::symlink(&loops, loops.join("a")).unwrap();
        std::os::unix::fs::symlink(&loops, loops.join("b")).unwrap();
        std::os::unix::fs::symlink(&outside, loops.join("c")).unwrap();
        assert_eq!(load_runs(&[loops]).unwrap().height(), 1);
    }

    #[test]
    fn load_and_aggregate_seeds() {
        let d = tempfile::tempdir().unwrap();
        point(d.path(), "a", 1, 1, 0.5, "done");
        point(d.path(), "b", 2, 1, 0.7, "done");
        point(d.path(), "c", 1, 2, 0.4, "done");
        point(d.path(), "e", 2, 2, 0.9, "failed");
        let f = load_runs(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(f.height(), 4);
        assert_eq!(f.cell(3, "status").unwrap(), Cell::Str("failed".into()));
        assert_eq!(f.cell(3, "reason").unwrap(), Cell::Str("boom".into()));
        assert_eq!(f.cell(0, "level").unwrap(), Cell::Int(1));
        let a = aggregate_seeds(&f, &["seed".into()]).unwrap();
        assert_eq!(a.height(), 2, "{}", a.to_table_string());
        assert_eq!(a.cell(0, "seeds").unwrap(), Cell::Int(2));
        let Cell::Float(m) = a.cell(0, "accuracy").unwrap() else { panic!() };
        assert!((m - 0.6).abs() < 1e-12);
        // sd = 0.1414…, half-width = 12.706 × 0.1414 / √2 = 1.27: clamped to [0, 1].
        assert_eq!(a.cell(0, "ci95_low").unwrap(), Cell::Float(0.0));
        // One seed (the failed one is left out): the run's own interval.
        assert_eq!(a.cell(1, "seeds").unwrap(), Cell::Int(1));
        let Cell::Float(l) = a.cell(1, "ci95_low").unwrap() else { panic!() };
        assert!((l - 0.3).abs() < 1e-12);
        assert!(aggregate_seeds(&f, &["nope".into()]).unwrap_err().to_string().contains("no column 'nope'"));
        assert!(load_runs(&[d.path().join("missing")]).is_err());
    }

    /// Issue 32: `truncated_frac` and `tokens_per_correct` on every row, derived from the counts
    /// by the evaluation's own definitions; a point recorded before `truncated` was takes it
    /// from its eval dir's report.
    #[test]
    fn every_row_has_truncation_share_and_tokens_per_correct() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        for (dir, truncated) in [(&old, None), (&new, Some(3))] {
            std::fs::create_dir_all(dir.join(EVAL_DIR)).unwrap();
            let mut m = serde_json::json!({"accuracy": 0.4, "n": 10, "correct": 4, "mean_tokens": 50.0});
            if let Some(t) = truncated {
                m["truncated"] = t.into();
            }
            std::fs::write(dir.join(POINT_FILE), serde_json::json!({"status": "done", "point": "p", "metrics": m}).to_string()).unwrap();
        }
        std::fs::write(old.join(EVAL_DIR).join("results.json"), r#"{"truncated": 2}"#).unwrap();
        let f = load_runs(&[old, new]).unwrap();
        assert_eq!(f.column_cells("truncated").unwrap(), vec![Cell::Int(2), Cell::Int(3)]);
        assert_eq!(f.column_cells("truncated_frac").unwrap(), vec![Cell::Float(0.2), Cell::Float(0.3)]);
        // 10 answers of 50 tokens, 4 correct: 125 tokens per correct answer.
        assert_eq!(f.column_cells("tokens_per_correct").unwrap(), vec![Cell::Float(125.0), Cell::Float(125.0)]);
        // No correct answer: unbounded, so null rather than 0.
        let none = d.path().join("none");
        std::fs::create_dir_all(&none).unwrap();
        std::fs::write(none.join(POINT_FILE), r#"{"status": "done", "metrics": {"n": 5, "correct": 0, "mean_tokens": 9.0, "truncated": 0}}"#).unwrap();
        assert_eq!(load_runs(&[none]).unwrap().cell(0, "tokens_per_correct").unwrap(), Cell::Null);
    }

    /// Issue 32: `load_losses` has one row per logged step of every run that trained, with the
    /// run's config, in log order; runs without a log add none; no log at all is an error.
    #[test]
    fn losses_are_every_step_of_every_run() {
        let d = tempfile::tempdir().unwrap();
        point(d.path(), "a", 1, 1, 0.5, "done");
        point(d.path(), "b", 1, 2, 0.7, "done");
        point(d.path(), "c", 1, 3, 0.7, "done");
        let log = |name: &str, losses: &[f64]| {
            let lines: String = losses.iter().enumerate().map(|(i, l)| serde_json::json!({"step": i + 1, "loss": l, "lr": 1e-4}).to_string() + "\n").collect();
            // A torn last line (a killed run) is left out.
            std::fs::write(RunDir::new(d.path().join(name)).log_path(), lines + "{\"step\": 9, \"lo").unwrap();
        };
        log("a", &[2.0, 1.5, 1.0]);
        log("b", &[3.0, 2.5]);
        let f = load_losses(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(f.height(), 5, "{}", f.to_table_string());
        assert_eq!(f.column_cells("loss").unwrap(), [2.0, 1.5, 1.0, 3.0, 2.5].map(Cell::Float).to_vec());
        assert_eq!(f.column_cells("step").unwrap(), [1, 2, 3, 1, 2].map(Cell::Int).to_vec());
        assert_eq!(f.column_cells("level").unwrap(), [1, 1, 1, 2, 2].map(Cell::Int).to_vec());
        assert_eq!(f.column_cells("grad_norm").unwrap(), vec![Cell::Null; 5], "a column the log lacks is null");
        let e = load_losses(&[d.path().join("c")]).unwrap_err().to_string();
        assert!(e.contains("no training logs"), "{e}");
    }

    /// Issue 32: aggregating seeds keeps the measures a sweep table shows (averaged) and a paired
    /// comparison's interval and p-value where one seed makes them (never a key of the groups).
    #[test]
    fn aggregated_seeds_keep_tokens_truncation_and_paired_columns() {
        let d = tempfile::tempdir().unwrap();
        point(d.path(), "a", 1, 1, 0.5, "done");
        point(d.path(), "b", 2, 1, 0.7, "done");
        point(d.path(), "c", 1, 2, 0.4, "done");
        let f = load_runs(&[d.path().to_path_buf()]).unwrap();
        let fl = |v: &[f64]| ColumnData::Float(v.iter().map(|x| Some(*x)).collect());
        let f = f
            .with_added_columns(vec![
                ("mean_tokens".into(), fl(&[10.0, 20.0, 7.0])),
                ("vs_baseline".into(), fl(&[0.1, 0.3, -0.1])),
                ("vs_baseline_low".into(), fl(&[0.0, 0.1, -0.2])),
                ("p_vs_baseline".into(), fl(&[0.04, 0.01, 0.5])),
            ])
            .unwrap();
        let a = aggregate_seeds(&f, &["seed".into()]).unwrap();
        assert_eq!(a.height(), 2, "{}", a.to_table_string());
        assert_eq!(a.column_cells("mean_tokens").unwrap(), vec![Cell::Float(15.0), Cell::Float(7.0)]);
        let Cell::Float(v) = a.cell(0, "vs_baseline").unwrap() else { panic!() };
        assert!((v - 0.2).abs() < 1e-12, "the mean paired difference");
        assert_eq!(a.column_cells("p_vs_baseline").unwrap(), vec![Cell::Null, Cell::Float(0.5)], "one seed's p only");
        assert_eq!(a.column_cells("vs_baseline_low").unwrap(), vec![Cell::Null, Cell::Float(-0.2)]);
    }
}
