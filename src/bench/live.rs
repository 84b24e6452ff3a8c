//! `cohort bench live`: live tables fed as pipelines feed them, by many
//! small Flight SQL bulk ingests, into a table that appends and into one
//! that upserts by key. Then the same queries over each, beside the same
//! rows cached (`CACHE TABLE ... AS SELECT`, partitioned as a cached table
//! is): the baseline, in the same run. What it shows: what an ingest
//! costs, how far compaction brings thousands of ingests back, and what
//! reading past replaced rows costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use crate::cli::sql::Session;

#[derive(clap::Args)]
pub struct Args {
    /// Ingests into each table.
    #[arg(long, default_value_t = 2_000)]
    ingests: u64,
    /// Rows per ingest.
    #[arg(long, default_value_t = 1_000)]
    rows: u64,
    /// Keys of the table that upserts (ids cycle through them).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Runs of each query.
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

const QUERIES: [&str; 2] = [
    "SELECT count(*) AS n, sum(v) AS v FROM {t}",
    "SELECT s, count(*) AS n, max(v) AS v FROM {t} GROUP BY s ORDER BY s",
];

pub async fn run(args: Args) -> Result<()> {
    super::with_local_cluster(2, |address, _| async move { measure(&address, &args).await }).await
}

/// Rows `first..first + n`: `id` (cycling through `keys`), `v` the row's
/// number, `s` one of 100 strings.
fn rows(first: u64, n: u64, keys: Option<u64>) -> RecordBatch {
    let numbers = first..first + n;
    let ids = numbers.clone().map(|i| keys.map_or(i, |k| i % k) as i64);
    let columns: [(&str, ArrayRef); 3] = [
        ("id", Arc::new(Int64Array::from_iter_values(ids))),
        ("v", Arc::new(Int64Array::from_iter_values(numbers.clone().map(|i| i as i64)))),
        ("s", Arc::new(StringArray::from_iter_values(numbers.map(|i| format!("item-{:02}", i % 100))))),
    ];
    RecordBatch::try_from_iter(columns).expect("columns of one length")
}

async fn measure(address: &str, args: &Args) -> Result<()> {
    let mut session = Session::connect(address).await?;
    println!(
        "live tables: {} ingests of {} rows each, through Flight SQL bulk ingest, one client",
        args.ingests, args.rows
    );
    for (table, key) in [("bench_appended", None), ("bench_upserted", Some(args.keys))] {
        let mut latencies = Vec::with_capacity(args.ingests as usize);
        let started = Instant::now();
        for i in 0..args.ingests {
            let batch = rows(i * args.rows, args.rows, key);
            let sent = Instant::now();
            session.ingest(table, vec![batch], key.map(|_| "id")).await?;
            latencies.push(sent.elapsed());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let partitions = settled_partitions(&mut session, table).await?;
        let total = args.ingests * args.rows;
        let baseline = format!("{table}_cached");
        session.query(&format!("CACHE TABLE {baseline} AS SELECT * FROM {table}")).await?;
        println!(
            "{table}: {:.0} ingests/s ({:.0} rows/s), ingest p50 {:.1} ms, p99 {:.1} ms; {} ingests held in {partitions} partitions",
            args.ingests as f64 / elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            super::percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            super::percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            args.ingests,
        );
        for query in QUERIES {
            let (live, live_rows) = query_p50(&mut session, &query.replace("{t}", table), args.runs).await?;
            let (once, once_rows) = query_p50(&mut session, &query.replace("{t}", &baseline), args.runs).await?;
            if live_rows != once_rows {
                bail!("`{query}` over {table} answered differently from the same rows cached");
            }
            println!(
                "  {:<66} p50 {:>7.1} ms, cached {:>7.1} ms, ratio {:.2}",
                query.replace("{t}", "t"),
                live.as_secs_f64() * 1e3,
                once.as_secs_f64() * 1e3,
                live.as_secs_f64() / once.as_secs_f64()
            );
        }
        session.query(&format!("DROP TABLE {table}")).await?;
        session.query(&format!("UNCACHE TABLE {baseline}")).await?;
    }
    Ok(())
}

/// The partitions `table` holds once compaction has stopped changing them.
async fn settled_partitions(session: &mut Session, table: &str) -> Result<u64> {
    let sql = format!("SELECT partitions FROM cohort.cache WHERE table_name = '{table}'");
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, batches) = session.query(&sql).await?;
        let now = batches
            .first()
            .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::UInt32Array>().map(|a| a.value(0)));
        if now.is_some() && now == last {
            return Ok(u64::from(now.unwrap_or_default()));
        }
        if Instant::now() > deadline {
            bail!("the partitions of {table} never settled");
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The median time of `runs` runs of `sql`, and its answer (as text).
async fn query_p50(session: &mut Session, sql: &str, runs: usize) -> Result<(Duration, String)> {
    let mut times = Vec::with_capacity(runs);
    let mut answer = String::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let (_, batches) = session.query(sql).await?;
        times.push(started.elapsed());
        answer = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    }
    times.sort();
    Ok((super::percentile(&times, 0.5), answer))
}
