//! What a script may touch on disk. Scripts (and notebook Rhai cells) are treated as untrusted:
//!
//! * **writes** go only into the run's output dir (staged, published on success; see
//!   `results::OutputDir`) and into the runs dir, under names checked by [`RunName`];
//! * **reads** by path (`read_csv`, `score_predictions`, a model spec that is a path, …) are
//!   allowed only under the read roots: the data dir, the runs dir, the output dir, the cotlab
//!   home (`$COTLAB_HOME`: the default student, caches) and any dir the user adds
//!   (`cotlab run --allow-read DIR`). A path is resolved as the kernel will open it (each link
//!   where it stands, then `..`: see [`crate::paths::real_path`]), checked, and that resolved
//!   path is what the reader opens; a dir's links inside it are checked too. So no link inside
//!   a root, with or without `..` after it, reads outside the roots.
//!
//! The Rust API and the CLI's own arguments are trusted: they use [`Access::Open`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::usage;

pub use crate::paths::{absolute, RunName};
use crate::paths::{is_real_dir, real_path};

/// Who is asking: a script (checked against the roots) or trusted code (CLI arguments, Rust).
#[derive(Clone, Debug)]
pub enum Access {
    Open,
    Sandboxed { read_roots: Vec<PathBuf> },
}

impl Access {
    pub fn sandboxed(roots: impl IntoIterator<Item = PathBuf>) -> Access {
        Access::Sandboxed { read_roots: roots.into_iter().map(|r| real_path(&r).unwrap_or_else(|_| absolute(&r))).collect() }
    }

    /// The path a reader must open for `path`, if this caller may read it; `what` names the
    /// reader in the error. Sandboxed: the real path (links and `..` resolved as the kernel
    /// does), checked against the roots; a dir's links inside it must stay inside the roots
    /// too (a run or model dir is read file by file). Trusted: `path` as given.
    pub fn readable(&self, path: &Path, what: &str) -> Result<PathBuf> {
        let Access::Sandboxed { read_roots } = self else { return Ok(path.to_path_buf()) };
        let real = real_path(path)?;
        if !within(read_roots, &real) {
            return Err(outside_roots(read_roots, path, what));
        }
        if is_real_dir(&real) {
            links_stay_within(read_roots, &real, what)?;
        }
        Ok(real)
    }
}

fn within(roots: &[PathBuf], real: &Path) -> bool {
    roots.iter().any(|r| real.starts_with(r))
}

fn outside_roots(roots: &[PathBuf], path: &Path, what: &str) -> Error {
    let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    usage!(
        "{what}: '{}' is outside the dirs a script may read ({}); move the file there or allow its dir with `cotlab run --allow-read DIR`",
        path.display(),
        roots.join(", ")
    )
}

/// Dir entries a readable dir may hold before the link check gives up.
const MAX_CHECKED_ENTRIES: usize = 200_000;

/// Every link under `dir` (walked without following links) leads inside the roots.
fn links_stay_within(roots: &[PathBuf], dir: &Path, what: &str) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            seen += 1;
            if seen > MAX_CHECKED_ENTRIES {
                return Err(usage!("{what}: '{}' holds more than {MAX_CHECKED_ENTRIES} entries: give a smaller dir", dir.display()));
            }
            let Ok(t) = entry.file_type() else { continue };
            if t.is_symlink() {
                let real = real_path(&entry.path())?;
                if !within(roots, &real) {
                    return Err(outside_roots(roots, &entry.path(), what));
                }
            } else if t.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// `root/name`, checked to stay inside `root` with every link on the way resolved (a link or a
/// dangling link planted inside the runs dir must not redirect writes elsewhere).
pub fn inside(root: &Path, name: &RunName) -> Result<PathBuf> {
    let p = root.join(name.as_str());
    let (real_root, real) = (real_path(root)?, real_path(&p)?);
    if !real.starts_with(&real_root) {
        return Err(Error::data(&p, format!("resolves to {}, outside {} (a symlink?): refusing to write there", real.display(), real_root.display())));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_confined_to_the_roots() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ok.csv"), "a\n1\n").unwrap();
        std::fs::write(d.path().join("secret.txt"), "x").unwrap();
        let a = Access::sandboxed([root.clone()]);
        assert!(a.readable(&root.join("ok.csv"), "read_csv").is_ok());
        let e = a.readable(&root.join("../secret.txt"), "read_csv").unwrap_err().to_string();
        assert!(e.contains("read_csv") && e.contains("--allow-read"), "{e}");
        assert!(a.readable(&d.path().join("secret.txt"), "read_csv").is_err());
        assert!(a.readable(Path::new("/etc/passwd"), "read_csv").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("secret.txt"), root.join("link.txt")).unwrap();
            assert!(a.readable(&root.join("link.txt"), "read_csv").is_err(), "a symlink out of a root");
        }
        assert!(Access::Open.readable(Path::new("/etc/passwd"), "x").is_ok());
    }

    /// The round-3 escape: a link to a dir inside a root, then `..` out of it.
    #[test]
    fn a_link_plus_dotdot_reads_nothing_outside() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let runs = base.join("runs");
        std::fs::create_dir_all(runs.join("a/deep/x")).unwrap();
        std::fs::create_dir_all(base.join("secret")).unwrap();
        std::fs::write(base.join("secret/key.txt"), "k").unwrap();
        std::os::unix::fs::symlink(runs.join("a/deep/x"), runs.join("a/share")).unwrap();
        let a = Access::sandboxed([runs.clone()]);
        // share/.. is runs/a/deep: still inside, and that is the path handed back.
        assert_eq!(a.readable(&runs.join("a/share/../x"), "read_csv").unwrap(), runs.join("a/deep/x"));
        for escape in ["a/share/../../../../etc/hostname", "a/share/../../../../secret/key.txt", "a/share/../../../../secret"] {
            let e = a.readable(&runs.join(escape), "read_csv").unwrap_err().to_string();
            assert!(e.contains("outside the dirs a script may read"), "{escape}: {e}");
        }
        // A dir that is readable itself but holds a link out (a planted model or run dir).
        std::fs::create_dir_all(runs.join("run1/checkpoint")).unwrap();
        std::os::unix::fs::symlink(base.join("secret/key.txt"), runs.join("run1/checkpoint/model.safetensors")).unwrap();
        let e = a.readable(&runs.join("run1"), "student").unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("outside"), "{e}");
    }

    #[test]
    fn writes_stay_inside_even_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        std::fs::create_dir_all(&runs).unwrap();
        assert!(inside(&runs, &RunName::new("a/b").unwrap()).unwrap().starts_with(&runs));
        #[cfg(unix)]
        {
            let outside = d.path().join("elsewhere");
            std::fs::create_dir_all(&outside).unwrap();
            std::os::unix::fs::symlink(&outside, runs.join("evil")).unwrap();
            let e = inside(&runs, &RunName::new("evil/x").unwrap()).unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
            // A dangling link named as a cache file: its target is outside.
            std::os::unix::fs::symlink(d.path().join("nowhere/cache.jsonl"), runs.join("cache.jsonl")).unwrap();
            let e = inside(&runs, &RunName::new("cache.jsonl").unwrap()).unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
        }
    }
}
