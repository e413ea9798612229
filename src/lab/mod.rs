//! The library facade: how the CLI, Rhai scripts and notebooks open students and teachers, name
//! run and eval dirs, and check paths. Both adapters (`main.rs`, `script/`) call these and add
//! nothing but argument parsing, so a script and the command line behave the same.

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use sandbox::{Access, RunName};

use crate::data::{DataDir, Dataset};
use crate::error::{Error, Result};
use crate::model::{compute_dtype, device, resolve, ChatTemplate, Student};
use crate::results::OutputDir;
use crate::teacher::cache::Cache;
use crate::teacher::openai::{OpenAi, OpenAiOptions};
use crate::teacher::{default_cache_path, Backend, Teacher};
use crate::train::RunDir;
use crate::usage;

/// Where a session reads and writes: the data dir, the runs dir (training runs, eval dirs,
/// caches a script names), the output dir, and who is asking ([`Access`]).
#[derive(Clone)]
pub struct Workspace {
    pub data_dir: DataDir,
    pub runs_dir: PathBuf,
    pub out: Option<Arc<OutputDir>>,
    pub access: Access,
    /// Work that failed without stopping the session (a sweep's failed points): `cotlab run`
    /// publishes the outputs, then exits non-zero when this is not empty.
    pub failures: Arc<Failures>,
}

/// Failures a session carries on past, in the order they happened.
#[derive(Debug, Default)]
pub struct Failures(std::sync::Mutex<Vec<String>>);

impl Failures {
    pub fn add(&self, what: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Options of [`Workspace::student`] (Rhai: `student(spec, #{...})`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentOptions {
    /// "cpu" (default), "cuda", "cuda:N" or "auto" (CUDA when this cotlab was built with it
    /// and a GPU is present, else the CPU with a message). See docs/cuda.md.
    pub device: Option<String>,
    /// The compute dtype: "auto" (default: bf16 on CUDA, f32 on the CPU), "bf16" or "f32".
    /// Weights, gradients and optimizer state are f32 either way (mixed precision).
    pub dtype: Option<String>,
    /// The chat template to train and prompt with, instead of the one the model declares:
    /// "chatml", "llama3", "gemma" or "alpaca". Required for a model that declares none (a base
    /// checkpoint: cotlab never guesses one).
    pub template: Option<String>,
}

impl Workspace {
    /// Trusted use (the CLI's own arguments, Rust code): any path.
    pub fn open(data_dir: DataDir, runs_dir: PathBuf, out: Option<Arc<OutputDir>>) -> Workspace {
        Workspace { data_dir, runs_dir, out, access: Access::Open, failures: Arc::default() }
    }

    /// The trusted workspace of the current directory: data from `COTLAB_DATA` (else
    /// `./datasets`), runs in `./runs`, no output dir.
    pub fn local() -> Workspace {
        Workspace::open(DataDir::resolve(None), PathBuf::from("runs"), None)
    }

    /// A script's workspace: reads confined to the data, runs and output dirs, the cotlab home
    /// and `extra_read` (see [`sandbox`]).
    pub fn sandboxed(data_dir: DataDir, runs_dir: PathBuf, out: Option<Arc<OutputDir>>, extra_read: &[PathBuf]) -> Workspace {
        let mut roots = vec![data_dir.0.clone(), runs_dir.clone(), crate::model::cotlab_home()];
        if let Some(o) = &out {
            roots.push(o.root().to_path_buf());
        }
        roots.extend(extra_read.iter().cloned());
        Workspace { data_dir, runs_dir, out, access: Access::sandboxed(roots), failures: Arc::default() }
    }

    /// A file a caller wants to read, checked against the read policy.
    pub fn readable(&self, path: &Path, what: &str) -> Result<PathBuf> {
        self.access.readable(path, what)
    }

    /// `runs/<name>` for a run or eval dir, inside the runs dir whatever the name says.
    pub fn run_dir(&self, name: &str) -> Result<PathBuf> {
        sandbox::inside(&self.runs_dir, &RunName::new(name)?)
    }

    /// An existing run dir named by path (`runs/svamp-l3`) or by run name (`svamp-l3`).
    pub fn find_run(&self, run: &str) -> Result<PathBuf> {
        let direct = PathBuf::from(run);
        let dir = if RunDir::new(&direct).config_path().is_file() { direct } else { self.run_dir(run)? };
        if !RunDir::new(&dir).config_path().is_file() {
            return Err(Error::data(&dir, format!("not a run dir (no config.json); runs live in {}", self.runs_dir.display())));
        }
        self.readable(&dir, "run")
    }

    /// The eval dir of `student` on `ds`: `name` under the runs dir, else the one default rule
    /// `eval-<task>-<split>-<model>` (see [`default_eval_name`]).
    pub fn eval_dir(&self, name: Option<&str>, ds: &Dataset, student: &Student) -> Result<PathBuf> {
        match name {
            Some(n) => self.run_dir(n),
            None => self.run_dir(&default_eval_name(ds, &student.source)),
        }
    }

    /// Open a student: "default", a .gguf file, a Hugging Face model dir, `hf:ORG/NAME[@rev]`,
    /// or a training run (a run dir's path or its name under the runs dir: the last
    /// checkpoint's weights on the run's base model).
    pub fn student(&self, spec: &str, opts: &StudentOptions) -> Result<Student> {
        let dev = device(opts.device.as_deref().unwrap_or("cpu"))?;
        let dtype = compute_dtype(opts.dtype.as_deref().unwrap_or("auto"), &dev)?;
        if spec != "default" && !spec.starts_with("hf:") {
            let direct = PathBuf::from(spec);
            // A path that exists is taken as given; otherwise the spec may name a run (checked as
            // a `RunName` by `find_run`).
            let as_run = if direct.exists() { direct.clone() } else { self.runs_dir.join(spec) };
            if RunDir::new(&as_run).checkpoint().is_dir() {
                let dir = self.find_run(spec)?;
                self.base_models_readable(&dir)?;
                let mut s = crate::train::export::load_run_on(&dir, &dev)?;
                s.model.set_compute_dtype(dtype)?;
                if let Some(t) = &opts.template {
                    s.template = ChatTemplate::choose(Some(t), &s.source, None, &s.tokenizer, s.config.bos_token_id, s.config.eos_token_id)?;
                }
                return Ok(s);
            }
            // A typo gets "model not found" from `resolve`; an existing file outside the read
            // roots is refused, and what loads is the path that was checked (named as given).
            if direct.exists() {
                let real = self.readable(&direct, "student")?;
                let mut s = Student::load_with(&real, &dev, opts.template.as_deref())?;
                s.source = direct;
                s.model.set_compute_dtype(dtype)?;
                return Ok(s);
            }
        }
        let mut s = Student::load_with(&resolve(spec)?, &dev, opts.template.as_deref())?;
        s.model.set_compute_dtype(dtype)?;
        Ok(s)
    }

    /// The models a run dir was trained from (its config's `model`, and that run's, …) must be
    /// readable too: a run dir's config names a path that loading it opens.
    fn base_models_readable(&self, run_dir: &Path) -> Result<()> {
        let mut dir = run_dir.to_path_buf();
        for _ in 0..64 {
            let base = crate::train::export::run_base_model(&dir)?;
            if base == "default" || base.starts_with("hf:") {
                return Ok(());
            }
            let base = self.readable(Path::new(&base), "student (the base model of a run)")?;
            if !RunDir::new(&base).checkpoint().is_dir() {
                return Ok(());
            }
            dir = base;
        }
        Err(Error::data(run_dir, "its base model chain is longer than 64 runs (a loop of runs?)"))
    }

    /// A teacher: `openai` (an OpenAI-compatible endpoint), `local` (a student as teacher),
    /// `replay` (the release's rationales). Options as in docs/script-api.md → Teachers.
    pub fn teacher(&self, spec: TeacherSpec) -> Result<Teacher> {
        let cache = |name: &Option<String>| -> Result<Option<Arc<Cache>>> { Ok(Some(Arc::new(Cache::open(&self.teacher_cache(name.as_deref())?)?))) };
        Ok(match spec {
            TeacherSpec::OpenAi { options, cache: c } => {
                let model = options.model.clone();
                let client = OpenAi::new(options).map_err(|e| usage!("teacher: {e}"))?;
                Teacher { kind: "openai".into(), model, backend: Backend::OpenAi(Box::new(client)), cache: cache(&c)? }
            }
            TeacherSpec::Local { model, device, cache: c } => {
                self.student_teacher(Arc::new(self.student(&model, &StudentOptions { device, ..Default::default() })?), c.as_deref())?
            }
            TeacherSpec::Replay { dataset, teacher } => Teacher {
                kind: "replay".into(),
                model: teacher.clone(),
                backend: Backend::Replay { dir: self.data_dir.clone(), dataset, teacher },
                cache: None,
            },
        })
    }

    /// The teacher answer cache: a name under the runs dir, or the shared default.
    pub fn teacher_cache(&self, name: Option<&str>) -> Result<PathBuf> {
        match name {
            Some(n) => self.run_dir(n),
            None => Ok(default_cache_path()),
        }
    }

    /// A loaded student used as a local teacher.
    pub fn student_teacher(&self, s: Arc<Student>, cache: Option<&str>) -> Result<Teacher> {
        let cache = Arc::new(Cache::open(&self.teacher_cache(cache)?)?);
        Ok(Teacher { kind: "local".into(), model: s.source.display().to_string(), backend: Backend::Local(s), cache: Some(cache) })
    }
}

/// A teacher's options by kind (see [`Workspace::teacher`]). `cache` names the answer cache
/// file under the runs dir (default: the shared `$COTLAB_HOME/teacher-cache.jsonl`).
pub enum TeacherSpec {
    OpenAi { options: OpenAiOptions, cache: Option<String> },
    Local { model: String, device: Option<String>, cache: Option<String> },
    Replay { dataset: String, teacher: String },
}

/// The one naming rule for eval dirs: `eval-<task>-<split>-<model>`, where `<model>` is the
/// model file's stem (a run's dir name for run dirs) and a subset adds `-n<N>-s<seed>`.
pub fn default_eval_name(ds: &Dataset, model: &Path) -> String {
    let stem = model.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect::<String>();
    let mut name = format!("eval-{}-{}-{}", clean(&ds.name), clean(&ds.split), clean(stem.trim_start_matches('.')));
    match ds.subset {
        Some((n, Some(seed))) => name.push_str(&format!("-n{n}-s{seed}")),
        Some((n, None)) => name.push_str(&format!("-n{n}")),
        None => {}
    }
    name
}

impl Student {
    /// Open a student by spec with the default workspace (data dir from `COTLAB_DATA`, runs in
    /// `./runs`), trusted: see [`Workspace::student`] for the specs.
    pub fn open(spec: &str, opts: &StudentOptions) -> Result<Student> {
        Workspace::local().student(spec, opts)
    }
}

impl Teacher {
    /// Build a teacher from its spec with the default workspace, trusted: see
    /// [`Workspace::teacher`].
    pub fn from_spec(spec: TeacherSpec) -> Result<Teacher> {
        Workspace::local().teacher(spec)
    }
}
