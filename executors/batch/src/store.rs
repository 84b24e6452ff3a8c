//! A store executor: partitions of cached tables held in memory as Arrow
//! record batches, served over Arrow Flight. The coordinator puts a
//! partition with `DoPut` (its descriptor names it), readers take it with
//! `DoGet` (a ticket naming it and the columns wanted), and `DoAction`
//! `drop` forgets a table. A store never holds more than its budget (its
//! slot's memory, which the scheduler accounted for): a put beyond it is
//! refused, not half-kept.
//!
//! The client side ([`put`], [`get`], [`drop_table`]) is what the driver
//! and the scan of a cached table ([`crate::cached`]) call.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::error::DataFusionError;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

/// One partition of one version of a cached table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartId {
    pub table: String,
    /// Each CACHE TABLE makes a new version, so a reader never mixes two.
    pub version: u64,
    pub partition: u32,
}

#[derive(Serialize, Deserialize)]
struct GetTicket {
    part: PartId,
    projection: Option<Vec<usize>>,
}

#[derive(Serialize, Deserialize)]
struct DropBody {
    table: String,
    /// Only these partitions of this version (else: every one of the table).
    #[serde(default)]
    only: Option<(u64, Vec<u32>)>,
}

#[derive(Serialize, Deserialize)]
struct HoldsBody {
    table: String,
    version: u64,
}

/// What a store may use.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub listen: SocketAddr,
    /// Bytes of batches it holds at most.
    pub budget_bytes: usize,
    /// In a cluster: TLS, peers' certificates required.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Where partitions are kept as files in shared memory, for readers on
    /// this host ([`crate::shm`]); none: in this process's memory only.
    pub shm_dir: Option<std::path::PathBuf>,
}

struct Held {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Its file in shared memory, if it has one.
    path: Option<std::path::PathBuf>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Readers that mapped it keep their mapping.
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Clone)]
struct Store {
    parts: Arc<Mutex<HashMap<PartId, Arc<Held>>>>,
    /// Bytes of puts being written.
    reserved: Arc<Mutex<usize>>,
    budget: usize,
    shm_dir: Option<std::path::PathBuf>,
}

/// Serves a store until `shutdown` resolves.
pub async fn serve_store(settings: StoreSettings, shutdown: impl Future<Output = ()>) -> crate::Result<()> {
    let removed = crate::shm::remove_abandoned();
    if !removed.is_empty() {
        tracing::info!(?removed, "removed the shared memory of stores that ended without cleaning up");
    }
    let _owned = match &settings.shm_dir {
        Some(dir) => Some(crate::shm::create_dir(dir)?),
        None => None,
    };
    let store = Store {
        parts: Arc::default(),
        reserved: Arc::default(),
        budget: settings.budget_bytes,
        shm_dir: settings.shm_dir.clone(),
    };
    tracing::info!(listen = %settings.listen, budget = settings.budget_bytes, "store serving");
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = settings.tls {
        server = server.tls_config(tls)?;
    }
    server
        .tcp_nodelay(true)
        .add_service(crate::serving_health())
        .add_service(FlightServiceServer::new(store).max_decoding_message_size(MAX_PUT_MESSAGE))
        .serve_with_shutdown(settings.listen, shutdown)
        .await?;
    if let Some(dir) = &settings.shm_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

type Reply<T> = BoxStream<'static, Result<T, Status>>;

fn json<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("not a {what}: {e}")))
}

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!("a store does not serve {what}")))
}

#[tonic::async_trait]
impl FlightService for Store {
    type HandshakeStream = Reply<HandshakeResponse>;
    type ListFlightsStream = Reply<FlightInfo>;
    type DoGetStream = Reply<FlightData>;
    type DoPutStream = Reply<PutResult>;
    type DoActionStream = Reply<arrow_flight::Result>;
    type ListActionsStream = Reply<ActionType>;
    type DoExchangeStream = Reply<FlightData>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unsupported("Handshake")
    }

    async fn list_flights(&self, _: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("ListFlights")
    }

    async fn get_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        unsupported("GetFlightInfo")
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        unsupported("PollFlightInfo")
    }

    async fn get_schema(&self, _: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        unsupported("GetSchema")
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket: GetTicket = json("store ticket", &request.into_inner().ticket)?;
        let held = self.parts.lock().expect("store parts").get(&ticket.part).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "partition {} of `{}` (version {}) is not held here",
                ticket.part.partition, ticket.part.table, ticket.part.version
            ))
        })?;
        let (schema, batches) = match &ticket.projection {
            Some(columns) => {
                let schema =
                    Arc::new(held.schema.project(columns).map_err(|e| Status::invalid_argument(e.to_string()))?);
                let batches = held
                    .batches
                    .iter()
                    .map(|b| b.project(columns))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                (schema, batches)
            }
            None => (held.schema.clone(), held.batches.clone()),
        };
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(Status::from);
        Ok(Response::new(stream.boxed()))
    }

    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("an empty put"))?;
        let descriptor =
            first.flight_descriptor.clone().ok_or_else(|| Status::invalid_argument("a put names its partition"))?;
        let part: PartId = json("partition id", &descriptor.cmd)?;
        let data = futures::stream::once(async { Ok::<_, Status>(first) }).chain(input).map_err(FlightError::from);
        let mut decoded = FlightRecordBatchStream::new_from_flight_data(data);
        let mut batches = Vec::new();
        while let Some(batch) = decoded.try_next().await.map_err(Status::from)? {
            batches.push(batch);
        }
        let schema = decoded
            .schema()
            .cloned()
            .ok_or_else(|| Status::invalid_argument("a put carries the partition's schema"))?;
        let bytes = batches.iter().map(|b| rows_bytes(b) as usize).sum();
        // Room is reserved first, so concurrent puts cannot both pass the budget.
        {
            let parts = self.parts.lock().expect("store parts");
            let held: usize = parts.iter().filter(|(id, _)| **id != part).map(|(_, h)| h.bytes).sum();
            let mut reserved = self.reserved.lock().expect("store reservations");
            let used = held + *reserved;
            if used + bytes > self.budget {
                return Err(Status::resource_exhausted(format!(
                    "this store holds {used} bytes of its {}; partition {} of `{}` needs {bytes} more",
                    self.budget, part.partition, part.table
                )));
            }
            *reserved += bytes;
        }
        let release = |store: &Store| *store.reserved.lock().expect("store reservations") -= bytes;
        // In shared memory, the rows are held once: as the file, mapped. The
        // copy runs off the async threads, which keep answering meanwhile.
        let (batches, path) = match self.shm_dir.clone() {
            Some(dir) => {
                let (id, schema) = (part.clone(), schema.clone());
                let kept = tokio::task::spawn_blocking(move || {
                    let path = crate::shm::write(&dir, &id, &schema, &batches)?;
                    let mapped = crate::shm::read(&path, None)?.map(|(_, b)| b);
                    Ok::<_, DataFusionError>((mapped, path))
                })
                .await;
                match kept {
                    Ok(Ok((Some(mapped), path))) => (mapped, Some(path)),
                    Ok(Ok((None, path))) => {
                        release(self);
                        return Err(Status::internal(format!("{} vanished", path.display())));
                    }
                    Ok(Err(e)) => {
                        release(self);
                        return Err(Status::internal(e.to_string()));
                    }
                    Err(e) => {
                        release(self);
                        return Err(Status::internal(e.to_string()));
                    }
                }
            }
            None => (batches, None),
        };
        tracing::debug!(table = %part.table, partition = part.partition, bytes, "holding a partition");
        let reply =
            PutResult { app_metadata: path.as_ref().map(|p| p.display().to_string()).unwrap_or_default().into() };
        self.parts.lock().expect("store parts").insert(part, Arc::new(Held { schema, batches, bytes, path }));
        release(self);
        Ok(Response::new(futures::stream::once(async { Ok(reply) }).boxed()))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        match action.r#type.as_str() {
            "drop" => {
                let body: DropBody = json("drop request", &action.body)?;
                let dropped = |id: &PartId| match &body.only {
                    None => id.table == body.table,
                    Some((version, partitions)) => {
                        id.table == body.table && id.version == *version && partitions.contains(&id.partition)
                    }
                };
                self.parts.lock().expect("store parts").retain(|id, _| !dropped(id));
                Ok(Response::new(futures::stream::empty().boxed()))
            }
            "holds" => {
                let body: HoldsBody = json("holds request", &action.body)?;
                let mut held: Vec<u32> = self
                    .parts
                    .lock()
                    .expect("store parts")
                    .keys()
                    .filter(|id| id.table == body.table && id.version == body.version)
                    .map(|id| id.partition)
                    .collect();
                held.sort_unstable();
                let reply = arrow_flight::Result { body: serde_json::to_vec(&held).expect("numbers serialize").into() };
                Ok(Response::new(futures::stream::once(async { Ok(reply) }).boxed()))
            }
            other => Err(Status::invalid_argument(format!("unknown store action `{other}` (known: drop, holds)"))),
        }
    }

    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            ActionType {
                r#type: "drop".into(),
                description: "forget every partition of a table, or the listed ones of a version".into(),
            },
            ActionType { r#type: "holds".into(), description: "which partitions of a table's version it holds".into() },
        ];
        Ok(Response::new(futures::stream::iter(actions.map(Ok)).boxed()))
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        unsupported("DoExchange")
    }
}

/// The bytes of the rows a batch holds, not of the buffers it slices
/// (decoded batches share one buffer per message).
pub fn rows_bytes(batch: &RecordBatch) -> u64 {
    batch.columns().iter().map(array_bytes).sum()
}

/// The bytes of the values one array holds (see [`rows_bytes`]).
pub fn array_bytes(array: &arrow::array::ArrayRef) -> u64 {
    // A view array's slice size counts its views, not the strings they
    // point to; those out of line are counted here.
    let slice = array.to_data().get_slice_memory_size().unwrap_or(0) as u64;
    slice + out_of_line(array).map_or(0, |(used, _)| used)
}

/// For a string or binary view array: the bytes its rows point to out of
/// line (strings over 12 bytes), and the bytes of the buffers it holds.
fn out_of_line(array: &arrow::array::ArrayRef) -> Option<(u64, u64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    let (views, buffers) = match array.data_type() {
        DataType::Utf8View => (array.as_string_view().views(), array.as_string_view().data_buffers()),
        DataType::BinaryView => (array.as_binary_view().views(), array.as_binary_view().data_buffers()),
        _ => return None,
    };
    let used = views.iter().map(|v| *v as u32).filter(|len| *len > 12).map(u64::from).sum();
    Some((used, buffers.iter().map(|b| b.len() as u64).sum()))
}

fn flight_error(store: &str, e: FlightError) -> DataFusionError {
    match &e {
        // A full store is told apart: the driver makes room and tries again.
        FlightError::Tonic(status) if status.code() == tonic::Code::ResourceExhausted => {
            DataFusionError::ResourcesExhausted(format!("store at {store}: {}", status.message()))
        }
        _ => DataFusionError::Execution(format!("store at {store}: {e}")),
    }
}

/// Puts one partition into the store at `store`; the path of its file in
/// the store's shared memory, if it keeps one.
pub async fn put(
    channel: tonic::transport::Channel,
    store: &str,
    part: &PartId,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Option<String>, DataFusionError> {
    let descriptor = FlightDescriptor::new_cmd(serde_json::to_vec(part).expect("a part id serializes"));
    let data = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(descriptor))
        .with_max_flight_data_size(PUT_MESSAGE_BYTES)
        .build(futures::stream::iter(batches.into_iter().map(|b| Ok(compact(&b)))));
    let mut client = FlightClient::new(channel);
    let results = client.do_put(data).await.map_err(|e| flight_error(store, e))?;
    let results = results.try_collect::<Vec<_>>().await.map_err(|e| flight_error(store, e))?;
    let path = results.first().map(|r| String::from_utf8_lossy(&r.app_metadata).to_string());
    Ok(path.filter(|p| !p.is_empty()))
}

/// The largest message a put sends. The store holds each message as one
/// batch, so a batch cut into pieces stays in pieces for every later scan,
/// and each piece of a view column carries all of its batch's string
/// buffers: with the encoder's default (2 MB), `lineitem` computed on two
/// workers was held in 6,000 batches taking 3.5 times its bytes. Within
/// what a store decodes (`MAX_PUT_MESSAGE`).
const PUT_MESSAGE_BYTES: usize = 64 << 20;

/// The largest message a store decodes.
const MAX_PUT_MESSAGE: usize = 256 << 20;

/// `batch` with each string or binary view column holding only the bytes
/// its rows point to. Views decoded from Parquet or sliced from a larger
/// batch share whole buffers, which Arrow IPC sends, and a store would
/// hold, in full with every batch and every piece the Flight encoder cuts
/// it into: a 36 MB table once took 300 MB of its store's memory.
pub fn compact(batch: &RecordBatch) -> RecordBatch {
    use arrow::array::{ArrayRef, AsArray};
    use arrow::datatypes::DataType;
    let columns = batch
        .columns()
        .iter()
        .map(|column| match out_of_line(column) {
            // Compact already (an ingest's own arrays): kept, not copied.
            Some((used, held)) if held > used.saturating_mul(2) => match column.data_type() {
                DataType::Utf8View => Arc::new(column.as_string_view().gc()) as ArrayRef,
                _ => Arc::new(column.as_binary_view().gc()) as ArrayRef,
            },
            _ => column.clone(),
        })
        .collect();
    RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .expect("the same columns, compacted")
}

/// The batches of one partition, with only `projection`'s columns.
pub async fn get(
    channel: tonic::transport::Channel,
    store: &str,
    part: &PartId,
    projection: Option<Vec<usize>>,
) -> Result<BoxStream<'static, Result<RecordBatch, DataFusionError>>, DataFusionError> {
    let ticket = serde_json::to_vec(&GetTicket { part: part.clone(), projection }).expect("a ticket serializes");
    let mut client = FlightClient::new(channel);
    let store = store.to_string();
    let stream = client.do_get(Ticket::new(ticket)).await.map_err(|e| flight_error(&store, e))?;
    Ok(stream.map_err(move |e| flight_error(&store, e)).boxed())
}

/// Makes the store at `store` forget every partition of `table`.
pub async fn drop_table(channel: tonic::transport::Channel, store: &str, table: &str) -> Result<(), DataFusionError> {
    drop_action(channel, store, DropBody { table: table.to_string(), only: None }).await
}

/// Makes the store at `store` forget some partitions of one version of `table`.
pub async fn drop_parts(
    channel: tonic::transport::Channel,
    store: &str,
    table: &str,
    version: u64,
    partitions: Vec<u32>,
) -> Result<(), DataFusionError> {
    drop_action(channel, store, DropBody { table: table.to_string(), only: Some((version, partitions)) }).await
}

async fn drop_action(channel: tonic::transport::Channel, store: &str, body: DropBody) -> Result<(), DataFusionError> {
    let body = serde_json::to_vec(&body).expect("a drop request serializes");
    let mut client = FlightClient::new(channel);
    let results = client.do_action(Action::new("drop", body)).await.map_err(|e| flight_error(store, e))?;
    results.try_collect::<Vec<_>>().await.map_err(|e| flight_error(store, e))?;
    Ok(())
}

/// Which partitions of `table`'s `version` the store at `store` holds, in order.
pub async fn holds(
    channel: tonic::transport::Channel,
    store: &str,
    table: &str,
    version: u64,
) -> Result<Vec<u32>, DataFusionError> {
    let body =
        serde_json::to_vec(&HoldsBody { table: table.to_string(), version }).expect("a holds request serializes");
    let mut client = FlightClient::new(channel);
    let results = client.do_action(Action::new("holds", body)).await.map_err(|e| flight_error(store, e))?;
    let results: Vec<bytes::Bytes> = results.try_collect().await.map_err(|e| flight_error(store, e))?;
    let held = results.first().and_then(|b| serde_json::from_slice(b).ok());
    held.ok_or_else(|| {
        DataFusionError::Execution(format!("store at {store}: a `holds` answer that is not a list of partitions"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let ids = Int64Array::from_iter_values(from..from + n);
        let names = StringArray::from_iter_values((from..from + n).map(|i| format!("row {i}")));
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(names)]).unwrap()
    }

    #[tokio::test]
    async fn a_store_keeps_partitions_serves_their_columns_and_refuses_what_it_cannot_hold() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let one = batch(0, 1000);
        // Room for two partitions, not three.
        let budget = rows_bytes(&one) as usize * 5 / 2;
        let shm = tempfile::tempdir().unwrap();
        let shm_dir = Some(shm.path().join("store"));
        let settings = StoreSettings { listen, budget_bytes: budget, tls: None, shm_dir };
        tokio::spawn(serve_store(settings, std::future::pending::<()>()));
        let url = format!("http://{listen}");
        let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect_lazy();
        let part = |p| PartId { table: "t".into(), version: 1, partition: p };
        // The server takes a moment to listen.
        let mut tries = 0;
        while let Err(e) = put(channel.clone(), &url, &part(0), one.schema(), vec![one.clone()]).await {
            tries += 1;
            assert!(tries < 100, "the store never served: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let file = put(channel.clone(), &url, &part(1), one.schema(), vec![batch(1000, 1000)]).await.unwrap();
        let file = std::path::PathBuf::from(file.expect("a file in shared memory"));
        let (_, mapped) = crate::shm::read(&file, Some(&[0])).unwrap().expect("readable on this host");
        assert_eq!(mapped[0].num_rows(), 1000);

        let read: Vec<RecordBatch> =
            get(channel.clone(), &url, &part(1), Some(vec![1])).await.unwrap().try_collect().await.unwrap();
        assert_eq!(read.iter().map(RecordBatch::num_rows).sum::<usize>(), 1000);
        assert_eq!(read[0].schema().fields().len(), 1, "only the asked column travels");
        assert_eq!(read[0].column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0), "row 1000");

        let refused = put(channel.clone(), &url, &part(2), one.schema(), vec![batch(2000, 1000)]).await.unwrap_err();
        assert!(refused.to_string().contains("needs"), "{refused}");
        let missing = match get(channel.clone(), &url, &part(2), None).await {
            Ok(s) => s.try_collect::<Vec<_>>().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(missing.to_string().contains("not held here"), "{missing}");

        assert_eq!(holds(channel.clone(), &url, "t", 1).await.unwrap(), [0, 1]);
        assert!(holds(channel.clone(), &url, "t", 2).await.unwrap().is_empty(), "another version is not held");
        drop_parts(channel.clone(), &url, "t", 2, vec![1]).await.unwrap();
        assert_eq!(holds(channel.clone(), &url, "t", 1).await.unwrap(), [0, 1], "another version's drop keeps these");
        drop_parts(channel.clone(), &url, "t", 1, vec![1]).await.unwrap();
        assert_eq!(holds(channel.clone(), &url, "t", 1).await.unwrap(), [0], "only the listed partition is gone");
        assert!(!file.exists(), "a dropped partition's file is gone");
        drop_table(channel.clone(), &url, "t").await.unwrap();
        assert!(match get(channel.clone(), &url, &part(0), None).await {
            Ok(s) => s.try_collect::<Vec<_>>().await.is_err(),
            Err(_) => true,
        });
        // Room again once dropped.
        put(channel, &url, &part(2), one.schema(), vec![batch(2000, 1000)]).await.unwrap();
    }

    #[test]
    fn the_bytes_of_view_strings_count_what_they_point_to() {
        use arrow::array::StringViewArray;
        let long = "x".repeat(100);
        let strings = StringViewArray::from_iter_values(["short", long.as_str(), long.as_str()]);
        let batch = RecordBatch::try_from_iter([("s", Arc::new(strings) as arrow::array::ArrayRef)]).unwrap();
        assert_eq!(rows_bytes(&batch), 3 * 16 + 200, "three views and two strings out of line");
    }

    #[test]
    fn a_slice_of_view_strings_is_sent_with_only_the_strings_it_holds() {
        use arrow::array::{AsArray, StringViewArray};
        // Given 10,000 rows of 100-byte strings, of which a partition takes 10
        let long: Vec<String> = (0..10_000).map(|i| format!("{i:0>100}")).collect();
        let strings = StringViewArray::from_iter_values(long.iter());
        let batch = RecordBatch::try_from_iter([("s", Arc::new(strings) as arrow::array::ArrayRef)]).unwrap();
        let slice = batch.slice(500, 10);
        let ipc_bytes = |b: &RecordBatch| {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &b.schema()).unwrap();
            writer.write(b).unwrap();
            writer.into_inner().unwrap().len()
        };
        assert!(ipc_bytes(&slice) > 1_000_000, "a slice alone carries every string of the batch");
        // When it is compacted, then it carries its own 10 strings, the same values
        let compacted = compact(&slice);
        assert!(ipc_bytes(&compacted) < 10_000, "{} bytes", ipc_bytes(&compacted));
        assert_eq!(compacted.column(0).as_string_view().value(0), long[500]);
        assert_eq!(compacted, slice);
        // A batch that holds only its own strings is sent as it is, not copied
        assert!(Arc::ptr_eq(compact(&batch).column(0), batch.column(0)));
    }
}
