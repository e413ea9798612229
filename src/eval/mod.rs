//! Stage 6 — evaluation: the paper's answer extractor, scoring of predictions files, and
//! zero-shot evaluation of students.

pub mod run;
pub mod score;

pub use score::{score_predictions, ScoreReport};
