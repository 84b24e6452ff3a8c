//! The Kafka source, sinks and the lag report.
//!
//! The source is a consumer-group member with automatic commits off: the
//! pipeline commits the offsets a sink has made safe, so a member killed at
//! any point resumes where the data stops (at-least-once). The sink is an
//! idempotent producer; [`KafkaSink::deliver`] returns only when every
//! record was acknowledged, which is when the pipeline may commit.
//!
//! A transactional sink ([`KafkaSink::open_transactional`]) makes Kafka →
//! Kafka exactly-once: a micro-batch's records and its source offsets are
//! committed in one Kafka transaction ([`KafkaSink::commit_transaction`]),
//! so a `read_committed` reader sees each record once whatever was killed
//! when. Its transactional id is stable per member slot: a restarted member
//! fences its dead predecessor and aborts what that one left open.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::{Error, Result};

/// Where the source starts when its group has no committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// The next offset to read, per partition.
pub type Offsets = BTreeMap<i32, i64>;

/// Called with the consumer when partitions are about to be revoked, so a
/// member can make its sink safe and commit before another takes over.
pub type RevokeHook = Box<dyn FnMut(&BaseConsumer<MemberContext>) + Send>;

/// Logs rebalances, so `cohort logs` tells which member holds what, and
/// runs the revoke hook.
#[derive(Default)]
pub struct MemberContext {
    on_revoke: Mutex<Option<RevokeHook>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance
            && let Some(hook) = self.on_revoke.lock().expect("revoke hook lock").as_mut()
        {
            hook(consumer);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "assigned partitions");
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }
}

/// A consumer-group member reading one topic.
pub struct KafkaSource {
    consumer: BaseConsumer<MemberContext>,
    topic: String,
}

impl KafkaSource {
    pub fn open(brokers: &str, topic: &str, group: &str, start: Start, client_id: &str) -> Result<KafkaSource> {
        let consumer: BaseConsumer<MemberContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", if start == Start::Earliest { "earliest" } else { "latest" })
            // A member that dies is noticed in seconds, not the default 45.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            // Prefetch within a member's memory (the default is 64 MiB), and
            // fetch again soon once below it: the default waits 1 s, which
            // starves any consumer slower than the network.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.queue.backoff.ms", "10")
            // A quiet partition answers a fetch within 100 ms (the default waits 500).
            .set("fetch.wait.max.ms", "100")
            .create_with_context(MemberContext::default())?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSource { consumer, topic: topic.to_string() })
    }

    /// Up to `max` messages, waiting at most `max_wait` in all. Errors the
    /// client recovers from by itself (a broker reconnecting) are logged,
    /// not returned.
    pub fn poll_batch(&self, max: usize, max_wait: Duration) -> Vec<BorrowedMessage<'_>> {
        let deadline = Instant::now() + max_wait;
        let mut out = Vec::with_capacity(max.min(65_536));
        while out.len() < max {
            // Take what is already fetched without waiting; wait only when it runs dry.
            let message = match self.consumer.poll(Duration::ZERO) {
                Some(m) => Some(m),
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.consumer.poll(left)
                }
            };
            match message {
                Some(Ok(m)) => out.push(m),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => {}
            }
        }
        out
    }

    /// Commits `offsets` (next offsets to read) for the group.
    pub fn commit(&self, offsets: &Offsets) -> Result<()> {
        commit(&self.consumer, &self.topic, offsets)
    }

    /// The consumer, for a transactional sink to commit its offsets with.
    pub fn consumer(&self) -> &BaseConsumer<MemberContext> {
        &self.consumer
    }

    /// The partitions this member holds now.
    pub fn assigned(&self) -> Vec<i32> {
        self.consumer.assignment().map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default()
    }

    /// Runs `hook` whenever partitions are about to be revoked (inside
    /// `poll_batch`, on this thread).
    pub fn on_revoke(&self, hook: RevokeHook) {
        *self.consumer.context().on_revoke.lock().expect("revoke hook lock") = Some(hook);
    }
}

/// Commits `offsets` of `topic` for the consumer's group.
pub fn commit(consumer: &BaseConsumer<MemberContext>, topic: &str, offsets: &Offsets) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    consumer.commit(&partition_list(topic, offsets)?, CommitMode::Sync)?;
    Ok(())
}

fn partition_list(topic: &str, offsets: &Offsets) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (&partition, &next) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    Ok(tpl)
}

/// Counts delivery failures of a producer, so a batch is known to be
/// acknowledged in full before offsets move.
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().expect("delivery lock");
            failed.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Records produced to a topic, each acknowledged before `deliver` returns,
/// or, when transactional, committed with their source offsets.
pub struct KafkaSink {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    transactional: bool,
    /// A transaction is open: records were sent since the last commit.
    open: bool,
}

/// How long a transaction call may take before the member gives up (and is
/// restarted from its committed offsets).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaSink {
    pub fn open(brokers: &str, topic: &str, client_id: &str) -> Result<KafkaSink> {
        let producer = producer_config(brokers, client_id).create_with_context(Deliveries::default())?;
        Ok(KafkaSink { producer, topic: topic.to_string(), transactional: false, open: false })
    }

    /// A sink whose records are committed in transactions, with the source
    /// offsets ([`KafkaSink::commit_transaction`]). `transactional_id` must
    /// be the same for every incarnation of one member and differ between
    /// members: Kafka fences the older producer of an id and aborts what it
    /// left open.
    pub fn open_transactional(
        brokers: &str,
        topic: &str,
        client_id: &str,
        transactional_id: &str,
    ) -> Result<KafkaSink> {
        let producer: ThreadedProducer<Deliveries> = producer_config(brokers, client_id)
            .set("transactional.id", transactional_id)
            // A killed member's open transaction holds back `read_committed`
            // readers of the output until its successor fences it or this
            // expires; a micro-batch takes well under it.
            .set("transaction.timeout.ms", "30000")
            .create_with_context(Deliveries::default())?;
        producer.init_transactions(TRANSACTION_TIMEOUT)?;
        Ok(KafkaSink { producer, topic: topic.to_string(), transactional: true, open: false })
    }

    /// Whether records are committed in transactions.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Queues one record; `header` is an optional (name, value) pair.
    pub fn send(&mut self, key: Option<&[u8]>, payload: &[u8], header: Option<(&str, &str)>) -> Result<()> {
        if self.transactional && !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some((name, value)) = header {
            record = record.headers(OwnedHeaders::new().insert(Header { key: name, value: Some(value) }));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The local queue is full: let deliveries drain it.
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until everything sent was acknowledged (or failed).
    pub fn deliver(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout)?;
        match self.producer.context().failed.lock().expect("delivery lock").take() {
            Some(why) => Err(Error::Invalid(format!("delivery to `{}` failed: {why}", self.topic))),
            None => Ok(()),
        }
    }

    /// Commits the records sent since the last commit together with the
    /// consumer's `offsets` of `topic`, in one transaction. On error the
    /// transaction is aborted: none of its records become visible to
    /// `read_committed` readers and the offsets stay where they were, so the
    /// caller must read again from the committed offsets (a member exits and
    /// is restarted).
    pub fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<MemberContext>,
        topic: &str,
        offsets: &Offsets,
    ) -> Result<()> {
        if offsets.is_empty() && !self.open {
            return Ok(());
        }
        let committed = self.try_commit(consumer, topic, offsets);
        if committed.is_err() && self.open {
            if let Err(e) = self.producer.abort_transaction(TRANSACTION_TIMEOUT) {
                tracing::warn!(error = %e, "could not abort the transaction; the broker will when it times out");
            }
            self.producer.context().failed.lock().expect("delivery lock").take();
        }
        self.open = false;
        committed
    }

    fn try_commit(&mut self, consumer: &BaseConsumer<MemberContext>, topic: &str, offsets: &Offsets) -> Result<()> {
        if !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        if !offsets.is_empty() {
            let group = consumer
                .group_metadata()
                .ok_or_else(|| Error::Invalid("the consumer has no group to commit offsets for".into()))?;
            self.producer.send_offsets_to_transaction(&partition_list(topic, offsets)?, &group, TRANSACTION_TIMEOUT)?;
        }
        // Fails if any record of the transaction failed to deliver.
        self.producer.commit_transaction(TRANSACTION_TIMEOUT)?;
        Ok(())
    }
}

fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    config
}

/// One partition's progress for a group.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed (next) offset; None before its first commit.
    pub committed: Option<i64>,
    /// The partition's end (high watermark).
    pub end: i64,
    pub lag: i64,
}

fn admin_consumer(brokers: &str, group: Option<&str>) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("enable.auto.commit", "false");
    if let Some(group) = group {
        config.set("group.id", group);
    }
    Ok(config.create()?)
}

/// The group's committed offsets and lag on each partition of `topic`,
/// read from the brokers as `kafka-consumer-groups --describe` does.
pub fn group_lag(brokers: &str, topic: &str, group: &str, timeout: Duration) -> Result<Vec<PartitionLag>> {
    let consumer = admin_consumer(brokers, Some(group))?;
    let partitions = partitions_of(&consumer, brokers, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut out = Vec::new();
    for p in partitions {
        let (low, end) = consumer.fetch_watermarks(topic, p, timeout)?;
        let committed = committed.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        let lag = end - committed.unwrap_or(low).max(low);
        out.push(PartitionLag { partition: p, committed, end, lag: lag.max(0) });
    }
    Ok(out)
}

/// The partitions of `topic`; an error naming the topic if it does not exist.
pub fn topic_partitions(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let consumer = admin_consumer(brokers, None)?;
    partitions_of(&consumer, brokers, topic, timeout)
}

fn partitions_of(consumer: &BaseConsumer, brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().iter().map(|p| p.id()).collect())
        }
        _ => Err(Error::Invalid(format!("topic `{topic}` does not exist on {brokers}"))),
    }
}
