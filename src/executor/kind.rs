//! What an executor process runs: one enum shared by job specs, the
//! coordinator core, the launch path and `cohort executor --kind`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of process an agent starts for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// The slot's argv, run once.
    Command,
    /// A datafusion-distributed worker running plan fragments.
    Batch,
    /// A pipeline member: Kafka consumer → SQL transform → sink.
    Stream,
    /// In-memory Arrow tables, served over Flight.
    Store,
    /// A long-running instance of a service, health-checked by its agent.
    Service,
}

impl ExecutorKind {
    pub const ALL: [ExecutorKind; 5] =
        [ExecutorKind::Command, ExecutorKind::Batch, ExecutorKind::Stream, ExecutorKind::Store, ExecutorKind::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Command => "command",
            ExecutorKind::Batch => "batch",
            ExecutorKind::Stream => "stream",
            ExecutorKind::Store => "store",
            ExecutorKind::Service => "service",
        }
    }
}

impl fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An executor kind name that is not one of [`ExecutorKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown executor kind `{0}` (expected command, batch, stream, store or service)")]
pub struct UnknownKind(pub String);

impl FromStr for ExecutorKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExecutorKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in ExecutorKind::ALL {
            assert_eq!(kind.as_str().parse::<ExecutorKind>().unwrap(), kind);
        }
        assert!("shell".parse::<ExecutorKind>().unwrap_err().to_string().contains("`shell`"));
    }
}
