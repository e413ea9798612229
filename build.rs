//! Records the git commit the binary was built from (`COTLAB_GIT_COMMIT`, with `-dirty` when the
//! work tree had changes), for the provenance every sweep point and training run writes. No
//! network; outside a git checkout (a crates.io tarball) the variable is simply not set.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // Rebuild when HEAD moves (a commit, a checkout) or the sources change (the dirty flag).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                println!("cargo:rerun-if-changed={common}/{r}");
            }
        }
    }
    for p in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        // Only tracked files count: run dirs and outputs inside the checkout are not changes.
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        println!("cargo:rustc-env=COTLAB_GIT_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    }
}
