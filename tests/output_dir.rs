//! Publishing the output dir: a re-run replaces it as a whole, two runs on one dir cannot mix,
//! symlinks in or at the output dir are never followed, and a dir that is not a cotlab output
//! dir is never replaced.

#[macro_use]
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cotlab, run};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

/// The output dir is complete: run.json lists exactly the files there (besides itself), all
/// exist, no staging folder, and nothing is left beside it (lock, temp dirs).
fn consistent(out: &Path) -> Vec<String> {
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let mut files: Vec<String> = manifest["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    files.sort();
    for f in &files {
        assert!(out.join(f).exists(), "run.json lists {f}, which is missing");
    }
    let mut top: Vec<String> = files.iter().map(|f| f.split('/').next().unwrap().to_string()).collect();
    top.push("run.json".into());
    top.sort();
    top.dedup();
    assert_eq!(names(out), top, "the output dir holds exactly the files of run.json");
    let parent = out.parent().unwrap();
    let base = out.file_name().unwrap().to_string_lossy().to_string();
    let beside: Vec<String> = names(parent).into_iter().filter(|n| n.starts_with(&format!(".{base}.")) || *n == format!("{base}.lock")).collect();
    assert!(beside.is_empty(), "left beside the output dir: {beside:?}");
    files
}

fn script(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

#[test]
fn a_rerun_replaces_the_output_dir_as_a_whole() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let s = script(
        d.path(),
        "w.rhai",
        r#"if second { df(#{a: [2]}).write_csv("model/weights.csv"); df(#{b: [2]}).write_csv("new.csv"); }
           else { df(#{a: [1]}).write_csv("model/weights.csv"); df(#{a: [1]}).write_csv("model/extra.csv"); df(#{c: [1]}).write_csv("old.csv"); }"#,
    );
    let first = run(cotlab().arg("run").arg(&s).args(["--set", "second=false", "--out"]).arg(&out));
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(consistent(&out), ["model/extra.csv", "model/weights.csv", "old.csv"]);
    // The re-run writes into a dir ("model") that exists and is not empty in the old output.
    let second = run(cotlab().arg("run").arg(&s).args(["--set", "second=true", "--out"]).arg(&out));
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(consistent(&out), ["model/weights.csv", "new.csv"]);
    assert!(std::fs::read_to_string(out.join("model/weights.csv")).unwrap().contains('2'));
    assert!(!out.join("old.csv").exists() && !out.join("model/extra.csv").exists(), "old files are gone");

    // A failed run publishes nothing: the previous output stays complete.
    let bad = script(d.path(), "bad.rhai", "df(#{z: [1]}).write_csv(\"z.csv\");\nthrow \"stop\";\n");
    let r = run(cotlab().arg("run").arg(&bad).arg("--out").arg(&out));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nothing was published") && r.stderr.contains(".incomplete-"), "{}", r.stderr);
    assert!(!out.join("z.csv").exists());
    assert!(std::fs::read_to_string(out.join("run.json")).unwrap().contains("new.csv"));
    // The next success clears the failed run's staging folder with the rest of the old dir.
    let third = run(cotlab().arg("run").arg(&s).args(["--set", "second=true", "--out"]).arg(&out));
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(consistent(&out), ["model/weights.csv", "new.csv"]);
}

#[test]
fn symlinks_in_or_at_the_output_dir_are_not_followed() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let outside = d.path().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("target.csv"), "precious\n").unwrap();
    std::fs::write(outside.join("dir/x.csv"), "precious too\n").unwrap();
    let s = script(d.path(), "w.rhai", r#"df(#{a: [1]}).write_csv("a.csv"); df(#{a: [1]}).write_csv("sub/x.csv");"#);
    let first = run(cotlab().arg("run").arg(&s).arg("--out").arg(&out));
    assert_eq!(first.code, 0, "{}", first.stderr);
    // Plant links where the next run writes.
    std::fs::remove_file(out.join("a.csv")).unwrap();
    std::os::unix::fs::symlink(outside.join("target.csv"), out.join("a.csv")).unwrap();
    std::fs::remove_dir_all(out.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), out.join("sub")).unwrap();
    let second = run(cotlab().arg("run").arg(&s).arg("--out").arg(&out));
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(std::fs::read_to_string(outside.join("target.csv")).unwrap(), "precious\n");
    assert_eq!(std::fs::read_to_string(outside.join("dir/x.csv")).unwrap(), "precious too\n");
    assert_eq!(names(&outside), ["dir", "target.csv"]);
    assert_eq!(names(&outside.join("dir")), ["x.csv"]);
    assert!(!std::fs::symlink_metadata(out.join("a.csv")).unwrap().file_type().is_symlink());
    assert!(!std::fs::symlink_metadata(out.join("sub")).unwrap().file_type().is_symlink());
    consistent(&out);

    // The output dir itself a symlink: refused, the link and its target left alone.
    let link = d.path().join("linked");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let r = run(cotlab().arg("run").arg(&s).arg("--out").arg(&link));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("symbolic link") && r.stderr.contains("give the real dir"), "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(names(&outside), ["dir", "target.csv"]);

    // A dir that is not a cotlab output dir is never replaced.
    let mine = d.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine\n").unwrap();
    let r = run(cotlab().arg("run").arg(&s).arg("--out").arg(&mine));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a cotlab output dir") && r.stderr.contains("notes.txt"), "{}", r.stderr);
    assert_eq!(names(&mine), ["notes.txt"]);
}

/// A chat-completions server answering every request after `delay_ms`.
fn slow_server(delay_ms: u64) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                if common::read_http_request(&mut stream).is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(delay_ms));
                common::write_http_response(&mut stream, "200 OK", "", &common::chat_answer("The answer is 7"));
            });
        }
    });
    (url, count)
}

#[test]
fn two_runs_on_one_output_dir_cannot_mix() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let (url, count) = slow_server(300);
    let s = script(
        d.path(),
        "slow.rhai",
        &format!(
            r#"df(#{{a: [1]}}).write_csv("a.csv");
               let t = teacher("openai", #{{ base_url: "{url}", model: "slow", api_key_env: (), concurrency: 1, timeout_s: 5.0, max_retries: 0 }});
               let r = t.ask(dataset("arith", #{{ n: 5, seed: 1 }}), #{{ level: 1 }});
               r.df().write_csv("teacher.csv");
               print(`failed ${{r.failed}}`);"#
        ),
    );
    let home = d.path().join("home"); // a private teacher cache
    let mut a = cotlab()
        .env("COTLAB_HOME", &home)
        .arg("run")
        .arg(&s)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while count.load(Ordering::SeqCst) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the first run never reached the server");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first run is busy with its teacher: a second run on the same dir is refused at once.
    let b = run(cotlab().env("COTLAB_HOME", &home).arg("run").arg(&s).arg("--out").arg(&out));
    assert_eq!(b.code, 1, "{}", b.stderr);
    let expected = format!("another cotlab run is writing {} (pid {})", out.display(), a.id());
    assert!(b.stderr.contains(&expected), "wanted {expected:?} in: {}", b.stderr);
    let status = a.wait().unwrap();
    let mut err = String::new();
    a.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 5, "the refused run sent nothing");
    assert_eq!(consistent(&out), ["a.csv", "teacher.csv"]);
    assert!(!d.path().join("o.lock").exists(), "the lock is released");

    // A lock left by a dead process is taken over.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(d.path().join("o.lock"), format!("{pid} 0")).unwrap();
    let c = run(cotlab().env("COTLAB_HOME", &home).arg("run").arg(&s).arg("--out").arg(&out));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(consistent(&out), ["a.csv", "teacher.csv"]);
}

/// Round 3, class 7: an input inside the output dir (or the output dir inside the runs or data
/// dir) is refused before any work, and nothing is deleted.
#[test]
fn inputs_inside_the_output_dir_are_refused_before_any_work() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let s = script(d.path(), "w.rhai", r#"df(#{a: [1]}).write_csv("t.csv");"#);
    std::fs::create_dir_all(out.join("runs/keep")).unwrap();
    std::fs::write(out.join("runs/keep/x.txt"), "precious").unwrap();
    std::fs::create_dir_all(out.join("allowed")).unwrap();
    let inside_script = script(&out, "in.rhai", r#"df(#{a: [1]}).write_csv("t.csv");"#);
    let data = std::env::var("COTLAB_DATA").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("../shared/datasets"));
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["run".into(), s.clone().into(), "--out".into(), out.clone().into(), "--runs".into(), out.join("runs").into()], "--runs"),
        (vec!["run".into(), s.clone().into(), "--out".into(), out.clone().into(), "--runs".into(), out.clone().into()], "--runs"),
        (vec!["run".into(), s.clone().into(), "--out".into(), out.clone().into(), "--allow-read".into(), out.join("allowed").into()], "--allow-read"),
        (vec!["run".into(), s.clone().into(), "--out".into(), out.clone().into(), "--data-dir".into(), out.join("runs").into()], "--data-dir"),
        (vec!["run".into(), inside_script.clone().into(), "--out".into(), out.clone().into()], "the script"),
        (vec!["run".into(), s.clone().into(), "--out".into(), data.join("o").into(), "--data-dir".into(), data.clone().into()], "inside --data-dir"),
        (vec!["sweep".into(), s.clone().into(), "--out".into(), out.clone().into(), "--runs".into(), out.join("runs").into()], "--runs"),
    ];
    for (args, needle) in cases {
        let r = run(cotlab().args(&args).env("COTLAB_DATA", &data));
        assert_ne!(r.code, 0, "{args:?}: accepted");
        assert!(r.stderr.contains(needle) && r.stderr.contains("output dir"), "{args:?}: {}", r.stderr);
        assert_eq!(std::fs::read_to_string(out.join("runs/keep/x.txt")).unwrap(), "precious");
        assert!(inside_script.exists() && !out.join("t.csv").exists() && !out.join("run.json").exists());
    }
    assert!(!data.join("o").exists(), "nothing was made");
    // An output dir inside the runs dir is fine (Slurm array tasks publish there).
    let r = run(cotlab().arg("run").arg(&s).arg("--out").arg(d.path().join("r/slurm/tasks/0")).arg("--runs").arg(d.path().join("r")));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// Round 3, class 10: an output name that cannot be published fails at the call, and a failed
/// run that wrote nothing leaves no staging folder.
#[test]
fn output_names_are_checked_at_the_call_and_failed_runs_leave_no_empty_staging() {
    require!(Data);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    for (src, line, needle) in [
        (r#"df(#{a: [1]}).write_csv("run.json/x.csv");"#, 1, "run.json"),
        ("df(#{a: [1]}).write_csv(\"t.csv\");\ndf(#{a: [1]}).write_csv(\"t.csv/x.csv\");", 2, "already wrote"),
        ("df(#{a: [1]}).write_csv(\"d/x.csv\");\ndf(#{a: [1]}).write_parquet(\"d\");", 2, "into 'd/'"),
    ] {
        let s = script(d.path(), "names.rhai", src);
        let r = run(cotlab().arg("run").arg(&s).arg("--out").arg(&out));
        assert_ne!(r.code, 0, "{src}: accepted");
        assert!(r.stderr.contains(&format!("names.rhai:{line}:")) && r.stderr.contains(needle), "{src}: {}", r.stderr);
        assert!(!out.join("run.json").exists(), "{src}: published");
    }
    for _ in 0..3 {
        let s = script(d.path(), "fail.rhai", "throw \"no\";");
        assert_ne!(run(cotlab().arg("run").arg(&s).arg("--out").arg(&out)).code, 0);
    }
    let staging: Vec<String> = names(&out).into_iter().filter(|n| n.starts_with(".incomplete")).collect();
    // The three name cases wrote a file before failing: those stay for inspection; the three
    // runs that wrote nothing left nothing.
    assert!(staging.len() <= 3, "{staging:?}");
    let empty = staging.iter().filter(|n| std::fs::read_dir(out.join(n)).unwrap().next().is_none()).count();
    assert_eq!(empty, 0, "empty staging folders left: {staging:?}");
}
