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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
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
    state: Mutex<LiveState>,
    /// One ingest at a time: partitions are numbered and offsets checked in order.
    appending: tokio::sync::Mutex<()>,
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct LiveState {
    parts: Vec<Placement>,
    /// Per source, per Kafka partition: the next offset not yet appended.
    applied: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl LiveEntry {
    pub fn parts(&self) -> Vec<Placement> {
        self.state.lock().expect("live table").parts.clone()
    }

    pub fn rows(&self) -> u64 {
        self.state.lock().expect("live table").parts.iter().map(|p| p.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("live table").parts.iter().map(|p| p.bytes).sum()
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
        let Ingest { mode, schema, batches, from } = ingest;
        let entry = self.live_entry_for(name, mode, &schema).await?;
        let _one_at_a_time = entry.appending.lock().await;
        let batches = conform(&entry, &schema, batches)?;
        if let Some(from) = &from
            && already_applied(&entry, from)?
        {
            return Ok(Appended { rows: 0, duplicate: true });
        }
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
            let (partition, store_url) = {
                let state = entry.state.lock().expect("live table");
                (state.parts.len() as u32, least_loaded(&state.parts, stores))
            };
            let part = PartId { table: name.to_string(), version: entry.version, partition };
            // On disk first: what a store loses, or a restarted coordinator forgot, is put back from there.
            if let Some(dir) = self.snapshot_dir(name) {
                let (schema, batches, from) = (entry.schema.clone(), batches.clone(), from.clone());
                tokio::task::spawn_blocking(move || write_snapshot(&dir, partition, &schema, &batches, from.as_ref()))
                    .await
                    .map_err(|e| Error::Invalid(e.to_string()))??;
            }
            let stats = Some(Arc::new(crate::cached::partition_statistics(&entry.schema, &batches)));
            let channel = self.channels().flight(&store_url)?;
            let put = store::put(channel, &store_url, &part, entry.schema.clone(), batches).await;
            let shm = match put {
                Ok(shm) => shm,
                Err(e) => {
                    // Not appended: its snapshot must not bring it back after a restart.
                    if let Some(dir) = self.snapshot_dir(name) {
                        let _ = std::fs::remove_file(snapshot_path(&dir, partition));
                    }
                    return Err(Error::Unavailable(format!("cannot append to `{name}`: {e}")));
                }
            };
            let placement = Placement { store: store_url, part, rows, bytes, shm, stats };
            entry.state.lock().expect("live table").parts.push(placement);
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
    async fn live_entry_for(&self, name: &str, mode: IngestMode, schema: &SchemaRef) -> Result<Arc<LiveEntry>> {
        let existing = self.live_registry().lock().expect("live tables").get(name).cloned();
        match (existing, mode.if_exists) {
            (Some(entry), IfExists::Append) => return Ok(entry),
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
        let entry = Arc::new(LiveEntry {
            name: name.to_string(),
            schema: Arc::new(Schema::new(fields)),
            version: self.next_cache_version(),
            created_ms: crate::cached::now_ms(),
            state: Mutex::default(),
            appending: tokio::sync::Mutex::new(()),
            usage: Usage::new(crate::cached::now_ms()),
        });
        self.context().register_table(name, Arc::new(LiveTable(entry.clone())))?;
        self.live_registry().lock().expect("live tables").insert(name.to_string(), entry.clone());
        tracing::info!(table = name, "live table created");
        Ok(entry)
    }

    /// Drops live table `name`; whether there was one.
    pub async fn drop_live(&self, name: &str) -> Result<bool> {
        let Some(entry) = self.live_registry().lock().expect("live tables").remove(name) else {
            return Ok(false);
        };
        self.context().deregister_table(name)?;
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
        let plain: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
        self.settings().live_dir.as_ref().map(|dir| dir.join(plain))
    }

    /// Registers the live tables kept on disk (at start): their rows are
    /// put into the stores by the first query that reads them
    /// ([`SqlEngine::repair_live`]). Those that cannot be read are returned with why.
    pub fn restore_live(&self) -> Vec<(String, Error)> {
        let Some(root) = self.settings().live_dir.clone() else { return Vec::new() };
        let Ok(dirs) = std::fs::read_dir(&root) else { return Vec::new() };
        let mut failed = Vec::new();
        for dir in dirs.flatten().filter(|d| d.path().is_dir()) {
            let name = dir.file_name().to_string_lossy().to_string();
            if let Err(e) = self.restore_one(&name, &dir.path()) {
                tracing::warn!(table = %name, error = %e, "cannot restore a live table");
                failed.push((name, e));
            }
        }
        failed
    }

    fn restore_one(&self, name: &str, dir: &Path) -> Result<()> {
        let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|f| {
                let path = f.path();
                let number = path.file_name()?.to_str()?.strip_suffix(".arrow")?.parse().ok()?;
                Some((number, path))
            })
            .collect();
        files.sort();
        let Some((_, first)) = files.first() else { return Ok(()) };
        let schema = read_snapshot(first)?.0;
        let version = self.next_cache_version();
        let mut state = LiveState::default();
        for (expected, (number, path)) in files.iter().enumerate() {
            if *number != expected as u32 {
                return Err(Error::Invalid(format!("{}: partition {expected} is missing", dir.display())));
            }
            let (_, batches, from) = read_snapshot(path)?;
            state.parts.push(Placement {
                store: String::new(),
                part: PartId { table: name.to_string(), version, partition: *number },
                rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
                bytes: batches.iter().map(store::rows_bytes).sum(),
                shm: None,
                stats: Some(Arc::new(crate::cached::partition_statistics(&schema, &batches))),
            });
            if let Some(from) = from {
                let applied = state.applied.entry(from.source).or_default();
                for (partition, (_, next)) in from.ranges {
                    let at = applied.entry(partition).or_default();
                    *at = (*at).max(next);
                }
            }
        }
        if self.context().table_exist(name)? {
            return Err(Error::Invalid(format!("a table `{name}` exists already")));
        }
        let entry = Arc::new(LiveEntry {
            name: name.to_string(),
            schema,
            version,
            created_ms: crate::cached::now_ms(),
            state: Mutex::new(state),
            appending: tokio::sync::Mutex::new(()),
            usage: Usage::new(crate::cached::now_ms()),
        });
        self.context().register_table(name, Arc::new(LiveTable(entry.clone())))?;
        self.live_registry().lock().expect("live tables").insert(name.to_string(), entry.clone());
        tracing::info!(table = name, partitions = files.len(), rows = entry.rows(), "live table restored from disk");
        Ok(())
    }

    /// Whether every partition of live table `name` is held where it was put.
    pub async fn live_intact(&self, name: &str) -> bool {
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return true;
        };
        self.lost_stores(&entry).await.is_empty()
    }

    /// Puts back, from its snapshots, what live table `name` lost with a
    /// store (or with a coordinator restart); how many partitions.
    pub async fn repair_live(&self, name: &str, stores: &[Url]) -> Result<usize> {
        let Some(entry) = self.live_registry().lock().expect("live tables").get(name).cloned() else {
            return Ok(0);
        };
        let _one_at_a_time = entry.appending.lock().await;
        let lost = self.lost_stores(&entry).await;
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
            let placement = entry.state.lock().expect("live table").parts[i].clone();
            if !lost.contains(&placement.store) {
                continue;
            }
            let path = snapshot_path(&dir, placement.part.partition);
            let (_, batches, _) = tokio::task::spawn_blocking(move || read_snapshot(&path))
                .await
                .map_err(|e| Error::Invalid(e.to_string()))??;
            let target = least_loaded(&entry.state.lock().expect("live table").parts, stores);
            let channel = self.channels().flight(&target)?;
            let shm = store::put(channel, &target, &placement.part, entry.schema.clone(), batches)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot put back a partition of `{name}`: {e}")))?;
            let mut state = entry.state.lock().expect("live table");
            state.parts[i].store = target;
            state.parts[i].shm = shm;
            repaired += 1;
        }
        tracing::warn!(table = name, partitions = repaired, "live table partitions put back from disk");
        Ok(repaired)
    }

    /// The stores (by URL; "" for none) that do not hold all they should of `entry`.
    async fn lost_stores(&self, entry: &LiveEntry) -> Vec<String> {
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        for p in entry.parts() {
            *expected.entry(p.store).or_default() += 1;
        }
        let mut lost = Vec::new();
        for (url, count) in expected {
            let held = match self.channels().flight(&url) {
                Ok(channel) if !url.is_empty() => store::holds(channel, &url, &entry.name, entry.version).await.ok(),
                _ => None,
            };
            if held != Some(count) {
                lost.push(url);
            }
        }
        lost
    }

    /// Whether `name` is a live table.
    pub fn is_live(&self, name: &str) -> bool {
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

/// The store among `stores` that holds the fewest bytes of `parts`.
fn least_loaded(parts: &[Placement], stores: &[Url]) -> String {
    let mut held: BTreeMap<&str, u64> = stores.iter().map(|s| (s.as_str(), 0)).collect();
    for p in parts {
        if let Some(h) = held.get_mut(p.store.as_str()) {
            *h += p.bytes;
        }
    }
    held.iter().min_by_key(|(_, b)| **b).map(|(s, _)| s.to_string()).unwrap_or_default()
}

/// The key, in a snapshot's footer, of the offsets its rows cover.
const SNAPSHOT_OFFSETS: &str = "cohort.offsets";

fn snapshot_path(dir: &Path, partition: u32) -> PathBuf {
    dir.join(format!("{partition:08}.arrow"))
}

/// Writes one partition's snapshot: an Arrow IPC file, synced, then
/// renamed in, with the offsets it covers in its footer, so that the rows
/// and how far they go are kept or lost together.
fn write_snapshot(
    dir: &Path,
    partition: u32,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    from: Option<&SourceOffsets>,
) -> Result<()> {
    let io = |what: &str, path: &Path| {
        let context = format!("cannot {what} {}", path.display());
        move |source| Error::Io { context, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = snapshot_path(dir, partition);
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
    let mut writer = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), schema)
        .map_err(|e| Error::DataFusion(e.into()))?;
    if let Some(from) = from {
        writer.write_metadata(SNAPSHOT_OFFSETS, serde_json::to_string(from).expect("offsets serialize"));
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
    std::fs::rename(&tmp, &path).map_err(io("publish", &path))
}

fn read_snapshot(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>, Option<SourceOffsets>)> {
    let file = std::fs::File::open(path)
        .map_err(|source| Error::Io { context: format!("cannot read {}", path.display()), source })?;
    let bad =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("{} is not a live table snapshot: {e}", path.display()));
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None).map_err(|e| bad(&e))?;
    let from = match reader.custom_metadata().get(SNAPSHOT_OFFSETS) {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| bad(&e))?),
        None => None,
    };
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(&e))?;
    Ok((schema, batches, from))
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

#[cfg(test)]
mod tests {
    use super::*;
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
        Ingest { mode, schema: batches[0].schema(), batches, from }
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
        // And a budget too small refuses the ingest whole
        let e = engine.append_live("clicks", ingest(append, vec![batch(5000, 1000)], None), &stores, 100);
        assert!(e.await.unwrap_err().to_string().contains("--sql-cache-memory"));
        assert!(engine.drop_live("clicks").await.unwrap());
        assert!(!engine.context().table_exist("clicks").unwrap());
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
}
