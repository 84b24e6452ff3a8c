//! # cohort
//!
//! The Cohort binary's library: every process (`up`, `coordinator`,
//! `agent`, `executor`), the client commands and the simulator front end.
//! `main.rs` only calls [`cli::main`]; tests and benches drive the pieces
//! directly (the coordinator core runs in-process under a fake clock).

pub mod agent;
pub mod bench;
pub mod cli;
pub mod coordinator;
pub mod executor;
pub mod json;
pub mod plot;
pub mod simulate;
pub mod spec;
pub mod tls;
pub mod up;
pub mod wire;
