//! cotlab: a workbench for chain-of-thought distillation research.
//!
//! Modules are layered; a module uses only modules on its own layer or below (lowest first;
//! `tests/architecture.rs` enforces this table):
//!
//! 1. [`error`], [`rng`], [`memory`]: the error type, the seeded RNG, live heap accounting.
//! 2. [`answer`]: answer kinds and the scoring protocols: the paper's evaluators and cotlab's
//!    lenient extractor (extract, then compare with gold); [`paths`]: the one path policy (how
//!    every file is resolved, opened, created and walked).
//! 3. [`journal`]: the run journal (identity file + crash-safe JSON-lines logs) under training
//!    runs, eval dirs and the teacher cache; [`provenance`]: the build and file hashes behind a
//!    result.
//! 4. [`frame`]: polars frames and plotly charts; [`track`]: experiment tracking in TensorBoard's
//!    event files and MLflow's file store.
//! 5. [`cot`]: rationale formats, steps and measures.
//! 6. [`data`]: datasets, the release catalog, the synthetic `arith` set, contamination.
//! 7. [`kernels`]: the CPU kernels (fused ops with a backward, attention, quantized weights,
//!    the training GEMM, the one CPU-feature detection).
//! 8. [`model`]: candle students (load, generate, LoRA).
//! 9. [`teacher`]: live teachers that write rationales (OpenAI-compatible, local, replay, rule).
//! 10. [`train`]: supervised fine-tuning and export.
//! 11. [`eval`]: zero-shot evaluation and re-scoring of predictions.
//! 12. [`results`]: analysis tables and the output dir.
//! 13. [`lab`]: the library facade (students, teachers, run/eval dir names, the script sandbox)
//!     that the CLI and the Rhai bindings both adapt.
//! 14. [`experiment`]: sweeps (grids of SFT + evaluation points in run dirs named by the
//!     workspace), the student-adaptive strategy as sweep points, Slurm job arrays, on top of
//!     the facade; [`bench`]: the benchmarks behind `cotlab bench` (training steps, the SFT
//!     job, decoding, the CPU kernels) with their timing harness and reports.
//! 15. [`script`] (Rhai) and [`notebook`] (Jupyter/evcxr; it uses `script`, never the reverse).
//!
//! The `cotlab` binary (`main.rs`, its clap definitions in `cli.rs`, its process set-up in `process.rs`) is a thin CLI over this
//! library, on top of all of them.

pub mod answer;
pub mod bench;
pub mod cot;
pub mod data;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod frame;
pub mod journal;
pub mod kernels;
pub mod lab;
pub mod memory;
pub mod model;
pub mod notebook;
pub mod paths;
pub mod provenance;
pub mod results;
pub mod rng;
pub mod script;
pub mod teacher;
pub mod track;
pub mod train;

pub use error::{Error, Result};
