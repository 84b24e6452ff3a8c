//! The coordinator: owns the scheduler engine in one event loop (no lock
//! around it), persists jobs, allocations and nodes, commands agents over
//! their attached streams, and serves the client API.
//!
//! Every gRPC handler turns its request into a [`Msg`] for the loop and
//! awaits the reply; the loop is the only code that touches the engine or
//! the store, so there is no lock and no race between decisions.

mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use cohort_proto as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use state::State;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// An agent silent this long is lost and its work re-queued.
    pub heartbeat_timeout: Duration,
    pub heartbeat_interval: Duration,
}

/// A request for the event loop.
pub(crate) enum Msg {
    Submit { file: String, text: String, reply: oneshot::Sender<Result<u64, Status>> },
    Job { id: u64, reply: oneshot::Sender<Result<pb::Job, Status>> },
    Jobs { reply: oneshot::Sender<Vec<pb::Job>> },
    Cancel { id: u64, reply: oneshot::Sender<Result<pb::Job, Status>> },
    LogSource { job: u64, slot: u32, reply: oneshot::Sender<Result<(String, u64), Status>> },
    Register { req: pb::RegisterRequest, reply: oneshot::Sender<Result<pb::RegisterResponse, Status>> },
    Attach { node: u32, commands: mpsc::Sender<Result<pb::Command, Status>> },
    Agent { node: u32, msg: pb::AgentMessage },
    Nodes { reply: oneshot::Sender<Vec<pb::Node>> },
    NodeOp { name: String, op: NodeOp, reply: oneshot::Sender<Result<pb::Node, Status>> },
    Status { reply: oneshot::Sender<pb::ClusterStatus> },
    Watch { reply: oneshot::Sender<tokio::sync::broadcast::Receiver<pb::JobEvent>> },
    Tick,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum NodeOp {
    Cordon,
    Uncordon,
    Drain,
}

/// Runs the coordinator until the process ends.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)?;
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let address = listener.local_addr()?;
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let mut state = State::open(&settings, address.to_string())?;
    tracing::info!(%address, data_dir = %settings.data_dir.display(), "coordinator listening");
    println!("coordinator listening on {address}");
    let ticker = tx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        loop {
            every.tick().await;
            if ticker.send(Msg::Tick).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move { state.run(rx).await });
    let api = Api { tx };
    tonic::transport::Server::builder()
        .add_service(pb::cluster_server::ClusterServer::new(api.clone()))
        .add_service(pb::jobs_server::JobsServer::new(api.clone()))
        .add_service(pb::nodes_server::NodesServer::new(api))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

#[derive(Clone)]
struct Api {
    tx: mpsc::Sender<Msg>,
}

impl Api {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Status::unavailable("coordinator is shutting down"))?;
        rx.await.map_err(|_| Status::internal("coordinator dropped the request"))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        self.ask(|reply| Msg::Register { req, reply }).await?.map(Response::new)
    }

    type AttachStream = BoxStream<pb::Command>;

    async fn attach(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut incoming = req.into_inner();
        let first = incoming.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(pb::agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let node = hello.node_id;
        let (commands, rx) = mpsc::channel(1024);
        self.tx.send(Msg::Attach { node, commands }).await.map_err(|_| Status::unavailable("shutting down"))?;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                if tx.send(Msg::Agent { node, msg }).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Api {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let req = req.into_inner();
        let file = if req.file_name.is_empty() { "job.toml".to_string() } else { req.file_name };
        let id = self.ask(|reply| Msg::Submit { file, text: req.spec_toml, reply }).await??;
        Ok(Response::new(pb::SubmitResponse { job_id: id }))
    }

    async fn get(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().job_id;
        self.ask(|reply| Msg::Job { id, reply }).await?.map(Response::new)
    }

    async fn list(&self, _: Request<pb::ListJobsRequest>) -> Result<Response<pb::JobList>, Status> {
        let jobs = self.ask(|reply| Msg::Jobs { reply }).await?;
        Ok(Response::new(pb::JobList { jobs }))
    }

    async fn cancel(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let id = req.into_inner().job_id;
        self.ask(|reply| Msg::Cancel { id, reply }).await?.map(Response::new)
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let (address, alloc) = self.ask(|reply| Msg::LogSource { job: req.job_id, slot: req.slot, reply }).await??;
        let mut agent = pb::agent_logs_client::AgentLogsClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the agent holding the logs at {address}: {e}")))?;
        let stream = agent.read(pb::ReadLogRequest { alloc_id: alloc, follow: req.follow }).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.ask(|reply| Msg::Status { reply }).await?))
    }

    type WatchStream = BoxStream<pb::JobEvent>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let job = req.into_inner().job_id;
        let events = self.ask(|reply| Msg::Watch { reply }).await?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(events).filter_map(move |e| match e {
            Ok(e) if job == 0 || e.job_id == job => Some(Ok(e)),
            Ok(_) => None,
            Err(lagged) => Some(Err(Status::data_loss(format!("watcher fell behind: {lagged}")))),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for Api {
    async fn list(&self, _: Request<pb::ListNodesRequest>) -> Result<Response<pb::NodeList>, Status> {
        let nodes = self.ask(|reply| Msg::Nodes { reply }).await?;
        Ok(Response::new(pb::NodeList { nodes }))
    }

    async fn cordon(&self, req: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        self.node_op(req, NodeOp::Cordon).await
    }

    async fn uncordon(&self, req: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        self.node_op(req, NodeOp::Uncordon).await
    }

    async fn drain(&self, req: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        self.node_op(req, NodeOp::Drain).await
    }
}

impl Api {
    async fn node_op(&self, req: Request<pb::NodeRef>, op: NodeOp) -> Result<Response<pb::Node>, Status> {
        let name = req.into_inner().name;
        self.ask(|reply| Msg::NodeOp { name, op, reply }).await?.map(Response::new)
    }
}
