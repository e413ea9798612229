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

pub fn check_level(level: i64) -> Result<u8> {
    if (1..=6).contains(&level) {
        Ok(level as u8)
    } else {
        Err(usage!("granularity level must be 1..6 (1 = one key operation, 6 = every sub-step plus verification), got {level}"))
    }
}

/// How a rationale is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Free-form reasoning ending in "The answer is X".
    Plain,
    /// Sub-questions, each followed by its answer (the paper's "BSM" files).
    Bsm,
    /// Rephrase the question, then respond.
    Rar,
    /// Symbolic notation: variables and equations.
    Sym,
    /// Only the equations.
    EquationOnly,
    /// Only the final answer, no reasoning.
    AnswerOnly,
}

impl Format {
    pub const ALL: [Format; 6] =
        [Format::Plain, Format::Bsm, Format::Rar, Format::Sym, Format::EquationOnly, Format::AnswerOnly];

    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "plain" | "cot" => Format::Plain,
            "bsm" => Format::Bsm,
            "rar" => Format::Rar,
            "sym" | "symbolic" => Format::Sym,
            "equation-only" | "equation" | "eq" => Format::EquationOnly,
            "answer-only" | "answer" | "only-ans" => Format::AnswerOnly,
            _ => {
                return Err(usage!(
                    "unknown format '{s}': expected plain, bsm, rar, sym, equation-only or answer-only"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Bsm => "bsm",
            Format::Rar => "rar",
            Format::Sym => "sym",
            Format::EquationOnly => "equation-only",
            Format::AnswerOnly => "answer-only",
        }
    }
}
