//! Stage 6 — evaluation: scoring of predictions files and zero-shot evaluation of students,
//! both judged by [`crate::answer::judge`].

pub mod lmeval;
pub mod run;
pub mod score;

pub use score::{score_predictions, ScoreReport};
