//! The `cotlab` command line as clap parses it: every subcommand's arguments, each flag with
//! help text that lists its choices, and their conversions into the library's option values.
//! No behaviour here: `main.rs` hands each parsed command to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use cotlab::data::DataDir;
use cotlab::experiment::plan::JobInputs;
use cotlab::{Error, Result};

#[derive(Parser)]
#[command(
    name = "cotlab",
    version,
    about = "Chain-of-thought distillation workbench",
    after_help = "Exit status: 0 on success; 1 on an error (the message says what and where; a script that fails publishes \
                  nothing, and a sweep whose points are all invalid is such an error); 2 on a command-line usage error; \
                  3 when a script finished but sweep points failed or are not complete (its outputs were published)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a Rhai script.
    Run(RunCmd),
    /// Plan a script's sweeps (every point with its status), and with --slurm write and submit
    /// a Slurm job array (one task per point) and a job that merges the results after it.
    Sweep(SweepCmd),
    /// Export a training run's last checkpoint (or a model) as a Hugging Face model dir; LoRA
    /// runs export PEFT adapters unless --merge.
    Export(ExportCmd),
    /// Evaluate a student zero-shot on a test set (results.json + samples.jsonl/parquet; resumable).
    Eval(EvalCmd),
    /// Print messages rendered by a model's own chat template, as transformers'
    /// apply_chat_template renders them (what `template: "model"` / `--prompt model` give it).
    ChatTemplate(ChatTemplateCmd),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Re-score a predictions file (JSON lines with `id` or `question`, and `prediction`) or an eval dir.
    Score(ScoreCmd),
    /// Report how many test questions appear in a training file.
    Contamination(ContaminationCmd),
    /// Convert a corpus file between formats (alpaca, sharegpt, messages, prompt-completion; from
    /// those or named columns), adding its LLaMA-Factory entry to dataset_info.json beside OUT.
    Convert(ConvertCmd),
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
        /// Only this dataset (svamp, gsm8k, aqua, math, csqa, obqa, strategyqa or arith).
        #[arg(long)]
        dataset: Option<String>,
        /// The data dir (default: $COTLAB_DATA, then ./datasets).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

// `cotlab run`.
#[derive(Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub args: RunArgs,
    /// Run only point N of every sweep() in the script (a job array task; a sweep with fewer
    /// points runs nothing). Default: $SLURM_ARRAY_TASK_ID when set, else every point.
    #[arg(long, value_name = "N", conflicts_with = "collect")]
    pub point: Option<usize>,
    /// Run no sweep point: every sweep() reports its points as they are on disk, so the
    /// script only merges results and writes its tables; points not complete fail the run
    /// (after publishing). What the Slurm finalize job runs.
    #[arg(long)]
    pub collect: bool,
}

// `cotlab sweep`.
#[derive(Args)]
pub struct SweepCmd {
    #[command(flatten)]
    pub args: RunArgs,
    /// Write <runs>/<sweep>/slurm/{array,finalize}.sbatch and submit them with sbatch.
    #[arg(long)]
    pub slurm: bool,
    /// With --slurm: write the job files and print them, but submit nothing.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// Slurm partition for the jobs (default: the cluster's).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// GPUs per array task (sbatch --gpus: "1", "h100:1").
    #[arg(long, requires = "slurm")]
    pub gpus: Option<String>,
    /// CPUs per array task (sbatch --cpus-per-task).
    #[arg(long, requires = "slurm", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// Memory per job (sbatch --mem: "16G").
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// Time limit per job (sbatch --time: "2:00:00").
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
}

// `cotlab export`.
#[derive(Args)]
pub struct ExportCmd {
    /// A run dir (runs/<name>).
    #[arg(long, conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// A model spec instead: "default", a .gguf file or an HF dir (e.g. to give PyTorch the same weights).
    #[arg(long)]
    pub model: Option<String>,
    /// The Hugging Face model dir to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Fold LoRA adapters into the base weights and write a full model.
    #[arg(long)]
    pub merge: bool,
    /// The weights' dtype: f32 (exact) or bf16 (half the bytes, as Hub checkpoints ship).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// With --model: write only tokenizer.json (for `bench --random ARCH --tokenizer FILE`
    /// on a machine without the model, e.g. the GPU check).
    #[arg(long, requires = "model")]
    pub tokenizer_only: bool,
}

// `cotlab chat-template`.
#[derive(Args)]
pub struct ChatTemplateCmd {
    /// "default", a .gguf file, an HF model dir, a run dir (runs/<name>), or hf:ORG/NAME.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A JSON file holding a list of messages: [{"role": "user", "content": "..."}, ...].
    #[arg(long)]
    pub messages: PathBuf,
    /// Render without the assistant header that opens the model's answer (add_generation_prompt=False).
    #[arg(long)]
    pub no_generation_prompt: bool,
}

// `cotlab eval`.
#[derive(Args)]
pub struct EvalCmd {
    /// "default", a .gguf file, an HF model dir, a run dir (runs/<name>), or hf:ORG/NAME.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// The test set: svamp, gsm8k, aqua, math, csqa, obqa, strategyqa or arith (or --data FILE).
    #[arg(long, required_unless_present = "data")]
    pub task: Option<String>,
    #[command(flatten)]
    pub user: UserDataArgs,
    /// Split: test (default), train where the release has one, all (SVAMP's 1000 problems) or
    /// full (MATH's 5000-problem test set instead of MATH-500); with --data, the set's label.
    #[arg(long)]
    pub split: Option<String>,
    /// Evaluate a seeded subset of N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The shuffle seed of --limit's subset.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Questions decoded at a time (default: 32 cache rows, 32 questions greedy, 6 at beam width 5).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Generation limit (default: the paper's, 1024 new tokens for math, 640 for commonsense).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Scoring rules: paper (the paper's evaluators) or lenient (cotlab's forgiving extractor).
    #[arg(long, default_value = "paper")]
    pub protocol: String,
    /// Prompt: paper (the paper evaluator's prompt for the template), train (the training
    /// template) or model (the model's own Jinja chat template; `cotlab chat-template` shows it).
    #[arg(long, default_value = "paper")]
    pub prompt: String,
    /// Chat template instead of the default (the paper's family detected in the model's own,
    /// else the model's own): chatml, llama3, gemma, alpaca, or model (the model's own Jinja).
    #[arg(long)]
    pub template: Option<String>,
    /// Beam width (1 = greedy); default the paper's: 5 for csqa, obqa, strategyqa (and --data sets of
    /// kind choice, bool or text), else 1.
    #[arg(long)]
    pub beams: Option<usize>,
    /// Weights decoding reads: auto (the compute dtype's), f32, bf16, q8_0 or q4_1 (quantized
    /// projections and LM head: faster on the CPU, outputs close to f32's, not identical;
    /// q4_1 is exact for weights that came from a Q4_1 GGUF, like the default student's).
    #[arg(long, default_value = "auto")]
    pub decode_weights: String,
    /// The eval dir (default: <runs>/eval-<task>-<split>-<model>[-n<N>-s<seed>]).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the default eval dir goes (default: ./runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
}

// `cotlab score`.
#[derive(Args)]
pub struct ScoreCmd {
    /// The predictions' task: svamp, gsm8k, aqua, math, csqa, obqa, strategyqa or arith (or --data FILE).
    #[arg(long, required_unless_present = "data")]
    pub task: Option<String>,
    #[command(flatten)]
    pub user: UserDataArgs,
    /// The predictions file (JSON lines), or an eval dir (cotlab's, or lm-eval's output dir of one
    /// model) or its samples_<task>_<timestamp>.jsonl: its generated texts are re-scored.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Test split to score against (default: test).
    #[arg(long)]
    pub split: Option<String>,
    /// Scoring rules: paper or lenient (both accuracies are printed; this one is `accuracy`).
    #[arg(long, default_value = "paper")]
    pub protocol: String,
    /// The data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// A test set of the user's own (`cotlab eval`, `cotlab score`): the file and its mapping.
#[derive(Args)]
pub struct UserDataArgs {
    /// A test set of your own instead of --task: a JSON array, JSON lines, CSV or Parquet file.
    // Not `conflicts_with = "task"`: clap then waives the mapping flags' `requires = "data"`
    // whenever --task is given; `main::test_set` refuses both at once instead.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The answer kind, which picks the scoring rule: number, choice, bool, latex or text
    /// (default: inferred from the answers, and said).
    #[arg(long, requires = "data")]
    pub kind: Option<String>,
    /// The file's format: auto (default: from the extension, else the first bytes), json, jsonl, csv or parquet.
    #[arg(long, requires = "data")]
    pub format: Option<String>,
    /// The question column (default: the first of question, problem, input, prompt, query, instruction).
    #[arg(long, requires = "data")]
    pub question_col: Option<String>,
    /// The answer column (default: the first of answer, label, target, answerKey, output, gold).
    #[arg(long, requires = "data")]
    pub answer_col: Option<String>,
    /// The choices column, a list or a string (default: choices or options when present).
    #[arg(long, requires = "data")]
    pub choices_col: Option<String>,
    /// The set's name (default: the file's stem): the default eval dir is eval-<name>-<split>-<model>.
    #[arg(long, requires = "data")]
    pub name: Option<String>,
}

// `cotlab convert`.
#[derive(Args)]
pub struct ConvertCmd {
    /// The corpus to read: JSON array or JSON lines in a chat format, or named columns (JSON lines, CSV, parquet).
    pub input: PathBuf,
    /// The file to write: `.json` (one array) or `.jsonl` (JSON lines).
    pub output: PathBuf,
    /// The format to write: alpaca, sharegpt, messages or prompt-completion.
    #[arg(long, value_parser = cotlab::data::formats::CorpusFormat::parse)]
    pub to: cotlab::data::formats::CorpusFormat,
    /// The input's format: auto (sniffed, and said), alpaca, sharegpt, messages, prompt-completion, jsonl, csv, parquet.
    #[arg(long, default_value = "auto", value_parser = cotlab::data::formats::CorpusFormat::parse)]
    pub from: cotlab::data::formats::CorpusFormat,
    /// Named columns: the question's (default: question).
    #[arg(long)]
    pub question: Option<String>,
    /// Named columns: the rationale's (default: rationale).
    #[arg(long)]
    pub rationale: Option<String>,
    /// The answer's column or extra field (default: answer, when present).
    #[arg(long)]
    pub answer: Option<String>,
    /// The answer kind: number, choice, bool, latex or text (default: from the answers).
    #[arg(long)]
    pub kind: Option<String>,
    /// The corpus's name (ids without an `id` field are NAME-ROW; default: the input's stem).
    #[arg(long)]
    pub name: Option<String>,
}

// `cotlab contamination`.
#[derive(Args)]
pub struct ContaminationCmd {
    /// The training file: a JSON array or JSON lines of records with an instruction, question
    /// or problem field (or SVAMP's Body + Question).
    #[arg(long)]
    pub train: PathBuf,
    /// The test file (the same formats).
    #[arg(long)]
    pub test: PathBuf,
    /// Near-duplicate threshold (word-trigram Jaccard).
    #[arg(long, default_value_t = 0.8)]
    pub threshold: f64,
    /// Also list every flagged question.
    #[arg(long)]
    pub verbose: bool,
}

/// What `cotlab run` and `cotlab sweep` take to run a script.
#[derive(Args)]
pub struct RunArgs {
    /// The Rhai script.
    pub script: PathBuf,
    /// The data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output dir for files the script writes (default: out/<script name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// key=value: a parameter the script declares with param(), read as its default's type
    /// (SCRIPT --help lists them). Repeatable. In a script that declares none, a variable and a
    /// `params` entry: unquoted numbers and true/false are read as such; a value in double
    /// quotes is text (--set 'id="007"' is the string "007").
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where training runs live (default: ./runs).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Another dir the script may read (it may always read the data, runs and output dirs
    /// and $COTLAB_HOME). Repeatable.
    #[arg(long = "allow-read", value_name = "DIR")]
    pub allow_read: Vec<PathBuf>,
    /// Stop the script when the process holds more heap than this many GiB (0 = no limit;
    /// default 80% of this machine's RAM).
    #[arg(long, value_name = "GIB")]
    pub max_memory: Option<f64>,
}

impl RunArgs {
    /// What every job of `cotlab sweep --slurm` runs the script with, every path absolute; the
    /// output dir defaults as `cotlab run`'s does.
    pub fn job_inputs(&self) -> JobInputs {
        let script = cotlab::paths::absolute(&self.script);
        JobInputs {
            out: self.out.clone().unwrap_or_else(|| cotlab::script::default_out_dir(&script)),
            script,
            data_dir: DataDir::resolve(self.data_dir.clone()).0,
            runs: self.runs.clone().unwrap_or_else(|| PathBuf::from("runs")),
            set: self.set.clone(),
            allow_read: self.allow_read.clone(),
            max_memory: self.max_memory,
        }
        .absolute()
    }

    /// The arguments of `cotlab sweep`'s planning run: the jobs' own, no output dir (its outputs
    /// are dropped).
    pub fn planning(inputs: &JobInputs) -> RunArgs {
        RunArgs {
            script: inputs.script.clone(),
            data_dir: Some(inputs.data_dir.clone()),
            out: None,
            set: inputs.set.clone(),
            runs: Some(inputs.runs.clone()),
            allow_read: inputs.allow_read.clone(),
            max_memory: inputs.max_memory,
        }
    }
}

/// The student a benchmark times: its weights (or random ones of an architecture) and where it runs.
#[derive(Args)]
pub struct BenchStudent {
    /// "default", a .gguf file, an HF model dir, a run dir (runs/<name>), or hf:ORG/NAME.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// cpu, cuda, cuda:N or auto (CUDA needs a cotlab built with scripts/build_cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: auto (bf16 on CUDA, f32 on the CPU), bf16 or f32. Weights, gradients
    /// and optimizer state stay f32.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Random weights with this architecture instead of --model's weights: smollm2-135m,
    /// llama-1b, or an HF config.json (speed and memory depend on the shapes alone).
    #[arg(long, value_name = "ARCH")]
    pub random: Option<String>,
    /// With --random: where the tokenizer comes from (a tokenizer.json, or a model spec).
    #[arg(long, default_value = "default")]
    pub tokenizer: String,
}

impl GenerateCmd {
    pub fn bench(&self) -> cotlab::Result<cotlab::bench::generate::GenerateBench> {
        let decode_weights = cotlab::model::DecodeWeights::parse(&self.decode_weights).map_err(cotlab::Error::usage)?;
        Ok(cotlab::bench::generate::GenerateBench { batch: self.batch, new_tokens: self.new_tokens, decode_weights, save_prompts: self.save_prompts.clone() })
    }
}

impl JobCmd {
    pub fn bench(&self) -> cotlab::bench::job::JobBench {
        cotlab::bench::job::JobBench {
            task: self.task.clone(),
            teacher: self.teacher.clone(),
            level: self.level,
            steps: self.steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lora: self.lora,
            save_plan: self.save_plan.clone(),
            data_dir: self.data_dir.clone(),
        }
    }
}

impl TrainCmd {
    pub fn bench(&self) -> cotlab::bench::train::TrainBench {
        let (lora, batch, seq, steps, lr, peak_tflops) = (self.lora, self.batch, self.seq, self.steps, self.lr, self.peak_tflops);
        cotlab::bench::train::TrainBench { lora, batch, seq, steps, lr, peak_tflops, save_batch: self.save_batch.clone(), kd: self.kd }
    }
}

impl BenchStudent {
    pub fn spec(&self) -> cotlab::bench::StudentSpec {
        cotlab::bench::StudentSpec {
            model: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            random: self.random.clone(),
            tokenizer: self.tokenizer.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Time greedy decoding with the KV cache at batch 1 and batch N (fixed arith prompts).
    Generate(GenerateCmd),
    /// Time the decoding matmul kernels on the student's weights (one of each 2-D shape: a
    /// layer's projections and the LM head or embedding): cotlab's Q8_0 or Q4_1 kernel
    /// (`--decode-weights`) against candle's f32 matmul (the default path), at each row count
    /// (1 = batch-1 decoding).
    Matmul(MatmulCmd),
    /// Time the training step's f32 products on the student's weight shapes (forward x·wᵀ,
    /// dx = g·w, dW += gᵀ·x, one of each shape): cotlab's GEMM against the `gemm` crate as
    /// candle's CPU matmul runs it, and the step's mix (shapes weighted by how many weights
    /// have them).
    Gemm(GemmCmd),
    /// Time the real SFT job: optimizer steps of the paper's recipe (lr 5e-5, cosine, global
    /// batch 4 x 16, loss on the response only) on a release corpus, through the trainer `sft`
    /// runs (checkpoints left out).
    Job(JobCmd),
    /// Time optimizer steps (forward + backward + AdamW) of a student on a fixed batch.
    Train(TrainCmd),
}

// `cotlab bench generate`.
#[derive(Args)]
pub struct GenerateCmd {
    /// Rows decoded at a time (1..=1024).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens to decode per row (with --prompts: at most, each row stops at EOS).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    #[command(flatten)]
    pub student: BenchStudent,
    /// Weights decoding reads: auto (the compute dtype's), f32, bf16, q8_0 or q4_1.
    #[arg(long, default_value = "auto")]
    pub decode_weights: String,
    /// Write the prompts' token ids (JSON) for benches/torch_generate.py.
    #[arg(long)]
    pub save_prompts: Option<PathBuf>,
    /// Real questions instead: TASK:N (e.g. svamp:48), the first N of a seeded shuffle of
    /// the test split, decoded to EOS (answers of different lengths, at most --new-tokens)
    /// --batch at a time: static batches (each waits for its longest answer) against
    /// continuous batching (a finished row takes the next prompt).
    #[arg(long, value_name = "TASK:N")]
    pub prompts: Option<String>,
    /// With --prompts: the data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

// `cotlab bench matmul`.
#[derive(Args)]
pub struct MatmulCmd {
    /// The kernel's block format: q8_0 or q4_1.
    #[arg(long, default_value = "q8_0")]
    pub decode_weights: String,
    /// Input rows (comma-separated).
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub m: Vec<usize>,
    /// Seconds to time each side of each row, at least.
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    #[command(flatten)]
    pub student: BenchStudent,
    /// Also print the rows as one JSON array on the last line.
    #[arg(long)]
    pub json: bool,
}

// `cotlab bench gemm`.
#[derive(Args)]
pub struct GemmCmd {
    /// Input rows: a micro-batch's tokens (comma-separated).
    #[arg(long, default_value = "640", value_delimiter = ',')]
    pub tokens: Vec<usize>,
    /// Seconds to time each side of each shape, at least.
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    #[command(flatten)]
    pub student: BenchStudent,
    /// Also print the rows as one JSON array on the last line.
    #[arg(long)]
    pub json: bool,
}

// `cotlab bench job`.
#[derive(Args)]
pub struct JobCmd {
    /// The corpus's task: svamp, gsm8k, aqua, math, csqa, obqa, strategyqa or arith.
    #[arg(long, default_value = "svamp")]
    pub task: String,
    /// The corpus's teacher: gpt-4o, gemini, llama-3-70b, human (or rule for arith).
    #[arg(long, default_value = "gpt-4o")]
    pub teacher: String,
    /// The corpus's granularity level, 1..6.
    #[arg(long, default_value_t = 3)]
    pub level: i64,
    /// Steps timed after one warm-up step.
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 16)]
    pub grad_accum: usize,
    /// LoRA (r 8, alpha 16, q_proj and v_proj, no dropout) instead of full fine-tuning.
    #[arg(long)]
    pub lora: bool,
    #[command(flatten)]
    pub student: BenchStudent,
    /// Write each step's examples and learning rate (JSON) for benches/torch_job.py.
    #[arg(long)]
    pub save_plan: Option<PathBuf>,
    /// The data dir (default: $COTLAB_DATA, then ./datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

// `cotlab bench train`.
#[derive(Args)]
pub struct TrainCmd {
    /// LoRA (r 8, alpha 16, q_proj and v_proj, no dropout) instead of full fine-tuning.
    #[arg(long)]
    pub lora: bool,
    /// Sequences per step (1..=4096).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence (2 up to the model's context).
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Steps timed after one warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// AdamW learning rate (0..=1).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    #[command(flatten)]
    pub student: BenchStudent,
    /// The device's dense peak in TFLOP/s for the compute dtype, for the MFU (H100/H200
    /// bf16: 989); default 989 on CUDA in bf16, else no MFU.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Write the batch's token ids (JSON) for benches/torch_train.py.
    #[arg(long)]
    pub save_batch: Option<PathBuf>,
    /// Also time offline-KD steps on the same batch (teacher: the student, top-20, alpha 0.5)
    /// and print their tokens/s beside SFT's, with the ratio.
    #[arg(long)]
    pub kd: bool,
    /// Print one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

/// A command-line error or help request: `cotlab run|sweep SCRIPT --help` prints the script's
/// declared parameters after clap's help; anything else is clap's to print.
pub fn help_or_exit(e: clap::Error) -> ! {
    if e.kind() == clap::error::ErrorKind::DisplayHelp {
        let rest = std::env::args().filter(|a| a != "--help" && a != "-h");
        let script = match Cli::try_parse_from(rest) {
            Ok(Cli { cmd: Cmd::Run(c) }) => Some(c.args.script),
            Ok(Cli { cmd: Cmd::Sweep(c) }) => Some(c.args.script),
            _ => None,
        };
        if let Some(script) = script {
            let _ = e.print();
            match cotlab::script::params_help(&script) {
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

/// `--set KEY=VALUE` pairs, checked against the script's declared parameters before any work.
pub fn script_params(script: &std::path::Path, set: &[String]) -> Result<Vec<(String, String)>> {
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
