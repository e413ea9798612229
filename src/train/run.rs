//! Run directories: `runs/<name>/` holds `config.json` (what was asked), `train_log.jsonl` (one
//! line per optimizer step), and `checkpoint/` (weights, optimizer moments, scheduler step, as
//! safetensors + JSON). A checkpoint is written to a temporary folder and renamed into place, so
//! an interrupted save never leaves a checkpoint that looks complete.

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

pub struct RunDir {
    pub path: PathBuf,
}

fn ce(p: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::data(p, crate::error::candle_message(&e))
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("train_log.jsonl")
    }

    /// Write config.json, or check that an existing one is the same run (true when it also
    /// holds a checkpoint to resume). A different config in the same dir is an error: resuming
    /// it would mix two experiments.
    pub fn init(&self, config: &serde_json::Value) -> Result<bool> {
        match ensure_identity(&self.path.join("config.json"), config, "a different run")? {
            Identity::Created => Ok(false),
            Identity::Same => Ok(self.checkpoint().join("state.json").exists()),
        }
    }

    /// The training log (one JSON object per optimizer step) and the lines already in it.
    pub fn open_log(&self) -> Result<(Journal<serde_json::Value>, Vec<serde_json::Value>)> {
        Journal::open(&self.log_path())
    }

    pub fn save(&self, params: &[(&String, &Var)], opt: &AdamW, state: &TrainState) -> Result<()> {
        let tmp = self.path.join("checkpoint.tmp");
        // A link at the temporary dir's name is removed itself, never followed.
        if std::fs::symlink_metadata(&tmp).is_ok() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let weights: HashMap<String, Tensor> = params.iter().map(|(n, v)| ((*n).clone(), v.as_tensor().clone())).collect();
        let wp = tmp.join("model.safetensors");
        candle_core::safetensors::save(&weights, &wp).map_err(ce(&wp))?;
        let mut moments = HashMap::new();
        for ((n, v), mo) in params.iter().zip(&opt.moments) {
            let (m, vv) = mo.tensors(v).model_ctx(format!("reading the optimizer moments of '{n}'"))?;
            moments.insert(format!("m.{n}"), m);
            moments.insert(format!("v.{n}"), vv);
        }
        let op = tmp.join("optimizer.safetensors");
        candle_core::safetensors::save(&moments, &op).map_err(ce(&op))?;
        let sp = tmp.join("state.json");
        crate::paths::write(&sp, serde_json::to_string_pretty(state).unwrap().as_bytes())?;
        let dst = self.checkpoint();
        let old = self.path.join("checkpoint.old");
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
        let dir = self.checkpoint();
        let sp = dir.join("state.json");
        let Ok(text) = crate::paths::read_text(&sp) else { return Ok(0) };
        let state: TrainState = serde_json::from_str(&text).map_err(|e| Error::data(&sp, e.to_string()))?;
        let op = dir.join("optimizer.safetensors");
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
        let sp = dir.join("state.json");
        let state: TrainState = serde_json::from_str(&crate::paths::read_text(&sp)?)
            .map_err(|e| Error::data(&sp, e.to_string()))?;
        let wp = dir.join("model.safetensors");
        let weights = candle_core::safetensors::load(&wp, device).map_err(ce(&wp))?;
        let op = dir.join("optimizer.safetensors");
        let complete = state.step >= state.total_steps;
        // A complete run may have dropped its moments (`drop_optimizer_state`): it has no step
        // left to take, so its weights are all it needs.
        let moments = if complete && !op.exists() {
            None
        } else if !op.exists() {
            return Err(Error::data(
                &op,
                format!("missing: the run stopped at step {}/{} and cannot resume without its optimizer state; delete {} to train from the start", state.step, state.total_steps, dir.display()),
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
