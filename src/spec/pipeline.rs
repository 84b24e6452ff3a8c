//! Pipeline specs (`cohort pipeline create FILE`): a Kafka source with a
//! declared schema, an optional SQL transform over `source`, one sink, and
//! an elastic gang of `stream` members at `streaming` priority. The spec is
//! checked whole when it is created: every column type, the SQL against the
//! declared columns, the sink; errors name the file, line and field.

use std::fmt;
use std::time::Duration;

use cohort_scheduler::resources::{EXECUTORS, parse_cpu, parse_memory};
use cohort_scheduler::{GangSpec, Resources, Restart};
use cohort_stream::{OnError, PipelineConfig, SinkConfig};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use toml::Spanned;

use super::service::HealthSpec;
use super::{Errors, JobKind, JobSpec, ServiceSpec, SpecError, parse_duration, quantity};

/// The port a member answers gRPC health checks on.
pub const HEALTH_PORT: &str = "health";

/// How the agents check a member: a process that is stopped or wedged
/// holds its slot and, until Kafka's session times out, its partitions;
/// one that does not answer five checks in a row is restarted, as a pool
/// instance is. Only its health service listens on the port.
fn member_check() -> HealthSpec {
    HealthSpec::grpc_on(HEALTH_PORT, Duration::from_secs(1))
}

/// Whether a spec's text is a pipeline's (it has a `[source]`).
pub fn is_pipeline(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("source"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    on_error: Option<Spanned<String>>,
    // Not Spanned: `[source.kafka]` defines `source` implicitly, and toml
    // cannot span an implicit table.
    source: RawSource,
    #[serde(default)]
    transform: Option<RawTransform>,
    sink: RawSink,
    #[serde(default)]
    batch: Option<RawBatch>,
    #[serde(default)]
    parallelism: Option<Spanned<RawParallelism>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kafka: Option<Spanned<RawKafkaSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaSource {
    #[serde(default)]
    brokers: Option<String>,
    topic: Spanned<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    format: Option<Spanned<String>>,
    #[serde(default)]
    start: Option<Spanned<String>>,
    schema: Spanned<Columns>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    sql: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(default)]
    parquet: Option<Spanned<RawParquetSink>>,
    #[serde(default)]
    kafka: Option<Spanned<RawKafkaSink>>,
    #[serde(default)]
    store: Option<Spanned<RawStoreSink>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreSink {
    table: Spanned<String>,
    #[serde(default)]
    key: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParquetSink {
    path: Spanned<String>,
    #[serde(default)]
    roll_size: Option<Spanned<toml::Value>>,
    #[serde(default)]
    roll_every: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaSink {
    topic: Spanned<String>,
    #[serde(default)]
    brokers: Option<String>,
    #[serde(default)]
    delivery: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    #[serde(default)]
    max_records: Option<Spanned<i64>>,
    #[serde(default)]
    max_latency: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParallelism {
    #[serde(default)]
    min: Option<Spanned<i64>>,
    #[serde(default)]
    max: Option<Spanned<i64>>,
    #[serde(default)]
    cpu: Option<Spanned<toml::Value>>,
    #[serde(default)]
    memory: Option<Spanned<toml::Value>>,
}

/// `{ a = "Int64", b = "Utf8" }` in the order written (a TOML table
/// would sort them, and column order is what `SELECT *` returns).
struct Columns(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of column = \"ArrowType\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut columns = Vec::new();
                while let Some((name, type_name)) = map.next_entry::<String, String>()? {
                    columns.push((name, type_name));
                }
                Ok(Columns(columns))
            }
        }
        d.deserialize_map(Ordered)
    }
}

const DEFAULT_MAX_RECORDS: usize = 10_000;
const DEFAULT_MAX_LATENCY: Duration = Duration::from_millis(500);
const DEFAULT_ROLL_BYTES: u64 = 64 << 20;
const DEFAULT_ROLL_EVERY: Duration = Duration::from_secs(10);

pub(super) fn parse(errors: &Errors, text: &str) -> Result<JobSpec, SpecError> {
    let raw: RawPipeline = toml::from_str(text).map_err(|e| super::toml_error(errors, text, &e))?;
    let name = raw.name.get_ref().trim().to_string();
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(errors.at(Some(raw.name.span()), "name", "letters, digits, `-`, `_` and `.` only, not empty"));
    }
    let Some(kafka) = raw.source.kafka.as_ref() else {
        return Err(errors.at(None, "source", "needs a [source.kafka] table (the only source so far)"));
    };
    let kafka = kafka.get_ref();
    if let Some(f) = &kafka.format
        && f.get_ref() != "json"
    {
        return Err(errors.at(
            Some(f.span()),
            "source.kafka.format",
            format!("`{}`: only \"json\" is read so far", f.get_ref()),
        ));
    }
    let start_latest = match kafka.start.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("earliest", _)) => false,
        Some(("latest", _)) => true,
        Some((other, span)) => {
            return Err(errors.at(
                Some(span),
                "source.kafka.start",
                format!("`{other}`: expected \"earliest\" or \"latest\""),
            ));
        }
    };
    if let Err(why) = check_topic_name(kafka.topic.get_ref()) {
        return Err(errors.at(Some(kafka.topic.span()), "source.kafka.topic", why));
    }
    let on_error = match &raw.on_error {
        None => OnError::DeadLetter,
        Some(s) => OnError::parse(s.get_ref()).ok_or_else(|| {
            errors.at(
                Some(s.span()),
                "on_error",
                format!("`{}`: expected \"dead-letter\", \"skip\" or \"fail\"", s.get_ref()),
            )
        })?,
    };
    let sink = sink(errors, &raw.sink)?;
    let (max_records, max_latency) = batch(errors, raw.batch.as_ref())?;
    let config = PipelineConfig {
        name: name.clone(),
        brokers: kafka.brokers.clone().filter(|b| !b.trim().is_empty()),
        topic: kafka.topic.get_ref().clone(),
        group: kafka.group.clone().unwrap_or_else(|| name.clone()),
        start_latest,
        schema: kafka.schema.get_ref().0.clone(),
        sql: raw.transform.as_ref().map(|t| t.sql.get_ref().clone()),
        sink,
        max_records,
        max_latency_ms: max_latency.as_millis() as u64,
        on_error,
    };
    // The schema and the SQL, checked as a member would use them.
    config.source_schema().map_err(|e| errors.at(Some(kafka.schema.span()), &field_of(&e), message_of(&e)))?;
    if let Some(t) = &raw.transform {
        cohort_batch::check_expression_depth(t.sql.get_ref())
            .map_err(|e| errors.at(Some(t.sql.span()), "transform.sql", e.to_string()))?;
        futures::executor::block_on(config.output_schema())
            .map_err(|e| errors.at(Some(t.sql.span()), "transform.sql", message_of(&e)))?;
    }
    if let Some(key) = raw.sink.store.as_ref().and_then(|s| s.get_ref().key.as_ref()) {
        let output = futures::executor::block_on(config.output_schema())
            .map_err(|e| errors.at(Some(key.span()), "sink.store.key", message_of(&e)))?;
        let columns: Vec<&str> = output.fields().iter().map(|f| f.name().as_str()).collect();
        let key_at = |message: String| errors.at(Some(key.span()), "sink.store.key", message);
        if key.get_ref().is_empty() {
            return Err(key_at("names the columns to upsert by, e.g. [\"user_id\"]; leave it out to append".into()));
        }
        if let Some(missing) = key.get_ref().iter().find(|c| !columns.contains(&c.as_str())) {
            return Err(key_at(format!(
                "`{missing}` is not a column of the transform's output ({})",
                columns.join(", ")
            )));
        }
    }
    let gang = gang(errors, &name, raw.priority.as_deref(), raw.queue.as_deref(), raw.parallelism.as_ref())?;
    let service = ServiceSpec {
        instances: gang.max,
        ports: vec![HEALTH_PORT.to_string()],
        unique_nodes: false,
        min_healthy: 0.5,
        update_deadline: Duration::from_secs(120),
        health: Some(member_check()),
    };
    Ok(JobSpec { name, kind: JobKind::Pipeline { config: Box::new(config), service }, gang })
}

fn field_of(e: &cohort_stream::Error) -> String {
    match e {
        cohort_stream::Error::Invalid { field, .. } => field.clone(),
        _ => "source.kafka.schema".into(),
    }
}

fn message_of(e: &cohort_stream::Error) -> String {
    match e {
        cohort_stream::Error::Invalid { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn sink(errors: &Errors, raw: &RawSink) -> Result<SinkConfig, SpecError> {
    let given = [
        raw.parquet.as_ref().map(|s| s.span()),
        raw.kafka.as_ref().map(|s| s.span()),
        raw.store.as_ref().map(|s| s.span()),
    ];
    if let Some(second) = given.iter().flatten().nth(1) {
        return Err(errors.at(
            Some(second.clone()),
            "sink",
            "one sink per pipeline: [sink.parquet], [sink.kafka] or [sink.store]",
        ));
    }
    if let Some(store) = &raw.store {
        let table = store.get_ref().table.get_ref().trim();
        let plain = table.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && table.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(errors.at(
                Some(store.get_ref().table.span()),
                "sink.store.table",
                format!("`{table}` is not a plain table name (lower case letters, digits and _)"),
            ));
        }
        let key = store.get_ref().key.as_ref().map(|k| k.get_ref().clone()).unwrap_or_default();
        return Ok(SinkConfig::Store { table: table.to_string(), key });
    }
    match (&raw.parquet, &raw.kafka) {
        (Some(p), None) => {
            let p = p.get_ref();
            let path = p.path.get_ref().trim().to_string();
            if !(path.starts_with('/') || path.starts_with("s3://")) {
                return Err(errors.at(
                    Some(p.path.span()),
                    "sink.parquet.path",
                    format!(
                        "`{path}` is relative; members run in their own directories, so use an absolute path or s3://"
                    ),
                ));
            }
            let roll_bytes = match &p.roll_size {
                None => DEFAULT_ROLL_BYTES,
                Some(v) => {
                    quantity(v, parse_memory).map_err(|m| errors.at(Some(v.span()), "sink.parquet.roll_size", m))?
                }
            };
            let roll_every = match &p.roll_every {
                None => DEFAULT_ROLL_EVERY,
                Some(v) => {
                    parse_duration(v.get_ref()).map_err(|m| errors.at(Some(v.span()), "sink.parquet.roll_every", m))?
                }
            };
            Ok(SinkConfig::Parquet {
                path,
                roll_bytes: roll_bytes.max(1) as usize,
                roll_ms: roll_every.as_millis().max(1) as u64,
            })
        }
        (None, Some(k)) => {
            let k = k.get_ref();
            if let Err(why) = check_topic_name(k.topic.get_ref()) {
                return Err(errors.at(Some(k.topic.span()), "sink.kafka.topic", why));
            }
            let exactly_once = match k.delivery.as_ref().map(|d| (d, d.get_ref().trim())) {
                None | Some((_, "exactly-once")) => true,
                Some((_, "at-least-once")) => false,
                Some((d, other)) => {
                    return Err(errors.at(
                        Some(d.span()),
                        "sink.kafka.delivery",
                        format!("`{other}` is not a delivery guarantee (use \"exactly-once\" or \"at-least-once\")"),
                    ));
                }
            };
            Ok(SinkConfig::Kafka {
                brokers: k.brokers.clone().filter(|b| !b.trim().is_empty()),
                topic: k.topic.get_ref().clone(),
                exactly_once,
            })
        }
        (Some(_), Some(_)) => unreachable!("two sinks are refused above"),
        (None, None) => {
            Err(errors.at(None, "sink", "needs [sink.parquet] (path), [sink.kafka] (topic) or [sink.store] (table)"))
        }
    }
}

fn batch(errors: &Errors, raw: Option<&RawBatch>) -> Result<(usize, Duration), SpecError> {
    let Some(raw) = raw else { return Ok((DEFAULT_MAX_RECORDS, DEFAULT_MAX_LATENCY)) };
    let records = match &raw.max_records {
        None => DEFAULT_MAX_RECORDS,
        Some(n) if (1..=1_000_000).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(errors.at(
                Some(n.span()),
                "batch.max_records",
                format!("must be between 1 and 1000000, got {}", n.get_ref()),
            ));
        }
    };
    let latency = match &raw.max_latency {
        None => DEFAULT_MAX_LATENCY,
        Some(v) => parse_duration(v.get_ref()).map_err(|m| errors.at(Some(v.span()), "batch.max_latency", m))?,
    };
    if latency.is_zero() {
        return Err(errors.at(raw.max_latency.as_ref().map(|v| v.span()), "batch.max_latency", "must be above zero"));
    }
    Ok((records, latency))
}

fn gang(
    errors: &Errors,
    name: &str,
    priority: Option<&str>,
    queue: Option<&str>,
    raw: Option<&Spanned<RawParallelism>>,
) -> Result<GangSpec, SpecError> {
    let p = raw.map(|r| r.get_ref());
    let bound = |v: Option<&Spanned<i64>>, field: &str, default: u32, low: u32| -> Result<u32, SpecError> {
        match v {
            None => Ok(default),
            Some(n) if (low as i64..=1000).contains(n.get_ref()) => Ok(*n.get_ref() as u32),
            Some(n) => {
                Err(errors.at(Some(n.span()), field, format!("must be between {low} and 1000, got {}", n.get_ref())))
            }
        }
    };
    let min = bound(p.and_then(|p| p.min.as_ref()), "parallelism.min", 1, 1)?;
    let max = bound(p.and_then(|p| p.max.as_ref()), "parallelism.max", min, min)?;
    let cpu = match p.and_then(|p| p.cpu.as_ref()) {
        None => 1000,
        Some(v) => quantity(v, parse_cpu).map_err(|m| errors.at(Some(v.span()), "parallelism.cpu", m))?,
    };
    let memory = match p.and_then(|p| p.memory.as_ref()) {
        None => 512 << 20,
        Some(v) => quantity(v, parse_memory).map_err(|m| errors.at(Some(v.span()), "parallelism.memory", m))?,
    };
    let slot = Resources::new(cpu, memory).with_scalar(EXECUTORS, 1);
    let mut spec =
        GangSpec::rigid(name.to_string(), min, slot, priority.unwrap_or("streaming"), queue.unwrap_or("default"));
    spec.max = max;
    spec.restart = Restart::Always;
    Ok(spec)
}

/// Kafka's own rule for topic names: brokers refuse any other, and a
/// consumer of a name they refuse would only ever hear "unknown topic".
fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must name a topic".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not a valid topic name"));
    }
    if topic.len() > 249 {
        return Err(format!("a topic name has at most 249 characters, this one {}", topic.len()));
    }
    match topic.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(c) => Err(format!(
            "`{topic}` is not a valid topic name: {c:?} is not allowed (use letters, digits, `.`, `_` and `-`)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_job;
    use super::super::service::Probe;
    use super::*;

    pub const GOOD: &str = r#"name = "checkouts"

[source.kafka]
topic = "clicks"
schema = { user_id = "Int64", url = "Utf8", ts = "Int64" }

[transform]
sql = "SELECT user_id, url FROM source WHERE url LIKE '%/checkout%'"

[sink.parquet]
path = "/data/checkouts/"

[parallelism]
min = 1
max = 4
"#;

    #[test]
    fn an_empty_consumer_group_is_refused_by_its_line_when_submitted() {
        let spec = GOOD.replace("topic = \"clicks\"", "topic = \"clicks\"\ngroup = \" \"");
        // Parsed, as a stored spec is at every start; refused as a new one
        let job = parse_job("p.toml", &spec).unwrap();
        let e = super::super::check_new("p.toml", &spec, &job).unwrap_err().to_string();
        assert!(e.contains("p.toml:5: source.kafka.group: empty"), "{e}");
    }

    #[test]
    fn a_pipeline_is_an_elastic_streaming_gang_of_stream_members() {
        assert!(is_pipeline(GOOD));
        let job = parse_job("p.toml", GOOD).unwrap();
        assert_eq!((job.gang.min, job.gang.max, job.gang.priority.as_str()), (1, 4, "streaming"));
        let JobKind::Pipeline { config, .. } = &job.kind else { panic!("{:?}", job.kind) };
        assert_eq!(config.group, "checkouts", "the group defaults to the name");
        let names: Vec<&str> = config.schema.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["user_id", "url", "ts"], "columns keep their order");
        assert_eq!(config.on_error, OnError::DeadLetter);
        // Each member answers gRPC health checks on a port of its own.
        let launch = job.kind.launch_shape();
        assert_eq!(launch.ports, [HEALTH_PORT]);
        let health = launch.health.expect("members are health-checked");
        assert_eq!((health.probe, health.port.as_deref()), (Probe::Grpc(String::new()), Some(HEALTH_PORT)));
    }

    #[test]
    fn bad_types_sql_and_sinks_are_named_with_their_line() {
        let e = parse_job("p.toml", &GOOD.replace("ts = \"Int64\"", "ts = \"Instant\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (5, "source.kafka.schema.ts"), "{e}");
        let e = parse_job("p.toml", &GOOD.replace("SELECT user_id, url", "SELECT user_idd, url")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (8, "transform.sql"), "{e}");
        assert!(e.message.contains("user_idd"), "{e}");
        let e = parse_job("p.toml", &GOOD.replace("/data/checkouts/", "data/")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (11, "sink.parquet.path"), "{e}");
        let e = parse_job("p.toml", &GOOD.replace("max = 4", "max = 0")).unwrap_err();
        assert_eq!(e.field, "parallelism.max", "{e}");
        let e = parse_job("p.toml", &GOOD.replace("sql = \"SELECT", "sql = \"DROP TABLE source; SELECT")).unwrap_err();
        assert_eq!(e.field, "transform.sql", "{e}");
        let e = parse_job("p.toml", &GOOD.replace("\"clicks\"", "\"web clicks\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "source.kafka.topic"), "{e}");
        assert!(e.message.contains("' ' is not allowed"), "{e}");
        assert!(parse_job("p.toml", &GOOD.replace("\"clicks\"", "\"web.clicks_v2-eu\"")).is_ok());
    }

    #[test]
    fn a_live_table_sink_names_a_plain_table_and_stands_alone() {
        let live = GOOD.replace("[sink.parquet]\npath = \"/data/checkouts/\"", "[sink.store]\ntable = \"checkouts\"");
        let spec = parse_job("p.toml", &live).unwrap();
        let JobKind::Pipeline { config, .. } = spec.kind else { panic!("a pipeline") };
        assert_eq!(config.sink, SinkConfig::Store { table: "checkouts".into(), key: Vec::new() });
        let keyed = live.replace("table = \"checkouts\"", "table = \"checkouts\"\nkey = [\"user_id\"]");
        let JobKind::Pipeline { config, .. } = parse_job("p.toml", &keyed).unwrap().kind else { panic!("a pipeline") };
        assert_eq!(config.sink, SinkConfig::Store { table: "checkouts".into(), key: vec!["user_id".into()] });
        let e = parse_job("p.toml", &keyed.replace("[\"user_id\"]", "[\"ts\"]")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (12, "sink.store.key"), "{e}");
        assert!(e.message.contains("`ts` is not a column of the transform's output (user_id, url)"), "{e}");
        let e = parse_job("p.toml", &live.replace("\"checkouts\"", "\"Check-outs\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (11, "sink.store.table"), "{e}");
        let both = format!("{GOOD}\n[sink.store]\ntable = \"checkouts\"\n");
        let e = parse_job("p.toml", &both).unwrap_err();
        assert_eq!(e.field, "sink", "{e}");
        assert!(e.message.contains("one sink per pipeline"), "{e}");
    }

    #[test]
    fn a_kafka_sink_is_exactly_once_unless_it_says_otherwise() {
        let sink = |delivery: &str| {
            let kafka = format!("[sink.kafka]\ntopic = \"out\"\n{delivery}");
            parse_job("p.toml", &GOOD.replace("[sink.parquet]\npath = \"/data/checkouts/\"", &kafka))
        };
        let exactly_once = |job: JobSpec| match job.kind {
            JobKind::Pipeline { config, .. } => match config.sink {
                SinkConfig::Kafka { exactly_once, .. } => exactly_once,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert!(exactly_once(sink("").unwrap()));
        assert!(!exactly_once(sink("delivery = \"at-least-once\"").unwrap()));
        let e = sink("delivery = \"at-most-once\"").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (12, "sink.kafka.delivery"), "{e}");
        assert!(e.message.contains("at-most-once"), "{e}");
    }
}
