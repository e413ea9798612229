//! Records the git commit the binary was built from (`COTLAB_GIT_COMMIT`, with `-dirty` when the
//! work tree had changes), for the provenance every sweep point and training run writes. No
//! network; outside a git checkout (a crates.io tarball) the variable is simply not set. Also
//! sets `cotlab_avx512` on compilers with the AVX-512 intrinsics (see [`rustc_has_avx512`]).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether rustc is 1.89 or later, where the AVX-512 intrinsics and target features are stable:
/// the bf16 kernel's `vdpbf16ps` path (older compilers, down to `rust-version`, build without it
/// and take the AVX2 path, which gives the same bits).
fn rustc_has_avx512() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else { return false };
    let version = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap_or("").to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 89)
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(cotlab_avx512)");
    if rustc_has_avx512() {
        println!("cargo:rustc-cfg=cotlab_avx512");
    }
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
