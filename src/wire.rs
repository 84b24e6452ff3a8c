//! The one place where domain enums meet their protobuf twins.

use cohort_proto as pb;

use crate::executor::ExecutorKind;

impl From<ExecutorKind> for pb::ExecutorKind {
    fn from(kind: ExecutorKind) -> Self {
        match kind {
            ExecutorKind::Command => pb::ExecutorKind::Command,
            ExecutorKind::Batch => pb::ExecutorKind::Batch,
            ExecutorKind::Stream => pb::ExecutorKind::Stream,
            ExecutorKind::Store => pb::ExecutorKind::Store,
            ExecutorKind::Service => pb::ExecutorKind::Service,
        }
    }
}

/// The executor kind a `Launch` carries, if it names one.
pub fn executor_kind(launch: &pb::Launch) -> Option<ExecutorKind> {
    match pb::ExecutorKind::try_from(launch.kind).ok()? {
        pb::ExecutorKind::Unspecified => None,
        pb::ExecutorKind::Command => Some(ExecutorKind::Command),
        pb::ExecutorKind::Batch => Some(ExecutorKind::Batch),
        pb::ExecutorKind::Stream => Some(ExecutorKind::Stream),
        pb::ExecutorKind::Store => Some(ExecutorKind::Store),
        pb::ExecutorKind::Service => Some(ExecutorKind::Service),
    }
}
