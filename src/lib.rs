//! cotlab: a workbench for chain-of-thought distillation research.
//!
//! The modules follow the pipeline: [`data`] → [`cot`] → [`teacher`] → [`model`] → [`train`] →
//! [`eval`] → [`results`],
//! with [`script`] adapting all of it to Rhai and [`notebook`] to Jupyter (evcxr). The `cotlab`
//! binary is a thin CLI over this library. Under the resumable stores (training runs, eval dirs,
//! the teacher cache) sits one [`journal`]: an identity file plus crash-safe JSON-lines logs.

pub mod cot;
pub mod data;
pub mod error;
pub mod eval;
pub mod journal;
pub mod lab;
pub mod model;
pub mod notebook;
pub mod results;
pub mod rng;
pub mod script;
pub mod teacher;
pub mod train;

pub use error::{Error, Result};
