//! SQL end to end: Flight SQL against single-process DataFusion, `kind =
//! "sql"` jobs and their outputs, errors clients see, a worker killed
//! mid-query, the catalog across a coordinator restart, and cached tables.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Cluster, Up, cli_at, cli_with_stdin, cohort, kill9, pids_of};

const WAIT: Duration = Duration::from_secs(90);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Runs SQL through `cohort sql -e`; the parsed JSON rows.
fn sql_json(address: &str, sql: &str) -> Vec<Value> {
    let out = cli_at(address, &["sql", "--output", "json", "-e", sql]);
    assert!(out.status.success(), "`{sql}` failed: {}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("`{sql}` printed no JSON ({e}): {}", stdout(&out)))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn sql_ok(address: &str, sql: &str) {
    let out = cli_at(address, &["sql", "-e", sql]);
    assert!(out.status.success(), "`{sql}` failed: {}", stderr(&out));
}

/// Writes `rows` rows (`id`, `k = id % 10`, `pad`) as Parquet into `dir`
/// through the cluster itself, and declares table `name` over them.
fn make_table(address: &str, name: &str, dir: &Path, rows: u64) {
    sql_ok(
        address,
        &format!(
            "COPY (SELECT i AS id, i % 10 AS k, md5(CAST(i AS VARCHAR)) AS pad FROM generate_series(1, {rows}) t(i)) \
             TO '{}/' STORED AS PARQUET",
            dir.display()
        ),
    );
    sql_ok(address, &format!("CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '{}/'", dir.display()));
}

fn visible_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn tpch_through_flight_sql_and_from_cached_tables_equals_single_process_datafusion() {
    // Every query on the pool, however small this scale factor's files.
    let up = Up::start_with(2, &["--sql-local-query-bytes=0"]);
    let data = up.dir.path().join("tpch");
    let out = std::process::Command::new(cohort())
        .args(["bench", "tpch", "--sf", "0.01", "--cache", "--cluster", &up.address, "--data-dir"])
        .arg(&data)
        .env("COHORT_TOKEN", &up.token)
        .env("COHORT_CA", crate::harness::ca_for(&up.address))
        .env("COHORT_CONFIG", "/nonexistent/cohort-config.toml")
        .env("COHORT_LOG", "warn")
        .output()
        .expect("run the benchmark");
    let text = stdout(&out);
    assert!(out.status.success(), "bench tpch failed:\n{text}\n{}", stderr(&out));
    assert!(text.contains("22 of 22 answers equal"), "{text}");
    assert!(text.contains("22 of 22 cached answers equal"), "cached answers equal uncached ones: {text}");
    for q in 1..=22 {
        assert!(text.contains(&format!("q{q} ")), "q{q} missing:\n{text}");
    }
}

fn sql_job(name: &str, statements: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"sql\"\nmax_attempts = 2\n\n[gang]\nmin = 2\ncpu = \"1\"\nmemory = \"512MiB\"\n\n\
         [sql]\nstatements = \"\"\"\n{statements}\n\"\"\"\n"
    )
}

#[test]
fn an_sql_job_writes_exactly_its_rows_and_a_failed_one_leaves_nothing() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let root = c.dir.path().join("data");
    make_table(&c.address, "events", &root.join("events"), 10_000);

    let out = root.join("out");
    let id = c.submit_file(
        "report.toml",
        &sql_job(
            "report",
            &format!(
                "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '{events}/';\n\
                 COPY (SELECT k, count(*) AS n, sum(id) AS total FROM events WHERE id > 100 GROUP BY k)\n  TO '{out}/report/' STORED AS PARQUET;\n\
                 SELECT count(*) FROM events;",
                events = root.join("events").display(),
                out = out.display()
            ),
        ),
    );
    c.wait_until("the report job succeeds", WAIT, |c| c.state(id) == "succeeded");
    let log = stdout(&c.cli(&["logs", &id.to_string()]));
    assert!(log.contains("[2/3]") && log.contains("10 rows staged") && log.contains("committed"), "{log}");
    sql_ok(&c.address, &format!("CREATE EXTERNAL TABLE report STORED AS PARQUET LOCATION '{}/report/'", out.display()));
    let rows = sql_json(&c.address, "SELECT k, n, total FROM report ORDER BY k");
    let expected: Vec<(i64, i64, i64)> = (0..10)
        .map(|k| {
            let ids: Vec<i64> = (101..=10_000).filter(|i| i % 10 == k).collect();
            (k, ids.len() as i64, ids.iter().sum())
        })
        .collect();
    let got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| (r["k"].as_i64().unwrap(), r["n"].as_i64().unwrap(), r["total"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(visible_entries(&out), vec!["report"], "nothing but the committed output");

    // Files that appear in a table's directory are seen by the next query:
    // one an INSERT wrote, and one a pipeline or anyone else put there.
    let count = |c: &Cluster| sql_json(&c.address, "SELECT count(*) AS n FROM report")[0]["n"].as_i64().unwrap();
    sql_ok(&c.address, "INSERT INTO report VALUES (99, 1, 1)");
    assert_eq!(count(&c), 11, "the inserted row");
    let written = visible_entries(&out.join("report")).into_iter().next().expect("a file in report/");
    std::fs::copy(out.join("report").join(&written), out.join("report").join("from-elsewhere.parquet")).unwrap();
    assert!(count(&c) > 11, "a file put there from outside");

    // A job that writes, then fails: its output never appears, and it says why.
    let failing = c.submit_file(
        "broken.toml",
        &sql_job(
            "broken",
            &format!(
                "COPY (SELECT * FROM events) TO '{}/broken/' STORED AS PARQUET;\nSELECT * FROM no_such_table;",
                out.display()
            ),
        ),
    );
    c.wait_until("the broken job fails", WAIT, |c| c.state(failing) == "failed");
    let job = c.job(failing);
    let reason = job["reason"].as_str().unwrap_or("");
    assert!(reason.contains("statement 2") && reason.contains("no_such_table"), "{job}");
    assert_eq!(visible_entries(&out), vec!["report"], "no output, not even hidden staging");
}

#[test]
fn a_job_preempted_halfway_leaves_no_output_and_writes_it_when_it_runs_again() {
    let c = Cluster::start(&[("a", 2)]);
    let root = c.dir.path().join("data");
    make_table(&c.address, "events", &root.join("events"), 1_000);
    let out = root.join("out");
    // The COPY is staged at once; the slow statement after it is where the preemption lands.
    let id = c.submit_file(
        "slow.toml",
        &sql_job(
            "slow",
            &format!(
                "COPY (SELECT k, count(*) AS n FROM events GROUP BY k) TO '{}/slow/' STORED AS PARQUET;\n\
                 SELECT count(*) FROM generate_series(1, 400000000);",
                out.display()
            ),
        ),
    );
    c.wait_until("the COPY is staged", WAIT, |c| stdout(&c.cli(&["logs", &id.to_string()])).contains("[2/2]"));
    assert!(visible_entries(&out).iter().all(|e| e.starts_with('.')), "staged only: {:?}", visible_entries(&out));
    // An interactive job needs both cores: the SQL job is preempted.
    let urgent = c.submit("urgent", 2, "1", "interactive", "sleep 2");
    c.wait_until("the SQL job is preempted", WAIT, |c| c.state(id) == "pending");
    assert!(visible_entries(&out).iter().all(|e| e.starts_with('.')), "no visible output: {:?}", visible_entries(&out));
    c.wait_until("the urgent job succeeds", WAIT, |c| c.state(urgent) == "succeeded");
    c.wait_until("the SQL job runs again and succeeds", Duration::from_secs(180), |c| c.state(id) == "succeeded");
    assert_eq!(visible_entries(&out), vec!["slow"], "committed once, stale staging swept");
    assert_eq!(c.job(id)["attempts"], 1, "a preemption is not the job's failure");
    let total: i64 = {
        sql_ok(&c.address, &format!("CREATE EXTERNAL TABLE slow STORED AS PARQUET LOCATION '{}/slow/'", out.display()));
        sql_json(&c.address, "SELECT sum(n) AS n FROM slow")[0]["n"].as_i64().unwrap()
    };
    assert_eq!(total, 1_000);
}

#[test]
fn missing_tables_bad_sql_and_vanished_files_get_clear_errors() {
    let c = Cluster::start(&[("a", 2)]);
    let root = c.dir.path().join("data");
    make_table(&c.address, "events", &root.join("events"), 100);

    let missing = c.cli(&["sql", "-e", "SELECT * FROM nope"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nope") && stderr(&missing).contains("not found"), "{}", stderr(&missing));

    let bad = c.cli(&["sql", "-e", "SELEC 1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("SELEC"), "{}", stderr(&bad));

    // SQL piped in reads as psql reads it: only the rows on stdout, a last
    // statement without `;` runs, a failed one is reported and the rest run.
    let piped = cli_with_stdin(&c.address, &["sql", "--output", "csv"], "SELECT 1 AS a;\nSELECT 2 AS b\n");
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), "a\n1\nb\n2\n");
    let piped = cli_with_stdin(&c.address, &["sql", "--output", "csv"], "SELEC 1;\nSELECT 3 AS c;\n");
    assert!(!piped.status.success() && stderr(&piped).contains("1 statement(s) failed"), "{}", stderr(&piped));
    assert_eq!(stdout(&piped), "c\n3\n");

    // A long chain of operators (a generated query) is planned, not a
    // stack overflow that takes the coordinator down with every query in it.
    let long = format!("SELECT {} AS n", vec!["1"; 2000].join(" + "));
    assert_eq!(sql_json(&c.address, &long)[0]["n"], 2000);
    let deeper = c.cli(&["sql", "-e", &format!("SELECT {} AS n", vec!["1"; 5000].join(" + "))]);
    assert!(stderr(&deeper).contains("nests more than 2000 operators deep"), "{}", stderr(&deeper));

    let relative = c.cli(&["sql", "-e", "CREATE EXTERNAL TABLE r STORED AS PARQUET LOCATION 'data/'"]);
    assert!(stderr(&relative).contains("relative"), "{}", stderr(&relative));

    // A table over one file that is then deleted.
    let file = root.join("one.parquet");
    sql_ok(&c.address, &format!("COPY (SELECT 1 AS x) TO '{}' STORED AS PARQUET", file.display()));
    sql_ok(&c.address, &format!("CREATE EXTERNAL TABLE one STORED AS PARQUET LOCATION '{}'", file.display()));
    assert_eq!(sql_json(&c.address, "SELECT x FROM one")[0]["x"], 1);
    std::fs::remove_file(&file).unwrap();
    let vanished = c.cli(&["sql", "-e", "SELECT x FROM one"]);
    assert!(!vanished.status.success());
    assert!(stderr(&vanished).contains("one.parquet"), "{}", stderr(&vanished));

    // Errors change nothing: the good table still answers.
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM events")[0]["n"], 100);

    // A reader that goes away is not an error: CSV (which loses the I/O
    // error's kind on the way) piped into `head` ends quietly, as SIGPIPE would.
    let piped = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} sql --output csv -e \"SELECT i, md5(CAST(i AS VARCHAR)) AS h FROM generate_series(1, 200000) t(i)\" | head -1",
            cohort()
        ))
        .env("COHORT_COORDINATOR", &c.address)
        .env("COHORT_TOKEN", crate::harness::token_for(&c.address))
        .env("COHORT_CA", crate::harness::ca_for(&c.address))
        .env("COHORT_CONFIG", "/nonexistent/cohort-config.toml")
        .output()
        .unwrap();
    assert_eq!(stdout(&piped).trim(), "i,h");
    assert_eq!((piped.status.code(), stderr(&piped).as_str()), (Some(141), ""));
}

#[test]
fn the_catalog_survives_a_coordinator_restart() {
    let mut c = Cluster::start(&[("a", 2)]);
    let root = c.dir.path().join("data");
    make_table(&c.address, "events", &root.join("events"), 50);
    sql_ok(&c.address, "CREATE VIEW big_ids AS SELECT id FROM events WHERE id > 40");
    sql_ok(
        &c.address,
        &format!("CREATE EXTERNAL TABLE gone STORED AS PARQUET LOCATION '{}/'", root.join("events").display()),
    );
    sql_ok(&c.address, "DROP TABLE gone");
    c.kill_coordinator();
    c.start_coordinator();
    let tables: Vec<String> = sql_json(&c.address, "SHOW TABLES")
        .iter()
        .filter(|t| t["table_schema"] == "public")
        .map(|t| t["table_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tables.len(), 2, "{tables:?}");
    assert!(tables.contains(&"events".to_string()) && tables.contains(&"big_ids".to_string()), "{tables:?}");
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM big_ids")[0]["n"], 10);
}

#[test]
fn cached_tables_are_cached_again_after_a_coordinator_restart() {
    let mut c = Cluster::start(&[("a", 2)]);
    let data = c.dir.path().join("events");
    make_table(&c.address, "events", &data, 5_000);
    sql_ok(&c.address, "CACHE TABLE events");
    sql_ok(&c.address, "CACHE TABLE hot AS SELECT id, pad FROM events WHERE k = 3");
    sql_ok(&c.address, "CACHE TABLE cold AS SELECT id FROM events WHERE k = 4");
    sql_ok(&c.address, "DROP TABLE cold");
    let hot = "SELECT count(*) AS n, sum(id) AS s FROM hot";
    let expected = sql_json(&c.address, hot);
    assert_eq!(expected[0]["n"], 500);

    // When the coordinator restarts
    c.kill_coordinator();
    c.start_coordinator();
    // Then the table cached AS SELECT answers at once (from its query until cached again)
    assert_eq!(sql_json(&c.address, hot), expected);
    // And both are cached again, while the dropped one stays gone
    c.wait_until("both tables are cached again", WAIT, |c| {
        let cached = sql_json(&c.address, "SELECT table_name FROM cohort.cache ORDER BY table_name");
        cached == vec![serde_json::json!({ "table_name": "events" }), serde_json::json!({ "table_name": "hot" })]
    });
    let out = cli_at(&c.address, &["sql", "-e", "SELECT * FROM cold"]);
    assert!(!out.status.success() && stderr(&out).contains("cold"), "{}", stderr(&out));
    // And, cached, they read no file
    std::fs::rename(&data, c.dir.path().join("events-moved")).unwrap();
    assert_eq!(sql_json(&c.address, hot), expected);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM events")[0]["n"], 5_000);
}

/// Cpu time a process has used, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15.
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn a_query_whose_executor_is_killed_is_retried_and_answers_right() {
    let up = Up::start_with(2, &["--sql-pool-warm", "2", "--sql-local-query-bytes=0"]);
    up.wait_until("two pool executors serve", WAIT, |u| {
        u.json(&["endpoints", "sql-pool"]).as_array().is_some_and(|e| e.len() == 2)
    });
    let dir = up.dir.path().join("big");
    make_table(&up.address, "big", &dir, 2_000_000);
    let query = "SELECT k, count(*) AS n, max(md5(md5(md5(md5(pad))))) AS m FROM big GROUP BY k ORDER BY k";
    let expected = sql_json(&up.address, query);
    assert_eq!(expected.len(), 10);
    let address = up.address.clone();
    let started = Instant::now();
    // The worker itself, not its supervisor (`--kind batch --alloc-dir DIR -- worker`).
    let workers = pids_of(&["executor --kind batch -- worker"]);
    let mine: Vec<u32> = workers.into_iter().filter(|p| is_under(*p, up.dir.path())).collect();
    assert!(!mine.is_empty(), "no pool worker found");
    let idle = cpu_ticks(mine[0]);
    let running = std::thread::spawn(move || sql_json(&address, query));
    // Kill one serving pool executor (its worker process) once it is busy with the query.
    let deadline = Instant::now() + WAIT;
    while cpu_ticks(mine[0]) < idle + 20 && Instant::now() < deadline && !running.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(mine[0]);
    let answer = running.join().expect("the query thread");
    assert_eq!(answer, expected, "the retried query answers as an undisturbed one");
    let log = std::fs::read_to_string(up.dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(log.contains("re-planning"), "the kill landed after {:?}; coordinator log:\n{log}", started.elapsed());
    up.wait_until("the pool is whole again", WAIT, |u| {
        u.json(&["endpoints", "sql-pool"]).as_array().is_some_and(|e| e.len() == 2)
    });
}

#[test]
fn a_small_scan_runs_in_the_coordinator_and_a_large_one_on_the_pool() {
    let up = Up::start_with(2, &["--sql-local-query-bytes=64KiB"]);
    make_table(&up.address, "small", &up.dir.path().join("small"), 100);
    make_table(&up.address, "large", &up.dir.path().join("large"), 100_000);
    let small = sql_json(&up.address, "SELECT count(*) AS n, sum(id) AS total FROM small");
    assert_eq!(small, vec![serde_json::json!({ "n": 100, "total": 5050 })]);
    let large = sql_json(&up.address, "SELECT count(*) AS n, sum(id) AS total FROM large");
    assert_eq!(large, vec![serde_json::json!({ "n": 100_000, "total": 5_000_050_000u64 })]);

    let http_address = up.json(&["status"])["http"].as_str().expect("status names the HTTP address").to_string();
    let (code, body) = crate::harness::http(&http_address, &up.token, "GET", "/api/v1/queries", None);
    assert_eq!(code, 200, "{body}");
    let recent: Vec<Value> = serde_json::from_str(&body).expect("the recent queries are JSON");
    let ran_on = |table: &str| {
        let q = recent.iter().find(|q| q["sql"].as_str().is_some_and(|s| s.ends_with(table))).expect(table);
        q["workers"].as_u64().expect("workers")
    };
    assert_eq!(ran_on("FROM small"), 0, "under 64 KiB: in the coordinator\n{recent:#?}");
    assert!(ran_on("FROM large") >= 1, "over 64 KiB: on the pool\n{recent:#?}");
}

/// Whether a process was started for the cluster whose data is under `dir`.
fn is_under(pid: u32, dir: &Path) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/environ"))
        .map(|env| env.contains(&dir.display().to_string()))
        .unwrap_or(false)
}

#[test]
fn a_cached_table_is_served_from_the_stores_memory_until_it_is_uncached() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let data = c.dir.path().join("events");
    make_table(&c.address, "events", &data, 20_000);
    let query = "SELECT k, count(*) AS n, sum(id) AS s, max(pad) AS p FROM events GROUP BY k ORDER BY k";
    let from_files = sql_json(&c.address, query);
    assert_eq!(from_files.len(), 10);

    // A mistyped name or a bad query is refused before any store starts
    for (bad, says) in [
        ("CACHE TABLE evnets", "`evnets` not found"),
        ("CACHE TABLE t AS SELECT nope FROM events", "nope"),
        ("CACHE TABLE cohort.cache", "is a system table"),
        ("CACHE TABLE COHORT.cache", "is a system table"),
        ("CACHE TABLE information_schema.tables", "is a system table"),
    ] {
        let out = cli_at(&c.address, &["sql", "-e", bad]);
        assert!(!out.status.success() && stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
    let jobs = c.json(&["jobs"]);
    assert!(!jobs.as_array().unwrap().iter().any(|j| j["name"] == "sql-store"), "no store started: {jobs}");

    // Given the table cached
    let out = cli_at(&c.address, &["sql", "-e", "CACHE TABLE events;"]);
    assert!(out.status.success(), "CACHE TABLE failed: {}", stderr(&out));
    assert!(stdout(&out).contains("20000"), "it says how many rows it cached: {}", stdout(&out));
    // Then the stores are a job at service priority, one per node
    let stores = c.json(&["job", "sql-store"]);
    assert_eq!(stores["priority"], "service", "{stores}");
    let nodes: std::collections::BTreeSet<String> =
        stores["slots"].as_array().unwrap().iter().map(|s| s["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), 2, "one store per node: {stores}");

    // When its files are moved away, queries still answer the same: they open no file
    let moved = c.dir.path().join("events-moved");
    std::fs::rename(&data, &moved).unwrap();
    assert_eq!(sql_json(&c.address, query), from_files);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM events WHERE k = 3")[0]["n"], 2000);

    // And a table can be cached from a query, then listed with the rest
    sql_ok(&c.address, "CACHE TABLE hot AS SELECT id, pad FROM events WHERE k = 3");
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n, min(id) AS m FROM hot")[0]["m"], 3);
    let listed = cli_at(&c.address, &["cache", "--output", "json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let events = listed.iter().find(|t| t["table_name"] == "events").expect("events is listed");
    assert_eq!(events["rows"], 20_000);
    assert!(events["hits"].as_u64().unwrap() >= 2, "queries count as hits: {events}");
    assert!(events["bytes"].as_u64().unwrap() > 0);
    assert_eq!(events["stores"].as_str().unwrap().split(", ").count(), 2, "spread over both stores: {events}");
    assert!(listed.iter().any(|t| t["table_name"] == "hot"));

    // Uncached, the table reads its files again: gone, it says so; back, the same answers
    sql_ok(&c.address, "UNCACHE TABLE events");
    let out = cli_at(&c.address, &["sql", "-e", query]);
    assert!(!out.status.success() && stderr(&out).contains("not found"), "{}", stderr(&out));
    std::fs::rename(&moved, &data).unwrap();
    assert_eq!(sql_json(&c.address, query), from_files);
    let out = cli_at(&c.address, &["sql", "-e", "UNCACHE TABLE events"]);
    assert!(stderr(&out).contains("is not cached"), "{}", stderr(&out));
    sql_ok(&c.address, "UNCACHE TABLE IF EXISTS events");
    // A table cached AS SELECT lives in memory only: dropping it uncaches it.
    sql_ok(&c.address, "DROP TABLE hot");
    let out = cli_at(&c.address, &["sql", "-e", "SELECT * FROM hot"]);
    assert!(!out.status.success(), "hot is gone");
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM cohort.cache")[0]["n"], 0);
}

#[test]
fn a_cached_table_that_loses_a_store_killed_or_stopped_is_cached_again_and_answers_whole() {
    let c = Cluster::start(&[("a", 2), ("b", 2)]);
    let data = c.dir.path().join("events");
    make_table(&c.address, "events", &data, 20_000);
    let query = "SELECT k, count(*) AS n, sum(id) AS s FROM events GROUP BY k ORDER BY k";
    let expected = sql_json(&c.address, query);
    sql_ok(&c.address, "CACHE TABLE events");
    sql_ok(&c.address, "CACHE TABLE hot AS SELECT id FROM events WHERE k = 3");
    // Given one store killed (-9): the store itself, not its supervisor
    let stores: Vec<u32> =
        pids_of(&["executor --kind store -- serve"]).into_iter().filter(|p| is_under(*p, c.dir.path())).collect();
    assert_eq!(stores.len(), 2, "a store per node");
    kill9(stores[0]);
    // Then the next queries answer whole and right: what was lost is cached again
    assert_eq!(sql_json(&c.address, query), expected);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM hot")[0]["n"], 2000);
    let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(log.contains("caching it again"), "coordinator log:\n{log}");
    // And both are cached still
    let listed = sql_json(&c.address, "SELECT table_name FROM cohort.cache ORDER BY table_name");
    assert_eq!(listed.len(), 2, "{listed:?}");

    // Given the other store stopped (SIGSTOP): its port still accepts, it answers nothing
    let stopped = stores[1];
    let _ = std::process::Command::new("kill").args(["-STOP", &stopped.to_string()]).status();
    // Then its agent's gRPC health check restarts it, and answers stay whole and right
    c.wait_until("the stopped store is restarted", WAIT, |c| {
        c.job_named("sql-store")["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("health check"))))
    });
    c.wait_until("the stopped store is gone", WAIT, |_| !pids_of(&["executor --kind store"]).contains(&stopped));
    assert_eq!(sql_json(&c.address, query), expected);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM hot")[0]["n"], 2000);
}

#[test]
fn a_cache_over_its_memory_evicts_the_least_recently_used_tables_and_answers_stay_right() {
    // Given a cache that holds one 40,000-row table (2-3 MiB in memory) but not two
    let c = Cluster::start_configured(&[("a", 2), ("b", 2)], 1.0, &["--sql-cache-memory=3MiB"], &[]);
    make_table(&c.address, "events", &c.dir.path().join("events"), 40_000);
    make_table(&c.address, "other", &c.dir.path().join("other"), 40_000);
    make_table(&c.address, "huge", &c.dir.path().join("huge"), 200_000);
    let query =
        |t: &str| format!("SELECT k, count(*) AS n, sum(id) AS s, max(pad) AS p FROM {t} GROUP BY k ORDER BY k");
    let events = sql_json(&c.address, &query("events"));
    let other = sql_json(&c.address, &query("other"));
    sql_ok(&c.address, "CACHE TABLE hot AS SELECT id, pad FROM events WHERE k = 3");
    sql_ok(&c.address, "CACHE TABLE events");
    assert_eq!(sql_json(&c.address, &query("events")), events);

    // When a third table is cached
    sql_ok(&c.address, "CACHE TABLE other");

    // Then the least recently used were evicted to make room, and what is held fits
    let listed = sql_json(&c.address, "SELECT table_name, state, bytes FROM cohort.cache ORDER BY table_name");
    let state = |t: &str| listed.iter().find(|r| r["table_name"] == t).map(|r| r["state"].clone());
    assert_eq!(state("other"), Some("cached".into()), "{listed:?}");
    assert_eq!(state("events"), Some("evicted".into()), "{listed:?}");
    assert_eq!(state("hot"), Some("evicted".into()), "the least recent goes first: {listed:?}");
    let held: u64 = listed.iter().filter(|r| r["state"] == "cached").map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert!(held <= 3 << 20, "{held} bytes held over a 3 MiB cache: {listed:?}");
    let log = std::fs::read_to_string(c.dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(log.contains("evicted a cached table"), "coordinator log:\n{log}");

    // And every table answers right: evicted ones from their source, a query's from its query
    assert_eq!(sql_json(&c.address, &query("events")), events);
    assert_eq!(sql_json(&c.address, &query("other")), other);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n, min(id) AS m FROM hot")[0]["m"], 3);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM hot")[0]["n"], 4000);

    // And a table evicted is cached again on request, evicting in turn
    sql_ok(&c.address, "CACHE TABLE hot");
    sql_ok(&c.address, "CACHE TABLE events");
    let listed = sql_json(&c.address, "SELECT table_name, state FROM cohort.cache ORDER BY table_name");
    assert_eq!(
        listed.iter().map(|r| r["state"].as_str().unwrap()).collect::<Vec<_>>(),
        ["cached", "cached", "evicted"],
        "events and hot held, other evicted: {listed:?}"
    );
    assert_eq!(sql_json(&c.address, &query("events")), events);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM hot")[0]["n"], 4000);

    // And a table bigger than the whole cache is refused whole, naming the limit
    let out = cli_at(&c.address, &["sql", "-e", "CACHE TABLE huge"]);
    assert!(!out.status.success(), "huge does not fit");
    assert!(stderr(&out).contains("--sql-cache-memory"), "{}", stderr(&out));
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM huge")[0]["n"], 200_000);
    assert_eq!(sql_json(&c.address, "SELECT count(*) AS n FROM cohort.cache WHERE table_name = 'huge'")[0]["n"], 0);

    // And an evicted AS SELECT table is dropped like any
    sql_ok(&c.address, "DROP TABLE other");
    sql_ok(&c.address, "DROP TABLE hot");
    let out = cli_at(&c.address, &["sql", "-e", "SELECT * FROM hot"]);
    assert!(!out.status.success(), "hot is gone");
}

/// A Flight SQL client as JDBC and ODBC drivers are: TLS under the
/// cluster's CA, the admin token on each call.
async fn flight_sql_client(
    address: &str,
) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
    let ca = std::fs::read_to_string(crate::harness::ca_for(address)).expect("the cluster's CA");
    let channel = tonic::transport::Endpoint::from_shared(cohort::tls::https(address))
        .unwrap()
        .tls_config(cohort::tls::coordinator_client(&ca))
        .unwrap()
        .connect()
        .await
        .expect("connect to Flight SQL");
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    client.set_token(crate::harness::token_for(address));
    client
}

/// Every batch a metadata request's ticket gives.
async fn fetch(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    info: arrow_flight::FlightInfo,
) -> arrow::record_batch::RecordBatch {
    use futures::TryStreamExt;
    let schema = std::sync::Arc::new(info.clone().try_decode_schema().expect("a schema"));
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    let batches: Vec<_> = client.do_get(ticket).await.expect("do_get").try_collect().await.expect("batches");
    assert!(batches.iter().all(|b| b.schema().fields() == schema.fields()), "the data has the schema announced");
    arrow::compute::concat_batches(&schema, &batches).expect("one batch")
}

#[test]
fn sql_tools_get_the_type_table_and_each_tables_keys() {
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    use arrow_flight::sql::{
        CommandGetCrossReference, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
        CommandGetXdbcTypeInfo, XdbcDataType,
    };
    // Given a table over files, and a live table made with a key by bulk ingest
    let c = Cluster::start(&[("a", 2)]);
    make_table(&c.address, "events", &c.dir.path().join("events"), 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = flight_sql_client(&c.address).await;
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Utf8, true),
        ]));
        let rows = arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![
                std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                std::sync::Arc::new(arrow::array::StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap();
        let ingest = arrow_flight::sql::CommandStatementIngest {
            table_definition_options: Some(arrow_flight::sql::TableDefinitionOptions {
                if_not_exist: arrow_flight::sql::TableNotExistOption::Create.into(),
                if_exists: arrow_flight::sql::TableExistsOption::Append.into(),
            }),
            table: "kv".into(),
            options: [("cohort.key".to_string(), "id".to_string())].into(),
            ..Default::default()
        };
        let taken = client.execute_ingest(ingest, futures::stream::iter([Ok(rows)])).await.expect("ingest");
        assert_eq!(taken, 2);

        // When a tool asks for the type table (getTypeInfo), then it lists
        // the SQL types the engine takes; narrowed to one, only that one
        let info = client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None }).await.expect("type info");
        let types = fetch(&mut client, info).await;
        let names: Vec<&str> = types.column_by_name("type_name").unwrap().as_string::<i32>().iter().flatten().collect();
        for wanted in ["BOOLEAN", "INTEGER", "BIGINT", "DOUBLE", "DECIMAL", "VARCHAR", "DATE", "TIMESTAMP"] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let bigint = Some(XdbcDataType::XdbcBigint as i32);
        let info = client.get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: bigint }).await.unwrap();
        let only = fetch(&mut client, info).await;
        assert_eq!(only.column_by_name("type_name").unwrap().as_string::<i32>().value(0), "BIGINT");
        assert_eq!(only.num_rows(), 1);

        // And for primary keys (getPrimaryKeys): the live table's key, none for the other
        let keys = |table: &str| CommandGetPrimaryKeys { table: table.into(), catalog: None, db_schema: None };
        let info = client.get_primary_keys(keys("kv")).await.expect("primary keys");
        let kv = fetch(&mut client, info).await;
        assert_eq!(kv.num_rows(), 1);
        assert_eq!(kv.column_by_name("column_name").unwrap().as_string::<i32>().value(0), "id");
        assert_eq!(kv.column_by_name("key_sequence").unwrap().as_primitive::<Int32Type>().value(0), 1);
        let info = client.get_primary_keys(keys("events")).await.unwrap();
        assert_eq!(fetch(&mut client, info).await.num_rows(), 0);

        // And for foreign keys, either way: none, with the columns the protocol names
        let table = "events".to_string();
        let infos = [
            client.get_imported_keys(CommandGetImportedKeys { table: table.clone(), ..Default::default() }).await,
            client.get_exported_keys(CommandGetExportedKeys { table: table.clone(), ..Default::default() }).await,
            client
                .get_cross_reference(CommandGetCrossReference {
                    pk_table: "kv".into(),
                    fk_table: table,
                    ..Default::default()
                })
                .await,
        ];
        for info in infos {
            let none = fetch(&mut client, info.expect("foreign keys")).await;
            assert_eq!(none.num_rows(), 0);
            assert!(none.schema().field_with_name("fk_column_name").is_ok() && none.schema().fields().len() == 13);
        }
    });
}
