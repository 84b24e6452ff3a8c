//! Job spec files (`cohort submit FILE`), read into a scheduler gang plus
//! what each slot runs. Every error names the file, the line and the field.
//!
//! - `mod.rs`: the fields every job has, `kind = "command"`;
//! - `service.rs`: `kind = "service"` (`[service]`, `[service.health]`);
//! - `sql.rs`: `kind = "sql"` (`[sql] statements`) and the coordinator's
//!   own `kind = "pool"` of batch executors kept warm for SQL clients and
//!   `kind = "store"` of store executors holding cached tables;
//! - `duration.rs`: `500ms`, `2s`, `5m`, `1h`.

mod duration;
mod pipeline;
mod service;
mod sql;

use std::collections::BTreeMap;
use std::ops::Range;

use cohort_scheduler::resources::{EXECUTORS, PORTS, parse_cpu, parse_memory};
use cohort_scheduler::{GangSpec, Placement, Resources, Restart};
use serde::Deserialize;
use toml::Spanned;

use crate::executor::ExecutorKind;

pub use duration::parse_duration;
pub use pipeline::is_pipeline;
pub use service::{HealthSpec, Probe, ServiceSpec};
pub use sql::{CACHING_IN_JOBS, FLIGHT_PORT, pool_spec, store_spec};

/// A job as submitted.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub kind: JobKind,
    pub gang: GangSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// An argv run in each slot, with COHORT_SLOT, COHORT_GANG_SIZE and COHORT_PEERS set.
    Command { argv: Vec<String>, env: BTreeMap<String, String> },
    /// A long-running service: `instances` of an argv, kept healthy.
    Service { argv: Vec<String>, env: BTreeMap<String, String>, service: ServiceSpec },
    /// SQL statements, run by a driver in slot 0 over the gang's batch
    /// executors (every slot serves one).
    Sql { statements: String },
    /// Batch executors kept warm for SQL clients: a service whose
    /// instances are datafusion-distributed workers.
    Pool { service: ServiceSpec },
    /// Store executors holding cached tables in memory: a service whose
    /// instances serve partitions over Arrow Flight.
    Store { service: ServiceSpec },
    /// A streaming pipeline: a service whose instances are members of one
    /// Kafka consumer group.
    Pipeline { config: Box<cohort_stream::PipelineConfig>, service: ServiceSpec },
}

/// The variable a stream executor reads its pipeline from (as JSON).
pub const PIPELINE_ENV: &str = "COHORT_PIPELINE";

/// How an agent starts one slot of a job.
pub struct LaunchShape {
    pub executor: ExecutorKind,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<String>,
    pub health: Option<HealthSpec>,
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Command { .. } => "command",
            JobKind::Service { .. } => "service",
            JobKind::Sql { .. } => "sql",
            JobKind::Pool { .. } => "pool",
            JobKind::Store { .. } => "store",
            JobKind::Pipeline { .. } => "pipeline",
        }
    }

    /// The service part of long-running kinds (scaled, health-checked,
    /// restarted, updated in place).
    pub fn service(&self) -> Option<&ServiceSpec> {
        match self {
            JobKind::Service { service, .. }
            | JobKind::Pool { service }
            | JobKind::Store { service }
            | JobKind::Pipeline { service, .. } => Some(service),
            JobKind::Command { .. } | JobKind::Sql { .. } => None,
        }
    }

    /// The names of the host ports each slot gets.
    pub fn ports(&self) -> Vec<String> {
        match self {
            JobKind::Service { service, .. }
            | JobKind::Pool { service }
            | JobKind::Store { service }
            | JobKind::Pipeline { service, .. } => service.ports.clone(),
            JobKind::Sql { .. } => vec![FLIGHT_PORT.to_string()],
            JobKind::Command { .. } => Vec::new(),
        }
    }

    pub fn launch_shape(&self) -> LaunchShape {
        let ports = self.ports();
        match self {
            JobKind::Command { argv, env } => LaunchShape {
                executor: ExecutorKind::Command,
                argv: argv.clone(),
                env: env.clone(),
                ports,
                health: None,
            },
            JobKind::Service { argv, env, service } => LaunchShape {
                executor: ExecutorKind::Service,
                argv: argv.clone(),
                env: env.clone(),
                ports,
                health: service.health.clone(),
            },
            JobKind::Sql { statements } => LaunchShape {
                executor: ExecutorKind::Batch,
                argv: vec!["sql".into()],
                env: BTreeMap::from([("COHORT_SQL".to_string(), statements.clone())]),
                ports,
                health: Some(sql::serving_check()),
            },
            JobKind::Pool { service } => LaunchShape {
                executor: ExecutorKind::Batch,
                argv: vec!["worker".into()],
                env: BTreeMap::new(),
                ports,
                health: service.health.clone(),
            },
            JobKind::Store { service } => LaunchShape {
                executor: ExecutorKind::Store,
                argv: vec!["serve".into()],
                env: BTreeMap::new(),
                ports,
                health: service.health.clone(),
            },
            JobKind::Pipeline { config, service } => LaunchShape {
                executor: ExecutorKind::Stream,
                argv: vec!["pipeline".into()],
                env: BTreeMap::from([(
                    PIPELINE_ENV.to_string(),
                    serde_json::to_string(config).expect("a pipeline config serializes"),
                )]),
                ports,
                health: service.health.clone(),
            },
        }
    }
}

/// Specs larger than this are refused before they are parsed: a real one
/// is a few hundred bytes, SQL jobs' statements included.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// A spec that cannot be accepted, with where.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}:{line}: {field}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// Builds errors that point into one spec's text.
pub(crate) struct Errors<'a> {
    file: &'a str,
    text: &'a str,
}

impl Errors<'_> {
    pub fn at(&self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_string(),
            line: span.map_or(1, |s| line_of(self.text, s.start)),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Spanned<String>,
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    priority: Option<Spanned<String>>,
    #[serde(default)]
    queue: Option<Spanned<String>>,
    #[serde(default)]
    max_attempts: Option<Spanned<i64>>,
    gang: Option<Spanned<RawGang>>,
    #[serde(default)]
    command: Option<Spanned<RawCommand>>,
    #[serde(default)]
    sql: Option<Spanned<sql::RawSql>>,
    #[serde(default)]
    service: Option<Spanned<service::RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGang {
    #[serde(default)]
    min: Option<Spanned<i64>>,
    #[serde(default)]
    max: Option<Spanned<i64>>,
    cpu: Spanned<toml::Value>,
    memory: Spanned<toml::Value>,
    #[serde(default)]
    spread: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    argv: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Reads a job spec. `file` names it in errors.
pub fn parse_job(file: &str, text: &str) -> Result<JobSpec, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError {
            file: file.to_string(),
            line: 1,
            field: "(whole file)".into(),
            message: format!("the spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted", text.len()),
        });
    }
    let errors = Errors { file, text };
    if pipeline::is_pipeline(text) {
        return pipeline::parse(&errors, text);
    }
    let raw: RawSpec = toml::from_str(text).map_err(|e| toml_error(&errors, text, &e))?;
    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(errors.at(Some(raw.name.span()), "name", "must not be empty"));
    }
    let kind_name = raw.kind.as_ref().map_or("command", |k| k.get_ref().as_str());
    let kind_span = raw.kind.as_ref().map(|k| k.span());
    let default_priority = if kind_name == "service" { "service" } else { "batch" };
    let priority = raw.priority.as_ref().map_or(default_priority.to_string(), |p| p.get_ref().clone());
    let queue = raw.queue.as_ref().map_or("default".to_string(), |q| q.get_ref().clone());
    let max_attempts = match &raw.max_attempts {
        None => 1,
        Some(m) if *m.get_ref() >= 1 && *m.get_ref() <= 100 => *m.get_ref() as u32,
        Some(m) => {
            return Err(errors.at(
                Some(m.span()),
                "max_attempts",
                format!("must be between 1 and 100, got {}", m.get_ref()),
            ));
        }
    };
    let Some(gang) = raw.gang else {
        return Err(errors.at(None, "gang", "missing [gang] table (min, max, cpu, memory per slot)"));
    };
    let gang_span = gang.span();
    let gang = gang.into_inner();
    let min = match &gang.min {
        None => 1,
        Some(m) if *m.get_ref() >= 1 && *m.get_ref() <= 100_000 => *m.get_ref() as u32,
        Some(m) => {
            return Err(errors.at(
                Some(m.span()),
                "gang.min",
                format!("must be between 1 and 100000, got {}", m.get_ref()),
            ));
        }
    };
    let max = match &gang.max {
        None => min,
        Some(m) if *m.get_ref() >= min as i64 && *m.get_ref() <= 100_000 => *m.get_ref() as u32,
        Some(m) => {
            return Err(errors.at(
                Some(m.span()),
                "gang.max",
                format!("must be at least gang.min ({min}), got {}", m.get_ref()),
            ));
        }
    };
    let cpu = quantity(&gang.cpu, parse_cpu).map_err(|m| errors.at(Some(gang.cpu.span()), "gang.cpu", m))?;
    let memory =
        quantity(&gang.memory, parse_memory).map_err(|m| errors.at(Some(gang.memory.span()), "gang.memory", m))?;
    if cpu == 0 && memory == 0 {
        return Err(errors.at(Some(gang_span), "gang", "a slot must ask for some cpu or memory"));
    }
    // Every slot is one executor process on its host.
    let slot = Resources::new(cpu, memory).with_scalar(EXECUTORS, 1);
    if !matches!(kind_name, "service" | "pool" | "store")
        && let Some(s) = &raw.service
    {
        return Err(errors.at(Some(s.span()), "service", "a [service] table needs kind = \"service\""));
    }
    let command = |errors: &Errors, raw: Option<Spanned<RawCommand>>| {
        let Some(command) = raw else {
            return Err(errors.at(
                kind_span.clone(),
                "command",
                format!("kind = \"{kind_name}\" needs a [command] table with argv"),
            ));
        };
        let command = command.into_inner();
        if command.argv.get_ref().first().is_none_or(|p| p.is_empty()) {
            return Err(errors.at(Some(command.argv.span()), "command.argv", "must name a program to run"));
        }
        Ok((command.argv.into_inner(), command.env))
    };
    let mut spec = GangSpec::rigid(name.clone(), min, slot, &priority, &queue);
    spec.max = max;
    spec.max_attempts = max_attempts;
    if gang.spread == Some(true) {
        spec.constraints.placement = Placement::Spread;
    }
    let kind = match kind_name {
        "command" => {
            let (argv, env) = command(&errors, raw.command)?;
            JobKind::Command { argv, env }
        }
        "service" => {
            for (field, given) in [("gang.min", &gang.min), ("gang.max", &gang.max)] {
                if let Some(v) = given {
                    return Err(errors.at(
                        Some(v.span()),
                        field,
                        "a service sets its instance count in [service] instances, not in [gang]",
                    ));
                }
            }
            let Some(raw_service) = raw.service else {
                return Err(errors.at(kind_span, "service", "kind = \"service\" needs a [service] table"));
            };
            let service = service::parse(&errors, raw_service)?;
            let (argv, env) = command(&errors, raw.command)?;
            // Instances come and go one by one: the floor is one, the ceiling the count.
            spec.min = 1;
            spec.max = service.instances;
            spec.restart = Restart::Always;
            spec.slot = spec.slot.with_scalar(PORTS, service.ports.len() as u64);
            spec.constraints.one_slot_per_node = service.unique_nodes;
            JobKind::Service { argv, env, service }
        }
        "sql" => {
            if let Some(c) = &raw.command {
                return Err(errors.at(
                    Some(c.span()),
                    "command",
                    "a kind = \"sql\" job runs [sql] statements, not a command",
                ));
            }
            let Some(table) = raw.sql else {
                return Err(errors.at(kind_span, "sql", "kind = \"sql\" needs a [sql] table with statements"));
            };
            let statements = sql::parse(&errors, table)?;
            spec.restart = Restart::Leader;
            spec.slot = spec.slot.with_scalar(PORTS, 1);
            JobKind::Sql { statements }
        }
        "pool" | "store" => {
            let Some(raw_service) = raw.service else {
                let message = format!("kind = \"{kind_name}\" needs a [service] table");
                return Err(errors.at(kind_span, "service", message));
            };
            let service = sql::pool_service(&errors, raw_service)?;
            spec.min = 1;
            spec.max = service.instances;
            spec.restart = Restart::Always;
            spec.slot = spec.slot.with_scalar(PORTS, service.ports.len() as u64);
            spec.constraints.one_slot_per_node = service.unique_nodes;
            if kind_name == "pool" { JobKind::Pool { service } } else { JobKind::Store { service } }
        }
        other => {
            return Err(errors.at(
                kind_span,
                "kind",
                format!("unknown kind `{other}` (expected \"command\", \"service\" or \"sql\")"),
            ));
        }
    };
    Ok(JobSpec { name, kind, gang: spec })
}

/// A TOML or shape error, with the field it is about.
fn toml_error(errors: &Errors, text: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().trim().to_string();
    let key =
        message.split('`').nth(1).filter(|_| message.contains("unknown field") || message.contains("missing field"));
    let field = match (key, e.span()) {
        // On a table header, the span is the table (a field missing from
        // it) or the header's own name (an unknown table).
        (Some(key), Some(span)) => match (header_at(text, span.start), table_at(text, span.start)) {
            (Some(header), _) if message.contains("missing field") => format!("{header}.{key}"),
            (Some(header), _) => header,
            (None, Some(table)) => format!("{table}.{key}"),
            (None, None) => key.to_string(),
        },
        (Some(key), None) => key.to_string(),
        // A value of the wrong type: the span is the value, its key left of `=`.
        (None, Some(span)) => match (key_of_value_at(text, span.start), table_at(text, span.start)) {
            (Some(key), Some(table)) => format!("{table}.{key}"),
            (Some(key), None) => key,
            (None, _) => "spec".to_string(),
        },
        (None, None) => "spec".to_string(),
    };
    errors.at(e.span(), &field, message)
}

/// The key whose value starts at `offset` (`min` in `min = "4"`), if
/// that value is on the key's line.
fn key_of_value_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text.get(start..offset)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[') && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

/// Below this, a slot's hard limit kills its program, or the executor
/// that supervises it in the same cgroup (about 10 MiB), as it starts.
const MIN_SLOT_MEMORY: u64 = 16 << 20;

/// Longest job or queue name: tables and URLs stay readable.
const MAX_NAME_CHARS: usize = 128;

/// A job's or queue's name is one word a command line, a table row and a
/// URL take as it is.
fn check_name(name: &str) -> Result<(), String> {
    // Whitespace, controls, and the invisible ones (zero-width, BOM) that make two names look alike.
    let invisible = |c: &char| {
        c.is_whitespace() || c.is_control() || matches!(*c, '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}')
    };
    if let Some(c) = name.chars().find(invisible) {
        return Err(format!("contains {c:?}: names are one word, as commands and URLs take them"));
    }
    if name.starts_with('-') {
        return Err("starts with `-`, which commands read as a flag".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("is {} characters long; at most {MAX_NAME_CHARS}", name.chars().count()));
    }
    Ok(())
}

/// What a new submission must also satisfy, beyond what a spec stored by
/// an earlier version (and parsed again at every start) was held to.
pub fn check_new(file: &str, text: &str, spec: &JobSpec) -> Result<(), SpecError> {
    let at = |field: &str, message: &str| SpecError {
        file: file.to_string(),
        line: line_of_field(text, field),
        field: field.to_string(),
        message: message.to_string(),
    };
    if spec.name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(at(
            "name",
            "is a number, which commands read as a job id: give the job a name with a letter in it",
        ));
    }
    check_name(&spec.name).map_err(|m| at("name", &m))?;
    check_name(&spec.gang.queue).map_err(|m| at("queue", &m))?;
    let memory = spec.gang.slot.memory_bytes;
    let memory_field = if matches!(spec.kind, JobKind::Pipeline { .. }) { "parallelism.memory" } else { "gang.memory" };
    if memory == 0 {
        // The memory a slot asks for is its hard limit: zero would be no limit at all.
        return Err(at(memory_field, "must be more than 0: it is the slot's hard limit (e.g. \"256MiB\")"));
    }
    if memory < MIN_SLOT_MEMORY {
        let hint = if memory < 1 << 20 {
            // A bare number is bytes, as in Kubernetes; `memory = 64` meant MiB.
            format!("give a unit (e.g. \"{memory}MiB\")")
        } else {
            "a slot's memory also holds the executor that supervises it (about 10 MiB): give at least \"16MiB\"".into()
        };
        return Err(at(memory_field, &format!("is {memory} bytes, too little to start in: {hint}")));
    }
    if let JobKind::Pipeline { config, .. } = &spec.kind
        && config.group.trim().is_empty()
    {
        return Err(at(
            "source.kafka.group",
            "empty: name a consumer group, or leave it out to use the pipeline's name",
        ));
    }
    Ok(())
}

fn quantity(
    value: &Spanned<toml::Value>,
    parse: fn(&str) -> Result<u64, cohort_scheduler::resources::QuantityError>,
) -> Result<u64, String> {
    match value.get_ref() {
        toml::Value::String(s) => parse(s).map_err(|e| e.to_string()),
        toml::Value::Integer(i) if *i >= 0 => parse(&i.to_string()).map_err(|e| e.to_string()),
        toml::Value::Float(f) if *f >= 0.0 => parse(&f.to_string()).map_err(|e| e.to_string()),
        other => Err(format!("expected a quantity such as \"2\", \"500m\" or \"4GiB\", got {other}")),
    }
}

/// The line of a dotted field (`priority`, `source.kafka.topic`) in a spec,
/// for errors found after the spec parsed: by the scheduler (an unknown
/// priority class) or against the broker (a topic that does not exist).
/// Line 1 when the field is not written out, i.e. took its default.
pub fn line_of_field(text: &str, field: &str) -> usize {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return 1 };
    let mut item = doc.as_item();
    for key in field.split('.') {
        match item.as_table_like().and_then(|table| table.get(key)) {
            Some(next) => item = next,
            None => return 1,
        }
    }
    item.span().map_or(1, |span| line_of(text, span.start))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The `[table]` a byte offset of a TOML text falls under, if any.
/// The table whose header is on the line at `offset`, if that line is one.
fn header_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?.trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    (!inner.starts_with('[')).then(|| inner.trim().to_string())
}

fn table_at(text: &str, offset: usize) -> Option<String> {
    text[..offset.min(text.len())].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.strip_suffix(']')?;
        (!inner.starts_with('[')).then(|| inner.trim().to_string())
    })
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hello"
kind = "command"
priority = "batch"
max_attempts = 3

[gang]
min = 2
max = 4
cpu = "500m"
memory = "1GiB"

[command]
argv = ["sh", "-c", "echo slot $COHORT_SLOT of $COHORT_GANG_SIZE"]
"#;

    #[test]
    fn a_command_job() {
        let job = parse_job("job.toml", GOOD).unwrap();
        assert_eq!(job.name, "hello");
        assert_eq!((job.gang.min, job.gang.max, job.gang.max_attempts), (2, 4, 3));
        assert_eq!(job.gang.slot, Resources::new(500, 1 << 30).with_scalar(EXECUTORS, 1));
        assert!(matches!(job.kind, JobKind::Command { ref argv, .. } if argv[0] == "sh"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let bad = GOOD.replace("min = 2", "min = 0");
        let e = parse_job("job.toml", &bad).unwrap_err();
        assert_eq!(e.to_string(), "job.toml:8: gang.min: must be between 1 and 100000, got 0");
        let e = parse_job("job.toml", &GOOD.replace("memory = \"1GiB\"", "memory = \"lots\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (11, "gang.memory"));
        let e = parse_job("job.toml", &GOOD.replace("priority", "priorty")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "priorty"), "{e}");
        let e = parse_job("job.toml", &GOOD.replace("spread", "x").replace("max = 4", "maxx = 4")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (9, "gang.maxx"), "{e}");
        // A table the spec does not have, and a field missing from one that it does
        let e = parse_job("job.toml", &format!("{GOOD}\n[resources]\ncpu = 1\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (16, "resources"), "{e}");
        let e = parse_job("job.toml", &GOOD.replace("cpu = \"500m\"", "")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (7, "gang.cpu"), "{e}");
        let e = parse_job("job.toml", "name = \"x\"\n[gang\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = parse_job("job.toml", &GOOD.replace("kind = \"command\"", "kind = \"sql\"")).unwrap_err();
        assert_eq!(e.field, "command");
        // Memory 0 parses (a stored spec of an earlier version may have it) but is no new submission
        let zero = GOOD.replace("memory = \"1GiB\"", "memory = \"0\"");
        let e = check_new("job.toml", &zero, &parse_job("job.toml", &zero).unwrap()).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (11, "gang.memory"), "{e}");
        // A value of the wrong type names its key, in its table
        let e = parse_job("job.toml", &GOOD.replace("min = 2", "min = \"2\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (8, "gang.min"), "{e}");
        let e = parse_job("job.toml", &GOOD.replace("name = \"hello\"", "name = 5")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "name"), "{e}");
    }

    #[test]
    fn a_new_submission_is_refused_what_would_only_fail_later() {
        let refused = |from: &str, to: &str| {
            let text = GOOD.replace(from, to);
            check_new("job.toml", &text, &parse_job("job.toml", &text).unwrap()).unwrap_err()
        };
        // A bare number is bytes: 64 bytes would kill the program as it starts
        let e = refused("memory = \"1GiB\"", "memory = 64");
        assert_eq!((e.line, e.field.as_str()), (11, "gang.memory"), "{e}");
        assert!(e.message.contains("64 bytes") && e.message.contains("\"64MiB\""), "{e}");
        // A name of digits reads as an id; one with a space is no single word
        let e = refused("name = \"hello\"", "name = \"12\"");
        assert_eq!((e.line, e.field.as_str()), (2, "name"), "{e}");
        assert!(e.message.contains("job id"), "{e}");
        let e = refused("name = \"hello\"", "name = \"my job\"");
        assert_eq!(e.field, "name", "{e}");
        let e = refused("memory = \"1GiB\"", "memory = \"8MiB\"");
        assert!(e.message.contains("supervises it"), "{e}");
        for (bad, says) in [("--help", "flag"), ("a\u{200B}b", "one word")] {
            let e = refused("name = \"hello\"", &format!("name = \"{bad}\""));
            assert!(e.field == "name" && e.message.contains(says), "{e}");
        }
        let e = refused("name = \"hello\"", &format!("name = \"{}\"", "x".repeat(129)));
        assert!(e.message.contains("at most 128"), "{e}");
        let e = refused("priority = \"batch\"", "priority = \"batch\"\nqueue = \"q\\nx\"");
        assert_eq!(e.field, "queue", "{e}");
        // Still a valid spec: `12b` and "16MiB" pass
        let text = GOOD.replace("\"hello\"", "\"12b\"").replace("\"1GiB\"", "\"16MiB\"");
        check_new("job.toml", &text, &parse_job("job.toml", &text).unwrap()).unwrap();
        // A quantity beyond any machine is refused, not clamped
        let e = parse_job("job.toml", &GOOD.replace("\"1GiB\"", "\"99999999999999999999\"")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (11, "gang.memory"), "{e}");
        assert!(e.message.contains("more than any machine has"), "{e}");
    }

    #[test]
    fn fields_found_wrong_after_parsing_are_located_by_their_dotted_name() {
        assert_eq!(line_of_field(GOOD, "priority"), 4);
        assert_eq!(line_of_field(GOOD, "gang.memory"), 11);
        let inline = "name = \"p\"\nsource = { kafka = { topic = \"t\" } }\n";
        assert_eq!(line_of_field(inline, "source.kafka.topic"), 2);
        assert_eq!(line_of_field(GOOD, "queue"), 1, "a field left to its default");
        assert_eq!(line_of_field("not toml [", "priority"), 1);
    }
}
