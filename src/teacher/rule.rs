//! The rule-based teacher of the embedded `arith` set: it writes a rationale for a problem at
//! any of the six granularity levels, in the plain, equation-only and answer-only formats. The
//! wording lives with the problems (`ArithProblem::rationale`), because the catalog serves
//! these rationales as the `arith` corpus and `data` sits below `teacher`.

use crate::cot::Format;
use crate::data::arith::ArithProblem;

/// Write the rule teacher's rationale. `level` is clamped to 1..=6.
pub fn write(p: &ArithProblem, level: u8, format: Format) -> String {
    p.rationale(level, format)
}
