//! The `cotlab` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};

use cotlab::data::contamination;
use cotlab::data::loaders::load_questions;
use cotlab::data::{load_dataset, Catalog, DataDir, DatasetOptions, Task};
use cotlab::answer::Protocol;
use cotlab::eval::run::{evaluate, EvalOptions, PromptStyle};
use cotlab::model::DecodeWeights;
use cotlab::eval::score_predictions;
use cotlab::experiment::slurm::SlurmOptions;
use cotlab::experiment::{PointStatus, SweepMode, Sweeps};
use cotlab::lab::{StudentOptions, Workspace};
use cotlab::results::tables::catalog_frame;
use cotlab::results::OutputDir;
use cotlab::script::{default_out_dir, Context, Runner};
use cotlab::error::ModelContext;
use cotlab::{Error, Result};

#[derive(Parser)]
#[command(
    name = "cotlab",
    version,
    about = "Chain-of-thought distillation workbench",
    after_help = "Exit status: 0 on success; 1 on an error (the message says what and where; a script that fails publishes \
                  nothing, and a sweep whose points are all invalid is such an error), or when sweep points failed or are \
                  not complete (the outputs were published); 2 on a command-line usage error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a Rhai script.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Run only point N of every sweep() in the script (a job array task; a sweep with fewer
        /// points runs nothing). Default: $SLURM_ARRAY_TASK_ID when set, else every point.
        #[arg(long, value_name = "N", conflicts_with = "collect")]
        point: Option<usize>,
        /// Run no sweep point: every sweep() reports its points as they are on disk, so the
        /// script only merges results and writes its tables; points not complete fail the run
        /// (after publishing). What the Slurm finalize job runs.
        #[arg(long)]
        collect: bool,
    },
    /// Plan a script's sweeps (every point with its status), and with --slurm write and submit
    /// a Slurm job array (one task per point) and a job that merges the results after it.
    Sweep {
        #[command(flatten)]
        args: RunArgs,
        /// Write <runs>/<sweep>/slurm/{array,finalize}.sbatch and submit them with sbatch.
        #[arg(long)]
        slurm: bool,
        /// With --slurm: write the job files and print them, but submit nothing.
        #[arg(long, requires = "slurm")]
        dry_run: bool,
        /// Slurm partition for the jobs (default: the cluster's).
        #[arg(long, requires = "slurm")]
        partition: Option<String>,
        /// GPUs per array task (sbatch --gpus: "1", "h100:1").
        #[arg(long, requires = "slurm")]
        gpus: Option<String>,
        /// CPUs per array task (sbatch --cpus-per-task).
        #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
        cpus: Option<u32>,
        /// Memory per job (sbatch --mem: "16G").
        #[arg(long, requires = "slurm")]
        mem: Option<String>,
        /// Time limit per job (sbatch --time: "2:00:00").
        #[arg(long, requires = "slurm")]
        time: Option<String>,
    },
    /// Export a training run's last checkpoint (or a model) as a Hugging Face model dir; LoRA
    /// runs export PEFT adapters unless --merge.
    Export {
        /// A run dir (runs/<name>).
        #[arg(long, conflicts_with = "model")]
        run: Option<PathBuf>,
        /// A model spec instead: "default", a .gguf file or an HF dir (e.g. to give PyTorch the same weights).
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        out: PathBuf,
        /// Fold LoRA adapters into the base weights and write a full model.
        #[arg(long)]
        merge: bool,
        /// With --model: write only tokenizer.json (for `bench --random ARCH --tokenizer FILE`
        /// on a machine without the model, e.g. the GPU check).
        #[arg(long, requires = "model")]
        tokenizer_only: bool,
    },
    /// Evaluate a student zero-shot on a test set (results.json + samples.jsonl/parquet; resumable).
    Eval {
        /// "default", a .gguf file, an HF model dir, a run dir (runs/<name>), or hf:ORG/NAME.
        #[arg(long, default_value = "default")]
        model: String,
        #[arg(long)]
        task: String,
        #[arg(long)]
        split: Option<String>,
        /// Evaluate a seeded subset of N examples.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Generation limit (default: the paper's, 1024 new tokens for math, 640 for commonsense).
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// Scoring rules: paper (the paper's evaluators) or lenient (cotlab's forgiving extractor).
        #[arg(long, default_value = "paper")]
        protocol: String,
        /// Prompt: paper (the paper evaluator's prompt for the template) or train (the training template).
        #[arg(long, default_value = "paper")]
        prompt: String,
        /// Chat template instead of the model's own: chatml, llama3, gemma or alpaca (needed for a
        /// model that declares none).
        #[arg(long)]
        template: Option<String>,
        /// Beam width (1 = greedy); default the paper's: 5 for csqa, obqa, strategyqa, else 1.
        #[arg(long)]
        beams: Option<usize>,
        /// Weights decoding reads: auto (the compute dtype's), f32, bf16, q8_0 or q4_1 (quantized
        /// projections and LM head: faster on the CPU, outputs close to f32's, not identical;
        /// q4_1 is exact for weights that came from a Q4_1 GGUF, like the default student's).
        #[arg(long, default_value = "auto")]
        decode_weights: String,
        /// The eval dir (default: <runs>/eval-<task>-<split>-<model>[-n<N>-s<seed>]).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where the default eval dir goes (default: ./runs).
        #[arg(long)]
        runs: Option<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
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
        /// Scoring rules: paper or lenient (both accuracies are printed; this one is `accuracy`).
        #[arg(long, default_value = "paper")]
        protocol: String,
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
    /// List the functions a script can call: signatures and a summary; with NAME, its documentation.
    Functions {
        /// One function (a property by its name, an indexer as []).
        name: Option<String>,
        /// Print the whole reference as Markdown (docs/script-api.md is this output).
        #[arg(long, conflicts_with = "name")]
        markdown: bool,
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

/// What `cotlab run` and `cotlab sweep` take to run a script.
#[derive(clap::Args)]
struct RunArgs {
    script: PathBuf,
    /// The data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output dir for files the script writes (default: out/<script name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// key=value: a parameter the script declares with param(), read as its default's type
    /// (SCRIPT --help lists them). Repeatable. In a script that declares none, a variable and a
    /// `params` entry: unquoted numbers and true/false are read as such; a value in double
    /// quotes is text (--set 'id="007"' is the string "007").
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Where training runs live (default: ./runs).
    #[arg(long)]
    runs: Option<PathBuf>,
    /// Another dir the script may read (it may always read the data, runs and output dirs
    /// and $COTLAB_HOME). Repeatable.
    #[arg(long = "allow-read", value_name = "DIR")]
    allow_read: Vec<PathBuf>,
    /// Stop the script when the process holds more heap than this many GiB (0 = no limit;
    /// default 80% of this machine's RAM).
    #[arg(long, value_name = "GIB")]
    max_memory: Option<f64>,
}

/// The student a benchmark times: its weights (or random ones of an architecture) and where it runs.
#[derive(clap::Args)]
struct BenchStudent {
    #[arg(long, default_value = "default")]
    model: String,
        /// cpu, cuda, cuda:N or auto (CUDA needs a cotlab built with scripts/build_cuda.sh).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Compute dtype: auto (bf16 on CUDA, f32 on the CPU), bf16 or f32. Weights, gradients
        /// and optimizer state stay f32.
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Random weights with this architecture instead of --model's weights: smollm2-135m,
        /// llama-1b, or an HF config.json (speed and memory depend on the shapes alone).
        #[arg(long, value_name = "ARCH")]
        random: Option<String>,
        /// With --random: where the tokenizer comes from (a tokenizer.json, or a model spec).
        #[arg(long, default_value = "default")]
        tokenizer: String,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time greedy decoding with the KV cache at batch 1 and batch N (fixed arith prompts).
    Generate {
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[command(flatten)]
        student: BenchStudent,
        /// Weights decoding reads: auto (the compute dtype's), f32, bf16, q8_0 or q4_1.
        #[arg(long, default_value = "auto")]
        decode_weights: String,
        /// Write the prompts' token ids (JSON) for benches/torch_generate.py.
        #[arg(long)]
        save_prompts: Option<PathBuf>,
        /// Real questions instead: TASK:N (e.g. svamp:48), the first N of a seeded shuffle of
        /// the test split, decoded to EOS (answers of different lengths, at most --new-tokens)
        /// --batch at a time: static batches (each waits for its longest answer) against
        /// continuous batching (a finished row takes the next prompt).
        #[arg(long, value_name = "TASK:N")]
        prompts: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time the decoding matmul kernels on the student's weights (one of each 2-D shape: a
    /// layer's projections and the LM head or embedding): cotlab's Q8_0 or Q4_1 kernel
    /// (`--decode-weights`) against candle's f32 matmul (the default path), at each row count
    /// (1 = batch-1 decoding).
    Matmul {
        /// The kernel's block format: q8_0 or q4_1.
        #[arg(long, default_value = "q8_0")]
        decode_weights: String,
        /// Input rows (comma-separated).
        #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
        m: Vec<usize>,
        /// Seconds to time each side of each row, at least.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        #[command(flatten)]
        student: BenchStudent,
        #[arg(long)]
        json: bool,
    },
    /// Time the training step's f32 products on the student's weight shapes (forward x·wᵀ,
    /// dx = g·w, dW += gᵀ·x, one of each shape): cotlab's GEMM against the `gemm` crate as
    /// candle's CPU matmul runs it, and the step's mix (shapes weighted by how many weights
    /// have them).
    Gemm {
        /// Input rows: a micro-batch's tokens (comma-separated).
        #[arg(long, default_value = "640", value_delimiter = ',')]
        tokens: Vec<usize>,
        /// Seconds to time each side of each shape, at least.
        #[arg(long, default_value_t = 0.5)]
        seconds: f64,
        #[command(flatten)]
        student: BenchStudent,
        #[arg(long)]
        json: bool,
    },
    /// Time the real SFT job: optimizer steps of the paper's recipe (lr 5e-5, cosine, global
    /// batch 4 x 16, loss on the response only) on a release corpus, through the trainer `sft`
    /// runs (checkpoints left out).
    Job {
        #[arg(long, default_value = "svamp")]
        task: String,
        #[arg(long, default_value = "gpt-4o")]
        teacher: String,
        #[arg(long, default_value_t = 3)]
        level: i64,
        /// Steps timed after one warm-up step.
        #[arg(long, default_value_t = 2)]
        steps: usize,
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, default_value_t = 16)]
        grad_accum: usize,
        /// LoRA (r 8, alpha 16, q_proj and v_proj, no dropout) instead of full fine-tuning.
        #[arg(long)]
        lora: bool,
        #[command(flatten)]
        student: BenchStudent,
        /// Write each step's examples and learning rate (JSON) for benches/torch_job.py.
        #[arg(long)]
        save_plan: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Time optimizer steps (forward + backward + AdamW) of a student on a fixed batch.
    Train {
        #[arg(long)]
        lora: bool,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1e-4)]
        lr: f64,
        #[command(flatten)]
        student: BenchStudent,
        /// The device's dense peak in TFLOP/s for the compute dtype, for the MFU (H100/H200
        /// bf16: 989); default 989 on CUDA in bf16, else no MFU.
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Write the batch's token ids (JSON) for benches/torch_train.py.
        #[arg(long)]
        save_batch: Option<PathBuf>,
        /// Print one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

/// Training allocates and frees GB of tensors every step. glibc (and mimalloc by default) hand
/// large blocks back to the kernel, which must then zero fresh pages on the next allocation:
/// a large share of a training step. mimalloc without purging keeps them.
/// Counted, so a script can be stopped at its memory ceiling (`cotlab::memory`).
#[global_allocator]
static GLOBAL: cotlab::memory::Counting<mimalloc::MiMalloc> = cotlab::memory::Counting(mimalloc::MiMalloc);

fn tune_allocator() {
    // SAFETY: sets a global mimalloc option; no allocation races at program start.
    // Option 15 is `mi_option_purge_delay` in mimalloc 2 (libmimalloc-sys names it only in C).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// candle asks for its thread count before every CPU matmul, and without RAYON_NUM_THREADS it
/// counts physical cores by reading /proc/cpuinfo each time (`num_cpus::get_physical`):
/// thousands of opens of that file in one short generation, and a visible share of an
/// evaluation's profile in the kernel formatting it. Fixing the variable once, to the count
/// candle would find, keeps the thread count and drops the reads.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Program start: no other thread reads the environment yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Makes the calling thread one of rayon's compute threads (index 0 of a pool of the pinned
/// size; `global`: the global pool, else a pool kept alive by the returned handle). candle runs
/// an op on the thread that calls it and hands its parallel parts to rayon: when that thread is
/// not a worker, it and the workers are one thread more than the cores, and the idle workers'
/// spinning takes time from it; with it, decoding on 2 cores is faster at batch 1 and at batch
/// 16 (docs/performance-history.md).
fn compute_on_this_thread(global: bool) -> Option<rayon::ThreadPool> {
    let b = rayon::ThreadPoolBuilder::new().use_current_thread();
    if global {
        // Fails only if a pool was built already: then decoding still works, as before.
        let _ = b.build_global();
        None
    } else {
        b.build().ok()
    }
}

fn main() -> ExitCode {
    tune_allocator();
    pin_thread_count();
    cotlab::model::tune_candle_threads();
    compute_on_this_thread(true);
    cotlab::memory::mark_installed();
    let cli = Cli::try_parse().unwrap_or_else(|e| help_or_exit(e));
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command-line error or help request: `cotlab run|sweep SCRIPT --help` prints the script's
/// declared parameters after clap's help; anything else is clap's to print.
fn help_or_exit(e: clap::Error) -> ! {
    if e.kind() == clap::error::ErrorKind::DisplayHelp {
        let rest = std::env::args().filter(|a| a != "--help" && a != "-h");
        if let Ok(Cli { cmd: Cmd::Run { args, .. } | Cmd::Sweep { args, .. } }) = Cli::try_parse_from(rest) {
            let _ = e.print();
            match cotlab::script::params_help(&args.script) {
                Ok(text) => println!("\n{text}"),
                Err(err) => {
                    eprintln!("error: {err}");
                    std::process::exit(1)
                }
            }
            std::process::exit(0)
        }
    }
    e.exit()
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Run { args, point, collect } => run(args, run_mode(point, collect)?),
        Cmd::Functions { name, markdown } => cotlab::script::docs::print_functions(name.as_deref(), markdown),
        Cmd::Sweep { args, slurm, dry_run, partition, gpus, cpus, mem, time } => {
            sweep_cmd(args, slurm.then_some(SlurmArgs { dry_run, options: SlurmOptions { partition, gpus, cpus, mem, time } }))
        }
        Cmd::Export { run, model, out, merge, tokenizer_only } => {
            match (run, model) {
                (None, Some(spec)) if tokenizer_only => {
                    let s = Workspace::local().student(&spec, &StudentOptions::default())?;
                    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
                    let file = out.join("tokenizer.json");
                    s.tokenizer.save(&file, false).map_err(|e| Error::usage(format!("could not write {}: {e}", file.display())))?;
                }
                (Some(run), _) => cotlab::train::export::export_run_with(&run, &out, merge)?,
                (None, Some(spec)) => {
                    let s = Workspace::local().student(&spec, &StudentOptions::default())?;
                    cotlab::train::export::export_hf(&s, &out)?;
                }
                (None, None) => return Err(Error::usage("export needs --run RUN_DIR or --model SPEC")),
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Eval { model, task, split, limit, seed, batch_size, max_new_tokens, beams, decode_weights, protocol, prompt, template, out, data_dir, runs } => {
            let protocol = Protocol::parse(&protocol).map_err(Error::usage)?;
            let decode_weights = DecodeWeights::parse(&decode_weights).map_err(Error::usage)?;
            let prompt = PromptStyle::parse(&prompt).map_err(Error::usage)?;
            let ws = trusted(data_dir, runs);
            let ds = load_dataset(&ws.data_dir, &task, &DatasetOptions { split, limit, seed: limit.map(|_| seed), ..Default::default() })?;
            let student = ws.student(&model, &StudentOptions { template, ..Default::default() })?;
            let opts = EvalOptions { batch_size, max_new_tokens, beams, protocol, prompt, decode_weights, ..Default::default() };
            let eval_dir = match out {
                Some(o) => o,
                None => ws.eval_dir(None, &ds, &student)?,
            };
            let r = evaluate(&student, &ds, &opts, &eval_dir)?;
            println!("{}", serde_json::to_string(&r).expect("report serialises"));
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Generate { student: bs, batch, new_tokens, decode_weights, save_prompts, prompts: Some(spec), data_dir, json } } => {
            let dw = DecodeWeights::parse(&decode_weights).map_err(Error::usage)?;
            let (s, _) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            cotlab::error::in_range("bench generate", "batch", batch, 1..=1024)?;
            let (task, n) = spec.split_once(':').ok_or_else(|| Error::usage(format!("--prompts: '{spec}' is not TASK:N (e.g. svamp:48)")))?;
            let n: usize = n.parse().map_err(|_| Error::usage(format!("--prompts: '{n}' is not a number of questions")))?;
            cotlab::error::in_range("bench generate", "--prompts N", n, 1..=100_000)?;
            let ds = load_dataset(&DataDir::resolve(data_dir), task, &DatasetOptions { limit: Some(n), seed: Some(0), ..Default::default() })?;
            let qs: Vec<String> = ds.examples.iter().map(|e| e.question.clone()).collect();
            if let Some(p) = &save_prompts {
                std::fs::write(p, serde_json::to_string(&cotlab::model::generate::prompt_ids(&s, &qs)?).unwrap()).map_err(|e| Error::io(p, e))?;
            }
            let r = bench_prompts(&s, &qs, batch, new_tokens, dw)?;
            eprintln!(
                "cotlab greedy decoding ({}, {}, {}, {} weights), {} {task} questions, batch {batch}, at most {new_tokens} new tokens ({} generated, longest {}): static batches {:.1} tokens/s ({:.1} s), continuous batching {:.1} tokens/s ({:.1} s), {:.2}x; same outputs: {}",
                s.name, bs.device, r["dtype"].as_str().unwrap_or(""), dw.name(), qs.len(), r["tokens"], r["longest"], r["static_tokens_per_s"].as_f64().unwrap_or(0.0), r["static_s"].as_f64().unwrap_or(0.0),
                r["continuous_tokens_per_s"].as_f64().unwrap_or(0.0), r["continuous_s"].as_f64().unwrap_or(0.0), r["speedup"].as_f64().unwrap_or(0.0), r["same_outputs"]
            );
            if json {
                println!("{r}");
            }
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Generate { student: bs, batch, new_tokens, decode_weights, save_prompts, prompts: None, data_dir: _, json } } => {
            use cotlab::model::generate::{generate, prompt_ids, GenOptions};
            let dw = DecodeWeights::parse(&decode_weights).map_err(Error::usage)?;
            let (s, _) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            cotlab::error::in_range("bench generate", "batch", batch, 1..=1024)?;
            let qs: Vec<String> = cotlab::data::arith::generate(batch, 7).iter().map(|p| p.example().question).collect();
            if let Some(p) = &save_prompts {
                std::fs::write(p, serde_json::to_string(&prompt_ids(&s, &qs)?).unwrap()).map_err(|e| Error::io(p, e))?;
            }
            let opts = GenOptions { max_new_tokens: new_tokens, ignore_eos: true, decode_weights: dw, ..Default::default() };
            // Tokens per wall second and per CPU second (the machine may be shared).
            let time = |qs: &[String]| -> Result<(f64, f64)> {
                let (t0, c0) = (std::time::Instant::now(), cotlab::train::bench::cpu_seconds());
                let out = generate(&s, qs, &opts)?;
                let toks = out.iter().map(|g| g.tokens).sum::<usize>() as f64;
                Ok((toks / t0.elapsed().as_secs_f64(), toks / (cotlab::train::bench::cpu_seconds() - c0).max(1e-9)))
            };
            // The bf16/Q8_0/Q4_1 copy is made once, before timing, as `evaluate` makes it once per run
            // (a guard held here keeps it across the calls); then a warm-up (allocator).
            let _copy = s.model.decode_weights(dw).model_ctx("making the decoding copy of the weights")?;
            let _warm = time(&qs[..1])?;
            // Batch 1 is one short generation, which a busy host moves a lot: the median of 3
            // (benches/llamacpp_generate.py does the same).
            let mut ones = (0..3).map(|_| time(&qs[..1])).collect::<Result<Vec<_>>>()?;
            ones.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (one, one_cpu) = ones[1];
            let (many, many_cpu) = time(&qs)?;
            let dt = format!("{:?}", s.model.compute_dtype()).to_lowercase();
            let mem = cotlab::train::bench::device_memory_used_mb(&s.model.device);
            eprintln!(
                "cotlab greedy decoding ({}, {}, {dt}, {} weights), {new_tokens} new tokens: batch 1 {one:.1} tokens/s ({one_cpu:.1} per CPU-s), batch {} {many:.1} tokens/s ({many_cpu:.1} per CPU-s){}",
                s.name,
                bs.device,
                dw.name(),
                qs.len(),
                mem.map(|m| format!(", device memory in use {m:.0} MB")).unwrap_or_default()
            );
            if json {
                println!("{}", serde_json::json!({"model": s.name, "device": bs.device, "dtype": dt, "decode_weights": dw.name(), "batch1_tokens_per_s": one, "batchN_tokens_per_s": many, "batch1_tokens_per_cpu_s": one_cpu, "batchN_tokens_per_cpu_s": many_cpu, "batch": qs.len(), "new_tokens": new_tokens, "device_mem_mb": mem}));
            }
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Matmul { m, seconds, decode_weights, student: bs, json } } => {
            for &mi in &m {
                cotlab::error::in_range("bench matmul", "m", mi, 1..=4096)?;
            }
            let format = DecodeWeights::parse(&decode_weights)
                .map_err(Error::usage)?
                .quant_format()
                .ok_or_else(|| Error::usage(format!("bench matmul times a quantized kernel: --decode-weights q8_0 or q4_1, got {decode_weights}")))?;
            let (s, _) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            if !s.model.device.is_cpu() {
                return Err(Error::usage("bench matmul times the CPU kernels: use --device cpu"));
            }
            // One weight of each 2-D shape: the layers repeat theirs, the head or embedding adds one.
            let mut seen = std::collections::BTreeSet::new();
            let weights: Vec<(&String, &candle_core::Var)> = s.model.params.iter().filter(|(_, v)| v.rank() == 2 && seen.insert(v.dims().to_vec())).collect();
            println!("{:<44} {:>13} {:>5} {:>14} {:>14} {:>7} {:>9}", "weight (one of each shape)", "rows x cols", "m", format!("{} GFLOP/s", format.name()), "f32 GFLOP/s", "ratio", "rel. err");
            let mut rows = Vec::new();
            for (name, w) in weights {
                for &mi in &m {
                    let t = cotlab::train::kernel_bench::time_matmul(name, w.as_tensor(), format, mi, seconds).model_ctx(format!("timing {name}"))?;
                    println!("{:<44} {:>13} {:>5} {:>14.1} {:>14.1} {:>6.2}x {:>9.1e}", name, format!("{}x{}", t.rows, t.cols), mi, t.gflops(t.quant_s), t.gflops(t.f32_s), t.f32_s / t.quant_s, t.rel_err);
                    rows.push(t);
                }
            }
            if json {
                println!("{}", serde_json::to_string(&rows).unwrap());
            }
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Gemm { tokens, seconds, student: bs, json } } => {
            for &t in &tokens {
                cotlab::error::in_range("bench gemm", "tokens", t, 1..=65_536)?;
            }
            cotlab::error::in_range("bench gemm", "seconds", seconds, 0.0..=600.0)?;
            let (s, _) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            // Each 2-D shape once, with how many of the student's weights have it.
            let mut shapes = std::collections::BTreeMap::<(usize, usize), usize>::new();
            for v in s.model.params.values().filter(|v| v.rank() == 2) {
                *shapes.entry(v.dims2().model_ctx("a weight's shape")?).or_default() += 1;
            }
            let threads = candle_core::utils::get_num_threads();
            use cotlab::kernels::{sgemm::own_kernel, simd::avx2_fma};
            println!(
                "{}",
                match (avx2_fma(), own_kernel()) {
                    (false, _) => "this CPU lacks AVX2 + FMA: cotlab's kernel cannot run, both columns time the gemm crate",
                    (true, true) => "the training step runs on cotlab's kernel on this CPU",
                    (true, false) => "the training step runs on the gemm crate's AVX-512 kernels on this CPU (docs/performance.md); cotlab's column times its own kernel",
                }
            );
            println!("{:>13} {:>6} {:>7} {:>15} {:>15} {:>7} {:>9}", "weight shape", "count", "tokens", "cotlab GFLOP/s", "gemm GFLOP/s", "ratio", "rel. diff");
            let mut rows = Vec::new();
            for &t in &tokens {
                let (mut ours, mut theirs) = (0f64, 0f64);
                for (&(r, c), &count) in &shapes {
                    let g = cotlab::train::kernel_bench::time_training_products(r, c, t, threads, seconds);
                    println!("{:>13} {:>6} {:>7} {:>15.1} {:>15.1} {:>6.2}x {:>9.1e}", format!("{r}x{c}"), count, t, g.gflops(g.cotlab_s), g.gflops(g.gemm_s), g.gemm_s / g.cotlab_s, g.rel_diff);
                    ours += g.cotlab_s * count as f64;
                    theirs += g.gemm_s * count as f64;
                    rows.push(g);
                }
                println!("step mix at {t} tokens, {threads} threads: cotlab {:.3} s, gemm crate {:.3} s: {:.2}x", ours, theirs, theirs / ours);
            }
            if json {
                println!("{}", serde_json::to_string(&rows).unwrap());
            }
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Train { student: bs, lora, batch, seq, steps, lr, save_batch, json, peak_tflops } } => {
            use cotlab::train::bench::{bench_train, fixed_batch};
            let (base, mem_base) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            let peak = peak_tflops.or((base.model.device.is_cuda() && base.model.compute_dtype() == candle_core::DType::BF16).then_some(989.0));
            let student = if lora { base.with_lora(cotlab::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }, 0)? } else { base };
            let ids = fixed_batch(student.config.vocab_size, batch, seq, 1);
            if let Some(p) = &save_batch {
                std::fs::write(p, serde_json::to_string(&ids).unwrap()).map_err(|e| Error::io(p, e))?;
            }
            let r = bench_train(&student, &ids, steps, lr, peak, mem_base)?;
            eprintln!(
                "cotlab {} fine-tuning of {} ({:.0}M params, {}, {}), {}x{} tokens, {} threads: {:.2} s/step (fwd {:.2}, bwd {:.2}, opt {:.2}), {:.1} tokens/s, {:.1} TFLOP/s{}, {:.1} CPU-s/step, peak RSS {:.0} MB{}; losses {:?}",
                r.mode,
                student.name,
                r.params as f64 / 1e6,
                r.device,
                r.dtype,
                r.batch,
                r.seq,
                r.threads,
                r.step_s,
                r.fwd_s,
                r.bwd_s,
                r.opt_s,
                r.tokens_per_s,
                r.tflops,
                r.mfu.map(|m| format!(" (MFU {:.1}%)", m * 100.0)).unwrap_or_default(),
                r.cpu_s_per_step,
                r.peak_rss_mb,
                r.device_mem_mb.map(|m| format!(", device memory {m:.0} MB")).unwrap_or_default(),
                r.losses
            );
            if json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            }
            Ok(())
        }
        Cmd::Bench { what: BenchCmd::Job { task, teacher, level, steps, batch_size, grad_accum, lora, student: bs, save_plan, data_dir, json } } => {
            let (s, _) = bench_student(&bs.model, bs.random.as_deref(), &bs.tokenizer, &bs.device, &bs.dtype)?;
            let cat = Catalog::new(DataDir::resolve(data_dir));
            let q = cotlab::data::catalog::RationaleQuery { teacher: Some(teacher), level: Some(level), ..Default::default() };
            let corpus = cat.rationales(&task, &q)?;
            let opts = cotlab::train::sft::SftOptions {
                batch_size,
                grad_accum,
                lora: lora.then(|| cotlab::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }),
                ..Default::default()
            };
            let r = cotlab::train::bench::bench_job(&s, &corpus, &opts, steps, save_plan.as_deref())?;
            eprintln!(
                "cotlab SFT job on {} ({} examples), {} of {} x {}, {} threads: {:.1} s/step, {:.0} tokens/step, {:.1} tokens/s, {:.1} CPU-s/step, peak RSS {:.0} MB; losses {:?}",
                r.corpus,
                r.examples,
                if lora { "LoRA" } else { "full FT" },
                r.batch_size,
                r.grad_accum,
                r.threads,
                r.step_s,
                r.tokens_per_step,
                r.tokens_per_s,
                r.cpu_s_per_step,
                r.peak_rss_mb,
                r.losses
            );
            if json {
                println!("{}", serde_json::to_string(&r).expect("report serialises"));
            }
            Ok(())
        }
        Cmd::Score { task, predictions, split, protocol, data_dir } => {
            let protocol = Protocol::parse(&protocol).map_err(Error::usage)?;
            let dir = DataDir::resolve(data_dir);
            let ds = load_dataset(&dir, &task, &DatasetOptions { split, ..Default::default() })?;
            let report = score_predictions(&ds, &predictions, protocol)?;
            println!("{}", serde_json::to_string(&report).expect("report serialises"));
            Ok(())
        }
        Cmd::Contamination { train, test, threshold, verbose } => {
            let tr = load_questions(&train)?;
            let te = load_questions(&test)?;
            let report = contamination::check(&tr, &te, threshold)?;
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

/// `bench generate --prompts`: greedy decoding of `qs` to EOS, `batch` at a time, as static
/// batches (one `generate` call per chunk: a batch waits for its longest answer) and with
/// continuous batching; tokens/s of each and whether both produced the same answers.
fn bench_prompts(s: &cotlab::model::Student, qs: &[String], batch: usize, new_tokens: usize, dw: DecodeWeights) -> Result<serde_json::Value> {
    use cotlab::model::generate::{generate, generate_batched, GenOptions};
    let opts = GenOptions { max_new_tokens: new_tokens, decode_weights: dw, ..Default::default() };
    // The bf16/Q8_0/Q4_1 copy is made once, before timing: the static side makes one `generate` call
    // per batch and would otherwise pay for a copy each time, the continuous side once.
    let _copy = s.model.decode_weights(dw).model_ctx("making the decoding copy of the weights")?;
    // Warm-up (allocator, weight caches).
    generate(s, &qs[..1], &GenOptions { max_new_tokens: 4, ..opts.clone() })?;
    let t0 = Instant::now();
    let mut fixed = Vec::new();
    for chunk in qs.chunks(batch) {
        fixed.extend(generate(s, chunk, &opts)?);
    }
    let static_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut cont = vec![None; qs.len()];
    generate_batched(s, qs, &opts, batch, &mut |i, g| {
        cont[i] = Some(g);
        Ok(())
    })?;
    let continuous_s = t1.elapsed().as_secs_f64();
    let cont: Vec<_> = cont.into_iter().flatten().collect();
    let tokens: usize = cont.iter().map(|g| g.tokens).sum();
    let longest = cont.iter().map(|g| g.tokens).max().unwrap_or(0);
    let dt = format!("{:?}", s.model.compute_dtype()).to_lowercase();
    Ok(serde_json::json!({
        "model": s.name, "dtype": dt, "questions": qs.len(), "batch": batch, "new_tokens": new_tokens, "tokens": tokens, "longest": longest,
        "static_s": static_s, "static_tokens_per_s": tokens as f64 / static_s,
        "continuous_s": continuous_s, "continuous_tokens_per_s": tokens as f64 / continuous_s,
        "speedup": static_s / continuous_s, "same_outputs": fixed == cont,
    }))
}

/// The student a bench runs: `model`'s weights, or random weights of architecture `random` with
/// `tokenizer`'s tokenizer; on `device` in `dtype`. Also the device memory in use before it was
/// loaded (CUDA), so the bench reports what the model and its step take.
fn bench_student(model: &str, random: Option<&str>, tokenizer: &str, device: &str, dtype: &str) -> Result<(cotlab::model::Student, Option<f64>)> {
    let dev = cotlab::model::device(device)?;
    let base = cotlab::train::bench::device_memory_used_mb(&dev);
    let s = match random {
        Some(arch) => {
            let mut s = cotlab::model::random::random_student(arch, tokenizer, &dev, 1)?;
            s.model.set_compute_dtype(cotlab::model::compute_dtype(dtype, &dev)?)?;
            s
        }
        None => Workspace::local().student(model, &StudentOptions { device: Some(device.to_string()), dtype: Some(dtype.to_string()), ..Default::default() })?,
    };
    Ok((s, base))
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

/// `--set KEY=VALUE` pairs, checked against the script's declared parameters before any work.
fn script_params(script: &std::path::Path, set: &[String]) -> Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::usage(format!("--set expects KEY=VALUE, got '{kv}'")));
        };
        let valid = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::usage(format!("--set key '{k}' must be a valid identifier (letters, digits, _)")));
        }
        params.push((k.to_string(), v.to_string()));
    }
    if script.is_file() {
        cotlab::script::check_params(script, &params)?;
    }
    Ok(params)
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
fn run_script(runner: &Runner, script: &std::path::Path) -> Result<()> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_STACK)
            // The script's value is dropped on this thread too, for the same reason.
            .spawn_scoped(s, || {
                // The script's thread runs the ops: it is the compute thread (the main thread
                // only waits for it).
                let _pool = compute_on_this_thread(false);
                runner.run_file(script).map(drop)
            })
            .map_err(|e| Error::usage(format!("cannot start the script thread: {e}")))?
            .join()
            .map_err(|_| Error::Script(format!("{}: the script stopped on an internal error (a panic, printed above)", script.display())))?
    })
}

/// `cotlab run --point N`, else `SLURM_ARRAY_TASK_ID` (said on stderr), else every point.
fn run_mode(point: Option<usize>, collect: bool) -> Result<SweepMode> {
    if collect {
        return Ok(SweepMode::Collect);
    }
    if let Some(n) = point {
        return Ok(SweepMode::Point(n));
    }
    match std::env::var("SLURM_ARRAY_TASK_ID") {
        Ok(v) if !v.trim().is_empty() => {
            let n = v.trim().parse::<usize>().map_err(|_| {
                Error::usage(format!("SLURM_ARRAY_TASK_ID is {v:?}, not a point index: pass --point N, or unset it to run every point"))
            })?;
            eprintln!("[cotlab run] SLURM_ARRAY_TASK_ID={n}: every sweep runs only its point {n} (--point chooses another)");
            Ok(SweepMode::Point(n))
        }
        _ => Ok(SweepMode::Run),
    }
}

fn run(a: RunArgs, mode: SweepMode) -> Result<()> {
    let params = script_params(&a.script, &a.set)?;
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
    let result = run_script(&runner, &script);
    match result {
        Ok(_) => {
            let manifest = serde_json::json!({
                "script": script.display().to_string(),
                "data_dir": ctx.data_dir.0.display().to_string(),
                "params": a.set,
                "seconds": started.elapsed().as_secs_f64(),
                "cotlab_version": env!("CARGO_PKG_VERSION"),
            });
            let files = output.commit(manifest)?;
            for f in files {
                eprintln!("wrote {}", f.display());
            }
            // Failed sweep points let the script finish (its tables were written and published
            // above), but the run as a whole did not succeed.
            let failures = ctx.failures.list();
            if !failures.is_empty() {
                let what = if mode == SweepMode::Collect {
                    "are not complete (the outputs were published; `cotlab sweep SCRIPT --slurm` submits only those points, `cotlab run SCRIPT` runs them here)"
                } else {
                    "failed (the outputs were published; fix the cause and run again: complete points are skipped)"
                };
                return Err(Error::Script(format!("{}: {} sweep point(s) {what}:\n  {}", script.display(), failures.len(), failures.join("\n  "))));
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

/// Refuse, before any work, an output dir that holds an input or sits in the data or runs dir
/// (publishing replaces it as a whole: see `check_apart`).
fn inputs_apart(a: &RunArgs, out: &std::path::Path, script: &std::path::Path) -> Result<()> {
    let data = DataDir::resolve(a.data_dir.clone()).0;
    let runs = a.runs.clone().unwrap_or_else(|| PathBuf::from("runs"));
    let mut inputs = vec![("--data-dir", data.as_path()), ("--runs", runs.as_path()), ("the script", script)];
    inputs.extend(a.allow_read.iter().map(|d| ("--allow-read", d.as_path())));
    cotlab::results::output::check_apart(out, &inputs)
}

/// A temporary dir, removed when dropped: where the planning run's outputs go to be discarded.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("cotlab-sweep-plan-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Slurm resources as `cotlab sweep` takes them.
struct SlurmArgs {
    dry_run: bool,
    options: SlurmOptions,
}

/// `cotlab sweep`: run the script with no point running to learn its sweeps (its outputs go to
/// a temporary dir and are dropped), print every point; with `slurm`, write and submit the jobs.
fn sweep_cmd(a: RunArgs, slurm: Option<SlurmArgs>) -> Result<()> {
    use cotlab::experiment::slurm::{indices_to_run, submit, ArrayJob};
    use cotlab::lab::sandbox::absolute;
    let params = script_params(&a.script, &a.set)?;
    if !a.script.is_file() {
        return Err(Error::data(&a.script, "script not found"));
    }
    // Jobs run elsewhere, later: every path absolute.
    let script = absolute(&a.script);
    let data_dir = absolute(&DataDir::resolve(a.data_dir.clone()).0);
    let runs = absolute(a.runs.as_deref().unwrap_or(std::path::Path::new("runs")));
    let out = absolute(&a.out.clone().unwrap_or_else(|| default_out_dir(&script)));
    let allow_read: Vec<PathBuf> = a.allow_read.iter().map(|p| absolute(p)).collect();
    inputs_apart(&a, &out, &script)?;
    let plan_args = RunArgs { script: script.clone(), data_dir: Some(data_dir.clone()), out: None, set: a.set.clone(), runs: Some(runs.clone()), allow_read: allow_read.clone(), max_memory: a.max_memory };

    let scratch = Scratch::new()?;
    let ctx = script_context(&plan_args, Arc::new(OutputDir::create(scratch.0.join("out"))?), SweepMode::Collect)?;
    let runner = Runner { ctx: ctx.clone(), params };
    run_script(&runner, &script).map_err(|e| Error::Script(format!("{e}\nnote: `cotlab sweep` runs the script once with no sweep point running, to learn its sweeps; it must get through that")))?;
    let called = ctx.sweeps.called();
    if called.is_empty() {
        return Err(Error::usage(format!("{} calls no sweep(): there are no points to plan or submit", script.display())));
    }
    for s in &called {
        let count = |st: PointStatus| s.points.iter().filter(|p| p.status == st).count();
        println!(
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
            println!("  {:>4}  {status:<8} {}{}", p.index, p.point, p.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default());
        }
    }
    let Some(slurm) = slurm else { return Ok(()) };
    let indices = indices_to_run(&called);
    if indices.is_empty() {
        println!("every point is complete or invalid: nothing to submit; `cotlab run {} --collect` writes the tables", a.script.display());
        return Ok(());
    }
    let mut args = vec!["--data-dir".to_string(), data_dir.display().to_string(), "--runs".into(), runs.display().to_string()];
    for kv in &a.set {
        args.extend(["--set".to_string(), kv.clone()]);
    }
    for d in &allow_read {
        args.extend(["--allow-read".to_string(), d.display().to_string()]);
    }
    if let Some(g) = a.max_memory {
        args.extend(["--max-memory".to_string(), g.to_string()]);
    }
    let exe = std::env::current_exe().map_err(|e| Error::usage(format!("cannot tell where this cotlab binary is ({e}), which the jobs run")))?;
    let job = ArrayJob {
        name: called[0].name.clone(),
        dir: absolute(&called[0].dir).join("slurm"),
        indices,
        exe,
        script,
        args,
        out: out.clone(),
        workdir: absolute(std::path::Path::new(".")),
        options: slurm.options,
    };
    let files = job.write()?;
    let tasks = cotlab::experiment::slurm::array_spec(&job.indices);
    if slurm.dry_run {
        for f in [&files.array, &files.finalize] {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            println!("==> {} <==\n{text}", f.display());
        }
        println!(
            "not submitted (--dry-run). To submit: id=$(sbatch --parsable {}) && sbatch --dependency=afterany:$id {}",
            files.array.display(),
            files.finalize.display()
        );
        return Ok(());
    }
    let s = submit(&files)?;
    println!("submitted array job {} (tasks {tasks}) and finalize job {} (after it)", s.array_job, s.finalize_job);
    println!("job files: {} {}", files.array.display(), files.finalize.display());
    println!("logs: {}; task outputs: {}", files.logs.display(), files.tasks.display());
    println!("tables (after the finalize job): {}", out.display());
    Ok(())
}
