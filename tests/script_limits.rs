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

/// A builtin that allocates in proportion to an argument checks the ceiling before allocating:
/// one call could otherwise run far past it (or abort the process) before the check between
/// operations. Quick, because nothing is allocated.
#[test]
fn allocating_builtins_check_the_ceiling_first() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    for (i, (call, needle)) in [
        ("let s = \"x\"; s.pad(3000000000, \"y\");", "pad would allocate 2.79 GiB"),
        ("let s = \"x\"; s.pad(3000000000, 'y');", "pad would allocate 2.79 GiB"),
        ("let s = \"x\"; s.pad(1000000000, \"\u{e9}\");", "pad would allocate 1.86 GiB"),
        ("let a = [1]; a.pad(1000000000, 0);", "pad would allocate 14.90 GiB"),
        ("let a = []; a.pad(100000000, [1, 2, 3]);", "pad would allocate 5.96 GiB"),
        ("let b = blob(3000000000);", "blob would allocate 2.79 GiB"),
        ("let b = blob(3000000000, 7);", "blob would allocate 2.79 GiB"),
        ("let b = blob(); b.pad(3000000000, 1);", "pad would allocate 2.79 GiB"),
        ("let b = blob(300000000); let a = b.to_array();", "to_array would allocate 4.47 GiB"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = d.path().join(format!("o{i}"));
        let s = script(d.path(), "alloc.rhai", &format!("df(#{{a: [1]}}).write_csv(\"a.csv\");\n{call}\n"));
        let o = run_within(cotlab().arg("run").arg(&s).arg("--out").arg(&out).arg("--max-memory").arg("0.5"), Duration::from_secs(60));
        assert_eq!(o.code, 1, "{call}: {}", o.stderr);
        assert!(o.stderr.contains("alloc.rhai:2:") && o.stderr.contains(needle), "{call}: {}", o.stderr);
        assert!(o.stderr.contains("the memory ceiling is 0.50 GiB") && o.stderr.contains("--max-memory"), "{call}: {}", o.stderr);
        assert!(nothing_published(&out), "{call}");
    }
    // Without a ceiling the machine's memory is the limit.
    let s = script(d.path(), "nolimit.rhai", "let s = \"x\"; s.pad(1000000000000000, \"y\");\n");
    let o = run_within(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("n")).arg("--max-memory").arg("0"), Duration::from_secs(60));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("pad would allocate") && o.stderr.contains("of memory"), "{}", o.stderr);
}

/// Under the ceiling the checked builtins give what Rhai's own do; an empty padding string
/// (on which Rhai's own `pad` never returned) is an error.
#[test]
fn checked_builtins_keep_their_results() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let src = "let s = \"ab\"; s.pad(5, \"xy\"); print(s);\nlet c = \"ab\"; c.pad(4, '!'); c.pad(1, '?'); print(c);\n\
               let a = [1]; a.pad(3, 0); a.pad(-1, 9); print(a);\nlet b = blob(2, 0x41); b.pad(3, 0x42); print(b.to_array());\n\
               print(blob(-3).len()); print(\"h\u{e9}\".to_chars());\n";
    let s = script(d.path(), "same.rhai", src);
    let o = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("o")).arg("--max-memory").arg("1"));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().collect::<Vec<_>>(), ["abxyx", "ab!!", "[1, 0, 0]", "[65, 65, 66]", "0", "[h, \u{e9}]"]);
    let s = script(d.path(), "empty.rhai", "let s = \"x\"; s.pad(5, \"\");\n");
    let o = run_within(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("e")), Duration::from_secs(60));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("the padding string is empty"), "{}", o.stderr);
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
