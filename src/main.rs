//! The `cotlab` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use cotlab::data::contamination;
use cotlab::data::loaders::load_questions;
use cotlab::data::{load_dataset, Catalog, DataDir, DatasetOptions, Task};
use cotlab::eval::score_predictions;
use cotlab::results::tables::catalog_frame;
use cotlab::results::OutputDir;
use cotlab::script::{default_out_dir, parse_param, Context, Runner};
use cotlab::{Error, Result};

#[derive(Parser)]
#[command(name = "cotlab", version, about = "Chain-of-thought distillation workbench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a Rhai script.
    Run {
        script: PathBuf,
        /// The data dir (default: $COTLAB_DATA, then ./datasets).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Output dir for files the script writes (default: out/<script name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// key=value, visible to the script as a variable and in `params`. Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Re-score a predictions file (JSON lines with `id` or `question`, and `prediction`).
    Score {
        #[arg(long)]
        task: String,
        #[arg(long)]
        predictions: PathBuf,
        /// Test split to score against (default: test).
        #[arg(long)]
        split: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Report how many test questions appear in a training file.
    Contamination {
        #[arg(long)]
        train: PathBuf,
        #[arg(long)]
        test: PathBuf,
        /// Near-duplicate threshold (word-trigram Jaccard).
        #[arg(long, default_value_t = 0.8)]
        threshold: f64,
        /// Also list every flagged question.
        #[arg(long)]
        verbose: bool,
    },
    /// List the release's rationale files and whether the data dir has them.
    Catalog {
        /// Only this dataset.
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run { script, data_dir, out, set } => run(script, data_dir, out, set),
        Cmd::Score { task, predictions, split, data_dir } => {
            let dir = DataDir::resolve(data_dir);
            let ds = load_dataset(&dir, &task, &DatasetOptions { split, ..Default::default() })?;
            let report = score_predictions(&ds, &predictions)?;
            println!("{}", serde_json::to_string(&report).expect("report serialises"));
            Ok(())
        }
        Cmd::Contamination { train, test, threshold, verbose } => {
            let tr = load_questions(&train)?;
            let te = load_questions(&test)?;
            let report = contamination::check(&tr, &te, threshold);
            eprintln!("{}", report.summary());
            if verbose {
                for h in &report.hits {
                    eprintln!("  [{}] test #{} ~ train #{} ({:.2}): {}", h.level, h.test_index, h.train_index, h.similarity, h.test_question);
                }
            }
            let mut v = serde_json::to_value(&report).expect("report serialises");
            v.as_object_mut().unwrap().remove("hits");
            v["train"] = train.display().to_string().into();
            v["test"] = test.display().to_string().into();
            println!("{v}");
            Ok(())
        }
        Cmd::Catalog { dataset, data_dir } => {
            let cat = Catalog::new(DataDir::resolve(data_dir));
            let task = dataset.as_deref().map(Task::parse).transpose()?;
            println!("{}", catalog_frame(&cat, task)?.to_table_string());
            Ok(())
        }
    }
}

fn run(script: PathBuf, data_dir: Option<PathBuf>, out: Option<PathBuf>, set: Vec<String>) -> Result<()> {
    let mut params = Vec::new();
    for kv in &set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::usage(format!("--set expects KEY=VALUE, got '{kv}'")));
        };
        let valid = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::usage(format!("--set key '{k}' must be a valid identifier (letters, digits, _)")));
        }
        params.push((k.to_string(), parse_param(v)));
    }
    if !script.is_file() {
        return Err(Error::data(&script, "script not found"));
    }
    let out_dir = out.unwrap_or_else(|| default_out_dir(&script));
    let output = Arc::new(OutputDir::create(&out_dir)?);
    let ctx = Context::new(DataDir::resolve(data_dir), Some(output.clone()));
    let runner = Runner { ctx: ctx.clone(), params: params.clone() };
    let started = Instant::now();
    match runner.run_file(&script) {
        Ok(_) => {
            let manifest = serde_json::json!({
                "script": script.display().to_string(),
                "data_dir": ctx.data_dir.0.display().to_string(),
                "params": set,
                "seconds": started.elapsed().as_secs_f64(),
                "cotlab_version": env!("CARGO_PKG_VERSION"),
            });
            let files = output.commit(manifest)?;
            for f in files {
                eprintln!("wrote {}", f.display());
            }
            Ok(())
        }
        Err(e) if output.has_staged_files() => Err(Error::Script(format!(
            "{e}\nnote: nothing was published to {}; the files the script wrote before failing are in {} (incomplete)",
            out_dir.display(),
            output.staging().display()
        ))),
        Err(e) => Err(e),
    }
}
