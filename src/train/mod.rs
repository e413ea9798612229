//! Stage 5 — training: supervised fine-tuning (SFT) of a student on rationales, with the
//! paper's recipe as the default, run directories, checkpoints and exact resume.

pub mod adamw;
pub mod data;
pub mod export;
pub mod kd;
pub mod pack;
pub mod run;
pub mod sft;

pub use run::{RunDir, TrainState, TrainSummary};
pub use sft::{sft, sft_tracked, Preset, Schedule, SftOptions, SftReport, Tracking, Trainer};
