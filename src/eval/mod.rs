//! Stage 5 — evaluation: the paper's answer extractor and scoring of predictions files.

pub mod extract;
pub mod score;

pub use extract::{extract_answer, score_output, Tolerance};
pub use score::{score_predictions, ScoreReport};
