//! Stage 6 — evaluation: scoring of predictions files and zero-shot evaluation of students,
//! both judged by [`crate::answer::judge`].

pub mod lmeval;
pub mod run;
pub mod score;

pub use score::{score_predictions, ScoreReport};

// An eval dir's files, named here once for the evaluation that writes them ([`run`]), its
// lm-eval reader ([`lmeval`]) and the results readers.
/// The journal of answers, one line per sample: what resume and paired comparisons read.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// The report written when every answer is in.
pub const RESULTS_FILE: &str = "results.json";
/// The evaluation's identity.
pub const CONFIG_FILE: &str = "eval_config.json";
