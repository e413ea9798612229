//! What a script may touch on disk. Scripts (and notebook Rhai cells) are treated as untrusted:
//!
//! * **writes** go only into the run's output dir (staged, published on success; see
//!   `results::OutputDir`) and into the runs dir, under names checked by [`RunName`];
//! * **reads** by path (`read_csv`, `score_predictions`, a model spec that is a path, …) are
//!   allowed only under the read roots: the data dir, the runs dir, the output dir, the cotlab
//!   home (`$COTLAB_HOME`: the default student, caches) and any dir the user adds
//!   (`cotlab run --allow-read DIR`). Paths are resolved (symlinks and `..` included) before
//!   the check, so a link inside a root cannot point outside it.
//!
//! The Rust API and the CLI's own arguments are trusted: they use [`Access::Open`].

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::usage;

/// A run or eval name: a relative path under the runs dir, made of parts of letters, digits,
/// `.`, `_`, `-` (no part starting with `.`), joined by `/`. Validated once, so every dir a
/// script names stays inside the runs dir.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunName(String);

impl RunName {
    pub const MAX_LEN: usize = 200;

    pub fn new(name: &str) -> Result<RunName> {
        let bad = |why: &str| {
            usage!(
                "run name '{name}' is not allowed: {why}; a run name is a relative path under the runs dir \
                 made of letters, digits, '.', '_' and '-' (e.g. \"svamp-l3\" or \"sweep/level-3\")"
            )
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(bad(&format!("it is longer than {} bytes", Self::MAX_LEN)));
        }
        if name.starts_with('/') || name.starts_with('\\') {
            return Err(bad("it is an absolute path"));
        }
        for part in name.split('/') {
            if part.is_empty() {
                return Err(bad("it has an empty part ('//' or a trailing '/')"));
            }
            if part == ".." || part == "." {
                return Err(bad("it has a '.' or '..' part"));
            }
            if part.starts_with('.') {
                return Err(bad("a part starts with '.'"));
            }
            if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
                return Err(bad(&format!("it contains {c:?}")));
            }
        }
        Ok(RunName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking: a script (checked against the roots) or trusted code (CLI arguments, Rust).
#[derive(Clone, Debug)]
pub enum Access {
    Open,
    Sandboxed { read_roots: Vec<PathBuf> },
}

/// An absolute, lexically normalised path (no `.`/`..`), without touching the disk.
pub fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The path with every existing ancestor's symlinks resolved (the missing tail kept as is), so
/// a dir that does not exist yet can still be checked against a root.
pub fn resolved(p: &Path) -> PathBuf {
    let abs = absolute(p);
    let mut existing = abs.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in tail.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

impl Access {
    pub fn sandboxed(roots: impl IntoIterator<Item = PathBuf>) -> Access {
        Access::Sandboxed { read_roots: roots.into_iter().map(|r| resolved(&r)).collect() }
    }

    /// `path` if this caller may read it; `what` names the reader in the error.
    pub fn readable(&self, path: &Path, what: &str) -> Result<PathBuf> {
        let Access::Sandboxed { read_roots } = self else { return Ok(path.to_path_buf()) };
        let real = resolved(path);
        if read_roots.iter().any(|r| real.starts_with(r)) {
            return Ok(path.to_path_buf());
        }
        let roots: Vec<String> = read_roots.iter().map(|r| r.display().to_string()).collect();
        Err(usage!(
            "{what}: '{}' is outside the dirs a script may read ({}); move the file there or allow its dir with `cotlab run --allow-read DIR`",
            path.display(),
            roots.join(", ")
        ))
    }
}

/// `root/name`, checked to stay inside `root` after symlinks are resolved (a link planted inside
/// the runs dir must not redirect writes elsewhere).
pub fn inside(root: &Path, name: &RunName) -> Result<PathBuf> {
    let p = root.join(name.as_str());
    let (real_root, real) = (resolved(root), resolved(&p));
    if !real.starts_with(&real_root) {
        return Err(Error::data(&p, format!("resolves to {}, outside {} (a symlink?): refusing to write there", real.display(), real_root.display())));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        for ok in ["svamp-l3", "sweep/level-3", "a.b_c-1", "x/y/z"] {
            assert_eq!(RunName::new(ok).unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("..", "'..'"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("/etc", "absolute"),
            ("a//b", "empty part"),
            ("a/", "empty part"),
            (".incomplete", "starts with '.'"),
            ("a b", "' '"),
            ("a\\b", "'\\\\'"),
            ("a\0b", "'\\0'"),
        ] {
            let e = RunName::new(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(RunName::new(&"x".repeat(201)).is_err());
    }

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
        }
    }
}
