//! Stage 2 — chain-of-thought: granularity levels, formats, and the structure of a rationale
//! (steps and measures), so granularity can be measured and not only requested.

pub mod structure;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::usage;

pub use structure::{coarsen, measure, split_steps, CotMeasure};

/// Granularity levels of the paper: 1 = the one key operation … 6 = every sub-step plus a
/// verification.
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=6;

/// A granularity level, checked once where it is parsed (a script's option, a grid key, a file
/// name): holding one means it is in [`LEVELS`]. Serialised as its number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "i64")]
pub struct Level(u8);

impl Level {
    pub fn new(level: i64) -> Result<Level> {
        match u8::try_from(level) {
            Ok(l) if LEVELS.contains(&l) => Ok(Level(l)),
            _ => Err(usage!("granularity level must be 1..6 (1 = one key operation, 6 = every sub-step plus verification), got {level}")),
        }
    }

    /// Every level, coarsest first.
    pub fn all() -> impl Iterator<Item = Level> {
        LEVELS.map(Level)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl From<Level> for u8 {
    fn from(l: Level) -> u8 {
        l.0
    }
}

impl TryFrom<i64> for Level {
    type Error = String;
    fn try_from(level: i64) -> std::result::Result<Level, String> {
        Level::new(level).map_err(|e| e.to_string())
    }
}

/// As its number, so a list of levels in a message reads `[1, 3]`.
impl std::fmt::Debug for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// [`Level::new`], as the number (for fields that hold a plain `u8`).
pub fn check_level(level: i64) -> Result<u8> {
    Level::new(level).map(Level::get)
}

crate::choices! {
    /// How a rationale is written.
    pub enum Format("format") {
        /// Free-form reasoning ending in "The answer is X".
        Plain = "plain" | "cot",
        /// Sub-questions, each followed by its answer (the paper's "BSM" files).
        Bsm = "bsm",
        /// Rephrase the question, then respond.
        Rar = "rar",
        /// Symbolic notation: variables and equations.
        Sym = "sym" | "symbolic",
        /// Only the equations.
        EquationOnly = "equation-only" | "equation" | "eq",
        /// Only the final answer, no reasoning.
        AnswerOnly = "answer-only" | "answer" | "only-ans",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_is_one_to_six_and_serialises_as_its_number() {
        assert_eq!(Level::all().map(Level::get).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        for bad in [0, 7, -1, 256 + 3] {
            let e = Level::new(bad).unwrap_err().to_string();
            assert!(e.contains("1..6") && e.contains(&bad.to_string()), "{e}");
        }
        let l: Vec<Level> = serde_json::from_str("[1, 6]").unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), "[1,6]");
        let e = serde_json::from_str::<Vec<Level>>("[3, 9]").unwrap_err().to_string();
        assert!(e.contains("got 9"), "{e}");
    }
}
