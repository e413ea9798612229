//! Experiments: sweeps over any option, each point fine-tuned from the base weights and
//! evaluated in its own run dir under the workspace's runs dir (see [`sweep`]).

pub mod adaptive;
pub mod point;
pub mod progress;
pub mod sweep;

pub use adaptive::{Strategy, StrategyConfig};
pub use point::{PointConfig, DATA_KEYS, EVAL_KEYS, STRATEGY_KEYS, STUDENT_KEYS};
pub use sweep::{plan, sweep, PointPlan, PointStatus, SweepReport, SweepSpec};
