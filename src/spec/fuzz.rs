//! Property tests: specs nobody here wrote never panic the parser. Each
//! document is built from the spec's own tables and keys with values of
//! any type and size, so the checks past TOML's syntax are reached; the
//! answer is a spec or an error naming the file.

use proptest::prelude::*;

use super::parse_job;

/// A TOML value of any type, biased towards what the spec's fields hold:
/// quantities, durations, class names, SQL, huge and negative numbers.
fn value() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        Just("500m"),
        Just("4GiB"),
        Just("1e30"),
        Just("99999999999999999999GiB"),
        Just("18446744073709551615m"),
        Just("-1"),
        Just("0"),
        Just(""),
        Just("10s"),
        Just("999999999999h"),
        Just("batch"),
        Just("system"),
        Just("Int64"),
        Just("Utf8"),
        Just("Timestamp(Millisecond, None)"),
        Just("/tmp/out/"),
        Just("relative/path"),
        Just("SELECT * FROM source"),
        Just("SELECT x FROM nowhere"),
        Just("COPY (SELECT 1) TO '/tmp/x.parquet'"),
        Just("json"),
        Just("earliest"),
        Just("dead-letter"),
        Just("http"),
    ]
    .prop_map(|s| format!("{s:?}"));
    let word = "[a-zA-Z0-9 ./%_*$=<>-]{0,12}".prop_map(|s| format!("\"{s}\""));
    let scalar = prop_oneof![
        3 => text,
        2 => word,
        2 => any::<i64>().prop_map(|v| v.to_string()),
        1 => (0i64..10).prop_map(|v| v.to_string()),
        1 => any::<f64>().prop_map(|v| if v.is_finite() { format!("{v:?}") } else { "inf".into() }),
        1 => any::<bool>().prop_map(|v| v.to_string()),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

/// `key = value` lines for some of `keys`.
fn table(header: &'static str, keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((any::<bool>(), value()), keys.len()).prop_map(move |values| {
        let lines: Vec<String> = keys
            .iter()
            .zip(values)
            .filter(|(_, (present, _))| *present)
            .map(|(key, (_, value))| format!("{key} = {value}"))
            .collect();
        if header.is_empty() { lines.join("\n") } else { format!("[{header}]\n{}", lines.join("\n")) }
    })
}

fn job_document() -> impl Strategy<Value = String> {
    (
        table("", &["name", "kind", "priority", "queue", "max_attempts"]),
        table("gang", &["min", "max", "cpu", "memory", "spread"]),
        table("command", &["argv"]),
        table("service", &["instances", "ports", "unique_nodes", "min_healthy", "update_deadline"]),
        table(
            "service.health",
            &["http", "tcp", "grpc", "command", "interval", "timeout", "grace", "max_failures", "port"],
        ),
        table("sql", &["statements"]),
        prop::collection::vec(any::<bool>(), 5),
    )
        .prop_map(|(top, gang, command, service, health, sql, keep)| {
            let mut doc = vec![top];
            for (table, keep) in [gang, command, service, health, sql].into_iter().zip(keep) {
                if keep {
                    doc.push(table);
                }
            }
            doc.join("\n")
        })
}

fn pipeline_document() -> impl Strategy<Value = String> {
    (
        table("", &["name", "priority", "queue", "on_error"]),
        table("source.kafka", &["brokers", "topic", "group", "format", "start"]),
        table("source.kafka.schema", &["user_id", "url", "ts"]),
        table("transform", &["sql"]),
        table("sink.parquet", &["path", "roll_size", "roll_every"]),
        table("sink.kafka", &["topic", "brokers"]),
        table("batch", &["max_records", "max_latency"]),
        table("parallelism", &["min", "max", "cpu", "memory"]),
    )
        .prop_map(|(top, kafka, schema, transform, parquet, sink_kafka, batch, parallelism)| {
            [top, kafka, schema, transform, parquet, sink_kafka, batch, parallelism].join("\n")
        })
}

fn answered(file: &str, text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse_job(file, text) {
        prop_assert!(e.to_string().starts_with(file), "{e}\n--- for ---\n{text}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn job_specs_never_panic_the_parser(doc in job_document()) {
        answered("job.toml", &doc)?;
    }

    #[test]
    fn pipeline_specs_never_panic_the_parser(doc in pipeline_document()) {
        answered("pipeline.toml", &doc)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        answered("x.toml", &String::from_utf8_lossy(&bytes))?;
    }
}
