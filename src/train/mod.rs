//! Stage 5 — training: supervised fine-tuning (SFT) of a student on rationales, with the
//! paper's recipe as the default, run directories, checkpoints and exact resume; token-level
//! KD from stored teacher logits (`kd`) and on-policy from a live teacher (`distill`).

pub mod adamw;
pub mod data;
pub mod distill;
pub mod export;
pub mod kd;
pub mod pack;
pub mod run;
pub mod sft;

pub use distill::{distill, DistillOptions, DistillReport};
pub use run::{RunDir, TrainState, TrainSummary};
pub use sft::{sft, sft_tracked, BatchLoss, Preset, Schedule, SftOptions, SftReport, Tracking, Trainer};
