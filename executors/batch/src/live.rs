//! Live tables: in-memory tables that grow while SQL reads them. Rows
//! arrive by Arrow Flight SQL bulk ingest (`CommandStatementIngest`: what
//! ADBC's `adbc_ingest` sends, and what a pipeline with `[sink.store]`
//! sends for each micro-batch); each ingest becomes one stored partition,
//! put into a store first and published after, all at once. A query takes
//! the list of partitions when it is planned, so it reads whole ingests
//! only, never half of one, and never one twice.
//!
//! An ingest may say where its rows came from: a source (a pipeline's
//! group and topic) and, per Kafka partition, the offsets it covers. The
//! table remembers how far each source got (`cohort.live_offsets`), drops
//! an ingest it already has, and refuses one that overlaps it, so that a
//! pipeline member that restarts from older committed offsets appends
//! nothing twice: it skips what the table already holds.
//!
//! A table made with a key (ingest option `cohort.key`, or a pipeline's
//! `[sink.store] key`) takes upserts: an ingest's row replaces the row of
//! the same key, whichever partition holds it. Stored partitions are never
//! rewritten for that; the replaced row is marked deleted in its
//! partition's bitmap ([`DeletedRows`](crate::cached::DeletedRows)), which a query takes with the
//! partition list when it is planned, and a compaction leaves it out. A
//! table keeps, per key, where its row is now; at a restart that is made
//! again by reading the snapshots in order.
//!
//! Ingests are compacted in the background, tiered as an LSM tree is:
//! [`COMPACT_FANOUT`] neighbouring partitions of one level (one ingest,
//! then 8, 64, ...) and below [`COMPACT_BELOW_BYTES`] become one, so a
//! table fed a micro-batch a second for a day holds tens of partitions,
//! not 86,400, and a row is rewritten a few times at most. The merged
//! partition is written to disk and put into a store while ingests go on,
//! then replaces the ones it holds, all at once (a row an upsert replaced
//! meanwhile is marked then); those stay in their stores until the
//! queries that may read them have ended ([`crate::readers`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::cached::{Placement, Usage};
use crate::store::{self, PartId};
use crate::{Error, Result, SqlEngine};

/// Partitions merged into one by a compaction.
pub const COMPACT_FANOUT: usize = 8;
/// Partitions this big are merged no more.
pub const COMPACT_BELOW_BYTES: u64 = 8 << 20;
/// The longest replaced partitions wait for the queries that may read
/// them (a client that never reads its result would hold them forever).
const READER_GRACE: Duration = Duration::from_secs(15 * 60);

/// Live tables by name.
pub(crate) type LiveRegistry = Arc<Mutex<BTreeMap<String, Arc<LiveEntry>>>>;

/// What an ingest does when the table is there, or is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestMode {
    /// Create the table if it does not exist (else: it must).
    pub create: bool,
    pub if_exists: IfExists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    Append,
    Fail,
    /// Drop what it holds and start again with these rows.
    Replace,
}

/// Where an ingest's rows came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffsets {
    /// Names the stream: a pipeline's `group@topic`.
    pub source: String,
    /// Per Kafka partition, `[first, next)` offsets of the records read.
    pub ranges: BTreeMap<i32, (i64, i64)>,
}

/// One ingest: rows, and what to do with the table.
#[derive(Clone, Debug)]
pub struct Ingest {
    pub mode: IngestMode,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub from: Option<SourceOffsets>,
    /// Upsert by these columns (the table's key, set when it is made).
    pub key: Option<Vec<String>>,
}

/// What an ingest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub rows: u64,
    /// The table already had these offsets: nothing was appended.
    pub duplicate: bool,
}

/// A live table: its partitions, in the order they were appended.
#[derive(Debug)]
pub struct LiveEntry {
    pub name: String,
    pub schema: SchemaRef,
    /// Its stored partitions' version: one per table, so that a table
    /// dropped and made again never reads the old one's partitions.
    version: u64,
    pub created_ms: i64,
    /// The columns it upserts by; none: it takes appends.
    pub key: Option<TableKey>,
    state: Mutex<LiveState>,
    /// One change at a time (ingest, compaction, repair, drop):
    /// partitions are numbered and offsets checked in order.
    appending: tokio::sync::Mutex<()>,
    compacting: AtomicBool,
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct LiveState {
    /// In the order of the ingests they hold.
    parts: Vec<LivePart>,
    /// Per source, per Kafka partition: the next offset not yet appended.
    applied: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The next ingest's number: snapshot files are named by the ingests they hold.
    next_ingest: u64,
    /// The next stored partition's number.
    next_partition: u32,
    /// A keyed table's rows: per key (in the row format), the stored
    /// partition and the row in it that holds it now.
    keys: HashMap<Key, (u32, u32)>,
}

impl LiveState {
    /// Records that partition `partition` (already in `parts`) holds the
    /// rows of `keys`, in order (none: a row without a key), and marks the
    /// rows they replace deleted.
    fn upsert(&mut self, partition: u32, keys: Vec<Option<Key>>) {
        let mut replaced: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (row, key) in keys.into_iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some((was_in, was_row)) = self.keys.insert(key, (partition, row as u32)) {
                replaced.entry(was_in).or_default().push(was_row);
            }
        }
        for (was_in, rows) in replaced {
            if let Some(part) = self.parts.iter_mut().find(|p| p.placement.part.partition == was_in) {
                part.delete(&rows);
            }
        }
    }
}

#[derive(Clone, Debug)]
struct LivePart {
    placement: Placement,
    /// The ingests it holds, `first..=last`: one until compacted.
    ingests: (u64, u64),
    /// Where those ingests came from.
    from: Vec<SourceOffsets>,
    /// Rows stored, deleted ones too (`placement.rows` counts the others).
    stored_rows: u64,
}

impl LivePart {
    /// 0 for one ingest, 1 for [`COMPACT_FANOUT`] of them, 2 for its square...
    fn level(&self) -> u32 {
        (self.ingests.1 - self.ingests.0 + 1).ilog(COMPACT_FANOUT as u64)
    }

    /// Marks `rows` deleted: copied on write, so that the queries planned
    /// before keep reading what they planned with.
    fn delete(&mut self, rows: &[u32]) {
        let deleted = Arc::make_mut(self.placement.deleted.get_or_insert_with(Default::default));
        for row in rows {
            deleted.insert(*row);
        }
        let live = self.stored_rows - deleted.len();
        self.placement.rows = live;
        // Bounds and null counts still hold, no longer exactly; the row count does.
        if let Some(stats) = &self.placement.stats {
            let mut stats = stats.as_ref().clone().to_inexact();
            stats.num_rows = datafusion::common::stats::Precision::Exact(live as usize);
            self.placement.stats = Some(Arc::new(stats));
        }
    }
}

/// A merge written and stored, not yet swapped in for its run.
struct Merge {
    run: Vec<LivePart>,
    part: LivePart,
    /// A keyed table's: each merged row's key, and the partition and row
    /// it was read from (to tell, at the swap, which are still current).
    keys: Vec<Option<Key>>,
    origins: Vec<(u32, u32)>,
    /// Its snapshot, under a name a restart ignores.
    staged: Option<PathBuf>,
}

/// A key of a keyed live table, in Arrow's row format: comparable as bytes.
type Key = Box<[u8]>;

/// The columns a keyed live table upserts by.
#[derive(Debug)]
pub struct TableKey {
    pub columns: Vec<String>,
    indices: Vec<usize>,
    rows: RowConverter,
}

impl TableKey {
    fn new(table: &str, schema: &Schema, columns: &[String]) -> Result<TableKey> {
        if columns.is_empty() || columns.iter().collect::<HashSet<_>>().len() != columns.len() {
            return Err(Error::Invalid(format!(
                "live table `{table}`: a key names one column or more, each once (got ({}))",
                columns.join(", ")
            )));
        }
        let indices = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    Error::Invalid(format!(
                        "live table `{table}`: key column `{c}` is not one of its columns ({})",
                        have.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let fields = indices.iter().map(|i| SortField::new(schema.field(*i).data_type().clone())).collect();
        let rows = RowConverter::new(fields).map_err(|e| {
            Error::Invalid(format!("live table `{table}`: its key ({}) cannot be compared: {e}", columns.join(", ")))
        })?;
        Ok(TableKey { columns: columns.to_vec(), indices, rows })
    }

    /// Each row's key; none where a key column is null.
    fn of(&self, batch: &RecordBatch) -> Result<Vec<Option<Key>>> {
        let columns: Vec<ArrayRef> = self.indices.iter().map(|i| batch.column(*i).clone()).collect();
        let rows = self.rows.convert_columns(&columns).map_err(|e| Error::DataFusion(e.into()))?;
        let null = |row: usize| columns.iter().any(|c| c.is_null(row));
        Ok((0..batch.num_rows()).map(|row| (!null(row)).then(|| rows.row(row).as_ref().into())).collect())
    }

    /// The keys of the rows of `batches`, in order.
    fn of_all(&self, batches: &[RecordBatch]) -> Result<Vec<Option<Key>>> {
        let mut keys = Vec::new();
        for batch in batches {
            keys.extend(self.of(batch)?);
        }
        Ok(keys)
    }

    /// `batches` as one batch with each key's last row only, and its keys;
    /// rows whose key is null are left out, and counted.
    fn latest(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(RecordBatch, Vec<Option<Key>>, usize)> {
        let batch = arrow::compute::concat_batches(schema, batches).map_err(|e| Error::DataFusion(e.into()))?;
        let keys = self.of(&batch)?;
        let mut seen = HashSet::new();
        let mut keep = vec![false; keys.len()];
        for (row, key) in keys.iter().enumerate().rev() {
            if let Some(key) = key {
                keep[row] = seen.insert(key.clone());
            }
        }
        let null_keys = keys.iter().filter(|k| k.is_none()).count();
        let kept: Vec<Option<Key>> =
            keys.into_iter().zip(&keep).filter(|(_, keep)| **keep).map(|(key, _)| key).collect();
        let batch =
            arrow::compute::filter_record_batch(&batch, &keep.into()).map_err(|e| Error::DataFusion(e.into()))?;
        Ok((batch, kept, null_keys))
    }
}

impl LiveEntry {
    pub fn parts(&self) -> Vec<Placement> {
        self.state.lock().expect("live table").parts.iter().map(|p| p.placement.clone()).collect()
    }

    pub fn rows(&self) -> u64 {
        self.state.lock().expect("live table").parts.iter().map(|p| p.placement.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("live table").parts.iter().map(|p| p.placement.bytes).sum()
    }

    fn new(name: &str, schema: SchemaRef, key: Option<TableKey>, version: u64, state: LiveState) -> LiveEntry {
        LiveEntry {
            name: name.to_string(),
            schema,
            version,
            created_ms: crate::cached::now_ms(),
            key,
            state: Mutex::new(state),
            appending: tokio::sync::Mutex::new(()),
            compacting: AtomicBool::new(false),
            usage: Usage::new(crate::cached::now_ms()),
        }
    }

    fn applied(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        self.state.lock().expect("live table").applied.clone()
    }
}

/// The catalog's provider of a live table.
#[derive(Debug)]
pub struct LiveTable(pub Arc<LiveEntry>);

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // The snapshot: what was published when the query was planned.
        let parts = self.0.parts();
        self.0.usage.scan(&self.0.name, &self.0.schema, projection, state.config().target_partitions(), parts)
    }
}

impl SqlEngine {
    /// Appends `batches` to live table `name` as one partition, put into
    /// the store among `stores` that holds the least of it. Live and
    /// cached tables hold at most `budget` bytes together: cached tables
    /// are evicted to make room, live ones never are.
    pub async fn append_live(&self, name: &str, ingest: Ingest, stores: &[Url], budget: u64) -> Result<Appended> {
        let name = live_name(name);
        let name = name.as_str();
        let Ingest { mode, schema, batches, from, key } = ingest;
        if name.trim().is_empty() {
            return Err(Error::Invalid("an ingest needs a table name".into()));
        }
        if schema.fields().is_empty() {
            return Err(Error::Invalid(format!("an ingest into `{name}` has no columns")));
        }
        let mut columns = HashSet::new();
        if let Some(twice) = schema.fields().iter().map(|f| f.name()).find(|c| !columns.insert(*c)) {
            return Err(Error::Invalid(format!("ingest into `{name}`: column `{twice}` is there twice")));
        }
        let (schema, batches) = without_dictionaries(schema, batches)?;
        let entry = self.live_entry_for(name, mode, &schema, key.as_deref()).await?;
        let _one_at_a_time = entry.appending.lock().await;
        let batches = conform(&entry, &schema, batches)?;
        if let Some(from) = &from
            && already_applied(&entry, from)?
        {
            return Ok(Appended { rows: 0, duplicate: true });
        }
        let (batches, keys) = match &entry.key {
            Some(key) => {
                let (batch, keys, null_keys) = key.latest(&entry.schema, &batches)?;
                if null_keys > 0 {
                    tracing::warn!(table = name, rows = null_keys, "rows with a null key left out of an upsert");
                }
                (vec![batch], Some(keys))
            }
            None => (batches, None),
        };
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows > 0 {
            if stores.is_empty() {
                return Err(Error::Unavailable("no store executor is serving".into()));
            }
            let bytes: u64 = batches.iter().map(store::rows_bytes).sum();
            self.evict_for(name, bytes, budget).await;
            let held = self.held_bytes(name) + entry.bytes();
            if held + bytes > budget {
                return Err(Error::DataFusion(DataFusionError::ResourcesExhausted(format!(
                    "live table `{name}` cannot grow by {bytes} bytes: cached and live tables hold {held} of \
                     {budget} (--sql-cache-memory), and only cached tables are evicted"
                ))));
            }
            let (ingest, partition) = {
                let mut state = entry.state.lock().expect("live table");
                state.next_partition += 1;
                (state.next_ingest, state.next_partition - 1)
            };
            let ingests = (ingest, ingest);
            let from: Vec<SourceOffsets> = from.iter().cloned().collect();
            // On disk first: what a store loses, or a restarted coordinator forgot, is put back from there.
            let snapshot = self.snapshot_dir(name).map(|dir| snapshot_path(&dir, ingests));
            if let Some(path) = snapshot.clone() {
                let (schema, batches, from) = (entry.schema.clone(), batches.clone(), from.clone());
                let key = entry.key.as_ref().map(|k| k.columns.clone());
                tokio::task::spawn_blocking(move || {
                    let dir = path.parent().expect("a snapshot is in its table's directory");
                    std::fs::create_dir_all(dir)
                        .map_err(|source| Error::Io { context: format!("cannot create {}", dir.display()), source })?;
                    write_snapshot(&path, &schema, &batches, &from, key)
                })
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
            }
            let placement = match self.put_part(&entry, partition, stores, batches).await {
                Ok(placement) => placement,
                Err(e) => {
                    // Not appended: its snapshot must not bring it back after a restart.
                    if let Some(path) = &snapshot {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(Error::Unavailable(format!("cannot append to `{name}`: {e}")));
                }
            };
            let (partition, stored_rows) = (placement.part.partition, placement.rows);
            let mut state = entry.state.lock().expect("live table");
            state.parts.push(LivePart { placement, ingests, from, stored_rows });
            state.next_ingest += 1;
            if let Some(keys) = keys {
                state.upsert(partition, keys);
            }
        }
        if let Some(from) = from {
            let mut state = entry.state.lock().expect("live table");
            let applied = state.applied.entry(from.source).or_default();
            for (partition, (_, next)) in from.ranges {
                let at = applied.entry(partition).or_default();
                *at = (*at).max(next);
            }
        }
        tracing::debug!(table = name, rows, "appended to a live table");
        Ok(Appended { rows, duplicate: false })
    }

    /// The live table `name`, made now if `mode` allows.
    async fn live_entry_for(
        &self,
        name: &str,
        mode: IngestMode,
        schema: &SchemaRef,
        key: Option<&[String]>,
    ) -> Result<Arc<LiveEntry>> {
        let existing = self.live_registry().lock().expect("live tables").get(name).cloned();
        match (existing, mode.if_exists) {
            (Some(entry), IfExists::Append) => {
                let has = entry.key.as_ref().map(|k| k.columns.as_slice());
                return match (has, key) {
                    (Some(has), Some(key)) if has != key => Err(Error::Invalid(format!(
                        "live table `{name}` upserts by ({}); this ingest by ({})",
                        has.join(", "),
                        key.join(", ")
                    ))),
                    (None, Some(key)) => Err(Error::Invalid(format!(
                        "live table `{name}` was made without a key and takes appends; this ingest upserts by ({})",
                        key.join(", ")
                    ))),
                    _ => Ok(entry),
                };
            }
            (Some(_), IfExists::Fail) => {
                return Err(Error::Invalid(format!("live table `{name}` exists (ingest with mode append or replace)")));
            }
            (Some(_), IfExists::Replace) => {
                self.drop_live(name).await?;
            }
            (None, _) => {}
        }
        if self.context().table_exist(name)? {
            return Err(Error::Invalid(format!(
                "`{name}` is not a live table (ingest appends to in-memory tables; INSERT INTO appends files)"
            )));
        }
        if !mode.create {
            return Err(Error::DataFusion(DataFusionError::Plan(format!("live table `{name}` not found"))));
        }
        // Any column may be null: later ingests are checked by name and type only.
        let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let schema = Arc::new(Schema::new(fields));
        let key = key.map(|key| TableKey::new(name, &schema, key)).transpose()?;
        let entry = Arc::new(LiveEntry::new(name, schema, key, self.next_cache_version(), LiveState::default()));
        self.context().register_table(name, Arc::new(LiveTable(entry.clone())))?;
        self.live_registry().lock().expect("live tables").insert(name.to_string(), entry.clone());
        tracing::info!(table = name, "live table created");
        Ok(entry)
    }

    /// Drops live table `name`; whether there was one.
    pub async fn drop_live(&self, name: &str) -> Result<bool> {
        let name = live_name(name);
        let name = name.as_str();
        let Some(entry) = self.live_registry().lock().expect("live tables").remove(name) else {
            return Ok(false);
        };
        self.context().deregister_table(name)?;
        // An ingest or a compaction under way ends first: neither may write its file after the directory is gone.
        let _after_any_change = entry.appending.lock().await;
        self.drop_from_stores(name, entry.parts().into_iter().map(|p| p.store).filter(|s| !s.is_empty())).await;
        if let Some(dir) = self.snapshot_dir(name) {
            std::fs::remove_dir_all(&dir)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .map_err(|source| Error::Io { context: format!("cannot remove {}", dir.display()), source })?;
        }
        Ok(true)
    }

    /// Where live table `name` keeps its snapshots, if the engine keeps any.
    fn snapshot_dir(&self, name: &str) -> Option<PathBuf> {
        self.settings().live_dir.as_ref().map(|dir| dir.join(dir_name(name)))
    }

    /// Registers the live tables kept on disk (at start): their rows are
    /// put into the stores by the first query that reads them
    /// ([`SqlEngine::repair_live`]). Those that cannot be read are returned with why.
    pub fn restore_live(&self) -> Vec<(String, Error)> {
        let Some(root) = self.settings().live_dir.clone() else { return Vec::new() };
        let Ok(dirs) = std::fs::read_dir(&root) else { return Vec::new() };
        let mut failed = Vec::new();
        for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
            let name = live_name(&table_name(&dir.file_name().to_string_lossy()));
            // Written by a version that kept the name's case (`Events`): moved
            // to where this one looks for it, unless a table is there already.
            let mut path = dir.path();
            let canonical = root.join(dir_name(&name));
            if canonical != path && !canonical.exists() && std::fs::rename(&path, &canonical).is_ok() {
                path = canonical;
            }
            if let Err(e) = self.restore_one(&name, &path) {
                tracing::warn!(table = %name, error = %e, "cannot restore a live table");
                failed.push((name, e));
            }
        }
        failed
    }

    fn restore_one(&self, name: &str, dir: &Path) -> Result<()> {
        let mut files: Vec<((u64, u64), PathBuf)> = Vec::new();
        for path in std::fs::read_dir(dir)?.flatten().map(|f| f.path()) {
            match path.extension().and_then(|e| e.to_str()) {
                // Written by an ingest or a merge that never finished.
                Some("tmp" | "merging") => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => files.extend(path.file_name().and_then(|n| n.to_str()).and_then(ingests_of).map(|i| (i, path))),
            }
        }
        // The widest file first where a compaction's output and its inputs are both there.
        files.sort_by_key(|((first, last), _)| (*first, std::cmp::Reverse(*last)));
        let version = self.next_cache_version();
        let mut state = LiveState::default();
        // The table's columns and key, as its first snapshot says.
        let mut table: Option<(SchemaRef, Option<TableKey>)> = None;
        for ((first, last), path) in files {
            if last < state.next_ingest {
                // A compaction ended before it removed its inputs: its output holds their rows.
                tracing::info!(file = %path.display(), "removing a snapshot a compaction replaced");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if first != state.next_ingest {
                return Err(Error::Invalid(format!("{}: ingest {} is missing", dir.display(), state.next_ingest)));
            }
            let snapshot = read_snapshot(&path)?;
            if table.is_none() {
                let key = snapshot.key.as_ref().map(|key| TableKey::new(name, &snapshot.schema, key)).transpose()?;
                table = Some((snapshot.schema.clone(), key));
            }
            let (schema, key) = table.as_ref().expect("read above");
            let Snapshot { batches, from, .. } = snapshot;
            let partition = state.next_partition;
            let placement = Placement {
                store: String::new(),
                part: PartId { table: name.to_string(), version, partition },
                rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
                bytes: batches.iter().map(store::rows_bytes).sum(),
                shm: None,
                stats: Some(Arc::new(crate::cached::partition_statistics(schema, &batches))),
                deleted: None,
            };
            for from in &from {
                let applied = state.applied.entry(from.source.clone()).or_default();
                for (partition, (_, next)) in &from.ranges {
                    let at = applied.entry(*partition).or_default();
                    *at = (*at).max(*next);
                }
            }
            let stored_rows = placement.rows;
            state.parts.push(LivePart { placement, ingests: (first, last), from, stored_rows });
            state.next_ingest = last + 1;
            state.next_partition += 1;
            // Replayed in order, the upserts mark the same rows deleted as they did.
            if let Some(key) = key {
                state.upsert(partition, key.of_all(&batches)?);
            }
        }
        let Some((schema, key)) = table else { return Ok(()) };
        if self.context().table_exist(name)? {
            return Err(Error::Invalid(format!("a table `{name}` exists already")));
        }
        let partitions = state.parts.len();
        let entry = Arc::new(LiveEntry::new(name, schema, key, version, state));
        self.context().register_table(name, Arc::new(LiveTable(entry.clone())))?;
        self.live_registry().lock().expect("live tables").insert(name.to_string(), entry.clone());
        tracing::info!(table = name, partitions, rows = entry.rows(), "live table restored from disk");
        Ok(())
    }

    /// Whether every partition of live table `name` is held where it was put.
    pub async fn live_intact(&self, name: &str) -> bool {
        let name = live_name(name);
        let name = name.as_str();
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return true;
        };
        crate::cached::missing_from_stores(self.channels(), name, &entry.parts()).await.is_empty()
    }

    /// Puts back, from its snapshots, what live table `name` lost with a
    /// store (or with a coordinator restart); how many partitions.
    pub async fn repair_live(&self, name: &str, stores: &[Url]) -> Result<usize> {
        let name = live_name(name);
        let name = name.as_str();
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return Ok(0);
        };
        let _one_at_a_time = entry.appending.lock().await;
        let lost = crate::cached::missing_from_stores(self.channels(), name, &entry.parts()).await;
        if lost.is_empty() {
            return Ok(0);
        }
        let dir = self.snapshot_dir(name).ok_or_else(|| {
            Error::Unavailable(format!("live table `{name}` lost partitions with a store and keeps no snapshots"))
        })?;
        if stores.is_empty() {
            return Err(Error::Unavailable("no store executor is serving".into()));
        }
        let mut repaired = 0;
        let count = entry.state.lock().expect("live table").parts.len();
        for i in 0..count {
            let LivePart { placement, ingests, .. } = entry.state.lock().expect("live table").parts[i].clone();
            if !lost.contains(&placement.store) {
                continue;
            }
            let path = snapshot_path(&dir, ingests);
            let batches = tokio::task::spawn_blocking(move || read_snapshot(&path))
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??
                .batches;
            let (target, shm) = self
                .put_somewhere(&entry, &placement.part, stores, batches)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot put back a partition of `{name}`: {e}")))?;
            let mut state = entry.state.lock().expect("live table");
            state.parts[i].placement.store = target;
            state.parts[i].placement.shm = shm;
            repaired += 1;
        }
        tracing::warn!(table = name, partitions = repaired, "live table partitions put back from disk");
        Ok(repaired)
    }

    /// Whether live table `name` has partitions to merge ([`SqlEngine::compact_live`]).
    pub fn live_needs_compaction(&self, name: &str) -> bool {
        let name = live_name(name);
        let name = name.as_str();
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return false;
        };
        run_to_merge(&entry.state.lock().expect("live table").parts).is_some()
    }

    /// Merges live table `name`'s small partitions, [`COMPACT_FANOUT`] of a
    /// level at a time, until none are left to merge; then, once the queries
    /// that may read the replaced partitions have ended, drops those from
    /// their stores. How many partitions were merged. Ingests wait only
    /// while a merge is chosen and swapped in.
    pub async fn compact_live(&self, name: &str, stores: &[Url]) -> Result<usize> {
        let name = live_name(name);
        let name = name.as_str();
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return Ok(0);
        };
        if entry.compacting.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let mut replaced = Vec::new();
        let merged = self.merge_runs(&entry, stores, &mut replaced).await;
        entry.compacting.store(false, Ordering::Release);
        if !replaced.is_empty() {
            self.drop_when_unread(&entry, replaced).await;
        }
        merged
    }

    async fn merge_runs(&self, entry: &Arc<LiveEntry>, stores: &[Url], replaced: &mut Vec<Placement>) -> Result<usize> {
        let mut merged = 0;
        while let Some(merge) = self.prepare_merge(entry, stores).await? {
            let Some(run) = self.finish_merge(entry, merge).await else { break };
            merged += run.len();
            replaced.extend(run.into_iter().map(|p| p.placement));
        }
        Ok(merged)
    }

    /// Whether `entry` is still the live table of its name (not dropped).
    fn is_current(&self, entry: &Arc<LiveEntry>) -> bool {
        let current = self.live_registry().lock().expect("live tables").get(&entry.name).cloned();
        current.is_some_and(|c| Arc::ptr_eq(&c, entry))
    }

    /// Reads, writes and stores the merge of the first run to merge, while
    /// ingests go on: only choosing the run holds them up. None: nothing
    /// to merge, or the table is gone.
    async fn prepare_merge(&self, entry: &Arc<LiveEntry>, stores: &[Url]) -> Result<Option<Merge>> {
        if stores.is_empty() {
            return Err(Error::Unavailable("no store executor is serving".into()));
        }
        let (run, partition) = {
            let _one_at_a_time = entry.appending.lock().await;
            if !self.is_current(entry) {
                return Ok(None);
            }
            let mut state = entry.state.lock().expect("live table");
            let Some(range) = run_to_merge(&state.parts) else { return Ok(None) };
            state.next_partition += 1;
            (state.parts[range].to_vec(), state.next_partition - 1)
        };
        // The run's rows as they are now; what an upsert replaces meanwhile is marked at the swap.
        let (mut batches, mut origins) = (Vec::new(), Vec::new());
        for part in &run {
            let deleted = part.placement.deleted.as_deref();
            let mut first = 0;
            for batch in self.stored_rows_of(entry, part).await? {
                let rows = first..first + batch.num_rows() as u64;
                first = rows.end;
                if entry.key.is_some() {
                    let kept = rows.clone().filter(|r| !deleted.is_some_and(|d| d.contains(*r)));
                    origins.extend(kept.map(|r| (part.placement.part.partition, r as u32)));
                }
                batches.push(match deleted {
                    Some(deleted) => deleted.drop_from(&batch, rows.start).map_err(|e| Error::DataFusion(e.into()))?,
                    None => batch,
                });
            }
        }
        let batches = coalesce(&entry.schema, batches)?;
        let keys = entry.key.as_ref().map(|key| key.of_all(&batches)).transpose()?.unwrap_or_default();
        let ingests = (run[0].ingests.0, run[run.len() - 1].ingests.1);
        let from = merge_offsets(&run);
        // Under a name a restart ignores, until it is renamed in at the swap.
        let staged = match self.snapshot_dir(&entry.name) {
            Some(dir) => {
                let path = snapshot_path(&dir, ingests).with_extension("merging");
                let (schema, batches, from, staged) =
                    (entry.schema.clone(), batches.clone(), from.clone(), path.clone());
                let key = entry.key.as_ref().map(|k| k.columns.clone());
                tokio::task::spawn_blocking(move || write_snapshot(&staged, &schema, &batches, &from, key))
                    .await
                    .map_err(|e| Error::Invalid(e.to_string()))??;
                Some(path)
            }
            None => None,
        };
        let placement = match self.put_part(entry, partition, stores, batches).await {
            Ok(placement) => placement,
            Err(e) => {
                if let Some(staged) = &staged {
                    let _ = std::fs::remove_file(staged);
                }
                return Err(Error::Unavailable(format!("cannot compact `{}`: {e}", entry.name)));
            }
        };
        let stored_rows = placement.rows;
        let part = LivePart { placement, ingests, from, stored_rows };
        Ok(Some(Merge { run, part, keys, origins, staged }))
    }

    /// Swaps `merge` in for its run, at once, if the run is still there;
    /// the replaced partitions, or none if the table changed under it.
    async fn finish_merge(&self, entry: &Arc<LiveEntry>, merge: Merge) -> Option<Vec<LivePart>> {
        let Merge { run, mut part, keys, origins, staged } = merge;
        let ingests = part.ingests;
        let _one_at_a_time = entry.appending.lock().await;
        let at = {
            let state = entry.state.lock().expect("live table");
            let at = state.parts.iter().position(|p| p.ingests.0 == ingests.0);
            at.filter(|at| {
                let now = state.parts[*at..].iter().map(|p| &p.placement.part);
                now.take(run.len()).eq(run.iter().map(|p| &p.placement.part))
            })
        };
        // Renamed in, the merge is what a restart reads (the widest file wins).
        let renamed = match (&staged, self.snapshot_dir(&entry.name)) {
            (Some(staged), Some(dir)) if at.is_some() && self.is_current(entry) => {
                std::fs::rename(staged, snapshot_path(&dir, ingests)).map_err(|e| e.to_string())
            }
            (None, _) if at.is_some() && self.is_current(entry) => Ok(()),
            _ => Err("the table changed".to_string()),
        };
        let (Some(at), Ok(())) = (at, &renamed) else {
            tracing::info!(table = %entry.name, why = ?renamed.err(), "a merge is dropped");
            if let Some(staged) = &staged {
                let _ = std::fs::remove_file(staged);
            }
            let placement = &part.placement;
            if let Ok(channel) = self.channels().flight(&placement.store) {
                let dropped = store::drop_parts(
                    channel,
                    &placement.store,
                    &entry.name,
                    entry.version,
                    vec![placement.part.partition],
                );
                let _ = dropped.await;
            }
            return None;
        };
        {
            let mut state = entry.state.lock().expect("live table");
            let partition = part.placement.part.partition;
            // A row an upsert replaced while the merge was written is marked; the others are found here now.
            let mut replaced_meanwhile = Vec::new();
            for (row, (key, origin)) in keys.into_iter().zip(&origins).enumerate() {
                let Some(key) = key else { continue };
                if state.keys.get(&key) == Some(origin) {
                    state.keys.insert(key, (partition, row as u32));
                } else {
                    replaced_meanwhile.push(row as u32);
                }
            }
            if !replaced_meanwhile.is_empty() {
                part.delete(&replaced_meanwhile);
            }
            let rows = part.placement.rows;
            state.parts.splice(at..at + run.len(), [part]);
            tracing::debug!(table = %entry.name, first = ingests.0, last = ingests.1, rows, "live table partitions merged");
        }
        if let Some(dir) = self.snapshot_dir(&entry.name) {
            // A partition rewritten alone was replaced in place, by the rename.
            for replaced in run.iter().filter(|p| p.ingests != ingests) {
                let _ = std::fs::remove_file(snapshot_path(&dir, replaced.ingests));
            }
        }
        Some(run)
    }

    /// Puts `batches` into a store as partition `partition` ([`SqlEngine::put_somewhere`]).
    async fn put_part(
        &self,
        entry: &LiveEntry,
        partition: u32,
        stores: &[Url],
        batches: Vec<RecordBatch>,
    ) -> Result<Placement, DataFusionError> {
        let part = PartId { table: entry.name.clone(), version: entry.version, partition };
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes = batches.iter().map(store::rows_bytes).sum();
        let stats = Some(Arc::new(crate::cached::partition_statistics(&entry.schema, &batches)));
        let (store, shm) = self.put_somewhere(entry, &part, stores, batches).await?;
        Ok(Placement { store, part, rows, bytes, shm, stats, deleted: None })
    }

    /// Puts `batches` as `part` into the store among `stores` that holds
    /// the least of the table or, if it cannot take them (it is gone, or
    /// full), into the next: a killed store does not fail ingests while the
    /// coordinator still lists it. Where it went, and its file in shared memory.
    async fn put_somewhere(
        &self,
        entry: &LiveEntry,
        part: &PartId,
        stores: &[Url],
        batches: Vec<RecordBatch>,
    ) -> Result<(String, Option<String>), DataFusionError> {
        let by_load = by_load(&entry.state.lock().expect("live table").parts, stores);
        let mut refused = None;
        for url in by_load {
            let put = match self.channels().flight(&url) {
                Ok(channel) => store::put(channel, &url, part, entry.schema.clone(), batches.clone()).await,
                Err(e) => Err(e),
            };
            match put {
                Ok(shm) => return Ok((url, shm)),
                Err(e) => {
                    tracing::warn!(table = %entry.name, store = %url, error = %e, "a store refused a partition; trying another");
                    refused = Some(e);
                }
            }
        }
        Err(refused.unwrap_or_else(|| DataFusionError::Execution("no store executor is serving".into())))
    }

    /// One partition's stored rows: mapped from shared memory, else from
    /// its snapshot, else from its store.
    async fn stored_rows_of(&self, entry: &LiveEntry, part: &LivePart) -> Result<Vec<RecordBatch>> {
        if let Some(path) = &part.placement.shm
            && let Some((_, batches)) = crate::shm::read(Path::new(path), None)?
        {
            return Ok(batches);
        }
        if let Some(dir) = self.snapshot_dir(&entry.name) {
            let path = snapshot_path(&dir, part.ingests);
            if path.exists() {
                return Ok(tokio::task::spawn_blocking(move || read_snapshot(&path))
                    .await
                    .map_err(|e| Error::Invalid(e.to_string()))??
                    .batches);
            }
        }
        let placement = &part.placement;
        let channel = self.channels().flight(&placement.store)?;
        let stream = store::get(channel, &placement.store, &placement.part, None).await?;
        Ok(futures::TryStreamExt::try_collect(stream).await?)
    }

    /// Drops `replaced` from their stores once every query that started
    /// before now has ended (at most [`READER_GRACE`] from now).
    async fn drop_when_unread(&self, entry: &LiveEntry, replaced: Vec<Placement>) {
        let horizon = self.in_flight().horizon();
        let since = Instant::now();
        while self.in_flight().any_before(horizon) {
            if since.elapsed() > READER_GRACE {
                tracing::warn!(table = %entry.name, "replaced partitions dropped while a query that may read them runs");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut by_store: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for p in replaced.into_iter().filter(|p| !p.store.is_empty()) {
            by_store.entry(p.store).or_default().push(p.part.partition);
        }
        for (url, partitions) in by_store {
            let dropped = match self.channels().flight(&url) {
                Ok(channel) => store::drop_parts(channel, &url, &entry.name, entry.version, partitions).await,
                Err(e) => Err(e),
            };
            // A store that is gone holds nothing anyway.
            if let Err(e) = dropped {
                tracing::warn!(table = %entry.name, store = %url, error = %e, "cannot drop replaced partitions");
            }
        }
    }

    /// Whether `name` is a live table.
    pub fn is_live(&self, name: &str) -> bool {
        let name = live_name(name);
        let name = name.as_str();
        self.live_registry().lock().expect("live tables").contains_key(name)
    }

    /// The live tables, by name.
    pub fn live(&self) -> Vec<Arc<LiveEntry>> {
        self.live_registry().lock().expect("live tables").values().cloned().collect()
    }

    /// Bytes live tables other than `except` hold.
    pub(crate) fn live_bytes(&self, except: &str) -> u64 {
        self.live().iter().filter(|e| e.name != except).map(|e| e.bytes()).sum()
    }
}

/// The first [`COMPACT_FANOUT`] neighbouring partitions of one level, each
/// below [`COMPACT_BELOW_BYTES`]: the oldest are merged first. Else a
/// partition upserts have emptied by half or more, rewritten alone.
fn run_to_merge(parts: &[LivePart]) -> Option<std::ops::Range<usize>> {
    let run = parts.windows(COMPACT_FANOUT).position(|run| {
        let level = run[0].level();
        run.iter().all(|p| p.level() == level && p.placement.bytes < COMPACT_BELOW_BYTES)
    });
    let hollow =
        || parts.iter().position(|p| p.placement.rows * 2 <= p.stored_rows && p.placement.rows < p.stored_rows);
    run.map(|at| at..at + COMPACT_FANOUT).or_else(|| hollow().map(|at| at..at + 1))
}

/// Per source and Kafka partition, the offsets `run`'s ingests cover together.
fn merge_offsets(run: &[LivePart]) -> Vec<SourceOffsets> {
    let mut merged: BTreeMap<&str, BTreeMap<i32, (i64, i64)>> = BTreeMap::new();
    for from in run.iter().flat_map(|p| &p.from) {
        let ranges = merged.entry(from.source.as_str()).or_default();
        for (partition, &(first, next)) in &from.ranges {
            let range = ranges.entry(*partition).or_insert((first, next));
            *range = (range.0.min(first), range.1.max(next));
        }
    }
    merged.into_iter().map(|(source, ranges)| SourceOffsets { source: source.to_string(), ranges }).collect()
}

/// Rows per batch of a merged partition: each ingest's rows are read in
/// batches of their own size, which may be one row.
const MERGED_BATCH_ROWS: usize = 64 * 1024;

/// `batches` in batches of about [`MERGED_BATCH_ROWS`]; bigger ones as they are.
fn coalesce(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let flush = |pending: &mut Vec<RecordBatch>, out: &mut Vec<RecordBatch>| -> Result<()> {
        if !pending.is_empty() {
            out.push(arrow::compute::concat_batches(schema, pending.iter()).map_err(|e| Error::DataFusion(e.into()))?);
            pending.clear();
        }
        Ok(())
    };
    for batch in batches {
        if pending_rows + batch.num_rows() > MERGED_BATCH_ROWS {
            flush(&mut pending, &mut out)?;
            pending_rows = 0;
        }
        pending_rows += batch.num_rows();
        pending.push(batch);
    }
    flush(&mut pending, &mut out)?;
    Ok(out)
}

/// `stores`, those that hold the fewest bytes of `parts` first.
fn by_load(parts: &[LivePart], stores: &[Url]) -> Vec<String> {
    let mut held: BTreeMap<&str, u64> = stores.iter().map(|s| (s.as_str(), 0)).collect();
    for p in parts.iter().map(|p| &p.placement) {
        if let Some(h) = held.get_mut(p.store.as_str()) {
            *h += p.bytes;
        }
    }
    let mut order: Vec<(&str, u64)> = held.into_iter().collect();
    order.sort_by_key(|(_, bytes)| *bytes);
    order.into_iter().map(|(store, _)| store.to_string()).collect()
}

/// The key, in a snapshot's footer, of the offsets its rows cover: one
/// source's (an ingest's), or a list of them (a merged partition's).
const SNAPSHOT_OFFSETS: &str = "cohort.offsets";
/// The key, in a snapshot's footer, of the table's key columns (a JSON list).
const SNAPSHOT_KEY: &str = "cohort.key";

/// One snapshot file's contents.
struct Snapshot {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    from: Vec<SourceOffsets>,
    key: Option<Vec<String>>,
}

/// `NNNNNNNN.arrow` holds ingest N; `FFFFFFFF-LLLLLLLL.arrow` ingests F to L, merged.
fn snapshot_path(dir: &Path, (first, last): (u64, u64)) -> PathBuf {
    if first == last { dir.join(format!("{first:08}.arrow")) } else { dir.join(format!("{first:08}-{last:08}.arrow")) }
}

/// The ingests a snapshot file holds, by its name.
fn ingests_of(file_name: &str) -> Option<(u64, u64)> {
    let stem = file_name.strip_suffix(".arrow")?;
    let (first, last) = match stem.split_once('-') {
        Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
        None => (stem.parse().ok()?, stem.parse().ok()?),
    };
    (first <= last).then_some((first, last))
}

/// Writes one partition's snapshot: an Arrow IPC file, synced, then
/// renamed in, with the offsets it covers in its footer, so that the rows
/// and how far they go are kept or lost together.
fn write_snapshot(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    from: &[SourceOffsets],
    key: Option<Vec<String>>,
) -> Result<()> {
    let io = |what: &str, path: &Path| {
        let context = format!("cannot {what} {}", path.display());
        move |source| Error::Io { context, source }
    };
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
    let mut writer = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), schema)
        .map_err(|e| Error::DataFusion(e.into()))?;
    let offsets = match from {
        [] => None,
        [one] => Some(serde_json::to_string(one)),
        many => Some(serde_json::to_string(many)),
    };
    if let Some(json) = offsets {
        writer.write_metadata(SNAPSHOT_OFFSETS, json.expect("offsets serialize"));
    }
    if let Some(key) = key {
        writer.write_metadata(SNAPSHOT_KEY, serde_json::to_string(&key).expect("a key serializes"));
    }
    for batch in batches {
        writer.write(batch).map_err(|e| Error::DataFusion(e.into()))?;
    }
    writer.finish().map_err(|e| Error::DataFusion(e.into()))?;
    let file = writer.into_inner().map_err(|e| Error::DataFusion(e.into()))?;
    file.into_inner()
        .map_err(|e| Error::Io { context: format!("cannot write {}", tmp.display()), source: e.into_error() })?
        .sync_all()
        .map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("publish", path))
}

fn read_snapshot(path: &Path) -> Result<Snapshot> {
    let file = std::fs::File::open(path)
        .map_err(|source| Error::Io { context: format!("cannot read {}", path.display()), source })?;
    let bad =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("{} is not a live table snapshot: {e}", path.display()));
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None).map_err(|e| bad(&e))?;
    let from = match reader.custom_metadata().get(SNAPSHOT_OFFSETS) {
        Some(json) if json.starts_with('[') => serde_json::from_str(json).map_err(|e| bad(&e))?,
        Some(json) => vec![serde_json::from_str(json).map_err(|e| bad(&e))?],
        None => Vec::new(),
    };
    let key = match reader.custom_metadata().get(SNAPSHOT_KEY) {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| bad(&e))?),
        None => None,
    };
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    Ok(Snapshot { schema, batches, from, key })
}

/// `batches` with the table's schema, or an error naming the column that differs.
fn conform(entry: &LiveEntry, schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let wanted = &entry.schema;
    let differs = wanted.fields().len() != schema.fields().len()
        || wanted
            .fields()
            .iter()
            .zip(schema.fields())
            .any(|(w, g)| w.name() != g.name() || w.data_type() != g.data_type());
    if differs {
        let describe = |s: &Schema| {
            s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
        };
        return Err(Error::Invalid(format!(
            "live table `{}` has columns ({}); this ingest has ({})",
            entry.name,
            describe(wanted),
            describe(schema)
        )));
    }
    batches
        .into_iter()
        .map(|b| RecordBatch::try_new(wanted.clone(), b.columns().to_vec()).map_err(|e| Error::DataFusion(e.into())))
        .collect()
}

/// Whether the table holds every record `from` covers already; an error if
/// it holds some of them only (the sender must skip what it has).
fn already_applied(entry: &LiveEntry, from: &SourceOffsets) -> Result<bool> {
    let applied = entry.applied().remove(&from.source).unwrap_or_default();
    let mut all = !from.ranges.is_empty();
    for (partition, (first, next)) in &from.ranges {
        let at = applied.get(partition).copied().unwrap_or(0);
        if *next <= at {
            continue;
        }
        all = false;
        if *first < at {
            return Err(Error::Invalid(format!(
                "stale ingest into `{}`: {} partition {partition} offsets {first}..{next} overlap what the table \
                 holds (up to {at}); skip records below it",
                entry.name, from.source
            )));
        }
    }
    Ok(all)
}

/// `cohort.live_offsets`: per live table, source and Kafka partition, the
/// next offset not yet appended.
pub(crate) fn offsets_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("next_offset", DataType::Int64, false),
    ]))
}

pub(crate) fn live_offsets(live: &LiveRegistry) -> Vec<ArrayRef> {
    let entries: Vec<Arc<LiveEntry>> = live.lock().expect("live tables").values().cloned().collect();
    let rows: Vec<(String, String, i32, i64)> = entries
        .iter()
        .flat_map(|e| {
            e.applied().into_iter().flat_map(move |(source, at)| {
                at.into_iter().map(move |(p, next)| (e.name.clone(), source.clone(), p, next))
            })
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.clone()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
    ];
    columns
}

/// Dictionary-encoded columns (a pandas categorical) as their values: a
/// table's scan answers with one schema whichever ingest a partition came
/// from, and Flight SQL clients check it against each endpoint's.
fn without_dictionaries(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let values = |f: &Field| match f.data_type() {
        DataType::Dictionary(_, value) => f.clone().with_data_type(value.as_ref().clone()),
        _ => f.clone(),
    };
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(..))) {
        return Ok((schema, batches));
    }
    let fields: Vec<Field> = schema.fields().iter().map(|f| values(f)).collect();
    let plain = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let batches = batches
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(plain.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
            RecordBatch::try_new(plain.clone(), columns)
        })
        .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()
        .map_err(|e| Error::DataFusion(e.into()))?;
    Ok((plain, batches))
}

/// The name a live table is filed under: an ingest's table name read as
/// SQL reads an unquoted one (`Events` is `events`, which `SELECT * FROM
/// Events` finds), kept as written where it is no plain identifier (`col
/// a`). The catalog files it so too; a registry keyed otherwise would call
/// `Events` no live table after it was made.
fn live_name(name: &str) -> String {
    match datafusion::common::TableReference::from(name) {
        datafusion::common::TableReference::Bare { table } => table.to_string(),
        _ => name.to_string(),
    }
}

/// A live table's directory: its name, with every byte but ASCII letters,
/// digits, `_` and `-` written `%XX`, so that any name (`col a`,
/// `../up`) is one directory of its own and comes back as it was.
fn dir_name(table: &str) -> String {
    let mut out = String::with_capacity(table.len());
    for b in table.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The table a directory named by [`dir_name`] holds.
fn table_name(dir: &str) -> String {
    let bytes = dir.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| dir.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_table_name_is_a_directory_of_its_own_and_comes_back_whole() {
        let names = ["plain_Name-1", "col a", "col-a", "my table; drop", "../escape", "é%2F"];
        let dirs: std::collections::BTreeSet<String> = names.iter().map(|n| dir_name(n)).collect();
        assert_eq!(dirs.len(), names.len(), "no two share a directory: {dirs:?}");
        for name in names {
            let dir = dir_name(name);
            assert!(!dir.contains('/') && !dir.contains(' ') && dir != "..", "{dir}");
            assert_eq!(table_name(&dir), name);
        }
        assert_eq!(dir_name("plain_Name-1"), "plain_Name-1", "what older versions wrote stays where it is");
    }
    use crate::store::{StoreSettings, serve_store};
    use crate::{EngineSettings, WorkerSource};
    use futures::TryStreamExt;

    struct NoWorkers;

    #[async_trait]
    impl WorkerSource for NoWorkers {
        async fn workers(&self, _: u32) -> Result<Vec<Url>> {
            Err(Error::NoWorkers("none in this test".into()))
        }
    }

    fn batch(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from_iter_values(from..from + n)) as ArrayRef)])
            .unwrap()
    }

    async fn count(engine: &SqlEngine, sql: &str) -> i64 {
        let plan = engine.plan(sql, None).await.unwrap();
        let out: Vec<RecordBatch> = engine.run(plan, &NoWorkers).await.unwrap().stream.try_collect().await.unwrap();
        out[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0)
    }

    async fn store() -> Url {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        drop(listener);
        let settings = StoreSettings { listen, budget_bytes: 64 << 20, tls: None, shm_dir: None };
        tokio::spawn(serve_store(settings, std::future::pending()));
        let url = Url::parse(&format!("http://{listen}")).unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        url
    }

    fn ingest(mode: IngestMode, batches: Vec<RecordBatch>, from: Option<SourceOffsets>) -> Ingest {
        Ingest { mode, schema: batches[0].schema(), batches, from, key: None }
    }

    fn from(first: i64, next: i64) -> Option<SourceOffsets> {
        Some(SourceOffsets { source: "g@clicks".into(), ranges: BTreeMap::from([(0, (first, next))]) })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_whole_ingests_and_replayed_offsets_are_not_appended_twice() {
        let engine = Arc::new(SqlEngine::new(EngineSettings::default()).unwrap());
        let stores = vec![store().await, store().await];
        let append = IngestMode { create: true, if_exists: IfExists::Append };

        // Given a live table fed ingests of 100 rows while a reader counts it
        let writer = {
            let (engine, stores) = (engine.clone(), stores.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let rows = vec![batch(i * 100, 60), batch(i * 100 + 60, 40)];
                    let offsets = from(i * 100, i * 100 + 100);
                    engine.append_live("clicks", ingest(append, rows, offsets), &stores, 1 << 30).await.unwrap();
                }
            })
        };
        while !engine.is_live("clicks") {
            tokio::task::yield_now().await;
        }
        // Then every count is of whole ingests
        while !writer.is_finished() {
            let n = count(&engine, "SELECT count(*) FROM clicks").await;
            assert_eq!(n % 100, 0, "a reader saw part of an ingest: {n} rows");
        }
        writer.await.unwrap();
        assert_eq!(count(&engine, "SELECT count(DISTINCT id) FROM clicks").await, 2000);

        // When a restarted sender replays offsets the table has
        let again =
            engine.append_live("clicks", ingest(append, vec![batch(1900, 100)], from(1900, 2000)), &stores, 1 << 30);
        assert!(again.await.unwrap().duplicate, "an ingest the table has is dropped");
        let overlap =
            engine.append_live("clicks", ingest(append, vec![batch(1950, 100)], from(1950, 2050)), &stores, 1 << 30);
        assert!(overlap.await.unwrap_err().to_string().contains("stale ingest"), "an overlapping one is refused");
        // Then nothing was appended twice, and the table says how far it got
        assert_eq!(count(&engine, "SELECT count(*) FROM clicks").await, 2000);
        assert_eq!(
            count(&engine, "SELECT max(next_offset) FROM cohort.live_offsets WHERE table_name = 'clicks'").await,
            2000
        );

        // And another shape, or a missing table without create, is refused by name
        let other = RecordBatch::try_from_iter([("name", Arc::new(StringArray::from(vec!["x"])) as ArrayRef)]).unwrap();
        let e = engine.append_live("clicks", ingest(append, vec![other], None), &stores, 1 << 30);
        assert!(e.await.unwrap_err().to_string().contains("has columns (id Int64)"));
        let only_append = IngestMode { create: false, if_exists: IfExists::Append };
        let e = engine.append_live("nope", ingest(only_append, vec![batch(0, 1)], None), &stores, 1 << 30);
        assert!(e.await.unwrap_err().to_string().contains("not found"));
        // And an ingest goes to another store when the one holding least of the table is gone
        let gone = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap()
        };
        let with_gone = [gone, stores[0].clone(), stores[1].clone()];
        let more = ingest(append, vec![batch(2000, 100)], from(2000, 2100));
        assert_eq!(engine.append_live("clicks", more, &with_gone, 1 << 30).await.unwrap().rows, 100);
        assert_eq!(count(&engine, "SELECT count(*) FROM clicks").await, 2100);
        // And a budget too small refuses the ingest whole
        let e = engine.append_live("clicks", ingest(append, vec![batch(5000, 1000)], None), &stores, 100);
        assert!(e.await.unwrap_err().to_string().contains("--sql-cache-memory"));
        assert!(engine.drop_live("clicks").await.unwrap());
        assert!(!engine.context().table_exist("clicks").unwrap());
    }

    async fn held(engine: &SqlEngine, store: &Url) -> Vec<u32> {
        let channel = engine.channels().flight(store.as_str()).unwrap();
        let version = engine.live()[0].version;
        store::holds(channel, store.as_str(), "clicks", version).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_ingests_are_merged_and_what_they_replace_waits_for_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings { live_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let engine = Arc::new(SqlEngine::new(settings.clone()).unwrap());
        let stores = vec![store().await];
        let append = IngestMode { create: true, if_exists: IfExists::Append };
        // Given a live table of 20 ingests of 100 rows
        for i in 0..20 {
            let rows = ingest(append, vec![batch(i * 100, 60), batch(i * 100 + 60, 40)], from(i * 100, i * 100 + 100));
            engine.append_live("clicks", rows, &stores, 1 << 30).await.unwrap();
        }
        let files = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
        let table_dir = dir.path().join("clicks");
        let leftover = std::fs::read(table_dir.join("00000003.arrow")).unwrap();
        assert!(engine.live_needs_compaction("clicks"));
        // and a query that started before the compaction, its rows not yet read
        let plan = engine.plan("SELECT sum(id) FROM clicks", None).await.unwrap();
        let reading = engine.run(plan, &NoWorkers).await.unwrap();

        // When the table is compacted
        let compaction = {
            let (engine, stores) = (engine.clone(), stores.clone());
            tokio::spawn(async move { engine.compact_live("clicks", &stores).await })
        };
        let mut waited = 0;
        // A merge is swapped in, then the files it replaced are removed: wait for both.
        while engine.live()[0].parts().len() != 6 || files(&table_dir) != 6 {
            waited += 1;
            assert!(waited < 500, "the merged partitions never replaced the ingests, in memory and on disk");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Then two runs of 8 became one partition each, on disk too, and the 4 newest wait for more
        assert_eq!(files(&table_dir), 6);
        // And the replaced partitions stay in their store while the earlier query may read them
        assert_eq!(held(&engine, &stores[0]).await.len(), 22, "20 ingests and 2 merged");
        assert!(!compaction.is_finished());
        let rows: Vec<RecordBatch> = reading.stream.try_collect().await.unwrap();
        let sum = rows[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(sum, (0..2000).sum::<i64>(), "the earlier query read the ingests whole");
        let merged = tokio::time::timeout(std::time::Duration::from_secs(30), compaction).await;
        assert_eq!(merged.expect("the compaction waits for that query only").unwrap().unwrap(), 16);
        assert_eq!(held(&engine, &stores[0]).await.len(), 6, "then they are dropped");
        assert_eq!(count(&engine, "SELECT count(DISTINCT id) FROM clicks").await, 2000);
        assert!(!engine.live_needs_compaction("clicks"));

        // Given a coordinator killed after a merged file was in, before an input was removed
        std::fs::write(table_dir.join("00000003.arrow"), leftover).unwrap();
        let again = SqlEngine::new(settings).unwrap();
        assert!(again.restore_live().is_empty());
        // Then the merged file wins and the leftover goes; offsets are known through the merged footers
        assert_eq!(files(&table_dir), 6);
        assert_eq!(again.repair_live("clicks", &stores).await.unwrap(), 6);
        assert_eq!(count(&again, "SELECT count(*) FROM clicks").await, 2000);
        assert_eq!(count(&again, "SELECT count(DISTINCT id) FROM clicks").await, 2000);
        let replay = ingest(append, vec![batch(300, 100)], from(300, 400));
        assert!(again.append_live("clicks", replay, &stores, 1 << 30).await.unwrap().duplicate);
    }

    /// 100 rows over ids 0..50 (each twice) and one without an id; `v` says which ingest and row.
    fn versions(ingest: i64) -> RecordBatch {
        let ids = (0..100).map(|j| Some(j % 50)).chain([None]);
        let v = (0..101).map(|j| ingest * 1000 + j);
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from_iter(ids)) as ArrayRef),
            ("v", Arc::new(Int64Array::from_iter_values(v)) as ArrayRef),
        ])
        .unwrap()
    }

    fn keyed(batch: RecordBatch, key: &str) -> Ingest {
        let mode = IngestMode { create: true, if_exists: IfExists::Append };
        Ingest { mode, schema: batch.schema(), batches: vec![batch], from: None, key: Some(vec![key.into()]) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keyed_table_holds_each_keys_latest_row_through_compaction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings { live_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let engine = Arc::new(SqlEngine::new(settings.clone()).unwrap());
        let stores = vec![store().await];
        // Given a table keyed by id, upserted 20 times with every id while a reader counts it
        let writer = {
            let (engine, stores) = (engine.clone(), stores.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    engine.append_live("latest", keyed(versions(i), "id"), &stores, 1 << 30).await.unwrap();
                }
            })
        };
        // (made empty by the first ingest, which publishes its rows once they are held)
        while engine.live().first().is_none_or(|table| table.rows() == 0) {
            tokio::task::yield_now().await;
        }
        // Then a reader sees one row per id, never two
        while !writer.is_finished() {
            assert_eq!(count(&engine, "SELECT count(*) FROM latest").await, 50, "one row per key, by statistics");
            assert_eq!(count(&engine, "SELECT count(*) FROM latest WHERE v >= 0").await, 50, "and by reading");
        }
        writer.await.unwrap();
        // And each id's row is its last ingest's last row; a row without an id was left out
        let latest: i64 = (0..50).map(|id| 19_000 + 50 + id).sum();
        assert_eq!(count(&engine, "SELECT sum(v) FROM latest").await, latest);
        assert_eq!(engine.live()[0].rows(), 50);

        // When it is compacted (two runs of 8, and 3 ingests emptied by the next, rewritten alone),
        // then upserted again for some ids
        assert_eq!(engine.compact_live("latest", &stores).await.unwrap(), 19);
        assert_eq!(count(&engine, "SELECT sum(v) FROM latest").await, latest, "merged: the same rows");
        let some = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from_iter_values(0..10)) as ArrayRef),
            ("v", Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(1_000_000, 10))) as ArrayRef),
        ])
        .unwrap();
        engine.append_live("latest", keyed(some, "id"), &stores, 1 << 30).await.unwrap();
        let now = latest - (0..10).map(|id| 19_050 + id).sum::<i64>() + 10_000_000;
        assert_eq!(count(&engine, "SELECT sum(v) FROM latest").await, now);
        assert_eq!(count(&engine, "SELECT count(*) FROM latest").await, 50);

        // And a restarted engine replays its snapshots to the same rows
        let again = SqlEngine::new(settings).unwrap();
        assert!(again.restore_live().is_empty());
        again.repair_live("latest", &stores).await.unwrap();
        assert_eq!(count(&again, "SELECT sum(v) FROM latest").await, now);
        assert_eq!(count(&again, "SELECT count(*) FROM latest").await, 50);

        // And keys that do not fit are refused by name
        let e = engine.append_live("other", keyed(versions(0), "nope"), &stores, 1 << 30).await.unwrap_err();
        assert!(e.to_string().contains("key column `nope` is not one of its columns (id, v)"), "{e}");
        let e = engine.append_live("latest", keyed(versions(0), "v"), &stores, 1 << 30).await.unwrap_err();
        assert!(e.to_string().contains("upserts by (id); this ingest by (v)"), "{e}");
        let append = IngestMode { create: true, if_exists: IfExists::Append };
        engine.append_live("plain", ingest(append, vec![batch(0, 1)], None), &stores, 1 << 30).await.unwrap();
        let e = engine.append_live("plain", keyed(batch(0, 1), "id"), &stores, 1 << 30).await.unwrap_err();
        assert!(e.to_string().contains("made without a key"), "{e}");
    }

    /// `ids` with `v`, for a table keyed by `id`.
    fn values(ids: std::ops::Range<i64>, v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from_iter_values(ids.clone())) as ArrayRef),
            ("v", Arc::new(Int64Array::from_iter_values(ids.map(|_| v))) as ArrayRef),
        ])
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingests_go_on_while_a_merge_is_written_and_what_they_replace_stays_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings { live_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let engine = SqlEngine::new(settings.clone()).unwrap();
        let stores = vec![store().await];
        // Given a keyed table of 8 ingests of 10 ids each, v = 0
        for i in 0..8 {
            engine.append_live("mid", keyed(values(i * 10..i * 10 + 10, 0), "id"), &stores, 1 << 30).await.unwrap();
        }
        let entry = engine.live_registry().lock().unwrap().get("mid").cloned().unwrap();
        // When a merge of the 8 is written, then ids 0..5 are upserted (v = 1) before it is swapped in
        let merge = engine.prepare_merge(&entry, &stores).await.unwrap().expect("a run of 8");
        engine.append_live("mid", keyed(values(0..5, 1), "id"), &stores, 1 << 30).await.unwrap();
        assert_eq!(engine.finish_merge(&entry, merge).await.map(|run| run.len()), Some(8));
        // Then the merge replaced the run, and the upserted rows stay replaced in it
        assert_eq!(entry.parts().len(), 2, "the merge and the upsert");
        assert_eq!(count(&engine, "SELECT count(*) FROM mid").await, 80);
        assert_eq!(count(&engine, "SELECT sum(v) FROM mid").await, 5);
        assert_eq!(count(&engine, "SELECT count(*) FROM mid WHERE id < 5 AND v = 0").await, 0);
        // And an upsert after the swap finds the rows in the merge
        engine.append_live("mid", keyed(values(70..80, 2), "id"), &stores, 1 << 30).await.unwrap();
        assert_eq!(count(&engine, "SELECT sum(v) FROM mid").await, 25);
        assert_eq!(count(&engine, "SELECT count(*) FROM mid").await, 80);
        // And a restart replays the same
        let again = SqlEngine::new(settings).unwrap();
        assert!(again.restore_live().is_empty());
        again.repair_live("mid", &stores).await.unwrap();
        assert_eq!(count(&again, "SELECT sum(v) FROM mid").await, 25);
        assert_eq!(count(&again, "SELECT count(*) FROM mid").await, 80);

        // Given a merge written for a table that is then dropped
        for i in 0..8 {
            engine.append_live("gone", keyed(values(i * 10..i * 10 + 10, 0), "id"), &stores, 1 << 30).await.unwrap();
        }
        let entry = engine.live_registry().lock().unwrap().get("gone").cloned().unwrap();
        let merge = engine.prepare_merge(&entry, &stores).await.unwrap().expect("a run of 8");
        assert!(engine.drop_live("gone").await.unwrap());
        // Then it is not swapped in, and leaves nothing on disk
        assert!(engine.finish_merge(&entry, merge).await.is_none());
        assert!(!dir.path().join("gone").exists());
    }

    #[test]
    fn merges_take_eight_neighbours_of_one_level_and_leave_big_partitions_alone() {
        let part = |first: u64, last: u64, bytes: u64| LivePart {
            placement: Placement {
                store: String::new(),
                part: PartId { table: "t".into(), version: 1, partition: first as u32 },
                rows: 1,
                bytes,
                shm: None,
                stats: None,
                deleted: None,
            },
            ingests: (first, last),
            from: Vec::new(),
            stored_rows: 1,
        };
        let small = |n: u64| part(n, n, 1);
        // Seven ingests: nothing yet; the eighth makes a run
        let mut parts: Vec<LivePart> = (0..7).map(small).collect();
        assert_eq!(run_to_merge(&parts), None);
        parts.push(small(7));
        assert_eq!(run_to_merge(&parts), Some(0..8));
        // Levels do not mix: a merged partition and seven ingests make no run
        let mut parts = vec![part(0, 7, 8)];
        parts.extend((8..15).map(small));
        assert_eq!(run_to_merge(&parts), None);
        parts.push(small(15));
        assert_eq!(run_to_merge(&parts), Some(1..9));
        // Eight merged partitions of eight make one of 64; a big one is left as it is
        let level_one: Vec<LivePart> = (0..8).map(|i| part(i * 8, i * 8 + 7, 8)).collect();
        assert_eq!(run_to_merge(&level_one), Some(0..8));
        assert_eq!(part(0, 63, 64).level(), 2);
        let mut with_big = level_one.clone();
        with_big[3].placement.bytes = COMPACT_BELOW_BYTES;
        assert_eq!(run_to_merge(&with_big), None);
        // A partition upserts emptied by half is rewritten alone
        let mut hollow = with_big.clone();
        hollow[5].stored_rows = 2;
        assert_eq!(run_to_merge(&hollow), Some(5..6));
        assert_eq!(ingests_of("00000008-00000015.arrow"), Some((8, 15)));
        assert_eq!(ingests_of("00000003.arrow"), Some((3, 3)));
        assert_eq!(ingests_of("00000003.tmp"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_table_outlives_its_stores_and_its_engine_through_its_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings { live_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let engine = SqlEngine::new(settings.clone()).unwrap();
        let stores = vec![store().await];
        let append = IngestMode { create: true, if_exists: IfExists::Append };
        for i in 0..3 {
            let rows = ingest(append, vec![batch(i * 10, 10)], from(i * 10, i * 10 + 10));
            engine.append_live("clicks", rows, &stores, 1 << 30).await.unwrap();
        }

        // Given an engine that starts again over the same directory, with new stores
        let again = SqlEngine::new(settings).unwrap();
        assert!(again.restore_live().is_empty());
        assert!(!again.live_intact("clicks").await, "nothing is in a store yet");
        let stores = vec![store().await];
        // Then the partitions are put back from disk, and the offsets are known
        assert_eq!(again.repair_live("clicks", &stores).await.unwrap(), 3);
        assert!(again.live_intact("clicks").await);
        assert_eq!(count(&again, "SELECT count(DISTINCT id) FROM clicks").await, 30);
        let replay = ingest(append, vec![batch(20, 10)], from(20, 30));
        assert!(again.append_live("clicks", replay, &stores, 1 << 30).await.unwrap().duplicate);
        // And a dropped table leaves nothing on disk
        assert!(again.drop_live("clicks").await.unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tables_named_alike_stay_apart_across_a_restart_and_odd_ingests_are_plain_or_refused() {
        use arrow::array::DictionaryArray;
        use arrow::datatypes::Int32Type;
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings { live_dir: Some(dir.path().to_path_buf()), ..Default::default() };
        let engine = SqlEngine::new(settings.clone()).unwrap();
        let stores = vec![store().await];
        let create = IngestMode { create: true, if_exists: IfExists::Fail };
        // Given two tables whose names differ only in a space and a dash, and a categorical column
        engine.append_live("col a", ingest(create, vec![batch(0, 2)], None), &stores, 1 << 30).await.unwrap();
        engine.append_live("col-a", ingest(create, vec![batch(0, 3)], None), &stores, 1 << 30).await.unwrap();
        let dict: DictionaryArray<Int32Type> = vec!["x", "y", "x"].into_iter().collect();
        let categorical = RecordBatch::try_from_iter([("c", Arc::new(dict) as ArrayRef)]).unwrap();
        engine.append_live("cats", ingest(create, vec![categorical], None), &stores, 1 << 30).await.unwrap();
        let plan = engine.plan("SELECT c FROM cats", None).await.unwrap();
        assert_eq!(plan.schema().field(0).data_type(), &DataType::Utf8, "stored as its values");
        // And an ingest naming a column twice is refused
        let a = Arc::new(Int64Array::from(vec![1])) as ArrayRef;
        let twice = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true), Field::new("a", DataType::Int64, true)])),
            vec![a.clone(), a],
        )
        .unwrap();
        let e = engine.append_live("dup", ingest(create, vec![twice], None), &stores, 1 << 30).await.unwrap_err();
        assert!(e.to_string().contains("column `a` is there twice"), "{e}");
        // And names differing only in case are one table, as unquoted SQL reads them
        engine.append_live("Events", ingest(create, vec![batch(0, 2)], None), &stores, 1 << 30).await.unwrap();
        let append = IngestMode { create: false, if_exists: IfExists::Append };
        engine.append_live("EVENTS", ingest(append, vec![batch(2, 2)], None), &stores, 1 << 30).await.unwrap();
        assert!(engine.is_live("events"));
        assert_eq!(count(&engine, "SELECT count(*) FROM Events").await, 4);
        // When the engine starts again, then each comes back under its own name
        let again = SqlEngine::new(settings).unwrap();
        assert!(again.restore_live().is_empty());
        let stores = vec![store().await];
        for (name, rows) in [("col a", 2), ("col-a", 3), ("cats", 3), ("events", 4)] {
            again.repair_live(name, &stores).await.unwrap();
            assert_eq!(count(&again, &format!("SELECT count(*) FROM \"{name}\"")).await, rows, "{name}");
        }
    }
}
