//! Sweeps on a Slurm cluster: one job array task per sweep point, then one job that merges.
//!
//! `cotlab sweep SCRIPT --slurm` evaluates the script once with no point running
//! ([`super::SweepMode::Collect`]) to learn its sweeps, then writes into `<runs>/<sweep>/slurm/`:
//!
//! * `array.sbatch`: a job array whose task `i` runs `cotlab run SCRIPT --point i` (every
//!   `sweep()` in the script runs only its point `i`), its output dir `tasks/<i>/`, its log
//!   `logs/array-<job>_<i>.log`. The array lists only the indices some sweep still has to run
//!   (not complete, not invalid), so submitting again after a failure reruns just those.
//! * `finalize.sbatch`: `cotlab run SCRIPT --collect --out OUT`, submitted with
//!   `--dependency=afterany:<array job>`: it runs no point, the script merges the results from
//!   the point dirs (`results()`, the sweep's `results` frame) and writes its tables to `OUT`;
//!   a point not complete makes it exit non-zero (after publishing).
//! * `jobs.json`: the job ids of the last submission.
//!
//! Every task shares the runs dir: points are independent dirs, so tasks need no coordination
//! beyond what the sweep already does (see [`super::sweep`]). Paths in the job files are absolute
//! and the jobs start in the submitting dir, so they run the same files from any node that
//! mounts them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::journal::write_atomic;
use crate::usage;

use super::{PlannedSweep, PointStatus};

/// Resources of each job (`cotlab sweep --slurm --partition P --gpus G ...`); `None` leaves the
/// cluster's default.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// GPUs per array task (`--gpus`, e.g. `1` or `h100:1`); the finalize job gets none.
    pub gpus: Option<String>,
    /// CPUs per task (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Memory per node (`--mem`, e.g. `16G`).
    pub mem: Option<String>,
    /// Time limit per task (`--time`, e.g. `2:00:00`).
    pub time: Option<String>,
}

/// What the jobs run: `cotlab run` of one script with the submitting session's options.
#[derive(Clone, Debug)]
pub struct ArrayJob {
    /// The sweep whose dir holds the job files (the script's first sweep).
    pub name: String,
    /// `<runs>/<sweep>/slurm`.
    pub dir: PathBuf,
    /// Array indices to run, ascending.
    pub indices: Vec<usize>,
    /// The cotlab binary.
    pub exe: PathBuf,
    pub script: PathBuf,
    /// Options every `cotlab run` gets (`--data-dir`, `--runs`, `--set`, ...), absolute paths.
    pub args: Vec<String>,
    /// The finalize job's output dir.
    pub out: PathBuf,
    /// Where the jobs start (relative `--set` paths mean the same there).
    pub workdir: PathBuf,
    pub options: SlurmOptions,
}

/// The files [`ArrayJob::write`] wrote.
#[derive(Clone, Debug)]
pub struct SlurmFiles {
    pub array: PathBuf,
    pub finalize: PathBuf,
    pub logs: PathBuf,
    pub tasks: PathBuf,
}

/// Job ids of a submission.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Submitted {
    pub array_job: String,
    pub finalize_job: String,
}

/// The array indices some sweep still has to run: the union over `sweeps` of the points neither
/// complete nor invalid (one array serves every sweep of a script: task `i` runs point `i` of each).
pub fn indices_to_run(sweeps: &[PlannedSweep]) -> Vec<usize> {
    let mut v: Vec<usize> =
        sweeps.iter().flat_map(|s| s.points.iter()).filter(|p| matches!(p.status, PointStatus::Pending | PointStatus::Failed)).map(|p| p.index).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `0-3,5,7-8`: Slurm's `--array` list for ascending indices.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        while i + 1 < indices.len() && indices[i + 1] == indices[i] + 1 {
            i += 1;
        }
        parts.push(if indices[i] == start { start.to_string() } else { format!("{start}-{}", indices[i]) });
        i += 1;
    }
    parts.join(",")
}

/// One word for a shell: single-quoted unless plainly safe.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A value on an `#SBATCH` line: Slurm splits those lines at whitespace and reads no quotes.
fn directive_value(what: &str, v: &str) -> Result<String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(usage!("slurm: {what} {v:?} cannot go on an #SBATCH line (empty, or it has whitespace or '#'): use a value or path without them"));
    }
    Ok(v.to_string())
}

fn directive_path(what: &str, p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| usage!("slurm: the {what} {} is not valid UTF-8: use another path", p.display()))?;
    directive_value(&format!("the {what}"), s)
}

/// Job names: `cotlab-<sweep>` with `/` made `-`.
fn job_name(sweep: &str, suffix: &str) -> String {
    format!("cotlab-{}{suffix}", sweep.replace('/', "-"))
}

impl ArrayJob {
    fn header(&self, name: &str, log: &str, gpus: bool, cpus: Option<u32>) -> Result<String> {
        let o = &self.options;
        let mut h = vec!["#!/bin/bash".to_string()];
        h.push(format!("# Written by `cotlab sweep --slurm` (cotlab {}): run that again to submit the points still missing.", env!("CARGO_PKG_VERSION")));
        h.push(format!("#SBATCH --job-name={}", directive_value("the sweep name", &job_name(&self.name, name))?));
        h.push(format!("#SBATCH --output={}/{log}", directive_path("log dir", &self.dir.join("logs"))?));
        h.push(format!("#SBATCH --chdir={}", directive_path("working dir", &self.workdir)?));
        if let Some(p) = &o.partition {
            h.push(format!("#SBATCH --partition={}", directive_value("--partition", p)?));
        }
        if let Some(c) = cpus {
            h.push(format!("#SBATCH --cpus-per-task={c}"));
        }
        if let Some(m) = &o.mem {
            h.push(format!("#SBATCH --mem={}", directive_value("--mem", m)?));
        }
        if let Some(t) = &o.time {
            h.push(format!("#SBATCH --time={}", directive_value("--time", t)?));
        }
        if gpus {
            if let Some(g) = &o.gpus {
                h.push(format!("#SBATCH --gpus={}", directive_value("--gpus", g)?));
            }
        }
        Ok(h.join("\n"))
    }

    fn command(&self, extra: &[&str], out: &str) -> String {
        let mut words = vec![sh_quote(&self.exe.display().to_string()), "run".into(), sh_quote(&self.script.display().to_string())];
        words.extend(extra.iter().map(|w| w.to_string()));
        words.push("--out".into());
        words.push(out.to_string());
        words.extend(self.args.iter().map(|a| sh_quote(a)));
        format!("exec {}", words.join(" "))
    }

    /// The array job's file text.
    pub fn array_text(&self) -> Result<String> {
        if self.indices.is_empty() {
            return Err(usage!("sweep '{}': no point to run, so no array to write", self.name));
        }
        let mut t = self.header("", "array-%A_%a.log", true, self.options.cpus)?;
        t.push_str(&format!("\n#SBATCH --array={}\n", array_spec(&self.indices)));
        t.push_str("# Task i runs point i of every sweep in the script; its output dir is tasks/<i>.\nset -eu\n");
        let tasks = sh_quote(&self.dir.join("tasks").display().to_string());
        t.push_str(&self.command(&["--point", "\"$SLURM_ARRAY_TASK_ID\""], &format!("{tasks}/\"$SLURM_ARRAY_TASK_ID\"")));
        t.push('\n');
        Ok(t)
    }

    /// The finalize job's file text (submitted after the array with `--dependency=afterany:ID`).
    pub fn finalize_text(&self) -> Result<String> {
        // It only reads results and writes tables: one CPU, no GPU.
        let mut t = self.header("-finalize", "finalize-%j.log", false, Some(1))?;
        t.push_str("\n# Runs no point: merges the points' results and writes the script's tables.\nset -eu\n");
        t.push_str(&self.command(&["--collect"], &sh_quote(&self.out.display().to_string())));
        t.push('\n');
        Ok(t)
    }

    /// Write `array.sbatch` and `finalize.sbatch` into the sweep's slurm dir (and make its
    /// `logs/` and `tasks/`).
    pub fn write(&self) -> Result<SlurmFiles> {
        let (array_text, finalize_text) = (self.array_text()?, self.finalize_text()?);
        let files = SlurmFiles {
            array: self.dir.join("array.sbatch"),
            finalize: self.dir.join("finalize.sbatch"),
            logs: self.dir.join("logs"),
            tasks: self.dir.join("tasks"),
        };
        for d in [&files.logs, &files.tasks] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        write_atomic(&files.array, array_text.as_bytes())?;
        write_atomic(&files.finalize, finalize_text.as_bytes())?;
        Ok(files)
    }
}

/// `sbatch --parsable [extra] FILE`: the job id.
fn sbatch(file: &Path, extra: &[String]) -> Result<String> {
    let out = Command::new("sbatch").arg("--parsable").args(extra).arg(file).output().map_err(|e| {
        usage!("cannot run sbatch ({e}): submit from a machine with Slurm's client (a login node), or use --dry-run to only write the job files")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(usage!("sbatch {} failed ({}): {}", file.display(), out.status, stderr.trim()));
    }
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(usage!("sbatch {} printed no job id (stdout {:?}, stderr {:?})", file.display(), stdout.trim(), stderr.trim()));
    }
    Ok(id)
}

/// Submit the array, then the finalize job after it; record both ids in `jobs.json`.
pub fn submit(files: &SlurmFiles) -> Result<Submitted> {
    let array_job = sbatch(&files.array, &[])?;
    let finalize_job = sbatch(&files.finalize, &[format!("--dependency=afterany:{array_job}")]).map_err(|e| {
        usage!(
            "{e}\nnote: the array job {array_job} was submitted; submit the merge yourself: sbatch --dependency=afterany:{array_job} {}",
            files.finalize.display()
        )
    })?;
    let s = Submitted { array_job, finalize_job };
    let dir = files.array.parent().unwrap_or(Path::new("."));
    write_atomic(&dir.join("jobs.json"), serde_json::to_string_pretty(&s).expect("JSON").as_bytes())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> ArrayJob {
        ArrayJob {
            name: "paper/svamp".into(),
            dir: PathBuf::from("/r/paper/svamp/slurm"),
            indices: vec![0, 1, 2, 5, 7, 8],
            exe: PathBuf::from("/bin/cotlab"),
            script: PathBuf::from("/s/my sweep.rhai"),
            args: vec!["--runs".into(), "/r".into(), "--set".into(), "name=it's".into()],
            out: PathBuf::from("/o/out"),
            workdir: PathBuf::from("/w"),
            options: SlurmOptions {
                partition: Some("gpu".into()),
                gpus: Some("1".into()),
                cpus: Some(4),
                mem: Some("16G".into()),
                time: Some("1:00:00".into()),
            },
        }
    }

    #[test]
    fn array_lists_ranges_and_files_quote_their_words() {
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(array_spec(&[3]), "3");
        let a = job().array_text().unwrap();
        assert!(a.contains("#SBATCH --array=0-2,5,7-8\n"), "{a}");
        assert!(a.contains("#SBATCH --job-name=cotlab-paper-svamp\n") && a.contains("#SBATCH --gpus=1\n") && a.contains("--cpus-per-task=4"), "{a}");
        assert!(a.contains("#SBATCH --output=/r/paper/svamp/slurm/logs/array-%A_%a.log"), "{a}");
        assert!(
            a.contains(r#"exec /bin/cotlab run '/s/my sweep.rhai' --point "$SLURM_ARRAY_TASK_ID" --out /r/paper/svamp/slurm/tasks/"$SLURM_ARRAY_TASK_ID" --runs /r --set 'name=it'\''s'"#),
            "{a}"
        );
        let f = job().finalize_text().unwrap();
        assert!(f.contains("--collect --out /o/out") && f.contains("--cpus-per-task=1") && !f.contains("--gpus"), "{f}");
        assert!(f.contains("#SBATCH --job-name=cotlab-paper-svamp-finalize"), "{f}");

        let mut j = job();
        j.options.mem = Some("16 G".into());
        let e = j.array_text().unwrap_err().to_string();
        assert!(e.contains("--mem") && e.contains("whitespace"), "{e}");
        let mut j = job();
        j.dir = PathBuf::from("/my runs/x/slurm");
        assert!(j.array_text().unwrap_err().to_string().contains("log dir"));
        let mut j = job();
        j.indices.clear();
        assert!(j.array_text().unwrap_err().to_string().contains("no point to run"));
    }
}
