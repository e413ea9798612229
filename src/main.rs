//! The `cotlab` command line: a thin layer over the library. `cli.rs` says what the command line
//! takes; here each subcommand is handed to one small function that calls the library and prints
//! what it returns.
//!
//! Exit status (documented in `cotlab --help`): 0 on success; 1 on an error; 2 on a command-line
//! usage error (clap's); 3 when a script finished and published its outputs but sweep points
//! failed or are not complete. A script that fails publishes nothing and exits 1.

mod cli;
mod process;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde::Serialize;

use cli::{BenchCmd, ChatTemplateCmd, Cli, Cmd, ContaminationCmd, ConvertCmd, EvalCmd, ExportCmd, RunArgs, ScoreCmd, SweepCmd, UserDataArgs};
use cotlab::answer::Protocol;
use cotlab::data::contamination;
use cotlab::data::loaders::load_questions;
use cotlab::data::user::{load_user_file, TestFormat, UserOptions};
use cotlab::data::{load_dataset, Catalog, DataDir, Dataset, DatasetOptions, Task};
use cotlab::eval::run::{evaluate, EvalOptions, PromptStyle};
use cotlab::eval::score_predictions;
use cotlab::experiment::plan::{self, JobInputs};
use cotlab::experiment::slurm::SlurmOptions;
use cotlab::experiment::{SweepMode, Sweeps};
use cotlab::lab::{StudentOptions, Workspace};
use cotlab::model::DecodeWeights;
use cotlab::results::tables::catalog_frame;
use cotlab::results::OutputDir;
use cotlab::script::{default_out_dir, Context, Runner};
use cotlab::{Error, Result};

/// How a command that did its work ended: exit 0, or exit 3 when the outputs were published but
/// sweep points failed or are not complete (the message says which and what to do).
enum Finished {
    Ok,
    PointsFailed(String),
}

/// The exit status of [`Finished::PointsFailed`].
const EXIT_POINTS_FAILED: u8 = 3;

fn main() -> ExitCode {
    process::set_up();
    let cli = Cli::try_parse().unwrap_or_else(|e| cli::help_or_exit(e));
    match dispatch(cli.cmd) {
        Ok(Finished::Ok) => ExitCode::SUCCESS,
        Ok(Finished::PointsFailed(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(EXIT_POINTS_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<Finished> {
    let done = |r: Result<()>| r.map(|()| Finished::Ok);
    match cmd {
        Cmd::Run(c) => run(c.args, plan::sweep_mode(c.point, c.collect)?),
        Cmd::Sweep(c) => done(sweep(c)),
        Cmd::Export(c) => done(export(c)),
        Cmd::Eval(c) => done(eval(c)),
        Cmd::ChatTemplate(c) => done(chat_template(c)),
        Cmd::Bench { what } => done(bench(what)),
        Cmd::Score(c) => done(score(c)),
        Cmd::Contamination(c) => done(contamination(c)),
        Cmd::Convert(c) => done(convert(c)),
        Cmd::Functions { name, markdown } => done(cotlab::script::docs::print_functions(name.as_deref(), markdown)),
        Cmd::Catalog { dataset, data_dir } => done(catalog(dataset, data_dir)),
    }
}

/// `cotlab export`: a run's checkpoint, a model, or only a model's tokenizer.
fn export(c: ExportCmd) -> Result<()> {
    let dtype = cotlab::train::export::ExportDtype::parse(&c.dtype).map_err(Error::usage)?;
    let opts = cotlab::train::export::ExportOptions { dtype, ..Default::default() };
    match (c.run, c.model) {
        (None, Some(spec)) if c.tokenizer_only => {
            let s = Workspace::local().student(&spec, &StudentOptions::default())?;
            std::fs::create_dir_all(&c.out).map_err(|e| Error::io(&c.out, e))?;
            let file = c.out.join("tokenizer.json");
            s.tokenizer.save(&file, false).map_err(|e| Error::usage(format!("could not write {}: {e}", file.display())))?;
        }
        (Some(run), _) => cotlab::train::export::export_run_as(&run, &c.out, c.merge, &opts)?,
        (None, Some(spec)) => {
            let s = Workspace::local().student(&spec, &StudentOptions::default())?;
            cotlab::train::export::export_hf_with(&s, &c.out, &opts)?;
        }
        (None, None) => return Err(Error::usage("export needs --run RUN_DIR or --model SPEC")),
    }
    eprintln!("wrote {}", c.out.display());
    Ok(())
}

/// `cotlab chat-template`: prints the rendering on stdout, exactly (no newline added). The
/// messages are read first: a bad file fails before the model loads.
fn chat_template(c: ChatTemplateCmd) -> Result<()> {
    let messages = cotlab::model::chat::read_messages(&c.messages)?;
    let s = Workspace::local().student(&c.model, &StudentOptions::default())?;
    print!("{}", s.render_messages(&messages, !c.no_generation_prompt)?);
    Ok(())
}

/// `cotlab eval`: prints the report (results.json's) on stdout.
fn eval(c: EvalCmd) -> Result<()> {
    let protocol = Protocol::parse(&c.protocol).map_err(Error::usage)?;
    let decode_weights = DecodeWeights::parse(&c.decode_weights).map_err(Error::usage)?;
    let prompt = PromptStyle::parse(&c.prompt).map_err(Error::usage)?;
    let ws = trusted(c.data_dir, c.runs);
    let ds = test_set(&ws.data_dir, c.task, c.user, DatasetOptions { split: c.split, limit: c.limit, seed: c.limit.map(|_| c.seed), ..Default::default() })?;
    let student = ws.student(&c.model, &StudentOptions { template: c.template, ..Default::default() })?;
    let opts =
        EvalOptions { batch_size: c.batch_size, max_new_tokens: c.max_new_tokens, beams: c.beams, protocol, prompt, decode_weights, ..Default::default() };
    let eval_dir = match c.out {
        Some(o) => o,
        None => ws.eval_dir(None, &ds, &student)?,
    };
    print_json(&evaluate(&student, &ds, &opts, &eval_dir)?);
    Ok(())
}

/// The test set `--task` names, or the user's `--data` file mapped by its flags (clap makes one of
/// the two present).
fn test_set(dir: &DataDir, task: Option<String>, user: UserDataArgs, o: DatasetOptions) -> Result<Dataset> {
    let Some(path) = user.data else {
        return load_dataset(dir, task.as_deref().unwrap_or_default(), &o);
    };
    if let Some(t) = task {
        return Err(Error::usage(format!("give --task {t} or --data {}, not both", path.display())));
    }
    let format = user.format.as_deref().map(TestFormat::parse).transpose().map_err(Error::usage)?.unwrap_or_default();
    let opts = UserOptions {
        format,
        question: user.question_col,
        answer: user.answer_col,
        choices: user.choices_col,
        kind: user.kind,
        name: user.name,
        split: o.split,
        limit: o.limit,
        seed: o.seed,
    };
    load_user_file(&path, &opts)
}

/// `cotlab score`: prints the report on stdout.
fn score(c: ScoreCmd) -> Result<()> {
    let protocol = Protocol::parse(&c.protocol).map_err(Error::usage)?;
    let ds = test_set(&DataDir::resolve(c.data_dir), c.task, c.user, DatasetOptions { split: c.split, ..Default::default() })?;
    print_json(&score_predictions(&ds, &c.predictions, protocol)?);
    Ok(())
}

/// `cotlab contamination`: the summary (and with --verbose every hit) on stderr, the counts as
/// JSON on stdout.
/// `cotlab convert`: read a corpus, write it in another format, register it in dataset_info.json beside it.
fn convert(c: ConvertCmd) -> Result<()> {
    use cotlab::data::formats::{self, CorpusOptions};
    if cotlab::paths::real_path(&c.input)? == cotlab::paths::real_path(&c.output)? {
        return Err(Error::usage(format!("convert: OUT is IN ({}): write to another file", c.input.display())));
    }
    let o = CorpusOptions { format: c.from, question: c.question, rationale: c.rationale, answer: c.answer, kind: c.kind, name: c.name };
    let info = c.output.with_file_name("dataset_info.json");
    // Checked before writing anything: a dataset_info.json that cannot be merged into stops here.
    formats::dataset_info_entries(&info)?;
    let corpus = formats::read_corpus(formats::Input::File(&c.input), &o)?;
    if let cotlab::data::Subject::User(u) = &corpus.task {
        eprintln!("{}", u.summary(corpus.len()));
    }
    formats::write_corpus(&corpus, &c.output, c.to)?;
    let file = c.output.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let entry = c.output.file_stem().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    formats::merge_dataset_info(&info, &entry, formats::dataset_info_entry(&file, c.to))?;
    eprintln!("wrote {} ({} rationales, {}) and its entry '{entry}' in {}", c.output.display(), corpus.len(), c.to, info.display());
    Ok(())
}

fn contamination(c: ContaminationCmd) -> Result<()> {
    let report = contamination::check(&load_questions(&c.train)?, &load_questions(&c.test)?, c.threshold)?;
    eprintln!("{}", report.summary());
    if c.verbose {
        for h in &report.hits {
            eprintln!("  [{}] test #{} ~ train #{} ({:.2}): {}", h.level, h.test_index, h.train_index, h.similarity, h.test_question);
        }
    }
    let mut v = serde_json::to_value(&report).expect("report serialises");
    v.as_object_mut().expect("the report is an object").remove("hits");
    v["train"] = c.train.display().to_string().into();
    v["test"] = c.test.display().to_string().into();
    println!("{v}");
    Ok(())
}

/// `cotlab catalog`: the table on stdout.
fn catalog(dataset: Option<String>, data_dir: Option<PathBuf>) -> Result<()> {
    let task = dataset.as_deref().map(Task::parse).transpose()?;
    println!("{}", catalog_frame(&Catalog::new(DataDir::resolve(data_dir)), task)?.to_table_string());
    Ok(())
}

fn print_json(r: &impl Serialize) {
    println!("{}", serde_json::to_string(r).expect("report serialises"));
}

fn print_report(r: &impl cotlab::bench::Report, json: bool) {
    eprintln!("{}", r.summary());
    if json {
        print_json(r);
    }
}

/// `cotlab bench …`: a bench's human line on stderr and with `--json` its report on stdout;
/// `bench matmul` and `bench gemm` print their tables row by row on stdout, then with `--json`
/// the rows.
fn bench(what: BenchCmd) -> Result<()> {
    use cotlab::bench::{generate, job, kernels, train};
    let mut line = |l: String| println!("{l}");
    match what {
        BenchCmd::Generate(c) => match &c.prompts {
            Some(spec) => {
                let (task, n) = generate::parse_prompts(spec)?;
                print_report(&generate::prompts(&c.student.spec(), &c.bench()?, &task, n, c.data_dir.clone())?, c.json)
            }
            None => print_report(&generate::fixed(&c.student.spec(), &c.bench()?)?, c.json),
        },
        BenchCmd::Matmul(c) => {
            let rows = kernels::matmul(&c.student.spec(), &c.decode_weights, &c.m, c.seconds, &mut line)?;
            if c.json {
                print_json(&rows);
            }
        }
        BenchCmd::Gemm(c) => {
            let rows = kernels::gemm(&c.student.spec(), &c.tokens, c.seconds, &mut line)?;
            if c.json {
                print_json(&rows);
            }
        }
        BenchCmd::Job(c) => print_report(&job::run(&c.student.spec(), &c.bench())?, c.json),
        BenchCmd::Train(c) => print_report(&train::run(&c.student.spec(), &c.bench())?, c.json),
    }
    Ok(())
}

/// The CLI's own arguments are trusted: any path (scripts get a sandboxed workspace instead).
fn trusted(data_dir: Option<PathBuf>, runs: Option<PathBuf>) -> Workspace {
    Workspace::open(DataDir::resolve(data_dir), runs.unwrap_or_else(|| PathBuf::from("runs")), None)
}

/// Stack for the thread that runs a script: deeply nested values are dropped and printed
/// recursively (the 8 MiB main stack overflowed at 6 000 levels; this holds hundreds of
/// thousands, and Rhai copies a value on every read, so building that deep takes hours).
/// Virtual memory: only the pages a script really uses are touched.
const SCRIPT_STACK: usize = 1 << 30;

/// `--max-memory`: bytes, or None for no ceiling.
fn memory_ceiling(max_memory: Option<f64>) -> Result<Option<u64>> {
    match max_memory {
        None => Ok(cotlab::memory::default_ceiling()),
        Some(g) => {
            cotlab::error::in_range("run", "max-memory", g, 0.0..=1e6)?;
            Ok((g > 0.0).then_some((g * (1u64 << 30) as f64) as u64))
        }
    }
}

/// The script's context: data, runs, read roots, memory ceiling, how sweeps run.
fn script_context(a: &RunArgs, output: Arc<OutputDir>, mode: SweepMode) -> Result<Context> {
    let mut ctx = Context::new(DataDir::resolve(a.data_dir.clone()), Some(output));
    if let Some(r) = &a.runs {
        ctx.runs_dir = r.clone();
    }
    ctx.allow_read = a.allow_read.clone();
    ctx.max_memory = memory_ceiling(a.max_memory)?;
    ctx.sweeps = Arc::new(Sweeps::new(mode));
    Ok(ctx)
}

/// Run a script file on a thread with a deep stack.
fn run_script(runner: &Runner, script: &Path) -> Result<()> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_STACK)
            // The script's value is dropped on this thread too, for the same reason.
            .spawn_scoped(s, || {
                // The script's thread runs the ops: it is the compute thread (the main thread
                // only waits for it).
                let _pool = process::compute_on_this_thread(false);
                runner.run_file(script).map(drop)
            })
            .map_err(|e| Error::usage(format!("cannot start the script thread: {e}")))?
            .join()
            .map_err(|_| Error::Script(format!("{}: the script stopped on an internal error (a panic, printed above)", script.display())))?
    })
}

fn run(a: RunArgs, mode: SweepMode) -> Result<Finished> {
    let params = cli::script_params(&a.script, &a.set)?;
    let script = a.script.clone();
    if !script.is_file() {
        return Err(Error::data(&script, "script not found"));
    }
    let out_dir = a.out.clone().unwrap_or_else(|| default_out_dir(&script));
    inputs_apart(&a, &out_dir, &script)?;
    let output = Arc::new(OutputDir::create(&out_dir)?);
    let ctx = script_context(&a, output.clone(), mode)?;
    let runner = Runner { ctx: ctx.clone(), params };
    let started = Instant::now();
    match run_script(&runner, &script) {
        Ok(()) => {
            let manifest = serde_json::json!({
                "script": script.display().to_string(),
                "data_dir": ctx.data_dir.0.display().to_string(),
                "params": a.set,
                "seconds": started.elapsed().as_secs_f64(),
                "cotlab_version": env!("CARGO_PKG_VERSION"),
            });
            for f in output.commit(manifest)? {
                eprintln!("wrote {}", f.display());
            }
            // Failed sweep points let the script finish (its tables were written and published
            // above), but the run as a whole did not succeed.
            let failures = ctx.failures.list();
            if failures.is_empty() {
                return Ok(Finished::Ok);
            }
            let what = if mode == SweepMode::Collect {
                "are not complete (the outputs were published; `cotlab sweep SCRIPT --slurm` submits only those points, `cotlab run SCRIPT` runs them here)"
            } else {
                "failed (the outputs were published; fix the cause and run again: complete points are skipped)"
            };
            Ok(Finished::PointsFailed(format!("{}: {} sweep point(s) {what}:\n  {}", script.display(), failures.len(), failures.join("\n  "))))
        }
        Err(e) if output.has_staged_files() => Err(Error::Script(format!(
            "{e}\nnote: nothing was published to {}; the files the script wrote before failing are in {} (incomplete)",
            out_dir.display(),
            output.staging().display()
        ))),
        Err(e) => Err(e),
    }
}

/// Refuse, before any work, an output dir that holds an input or sits in the data or runs dir
/// (publishing replaces it as a whole: see `check_apart`).
fn inputs_apart(a: &RunArgs, out: &Path, script: &Path) -> Result<()> {
    let data = DataDir::resolve(a.data_dir.clone()).0;
    let runs = a.runs.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let mut inputs = vec![("--data-dir", data.as_path()), ("--runs", runs.as_path()), ("the script", script)];
    inputs.extend(a.allow_read.iter().map(|d| ("--allow-read", d.as_path())));
    cotlab::results::output::check_apart(out, &inputs)
}

/// `cotlab sweep`: run the script with no point running to learn its sweeps (its outputs go to
/// a temporary dir and are dropped), print every point; with `--slurm`, write and submit the jobs.
fn sweep(c: SweepCmd) -> Result<()> {
    let a = c.args;
    let params = cli::script_params(&a.script, &a.set)?;
    if !a.script.is_file() {
        return Err(Error::data(&a.script, "script not found"));
    }
    let inputs = a.job_inputs();
    inputs_apart(&a, &inputs.out, &inputs.script)?;
    let called = learn_sweeps(&inputs, params)?;
    print!("{}", plan::plan_text(&called));
    if !c.slurm {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| Error::usage(format!("cannot tell where this cotlab binary is ({e}), which the jobs run")))?;
    let options = SlurmOptions { partition: c.partition, gpus: c.gpus, cpus: c.cpus, mem: c.mem, time: c.time };
    match plan::write_and_submit(&called, &inputs, exe, options, c.dry_run)? {
        Some(done) => println!("{done}"),
        None => println!("every point is complete or invalid: nothing to submit; `cotlab run {} --collect` writes the tables", a.script.display()),
    }
    Ok(())
}

/// The script's sweeps as planned: the script run once with no point running, its outputs in a
/// scratch dir that is dropped.
fn learn_sweeps(inputs: &JobInputs, params: Vec<(String, String)>) -> Result<Vec<cotlab::experiment::PlannedSweep>> {
    let plan_args = RunArgs::planning(inputs);
    let scratch = plan::Scratch::new()?;
    let ctx = script_context(&plan_args, Arc::new(OutputDir::create(scratch.0.join("out"))?), SweepMode::Collect)?;
    let runner = Runner { ctx: ctx.clone(), params };
    run_script(&runner, &inputs.script).map_err(|e| {
        Error::Script(format!("{e}\nnote: `cotlab sweep` runs the script once with no sweep point running, to learn its sweeps; it must get through that"))
    })?;
    let called = ctx.sweeps.called();
    if called.is_empty() {
        return Err(Error::usage(format!("{} calls no sweep(): there are no points to plan or submit", inputs.script.display())));
    }
    Ok(called)
}
