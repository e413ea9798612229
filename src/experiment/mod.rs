//! Experiments: sweeps over any option, each point fine-tuned from the base weights and
//! evaluated in its own run dir under the workspace's runs dir (see [`sweep`]); one job array
//! task per point on a Slurm cluster (see [`slurm`]), planned for `cotlab sweep` (see [`plan`]).

pub mod adaptive;
pub mod plan;
pub mod point;
pub mod progress;
pub mod slurm;
pub mod sweep;

pub use point::{DistillSpec, Method, PointConfig, Strategy, StrategyConfig, DATA_KEYS, EVAL_KEYS, METHOD_KEYS, STRATEGY_KEYS, STUDENT_KEYS};
pub use sweep::{plan, sweep, sweep_in, PlannedSweep, PointPlan, PointStatus, SweepMode, SweepReport, SweepSpec, Sweeps};
