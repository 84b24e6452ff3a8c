//! Workload traces: real cluster logs and synthetic mixes, read into one
//! shape ([`Trace`]) that the [`crate::sim`] replays.
//!
//! Importers take the file's text, not a path, so this crate stays free of
//! I/O; the `cohort` binary reads the files. A row that cannot be used
//! (negative runtime, no cpu request) is skipped and counted by reason in
//! [`Trace::skipped`]; a row that cannot be read at all is an error naming
//! its file and line.

mod alibaba;
mod generate;
mod jsonl;
mod swf;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{GangSpec, NodeSpec, PriorityClass, Time};

pub use alibaba::{
    alibaba_2017_cluster, alibaba_2018_cluster, parse_alibaba_batch, parse_alibaba_openb, parse_openb_nodes,
};
pub use generate::{GenerateOptions, generate};
pub use jsonl::{parse_jsonl, write_jsonl};
pub use swf::{parse_swf, parse_swf_machines};

/// One job of a trace: a gang submitted at `submit` whose slots each run `runtime`.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceJob {
    pub id: u64,
    pub submit: Time,
    pub runtime: Time,
    pub spec: GangSpec,
}

/// A cluster and the jobs submitted to it.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub format: String,
    pub nodes: Vec<NodeSpec>,
    pub jobs: Vec<TraceJob>,
    /// Priority classes the trace's jobs name (the defaults when empty).
    pub classes: Vec<PriorityClass>,
    /// Rows left out, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// How the log was read where it leaves things open (where the machine
    /// came from, what stands in for missing estimates), for the report.
    pub notes: Vec<String>,
}

impl Trace {
    pub(crate) fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }

    /// Sorts jobs by submit time (then id), as the simulator replays them.
    pub(crate) fn sort(&mut self) {
        self.jobs.sort_by_key(|j| (j.submit, j.id));
    }
}

/// The formats `cohort simulate` reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Swf,
    AlibabaBatch,
    AlibabaOpenb,
    Jsonl,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "swf" => Some(Format::Swf),
            "alibaba-batch" => Some(Format::AlibabaBatch),
            "alibaba-openb" => Some(Format::AlibabaOpenb),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// Guesses the format from a file name and its first line.
    pub fn guess(file_name: &str, first_line: &str) -> Option<Format> {
        let first = first_line.trim_start();
        if file_name.ends_with(".swf") || first.starts_with(';') {
            Some(Format::Swf)
        } else if file_name.ends_with(".jsonl") || first.starts_with('{') {
            Some(Format::Jsonl)
        } else if file_name.ends_with("batch_task.csv")
            || first.starts_with("task_create_time")
            || first.starts_with("task_name,")
            || is_batch_task_row(first)
        {
            Some(Format::AlibabaBatch)
        } else if first.starts_with("name,cpu_milli") {
            Some(Format::AlibabaOpenb)
        } else {
            None
        }
    }
}

/// A headerless row of Alibaba's `batch_task.csv`: a task status in the
/// 6th column of 8 (2017) or the 5th of 9 (2018).
fn is_batch_task_row(line: &str) -> bool {
    const STATUSES: [&str; 7] = ["Terminated", "Failed", "Waiting", "Running", "Ready", "Cancelled", "Interrupted"];
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let status = match fields.len() {
        8 => fields[5],
        9 => fields[4],
        _ => return false,
    };
    STATUSES.contains(&status)
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("{file}:{line}: {message}")]
    Line { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

impl TraceError {
    pub(crate) fn line(file: &str, line: usize, message: impl Into<String>) -> TraceError {
        TraceError::Line { file: file.to_string(), line, message: message.into() }
    }
}

/// About 300 years: no log's times reach it; a field that does is corrupt.
pub(crate) const MAX_TRACE_SECONDS: i64 = 10_000_000_000;

pub(crate) fn secs(s: f64) -> Time {
    (s * 1000.0).round().max(0.0) as Time
}
