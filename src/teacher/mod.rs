//! Stage 3 — teachers: who writes rationales. Today: the rule-based teacher for the embedded
//! `arith` set, and the paper's released rationales (served by `data::catalog`).

pub mod rule;
