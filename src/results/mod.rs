//! Stage 7 — results: polars DataFrames for analysis, plotly charts as offline HTML, and the
//! output dir that makes a run's files appear only when the run succeeded.

pub mod chart;
pub mod frame;
pub mod output;
pub mod tables;

pub use chart::{Chart, ChartSpec};
pub use frame::{Agg, Cell, ColumnData, Frame};
pub use output::OutputDir;
