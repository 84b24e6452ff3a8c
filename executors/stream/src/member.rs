//! One pipeline member's loop, and its delivery rules:
//!
//! - offsets are committed only after the sink has the rows: for Kafka,
//!   when every record was acknowledged; for Parquet, when the file holding
//!   them was renamed into place. A member killed at any point therefore
//!   loses nothing; the rows after its last commit are read again by
//!   whoever holds the partition next (at-least-once: those may repeat).
//! - a Kafka sink is exactly-once by default: each micro-batch's records
//!   and its offsets are committed in one Kafka transaction, so what a
//!   killed member had sent is aborted, never seen by `read_committed`
//!   readers, and sent again once by the next owner.
//! - a member about to lose partitions in a rebalance does the same
//!   before it lets go, so members joining or leaving repeat nothing
//!   (where the broker takes a commit at that point, as Kafka does; the
//!   embedded broker refuses it, and then the next owner reads again).
//! - a member whose commit was refused remembers what its sink made safe
//!   ([`MadeSafe`]): when it is given the partition back, it skips the
//!   records it re-reads up to there instead of writing them twice.
//! - a stop request (SIGTERM: preemption, pause, delete, scale-down)
//!   finishes the micro-batch in hand, commits the open file and the
//!   offsets, and exits cleanly, so a paused or preempted pipeline resumes
//!   without repeats.
//! - a message that cannot be decoded follows `on_error` and never stops a
//!   healthy member unless `on_error = "fail"`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use cohort_connectors::json::JsonDecoder;
use cohort_connectors::kafka::{self, KafkaSink, KafkaSource, MemberContext, Offsets};
use cohort_connectors::parquet::{ParquetSink, Roll};
use cohort_connectors::schema::schema_of;
use datafusion::prelude::{SessionConfig, SessionContext};
use rdkafka::Message;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::BorrowedMessage;
use tokio::runtime::Runtime;

use crate::config::{OnError, PipelineConfig, SinkConfig, query_only};
use crate::live::{Coordinator, LiveSink};
use crate::{Error, Result};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What a member has done so far, for a thread watching it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records polled from the source.
    pub polled: AtomicU64,
    /// Records whose offsets were committed.
    pub committed: AtomicU64,
}

/// Counters a member reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub records_in: u64,
    pub records_out: u64,
    pub bad: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    /// Records read again that the sink holds already: a live table's
    /// after a restart, or any sink's after a refused commit ([`MadeSafe`]).
    pub replayed: u64,
    pub commits: u64,
}

enum Sink {
    Parquet(Box<ParquetSink>),
    Kafka(KafkaSink),
    /// Each append is safe when it returns.
    Store(Box<LiveSink>),
}

/// What the sink holds and the offsets it will make safe. Shared with the
/// revoke hook: a member that is about to lose partitions in a rebalance
/// makes its sink safe and commits first, so the next owner starts where
/// this one stopped instead of reading the open file's records again.
struct Delivery {
    sink: Sink,
    dead_letters: Option<KafkaSink>,
    on_error: OnError,
    transformer: Transformer,
    /// The micro-batch the transform thread has, not yet in the sink.
    in_flight: Option<InFlight>,
    counters: Counters,
    /// Next offsets of records handed to the sink but not yet committed.
    pending: Offsets,
    made_safe: MadeSafe,
    pending_records: u64,
    committed_records: u64,
    commits: u64,
    /// Why the sink could not make its rows safe. From then on nothing is
    /// committed and the member stops: its pending offsets cover rows the
    /// sink may not have (a failed delivery is reported once; an aborted
    /// transaction dropped them), so the next owner must read them again.
    broken: Option<String>,
}

impl Delivery {
    /// Makes the sink's rows safe if due (or `now`), then commits their
    /// offsets of `topic` for the consumer's group. A refused commit keeps
    /// them pending (the loop drops those of partitions it no longer holds:
    /// their next owner reads them again). A sink that fails is broken for
    /// good, even where the caller (the revoke hook) cannot stop the member.
    fn settle(
        &mut self,
        runtime: &Runtime,
        now: bool,
        consumer: &BaseConsumer<MemberContext>,
        topic: &str,
    ) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::SinkFailed(why.clone()));
        }
        let settled = self.make_safe_and_commit(runtime, now, consumer, topic);
        if let Err(e) = &settled {
            self.broken = Some(e.to_string());
        }
        settled
    }

    fn make_safe_and_commit(
        &mut self,
        runtime: &Runtime,
        now: bool,
        consumer: &BaseConsumer<MemberContext>,
        topic: &str,
    ) -> Result<()> {
        if let Sink::Kafka(k) = &mut self.sink
            && k.is_transactional()
        {
            if let Some(dlq) = &self.dead_letters {
                dlq.deliver(DELIVERY_TIMEOUT)?;
            }
            // Records and offsets in one transaction. A failure aborts both:
            // the member exits and its successor reads from the committed offsets.
            k.commit_transaction(consumer, topic, &self.pending)?;
            // Kafka already holds these offsets; the embedded broker does not
            // store offsets committed in a transaction, so they are given
            // again plainly (Kafka takes the same offsets twice harmlessly).
            if let Err(e) = kafka::commit(consumer, topic, &self.pending) {
                tracing::debug!(error = %e, "plain commit after the transaction refused");
            }
            self.committed();
            return Ok(());
        }
        let safe = match &mut self.sink {
            Sink::Kafka(k) => {
                k.deliver(DELIVERY_TIMEOUT)?;
                true
            }
            Sink::Parquet(p) if p.due() || (now && p.pending()) => {
                if let Some(path) = runtime.block_on(p.commit())? {
                    tracing::debug!(file = %path, "file committed");
                }
                true
            }
            Sink::Parquet(p) => !p.pending(),
            Sink::Store(_) => true,
        };
        if !safe || self.pending.is_empty() {
            return Ok(());
        }
        if let Some(dlq) = &self.dead_letters {
            dlq.deliver(DELIVERY_TIMEOUT)?;
        }
        self.made_safe.extend(&self.pending);
        match kafka::commit(consumer, topic, &self.pending) {
            Ok(()) => self.committed(),
            // Kept, and tried again for the partitions still held (see `run`).
            Err(e) => tracing::warn!(error = %e, "offset commit failed; trying again at the next commit"),
        }
        Ok(())
    }

    /// Hands the micro-batch the transform thread has to the sink, once
    /// it is done with it; its offsets become pending.
    fn finish_in_flight(&mut self, runtime: &Runtime) -> Result<()> {
        let Some(in_flight) = self.in_flight.take() else { return Ok(()) };
        let Transformed { polled, bad, out } = self.transformer.receive()?;
        for (i, why) in &bad {
            self.counters.bad += 1;
            match (self.on_error, &mut self.dead_letters) {
                (OnError::DeadLetter, Some(dlq)) => {
                    dlq.send(polled.key(*i), polled.payload(*i), Some(("cohort.error", why)))?;
                    self.counters.dead_lettered += 1;
                }
                (OnError::Fail, _) => {
                    let (partition, offset) = polled.positions[*i];
                    return Err(Error::BadRecord(format!("partition {partition} offset {offset}: {why}")));
                }
                _ => self.counters.skipped += 1,
            }
        }
        self.counters.records_out += out.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        match &mut self.sink {
            Sink::Parquet(p) => out.iter().try_for_each(|b| p.write(b))?,
            Sink::Kafka(k) => out.iter().try_for_each(|b| send_json(k, b))?,
            Sink::Store(live) if out.iter().any(|b| b.num_rows() > 0) => live.append(runtime, out, in_flight.ranges)?,
            Sink::Store(_) => {}
        }
        // Only rows the sink took are its to make safe: a member
        // that fails above is closed, and its revoke hook commits
        // what is pending, which must not include these offsets.
        self.pending_records += in_flight.polled;
        for (partition, next) in in_flight.next_offsets {
            let at = self.pending.entry(partition).or_insert(0);
            *at = (*at).max(next);
        }
        Ok(())
    }

    fn committed(&mut self) {
        if !self.pending.is_empty() {
            self.commits += 1;
        }
        self.made_safe.committed(&self.pending);
        self.committed_records += self.pending_records;
        self.pending.clear();
        self.pending_records = 0;
    }
}

/// A micro-batch copied out of the consumer's buffers (which only the
/// polling thread may touch), for the transform thread.
struct Polled {
    payloads: Vec<u8>,
    payload_ends: Vec<usize>,
    keys: Vec<u8>,
    key_spans: Vec<Option<(usize, usize)>>,
    /// (partition, offset) of each record, to name a bad one.
    positions: Vec<(i32, i64)>,
}

impl Polled {
    /// Room for `messages`, so copying them moves each byte once.
    fn with_capacity(messages: &[&BorrowedMessage]) -> Polled {
        let (mut payload_bytes, mut key_bytes) = (0, 0);
        for m in messages {
            payload_bytes += m.payload_len();
            key_bytes += m.key().map_or(0, <[u8]>::len);
        }
        Polled {
            payloads: Vec::with_capacity(payload_bytes),
            payload_ends: Vec::with_capacity(messages.len()),
            keys: Vec::with_capacity(key_bytes),
            key_spans: Vec::with_capacity(messages.len()),
            positions: Vec::with_capacity(messages.len()),
        }
    }

    fn push(&mut self, message: &BorrowedMessage) {
        self.payloads.extend_from_slice(message.payload().unwrap_or_default());
        self.payload_ends.push(self.payloads.len());
        let key = message.key().map(|key| {
            let start = self.keys.len();
            self.keys.extend_from_slice(key);
            (start, self.keys.len())
        });
        self.key_spans.push(key);
        self.positions.push((message.partition(), message.offset()));
    }

    fn payload(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.payload_ends[i - 1] };
        &self.payloads[start..self.payload_ends[i]]
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        self.key_spans[i].map(|(start, end)| &self.keys[start..end])
    }

    fn payloads(&self) -> Vec<&[u8]> {
        (0..self.payload_ends.len()).map(|i| self.payload(i)).collect()
    }
}

/// What a micro-batch in the transform thread's hands will commit.
struct InFlight {
    /// Records polled, the ones skipped as already held included.
    polled: u64,
    next_offsets: Offsets,
    /// `[first, next)` per partition of the records kept (a live table's).
    ranges: BTreeMap<i32, (i64, i64)>,
}

/// A micro-batch decoded and transformed, with what it was made from (a
/// bad record is dead-lettered as it came).
struct Transformed {
    polled: Polled,
    bad: Vec<(usize, String)>,
    out: Vec<RecordBatch>,
}

/// The thread that decodes JSON and runs the transform, one micro-batch
/// behind the polling thread: while it works on one, the member polls the
/// next, so librdkafka's share of the work and ours overlap on two cores.
/// One micro-batch at most is in its hands.
struct Transformer {
    to_thread: Option<SyncSender<Polled>>,
    from_thread: Receiver<Result<Transformed>>,
    thread: Option<JoinHandle<()>>,
}

/// As the SQL engine's threads have (cohort-batch's `RUNTIME_THREAD_STACK`):
/// DataFusion plans a transform as deep as `pipeline create` allows
/// recursively, beyond a default thread's 2 MiB.
const TRANSFORM_THREAD_STACK: usize = 32 << 20;

impl Transformer {
    fn start(mut decoder: JsonDecoder, sql: Option<String>) -> Result<Transformer> {
        let invalid = |e: std::io::Error| Error::Invalid { field: "runtime".into(), message: e.to_string() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(invalid)?;
        let (to_thread, inbox) = sync_channel::<Polled>(1);
        let (outbox, from_thread) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("transform".into())
            .stack_size(TRANSFORM_THREAD_STACK)
            .spawn(move || {
                // One micro-batch is one partition: no repartitioning across threads.
                let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
                for polled in inbox {
                    let transformed = decoder.decode(&polled.payloads()).map_err(Error::from).map(|decoded| {
                        let mut bad = decoded.bad;
                        let out = match transform(&runtime, &ctx, sql.as_deref(), decoded.batch.clone()) {
                            Ok(out) => out,
                            // A record the transform fails on (`100 / user_id` at 0) is a bad
                            // record, as one that does not decode is: found by halving.
                            Err(_) => {
                                let undecoded: std::collections::HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
                                let rows: Vec<usize> =
                                    (0..polled.payload_ends.len()).filter(|i| !undecoded.contains(i)).collect();
                                let halving =
                                    Halving { runtime: &runtime, ctx: &ctx, sql: sql.as_deref(), rows: &rows };
                                let mut out = Vec::new();
                                halving.run(&decoded.batch, 0, &mut out, &mut bad);
                                bad.sort_unstable_by_key(|(i, _)| *i);
                                out
                            }
                        };
                        Transformed { polled, bad, out }
                    });
                    if outbox.send(transformed).is_err() {
                        return;
                    }
                }
            })
            .map_err(invalid)?;
        Ok(Transformer { to_thread: Some(to_thread), from_thread, thread: Some(thread) })
    }

    fn send(&self, polled: Polled) -> Result<()> {
        let to_thread = self.to_thread.as_ref().expect("the transform thread runs until the member drops it");
        to_thread.send(polled).map_err(|_| self.died())
    }

    fn receive(&self) -> Result<Transformed> {
        self.from_thread.recv().map_err(|_| self.died())?
    }

    fn died(&self) -> Error {
        Error::Invalid { field: "transform".into(), message: "the transform thread died".into() }
    }
}

impl Drop for Transformer {
    fn drop(&mut self) {
        // Closing its inbox ends the thread's loop.
        self.to_thread = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Next offsets, per partition, up to which this member's sink made rows
/// safe while the group's committed offset stayed behind: the broker
/// refused the commit (the embedded one does during every rebalance). A
/// member given such a partition back re-reads from the committed offset;
/// the records below its own mark are in its sink already and are skipped.
/// A mark goes once a commit reaches it, so it never outlives the refusal.
#[derive(Debug, Default)]
struct MadeSafe(Offsets);

impl MadeSafe {
    fn extend(&mut self, safe: &Offsets) {
        for (&partition, &next) in safe {
            let mark = self.0.entry(partition).or_insert(next);
            *mark = (*mark).max(next);
        }
    }

    fn committed(&mut self, committed: &Offsets) {
        self.0.retain(|partition, mark| committed.get(partition).is_none_or(|next| next < mark));
    }

    fn holds(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|mark| offset < *mark)
    }
}

/// Runs a member until `stop` is set (then it commits and returns Ok) or
/// a fatal error. `brokers` is used where the config names none; `id`
/// names the member to Kafka and in file names; `slot` is its place in the
/// gang, the same across its restarts (a transactional sink's identity);
/// `progress` counts records polled and committed (for whoever watches);
/// `coordinator` is where a `[sink.store]` table lives.
pub fn run(
    config: &PipelineConfig,
    brokers: &str,
    id: &str,
    slot: u32,
    stop: &AtomicBool,
    progress: &Progress,
    coordinator: Option<&Coordinator>,
) -> Result<Counters> {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid { field: "runtime".into(), message: e.to_string() })?,
    );
    let brokers = config.brokers.as_deref().unwrap_or(brokers);
    let output_schema = runtime.block_on(config.output_schema())?;
    let used = runtime.block_on(config.used_columns())?;
    let decoder = JsonDecoder::new(schema_of(&used)?);
    let source = KafkaSource::open(brokers, &config.topic, &config.group, config.start(), id)?;
    let sink = match &config.sink {
        SinkConfig::Parquet { path, roll_bytes, roll_ms } => {
            let roll = Roll { bytes: *roll_bytes, after: Duration::from_millis(*roll_ms) };
            Sink::Parquet(Box::new(ParquetSink::open(path, output_schema, id, roll)?))
        }
        SinkConfig::Kafka { brokers: to, topic, exactly_once } => {
            let to = to.as_deref().unwrap_or(brokers);
            if *exactly_once {
                let transactional_id = format!("cohort-{}-{}-{slot}", config.group, config.topic);
                Sink::Kafka(KafkaSink::open_transactional(to, topic, id, &transactional_id)?)
            } else {
                Sink::Kafka(KafkaSink::open(to, topic, id)?)
            }
        }
        SinkConfig::Store { table, key } => {
            let coordinator = coordinator.ok_or_else(|| Error::Invalid {
                field: "sink.store".into(),
                message: "this member has no coordinator to append to".into(),
            })?;
            let source = format!("{}@{}", config.group, config.topic);
            Sink::Store(Box::new(LiveSink::open(&runtime, coordinator, table, source, key.clone())))
        }
    };
    let dead_letters = match config.on_error {
        OnError::DeadLetter => Some(KafkaSink::open(brokers, &format!("{}.dlq", config.topic), id)?),
        _ => None,
    };
    let delivery = Arc::new(Mutex::new(Delivery {
        sink,
        dead_letters,
        on_error: config.on_error,
        transformer: Transformer::start(decoder, config.sql.clone())?,
        in_flight: None,
        counters: Counters::default(),
        pending: Offsets::new(),
        made_safe: MadeSafe::default(),
        pending_records: 0,
        committed_records: 0,
        commits: 0,
        broken: None,
    }));
    {
        let (delivery, runtime, topic) = (delivery.clone(), runtime.clone(), config.topic.clone());
        source.on_revoke(Box::new(move |consumer| {
            let mut d = delivery.lock().expect("delivery lock");
            if let Err(e) = d.finish_in_flight(&runtime) {
                d.broken.get_or_insert_with(|| e.to_string());
            }
            if let Err(e) = d.settle(&runtime, true, consumer, &topic) {
                tracing::warn!(error = %e, "could not settle before a rebalance; the next owner re-reads");
            }
        }));
    }
    let mut reported = (Instant::now(), Counters::default());
    tracing::info!(pipeline = %config.name, member = id, topic = %config.topic, group = %config.group, "member started");

    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if !stopping {
            // The revoke hook may run in here: the delivery lock is not held.
            let messages = source.poll_batch(config.max_records, config.max_latency());
            let mut d = delivery.lock().expect("delivery lock");
            let d = &mut *d;
            if messages.is_empty() {
                d.finish_in_flight(&runtime)?;
            } else {
                d.counters.records_in += messages.len() as u64;
                progress.polled.store(d.counters.records_in, Ordering::SeqCst);
                // What the sink holds already is not written again.
                let kept: Vec<&BorrowedMessage> = match &mut d.sink {
                    Sink::Store(_) => {
                        // The table's offsets are read with its appends all made.
                        d.finish_in_flight(&runtime)?;
                        let Sink::Store(live) = &mut d.sink else { unreachable!("matched above") };
                        live.sync(&runtime, source.assigned())?;
                        messages.iter().filter(|m| !live.holds(m.partition(), m.offset())).collect()
                    }
                    _ => messages.iter().filter(|m| !d.made_safe.holds(m.partition(), m.offset())).collect(),
                };
                d.counters.replayed += (messages.len() - kept.len()) as u64;
                let mut polled = Polled::with_capacity(&kept);
                let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
                for m in &kept {
                    polled.push(m);
                    let range = ranges.entry(m.partition()).or_insert((m.offset(), m.offset() + 1));
                    *range = (range.0.min(m.offset()), range.1.max(m.offset() + 1));
                }
                let mut next_offsets = Offsets::new();
                for m in &messages {
                    let next = next_offsets.entry(m.partition()).or_insert(0);
                    *next = (*next).max(m.offset() + 1);
                }
                let in_flight = InFlight { polled: messages.len() as u64, next_offsets, ranges };
                drop(kept);
                drop(messages);
                // The previous micro-batch goes to the sink, this one to the transform thread.
                d.finish_in_flight(&runtime)?;
                d.transformer.send(polled)?;
                d.in_flight = Some(in_flight);
            }
        }
        let counters = {
            let mut d = delivery.lock().expect("delivery lock");
            if stopping {
                d.finish_in_flight(&runtime)?;
            }
            if !d.pending.is_empty() {
                // Offsets of partitions lost in a rebalance are the new owner's to commit.
                let held = source.assigned();
                d.pending.retain(|p, _| held.contains(p));
            }
            d.settle(&runtime, stopping, source.consumer(), &config.topic)?;
            d.counters.commits = d.commits;
            progress.committed.store(d.committed_records, Ordering::SeqCst);
            d.counters.clone()
        };
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
    runtime: &Runtime,
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

/// Finds the records a micro-batch's transform fails on, by halves: one
/// among 20,000 costs about 30 transforms, not 20,000.
struct Halving<'a> {
    runtime: &'a Runtime,
    ctx: &'a SessionContext,
    sql: Option<&'a str>,
    /// The polled record of each row of the decoded batch.
    rows: &'a [usize],
}

impl Halving<'_> {
    /// Transforms `batch` (the decoded rows from `first` on) into `out`, in
    /// order; a row that fails alone goes to `bad`, with why.
    fn run(&self, batch: &RecordBatch, first: usize, out: &mut Vec<RecordBatch>, bad: &mut Vec<(usize, String)>) {
        if batch.num_rows() == 0 {
            return;
        }
        match transform(self.runtime, self.ctx, self.sql, batch.clone()) {
            Ok(done) => out.extend(done),
            Err(e) if batch.num_rows() == 1 => bad.push((self.rows[first], format!("transform: {e}"))),
            Err(_) => {
                let half = batch.num_rows() / 2;
                self.run(&batch.slice(0, half), first, out, bad);
                self.run(&batch.slice(half, batch.num_rows() - half), first + half, out, bad);
            }
        }
    }
}

/// Each row as one JSON object message.
fn send_json(sink: &mut KafkaSink, batch: &RecordBatch) -> Result<()> {
    let mut writer = LineDelimitedWriter::new(Vec::new());
    writer.write(batch).map_err(cohort_connectors::Error::from)?;
    writer.finish().map_err(cohort_connectors::Error::from)?;
    let text = writer.into_inner();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        sink.send(None, line, None)?;
    }
    Ok(())
}

/// One progress line for `cohort logs` (and `cohort pipeline get`, which
/// reads each member's last): totals, and rates since the last line.
fn report(pipeline: &str, id: &str, last: &(Instant, Counters), now: &Counters) {
    let secs = last.0.elapsed().as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (a - b) as f64 / secs;
    println!(
        "{PROGRESS_PREFIX}{pipeline} member {id}: in={} in_per_s={:.0} out={} out_per_s={:.0} bad={} dead_lettered={} skipped={} replayed={} commits={}",
        now.records_in,
        rate(now.records_in, last.1.records_in),
        now.records_out,
        rate(now.records_out, last.1.records_out),
        now.bad,
        now.dead_lettered,
        now.skipped,
        now.replayed,
        now.commits
    );
}

/// How a member's progress lines start.
pub const PROGRESS_PREFIX: &str = "pipeline ";

/// The `key=value` figures of a progress line, if it is one.
pub fn parse_progress(line: &str) -> Option<Vec<(String, f64)>> {
    let rest = line.strip_prefix(PROGRESS_PREFIX)?;
    let (_, figures) = rest.split_once(": ")?;
    figures
        .split_whitespace()
        .map(|pair| pair.split_once('=').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_the_transform_fails_on_is_found_and_the_rest_go_through_in_order() {
        use arrow::array::{Array, Int64Array};
        // Given a micro-batch of 9 decoded rows (polled records 0..10, record 3 did not decode)
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ctx = SessionContext::new();
        let users = Int64Array::from(vec![1, 2, 0, 4, 5, 0, 10, 20, 25]);
        let batch = RecordBatch::try_from_iter([("user_id", Arc::new(users) as arrow::array::ArrayRef)]).unwrap();
        let rows: Vec<usize> = (0..10).filter(|&i| i != 3).collect();
        let sql = "SELECT 100 / user_id AS x FROM source";
        // When the transform divides by each
        let halving = Halving { runtime: &runtime, ctx: &ctx, sql: Some(sql), rows: &rows };
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        halving.run(&batch, 0, &mut out, &mut bad);
        // Then the two zeros are bad, named by their polled index, and the rest answer in order
        assert_eq!(bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 6]);
        assert!(bad[0].1.to_lowercase().contains("divide by zero"), "{bad:?}");
        let answers: Vec<i64> = out
            .iter()
            .flat_map(|b| {
                let x = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..x.len()).map(|i| x.value(i)).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(answers, [100, 50, 25, 20, 10, 5, 4]);
    }

    #[test]
    fn a_member_skips_what_its_sink_made_safe_until_a_commit_catches_up() {
        // Given rows of partitions 0 and 1 made safe, and the commit refused
        let mut made_safe = MadeSafe::default();
        made_safe.extend(&Offsets::from([(0, 100), (1, 50)]));
        // When the member is given partition 0 back and re-reads it, then
        // what it wrote is skipped and what follows is not
        assert!(made_safe.holds(0, 0) && made_safe.holds(0, 99));
        assert!(!made_safe.holds(0, 100) && !made_safe.holds(2, 0));
        // A later refusal moves the mark forward only
        made_safe.extend(&Offsets::from([(0, 80)]));
        assert!(made_safe.holds(0, 99));
        // A commit that reaches a mark removes it; one short of it does not
        made_safe.committed(&Offsets::from([(0, 100), (1, 49)]));
        assert!(!made_safe.holds(0, 10), "partition 0 is the group's again");
        assert!(made_safe.holds(1, 48));
        made_safe.committed(&Offsets::from([(1, 60)]));
        assert!(!made_safe.holds(1, 48));
    }

    #[test]
    fn progress_lines_read_back() {
        let line = "pipeline checkouts member checkouts-0-7: in=10 in_per_s=5 out=4 out_per_s=2 bad=1 dead_lettered=1 skipped=0 commits=3";
        let figures = parse_progress(line).unwrap();
        assert_eq!(figures[0], ("in".to_string(), 10.0));
        assert_eq!(figures.len(), 8);
        assert!(parse_progress("2026-11-26T16:55:43Z INFO member started").is_none());
    }
}
