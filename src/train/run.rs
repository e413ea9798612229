//! Run directories: `runs/<name>/` holds `config.json` (what was asked), `train_log.jsonl` (one
//! line per optimizer step), `provenance.jsonl` (one line per invocation), `truncation.json`
//! (what `max_len` cut) and `checkpoint/` (weights, optimizer moments, scheduler step, as
//! safetensors + JSON); with `log_to`, `tensorboard/` (event files) and `mlflow_run.json` (the
//! MLflow run it logs to, in `<runs dir>/mlruns/`). A checkpoint is written to a temporary folder and renamed into place, so
//! an interrupted save never leaves a checkpoint that looks complete.
//!
//! [`RunDir`] is the only code that knows these names: sweeps, `results()`, export, evaluation
//! and the workspace ask it for paths, for the training summary (the one reader of
//! `train_log.jsonl`) and for whether a run is complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, Moments};
use crate::error::{Error, ModelContext, Result};
use crate::journal::{ensure_identity, Identity, Journal};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub adam_t: u64,
    pub tokens_seen: u64,
}

/// A run dir; every file name inside it is spelled here once.
pub struct RunDir {
    pub path: PathBuf,
}

const CONFIG: &str = "config.json";
const LOG: &str = "train_log.jsonl";
const PROVENANCE: &str = "provenance.jsonl";
const TRUNCATION: &str = "truncation.json";
const CHECKPOINT: &str = "checkpoint";
const TENSORBOARD: &str = "tensorboard";
const MLFLOW_RUN: &str = "mlflow_run.json";
/// Where a checkpoint is staged, and where the one it replaces waits until the rename is done.
const CHECKPOINT_TMP: &str = "checkpoint.tmp";
const CHECKPOINT_OLD: &str = "checkpoint.old";
/// Inside a checkpoint.
const STATE: &str = "state.json";
const WEIGHTS: &str = "model.safetensors";
const MOMENTS: &str = "optimizer.safetensors";

/// What the training log says about a run: the first and last logged step (absent values are
/// `None`, as in a log without lines).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainSummary {
    /// The last logged step's number.
    pub steps: Option<u64>,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    /// Tokens seen up to the last logged step.
    pub tokens: Option<u64>,
}

impl TrainSummary {
    /// The summary as `results()` and sweep metrics columns: `train_steps`, `train_loss_first`,
    /// `train_loss_last`, `train_tokens` (null where the log has no value).
    pub fn metrics(&self) -> [(&'static str, serde_json::Value); 4] {
        let v = |x: Option<serde_json::Value>| x.unwrap_or(serde_json::Value::Null);
        [
            ("train_steps", v(self.steps.map(Into::into))),
            ("train_loss_first", v(self.loss_first.map(Into::into))),
            ("train_loss_last", v(self.loss_last.map(Into::into))),
            ("train_tokens", v(self.tokens.map(Into::into))),
        ]
    }
}

fn ce(p: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::data(p, crate::error::candle_message(&e))
}

fn parse_state(p: &Path, text: &str) -> Result<TrainState> {
    serde_json::from_str(text).map_err(|e| Error::data(p, e.to_string()))
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT)
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join(LOG)
    }

    /// `config.json`: the run's identity (base model, options, data fingerprint).
    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG)
    }

    pub fn provenance_path(&self) -> PathBuf {
        self.path.join(PROVENANCE)
    }

    pub fn truncation_path(&self) -> PathBuf {
        self.path.join(TRUNCATION)
    }

    /// TensorBoard's event files (`log_to: "tensorboard"`).
    pub fn tensorboard_dir(&self) -> PathBuf {
        self.path.join(TENSORBOARD)
    }

    /// The ids of the MLflow run this run logs to (`log_to: "mlflow"`).
    pub fn mlflow_run_path(&self) -> PathBuf {
        self.path.join(MLFLOW_RUN)
    }

    /// The tracking files of this run dir.
    pub fn track_files(&self) -> crate::track::RunFiles {
        crate::track::RunFiles { tensorboard: self.tensorboard_dir(), mlflow_ids: self.mlflow_run_path() }
    }

    /// The last checkpoint's step counters.
    pub fn state_path(&self) -> PathBuf {
        self.checkpoint().join(STATE)
    }

    /// The last checkpoint's weights.
    pub fn weights_path(&self) -> PathBuf {
        self.checkpoint().join(WEIGHTS)
    }

    /// Whether a dir of this name inside a run dir is the run's own (a checkpoint, staged or
    /// replaced, or TensorBoard's files): it holds no results of its own.
    pub fn is_own_subdir(name: &std::ffi::OsStr) -> bool {
        [CHECKPOINT, CHECKPOINT_TMP, CHECKPOINT_OLD, TENSORBOARD].iter().any(|n| name == *n)
    }

    /// A training run's record, read without following links: `config.json` and
    /// `train_log.jsonl` are files here (what `results()` takes for a training run).
    pub fn is_recorded(&self) -> bool {
        crate::paths::is_real_file(&self.config_path()) && crate::paths::is_real_file(&self.log_path())
    }

    /// The run's `config.json`, parsed.
    pub fn config(&self) -> Result<serde_json::Value> {
        let p = self.config_path();
        serde_json::from_str(&crate::paths::read_text(&p)?).map_err(|e| Error::data(&p, e.to_string()))
    }

    /// The last checkpoint's step counters.
    pub fn state(&self) -> Result<TrainState> {
        let p = self.state_path();
        parse_state(&p, &crate::paths::read_text(&p)?)
    }

    /// The run has a checkpoint (a dir itself, not a link) whose state has taken every step.
    /// A missing or unreadable state is an incomplete run, not an error.
    pub fn is_complete(&self) -> bool {
        crate::paths::is_real_dir(&self.checkpoint()) && self.state().is_ok_and(|s| s.step >= s.total_steps)
    }

    /// The first and last line of `train_log.jsonl`; lines that do not parse (a torn last
    /// line of a killed run) are left out.
    pub fn summary(&self) -> Result<TrainSummary> {
        let lines = self.log_lines()?;
        let (first, last) = (lines.first(), lines.last());
        Ok(TrainSummary {
            steps: last.and_then(|l| l["step"].as_u64()),
            loss_first: first.and_then(|l| l["loss"].as_f64()),
            loss_last: last.and_then(|l| l["loss"].as_f64()),
            tokens: last.and_then(|l| l["tokens"].as_u64()),
        })
    }

    /// Every logged step of `train_log.jsonl` (one object per optimizer step), without lines that
    /// do not parse (a torn last line of a killed run).
    pub fn log_lines(&self) -> Result<Vec<serde_json::Value>> {
        let text = crate::paths::read_text(&self.log_path())?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Write config.json, or check that an existing one is the same run (true when it also
    /// holds a checkpoint to resume). A different config in the same dir is an error: resuming
    /// it would mix two experiments.
    pub fn init(&self, config: &serde_json::Value) -> Result<bool> {
        match ensure_identity(&self.config_path(), config, "a different run")? {
            Identity::Created => Ok(false),
            Identity::Same => Ok(self.state_path().exists()),
        }
    }

    /// The training log (one JSON object per optimizer step) and the lines already in it.
    pub fn open_log(&self) -> Result<(Journal<serde_json::Value>, Vec<serde_json::Value>)> {
        Journal::open(&self.log_path())
    }

    pub fn save(&self, params: &[(&String, &Var)], opt: &AdamW, state: &TrainState) -> Result<()> {
        let tmp = self.path.join(CHECKPOINT_TMP);
        // A link at the temporary dir's name is removed itself, never followed.
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let weights: HashMap<String, Tensor> = params.iter().map(|(n, v)| ((*n).clone(), v.as_tensor().clone())).collect();
        let wp = tmp.join(WEIGHTS);
        candle_core::safetensors::save(&weights, &wp).map_err(ce(&wp))?;
        let mut moments = HashMap::new();
        for ((n, v), mo) in params.iter().zip(&opt.moments) {
            let (m, vv) = mo.tensors(v).model_ctx(format!("reading the optimizer moments of '{n}'"))?;
            moments.insert(format!("m.{n}"), m);
            moments.insert(format!("v.{n}"), vv);
        }
        let op = tmp.join(MOMENTS);
        candle_core::safetensors::save(&moments, &op).map_err(ce(&op))?;
        let sp = tmp.join(STATE);
        crate::paths::write(&sp, serde_json::to_string_pretty(state).unwrap().as_bytes())?;
        let dst = self.checkpoint();
        let old = self.path.join(CHECKPOINT_OLD);
        if dst.exists() {
            std::fs::rename(&dst, &old).map_err(|e| Error::io(&dst, e))?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// Delete the optimizer moments of a complete run (two thirds of a full-SFT checkpoint):
    /// only an unfinished run needs them to resume. The weights stay (export, evaluation). A
    /// run that is not complete keeps everything. Returns the bytes freed.
    pub fn drop_optimizer_state(&self) -> Result<u64> {
        let sp = self.state_path();
        let Ok(text) = crate::paths::read_text(&sp) else { return Ok(0) };
        let state = parse_state(&sp, &text)?;
        let op = self.checkpoint().join(MOMENTS);
        if state.step < state.total_steps || !op.exists() {
            return Ok(0);
        }
        let bytes = std::fs::metadata(&op).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&op).map_err(|e| Error::io(&op, e))?;
        Ok(bytes)
    }

    /// Restore weights and optimizer state from the checkpoint into `params`/`opt`.
    pub fn load(&self, params: &[(&String, &Var)], opt: &mut AdamW, device: &Device) -> Result<TrainState> {
        let dir = self.checkpoint();
        let state = self.state()?;
        let wp = self.weights_path();
        let weights = candle_core::safetensors::load(&wp, device).map_err(ce(&wp))?;
        let op = dir.join(MOMENTS);
        let complete = state.step >= state.total_steps;
        // A complete run may have dropped its moments (`drop_optimizer_state`): it has no step
        // left to take, so its weights are all it needs.
        let moments = if complete && !op.exists() {
            None
        } else if !op.exists() {
            return Err(Error::data(
                &op,
                format!(
                    "missing: the run stopped at step {}/{} and cannot resume without its optimizer state; delete {} to train from the start",
                    state.step,
                    state.total_steps,
                    dir.display()
                ),
            ));
        } else {
            Some(candle_core::safetensors::load(&op, device).map_err(ce(&op))?)
        };
        for (i, (n, v)) in params.iter().enumerate() {
            let w = weights.get(*n).ok_or_else(|| Error::data(&wp, format!("checkpoint lacks '{n}'")))?;
            if w.shape() != v.shape() {
                return Err(Error::data(&wp, format!("'{n}' has shape {:?}, the model {:?}", w.dims(), v.dims())));
            }
            v.set(w).model_ctx(format!("restoring '{n}' from the checkpoint"))?;
            let Some(moments) = &moments else { continue };
            let (m, vv) = (moments.get(&format!("m.{n}")), moments.get(&format!("v.{n}")));
            let (Some(m), Some(vv)) = (m, vv) else { return Err(Error::data(&op, format!("optimizer state lacks '{n}'"))) };
            opt.moments[i] = Moments::from_tensors(m.clone(), vv.clone(), v).model_ctx(format!("restoring the optimizer moments of '{n}'"))?;
        }
        opt.t = state.adam_t;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize, total_steps: usize) -> String {
        serde_json::to_string(&TrainState { step, total_steps, adam_t: step as u64, tokens_seen: 0 }).unwrap()
    }

    #[test]
    fn summary_reads_first_and_last_step_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        assert!(run.summary().is_err(), "no log is an error, not an empty summary");
        std::fs::write(run.log_path(), "{\"step\":1,\"loss\":2.5,\"tokens\":10}\n{\"step\":2,\"loss\":1.5,\"tokens\":20}\n{\"step\":3,\"lo").unwrap();
        let s = run.summary().unwrap();
        assert_eq!(s, TrainSummary { steps: Some(2), loss_first: Some(2.5), loss_last: Some(1.5), tokens: Some(20) });
        std::fs::write(run.log_path(), "").unwrap();
        let empty = run.summary().unwrap();
        assert!(empty.metrics().iter().all(|(_, v)| v.is_null()), "{empty:?}");
    }

    #[test]
    fn complete_only_with_a_real_checkpoint_that_took_every_step() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path().join("r"));
        assert!(!run.is_complete(), "no dir");
        std::fs::create_dir_all(run.checkpoint()).unwrap();
        assert!(!run.is_complete(), "no state");
        std::fs::write(run.state_path(), state(3, 5)).unwrap();
        assert!(!run.is_complete(), "3 of 5 steps");
        std::fs::write(run.state_path(), state(5, 5)).unwrap();
        assert!(run.is_complete());
        // A checkpoint reached through a link is not this run's.
        let linked = RunDir::new(d.path().join("l"));
        std::fs::create_dir_all(&linked.path).unwrap();
        std::os::unix::fs::symlink(run.checkpoint(), linked.checkpoint()).unwrap();
        assert!(!linked.is_complete());
    }

    #[test]
    fn recorded_needs_config_and_log_as_files() {
        let d = tempfile::tempdir().unwrap();
        let run = RunDir::new(d.path());
        std::fs::write(run.config_path(), "{}").unwrap();
        assert!(!run.is_recorded(), "no log");
        std::os::unix::fs::symlink(run.config_path(), run.log_path()).unwrap();
        assert!(!run.is_recorded(), "a linked log");
        std::fs::remove_file(run.log_path()).unwrap();
        std::fs::write(run.log_path(), "").unwrap();
        assert!(run.is_recorded());
        assert!(RunDir::is_own_subdir("checkpoint.tmp".as_ref()) && RunDir::is_own_subdir("tensorboard".as_ref()) && !RunDir::is_own_subdir("eval".as_ref()));
    }
}
