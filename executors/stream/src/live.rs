//! `[sink.store]`: each micro-batch appended whole to a live table on the
//! coordinator, by Flight SQL bulk ingest. The ingest carries the Kafka
//! offsets it covers; the table keeps, per source, the next offset it
//! lacks (`cohort.live_offsets`). A member reads those when its
//! partitions change and skips the records the table already holds, so
//! a member that restarts from older committed offsets (killed between
//! an append and its commit) appends nothing twice: exactly once into the
//! table, though delivery from Kafka is at least once.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Int32Array, Int64Array};
use arrow::record_batch::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption};
use futures::TryStreamExt;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// The Flight SQL ingest options Cohort reads (see the coordinator's
/// `do_put_statement_ingest`).
const SOURCE_OPTION: &str = "cohort.source";
const OFFSETS_OPTION: &str = "cohort.offsets";
const KEY_OPTION: &str = "cohort.key";

/// How long an append is tried again while the coordinator or its
/// stores cannot take it (restarting, say) before the member gives up and
/// is restarted; an ingest the table refuses is not tried again.
const INGEST_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// The first pause between tries; it doubles up to [`INGEST_PAUSE_MAX`].
const INGEST_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
const INGEST_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(4);

/// How a member reaches the coordinator that keeps live tables.
#[derive(Clone, Debug)]
pub struct Coordinator {
    pub endpoint: Endpoint,
    /// The member's job token.
    pub token: Option<String>,
}

pub struct LiveSink {
    client: FlightSqlServiceClient<Channel>,
    table: String,
    /// `group@topic`: whose offsets these are.
    source: String,
    /// The columns the table upserts by; empty: it takes appends.
    key: Vec<String>,
    /// Per Kafka partition, the next offset the table lacks, as last read.
    applied: BTreeMap<i32, i64>,
    /// The assignment `applied` was read for.
    read_for: Option<Vec<i32>>,
}

/// Whether an ingest may succeed if sent again: the coordinator or a
/// store could not be reached or was full, rather than refusing the rows.
fn is_transient(e: &FlightError) -> bool {
    match e {
        FlightError::Tonic(status) => !matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::AlreadyExists
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unimplemented
        ),
        _ => true,
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Live(format!("{what}: {e}"))
}

impl LiveSink {
    pub fn open(
        runtime: &Runtime,
        coordinator: &Coordinator,
        table: &str,
        source: String,
        key: Vec<String>,
    ) -> LiveSink {
        let channel = {
            let _in_runtime = runtime.enter();
            coordinator.endpoint.clone().connect_lazy()
        };
        let mut client = FlightSqlServiceClient::new(channel);
        if let Some(token) = &coordinator.token {
            client.set_token(token.clone());
        }
        LiveSink { client, table: table.to_string(), source, key, applied: BTreeMap::new(), read_for: None }
    }

    /// Reads how far the table got for this source, if the member's
    /// partitions changed since it last did.
    pub fn sync(&mut self, runtime: &Runtime, mut assigned: Vec<i32>) -> Result<()> {
        assigned.sort_unstable();
        if self.read_for.as_ref() == Some(&assigned) {
            return Ok(());
        }
        let quote = |s: &str| s.replace('\'', "''");
        let sql = format!(
            "SELECT partition, next_offset FROM cohort.live_offsets WHERE table_name = '{}' AND source = '{}'",
            quote(&self.table),
            quote(&self.source)
        );
        let batches = runtime.block_on(async {
            let info =
                self.client.execute(sql, None).await.map_err(|e| failed("cannot read the table's offsets", e))?;
            let mut batches = Vec::new();
            for endpoint in info.endpoint {
                let ticket = endpoint.ticket.ok_or_else(|| failed("cannot read the table's offsets", "no ticket"))?;
                let stream =
                    self.client.do_get(ticket).await.map_err(|e| failed("cannot read the table's offsets", e))?;
                batches.extend(
                    stream.try_collect::<Vec<_>>().await.map_err(|e| failed("cannot read the table's offsets", e))?,
                );
            }
            Ok::<_, Error>(batches)
        })?;
        self.applied.clear();
        for batch in &batches {
            let partitions = batch.column(0).as_any().downcast_ref::<Int32Array>();
            let next = batch.column(1).as_any().downcast_ref::<Int64Array>();
            let (Some(partitions), Some(next)) = (partitions, next) else {
                return Err(failed("cannot read the table's offsets", "unexpected columns"));
            };
            self.applied.extend(partitions.values().iter().copied().zip(next.values().iter().copied()));
        }
        tracing::debug!(table = %self.table, applied = ?self.applied, "live table offsets read");
        self.read_for = Some(assigned);
        Ok(())
    }

    /// Whether the table already holds the record at `offset` of `partition`.
    pub fn holds(&self, partition: i32, offset: i64) -> bool {
        self.applied.get(&partition).is_some_and(|next| offset < *next)
    }

    /// Appends one micro-batch, which covers `ranges` (`[first, next)` per partition).
    pub fn append(
        &mut self,
        runtime: &Runtime,
        batches: Vec<RecordBatch>,
        ranges: BTreeMap<i32, (i64, i64)>,
    ) -> Result<()> {
        let mut command = CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: TableNotExistOption::Create.into(),
                if_exists: TableExistsOption::Append.into(),
            }),
            table: self.table.clone(),
            schema: None,
            catalog: None,
            temporary: false,
            transaction_id: None,
            options: HashMap::from([
                (SOURCE_OPTION.to_string(), self.source.clone()),
                (OFFSETS_OPTION.to_string(), serde_json::to_string(&ranges).expect("offsets serialize")),
            ]),
        };
        if !self.key.is_empty() {
            command.options.insert(KEY_OPTION.to_string(), self.key.join(","));
        }
        // An ingest whose answer was lost (the coordinator restarted, say)
        // is sent again: the table drops it if it has those offsets already.
        let started = std::time::Instant::now();
        let (mut attempt, mut pause) = (1, INGEST_PAUSE);
        loop {
            let rows = futures::stream::iter(batches.clone().into_iter().map(Ok));
            match runtime.block_on(self.client.execute_ingest(command.clone(), rows)) {
                Ok(_) => break,
                Err(e) if is_transient(&e) && started.elapsed() < INGEST_RETRY_FOR => {
                    tracing::warn!(table = %self.table, attempt, error = %e, "append failed; sending it again");
                    runtime.block_on(async { tokio::time::sleep(pause).await });
                    (attempt, pause) = (attempt + 1, (pause * 2).min(INGEST_PAUSE_MAX));
                }
                Err(e) => return Err(failed(&format!("cannot append to live table `{}`", self.table), e)),
            }
        }
        for (partition, (_, next)) in ranges {
            let at = self.applied.entry(partition).or_default();
            *at = (*at).max(next);
        }
        Ok(())
    }
}
