//! The output dir of a run. Files are written into a staging folder private to the run and the
//! output dir is replaced as a whole only when the run succeeds, so a failed script never leaves a
//! file that looks complete and readers see either the old complete dir or the new complete one,
//! never a mix. Names are confined to the output dir: scripts cannot write anywhere else.
//!
//! * One run at a time per output dir `O`: the run holds `O.lock` (created exclusively, next to
//!   `O`, holding the pid); a lock left by a dead process is taken over.
//! * Staging: `O/.incomplete-<pid>-<nanos>-<n>/` (`paths::unique_suffix`), unique per run; it survives a failed run for
//!   inspection if the run wrote anything (an empty one is removed).
//! * Names are checked when given: a name that runs through a file already written (or
//!   `run.json`) is refused then, not at publish.
//! * Inputs stay apart ([`check_apart`]): no input is inside `O`, and `O` is not inside the data
//!   dir, checked before any work.
//! * Publishing: `run.json` is written into the staging folder, which is moved out beside `O`,
//!   the old `O` is moved aside, the new dir is renamed to `O`, and the old one deleted (without
//!   following any symlink in it). Nothing is ever written through the old `O`.
//! * `O` itself may not be a symlink (refused with an error; the link is left alone), and an
//!   existing `O` is only replaced if it is a cotlab output dir (has `run.json`, or holds nothing
//!   but staging folders, or is empty): `--out ~` does not delete a home dir.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::usage;

#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    staging: PathBuf,
    written: Mutex<Vec<String>>,
    /// Held until the OutputDir is dropped (declared last: dropped last).
    _lock: RunLock,
}

/// Prefix of the per-run staging folders inside the output dir.
pub const STAGING: &str = ".incomplete";

/// The manifest every published output dir holds.
pub const MANIFEST: &str = "run.json";

/// The output dir's parent ("." for a bare name) and file name.
fn split(root: &Path) -> Result<(PathBuf, String)> {
    let name = match root.components().next_back() {
        Some(Component::Normal(n)) => n.to_string_lossy().to_string(),
        _ => {
            return Err(usage!(
                "output dir '{}' does not end in a dir name: give one, e.g. --out out/NAME (publishing replaces that dir as a whole)",
                root.display()
            ))
        }
    };
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Check that `root` (which exists) may be replaced: a real dir (not a symlink) that is empty,
/// has a `run.json`, or holds only staging folders.
fn check_replaceable(root: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io(root, e))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(root).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        return Err(Error::data(
            root,
            format!("the output dir is a symbolic link (to {target}); cotlab replaces the output dir as a whole and does not follow links: give the real dir with --out, or remove the link"),
        ));
    }
    if !meta.is_dir() {
        return Err(Error::data(root, "the output dir exists and is not a directory: give another --out"));
    }
    let mut foreign = None;
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == MANIFEST && entry.file_type().is_ok_and(|t| t.is_file()) {
            return Ok(());
        }
        if !name.starts_with(STAGING) && foreign.is_none() {
            foreign = Some(name);
        }
    }
    match foreign {
        None => Ok(()),
        Some(f) => Err(Error::data(
            root,
            format!("not a cotlab output dir (it holds '{f}' but no {MANIFEST}); publishing replaces the whole dir, so cotlab will not publish over it: give a new or empty dir with --out"),
        )),
    }
}

/// Check, before any work, that publishing `out` cannot delete an input: no input (`--runs`,
/// `--data-dir`, `--allow-read` dirs, the script) is `out` or inside it, and `out` is not inside
/// the data dir (`inputs` names each as its flag: `("--runs", path)`). An `out` inside the runs
/// dir is allowed: Slurm array tasks publish there, and publishing replaces only a cotlab output
/// dir, never a run.
pub fn check_apart(out: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    let real_out = crate::paths::real_path(out)?;
    for (flag, p) in inputs {
        let real = crate::paths::real_path(p)?;
        if real.starts_with(&real_out) {
            return Err(usage!(
                "{flag} {} is inside the output dir {}: publishing replaces the output dir as a whole and would delete it; give an --out outside it",
                p.display(),
                out.display()
            ));
        }
        if *flag == "--data-dir" && real_out.starts_with(&real) {
            return Err(usage!(
                "the output dir {} is inside {flag} {}: cotlab does not write into the data dir; give an --out outside it",
                out.display(),
                p.display()
            ));
        }
    }
    Ok(())
}

impl OutputDir {
    /// Take the output dir's lock, check the dir may be replaced, and make this run's staging
    /// folder. Fails with "another cotlab run is writing O (pid N)" while another run holds it.
    pub fn create(root: impl Into<PathBuf>) -> Result<OutputDir> {
        let root = root.into();
        let (parent, name) = split(&root)?;
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let lock = RunLock::acquire(parent.join(format!("{name}.lock")), &root)?;
        match std::fs::symlink_metadata(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&root).map_err(|e| Error::io(&root, e))?,
            Err(e) => return Err(Error::io(&root, e)),
            Ok(_) => check_replaceable(&root)?,
        }
        let staging = root.join(format!("{STAGING}-{}", crate::paths::unique_suffix()));
        std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(OutputDir { root, staging, written: Mutex::new(Vec::new()), _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where to write `name` during the run. `name` must be a relative path without `..`.
    pub fn path_for(&self, name: &str) -> Result<PathBuf> {
        let rel = Path::new(name);
        let ok = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_))) && !name.starts_with(STAGING);
        if !ok {
            return Err(usage!("output name '{name}' is not allowed: use a relative name inside the output dir (no '..', no absolute path)"));
        }
        if name == MANIFEST {
            return Err(usage!("output name '{name}' is not allowed: {MANIFEST} is the run's manifest, written by cotlab; choose another name"));
        }
        self.check_fits(name)?;
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

    /// `name` fits beside what the run wrote: no part of it is the manifest or a file already
    /// written, and it is not a dir that other names were written into. Checked when the name
    /// is given, so the call fails, not the publish at the end.
    fn check_fits(&self, name: &str) -> Result<()> {
        let parts: Vec<&str> = name.split('/').collect();
        for k in 1..parts.len() {
            let prefix = parts[..k].join("/");
            let taken = (k == 1 && prefix == MANIFEST) || self.staging.join(&prefix).symlink_metadata().is_ok_and(|m| !m.is_dir());
            if taken {
                return Err(usage!(
                    "output name '{name}' is not allowed: '{prefix}' is {}, so it cannot be a dir; choose another name",
                    if prefix == MANIFEST { "the run's manifest" } else { "a file this run already wrote" }
                ));
            }
        }
        if self.staging.join(name).symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return Err(usage!("output name '{name}' is not allowed: this run already wrote files into '{name}/'; choose another name"));
        }
        Ok(())
    }

    /// Publish: write `run.json` (what ran, with which settings, which files it produced) into
    /// the staging folder and swap the complete new dir in for the output dir. Returns the final
    /// paths of the files. On an error nothing is published and the error says where the files
    /// are.
    pub fn commit(&self, mut manifest: serde_json::Value) -> Result<Vec<PathBuf>> {
        let (parent, name) = split(&self.root)?;
        // Asked for a path but never wrote it: not listed.
        let names: Vec<String> = self.written.lock().unwrap().iter().filter(|n| std::fs::symlink_metadata(self.staging.join(n)).is_ok()).cloned().collect();
        manifest["files"] = serde_json::json!(names);
        let kept =
            |e: Error, at: &Path| Error::Usage(format!("{e}\nnote: nothing was published to {}; the run's files are in {}", self.root.display(), at.display()));
        let run = self.staging.join(MANIFEST);
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        std::fs::write(&run, text).map_err(|e| kept(Error::io(&run, e), &self.staging))?;
        check_replaceable(&self.root).map_err(|e| kept(e, &self.staging))?;

        let tag = crate::paths::unique_suffix();
        let fresh = parent.join(format!(".{name}.new-{tag}"));
        let old = parent.join(format!(".{name}.old-{tag}"));
        std::fs::rename(&self.staging, &fresh).map_err(|e| kept(Error::io(&fresh, e), &self.staging))?;
        if let Err(e) = std::fs::rename(&self.root, &old) {
            return Err(kept(Error::io(&self.root, e), &fresh));
        }
        if let Err(e) = std::fs::rename(&fresh, &self.root) {
            // Put the old output dir back.
            let back = std::fs::rename(&old, &self.root);
            let mut err = kept(Error::io(&self.root, e), &fresh);
            if let Err(b) = back {
                err = Error::Usage(format!("{err}\nnote: the previous output dir could not be moved back from {}: {b}", old.display()));
            }
            return Err(err);
        }
        // Published. Removing the old dir does not follow symlinks inside it.
        if let Err(e) = std::fs::remove_dir_all(&old) {
            eprintln!("warning: published {}, but the previous output dir moved to {} could not be removed: {e}", self.root.display(), old.display());
        }
        Ok(names.iter().map(|n| self.root.join(n)).collect())
    }

    /// This run's staging folder, left as it is after a failure.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    pub fn has_staged_files(&self) -> bool {
        !self.written.lock().unwrap().is_empty()
    }
}

impl Drop for OutputDir {
    /// A run that wrote nothing leaves no staging folder behind (one with files stays, for
    /// inspection; a published one was moved away).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.staging);
    }
}

/// `O.lock`: created exclusively (never through a symlink), holding "<pid> <unique suffix>"; removed on
/// drop if it is still ours.
#[derive(Debug)]
struct RunLock {
    path: PathBuf,
    token: String,
}

/// Whether a process is running. Linux: /proc; elsewhere we cannot tell, so assume it is.
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

impl RunLock {
    fn acquire(path: PathBuf, root: &Path) -> Result<RunLock> {
        let token = format!("{} {}", std::process::id(), crate::paths::unique_suffix());
        for _ in 0..8 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(token.as_bytes()).map_err(|e| Error::io(&path, e))?;
                    return Ok(RunLock { path, token });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(_) => continue, // released meanwhile: try again
            };
            if !meta.is_file() {
                return Err(Error::data(&path, format!("the lock file of output dir {} is not a plain file (a symlink?): remove it", root.display())));
            }
            let held = std::fs::read_to_string(&path).unwrap_or_default();
            let pid = held.split_whitespace().next().and_then(|p| p.parse::<u32>().ok());
            let young = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_none_or(|age| age < Duration::from_secs(10));
            let live = match pid {
                Some(p) => alive(p),
                None => young, // being written right now, or left empty by a crash long ago
            };
            if live {
                let who = pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "pid unknown".into());
                return Err(Error::Usage(format!(
                    "another cotlab run is writing {} ({who}): wait for it to finish, or use another --out; if no such run is going, remove {}",
                    root.display(),
                    path.display()
                )));
            }
            // Stale: move it aside, and check that what we moved is the lock we judged stale
            // (another run may have taken it over in between; then put that one back).
            let aside = path.with_file_name(format!(".{}.stale-{}", path.file_name().unwrap().to_string_lossy(), crate::paths::unique_suffix()));
            if std::fs::rename(&path, &aside).is_err() {
                continue;
            }
            let moved = std::fs::read_to_string(&aside).unwrap_or_default();
            if moved != held {
                let _ = std::fs::hard_link(&aside, &path); // fails if the slot was taken: fine
            }
            let _ = std::fs::remove_file(&aside);
        }
        Err(Error::Usage(format!("could not take the lock {} of output dir {}: other runs keep taking it; try again", path.display(), root.display())))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|t| t == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
