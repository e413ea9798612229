//! `cotlab sweep`: a script's sweeps as planned (every point with its status), and the Slurm
//! job array that runs the points left (see [`super::slurm`]).
//!
//! The binary learns the sweeps by running the script with no point running; what to do with
//! them is decided here. Invariants: every path a job gets is absolute ([`JobInputs::absolute`]:
//! jobs run later, on other nodes, from the submitting dir); the array lists only points some
//! sweep still has to run, so no job is written when none is left ([`array_job`]); a job's
//! `cotlab run` gets the submitting session's options, in the order they were given.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::paths::absolute;

use super::slurm::{array_spec, indices_to_run, ArrayJob, SlurmFiles, SlurmOptions, Submitted};
use super::{PlannedSweep, PointStatus, SweepMode};

/// Which points a `cotlab run` runs: none with `--collect`, point N with `--point N`, else
/// point `$SLURM_ARRAY_TASK_ID` in a job array task (said on stderr), else every point.
pub fn sweep_mode(point: Option<usize>, collect: bool) -> Result<SweepMode> {
    if collect {
        return Ok(SweepMode::Collect);
    }
    if let Some(n) = point {
        return Ok(SweepMode::Point(n));
    }
    match std::env::var("SLURM_ARRAY_TASK_ID") {
        Ok(v) if !v.trim().is_empty() => {
            let n = v
                .trim()
                .parse::<usize>()
                .map_err(|_| Error::usage(format!("SLURM_ARRAY_TASK_ID is {v:?}, not a point index: pass --point N, or unset it to run every point")))?;
            eprintln!("[cotlab run] SLURM_ARRAY_TASK_ID={n}: every sweep runs only its point {n} (--point chooses another)");
            Ok(SweepMode::Point(n))
        }
        _ => Ok(SweepMode::Run),
    }
}

/// A temporary dir, removed when dropped: where the planning run's outputs go to be discarded.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("cotlab-sweep-plan-{}", crate::paths::unique_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What every job's `cotlab run` gets besides `--point` / `--collect`.
#[derive(Clone, Debug)]
pub struct JobInputs {
    pub script: PathBuf,
    pub data_dir: PathBuf,
    pub runs: PathBuf,
    /// Where the finalize job publishes the tables.
    pub out: PathBuf,
    /// `--set KEY=VALUE` pairs, as given.
    pub set: Vec<String>,
    pub allow_read: Vec<PathBuf>,
    /// `--max-memory` in GiB, when given.
    pub max_memory: Option<f64>,
}

impl JobInputs {
    /// The same inputs, every path absolute (lexically: nothing needs to exist yet).
    pub fn absolute(self) -> JobInputs {
        JobInputs {
            script: absolute(&self.script),
            data_dir: absolute(&self.data_dir),
            runs: absolute(&self.runs),
            out: absolute(&self.out),
            allow_read: self.allow_read.iter().map(|p| absolute(p)).collect(),
            ..self
        }
    }

    /// The options of every job's `cotlab run`, but the script and `--out`.
    pub fn run_args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_string(), self.data_dir.display().to_string(), "--runs".into(), self.runs.display().to_string()];
        for kv in &self.set {
            args.extend(["--set".to_string(), kv.clone()]);
        }
        for d in &self.allow_read {
            args.extend(["--allow-read".to_string(), d.display().to_string()]);
        }
        if let Some(g) = self.max_memory {
            args.extend(["--max-memory".to_string(), g.to_string()]);
        }
        args
    }
}

/// The plan as `cotlab sweep` prints it: per sweep a line of counts, then one line per point
/// (index, status, dir name, and why it failed or is invalid).
pub fn plan_text(sweeps: &[PlannedSweep]) -> String {
    let mut text = String::new();
    for s in sweeps {
        let count = |st: PointStatus| s.points.iter().filter(|p| p.status == st).count();
        let _ = writeln!(
            text,
            "sweep {} ({}): {} points: {} done, {} failed, {} invalid, {} pending",
            s.name,
            s.dir.display(),
            s.points.len(),
            count(PointStatus::Done),
            count(PointStatus::Failed),
            count(PointStatus::Invalid),
            count(PointStatus::Pending)
        );
        for p in &s.points {
            let status = serde_json::to_value(p.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let reason = p.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default();
            let _ = writeln!(text, "  {:>4}  {status:<8} {}{reason}", p.index, p.point);
        }
    }
    text
}

/// The job array for the points of `sweeps` left to run (its files in the first sweep's
/// `slurm/` dir), run by `exe`; None when every point is complete or invalid.
pub fn array_job(sweeps: &[PlannedSweep], inputs: &JobInputs, exe: PathBuf, options: SlurmOptions) -> Option<ArrayJob> {
    let first = sweeps.first()?;
    let indices = indices_to_run(sweeps);
    if indices.is_empty() {
        return None;
    }
    Some(ArrayJob {
        name: first.name.clone(),
        dir: absolute(&first.dir).join("slurm"),
        indices,
        exe,
        script: inputs.script.clone(),
        args: inputs.run_args(),
        out: inputs.out.clone(),
        workdir: absolute(std::path::Path::new(".")),
        options,
    })
}

/// `cotlab sweep --slurm`: writes the job files for the points left to run and submits them
/// (with `dry_run`, only writes them); what was done, as the command prints it. None when no
/// point is left to run (nothing written).
pub fn write_and_submit(sweeps: &[PlannedSweep], inputs: &JobInputs, exe: PathBuf, options: SlurmOptions, dry_run: bool) -> Result<Option<String>> {
    let Some(job) = array_job(sweeps, inputs, exe, options) else { return Ok(None) };
    let files = job.write()?;
    if dry_run {
        return dry_run_text(&files).map(Some);
    }
    let submitted = super::slurm::submit(&files)?;
    Ok(Some(submitted_text(&submitted, &job, &files)))
}

/// `--dry-run`: both job files, then how to submit them by hand.
fn dry_run_text(files: &SlurmFiles) -> Result<String> {
    let mut text = String::new();
    for f in [&files.array, &files.finalize] {
        let _ = writeln!(text, "==> {} <==\n{}", f.display(), crate::paths::read_text(f)?);
    }
    let _ = write!(
        text,
        "not submitted (--dry-run). To submit: id=$(sbatch --parsable {}) && sbatch --dependency=afterany:$id {}",
        files.array.display(),
        files.finalize.display()
    );
    Ok(text)
}

/// What a submission started and where its files, logs and tables will be.
fn submitted_text(s: &Submitted, job: &ArrayJob, files: &SlurmFiles) -> String {
    format!(
        "submitted array job {} (tasks {}) and finalize job {} (after it)\njob files: {} {}\nlogs: {}; task outputs: {}\ntables (after the finalize job): {}",
        s.array_job,
        array_spec(&job.indices),
        s.finalize_job,
        files.array.display(),
        files.finalize.display(),
        files.logs.display(),
        files.tasks.display(),
        job.out.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::PointPlan;

    fn point(index: usize, status: PointStatus) -> PointPlan {
        PointPlan { index, point: format!("p{index}"), config: Default::default(), status, reason: None, resolved: None, data_files: Vec::new() }
    }

    fn sweep(statuses: &[PointStatus]) -> PlannedSweep {
        PlannedSweep { name: "s".into(), dir: PathBuf::from("runs/s"), points: statuses.iter().enumerate().map(|(i, &st)| point(i, st)).collect() }
    }

    fn inputs() -> JobInputs {
        JobInputs {
            script: "a.rhai".into(),
            data_dir: "/d".into(),
            runs: "runs".into(),
            out: "out/../o".into(),
            set: vec!["n=1".into()],
            allow_read: vec!["x".into()],
            max_memory: Some(2.5),
        }
    }

    #[test]
    fn job_inputs_are_absolute_and_keep_every_option() {
        let i = inputs().absolute();
        for p in [&i.script, &i.data_dir, &i.runs, &i.out, &i.allow_read[0]] {
            assert!(p.is_absolute() && !p.components().any(|c| c == std::path::Component::ParentDir), "{}", p.display());
        }
        let args = i.run_args();
        let runs = i.runs.display().to_string();
        let read = i.allow_read[0].display().to_string();
        let want = ["--data-dir", "/d", "--runs", &runs, "--set", "n=1", "--allow-read", &read, "--max-memory", "2.5"];
        assert_eq!(args, want);
    }

    #[test]
    fn no_job_when_no_point_is_left_to_run() {
        let exe = PathBuf::from("/bin/cotlab");
        let done = [sweep(&[PointStatus::Done, PointStatus::Invalid])];
        assert!(array_job(&done, &inputs(), exe.clone(), SlurmOptions::default()).is_none());
        let left = [sweep(&[PointStatus::Done, PointStatus::Failed, PointStatus::Pending])];
        let job = array_job(&left, &inputs(), exe, SlurmOptions::default()).expect("two points left");
        assert_eq!(job.indices, [1, 2]);
        assert!(job.dir.is_absolute() && job.dir.ends_with("runs/s/slurm"), "{}", job.dir.display());
    }

    #[test]
    fn the_plan_lists_counts_and_every_point() {
        let mut s = sweep(&[PointStatus::Done, PointStatus::Invalid]);
        s.points[1].reason = Some("no bsm".into());
        let text = plan_text(&[s]);
        assert_eq!(text, "sweep s (runs/s): 2 points: 1 done, 0 failed, 1 invalid, 0 pending\n     0  done     p0\n     1  invalid  p1  (no bsm)\n");
    }
}
