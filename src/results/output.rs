//! The output dir of a run. Files are written into a staging folder and moved into place only
//! when the run succeeds, so a failed script never leaves a file that looks complete. Names are
//! confined to the output dir: scripts cannot write anywhere else.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::usage;

#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    staging: PathBuf,
    written: Mutex<Vec<String>>,
}

/// Name of the staging folder inside the output dir; it survives a failed run for inspection.
pub const STAGING: &str = ".incomplete";

impl OutputDir {
    pub fn create(root: impl Into<PathBuf>) -> Result<OutputDir> {
        let root = root.into();
        let staging = root.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(OutputDir { root, staging, written: Mutex::new(Vec::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where to write `name` during the run. `name` must be a relative path without `..`.
    pub fn path_for(&self, name: &str) -> Result<PathBuf> {
        let rel = Path::new(name);
        let ok = !name.is_empty()
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
            && !name.starts_with(STAGING);
        if !ok {
            return Err(usage!(
                "output name '{name}' is not allowed: use a relative name inside the output dir (no '..', no absolute path)"
            ));
        }
        let p = self.staging.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut w = self.written.lock().unwrap();
        if !w.iter().any(|n| n == name) {
            w.push(name.to_string());
        }
        Ok(p)
    }

    /// Move every staged file into the output dir, and write `run.json` (what ran, with which
    /// settings, which files it produced). Returns the final paths.
    pub fn commit(&self, mut manifest: serde_json::Value) -> Result<Vec<PathBuf>> {
        let names = self.written.lock().unwrap().clone();
        let mut out = Vec::new();
        for name in &names {
            let from = self.staging.join(name);
            if !from.exists() {
                continue; // asked for a path but never wrote it
            }
            let to = self.root.join(name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
            out.push(to);
        }
        manifest["files"] = serde_json::json!(names);
        let run = self.root.join("run.json");
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        std::fs::write(&run, text).map_err(|e| Error::io(&run, e))?;
        std::fs::remove_dir_all(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
        Ok(out)
    }

    /// The staging folder, left as it is after a failure.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    pub fn has_staged_files(&self) -> bool {
        !self.written.lock().unwrap().is_empty()
    }
}
