//! Pipelines end to end on `cohort up`'s embedded broker: records produced
//! to Kafka reach a Parquet sink and a Kafka sink through a SQL filter and
//! projection; a member killed with -9 and another preempted lose nothing;
//! malformed records land in the dead-letter topic with their error; a
//! paused and resumed pipeline loses nothing; bad specs are refused naming
//! the field.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cohort_connectors::kafka::{KafkaSink, KafkaSource, Start};
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::Value;

use crate::harness::{Up, http, kill9, pids_of};

const WAIT: Duration = Duration::from_secs(120);

fn produce(brokers: &str, topic: &str, ids: std::ops::Range<u64>) {
    let mut sink = KafkaSink::open(brokers, topic, "e2e-producer").expect("a producer");
    for id in ids {
        let url = if id % 2 == 0 { format!("/shop/checkout/{id}") } else { format!("/browse/{id}") };
        let json = format!(r#"{{"user_id": {id}, "url": "{url}", "ts": {}}}"#, 1_700_000_000 + id);
        sink.send(Some(id.to_string().as_bytes()), json.as_bytes(), None).expect("queued");
    }
    sink.deliver(Duration::from_secs(30)).expect("acknowledged");
}

/// Every message of `topic`, from the start, as (payload, `cohort.error` header).
fn read_topic(brokers: &str, topic: &str, expect_at_least: usize) -> Vec<(String, Option<String>)> {
    let group = format!("e2e-reader-{topic}-{}", std::process::id());
    let source = KafkaSource::open(brokers, topic, &group, Start::Earliest, "e2e-reader").expect("a consumer");
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.len() < expect_at_least && Instant::now() < deadline {
        for m in source.poll_batch(10_000, Duration::from_millis(500)) {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            let error = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "cohort.error")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
            });
            out.push((payload, error));
        }
    }
    out
}

fn write(up: &Up, name: &str, text: &str) -> String {
    let path = up.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn stream_members(up: &Up, pipeline: &str) -> Vec<u32> {
    let needle = format!("\"name\":\"{pipeline}\"");
    pids_of(&["--kind stream -- pipeline"])
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|e| {
                    let env = String::from_utf8_lossy(&e);
                    env.contains(&up.dir.path().display().to_string()) && env.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn lag(up: &Up, pipeline: &str) -> Option<i64> {
    let v = up.json(&["pipeline", "get", pipeline]);
    let committed_everywhere = v["partitions"].as_array()?.iter().all(|p| !p["committed"].is_null() || p["end"] == 0);
    (committed_everywhere && v["lag_error"].is_null()).then(|| v["lag"].as_i64()).flatten()
}

#[test]
fn pipelines_deliver_every_record_through_kills_and_preemption() {
    let up = Up::start_with(2, &["--sql-pool-warm", "0"]);
    let status = up.json(&["status"]);
    let brokers = status["kafka_bootstrap"].as_str().expect("an embedded broker").to_string();
    assert!(!brokers.is_empty(), "{status}");

    // Bad specs: the field is named, nothing is created.
    let out = up.json(&["pipeline", "list"]);
    assert_eq!(out, Value::Array(vec![]), "no pipelines yet");
    let missing =
        up.cli(&["pipeline", "create", &write(&up, "missing.toml", &spec("m", "no-such-topic", "/tmp/x/", 1))]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && err.contains("missing.toml:4: source.kafka.topic: topic `no-such-topic`"),
        "{err}"
    );

    produce(&brokers, "clicks", 0..2_000);
    for (bad, field) in [
        (spec("b", "clicks", "/tmp/x/", 1).replace("ts = \"Int64\"", "ts = \"Instant\""), "source.kafka.schema.ts"),
        (spec("b", "clicks", "/tmp/x/", 1).replace("SELECT user_id", "SELECT user_idd"), "transform.sql"),
        // A TOML syntax error is reported where it is, not as "not a pipeline spec"
        (spec("b", "clicks", "/tmp/x/", 1).replace("topic = \"clicks\"", "topic = \"clicks"), "bad.toml:4"),
    ] {
        let out = up.cli(&["pipeline", "create", &write(&up, "bad.toml", &bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(field), "{field}: {err}");
    }

    // Malformed records among good ones.
    let mut raw = KafkaSink::open(&brokers, "clicks", "e2e-bad").unwrap();
    for bad in ["not json", r#"{"user_id": "seven", "url": "/shop/checkout/x"}"#, r#"{"user_id": 1"#] {
        raw.send(None, bad.as_bytes(), None).unwrap();
    }
    raw.deliver(Duration::from_secs(30)).unwrap();

    let out_dir = up.dir.path().join("checkouts");
    let parquet = spec("checkouts", "clicks", &format!("{}/", out_dir.display()), 2);
    let created = up.cli(&["pipeline", "create", &write(&up, "checkouts.toml", &parquet)]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let to_kafka = spec("forward", "clicks", "", 1)
        .replace("[sink.parquet]\npath = \"\"\nroll_every = \"1s\"", "[sink.kafka]\ntopic = \"checkouts-out\"");
    let created = up.cli(&["pipeline", "create", &write(&up, "forward.toml", &to_kafka)]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    up.wait_until("both checkouts members run", WAIT, |u| stream_members(u, "checkouts").len() == 2);
    up.wait_until("the forward member runs", WAIT, |u| stream_members(u, "forward").len() == 1);
    // More records while a member of each is killed, and while another is preempted.
    produce(&brokers, "clicks", 2_000..4_000);
    kill9(stream_members(&up, "checkouts")[0]);
    kill9(stream_members(&up, "forward")[0]);
    produce(&brokers, "clicks", 4_000..6_000);
    let urgent = write(&up, "urgent.toml", URGENT);
    assert!(up.cli(&["submit", &urgent]).status.success());
    produce(&brokers, "clicks", 6_000..8_000);

    up.wait_until("the Parquet pipeline has committed everything", WAIT, |u| lag(u, "checkouts") == Some(0));
    up.wait_until("the Kafka pipeline has committed everything", WAIT, |u| lag(u, "forward") == Some(0));

    // Paused, it stops reading; resumed, it goes on from its committed offsets.
    assert!(up.cli(&["pipeline", "pause", "checkouts"]).status.success());
    up.wait_until("the paused pipeline's members stop", WAIT, |u| stream_members(u, "checkouts").is_empty());
    assert_eq!(up.json(&["pipeline", "get", "checkouts"])["state"], "paused");
    produce(&brokers, "clicks", 8_000..9_000);
    std::thread::sleep(Duration::from_secs(1));
    assert!(lag(&up, "checkouts").is_some_and(|l| l >= 1_000), "nothing reads while paused");
    assert!(up.cli(&["pipeline", "resume", "checkouts"]).status.success());
    up.wait_until("the resumed pipeline catches up", WAIT, |u| lag(u, "checkouts") == Some(0));

    // A member stopped (SIGSTOP) answers no health check: it is restarted,
    // and what it held is read again.
    up.wait_until("both checkouts members run again", WAIT, |u| stream_members(u, "checkouts").len() == 2);
    let stopped = stream_members(&up, "checkouts")[0];
    let _ = std::process::Command::new("kill").args(["-STOP", &stopped.to_string()]).status();
    produce(&brokers, "clicks", 9_000..10_000);
    up.wait_until("the stopped member is replaced", WAIT, |u| {
        let members = stream_members(u, "checkouts");
        members.len() == 2 && !members.contains(&stopped)
    });
    up.wait_until("the pipeline catches up without it", WAIT, |u| lag(u, "checkouts") == Some(0));

    // The HTTP side sees the same: lag per partition in the API and in /metrics.
    let http_address = status["http"].as_str().expect("an HTTP address");
    let (code, body) = http(http_address, &up.token, "GET", "/api/v1/pipelines", None);
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let checkouts = listed.as_array().unwrap().iter().find(|p| p["name"] == "checkouts").expect("listed");
    assert_eq!((checkouts["lag"].as_i64(), checkouts["state"].as_str()), (Some(0), Some("running")), "{checkouts}");
    assert!(checkouts["partitions"].as_array().is_some_and(|p| !p.is_empty()), "{checkouts}");
    let (_, metrics) = http(http_address, &up.token, "GET", "/metrics", None);
    assert!(metrics.contains("cohort_pipeline_lag_messages{pipeline=\"checkouts\",partition=\"0\"} 0"), "{metrics}");

    // Every even id (the filter) is in the Parquet files; nothing lost.
    let expected: BTreeSet<u64> = (0..10_000).filter(|i| i % 2 == 0).collect();
    let got = parquet_ids(&out_dir);
    let distinct: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(distinct, expected, "no record lost in Parquet");
    let duplicates = got.len() - distinct.len();
    eprintln!("parquet: {} rows, {duplicates} duplicate(s) (at-least-once)", got.len());

    let expected: BTreeSet<u64> = (0..8_000).filter(|i| i % 2 == 0).collect();
    let forwarded = read_topic(&brokers, "checkouts-out", expected.len());
    let all: Vec<u64> =
        forwarded.iter().map(|(p, _)| serde_json::from_str::<Value>(p).unwrap()["user_id"].as_u64().unwrap()).collect();
    let ids: BTreeSet<u64> = all.iter().copied().filter(|i| *i < 8_000).collect();
    assert_eq!(ids, expected, "no record lost in Kafka");
    // Transactions make these zero for `read_committed` readers on Kafka;
    // the embedded broker shows aborted records too, so they are reported.
    let repeated = all.len() - all.iter().collect::<BTreeSet<_>>().len();
    eprintln!("kafka: {} records, {repeated} repeated (a killed member's aborted transaction)", all.len());

    // The three malformed records, with why, in the dead-letter topic.
    let dead = read_topic(&brokers, "clicks.dlq", 3);
    let distinct_dead: BTreeSet<&str> = dead.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(distinct_dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|(_, e)| e.as_deref().is_some_and(|e| !e.is_empty())), "{dead:?}");

    let listed = up.json(&["pipeline", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(up.cli(&["pipeline", "delete", "forward"]).status.success());
    up.wait_until("the deleted pipeline's member stops", WAIT, |u| stream_members(u, "forward").is_empty());
    let listed = up.json(&["pipeline", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["checkouts"], "a deleted pipeline is no longer listed: {listed}");
}

const URGENT: &str = r#"name = "urgent"
priority = "system"
[gang]
cpu = "1"
memory = "64MiB"
[command]
argv = ["sleep", "3"]
"#;

fn spec(name: &str, topic: &str, path: &str, members: u32) -> String {
    format!(
        r#"name = "{name}"

[source.kafka]
topic = "{topic}"
schema = {{ user_id = "Int64", url = "Utf8", ts = "Int64" }}

[transform]
sql = "SELECT user_id, url FROM source WHERE url LIKE '%/checkout%'"

[sink.parquet]
path = "{path}"
roll_every = "1s"

[batch]
max_records = 500
max_latency = "100ms"

[parallelism]
min = 1
max = {members}
cpu = "400m"
memory = "256MiB"
"#
    )
}

/// The user ids in every visible Parquet file under `dir`.
fn parquet_ids(dir: &std::path::Path) -> Vec<u64> {
    use arrow::array::{Array, Int64Array};
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the sink's directory").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let file = std::fs::File::open(entry.path()).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            ids.extend(column.iter().flatten().map(|v| v as u64));
        }
    }
    ids
}

/// The first directory named `name` under `root`.
fn find_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten().filter(|e| e.path().is_dir()) {
        if entry.file_name() == name {
            return Some(entry.path());
        }
        if let Some(found) = find_dir(&entry.path(), name) {
            return Some(found);
        }
    }
    None
}

/// A number one SQL query answers (none while it fails, e.g. before the table exists).
fn sql_number(up: &Up, sql: &str) -> Option<i64> {
    up.json(&["sql", "-e", sql]).as_array()?.first()?.as_object()?.values().next()?.as_i64()
}

#[test]
fn a_pipeline_feeds_a_live_table_that_sql_reads_with_nothing_lost_or_repeated() {
    let up = Up::start_with(2, &["--sql-pool-warm", "0"]);
    let brokers = up.json(&["status"])["kafka_bootstrap"].as_str().expect("an embedded broker").to_string();
    produce(&brokers, "views", 0..2_000);

    // Given a pipeline whose sink is a live table
    // (in micro-batches of at most 100 records: dozens of ingests, to be merged)
    let live = spec("live-checkouts", "views", "", 1)
        .replace("[sink.parquet]\npath = \"\"\nroll_every = \"1s\"", "[sink.store]\ntable = \"checkouts_live\"")
        .replace("max_records = 500", "max_records = 100");
    let created = up.cli(&["pipeline", "create", &write(&up, "live.toml", &live)]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // and one that upserts: the latest checkout per bucket of user ids
    let latest = spec("latest-checkouts", "views", "", 1)
        .replace(
            "[sink.parquet]\npath = \"\"\nroll_every = \"1s\"",
            "[sink.store]\ntable = \"latest\"\nkey = [\"bucket\"]",
        )
        .replace("SELECT user_id, url FROM", "SELECT user_id % 10 AS bucket, user_id FROM");
    let created = up.cli(&["pipeline", "create", &write(&up, "latest.toml", &latest)]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let bad = live.replace("checkouts_live", "Checkouts-Live");
    let refused = up.cli(&["pipeline", "create", &write(&up, "bad-live.toml", &bad)]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("sink.store.table"), "{err}");

    // Then SQL sees every checkout (the even ids) as it streams in
    let count = "SELECT count(*) AS n FROM checkouts_live";
    up.wait_until("the live table holds the first 1,000 checkouts", WAIT, |u| sql_number(u, count) == Some(1_000));

    // When its member is killed with -9 while more records come
    up.wait_until("the member runs", WAIT, |u| stream_members(u, "live-checkouts").len() == 1);
    produce(&brokers, "views", 2_000..3_000);
    kill9(stream_members(&up, "live-checkouts")[0]);
    produce(&brokers, "views", 3_000..4_000);

    // Then the restarted member appends what was missing, and nothing twice
    up.wait_until("the live table holds all 2,000 checkouts", WAIT, |u| sql_number(u, count) == Some(2_000));
    assert_eq!(sql_number(&up, "SELECT count(DISTINCT user_id) AS n FROM checkouts_live"), Some(2_000));
    assert_eq!(sql_number(&up, "SELECT count(*) AS n FROM checkouts_live WHERE user_id % 2 = 1"), Some(0));
    let offsets =
        "SELECT CAST(sum(next_offset) AS BIGINT) AS n FROM cohort.live_offsets WHERE table_name = 'checkouts_live'";
    assert_eq!(sql_number(&up, offsets), Some(4_000), "the table says how far it read");
    let listed = up.json(&["cache"]);
    let row = listed.as_array().and_then(|l| l.iter().find(|t| t["table_name"] == "checkouts_live").cloned());
    assert_eq!(row.as_ref().map(|r| r["state"].clone()), Some(Value::from("live")), "{listed}");
    assert_eq!(row.as_ref().map(|r| r["rows"].clone()), Some(Value::from(2_000)), "{listed}");
    // And its ingests are merged on disk as in the stores, under the same counts
    let merged = |u: &Up| {
        let snapshots = find_dir(u.dir.path(), "checkouts_live").expect("the table's snapshots");
        std::fs::read_dir(snapshots).unwrap().flatten().any(|f| f.file_name().to_string_lossy().contains('-'))
    };
    up.wait_until("the live table's ingests are merged", WAIT, merged);
    assert_eq!(sql_number(&up, count), Some(2_000));

    // When a store is killed with -9, then the coordinator itself
    let data = up.dir.path().display().to_string();
    let stores: Vec<u32> = pids_of(&["executor --kind store -- serve"])
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|e| String::from_utf8_lossy(&e).contains(&data))
        })
        .collect();
    assert!(!stores.is_empty(), "the live table is held by stores");
    kill9(stores[0]);
    // Then what the store held is put back from the table's snapshots on disk
    assert_eq!(sql_number(&up, count), Some(2_000), "whole after the store's loss");
    kill9(up.pid_of("coordinator").expect("the coordinator runs"));
    up.wait_until("the restarted coordinator serves the table whole", WAIT, |u| sql_number(u, count) == Some(2_000));
    assert_eq!(sql_number(&up, offsets), Some(4_000), "and knows how far it read");
    // And the pipeline goes on appending, still nothing twice
    produce(&brokers, "views", 4_000..5_000);
    up.wait_until("the live table holds all 2,500 checkouts", WAIT, |u| sql_number(u, count) == Some(2_500));
    assert_eq!(sql_number(&up, "SELECT count(DISTINCT user_id) AS n FROM checkouts_live"), Some(2_500));
    // And the upserting pipeline holds one row per bucket (even ids: 5 buckets), through all of it.
    // Records of a bucket are spread over Kafka partitions, so its latest row is the last one read,
    // not the highest id; once the last 1,000 are read, it is one of them.
    let oldest = "SELECT min(user_id) AS n FROM latest";
    up.wait_until("the upserts reach the last checkouts", WAIT, |u| sql_number(u, oldest).is_some_and(|n| n >= 4_000));
    assert_eq!(sql_number(&up, "SELECT count(*) AS n FROM latest"), Some(5));
    assert_eq!(sql_number(&up, "SELECT count(*) AS n FROM latest WHERE user_id % 10 <> bucket"), Some(0));
    assert!(up.cli(&["pipeline", "delete", "latest-checkouts"]).status.success());

    // And it is dropped like any table once its pipeline is gone
    assert!(up.cli(&["pipeline", "delete", "live-checkouts"]).status.success());
    up.wait_until("the member stops", WAIT, |u| stream_members(u, "live-checkouts").is_empty());
    assert!(up.cli(&["sql", "-e", "DROP TABLE checkouts_live"]).status.success());
    assert_eq!(sql_number(&up, count), None, "the table is gone");
}
