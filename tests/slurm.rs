//! Sweeps scaled out on Slurm job arrays. One test runs a real one-node Slurm on this machine
//! (`scripts/slurm_local.sh`: Debian's slurm-wlm, slurmctld + slurmd on localhost; where it cannot
//! be installed or started the test is skipped with a message, and fails under CI like every
//! `require!`): a three-point arith sweep submitted with
//! `cotlab sweep --slurm` must merge to the same results as a local run of the same grid. The
//! other checks point selection on plain `cotlab run` (`--point`, `SLURM_ARRAY_TASK_ID`,
//! `--collect`) and `cotlab sweep`'s plan and job files, without Slurm.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{cotlab, run};

/// Both tests fine-tune or evaluate the student: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Two trained points (levels 1 and 2) and the untrained student, at toy sizes. `results(name)`
/// is the merge across the point dirs, whoever ran them.
const SWEEP: &str = r#"
let name = if "name" in params { params.name } else { "tiny" };
let r = sweep(#{ name: name, grid: #{ level: [1, 2] }, include: [#{ train: false }],
                 base: #{ dataset: "arith", train_n: 8, max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 96,
                          eval_n: 4, eval_max_new_tokens: 8 } });
print(`sweep ${r.name}: ran ${r.ran}, ${r.done} done, ${r.pending} pending of ${r.total}`);
r.results.write_csv("points.csv");
results(name).write_csv("merged.csv");
"#;

/// Cheap points: the untrained student on one or two arith questions.
const EVAL_ONLY: &str = r#"
let name = if "name" in params { params.name } else { "p" };
let r = sweep(#{ name: name, grid: #{ eval_n: [1, 2] }, base: #{ dataset: "arith", train: false, eval_max_new_tokens: 8 } });
print(`ran ${r.ran} done ${r.done} pending ${r.pending}`);
r.results.write_csv("points.csv");
"#;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every file under `dir/logs`, for a failure message.
fn logs(dir: &Path) -> String {
    let mut s = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("logs")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    for f in files {
        s.push_str(&format!("==> {} <==\n{}\n", f.display(), std::fs::read_to_string(&f).unwrap_or_default()));
    }
    s
}

/// The rows that must agree between two runs of a sweep: point, status and the measured numbers.
fn merged(sweep_dir: &Path) -> Vec<Vec<String>> {
    let f = cotlab::results::runs::load_runs(&[sweep_dir.to_path_buf()]).unwrap();
    (0..f.height())
        .map(|i| ["index", "point", "status", "accuracy", "correct", "n", "train_loss_last"].iter().map(|c| format!("{:?}", f.cell(i, c).unwrap())).collect())
        .collect()
}

/// Cancels the jobs if the test ends early, so nothing keeps running into a deleted temp dir.
struct Jobs(Vec<String>);

impl Drop for Jobs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("scancel").args(&self.0).status();
        }
    }
}

#[test]
fn a_sweep_on_slurm_job_arrays_merges_to_the_local_results() {
    require!(Model, Slurm);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("tiny.rhai");
    std::fs::write(&script, SWEEP).unwrap();

    // Submit: one array task per point (one CPU each, so two run at once on two cores).
    let t0 = Instant::now();
    let r = run(cotlab().current_dir(d.path()).args([
        "sweep",
        "tiny.rhai",
        "--slurm",
        "--runs",
        "slurm-runs",
        "--out",
        "out-slurm",
        "--cpus",
        "1",
        "--mem",
        "3G",
        "--time",
        "30:00",
    ]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("3 points: 0 done, 0 failed, 0 invalid, 3 pending"), "{}", r.stdout);
    assert!(r.stdout.contains("submitted array job") && r.stdout.contains("(tasks 0-2)"), "{}", r.stdout);
    let slurm_dir = d.path().join("slurm-runs/tiny/slurm");
    let ids: serde_json::Value = serde_json::from_str(&read(&slurm_dir.join("jobs.json"))).unwrap();
    let (array, finalize) = (ids["array_job"].as_str().unwrap().to_string(), ids["finalize_job"].as_str().unwrap().to_string());
    let jobs = Jobs(vec![array.clone(), finalize.clone()]);
    let array_file = read(&slurm_dir.join("array.sbatch"));
    assert!(array_file.contains("#SBATCH --array=0-2\n") && array_file.contains("--point \"$SLURM_ARRAY_TASK_ID\""), "{array_file}");

    // Wait for both jobs to leave the queue.
    loop {
        let q = Command::new("squeue").args(["-h", "-o", "%i %T", "-j", &format!("{array},{finalize}")]).output().unwrap();
        let queued = String::from_utf8_lossy(&q.stdout).to_string();
        if queued.trim().is_empty() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1500), "the Slurm jobs did not finish in 25 minutes; queue:\n{queued}\n{}", logs(&slurm_dir));
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(jobs);
    let slurm_secs = t0.elapsed().as_secs_f64();

    // Every task published its own output dir; the finalize job merged and published the tables.
    for i in 0..3 {
        assert!(slurm_dir.join(format!("tasks/{i}/run.json")).is_file(), "task {i} published nothing\n{}", logs(&slurm_dir));
    }
    let finalize_log = read(&slurm_dir.join(format!("logs/finalize-{finalize}.log")));
    assert!(!finalize_log.contains("error:"), "{finalize_log}");
    assert!(finalize_log.contains("ran 0, 3 done, 0 pending of 3"), "{finalize_log}");
    let points = read(&d.path().join("out-slurm/points.csv"));
    assert_eq!(points.lines().count(), 1 + 3, "{points}");
    assert!(points.lines().skip(1).all(|l| l.contains(",done,")), "{points}");
    assert!(d.path().join("out-slurm/merged.csv").is_file() && d.path().join("out-slurm/run.json").is_file());
    let sweep_json = read(&d.path().join("slurm-runs/tiny/sweep.json"));
    assert_eq!(sweep_json.matches("\"status\": \"done\"").count(), 3, "{sweep_json}");

    // The same grid run here, in one process: the same points, the same numbers.
    let t1 = Instant::now();
    let r = run(cotlab().current_dir(d.path()).args(["run", "tiny.rhai", "--runs", "local-runs", "--out", "out-local"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (a, b) = (merged(&d.path().join("slurm-runs/tiny")), merged(&d.path().join("local-runs/tiny")));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b, "Slurm and local results differ");
    eprintln!("slurm: {slurm_secs:.0} s for 3 points (submit to merged); local: {:.0} s", t1.elapsed().as_secs_f64());

    // Submitting again has nothing to run.
    let r = run(cotlab().current_dir(d.path()).args(["sweep", "tiny.rhai", "--slurm", "--runs", "slurm-runs", "--out", "out-slurm"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing to submit"), "{}", r.stdout);
}

#[test]
fn point_selection_collect_and_the_sweep_plan() {
    require!(Model);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("p.rhai"), EVAL_ONLY).unwrap();
    let cmd = |args: &[&str]| {
        let mut c = cotlab();
        c.current_dir(d.path()).env_remove("SLURM_ARRAY_TASK_ID").args(args).args(["--runs", "runs"]);
        c
    };
    let done = |name: &str| -> Vec<bool> {
        let v: serde_json::Value = serde_json::from_str(&read(&d.path().join(format!("runs/{name}/sweep.json")))).unwrap();
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| d.path().join(format!("runs/{name}")).join(p["point"].as_str().unwrap()).join("point.json").is_file())
            .collect()
    };

    // The plan: every point, nothing run, nothing published.
    let r = run(&mut cmd(&["sweep", "p.rhai", "--out", "out"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("sweep p (") && r.stdout.contains("2 points: 0 done, 0 failed, 0 invalid, 2 pending"), "{}", r.stdout);
    assert!(r.stdout.contains("pending  eval_n-2-"), "{}", r.stdout);
    assert!(!d.path().join("out").exists(), "the plan's outputs are dropped");
    assert_eq!(done("p"), [false, false]);

    // --point 1 runs only point 1; SLURM_ARRAY_TASK_ID=0 then point 0.
    let r = run(&mut cmd(&["run", "p.rhai", "--point", "1", "--out", "out1"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ran 1 done 1 pending 1"), "{}", r.stdout);
    assert_eq!(done("p"), [false, true]);
    let r = run(cmd(&["run", "p.rhai", "--out", "out0"]).env("SLURM_ARRAY_TASK_ID", "0"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("SLURM_ARRAY_TASK_ID=0: every sweep runs only its point 0"), "{}", r.stderr);
    assert!(r.stdout.contains("ran 1 done 2 pending 0"), "{}", r.stdout);
    assert_eq!(done("p"), [true, true]);
    // --point wins over the variable; past the last point nothing runs, and that is no error.
    let r = run(cmd(&["run", "p.rhai", "--point", "5", "--out", "out5"]).env("SLURM_ARRAY_TASK_ID", "0"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("point 5: the sweep has only 2 points: nothing to run in this task"), "{}", r.stderr);
    assert!(r.stdout.contains("ran 0 done 2"), "{}", r.stdout);
    let r = run(cmd(&["run", "p.rhai", "--out", "outx"]).env("SLURM_ARRAY_TASK_ID", "first"));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("SLURM_ARRAY_TASK_ID is \"first\", not a point index"), "{}", r.stderr);

    // --collect runs nothing: complete points merge, missing ones fail the run after publishing.
    let r = run(&mut cmd(&["run", "p.rhai", "--collect", "--out", "outc"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(read(&d.path().join("outc/points.csv")).matches(",done,").count(), 2);
    let r = run(&mut cmd(&["run", "p.rhai", "--collect", "--set", "name=q", "--out", "outq"]));
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("2 sweep point(s) are not complete") && r.stderr.contains("not run yet"), "{}", r.stderr);
    assert_eq!(read(&d.path().join("outq/points.csv")).matches(",pending,").count(), 2);

    // The job files without submitting: absolute paths, the resources asked for, only the
    // points left to run (sweep q: both; sweep p: none, so nothing to write).
    let r =
        run(&mut cmd(&["sweep", "p.rhai", "--set", "name=q", "--out", "outq", "--slurm", "--dry-run", "--partition", "debug", "--cpus", "2", "--gpus", "1"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let slurm = d.path().join("runs/q/slurm");
    let array = read(&slurm.join("array.sbatch"));
    for want in [
        "#SBATCH --array=0-1\n",
        "#SBATCH --partition=debug\n",
        "#SBATCH --cpus-per-task=2\n",
        "#SBATCH --gpus=1\n",
        "--point \"$SLURM_ARRAY_TASK_ID\"",
        "--set name=q",
    ] {
        assert!(array.contains(want), "{want} missing:\n{array}");
    }
    assert!(array.contains(&format!("--runs {}", d.path().join("runs").display())), "{array}");
    let finalize = read(&slurm.join("finalize.sbatch"));
    assert!(finalize.contains(&format!("--collect --out {}", d.path().join("outq").display())) && !finalize.contains("--gpus"), "{finalize}");
    assert!(r.stdout.contains("not submitted (--dry-run)") && !slurm.join("jobs.json").exists(), "{}", r.stdout);
    let r = run(&mut cmd(&["sweep", "p.rhai", "--out", "out", "--slurm", "--dry-run"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("nothing to submit") && !d.path().join("runs/p/slurm").exists(), "{}", r.stdout);

    // A script without sweeps has nothing to plan.
    std::fs::write(d.path().join("none.rhai"), "print(1);").unwrap();
    let r = run(&mut cmd(&["sweep", "none.rhai", "--slurm"]));
    assert!(r.code != 0 && r.stderr.contains("calls no sweep()"), "{}", r.stderr);
}
