//! `cohort sql`: SQL over Flight SQL, the protocol any other client uses.
//! A REPL (history in the data directory, statements may span lines and
//! end with `;`), or `-e SQL` / `-f FILE` for scripts. Results print as
//! tables with their row count and time, or as JSON or CSV.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::record_batch::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

use super::client::Output;

#[derive(clap::Args)]
pub struct Args {
    /// Run these statements and exit.
    #[arg(short = 'e', long = "execute", conflicts_with = "file")]
    execute: Option<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

impl Args {
    pub fn execute(sql: &str) -> Args {
        Args { execute: Some(sql.to_string()), file: None }
    }
}

/// What `cohort cache` shows.
pub const CACHE_LISTING: &str = "SELECT table_name, state, partitions, stores, rows, bytes, hits, cached_at, last_used \
     FROM cohort.cache ORDER BY table_name";

pub async fn run(coordinator: &str, args: Args, output: Output) -> Result<()> {
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut session = Session::connect(coordinator).await?;
    match script {
        Some(script) => {
            let statements = cohort_batch::split_statements(&script)?;
            for (i, sql) in statements.iter().enumerate() {
                if let Err(e) = session.run(sql, output).await {
                    let file = args.file.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default();
                    let which = if statements.len() > 1 { format!("statement {}: ", i + 1) } else { String::new() };
                    bail!("{file}{which}{e}");
                }
            }
            Ok(())
        }
        None => repl(&mut session, output).await,
    }
}

pub(crate) struct Session {
    client: FlightSqlServiceClient<Channel>,
}

impl Session {
    pub(crate) async fn connect(coordinator: &str) -> Result<Session> {
        // No overall timeout: a long query streams for as long as it runs.
        let channel = super::config::endpoint(coordinator)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .with_context(|| {
                format!("cannot reach the coordinator at {coordinator} (is `cohort up` running? set --coordinator or COHORT_COORDINATOR)")
            })?;
        let inner =
            arrow_flight::flight_service_client::FlightServiceClient::new(channel).max_decoding_message_size(256 << 20);
        let mut client = FlightSqlServiceClient::new_from_inner(inner);
        if let Some(token) = super::config::token() {
            client.set_token(token);
        }
        Ok(Session { client })
    }

    /// Runs one statement and prints its outcome.
    async fn run(&mut self, sql: &str, output: Output) -> Result<()> {
        let started = Instant::now();
        let (schema, batches) = self.query(sql).await?;
        let elapsed = started.elapsed();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        match output {
            Output::Table => {
                if schema.fields().is_empty() {
                    println!("OK ({:.3} s)", elapsed.as_secs_f64());
                } else {
                    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
                    let noun = if rows == 1 { "row" } else { "rows" };
                    println!("{rows} {noun} in {:.3} s", elapsed.as_secs_f64());
                }
            }
            Output::Json => {
                let mut writer = arrow::json::ArrayWriter::new(Vec::new());
                for b in &batches {
                    writer.write(b)?;
                }
                writer.finish()?;
                let text = writer.into_inner();
                println!("{}", if text.is_empty() { "[]" } else { std::str::from_utf8(&text)? });
            }
            Output::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(std::io::stdout());
                for b in &batches {
                    writer.write(b)?;
                }
            }
        }
        Ok(())
    }

    /// Appends `batches` to live table `table` (made if missing) by Flight
    /// SQL bulk ingest, upserting by `key` if given; the rows it took.
    pub(crate) async fn ingest(&mut self, table: &str, batches: Vec<RecordBatch>, key: Option<&str>) -> Result<i64> {
        use arrow_flight::sql::{
            CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
        };
        let command = CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: TableNotExistOption::Create.into(),
                if_exists: TableExistsOption::Append.into(),
            }),
            table: table.to_string(),
            schema: None,
            catalog: None,
            temporary: false,
            transaction_id: None,
            options: key
                .map(|k| [(crate::coordinator::sql::flight::INGEST_KEY.to_string(), k.to_string())].into())
                .unwrap_or_default(),
        };
        let rows = futures::stream::iter(batches.into_iter().map(Ok));
        self.client.execute_ingest(command, rows).await.map_err(readable)
    }

    /// Runs one statement over Flight SQL: its schema and every batch.
    pub(crate) async fn query(&mut self, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
        let info = self.client.execute(sql.to_string(), None).await.map_err(readable)?;
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::try_from(info.clone())?);
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let Some(ticket) = endpoint.ticket else { bail!("the server sent an endpoint without a ticket") };
            let mut stream = self.client.do_get(ticket).await.map_err(readable)?;
            while let Some(batch) = stream.try_next().await.map_err(readable)? {
                batches.push(batch);
            }
        }
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema.clone()));
        }
        Ok((schema, batches))
    }
}

/// The server's own words, without gRPC's wrapping; a connection cut
/// mid-statement (the coordinator stopped or restarted) said as such,
/// where gRPC would only say `h2 protocol error`.
fn readable(e: FlightError) -> anyhow::Error {
    match e {
        FlightError::Tonic(status) if connection_broke(&status) => anyhow::anyhow!(
            "the connection to the coordinator broke before the statement finished ({}): it stopped or restarted; \
             a query can be run again once it is up, a write may or may not have been applied",
            status.message()
        ),
        FlightError::Tonic(status) => anyhow::anyhow!("{}", status.message()),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Whether the transport failed under a statement, rather than the
/// coordinator answering with an error of its own.
fn connection_broke(status: &tonic::Status) -> bool {
    let message = status.message();
    message.starts_with("h2 protocol error") || message.starts_with("transport error")
}

fn history_path() -> PathBuf {
    crate::up::default_data_dir().join("sql_history")
}

/// The REPL; with SQL piped in (`cohort sql < file.sql`) the same loop
/// reads it as psql does: no banner on stdout (it would land in the
/// output), a last statement without `;` still runs, and the status says
/// whether every statement succeeded.
async fn repl(session: &mut Session, output: Output) -> Result<()> {
    use std::io::IsTerminal;
    let interactive = std::io::stdin().is_terminal();
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = history_path();
    let _ = editor.load_history(&history);
    if interactive {
        println!("Connected. End statements with `;`; \\d lists tables, \\d NAME describes one, \\q quits.");
    }
    let mut failed = 0;
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "cohort> " } else { "     -> " };
        let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            // Its source is the same I/O error: not chained, said once.
            Err(e) => bail!("cannot read SQL from standard input: {e}"),
        };
        let trimmed = line.trim();
        if buffer.is_empty() {
            let command = match trimmed {
                "\\q" | "quit" | "exit" => break,
                "\\d" => Some("SHOW TABLES".to_string()),
                _ => trimmed.strip_prefix("\\d ").map(|t| format!("DESCRIBE {}", t.trim())),
            };
            if let Some(sql) = command {
                let _ = editor.add_history_entry(trimmed);
                if let Err(e) = session.run(&sql, output).await {
                    eprintln!("error: {e}");
                    failed += 1;
                }
                continue;
            }
            if trimmed.is_empty() {
                continue;
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let text = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(text.trim());
        failed += run_all(session, &text, output).await;
    }
    if !interactive && !buffer.trim().is_empty() {
        failed += run_all(session, &buffer, output).await;
    }
    if interactive {
        if let Some(dir) = history.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(&history);
    }
    if !interactive && failed > 0 {
        bail!("{failed} statement(s) failed");
    }
    Ok(())
}

/// Runs the statements of `text` until one fails; how many failed (0 or 1).
async fn run_all(session: &mut Session, text: &str, output: Output) -> usize {
    let statements = match cohort_batch::split_statements(text) {
        Ok(statements) => statements,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for sql in statements {
        if let Err(e) = session.run(&sql, output).await {
            eprintln!("error: {e}");
            return 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_cut_under_a_statement_is_named_and_the_servers_own_errors_pass_unchanged() {
        let cut = readable(FlightError::Tonic(Box::new(tonic::Status::unknown(
            "h2 protocol error: error reading a body from connection",
        ))))
        .to_string();
        assert!(cut.starts_with("the connection to the coordinator broke"), "{cut}");
        assert!(cut.contains("error reading a body"), "the transport's words stay: {cut}");

        let refused = "no batch executor is ready: the pool could not start (2 nodes are down)";
        let own = readable(FlightError::Tonic(Box::new(tonic::Status::unavailable(refused)))).to_string();
        assert_eq!(own, refused);
    }
}
