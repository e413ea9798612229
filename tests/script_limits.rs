//! Scripts that would run the machine out of time, memory or stack end with a clear error and
//! publish nothing (issue 14, item 6).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cotlab, run};

fn script(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

/// A failed script publishes no file: the output dir holds at most its staging dirs.
fn nothing_published(out: &Path) -> bool {
    std::fs::read_dir(out).map(|d| d.flatten().all(|e| e.file_name().to_string_lossy().starts_with(".incomplete-"))).unwrap_or(true)
}

/// Run to completion, but fail the test (and kill the process) after `limit`.
fn run_within(cmd: &mut Command, limit: Duration) -> common::Out {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    common::Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn a_million_pushes_are_linear() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let s = script(d.path(), "push.rhai", "let a = []; for i in 0..1000000 { a.push(i); } print(a.len());");
    // Linear: well under a second. Rhai's array size limit re-measured the array after every
    // push (200k pushes took 22 s, so a million would take about ten minutes).
    let o = run_within(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")), Duration::from_secs(120));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "1000000");
}

#[test]
fn memory_ceiling_stops_a_doubling_string() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let s = script(d.path(), "double.rhai", "df(#{a: [1]}).write_csv(\"a.csv\");\nlet s = \"x\";\nloop { s += s; }\n");
    let out = d.path().join("o");
    let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(&out).arg("--max-memory").arg("0.5"));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("double.rhai:3:") && o.stderr.contains("memory ceiling reached"), "{}", o.stderr);
    assert!(o.stderr.contains("the limit is 0.50 GiB") && o.stderr.contains("--max-memory"), "{}", o.stderr);
    assert!(o.stderr.contains("nothing was published"), "{}", o.stderr);
    assert!(nothing_published(&out));
}

#[test]
fn memory_ceiling_stops_a_map_of_large_strings() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let src = "let big = \"x\"; for i in 0..20 { big += big; }\nlet m = #{}; let i = 0;\nloop { m[`k${i}`] = big + i; i += 1; }\n";
    let s = script(d.path(), "maps.rhai", src);
    let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")).arg("--max-memory").arg("0.5"));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("maps.rhai:3:") && o.stderr.contains("memory ceiling reached"), "{}", o.stderr);
}

#[test]
fn the_same_work_passes_under_a_higher_ceiling() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    // 64 strings of 1 MiB: 64 MiB, far under 1 GiB.
    let src = "let big = \"x\"; for i in 0..20 { big += big; }\nlet m = #{};\nfor i in 0..64 { m[`k${i}`] = big + i; }\nprint(m.len());\n";
    let s = script(d.path(), "maps.rhai", src);
    let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")).arg("--max-memory").arg("1"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "64");
}

#[test]
fn max_memory_is_range_checked() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let s = script(d.path(), "ok.rhai", "print(1);");
    for bad in ["-1", "NaN", "inf"] {
        let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")).arg(format!("--max-memory={bad}")));
        assert_eq!(o.code, 1, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("'max-memory' must be in 0..=1000000"), "{bad}: {}", o.stderr);
    }
}

#[test]
fn deeply_nested_values_do_not_overflow_the_stack() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    // Dropping and printing nested arrays recurses once per level; the script thread's stack
    // holds far more levels than the 8 MiB main thread did. (Rhai copies a value on each read,
    // so building deeper nesting is quadratic and stopped by the operation limit long before.)
    let src = "let a = []; for i in 0..6000 { a = [a]; }\nlet t = `${a}`; print(t.len());\n";
    let s = script(d.path(), "nest.rhai", src);
    let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "12002");
}
