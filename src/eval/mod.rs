//! Stage 6 — evaluation: the paper's answer extractor, scoring of predictions files, and
//! zero-shot evaluation of students.

pub mod extract;
pub mod run;
pub mod score;

pub use extract::{extract_answer, score_output, Tolerance};
pub use score::{score_predictions, ScoreReport};
