//! Stage 7 — results: cotlab values (corpora, datasets, the catalog) as frames for analysis,
//! and the output dir that makes a run's files appear only when the run succeeded. Frames and
//! charts themselves are the base module [`crate::frame`].

pub mod compare;
pub mod output;
pub mod runs;
pub mod tables;

// Frames and charts live in the base module `frame`; these keep the `results::` paths.
pub use crate::frame::{Agg, Cell, Chart, ChartSpec, ColumnData, Frame};
pub use output::OutputDir;
