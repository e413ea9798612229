//! MLflow's file store: the `mlruns/` dir that `mlflow.set_tracking_uri("file://…/mlruns")`,
//! `mlflow ui --backend-store-uri …/mlruns` and `MlflowClient` read (mlflow's
//! `store/tracking/file_store.py`: `<experiment id>/meta.yaml`, `<experiment id>/<run id>/` with
//! `meta.yaml`, `metrics/<key>` lines `<ms> <value> <step>`, `params/<key>`, `tags/<key>`).
//!
//! Invariants:
//! * An experiment is created race-free: its id is the one an experiment of that name already
//!   has in the store, else a number derived from the name (so concurrent Slurm tasks pick the
//!   same one), and its dir is staged beside `mlruns/` and renamed into place: a reader (or a
//!   second creator) sees a complete experiment or none, and the loser of a race uses the
//!   winner's.
//! * A run's dir is staged and renamed the same way; the caller's id file (in the cotlab run
//!   dir) names it afterwards, so a resumed run logs to the same MLflow run.
//! * `meta.yaml` is only ever replaced atomically (status, end time).
//! * Resuming at step `k` drops the `train/…` metric lines past `k` (steps trained again),
//!   as the training log does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::journal::write_atomic;

/// `RunStatus` as the file store writes it in `meta.yaml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running = 1,
    Finished = 3,
}

/// The experiment every store has (`FileStore` creates it with the root).
const DEFAULT_EXPERIMENT: (&str, &str) = ("0", "Default");
const TRASH: &str = ".trash";
const META: &str = "meta.yaml";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A YAML scalar that reads back as this exact string (single-quoted).
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A `meta.yaml` value as text: quotes removed, `''` unescaped (what [`yaml_str`] and PyYAML write).
fn yaml_value<'a>(meta: &'a str, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let v = meta.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))?.trim();
    Some(match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(q) => q.replace("''", "'").into(),
        None => v.trim_matches('"').into(),
    })
}

fn file_uri(p: &Path) -> String {
    format!("file://{}", crate::paths::absolute(p).display())
}

fn experiment_meta(root: &Path, id: &str, name: &str) -> String {
    let t = now_ms();
    format!(
        "artifact_location: {}\ncreation_time: {t}\nexperiment_id: {}\nlast_update_time: {t}\nlifecycle_stage: active\nname: {}\n",
        yaml_str(&file_uri(&root.join(id))),
        yaml_str(id),
        yaml_str(name)
    )
}

/// Rename the staged dir `tmp` to `dst`; false (and `tmp` removed) when `dst` already exists.
fn publish_dir(tmp: &Path, dst: &Path) -> Result<bool> {
    match std::fs::rename(tmp, dst) {
        Ok(()) => Ok(true),
        Err(_) if dst.is_dir() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(tmp);
            Err(Error::io(dst, e))
        }
    }
}

/// A staging dir beside `mlruns/` (the same file system, so the rename is atomic), never inside
/// it: readers list every dir there as an experiment.
fn staging(root: &Path, what: &str) -> Result<PathBuf> {
    let parent = root.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".mlruns-{what}-{}", crate::paths::unique_suffix()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// The id a new experiment of this name gets: a decimal number (as MLflow's own ids) from the
/// name's SHA-256.
pub fn experiment_id_for(name: &str) -> String {
    let h = Sha256::digest(name.as_bytes());
    let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    (n % 1_000_000_000_000_000_000).to_string()
}

/// The id of the active experiment named `name` in the store, if any.
fn find_experiment(root: &Path, name: &str) -> Option<String> {
    let mut found: Vec<String> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != TRASH)
        .filter_map(|e| {
            let meta = std::fs::read_to_string(e.path().join(META)).ok()?;
            (yaml_value(&meta, "name")? == name && yaml_value(&meta, "lifecycle_stage").as_deref() != Some("deleted"))
                .then(|| e.file_name().to_string_lossy().to_string())
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Create experiment `id` named `name` unless it exists; an existing one of another name is an error.
fn create_experiment(root: &Path, id: &str, name: &str) -> Result<()> {
    let dst = root.join(id);
    if !dst.join(META).is_file() {
        let tmp = staging(root, "experiment")?;
        let meta = tmp.join(META);
        crate::paths::write(&meta, experiment_meta(root, id, name).as_bytes())?;
        publish_dir(&tmp, &dst)?;
    }
    let meta = crate::paths::read_text(&dst.join(META))?;
    match yaml_value(&meta, "name") {
        Some(n) if n == name => Ok(()),
        other => {
            Err(Error::data(dst.join(META), format!("experiment {id} is named {other:?}, not '{name}': move that experiment away or log under another name")))
        }
    }
}

/// The experiment named `name` in the store at `root` (created, with the store, if missing):
/// its id.
pub fn ensure_experiment(root: &Path, name: &str) -> Result<String> {
    for d in [root.to_path_buf(), root.join(TRASH)] {
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    create_experiment(root, DEFAULT_EXPERIMENT.0, DEFAULT_EXPERIMENT.1)?;
    if let Some(id) = find_experiment(root, name) {
        return Ok(id);
    }
    let id = experiment_id_for(name);
    create_experiment(root, &id, name)?;
    Ok(id)
}

/// The ids a cotlab run dir keeps of its MLflow run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunIds {
    pub experiment_id: String,
    pub run_id: String,
}

/// One MLflow run in a file store.
#[derive(Debug)]
pub struct MlflowRun {
    pub root: PathBuf,
    pub ids: RunIds,
    name: String,
    start_time: u64,
}

impl MlflowRun {
    /// The run that `id_file` names, when the store under `root` still holds it; else a new run
    /// of experiment `experiment` named `run_name`, whose ids are then written to `id_file`.
    /// The run is RUNNING either way.
    pub fn open(root: &Path, experiment: &str, run_name: &str, id_file: &Path) -> Result<MlflowRun> {
        let experiment_id = ensure_experiment(root, experiment)?;
        if let Ok(text) = std::fs::read_to_string(id_file) {
            let ids: RunIds = serde_json::from_str(&text).map_err(|e| Error::data(id_file, format!("{e}: delete it to start a new MLflow run")))?;
            let meta = root.join(&ids.experiment_id).join(&ids.run_id).join(META);
            if let Ok(m) = std::fs::read_to_string(&meta) {
                let start_time = yaml_value(&m, "start_time").and_then(|v| v.parse().ok()).unwrap_or_else(now_ms);
                let run = MlflowRun { root: root.to_path_buf(), ids, name: run_name.to_string(), start_time };
                run.set_status(Status::Running)?;
                return Ok(run);
            }
            eprintln!("[mlflow] {} names run {} that {} no longer holds: starting a new MLflow run", id_file.display(), ids.run_id, root.display());
        }
        let mut h = Sha256::new();
        h.update(format!("{experiment_id}\0{run_name}\0{}", crate::paths::unique_suffix()).as_bytes());
        let run_id: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        let run = MlflowRun { root: root.to_path_buf(), ids: RunIds { experiment_id, run_id }, name: run_name.to_string(), start_time: now_ms() };
        let tmp = staging(root, "run")?;
        for d in ["metrics", "params", "tags", "artifacts"] {
            std::fs::create_dir_all(tmp.join(d)).map_err(|e| Error::io(tmp.join(d), e))?;
        }
        crate::paths::write(&tmp.join(META), run.meta(Status::Running, None).as_bytes())?;
        if !publish_dir(&tmp, &run.dir())? {
            return Err(Error::data(run.dir(), "a run of this id exists already: try again"));
        }
        write_atomic(id_file, serde_json::to_string_pretty(&run.ids).expect("JSON").as_bytes())?;
        Ok(run)
    }

    /// `mlruns/<experiment id>/<run id>`.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.ids.experiment_id).join(&self.ids.run_id)
    }

    fn meta(&self, status: Status, end_time: Option<u64>) -> String {
        let dir = self.dir();
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let mut s = String::new();
        let _ = writeln!(s, "artifact_uri: {}", yaml_str(&file_uri(&dir.join("artifacts"))));
        let _ = writeln!(s, "end_time: {}", end_time.map_or("null".to_string(), |t| t.to_string()));
        let _ = writeln!(s, "entry_point_name: ''");
        let _ = writeln!(s, "experiment_id: {}", yaml_str(&self.ids.experiment_id));
        let _ = writeln!(s, "lifecycle_stage: active");
        let _ = writeln!(s, "run_id: {}", yaml_str(&self.ids.run_id));
        let _ = writeln!(s, "run_name: {}", yaml_str(&self.name));
        let _ = writeln!(s, "source_name: ''\nsource_type: 4\nsource_version: ''");
        let _ = writeln!(s, "start_time: {}", self.start_time);
        let _ = writeln!(s, "status: {}", status as u8);
        let _ = writeln!(s, "tags: []\nuser_id: {}", yaml_str(&user));
        s
    }

    /// Replace `meta.yaml` with this status (FINISHED records the end time).
    pub fn set_status(&self, status: Status) -> Result<()> {
        let end = (status == Status::Finished).then(now_ms);
        write_atomic(&self.dir().join(META), self.meta(status, end).as_bytes())
    }

    /// A key as a path under `kind/` (`train/loss` is `metrics/train/loss`, as MLflow stores it).
    fn key_path(&self, kind: &str, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty() && key.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok {
            return Err(Error::usage(format!("mlflow: '{key}' is not a key MLflow stores (empty, or a '.' / '..' part)")));
        }
        Ok(self.dir().join(kind).join(key))
    }

    fn write_text(&self, kind: &str, key: &str, value: &str) -> Result<()> {
        let p = self.key_path(kind, key)?;
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        // A plain write: a staged temporary name would be read as a key of its own meanwhile.
        crate::paths::write(&p, value.as_bytes())
    }

    /// `params/<key>` files.
    pub fn log_params(&self, params: &[(String, String)]) -> Result<()> {
        params.iter().try_for_each(|(k, v)| self.write_text("params", k, v))
    }

    /// `tags/<key>` files.
    pub fn set_tags(&self, tags: &[(String, String)]) -> Result<()> {
        tags.iter().try_for_each(|(k, v)| self.write_text("tags", k, v))
    }

    /// One line `<ms> <value> <step>` appended to each metric's file.
    pub fn log_metrics(&self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        use std::io::Write;
        let t = now_ms();
        for (k, v) in values {
            let p = self.key_path("metrics", k)?;
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(|e| Error::io(&p, e))?;
            f.write_all(format!("{t} {v} {step}\n").as_bytes()).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    /// Drop the lines of the metrics under `metrics/<prefix>` whose step is past `step` (and any
    /// torn line), each file replaced atomically.
    pub fn truncate_after(&self, prefix: &str, step: u64) -> Result<()> {
        let dir = self.key_path("metrics", prefix)?;
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(()) };
        for e in entries.filter_map(|e| e.ok()).filter(|e| e.path().is_file()) {
            let p = e.path();
            let text = crate::paths::read_text(&p)?;
            let keep: String = text
                .lines()
                .filter(|l| {
                    let parts: Vec<&str> = l.split(' ').collect();
                    parts.len() == 3 && parts[2].parse::<u64>().is_ok_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if keep != text {
                write_atomic(&p, keep.as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two creators of one experiment (Slurm tasks) end with one experiment dir and one id, and
    /// an experiment made by MLflow itself (a random id) is found by name.
    #[test]
    fn experiment_creation_is_race_free_and_finds_existing_ones() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("mlruns");
        let ids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| ensure_experiment(&root, "granularity").unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|i| *i == experiment_id_for("granularity")), "{ids:?}");
        let dirs: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert_eq!(dirs.len(), 3, "Default, .trash and one experiment: {dirs:?}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no staging dir left beside mlruns");
        std::fs::create_dir_all(root.join("42")).unwrap();
        std::fs::write(root.join("42/meta.yaml"), "experiment_id: '42'\nlifecycle_stage: active\nname: it's mine\n").unwrap();
        assert_eq!(ensure_experiment(&root, "it's mine").unwrap(), "42");
        let meta = std::fs::read_to_string(root.join(&ids[0]).join(META)).unwrap();
        assert_eq!(yaml_value(&meta, "name").as_deref(), Some("granularity"));
    }

    /// A reopened run is the same run; a resumed run's train metrics past its checkpoint go.
    #[test]
    fn a_reopened_run_keeps_its_id_and_drops_metrics_past_the_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let (root, id_file) = (d.path().join("mlruns"), d.path().join("run/mlflow_run.json"));
        std::fs::create_dir_all(d.path().join("run")).unwrap();
        let a = MlflowRun::open(&root, "cotlab", "r", &id_file).unwrap();
        for s in 1..=3 {
            a.log_metrics(s, &[("train/loss", s as f64), ("eval/accuracy", 0.5)]).unwrap();
        }
        a.set_status(Status::Finished).unwrap();
        assert_eq!(yaml_value(&std::fs::read_to_string(a.dir().join(META)).unwrap(), "status").as_deref(), Some("3"));
        let b = MlflowRun::open(&root, "cotlab", "r", &id_file).unwrap();
        assert_eq!(a.ids, b.ids);
        assert_eq!(yaml_value(&std::fs::read_to_string(b.dir().join(META)).unwrap(), "status").as_deref(), Some("1"));
        b.truncate_after("train", 2).unwrap();
        let steps: Vec<String> =
            std::fs::read_to_string(b.dir().join("metrics/train/loss")).unwrap().lines().map(|l| l.rsplit(' ').next().unwrap().to_string()).collect();
        assert_eq!(steps, ["1", "2"]);
        assert_eq!(std::fs::read_to_string(b.dir().join("metrics/eval/accuracy")).unwrap().lines().count(), 3, "only train/ metrics are cut");
        assert!(b.log_metrics(4, &[("../x", 1.0)]).is_err());
    }
}
