//! `cohort bench stream`: N JSON messages of about 200 bytes in a topic
//! (the embedded broker by default, `--brokers` for a real one), read in
//! the same run by a bare rdkafka consumer loop and by a pipeline member
//! (JSON → Arrow → `WHERE url LIKE '%checkout%'` → Parquet, offsets
//! committed after each file), and by a pipeline member writing to Kafka
//! in transactions (exactly-once); a member is timed until its last
//! offset is committed, asked to stop once it has polled every message.
//! Then a live phase: messages produced at a steady rate to each reader
//! in turn, once it has joined its group, for end-to-end latency (produced
//! → consumed, and produced → visible in a committed Parquet file). Last,
//! the member's decoder alone on the same messages: the floor of what a
//! member adds to a bare consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, Int64Array};
use cohort_connectors::broker::{EmbeddedBroker, Setup};
use cohort_connectors::kafka::{KafkaSink, KafkaSource, Start, topic_partitions};
use cohort_stream::member::Progress;
use cohort_stream::{OnError, PipelineConfig, SinkConfig};
use rdkafka::Message;

#[derive(clap::Args)]
pub struct Args {
    /// Messages in the throughput phase.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// A real Kafka cluster (default: an embedded broker in this process).
    #[arg(long)]
    brokers: Option<String>,
    /// Partitions of the topics the embedded broker creates.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Messages per second in the latency phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Seconds the latency phase produces for.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Milliseconds after which the pipeline's Parquet files roll (are committed).
    #[arg(long, default_value_t = 1000)]
    roll_ms: u64,
}

const MESSAGE_BYTES: usize = 200;
/// Long enough for a reader to join its group before the latency phase produces.
const JOIN_TIME: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> Result<()> {
    tokio::task::spawn_blocking(move || measure(&args)).await?
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_micros() as i64
}

/// A message of about 200 bytes; every other one is a checkout.
fn message(id: u64) -> Vec<u8> {
    let url = if id.is_multiple_of(2) { "/shop/checkout/confirm" } else { "/browse/catalog/item" };
    let head = format!(r#"{{"id": {id}, "user": {}, "url": "{url}", "ts": {}, "pad": ""#, id % 10_000, now_us());
    let mut m = head.into_bytes();
    m.resize(MESSAGE_BYTES - 2, b'x');
    m.extend_from_slice(b"\"}");
    m
}

fn produce(brokers: &str, topic: &str, ids: std::ops::Range<u64>, rate: Option<u64>) -> Result<()> {
    let mut sink = KafkaSink::open(brokers, topic, "bench-producer")?;
    let started = Instant::now();
    for id in ids.clone() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64((id - ids.start) as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sink.send(Some(id.to_string().as_bytes()), &message(id), None)?;
    }
    sink.deliver(Duration::from_secs(120))?;
    Ok(())
}

struct Phase {
    messages: u64,
    elapsed: Duration,
    /// CPU time of the reader's threads (its own and librdkafka's) over the phase.
    cpu: Duration,
}

/// The CPU time a reader spends: this process's (every thread's, those
/// that ended included) less the embedded broker's (`rdk:mock`), so that a
/// reader is charged what it costs wherever its broker runs.
struct CpuMeter {
    process: Duration,
    broker: Duration,
}

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter { process: process_cpu(), broker: broker_cpu() }
    }

    fn spent(&self) -> Duration {
        process_cpu().saturating_sub(self.process).saturating_sub(broker_cpu().saturating_sub(self.broker))
    }
}

fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into `now`.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time per message of decoding alone, on this thread: the messages of
/// one micro-batch into the columns the bench's transform reads, by the
/// member's decoder (arrow-json). The least a member adds to a bare
/// consumer's work, before filtering, encoding and committing. With the
/// number of columns decoded.
fn decode_cost() -> Result<(Duration, usize)> {
    const MESSAGES: usize = 20_000;
    const ROUNDS: u32 = 20;
    let config = pipeline_config("decode", parquet_sink(std::path::Path::new("unused"), 1000), "decode");
    let used = tokio::runtime::Handle::current().block_on(config.used_columns())?;
    let mut decoder = cohort_connectors::json::JsonDecoder::new(cohort_connectors::schema::schema_of(&used)?);
    let messages: Vec<Vec<u8>> = (0..MESSAGES as u64).map(message).collect();
    let views: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    decoder.decode(&views)?;
    let before = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    for _ in 0..ROUNDS {
        std::hint::black_box(decoder.decode(&views)?);
    }
    Ok(((cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - before) / (ROUNDS * MESSAGES as u32), used.len()))
}

/// The embedded broker's threads' CPU time so far, from
/// `/proc/self/task/*/schedstat` (Linux; they live as long as the bench).
fn broker_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.starts_with("rdk:mock")))
        .filter_map(|task| {
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            schedstat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(ns)
}

impl Phase {
    fn per_cpu_second(&self) -> f64 {
        self.messages as f64 / self.cpu.as_secs_f64()
    }
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_second(&self) -> f64 {
        self.per_second() * MESSAGE_BYTES as f64 / 1e6
    }
}

/// A bare consumer loop reading `n` messages (touching every payload);
/// with `latencies`, each message's produced → read time.
fn bare(brokers: &str, topic: &str, n: u64, mut latencies: Option<&mut Vec<i64>>) -> Result<Phase> {
    let group = format!("bench-bare-{}-{}", std::process::id(), now_us());
    let source = KafkaSource::open(brokers, topic, &group, Start::Earliest, "bench-bare")?;
    let (mut seen, mut bytes) = (0u64, 0usize);
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while seen < n {
        if Instant::now() > deadline {
            bail!("the bare consumer read {seen} of {n} messages in 600 s");
        }
        for m in source.poll_batch(10_000, Duration::from_millis(100)) {
            let payload = m.payload().unwrap_or_default();
            bytes += payload.len();
            if let Some(l) = latencies.as_deref_mut() {
                l.push(now_us() - produced_at(payload));
            }
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    Ok(Phase { messages: seen, elapsed: started.elapsed(), cpu: cpu.spent() })
}

/// The `ts` field of a message this bench wrote.
fn produced_at(payload: &[u8]) -> i64 {
    let text = std::str::from_utf8(payload).unwrap_or_default();
    text.split("\"ts\": ").nth(1).and_then(|r| r.split(',').next()).and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn pipeline_config(topic: &str, sink: SinkConfig, group: &str) -> PipelineConfig {
    let columns = [("id", "Int64"), ("user", "Int64"), ("url", "Utf8"), ("ts", "Int64"), ("pad", "Utf8")];
    PipelineConfig {
        name: "bench".into(),
        brokers: None,
        topic: topic.into(),
        group: group.into(),
        start_latest: false,
        schema: columns.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
        sql: Some("SELECT id, user, url, ts FROM source WHERE url LIKE '%checkout%'".into()),
        sink,
        max_records: 20_000,
        max_latency_ms: 100,
        on_error: OnError::Skip,
    }
}

/// Into Parquet files under `out`, rolled every `roll_ms`.
fn parquet_sink(out: &std::path::Path, roll_ms: u64) -> SinkConfig {
    SinkConfig::Parquet { path: out.display().to_string(), roll_bytes: 64 << 20, roll_ms }
}

/// How a pipeline phase ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// Once the member has polled every record it is asked to stop, as a
    /// pause does: it commits the open file and its offsets then, where it
    /// would otherwise wait for the file's roll interval. That wait is
    /// latency (measured apart) and, on a burst of a few seconds, would
    /// hide the member's speed behind the roll timer.
    StopOncePolled,
    /// When files roll by themselves (for latency).
    AtRoll,
}

/// A pipeline member until `n` records' offsets are committed.
fn pipeline(brokers: &str, topic: &str, n: u64, sink: SinkConfig, end: End) -> Result<Phase> {
    let group = format!("bench-pipeline-{}-{}", std::process::id(), now_us());
    let config = pipeline_config(topic, sink, &group);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let member = {
        let (brokers, stop, progress) = (brokers.to_string(), stop.clone(), progress.clone());
        std::thread::spawn(move || cohort_stream::member::run(&config, &brokers, "bench-0", 0, &stop, &progress, None))
    };
    let deadline = started + Duration::from_secs(600);
    while progress.committed.load(Ordering::SeqCst) < n && !member.is_finished() && Instant::now() < deadline {
        if end == End::StopOncePolled && progress.polled.load(Ordering::SeqCst) >= n {
            stop.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (elapsed, cpu) = (started.elapsed(), cpu.spent());
    stop.store(true, Ordering::SeqCst);
    let ended = member.join().map_err(|_| anyhow::anyhow!("the member panicked"))?;
    let committed = progress.committed.load(Ordering::SeqCst);
    if committed < n {
        bail!(
            "the pipeline committed {committed} of {n} records in {:.0} s ({:?})",
            elapsed.as_secs_f64(),
            ended.err()
        );
    }
    Ok(Phase { messages: ended?.records_in.max(n), elapsed, cpu })
}

/// Produced → visible in Parquet, per row, from each file's commit time.
fn parquet_latencies(dir: &std::path::Path) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let visible = entry.metadata()?.modified()?.duration_since(UNIX_EPOCH)?.as_micros() as i64;
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(std::fs::File::open(entry.path())?, 8192)?;
        for batch in reader {
            let batch = batch?;
            let ts = batch.column_by_name("ts").context("a ts column")?;
            let ts = ts.as_any().downcast_ref::<Int64Array>().context("ts is Int64")?;
            out.extend(ts.iter().flatten().map(|t| visible - t));
        }
    }
    Ok(out)
}

fn p99_ms(mut v: Vec<i64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1e3
}

fn measure(args: &Args) -> Result<()> {
    let embedded = match &args.brokers {
        Some(_) => None,
        None => Some(EmbeddedBroker::start(Setup::Bench)?),
    };
    let brokers = match (&args.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap().to_string(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let run = now_us();
    let (topic, live, live_pipeline, forwarded) = (
        format!("bench-{run}"),
        format!("bench-live-{run}"),
        format!("bench-live-p-{run}"),
        format!("bench-out-{run}"),
    );
    if let Some(e) = &embedded {
        for t in [&topic, &live, &live_pipeline, &forwarded] {
            e.create_topic(t, args.partitions)?;
        }
    }
    let n = args.messages;
    println!("producing {n} messages of {MESSAGE_BYTES} bytes to {topic} on {brokers}");
    let at = Instant::now();
    produce(&brokers, &topic, 0..n, None)?;
    println!("  produced in {:.2} s", at.elapsed().as_secs_f64());
    if embedded.is_some() {
        check_retained(&brokers, &topic)?;
    }
    let dir = tempfile::tempdir()?;
    let bare_phase = bare(&brokers, &topic, n, None)?;
    let throughput_out = parquet_sink(&dir.path().join("throughput"), args.roll_ms);
    let pipeline_phase = pipeline(&brokers, &topic, n, throughput_out, End::StopOncePolled)?;
    let to_kafka = SinkConfig::Kafka { brokers: None, topic: forwarded, exactly_once: true };
    let kafka_phase = pipeline(&brokers, &topic, n, to_kafka, End::StopOncePolled)?;

    // Latency: a steady rate once each reader has joined its group.
    let live_n = args.rate * args.seconds;
    let bare_reader = {
        let (brokers, live) = (brokers.clone(), live.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            bare(&brokers, &live, live_n, Some(&mut latencies)).map(|_| latencies)
        })
    };
    std::thread::sleep(JOIN_TIME);
    produce(&brokers, &live, 0..live_n, Some(args.rate))?;
    let bare_latencies = bare_reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    let live_out = dir.path().join("live");
    let pipeline_reader = {
        let (brokers, topic, out) = (brokers.clone(), live_pipeline.clone(), live_out.clone());
        let roll_ms = args.roll_ms;
        std::thread::spawn(move || pipeline(&brokers, &topic, live_n, parquet_sink(&out, roll_ms), End::AtRoll))
    };
    std::thread::sleep(JOIN_TIME);
    produce(&brokers, &live_pipeline, 0..live_n, Some(args.rate))?;
    pipeline_reader.join().map_err(|_| anyhow::anyhow!("the pipeline panicked"))??;
    let pipeline_latencies = parquet_latencies(&live_out)?;

    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["reader", "messages/s", "MB/s", "messages per CPU-second", "p99 produced → available"]);
    let phases = [
        ("bare rdkafka consumer", &bare_phase, format!("{:.1} ms (read)", p99_ms(bare_latencies))),
        (
            "pipeline: JSON → filter → Parquet",
            &pipeline_phase,
            format!("{:.1} ms (in a committed file; files roll every {} ms)", p99_ms(pipeline_latencies), args.roll_ms),
        ),
        ("pipeline: JSON → filter → Kafka, exactly-once", &kafka_phase, "-".to_string()),
    ];
    for (reader, phase, latency) in phases {
        table.add_row([
            reader.to_string(),
            format!("{:.0}", phase.per_second()),
            format!("{:.1}", phase.mb_per_second()),
            format!("{:.0}", phase.per_cpu_second()),
            latency,
        ]);
    }
    println!("{table}");
    println!(
        "pipeline / bare consumer: {:.2} in messages/s, {:.2} per CPU-second ({} messages, latency at {} messages/s)",
        pipeline_phase.per_second() / bare_phase.per_second(),
        pipeline_phase.per_cpu_second() / bare_phase.per_cpu_second(),
        n,
        args.rate
    );
    println!(
        "CPU-seconds count each reader's threads with librdkafka's, not the embedded broker's; \
         in messages/s the readers share this machine's cores with the embedded broker"
    );
    let ((decode, columns), bare_per_message) = (decode_cost()?, bare_phase.cpu / bare_phase.messages as u32);
    println!(
        "decoding alone (arrow-json, the {} columns read): {:.2} µs of CPU per message, against {:.2} µs for all of \
         the bare consumer's work: a member that did nothing else would reach {:.2} of it per CPU-second",
        columns,
        decode.as_secs_f64() * 1e6,
        bare_per_message.as_secs_f64() * 1e6,
        bare_per_message.as_secs_f64() / (bare_per_message + decode).as_secs_f64()
    );
    Ok(())
}

/// The embedded broker keeps about 5 MiB per partition; a run that
/// overflowed it would measure less than it produced.
fn check_retained(brokers: &str, topic: &str) -> Result<()> {
    let consumer: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    for p in topic_partitions(brokers, topic, Duration::from_secs(5))? {
        let (low, _) = rdkafka::consumer::Consumer::fetch_watermarks(&consumer, topic, p, Duration::from_secs(5))?;
        if low > 0 {
            bail!(
                "the embedded broker dropped the oldest messages of partition {p} (it keeps ~5 MiB per partition): \
                 use fewer --messages, more --partitions, or --brokers"
            );
        }
    }
    Ok(())
}
