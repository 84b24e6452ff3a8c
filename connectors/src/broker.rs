//! The embedded broker: librdkafka's mock cluster, a Kafka-protocol broker
//! held in memory, for trying Cohort out on one machine. Any Kafka client
//! reaches it at its bootstrap address. It keeps at most 5 MiB (or 100,000
//! message sets) per partition, loses everything when it stops, and
//! creates a topic (4 partitions) on first use; a real cluster is one
//! `brokers = "..."` away.
//!
//! Clients other than librdkafka's reach it through a [`front`] that
//! answers the one exchange the mock cluster gets wrong for them: the
//! version negotiation every connection opens with.

mod front;

use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::{Error, Result};

/// What an embedded broker is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `cohort up`'s: any Kafka client (kafka-python's, librdkafka's, …)
    /// through a front that copies their bytes after fixing the version
    /// negotiation the mock gets wrong for some. A new group waits Kafka's
    /// `group.initial.rebalance.delay.ms` (3 s) for more members before its
    /// first assignment, so the members of a pipeline started together
    /// share its partitions from the start instead of rebalancing at once:
    /// the embedded broker refuses commits during a rebalance, and the
    /// records read before it would be read again.
    Shared,
    /// `cohort bench stream`'s: librdkafka's clients straight to the mock
    /// (no bytes copied on the way) and groups formed at once (its one
    /// member's wait would be timed as reading).
    Bench,
}

/// Kafka's default `group.initial.rebalance.delay.ms`.
const INITIAL_REBALANCE_DELAY_MS: i32 = 3000;

/// A running embedded broker; dropping it stops it.
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// Asked of the thread that owns the mock cluster.
enum Command {
    CreateTopic { name: String, partitions: i32, done: mpsc::Sender<Result<()>> },
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster on a free loopback port.
    pub fn start(setup: Setup) -> Result<EmbeddedBroker> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (commands_tx, commands_rx) = mpsc::channel::<Command>();
        // The mock cluster is not Send: it lives and dies on its own thread.
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let anchor: BaseProducer = match ClientConfig::new().set("test.mock.num.brokers", "1").create() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let bootstrap = match anchor.client().mock_cluster() {
                    Some(cluster) => cluster.bootstrap_servers(),
                    None => {
                        let _ = ready_tx.send(Err(Error::Invalid("librdkafka made no mock cluster".into())));
                        return;
                    }
                };
                // SAFETY: the handle belongs to `anchor`, which outlives this call.
                let cluster = unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(anchor.client().native_ptr()) };
                let join_delay_ms = match setup {
                    Setup::Shared => INITIAL_REBALANCE_DELAY_MS,
                    Setup::Bench => 0,
                };
                // SAFETY: as above.
                unsafe { rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, join_delay_ms) };
                let front = match setup {
                    Setup::Bench => None,
                    Setup::Shared => match start_front(cluster, &bootstrap) {
                        Ok(front) => Some(front),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    },
                };
                let bootstrap = front.as_ref().map_or(bootstrap, |f| f.address().to_string());
                let _ = ready_tx.send(Ok(bootstrap));
                // Until every sender is dropped (the broker is stopped).
                while let Ok(command) = commands_rx.recv() {
                    match command {
                        Command::CreateTopic { name, partitions, done } => {
                            let created = match anchor.client().mock_cluster() {
                                Some(cluster) => cluster.create_topic(&name, partitions, 1).map_err(Error::from),
                                None => Err(Error::Invalid("the mock cluster is gone".into())),
                            };
                            let _ = done.send(created);
                        }
                    }
                }
                // The cluster's connections close first, which ends the front's.
                drop(anchor);
                drop(front);
            })
            .map_err(|e| Error::Invalid(format!("cannot start the embedded broker: {e}")))?;
        let bootstrap =
            ready_rx.recv().map_err(|_| Error::Invalid("the embedded broker thread ended before serving".into()))??;
        Ok(EmbeddedBroker { bootstrap, commands: Some(commands_tx), thread: Some(thread) })
    }

    /// Creates a topic of `partitions` partitions (topics made on first use get 4).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let (done, result) = mpsc::channel();
        let command = Command::CreateTopic { name: name.to_string(), partitions, done };
        let gone = || Error::Invalid("the embedded broker has stopped".into());
        self.commands.as_ref().ok_or_else(gone)?.send(command).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }

    /// `HOST:PORT` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

/// Puts a [`front::Front`] before the cluster's one broker (id 1, at
/// `bootstrap`) and has the cluster name the front in its metadata, so
/// clients come back through it for every later connection.
fn start_front(cluster: *mut rdkafka::bindings::rd_kafka_mock_cluster_t, bootstrap: &str) -> Result<front::Front> {
    let broker: SocketAddr =
        bootstrap.parse().map_err(|e| Error::Invalid(format!("mock cluster address `{bootstrap}`: {e}")))?;
    let front =
        front::Front::start(broker).map_err(|e| Error::Invalid(format!("cannot start the embedded broker: {e}")))?;
    let host = CString::new(front.address().ip().to_string()).expect("an IP address has no NUL byte");
    // SAFETY: `cluster` is alive (its owner is on this thread); the host is copied.
    unsafe {
        rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
            cluster,
            1,
            host.as_ptr(),
            i32::from(front.address().port()),
        )
    };
    Ok(front)
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::kafka::{KafkaSink, KafkaSource, Start, group_lag, topic_partitions};

    #[test]
    fn a_produced_message_is_consumed_committed_and_lag_reported() {
        let broker = EmbeddedBroker::start(Setup::Shared).unwrap();
        let brokers = broker.bootstrap().to_string();
        assert!(
            topic_partitions(&brokers, "nothing-here", Duration::from_secs(5))
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let mut sink = KafkaSink::open(&brokers, "t", "test").unwrap();
        for i in 0..10 {
            sink.send(Some(format!("k{i}").as_bytes()), format!("{{\"i\": {i}}}").as_bytes(), None).unwrap();
        }
        sink.deliver(Duration::from_secs(10)).unwrap();
        let partitions = topic_partitions(&brokers, "t", Duration::from_secs(5)).unwrap();
        assert!(!partitions.is_empty());

        let source = KafkaSource::open(&brokers, "t", "g", Start::Earliest, "test").unwrap();
        let mut seen = 0;
        let mut offsets = crate::kafka::Offsets::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen < 10 && std::time::Instant::now() < deadline {
            for m in source.poll_batch(100, Duration::from_millis(200)) {
                use rdkafka::Message;
                offsets.insert(m.partition(), m.offset() + 1);
                seen += 1;
            }
        }
        assert_eq!(seen, 10, "all produced messages are read within 30 s");
        source.commit(&offsets).unwrap();
        let lag = group_lag(&brokers, "t", "g", Duration::from_secs(5)).unwrap();
        assert_eq!(lag.iter().map(|p| p.lag).sum::<i64>(), 0, "{lag:?}");
        assert_eq!(lag.iter().map(|p| p.end).sum::<i64>(), 10);
    }

    #[test]
    fn a_transaction_commits_records_with_offsets_and_a_restarted_member_takes_over_its_id() {
        let broker = EmbeddedBroker::start(Setup::Shared).unwrap();
        let brokers = broker.bootstrap().to_string();
        let mut input = KafkaSink::open(&brokers, "in", "test").unwrap();
        for i in 0..5 {
            input.send(None, format!("{{\"i\": {i}}}").as_bytes(), None).unwrap();
        }
        input.deliver(Duration::from_secs(10)).unwrap();
        let source = KafkaSource::open(&brokers, "in", "g", Start::Earliest, "test").unwrap();
        let mut offsets = crate::kafka::Offsets::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while offsets.values().sum::<i64>() < 5 && std::time::Instant::now() < deadline {
            for m in source.poll_batch(100, Duration::from_millis(200)) {
                use rdkafka::Message;
                offsets.insert(m.partition(), m.offset() + 1);
            }
        }

        let mut first = KafkaSink::open_transactional(&brokers, "out", "first", "member-0").unwrap();
        assert!(first.is_transactional());
        first.send(None, b"{\"i\": 0}", None).unwrap();
        first.commit_transaction(source.consumer(), "in", &offsets).unwrap();
        assert_eq!(
            topic_partitions(&brokers, "out", Duration::from_secs(5)).map(|p| !p.is_empty()).ok(),
            Some(true),
            "the committed transaction's topic exists"
        );

        // A restarted member takes the same transactional id over an open
        // transaction of its predecessor. (Kafka fences the predecessor
        // here; the embedded broker does not, so that is not asserted.)
        first.send(None, b"{\"i\": 1}", None).unwrap();
        let mut successor = KafkaSink::open_transactional(&brokers, "out", "second", "member-0").unwrap();
        successor.send(None, b"{\"i\": 1}", None).unwrap();
        successor.commit_transaction(source.consumer(), "in", &offsets).unwrap();
        let empty = crate::kafka::Offsets::new();
        successor.commit_transaction(source.consumer(), "in", &empty).expect("nothing to commit is no error");
    }
}
