//! `cohort bench tpch --sf N`: the 22 queries derived from TPC-H, through a
//! Cohort cluster over Flight SQL and through single-process DataFusion
//! in this process, on the same Parquet files, in the same run. Answers
//! must be equal (rows compared as sorted text, floats to 1e-6 relative);
//! times and their ratio are printed per query and in total.
//!
//! Without `--cluster` it starts a local cluster (2 agents), as `cohort up`
//! would; with it, it uses that cluster, whose hosts must see `--data-dir`.
//! With `--cache` every table is then cached (`CACHE TABLE`) and the
//! queries run a third time, from the stores' memory; their answers must
//! equal DataFusion's too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, Float32Array, Float64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use cohort_batch::tpch;
use datafusion::prelude::{SessionConfig, SessionContext};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::sql::Session;

#[derive(clap::Args)]
pub struct Args {
    /// Scale factor (1 is about 1 GB of CSV, 6 million line items).
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Where the data is generated (kept and reused between runs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Queries to run, e.g. `1,6,15` (default: all 22).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// Runs per query and engine; the fastest counts.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Use this running cluster instead of starting a local one.
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long, default_value_t = 2)]
    agents: u32,
    /// Cache every table, then run the queries again from memory.
    #[arg(long)]
    cache: bool,
    /// Memory of each store of the local cluster (`--cache`).
    #[arg(long, default_value = "8GiB")]
    store_memory: String,
}

struct QueryResult {
    query: usize,
    local: Duration,
    cohort: Duration,
    rows: usize,
    equal: Result<(), String>,
    /// From cached tables (`--cache`).
    cached: Option<(Duration, Result<(), String>)>,
}

pub async fn run(args: Args) -> Result<()> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::up::default_data_dir().join("tpch").join(format!("sf{}", args.sf)),
    };
    let dir = std::path::absolute(&dir)?;
    generate(&dir, args.sf).await?;
    let queries: Vec<usize> = if args.queries.is_empty() { (1..=22).collect() } else { args.queries.clone() };
    for &q in &queries {
        tpch::query(q)?;
    }
    let (results, extras) = match &args.cluster {
        Some(address) => {
            let results = compare(address, &dir, &queries, args.runs, args.cache).await?;
            (results, Extras { small_p50: Some(small_query_p50(address).await?), kill: None })
        }
        None => {
            let (dir, queries) = (&dir, &queries);
            let stores = vec![format!("--sql-store-memory={}", args.store_memory)];
            super::with_local_cluster_args(args.agents, stores, |address, cluster_dir| async move {
                let results = compare(&address, dir, queries, args.runs, args.cache).await?;
                let small_p50 = Some(small_query_p50(&address).await?);
                let kill = Some(kill_during_query(&address, dir, &cluster_dir).await?);
                Ok((results, Extras { small_p50, kill }))
            })
            .await?
        }
    };
    extras.print();
    report(args.sf, &results)
}

/// What is measured beside the 22 queries.
struct Extras {
    small_p50: Option<Duration>,
    /// Only on a cluster this process started (it needs the executors' pids).
    kill: Option<KillOutcome>,
}

struct KillOutcome {
    answered: Duration,
    equal: Result<(), String>,
    /// From the kill until the pool ran as many executors as before.
    healed: Option<Duration>,
}

impl Extras {
    fn print(&self) {
        if let Some(p50) = self.small_p50 {
            println!(
                "small-table query over Flight SQL (nation, 25 rows, answered by the coordinator): p50 {:.1} ms over {SMALL_RUNS} runs",
                p50.as_secs_f64() * 1e3
            );
        }
        if let Some(k) = &self.kill {
            println!(
                "q18 with one pool executor killed (-9) a quarter in: answered in {:.2} s, answer {}, pool whole again {}",
                k.answered.as_secs_f64(),
                match &k.equal {
                    Ok(()) => "equal".to_string(),
                    Err(e) => format!("DIFFERENT: {e}"),
                },
                match k.healed {
                    Some(d) => format!("{:.1} s after the kill", d.as_secs_f64()),
                    None => format!("NOT within {} s", HEAL_WAIT.as_secs()),
                }
            );
        }
    }
}

const SMALL_RUNS: usize = 50;
const HEAL_WAIT: Duration = Duration::from_secs(120);

async fn small_query_p50(address: &str) -> Result<Duration> {
    let mut session = Session::connect(address).await?;
    let sql = "SELECT n_name FROM nation WHERE n_regionkey = 1 ORDER BY n_name";
    session.query(sql).await?;
    let mut times = Vec::with_capacity(SMALL_RUNS);
    for _ in 0..SMALL_RUNS {
        let at = Instant::now();
        session.query(sql).await?;
        times.push(at.elapsed());
    }
    times.sort();
    Ok(times[SMALL_RUNS / 2])
}

/// Runs q18, kills one pool executor (kill -9) a quarter of an undisturbed
/// run's time in, and checks the answer and how soon the pool is whole.
async fn kill_during_query(
    address: &str,
    tables: &std::path::Path,
    cluster_dir: &std::path::Path,
) -> Result<KillOutcome> {
    let statements = tpch::query(18)?;
    let local = SessionContext::new();
    for ddl in tpch::table_ddl(tables) {
        local.sql(&ddl).await?.collect().await?;
    }
    let expected = run_local(&local, &statements).await?;
    let mut session = Session::connect(address).await?;
    let at = Instant::now();
    run_cohort(&mut session, &statements).await?;
    let undisturbed = at.elapsed();
    let before = pool_executors(cluster_dir);
    let Some(&victim) = before.first() else { bail!("no pool executor runs under {}", cluster_dir.display()) };

    let at = Instant::now();
    let running = tokio::spawn(async move { run_cohort(&mut session, &statements).await });
    tokio::time::sleep(undisturbed / 4).await;
    // SAFETY: kill(2) with a pid read from /proc; at worst it names a process that already exited.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let killed_at = Instant::now();
    let got = running.await?.context("q18 after the kill")?;
    let answered = at.elapsed();
    let healed = loop {
        let now = pool_executors(cluster_dir);
        if now.len() >= before.len() && !now.contains(&victim) {
            break Some(killed_at.elapsed());
        }
        if killed_at.elapsed() > HEAL_WAIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(KillOutcome { answered, equal: same_answer(&expected, &got), healed })
}

/// The pids of batch executors (worker processes) started for the cluster
/// whose data dir is `cluster_dir`.
fn pool_executors(cluster_dir: &std::path::Path) -> Vec<u32> {
    let marker = cluster_dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("executor --kind batch") && cmdline.contains("worker") {
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).contains(&marker) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

async fn generate(dir: &std::path::Path, sf: f64) -> Result<()> {
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("generating TPC-H SF{msg} {bar:30} {pos}/{len} files").expect("a valid template"),
    );
    bar.set_message(sf.to_string());
    let owned = dir.to_path_buf();
    let progress = bar.clone();
    tokio::task::spawn_blocking(move || {
        tpch::generate(&owned, sf, &|done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        })
    })
    .await??;
    bar.finish_and_clear();
    println!("TPC-H SF{sf} data in {}", dir.display());
    Ok(())
}

async fn compare(
    address: &str,
    dir: &std::path::Path,
    queries: &[usize],
    runs: u32,
    cache: bool,
) -> Result<Vec<QueryResult>> {
    let mut session = Session::connect(address).await?;
    let local = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    for ddl in tpch::table_ddl(dir) {
        local.sql(&ddl).await?.collect().await?;
        let replace = ddl.replacen("CREATE EXTERNAL TABLE", "CREATE OR REPLACE EXTERNAL TABLE", 1);
        session.query(&replace).await.with_context(|| format!("cannot declare the tables on {address}"))?;
    }
    let bar = ProgressBar::new(queries.len() as u64)
        .with_style(ProgressStyle::with_template("running {bar:30} {pos}/{len} {msg}").expect("a valid template"));
    let mut results = Vec::new();
    let mut answers = Vec::new();
    for &q in queries {
        bar.set_message(format!("q{q}"));
        let statements = tpch::query(q)?;
        let (mut local_best, mut cohort_best) = (Duration::MAX, Duration::MAX);
        let (mut local_rows, mut cohort_rows) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            let at = Instant::now();
            local_rows = run_local(&local, &statements).await.with_context(|| format!("q{q} in DataFusion"))?;
            local_best = local_best.min(at.elapsed());
            let at = Instant::now();
            cohort_rows = run_cohort(&mut session, &statements).await.with_context(|| format!("q{q} on Cohort"))?;
            cohort_best = cohort_best.min(at.elapsed());
        }
        let equal = same_answer(&local_rows, &cohort_rows);
        let rows = local_rows.iter().map(RecordBatch::num_rows).sum();
        results.push(QueryResult { query: q, local: local_best, cohort: cohort_best, rows, equal, cached: None });
        answers.push(local_rows);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if cache {
        let at = Instant::now();
        for table in tpch::TABLES {
            session.query(&format!("CACHE TABLE {table}")).await.with_context(|| format!("CACHE TABLE {table}"))?;
        }
        println!("every table cached in {:.2} s", at.elapsed().as_secs_f64());
        for (result, expected) in results.iter_mut().zip(&answers) {
            let statements = tpch::query(result.query)?;
            let (mut best, mut got) = (Duration::MAX, Vec::new());
            for _ in 0..runs.max(1) {
                let at = Instant::now();
                got = run_cohort(&mut session, &statements)
                    .await
                    .with_context(|| format!("q{} on cached tables", result.query))?;
                best = best.min(at.elapsed());
            }
            result.cached = Some((best, same_answer(expected, &got)));
        }
        for table in tpch::TABLES {
            session.query(&format!("UNCACHE TABLE {table}")).await?;
        }
    }
    Ok(results)
}

/// Runs a query's statements; the answer is the last one returning rows.
async fn run_local(ctx: &SessionContext, statements: &[String]) -> Result<Vec<RecordBatch>> {
    let mut answer = Vec::new();
    for sql in statements {
        let batches = ctx.sql(sql).await?.collect().await?;
        if batches.iter().any(|b| b.num_columns() > 0) {
            answer = batches;
        }
    }
    Ok(answer)
}

async fn run_cohort(session: &mut Session, statements: &[String]) -> Result<Vec<RecordBatch>> {
    let mut answer = Vec::new();
    for sql in statements {
        let (schema, batches) = session.query(sql).await?;
        if !schema.fields().is_empty() {
            answer = batches;
        }
    }
    Ok(answer)
}

/// Equal answers: the same rows (in any order), each value printed the
/// same, floats within a relative 1e-6.
fn same_answer(expected: &[RecordBatch], got: &[RecordBatch]) -> Result<(), String> {
    let (mut a, mut b) = (rows_of(expected)?, rows_of(got)?);
    if a.len() != b.len() {
        return Err(format!("{} rows expected, {} returned", a.len(), b.len()));
    }
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let floats_close = x.1.len() == y.1.len()
            && x.1.iter().zip(&y.1).all(|(p, q)| (p - q).abs() <= 1e-6 * p.abs().max(q.abs()).max(1.0));
        if x.0 != y.0 || !floats_close {
            return Err(format!("row {i} differs: expected {} {:?}, got {} {:?}", x.0, x.1, y.0, y.1));
        }
    }
    Ok(())
}

/// Each row as (its non-float values as text, its float values).
fn rows_of(batches: &[RecordBatch]) -> Result<Vec<(String, Vec<f64>)>, String> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in batches {
        let columns = batch.columns();
        let formatters: Vec<ArrayFormatter> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            let mut text = Vec::new();
            let mut floats = Vec::new();
            for (column, formatter) in columns.iter().zip(&formatters) {
                match column.data_type() {
                    DataType::Float64 if column.is_valid(row) => {
                        floats.push(column.as_any().downcast_ref::<Float64Array>().expect("f64").value(row))
                    }
                    DataType::Float32 if column.is_valid(row) => {
                        floats.push(column.as_any().downcast_ref::<Float32Array>().expect("f32").value(row) as f64)
                    }
                    _ => text.push(formatter.value(row).to_string()),
                }
            }
            rows.push((text.join("|"), floats));
        }
    }
    Ok(rows)
}

fn report(sf: f64, results: &[QueryResult]) -> Result<()> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    let cached = results.iter().all(|r| r.cached.is_some());
    let mut header = vec!["query", "DataFusion (ms)", "Cohort (ms)", "ratio", "rows", "answer"];
    if cached {
        header.extend(["cached (ms)", "Parquet ÷ cached", "cached answer"]);
    }
    table.set_header(header);
    let answer = |equal: &Result<(), String>| match equal {
        Ok(()) => "equal".to_string(),
        Err(e) => format!("DIFFERENT: {e}"),
    };
    for r in results {
        let mut row = vec![
            format!("q{}", r.query),
            format!("{:.0}", r.local.as_secs_f64() * 1e3),
            format!("{:.0}", r.cohort.as_secs_f64() * 1e3),
            format!("{:.2}", r.cohort.as_secs_f64() / r.local.as_secs_f64()),
            r.rows.to_string(),
            answer(&r.equal),
        ];
        if let Some((time, equal)) = &r.cached {
            row.extend([
                format!("{:.0}", time.as_secs_f64() * 1e3),
                format!("{:.2}", r.cohort.as_secs_f64() / time.as_secs_f64()),
                answer(equal),
            ]);
        }
        table.add_row(row);
    }
    println!("{table}");
    let local: Duration = results.iter().map(|r| r.local).sum();
    let cohort: Duration = results.iter().map(|r| r.cohort).sum();
    if cached {
        let time: Duration = results.iter().filter_map(|r| r.cached.as_ref().map(|c| c.0)).sum();
        let equal = results.iter().filter(|r| r.cached.as_ref().is_some_and(|c| c.1.is_ok())).count();
        println!(
            "cached: {:.2} s, {:.2}x faster than Cohort on Parquet, {:.2} of single-process DataFusion; {equal} of {} cached answers equal",
            time.as_secs_f64(),
            cohort.as_secs_f64() / time.as_secs_f64(),
            time.as_secs_f64() / local.as_secs_f64(),
            results.len()
        );
        if equal != results.len() {
            bail!("{} cached answer(s) differ", results.len() - equal);
        }
    }
    let equal = results.iter().filter(|r| r.equal.is_ok()).count();
    println!(
        "TPC-H SF{sf} (derived), {} queries: DataFusion {:.2} s, Cohort over Flight SQL {:.2} s, ratio {:.2}; {equal} of {} answers equal",
        results.len(),
        local.as_secs_f64(),
        cohort.as_secs_f64(),
        cohort.as_secs_f64() / local.as_secs_f64(),
        results.len()
    );
    if equal != results.len() {
        bail!("{} answer(s) differ", results.len() - equal);
    }
    Ok(())
}
