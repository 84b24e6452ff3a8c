//! A pipeline as its readers see it: the job, where it reads and writes,
//! and its consumer group's lag per partition, read from Kafka. Shared by
//! the gRPC and HTTP front doors.

use std::time::Duration;

use cohort_connectors::kafka::group_lag;

use super::CoreHandle;
use super::core::CoordinatorError;
use super::core::model::{JobView, SlotState};

#[derive(Clone, Debug)]
pub struct PipelineView {
    pub job: JobView,
    pub topic: String,
    pub group: String,
    pub brokers: String,
    /// `parquet:PATH` or `kafka:TOPIC`.
    pub sink: String,
    pub partitions: Vec<PartitionLag>,
    /// Why the lag could not be read (the brokers unreachable, say).
    pub lag_error: String,
    /// Running members and the figures of their last progress line.
    pub members: Vec<MemberProgress>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemberProgress {
    pub member: u32,
    pub node: String,
    /// `in`, `in_per_s`, `out`, `out_per_s`, `bad`, `dead_lettered`, ...
    pub figures: Vec<(String, f64)>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// `None` before the group's first commit.
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
}

/// A member's last progress line is within this many bytes of its log's end.
const PROGRESS_TAIL: u64 = 16 * 1024;
/// The lag lookup waits this long for the brokers.
const LAG_TIMEOUT: Duration = Duration::from_secs(3);

/// Pipeline `id` now, with its lag, and with its members' progress (read
/// from their logs) when `progress`.
pub async fn view(core: &CoreHandle, id: u64, progress: bool) -> Result<PipelineView, CoordinatorError> {
    let (job, text, bootstrap) = core
        .call(move |c| Ok::<_, CoordinatorError>((c.job(id)?, c.spec_text(id)?, c.status().kafka_bootstrap)))
        .await??;
    let spec = crate::spec::parse_job("pipeline.toml", &text).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let crate::spec::JobKind::Pipeline { config, .. } = spec.kind else {
        return Err(CoordinatorError::InvalidInput(format!("job {id} is a {} job, not a pipeline", job.kind)));
    };
    let brokers = config.brokers.clone().unwrap_or(bootstrap);
    let sink = match &config.sink {
        cohort_stream::SinkConfig::Parquet { path, .. } => format!("parquet:{path}"),
        cohort_stream::SinkConfig::Kafka { topic, .. } => format!("kafka:{topic}"),
        cohort_stream::SinkConfig::Store { table, .. } => format!("store:{table}"),
    };
    let (b, topic, group) = (brokers.clone(), config.topic.clone(), config.group.clone());
    let lag = tokio::task::spawn_blocking(move || group_lag(&b, &topic, &group, LAG_TIMEOUT))
        .await
        .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
    let (partitions, lag_error) = match lag {
        Ok(parts) => (
            parts
                .into_iter()
                .map(|p| PartitionLag { partition: p.partition, committed: p.committed, end: p.end, lag: p.lag })
                .collect(),
            String::new(),
        ),
        Err(e) => (Vec::new(), e.to_string()),
    };
    let mut members = Vec::new();
    for slot in job.slots.iter().filter(|s| progress && s.state == SlotState::Running) {
        let Ok(log) = super::logs::read(core, id, slot.index, PROGRESS_TAIL).await else { continue };
        let last = String::from_utf8_lossy(&log).lines().rev().find_map(cohort_stream::member::parse_progress);
        if let Some(figures) = last {
            members.push(MemberProgress { member: slot.index, node: slot.node.clone(), figures });
        }
    }
    Ok(PipelineView { job, topic: config.topic, group: config.group, brokers, sink, partitions, lag_error, members })
}
