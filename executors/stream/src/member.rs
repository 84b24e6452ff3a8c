//! One pipeline member's loop, and its delivery rules:
//!
//! - offsets are committed only after the sink has the rows: for Kafka,
//!   when every record was acknowledged; for Parquet, when the file holding
//!   them was renamed into place. A member killed at any point therefore
//!   loses nothing; the rows after its last commit are read again by
//!   whoever holds the partition next (at-least-once: those may repeat).
//! - a stop request (SIGTERM: preemption, pause, delete, scale-down)
//!   finishes the micro-batch in hand, commits the open file and the
//!   offsets, and exits cleanly, so a paused or preempted pipeline resumes
//!   without repeats.
//! - a message that cannot be decoded follows `on_error` and never stops a
//!   healthy member unless `on_error = "fail"`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use cohort_connectors::json::JsonDecoder;
use cohort_connectors::kafka::{KafkaSink, KafkaSource, Offsets};
use cohort_connectors::parquet::{ParquetSink, Roll};
use cohort_connectors::schema::schema_of;
use datafusion::prelude::{SessionConfig, SessionContext};
use rdkafka::Message;

use crate::config::{OnError, PipelineConfig, SinkConfig, query_only};
use crate::{Error, Result};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Counters a member reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub records_in: u64,
    pub records_out: u64,
    pub bad: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub commits: u64,
}

enum Sink {
    Parquet(ParquetSink),
    Kafka(KafkaSink),
}

/// Runs a member until `stop` is set (then it commits and returns Ok) or
/// a fatal error. `brokers` is used where the config names none; `id`
/// names the member to Kafka and in file names; `committed` counts the
/// records whose offsets were committed (for whoever watches progress).
pub fn run(config: &PipelineConfig, brokers: &str, id: &str, stop: &AtomicBool, committed: &AtomicU64) -> Result<Counters> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::Invalid {
        field: "runtime".into(),
        message: e.to_string(),
    })?;
    let brokers = config.brokers.as_deref().unwrap_or(brokers);
    let output_schema = runtime.block_on(config.output_schema())?;
    let used = runtime.block_on(config.used_columns())?;
    let decoder = JsonDecoder::new(schema_of(&used)?);
    let source = KafkaSource::open(brokers, &config.topic, &config.group, config.start(), id)?;
    let mut sink = match &config.sink {
        SinkConfig::Parquet { path, roll_bytes, roll_ms } => {
            let roll = Roll { bytes: *roll_bytes, after: Duration::from_millis(*roll_ms) };
            Sink::Parquet(ParquetSink::open(path, output_schema, id, roll)?)
        }
        SinkConfig::Kafka { brokers: to, topic } => Sink::Kafka(KafkaSink::open(to.as_deref().unwrap_or(brokers), topic, id)?),
    };
    let dead_letters = match config.on_error {
        OnError::DeadLetter => Some(KafkaSink::open(brokers, &format!("{}.dlq", config.topic), id)?),
        _ => None,
    };
    // One member is one core: no repartitioning of a micro-batch across threads.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let mut counters = Counters::default();
    let mut pending = Offsets::new();
    let mut pending_records = 0u64;
    let mut reported = (Instant::now(), counters.clone());
    tracing::info!(pipeline = %config.name, member = id, topic = %config.topic, group = %config.group, "member started");

    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping {
            let messages = source.poll_batch(config.max_records, config.max_latency());
            if !messages.is_empty() {
                counters.records_in += messages.len() as u64;
                pending_records += messages.len() as u64;
                let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload().unwrap_or_default()).collect();
                let decoded = decoder.decode(&payloads)?;
                for (i, why) in &decoded.bad {
                    counters.bad += 1;
                    let m = &messages[*i];
                    match (config.on_error, &dead_letters) {
                        (OnError::DeadLetter, Some(dlq)) => {
                            dlq.send(m.key(), payloads[*i], Some(("cohort.error", why)))?;
                            counters.dead_lettered += 1;
                        }
                        (OnError::Fail, _) => {
                            return Err(Error::BadRecord(format!(
                                "partition {} offset {}: {why}",
                                m.partition(),
                                m.offset()
                            )));
                        }
                        _ => counters.skipped += 1,
                    }
                }
                for m in &messages {
                    let next = pending.entry(m.partition()).or_insert(0);
                    *next = (*next).max(m.offset() + 1);
                }
                drop(messages);
                let out = transform(&runtime, &ctx, config.sql.as_deref(), decoded.batch)?;
                for batch in &out {
                    counters.records_out += batch.num_rows() as u64;
                    match &mut sink {
                        Sink::Parquet(p) => p.write(batch)?,
                        Sink::Kafka(k) => send_json(k, batch)?,
                    }
                }
            }
        }
        // Make what is pending safe, then commit its offsets.
        let safe_now = match &mut sink {
            Sink::Kafka(k) => {
                k.deliver(DELIVERY_TIMEOUT)?;
                true
            }
            Sink::Parquet(p) if p.due() || (stopping && p.pending()) => {
                if let Some(path) = runtime.block_on(p.commit())? {
                    tracing::debug!(file = %path, "file committed");
                }
                true
            }
            Sink::Parquet(p) => !p.pending(),
        };
        if safe_now && !pending.is_empty() {
            if let Some(dlq) = &dead_letters {
                dlq.deliver(DELIVERY_TIMEOUT)?;
            }
            match source.commit(&pending) {
                Ok(()) => {
                    counters.commits += 1;
                    committed.fetch_add(pending_records, Ordering::SeqCst);
                }
                // Lost the partitions in a rebalance: the new owner re-reads (at-least-once).
                Err(e) => tracing::warn!(error = %e, "offset commit failed; the next owner re-reads these records"),
            }
            pending.clear();
            pending_records = 0;
        }
        if reported.0.elapsed() >= REPORT_EVERY || stopping {
            report(&config.name, id, &reported, &counters);
            reported = (Instant::now(), counters.clone());
        }
        if stopping {
            tracing::info!(pipeline = %config.name, member = id, "stopped at committed offsets");
            return Ok(counters);
        }
    }
}

fn transform(
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
    sql: Option<&str>,
    batch: RecordBatch,
) -> Result<Vec<RecordBatch>> {
    let Some(sql) = sql else { return Ok(vec![batch]) };
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    ctx.deregister_table("source")?;
    ctx.register_batch("source", batch)?;
    let out = runtime.block_on(async { ctx.sql_with_options(sql, query_only()).await?.collect().await })?;
    Ok(out)
}

/// Each row as one JSON object message.
fn send_json(sink: &KafkaSink, batch: &RecordBatch) -> Result<()> {
    let mut writer = LineDelimitedWriter::new(Vec::new());
    writer.write(batch).map_err(cohort_connectors::Error::from)?;
    writer.finish().map_err(cohort_connectors::Error::from)?;
    let text = writer.into_inner();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        sink.send(None, line, None)?;
    }
    Ok(())
}

/// One progress line for `cohort logs`: totals and rates since the last.
fn report(pipeline: &str, id: &str, last: &(Instant, Counters), now: &Counters) {
    let secs = last.0.elapsed().as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a - b) as f64 / secs;
    println!(
        "pipeline {pipeline} member {id}: in {} ({:.0}/s), out {} ({:.0}/s), bad {} (dead-lettered {}, skipped {}), commits {}",
        now.records_in,
        rate(now.records_in, last.1.records_in),
        now.records_out,
        rate(now.records_out, last.1.records_out),
        now.bad,
        now.dead_lettered,
        now.skipped,
        now.commits
    );
}

