//! Arrow Flight SQL on the coordinator's address: what pyarrow, ADBC and
//! JDBC clients speak. Statements and prepared statements are stateless:
//! a handle (and a ticket) carries the SQL and its bound parameters, so
//! any coordinator serves any ticket and nothing leaks when a client
//! forgets to close. A statement that changes something (DDL, COPY,
//! INSERT) runs when the client asks for its FlightInfo; its ticket then
//! carries the outcome. Metadata (catalogs, schemas, tables, table types,
//! SQL info) comes from DataFusion's catalog through arrow-flight's
//! builders, whose schemas clients check exactly.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use cohort_batch::{Error as SqlError, Statement};
use datafusion::common::metadata::ScalarAndMetadata;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::TableType;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use super::{Described, SqlFront, metadata};

/// `?` placeholders, as JDBC and ADBC users write them, numbered `$1`,
/// `$2`, ... in the order they appear (and `?3` as `$3`), which is how
/// DataFusion names parameters. A `?` in a string, a quoted name or a
/// comment is left alone; SQL that does not tokenize is returned as it is,
/// for the planner to report.
fn numbered_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::{dialect::GenericDialect, tokenizer::Token, tokenizer::Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return sql.to_string();
    };
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    // Locations count lines and characters from 1.
    let byte_at = |line: u64, column: u64| {
        let start = *line_starts.get(line.checked_sub(1)? as usize)?;
        sql[start..].char_indices().nth(column.checked_sub(1)? as usize).map(|(i, _)| start + i)
    };
    let (mut out, mut copied, mut next) = (String::with_capacity(sql.len() + 8), 0, 0);
    for token in tokens {
        let Token::Placeholder(name) = &token.token else { continue };
        let Some(digits) = name.strip_prefix('?') else { continue };
        let Some(at) = byte_at(token.span.start.line, token.span.start.column) else { return sql.to_string() };
        let number = if digits.is_empty() {
            next += 1;
            next.to_string()
        } else {
            digits.to_string()
        };
        out.push_str(&sql[copied..at]);
        out.push('$');
        out.push_str(&number);
        copied = at + name.len();
    }
    out.push_str(&sql[copied..]);
    out
}

/// At most this many rows of parameters go into one `INSERT` (one job, one file).
const ROWS_PER_INSERT: usize = 4096;

/// `INSERT ... VALUES (<one row of $1..$P>)` for `rows` rows of parameters
/// at once: the row repeated with its placeholders numbered on (`$P+1`..
/// `$2P` for the second, and so on), and P. So `executemany` writes one
/// job and one file per few thousand rows instead of one per row. `None`
/// for any other statement (it runs once per row), or where placeholders
/// are not all `$n` inside the one row.
fn insert_for_rows(sql: &str, rows: usize) -> Option<(String, usize)> {
    use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Statement as Ast, Value, visit_expressions_mut};
    use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser};

    if rows < 2 {
        return None;
    }
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    let [Ast::Insert(insert)] = statements.as_mut_slice() else { return None };
    let in_statement = placeholder_numbers(&*insert)?;
    let SetExpr::Values(values) = insert.source.as_mut()?.body.as_mut() else { return None };
    let [row] = values.rows.as_slice() else { return None };
    let in_row = placeholder_numbers(&row.content)?;
    let per_row = *in_row.iter().max()?;
    if in_row.len() != in_statement.len() {
        return None;
    }
    let row = row.clone();
    values.rows = (0..rows)
        .map(|i| {
            let mut copy = row.clone();
            let _ = visit_expressions_mut(&mut copy.content, |e| {
                if let Expr::Value(v) = e
                    && let Value::Placeholder(name) = &v.value
                    && let Some(n) = placeholder_number(name)
                {
                    v.value = Value::Placeholder(format!("${}", n + i * per_row));
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            copy
        })
        .collect();
    Some((statements[0].to_string(), per_row))
}

/// `n` of a placeholder `$n`.
fn placeholder_number(name: &str) -> Option<usize> {
    name.strip_prefix('$')?.parse().ok()
}

/// The numbers of the placeholders under `node`; `None` if one is not `$n`.
fn placeholder_numbers<V: datafusion::sql::sqlparser::ast::Visit>(node: &V) -> Option<Vec<usize>> {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions};

    let mut numbers = Vec::new();
    let flow = visit_expressions(node, |e| match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(name) => match placeholder_number(name) {
                Some(n) => {
                    numbers.push(n);
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Break(()),
            },
            _ => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    });
    flow.is_continue().then_some(numbers)
}

/// The service, ready for a tonic server.
pub fn service(front: Arc<SqlFront>) -> FlightServiceServer<FlightSql> {
    FlightServiceServer::new(FlightSql { front }).max_decoding_message_size(64 << 20)
}

pub struct FlightSql {
    front: Arc<SqlFront>,
}

/// What a statement handle or ticket carries.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Handle {
    sql: String,
    /// Bound parameters: one row, as an Arrow IPC stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<Vec<u8>>,
    /// The statement already ran (it changed something).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done: Option<Done>,
}

/// How a statement that already ran ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Done {
    /// Rows written, for a COPY or INSERT.
    count: Option<u64>,
}

impl Handle {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("plain data"))
    }

    fn decode(bytes: &[u8]) -> Result<Handle, Status> {
        serde_json::from_slice(bytes)
            .map_err(|e| Status::invalid_argument(format!("not a Cohort statement handle: {e}")))
    }

    fn param_values(&self) -> Result<Option<ParamValues>, Status> {
        let Some(ipc) = &self.params else { return Ok(None) };
        check_framing(ipc).map_err(|e| Status::invalid_argument(format!("bad parameters: {e}")))?;
        // arrow-ipc panics on some malformed streams (unchecked flatbuffer
        // fields); a client's bytes must not take the front door down.
        let read = std::panic::catch_unwind(|| {
            let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.as_slice()), None)?;
            reader.collect::<Result<Vec<RecordBatch>, _>>()
        });
        let batches = match read {
            Ok(Ok(batches)) => batches,
            Ok(Err(e)) => return Err(Status::invalid_argument(format!("bad parameters: {e}"))),
            Err(_) => return Err(Status::invalid_argument("bad parameters: a malformed Arrow IPC stream")),
        };
        params_from(&batches).map(Some)
    }
}

/// Checks an Arrow IPC stream's framing before arrow-ipc reads it: every
/// message's metadata is a valid flatbuffer and every body it announces
/// is within the bytes received, uncompressed. arrow-ipc allocates a
/// message's announced body length up front, so one flipped bit in a
/// length would otherwise ask for petabytes and abort the process.
fn check_framing(mut bytes: &[u8]) -> Result<(), String> {
    let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if bytes.len() < n {
            return Err("the stream ends inside a message".into());
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head.to_vec())
    };
    while !bytes.is_empty() {
        let mut word = i32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
        if word == -1 {
            word = i32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
        }
        if word == 0 {
            return Ok(());
        }
        let meta_len = usize::try_from(word).map_err(|_| "a negative metadata length".to_string())?;
        let meta = take(&mut bytes, meta_len)?;
        let message = arrow::ipc::root_as_message(&meta).map_err(|e| format!("a malformed message: {e}"))?;
        let compressed = message.header_as_record_batch().is_some_and(|b| b.compression().is_some())
            || message.header_as_dictionary_batch().and_then(|d| d.data()).is_some_and(|b| b.compression().is_some());
        if compressed {
            return Err("compressed parameter streams are not accepted".into());
        }
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative body length".to_string())?;
        if body > bytes.len() {
            return Err(format!("a message announces {body} body bytes, but {} remain", bytes.len()));
        }
        bytes = &bytes[body..];
    }
    Ok(())
}

/// The parameter rows a client sent with a DoPut.
async fn parameter_batches(request: Request<PeekableFlightDataStream>) -> Result<Vec<RecordBatch>, Status> {
    // The peeked first message is the parameters' schema: keep it.
    let data = request.into_inner().into_peekable().map_err(FlightError::from);
    FlightRecordBatchStream::new_from_flight_data(data)
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the parameters: {e}")))
}

/// Batches as one Arrow IPC stream, as a handle carries its parameters.
fn ipc_stream(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Status> {
    let mut ipc = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, schema).map_err(internal)?;
    for b in batches {
        writer.write(b).map_err(internal)?;
    }
    writer.finish().map_err(internal)?;
    drop(writer);
    Ok(ipc)
}

/// One row of parameters, by position (`$1`, `$2`, ... or `?`) or name.
fn params_from(batches: &[RecordBatch]) -> Result<ParamValues, Status> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows != 1 {
        return Err(Status::invalid_argument(format!(
            "bind one row of parameters at a time, got {rows}; run the statement once per row"
        )));
    }
    let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
    let values: Vec<(String, ScalarValue)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| ScalarValue::try_from_array(c, 0).map(|v| (f.name().clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
    Ok(if binds_by_position(&batch.schema()) {
        ParamValues::from(values.into_iter().map(|(_, v)| v).collect::<Vec<_>>())
    } else {
        ParamValues::from(
            values.into_iter().map(|(k, v)| (k.trim_start_matches('$').to_string(), v)).collect::<Vec<_>>(),
        )
    })
}

/// Clients name positional parameters `$1`, `1`, `0` or nothing; only
/// names that are all words bind by name.
fn binds_by_position(parameters: &Schema) -> bool {
    parameters.fields().iter().any(|f| f.name().is_empty() || f.name().trim_start_matches('$').parse::<usize>().is_ok())
}

/// The schema clients see: view types (DataFusion's internal string and
/// binary layout) as plain `Utf8`/`Binary`, which every Flight SQL client
/// reads, and whose slices carry only their own bytes.
fn client_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            DataType::BinaryView => f.as_ref().clone().with_data_type(DataType::Binary),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A batch in the schema clients were promised.
fn to_client(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, FlightError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(c, f)| {
                if c.data_type() == f.data_type() { Ok(c.clone()) } else { arrow::compute::cast(c, f.data_type()) }
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns).or_else(|_| {
        // Only nullability differs from the plan: keep the batch's own.
        RecordBatch::try_new(batch.schema(), batch.columns().to_vec())
    })?)
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]))
}

/// The options Cohort reads from a bulk ingest: (from pipelines) where
/// the rows came from, and the columns a new table upserts by
/// (comma-separated).
pub const INGEST_SOURCE: &str = "cohort.source";
pub const INGEST_OFFSETS: &str = "cohort.offsets";
pub const INGEST_KEY: &str = "cohort.key";

/// What an ingest asks for, less its rows.
type IngestOptions = (cohort_batch::live::IngestMode, Option<cohort_batch::live::SourceOffsets>, Option<Vec<String>>);

fn ingest_of(command: &CommandStatementIngest) -> Result<IngestOptions, Status> {
    use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
    use cohort_batch::live::{IfExists, IngestMode, SourceOffsets};
    if command.table.is_empty() {
        return Err(Status::invalid_argument("an ingest names its table"));
    }
    if command.transaction_id.is_some() {
        return Err(Status::invalid_argument("ingest inside a transaction is not supported"));
    }
    let options = command.table_definition_options.unwrap_or_default();
    let create = !matches!(TableNotExistOption::try_from(options.if_not_exist), Ok(TableNotExistOption::Fail));
    let if_exists = match TableExistsOption::try_from(options.if_exists) {
        Ok(TableExistsOption::Fail) => IfExists::Fail,
        Ok(TableExistsOption::Replace) => IfExists::Replace,
        _ => IfExists::Append,
    };
    let from = match (command.options.get(INGEST_SOURCE), command.options.get(INGEST_OFFSETS)) {
        (Some(source), Some(offsets)) => Some(SourceOffsets {
            source: source.clone(),
            ranges: serde_json::from_str(offsets).map_err(|e| {
                Status::invalid_argument(format!(
                    "option {INGEST_OFFSETS}: not a map of partition to [first, next]: {e}"
                ))
            })?,
        }),
        (None, None) => None,
        _ => return Err(Status::invalid_argument(format!("options {INGEST_SOURCE} and {INGEST_OFFSETS} go together"))),
    };
    let key = command.options.get(INGEST_KEY).map(|key| key.split(',').map(|c| c.trim().to_string()).collect());
    Ok((IngestMode { create, if_exists }, from, key))
}

/// The gRPC status for a SQL error: the client's mistake is
/// InvalidArgument or NotFound with DataFusion's own words.
pub fn status_of(e: &SqlError) -> Status {
    let message = e.to_string();
    match e {
        SqlError::Invalid(_) => Status::invalid_argument(message),
        SqlError::NoWorkers(_) | SqlError::WorkersLost { .. } | SqlError::Unavailable(_) => {
            Status::unavailable(message)
        }
        SqlError::Io { .. } | SqlError::Transport(_) => Status::internal(message),
        SqlError::DataFusion(df) => status_of_datafusion(df, message),
    }
}

fn status_of_datafusion(e: &DataFusionError, message: String) -> Status {
    let lower = message.to_lowercase();
    let missing = lower.contains("not found") || lower.contains("no such file") || lower.contains("doesn't exist");
    match e.find_root() {
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) if missing => Status::not_found(message),
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::Execution(_) if missing => {
            Status::not_found(message)
        }
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::ArrowError(..)
        | DataFusionError::Execution(_) => Status::invalid_argument(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        _ if missing => Status::not_found(message),
        _ => Status::internal(message),
    }
}

fn st(e: SqlError) -> Status {
    status_of(&e)
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn ipc_schema(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(internal)?;
    Ok(bytes)
}

fn flight_info(schema: &Schema, ticket: Bytes, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

fn batches_stream(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> Response<DoGetStream> {
    let encoded = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
    Response::new(Box::pin(encoded))
}

fn one_batch(batch: Result<RecordBatch, FlightError>, schema: SchemaRef) -> Response<DoGetStream> {
    batches_stream(schema, futures::stream::once(async move { batch }))
}

/// DataFusion's table types under the names SQL tools expect.
fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

impl FlightSql {
    /// FlightInfo for a statement: a query is planned (its schema told),
    /// anything else runs now.
    async fn info_for(&self, handle: Handle, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
        let params = handle.param_values()?;
        match self.front.describe(&handle.sql, params.clone()).await.map_err(st)? {
            Described::Query(schema) => {
                let ticket = TicketStatementQuery { statement_handle: handle.encode() }.as_any().encode_to_vec();
                flight_info(&client_schema(&schema), ticket.into(), descriptor)
            }
            Described::Effect(statement) => {
                let count = self.front.execute(&handle.sql, statement, params).await.map_err(st)?;
                let schema = if count.is_some() { count_schema() } else { Arc::new(Schema::empty()) };
                let done = Handle { sql: handle.sql, params: None, done: Some(Done { count }) };
                let ticket = TicketStatementQuery { statement_handle: done.encode() }.as_any().encode_to_vec();
                flight_info(&schema, ticket.into(), descriptor)
            }
        }
    }

    async fn update(&self, handle: Handle) -> Result<i64, Status> {
        self.update_with(&handle.sql, handle.param_values()?).await
    }

    /// `sql`, an `INSERT` of one row of `per_row` placeholders, for all
    /// the rows `values` hold, as one statement.
    async fn insert_rows(&self, sql: &str, per_row: usize, values: Vec<ScalarAndMetadata>) -> Result<i64, Status> {
        let sql = match insert_for_rows(sql, values.len() / per_row) {
            Some((sql, _)) => sql,
            None => sql.to_string(),
        };
        self.update_with(&sql, Some(ParamValues::List(values))).await
    }

    async fn update_with(&self, sql: &str, params: Option<ParamValues>) -> Result<i64, Status> {
        match self.front.describe(sql, params.clone()).await.map_err(st)? {
            Described::Effect(statement) => {
                Ok(self.front.execute(sql, statement, params).await.map_err(st)?.unwrap_or(0) as i64)
            }
            Described::Query(_) => {
                Err(Status::invalid_argument("this statement is a query: run it as one to read its rows"))
            }
        }
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: arrow_flight::sql::server::DoPutError,
    ) -> Result<Response<<Self as arrow_flight::flight_service_server::FlightService>::DoPutStream>, Status> {
        use arrow_flight::sql::server::DoPutError;
        Err(match error {
            // ADBC sends nothing at all for an ingest of no rows.
            DoPutError::MissingCommand => Status::invalid_argument(
                "the upload is empty: it names no statement nor table (an ingest of 0 rows sends nothing; skip it)",
            ),
            DoPutError::MissingFlightDescriptor => {
                Status::invalid_argument("the upload's first message has no descriptor naming its statement or table")
            }
        })
    }

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        // The auth layer checked the credentials (Basic, password = token);
        // the client uses the token as its bearer from now on.
        let token = request
            .extensions()
            .get::<crate::coordinator::api::auth::Presented>()
            .map(|p| p.0.clone())
            .ok_or_else(|| Status::unauthenticated(crate::coordinator::core::auth::HOW_TO_GET_A_TOKEN))?;
        let bearer = tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
        let answer = HandshakeResponse { protocol_version: 0, payload: Bytes::from(token.into_bytes()) };
        let mut response: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.info_for(Handle { sql: query.query, ..Default::default() }, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.info_for(Handle::decode(&cmd.prepared_statement_handle)?, request.into_inner()).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle = Handle::decode(&ticket.statement_handle)?;
        match handle.done.map(|d| d.count) {
            Some(Some(count)) => {
                let schema = count_schema();
                let column: ArrayRef = Arc::new(UInt64Array::from(vec![count]));
                let batch = RecordBatch::try_new(schema.clone(), vec![column]).map_err(FlightError::from);
                return Ok(one_batch(batch, schema));
            }
            Some(None) => return Ok(batches_stream(Arc::new(Schema::empty()), futures::stream::empty())),
            None => {}
        }
        let params = handle.param_values()?;
        let schema = match self.front.describe(&handle.sql, params.clone()).await.map_err(st)? {
            Described::Query(schema) => client_schema(&schema),
            Described::Effect(_) => return Err(Status::invalid_argument("ask for this statement's FlightInfo first")),
        };
        let outcome = self.front.query(&handle.sql, params).await.map_err(st)?;
        // Send the schema FlightInfo advertised (clients compare the two).
        let target = schema.clone();
        let batches = outcome.stream.map(move |batch| {
            to_client(batch.map_err(|e| FlightError::from(status_of_datafusion(&e, e.to_string())))?, &target)
        });
        Ok(batches_stream(schema, batches))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let ticket = TicketStatementQuery { statement_handle: query.prepared_statement_handle };
        self.do_get_statement(ticket, request).await
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.update(Handle { sql: command.query, ..Default::default() }).await
    }

    /// Runs the statement for each row of parameters the client sent with
    /// it (ADBC's `executemany`, JDBC's batches): an `INSERT ... VALUES` of
    /// one row as one multi-row `INSERT` per `ROWS_PER_INSERT` rows, any
    /// other once per row; or once with the parameters bound before (or
    /// none). Answers the rows changed in all.
    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let handle = Handle::decode(&query.prepared_statement_handle)?;
        let batches = parameter_batches(request).await?;
        if batches.iter().all(|b| b.num_rows() == 0) {
            return self.update(handle).await;
        }
        let mut changed = 0;
        let batched = batches.first().filter(|b| binds_by_position(&b.schema())).is_some_and(|first| {
            let columns = first.num_columns();
            let rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            insert_for_rows(&handle.sql, rows.min(ROWS_PER_INSERT))
                .is_some_and(|(_, per_row)| per_row == columns && batches.iter().all(|b| b.num_columns() == columns))
        });
        if batched {
            // Each row's values fitted to the statement's types (so a bad one
            // is named by its row), then a few thousand rows to a statement.
            let plan = self.front.engine().plan(&handle.sql, None).await.map_err(st)?;
            let (mut values, mut numbered) = (Vec::new(), 0);
            for batch in &batches {
                for row in 0..batch.num_rows() {
                    numbered += 1;
                    let row_values = batch
                        .columns()
                        .iter()
                        .map(|column| ScalarValue::try_from_array(column, row))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Status::invalid_argument(format!("row {numbered}: bad parameter value: {e}")))?;
                    let ParamValues::List(fitted) = cohort_batch::fit_parameters(&plan, ParamValues::from(row_values))
                        .map_err(|e| Status::invalid_argument(format!("row {numbered}: {e}")))?
                    else {
                        unreachable!("a list stays a list")
                    };
                    values.extend(fitted);
                    if values.len() == ROWS_PER_INSERT * batch.num_columns() {
                        changed +=
                            self.insert_rows(&handle.sql, batch.num_columns(), std::mem::take(&mut values)).await?;
                    }
                }
            }
            if let Some(first) = batches.first().filter(|_| !values.is_empty()) {
                changed += self.insert_rows(&handle.sql, first.num_columns(), values).await?;
            }
            return Ok(changed);
        }
        for batch in &batches {
            for row in 0..batch.num_rows() {
                let params = Some(ipc_stream(&batch.schema(), &[batch.slice(row, 1)])?);
                changed += self.update(Handle { sql: handle.sql.clone(), params, done: None }).await?;
            }
        }
        Ok(changed)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let handle = Handle { sql: numbered_placeholders(&query.query), ..Default::default() };
        let (dataset, parameters) = match cohort_batch::classify(&handle.sql).map_err(st)? {
            Statement::Query => {
                let plan = self.front.engine().plan(&handle.sql, None).await.map_err(st)?;
                let mut params: Vec<(String, Option<DataType>)> =
                    plan.get_parameter_types().map_err(|e| st(e.into()))?.into_iter().collect();
                params.sort_by_key(|(name, _)| {
                    (name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX), name.clone())
                });
                let fields: Vec<Field> =
                    params.into_iter().map(|(name, t)| Field::new(name, t.unwrap_or(DataType::Utf8), true)).collect();
                (client_schema(plan.schema().as_arrow()).as_ref().clone(), Schema::new(fields))
            }
            _ => (Schema::empty(), Schema::empty()),
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode(),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: ipc_schema(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = Handle::decode(&query.prepared_statement_handle)?;
        let batches = parameter_batches(request).await?;
        params_from(&batches)?;
        let schema = batches.first().map(RecordBatch::schema).unwrap_or_else(|| Arc::new(Schema::empty()));
        handle.params = Some(ipc_stream(&schema, &batches)?);
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.encode()) })
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (mode, from, key) = ingest_of(&command)?;
        let data = request.into_inner().into_peekable().map_err(FlightError::from);
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let mut batches = Vec::new();
        while let Some(batch) =
            decoded.try_next().await.map_err(|e| Status::invalid_argument(format!("cannot read the rows: {e}")))?
        {
            batches.push(batch);
        }
        let schema =
            decoded.schema().cloned().ok_or_else(|| Status::invalid_argument("an ingest carries its rows' schema"))?;
        let ingest = cohort_batch::live::Ingest { mode, schema, batches, from, key };
        let appended = self.front.ingest(&command.table, ingest).await.map_err(|e| status_of(&e))?;
        Ok(appended.rows as i64)
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free.
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.into_builder().schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.front.engine().context().catalog_names() {
            builder.append(catalog);
        }
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.clone().into_builder().schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.front.engine().context();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            for schema in catalog.schema_names() {
                builder.append(&catalog_name, schema);
            }
        }
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.clone().into_builder().schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.front.engine().context();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else { continue };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type_name(table.table_type()),
                            client_schema(table.schema().as_ref()).as_ref(),
                        )
                        .map_err(internal)?;
                }
            }
        }
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&query.into_builder().schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for t in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(t);
        }
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(
            &query.clone().into_builder(&metadata::SQL_INFO).schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&metadata::SQL_INFO);
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(
            &query.into_builder(&metadata::XDBC_TYPES).schema(),
            query.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&metadata::XDBC_TYPES);
        let schema = builder.schema();
        Ok(one_batch(builder.build(), schema))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&metadata::primary_keys_schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let ctx = self.front.engine().context();
        let keys = metadata::primary_keys(ctx, query.catalog.as_deref(), query.db_schema.as_deref(), &query.table)
            .await
            .map_err(FlightError::from);
        Ok(one_batch(keys, metadata::primary_keys_schema()))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&metadata::foreign_keys_schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&metadata::foreign_keys_schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        flight_info(&metadata::foreign_keys_schema(), query.as_any().encode_to_vec().into(), request.into_inner())
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(no_foreign_keys())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Cohort's tables reference none other: every foreign-key request is answered with no rows.
fn no_foreign_keys() -> Response<DoGetStream> {
    let schema = metadata::foreign_keys_schema();
    one_batch(Ok(RecordBatch::new_empty(schema.clone())), schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_parameters_bind_by_position() {
        for done in [Some(Done { count: Some(3) }), Some(Done { count: None }), None] {
            let handle = Handle { sql: "SELECT $1".into(), params: None, done };
            let back = Handle::decode(&handle.encode()).unwrap();
            assert_eq!((back.sql.as_str(), back.done), ("SELECT $1", done));
        }
        assert_eq!(Handle::decode(b"garbage").unwrap_err().code(), tonic::Code::InvalidArgument);

        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(arrow::array::Int64Array::from(vec![7]))]).unwrap();
        let ParamValues::List(values) = params_from(std::slice::from_ref(&batch)).unwrap() else {
            panic!("positional")
        };
        assert_eq!(values.len(), 1);
        let two = arrow::compute::concat_batches(&batch.schema(), &[batch.clone(), batch]).unwrap();
        assert!(params_from(&[two]).unwrap_err().message().contains("one row"));
    }

    #[test]
    fn the_clients_mistakes_are_not_internal_errors() {
        let code = |e: DataFusionError| status_of_datafusion(&e, e.to_string()).code();
        let divide = DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::DivideByZero), None);
        assert_eq!(code(divide), tonic::Code::InvalidArgument);
        assert_eq!(code(DataFusionError::Execution("Table 'nope' doesn't exist.".into())), tonic::Code::NotFound);
        assert_eq!(code(DataFusionError::Plan("table 'x' not found".into())), tonic::Code::NotFound);
        assert_eq!(code(DataFusionError::Internal("a bug".into())), tonic::Code::Internal);
    }

    /// A valid parameter stream, then prefixes and bit flips of it.
    fn params_ipc() -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, true)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::StringArray::from(vec!["x"]))]).unwrap();
        let mut out = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Tickets and handles come from clients: any bytes get an error, never a panic.
        #[test]
        fn arbitrary_handles_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(handle) = Handle::decode(&bytes) {
                let _ = handle.param_values();
            }
        }

        /// Damaged parameter streams get an error, never a panic.
        #[test]
        fn damaged_parameters_never_panic(cut in 0usize..400, flips in proptest::collection::vec((0usize..400, 0u8..8), 0..4)) {
            let mut ipc = params_ipc();
            ipc.truncate(cut.max(1).min(ipc.len()));
            for (at, bit) in flips {
                let len = ipc.len();
                ipc[at % len] ^= 1 << bit;
            }
            let handle = Handle { sql: "SELECT $1".into(), params: Some(ipc), done: None };
            let _ = Handle::decode(&handle.encode()).unwrap().param_values();
        }
    }

    #[test]
    fn question_marks_are_numbered_as_datafusion_names_parameters() {
        assert_eq!(
            numbered_placeholders("SELECT * FROM t WHERE a = ? AND b IN (?, ?) LIMIT ?"),
            "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3) LIMIT $4"
        );
        assert_eq!(
            numbered_placeholders("SELECT 'é?', \"c?\", ? -- why?\nFROM t WHERE x = ?"),
            "SELECT 'é?', \"c?\", $1 -- why?\nFROM t WHERE x = $2",
            "strings, quoted names and comments keep theirs, also after a multi-byte character"
        );
        assert_eq!(numbered_placeholders("SELECT ?2, ?1"), "SELECT $2, $1");
        assert_eq!(numbered_placeholders("SELECT $1"), "SELECT $1");
        assert_eq!(numbered_placeholders("SELECT 'unterminated ?"), "SELECT 'unterminated ?");
    }

    #[test]
    fn an_insert_of_one_row_of_parameters_takes_many_rows_at_once() {
        assert_eq!(
            insert_for_rows("INSERT INTO t VALUES ($1, $2 + 1)", 3),
            Some(("INSERT INTO t VALUES ($1, $2 + 1), ($3, $4 + 1), ($5, $6 + 1)".to_string(), 2))
        );
        assert_eq!(
            insert_for_rows("insert into t (b, a) values ($2, $1)", 2),
            Some(("INSERT INTO t (b, a) VALUES ($2, $1), ($4, $3)".to_string(), 2))
        );
        // Run once per row instead: placeholders outside the row, named
        // ones, a query as the source, two rows already, other statements
        for sql in [
            "INSERT INTO t SELECT $1",
            "INSERT INTO t VALUES ($1), ($2)",
            "INSERT INTO t VALUES ($a)",
            "INSERT INTO t VALUES (1)",
            "DELETE FROM t WHERE a = $1",
            "INSERT INTO t VALUES ($1); INSERT INTO u VALUES ($1)",
            "not sql",
        ] {
            assert_eq!(insert_for_rows(sql, 2), None, "{sql}");
        }
        assert_eq!(insert_for_rows("INSERT INTO t VALUES ($1)", 1), None, "one row needs no rewriting");
    }

    #[test]
    fn a_missing_table_is_not_found_and_bad_sql_invalid() {
        let missing = SqlError::DataFusion(DataFusionError::Plan("table 'datafusion.public.nope' not found".into()));
        assert_eq!(status_of(&missing).code(), tonic::Code::NotFound);
        assert!(status_of(&missing).message().contains("nope"));
        let bad = SqlError::Invalid("expected one statement".into());
        assert_eq!(status_of(&bad).code(), tonic::Code::InvalidArgument);
    }
}
