//! `kind = "sql"`: statements run by a driver over the job's own batch
//! executors; and `kind = "pool"`: the batch executors the coordinator
//! keeps warm for SQL clients. Both serve datafusion-distributed workers on
//! a host port named `flight`, checked by TCP until they accept.

use std::time::Duration;

use cohort_batch::{Statement, classify, split_statements};
use serde::Deserialize;
use toml::Spanned;

use super::service::RawService;
use super::{Errors, HealthSpec, ServiceSpec, SpecError, line_of};

/// The port a batch executor serves its worker on.
pub const FLIGHT_PORT: &str = "flight";

/// Statements travel to the driver in its environment, which caps one
/// value at 128 KiB.
const MAX_STATEMENTS_BYTES: usize = 100 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSql {
    statements: Spanned<String>,
}

/// Checks every statement parses and is one a job may run, naming the
/// statement and its line when one is not.
pub(super) fn parse(errors: &Errors, raw: Spanned<RawSql>) -> Result<String, SpecError> {
    let raw = raw.into_inner();
    let span = raw.statements.span();
    let text = raw.statements.into_inner();
    let field = "sql.statements";
    if text.len() > MAX_STATEMENTS_BYTES {
        return Err(errors.at(
            Some(span),
            field,
            format!("{} bytes of SQL; at most {MAX_STATEMENTS_BYTES} (put large queries in views)", text.len()),
        ));
    }
    let statements = split_statements(&text).map_err(|e| errors.at(Some(span.clone()), field, e.to_string()))?;
    if statements.is_empty() {
        return Err(errors.at(Some(span), field, "no statements to run"));
    }
    // Where the value's text starts: TOML drops the newline that opens a multi-line string.
    let opens_with_newline = ["\"\"\"\n", "'''\n", "\"\"\"\r\n", "'''\r\n"]
        .iter()
        .any(|open| errors.text.get(span.start..).is_some_and(|t| t.starts_with(open)));
    let first_line = line_of(errors.text, span.start) + usize::from(opens_with_newline);
    let mut searched = 0;
    for (i, statement) in statements.iter().enumerate() {
        let at = text[searched..].find(statement.as_str()).map_or(searched, |o| searched + o);
        searched = at + statement.len();
        let line = first_line + text[..at].matches('\n').count();
        let refused = match classify(statement) {
            Ok(Statement::Catalog(_) | Statement::Copy | Statement::Insert { .. } | Statement::Query) => None,
            Ok(Statement::Cache { .. } | Statement::Uncache { .. }) => Some(CACHING_IN_JOBS.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = refused {
            return Err(SpecError {
                file: errors.file.to_string(),
                line,
                field: field.to_string(),
                message: format!("statement {}: {why}", i + 1),
            });
        }
    }
    Ok(text)
}

/// Why a job may not cache: the stores' catalog is the coordinator's.
pub const CACHING_IN_JOBS: &str =
    "CACHE TABLE and UNCACHE TABLE run through the SQL front door (`cohort sql`, Flight SQL clients), not in jobs";

/// A batch executor or a store is serving while its gRPC server answers.
/// A TCP check would pass a process that is stopped or wedged, whose
/// kernel still accepts connections: queries would wait on it instead of
/// its being restarted.
pub(super) fn serving_check() -> HealthSpec {
    HealthSpec::grpc_on(FLIGHT_PORT, Duration::from_millis(500))
}

/// A pool's or a store's `[service]`: its instances serve the `flight` port.
pub(super) fn pool_service(errors: &Errors, raw: Spanned<RawService>) -> Result<ServiceSpec, SpecError> {
    let span = raw.span();
    let mut service = super::service::parse(errors, raw)?;
    if service.ports != [FLIGHT_PORT] {
        return Err(errors.at(
            Some(span),
            "service.ports",
            format!("a pool's or a store's instances serve one port: [\"{FLIGHT_PORT}\"]"),
        ));
    }
    service.health.get_or_insert_with(serving_check);
    Ok(service)
}

/// The spec of the coordinator's warm pool.
pub fn pool_spec(name: &str, instances: u32, cpu: &str, memory: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"pool\"\npriority = \"interactive\"\n\n[gang]\ncpu = \"{cpu}\"\nmemory = \"{memory}\"\n\n\
         [service]\ninstances = {instances}\nports = [\"{FLIGHT_PORT}\"]\nunique_nodes = true\n"
    )
}

/// The spec of the stores that hold cached tables: one per node, at
/// `service` priority (preempted only by `system` work), each holding
/// about three quarters of `memory` in batches.
pub fn store_spec(name: &str, instances: u32, cpu: &str, memory: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"store\"\npriority = \"service\"\n\n[gang]\ncpu = \"{cpu}\"\nmemory = \"{memory}\"\n\n\
         [service]\ninstances = {instances}\nports = [\"{FLIGHT_PORT}\"]\nunique_nodes = true\n"
    )
}

#[cfg(test)]
mod tests {
    use super::super::{JobKind, parse_job};
    use super::*;
    use cohort_scheduler::Restart;

    const JOB: &str = r#"name = "report"
kind = "sql"

[gang]
min = 2
cpu = "1"
memory = "1GiB"

[sql]
statements = """
CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '/data/events/';
COPY (SELECT user_id, count(*) AS n FROM events GROUP BY user_id)
  TO '/data/out/report/' STORED AS PARQUET;
"""
"#;

    #[test]
    fn an_sql_job_is_a_driver_and_its_workers() {
        let job = parse_job("report.toml", JOB).unwrap();
        assert_eq!(job.gang.restart, Restart::Leader);
        let JobKind::Sql { statements } = &job.kind else { panic!("{:?}", job.kind) };
        assert!(statements.contains("COPY ("));
        let shape = job.kind.launch_shape();
        assert_eq!(shape.ports, vec!["flight"]);
        assert!(shape.health.is_some());
    }

    #[test]
    fn a_bad_statement_is_named_with_its_line() {
        let bad = JOB.replace("COPY (SELECT", "COPY (SELEKT");
        let e = parse_job("report.toml", &bad).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (12, "sql.statements"), "{e}");
        assert!(e.message.starts_with("statement 2:"), "{e}");
        let relative = JOB.replace("'/data/events/'", "'events/'");
        let e = parse_job("report.toml", &relative).unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert!(e.message.contains("relative"), "{e}");
        let e = parse_job("report.toml", &JOB.replace("statements = \"\"\"", "statments = \"\"\"")).unwrap_err();
        assert_eq!(e.field, "sql.statments", "{e}");
    }

    #[test]
    fn the_pool_spec_parses_as_a_pool() {
        let job = parse_job("pool", &pool_spec("sql-pool", 2, "1", "2GiB")).unwrap();
        assert!(matches!(job.kind, JobKind::Pool { .. }));
        assert_eq!((job.gang.max, job.gang.priority.as_str()), (2, "interactive"));
        assert_eq!(job.kind.launch_shape().argv, vec!["worker"]);
        let job = parse_job("stores", &store_spec("sql-store", 3, "250m", "1GiB")).unwrap();
        assert!(matches!(job.kind, JobKind::Store { .. }));
        assert_eq!((job.gang.max, job.gang.priority.as_str()), (3, "service"));
        assert!(job.gang.constraints.one_slot_per_node);
        let shape = job.kind.launch_shape();
        assert_eq!((shape.executor, shape.argv), (crate::executor::ExecutorKind::Store, vec!["serve".to_string()]));
    }
}
