//! Experiment tracking in the files the field's tools read: TensorBoard event files
//! ([`tensorboard`]) and MLflow's file store ([`mlflow`]), chosen by `log_to`.
//!
//! Invariants:
//! * `log_to` says where a run is logged, never what the run is: it is no part of a run's or a
//!   sweep point's identity, so turning it on for an existing run resumes that run.
//! * A [`Tracker`] logs the same values to every sink it was opened with; one opened with no sink
//!   writes nothing at all.
//! * TensorBoard files go to the run dir's own `tensorboard/` dir (one new file per
//!   invocation); MLflow runs to `<runs dir>/mlruns/`, one MLflow run per cotlab run dir (its ids
//!   kept in that dir, so a resumed run logs to the same MLflow run).

pub mod mlflow;
pub mod tensorboard;

use std::path::PathBuf;

use crate::error::Result;

crate::choices! {
    /// A tool `log_to` writes for.
    pub enum Sink("log_to") {
        Tensorboard = "tensorboard",
        Mlflow = "mlflow",
    }
}

/// `log_to`: one sink name or a list of them (default none). Read from a string or a list; a
/// name that is not a sink is an error naming the choices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogTo(pub Vec<Sink>);

impl LogTo {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, s: Sink) -> bool {
        self.0.contains(&s)
    }
}

impl serde::Serialize for LogTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|k| k.name()))
    }
}

impl<'de> serde::Deserialize<'de> for LogTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LogTo;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"tensorboard\", \"mlflow\" or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<LogTo, E> {
                Sink::parse(s).map(|k| LogTo(vec![k])).map_err(E::custom)
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<LogTo, E> {
                Ok(LogTo::default())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<LogTo, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    let k = Sink::parse(&s).map_err(<A::Error as serde::de::Error>::custom)?;
                    if !out.contains(&k) {
                        out.push(k);
                    }
                }
                Ok(LogTo(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a run is logged besides its run dir: the MLflow store, the experiment and the run's
/// name there.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `<runs dir>/mlruns`.
    pub mlruns: PathBuf,
    /// The sweep's name, or `cotlab` for a plain run.
    pub experiment: String,
    /// `mlflow.runName`: the run's (or the sweep point's) name.
    pub run_name: String,
}

/// What a tracked run records once: its parameters and tags.
#[derive(Clone, Debug, Default)]
pub struct RunRecord {
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

/// The files of one run dir that tracking writes ([`crate::train::RunDir`] names them).
#[derive(Clone, Debug)]
pub struct RunFiles {
    /// TensorBoard's dir inside the run dir.
    pub tensorboard: PathBuf,
    /// The file keeping the run's MLflow ids.
    pub mlflow_ids: PathBuf,
}

/// The sinks of one invocation of a run (see the module doc).
pub struct Tracker {
    tb: Option<tensorboard::EventWriter>,
    mlflow: Option<mlflow::MlflowRun>,
}

impl Tracker {
    /// Open every sink of `log_to` for a run that trains on from step `resumed_from` (its
    /// `train/…` values past it are dropped from MLflow, and TensorBoard told to drop them), or
    /// that only adds values (`None`: an evaluation); `record` goes to MLflow.
    pub fn open(log_to: &LogTo, files: &RunFiles, target: &Target, resumed_from: Option<u64>, record: &RunRecord) -> Result<Tracker> {
        let tb = log_to.has(Sink::Tensorboard).then(|| tensorboard::EventWriter::new(&files.tensorboard, resumed_from));
        let mlflow = if log_to.has(Sink::Mlflow) {
            let run = mlflow::MlflowRun::open(&target.mlruns, &target.experiment, &target.run_name, &files.mlflow_ids)?;
            if let Some(step) = resumed_from {
                run.truncate_after("train", step)?;
            }
            run.log_params(&record.params)?;
            let mut tags = record.tags.clone();
            tags.push(("mlflow.runName".into(), target.run_name.clone()));
            run.set_tags(&tags)?;
            Some(run)
        } else {
            None
        };
        Ok(Tracker { tb, mlflow })
    }

    /// The MLflow run's ids, when logging to MLflow.
    pub fn mlflow_ids(&self) -> Option<&mlflow::RunIds> {
        self.mlflow.as_ref().map(|r| &r.ids)
    }

    /// `values` (tag, value) at `step`, to every sink.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        if let Some(tb) = &mut self.tb {
            tb.scalars(step, values)?;
        }
        if let Some(m) = &self.mlflow {
            m.log_metrics(step, values)?;
        }
        Ok(())
    }

    /// The run is complete: MLflow's status FINISHED.
    pub fn finish(&self) -> Result<()> {
        match &self.mlflow {
            Some(m) => m.set_status(mlflow::Status::Finished),
            None => Ok(()),
        }
    }
}

/// A JSON object flattened to MLflow params: `lora.r`, `data.level`; strings as themselves,
/// everything else as JSON text (nulls left out: MLflow has no empty param).
pub fn flat_params(v: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x, out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_to_reads_a_name_or_a_list_and_names_the_choices() {
        let read = |v: serde_json::Value| serde_json::from_value::<LogTo>(v).map_err(|e| e.to_string());
        assert_eq!(read(serde_json::json!("mlflow")).unwrap(), LogTo(vec![Sink::Mlflow]));
        assert_eq!(read(serde_json::json!(["tensorboard", "mlflow", "mlflow"])).unwrap(), LogTo(vec![Sink::Tensorboard, Sink::Mlflow]));
        assert_eq!(read(serde_json::json!([])).unwrap(), LogTo::default());
        for bad in [serde_json::json!("wandb"), serde_json::json!(["tensorboard", "wandb"])] {
            let e = read(bad.clone()).unwrap_err();
            assert!(e.contains("log_to") && e.contains("wandb") && e.contains("tensorboard") && e.contains("mlflow"), "{bad}: {e}");
        }
        assert!(read(serde_json::json!(3)).unwrap_err().contains("a list of them"));
    }

    #[test]
    fn params_are_flattened_with_dotted_keys() {
        let p = flat_params(&serde_json::json!({"lr": 5e-5, "lora": {"r": 8}, "data": {"level": null, "dataset": "svamp"}}));
        let want: Vec<(String, String)> =
            [("data.dataset", "svamp"), ("lora.r", "8"), ("lr", "0.00005")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(p, want);
    }
}
