//! The gRPC front door: the `Cluster` service agents attach to, and the
//! `Jobs` and `Nodes` services the CLI calls. Each handler maps its request
//! to a core call and the answer back; [`status_of`] maps the core's errors
//! to gRPC codes. Commands to agents travel on their attached streams
//! ([`AgentStreams`]).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use cohort_proto as pb;
use cohort_scheduler::Resources;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::coordinator::CoreHandle;
use crate::coordinator::core::auth::{HOW_TO_GET_A_TOKEN, Principal, Role, TokenRecord};
use crate::coordinator::core::model::{
    AgentCommand, AgentReport, ExitReport, JobEvent, JobView, NodeOp, NodeView, Registration, RunningExecutor,
};
use crate::coordinator::core::{AgentSink, CoordinatorError, Core};
use crate::coordinator::sql::SqlFront;

/// Serves the gRPC API, and Flight SQL beside it, on `listener` until the
/// process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: tonic::transport::ServerTlsConfig,
    ca: Arc<crate::tls::ClusterCa>,
    core: CoreHandle,
    streams: AgentStreams,
    sql: Arc<SqlFront>,
) -> anyhow::Result<()> {
    let api = Api { core, ca, streams, open_streams: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_STREAMS)) };
    // Small answers (a query's ticket, its rows) must not wait for Nagle.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok::<_, std::io::Error>(conn)
    });
    tonic::transport::Server::builder()
        .tls_config(tls)?
        .layer(super::auth::AuthLayer { core: api.core.clone() })
        .add_service(pb::cluster_server::ClusterServer::new(api.clone()))
        .add_service(pb::jobs_server::JobsServer::new(api.clone()))
        .add_service(pb::nodes_server::NodesServer::new(api.clone()))
        .add_service(pb::tokens_server::TokensServer::new(api))
        .add_service(pb::catalog_server::CatalogServer::new(CatalogApi { sql: sql.clone() }))
        .add_service(crate::coordinator::sql::flight::service(sql))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// The catalog as statements, for drivers of SQL jobs.
struct CatalogApi {
    sql: Arc<SqlFront>,
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogApi {
    async fn tables(&self, req: Request<pb::TablesRequest>) -> Result<Response<pb::TableList>, Status> {
        let who = caller(&req)?;
        if matches!(who, Principal::Agent { .. } | Principal::Node { .. }) {
            return Err(Status::permission_denied(format!("{who} is a join token: it only joins agents")));
        }
        let tables = self.sql.tables().await.map_err(status_of)?;
        Ok(Response::new(pb::TableList {
            tables: tables.into_iter().map(|t| pb::TableDef { name: t.name, ddl: t.ddl }).collect(),
        }))
    }
}

/// The gRPC status for a core error.
pub fn status_of(e: CoordinatorError) -> Status {
    let message = e.to_string();
    match e {
        CoordinatorError::InvalidInput(_) => Status::invalid_argument(message),
        CoordinatorError::NotFound(_) => Status::not_found(message),
        CoordinatorError::Conflict(_) => Status::failed_precondition(message),
        CoordinatorError::Store(_) | CoordinatorError::Unavailable(_) => Status::unavailable(message),
        CoordinatorError::Unauthenticated(_) => Status::unauthenticated(message),
        CoordinatorError::Forbidden(_) => Status::permission_denied(message),
        CoordinatorError::Internal(_) => Status::internal(message),
    }
}

type CommandTx = mpsc::Sender<Result<pb::Command, Status>>;

#[derive(Default)]
struct Connection {
    stream: Option<CommandTx>,
    /// Commands decided between its registration and its stream attaching.
    held: Vec<pb::Command>,
}

/// Each agent's attached command stream. The core sends into it as an
/// [`AgentSink`]; the `Attach` handler plugs streams in.
#[derive(Clone, Default)]
pub struct AgentStreams {
    connections: Arc<Mutex<HashMap<u32, Connection>>>,
}

impl AgentStreams {
    fn attach(&self, node: u32, stream: CommandTx) {
        let mut connections = self.connections.lock().expect("agent streams");
        let connection = connections.entry(node).or_default();
        for command in connection.held.drain(..) {
            let _ = stream.try_send(Ok(command));
        }
        connection.stream = Some(stream);
    }
}

impl AgentSink for AgentStreams {
    fn send(&mut self, node: u32, command: AgentCommand) {
        let alloc = command.alloc();
        let command = command_to_pb(command);
        let mut connections = self.connections.lock().expect("agent streams");
        let connection = connections.entry(node).or_default();
        match &connection.stream {
            Some(stream) => {
                if stream.try_send(Ok(command)).is_err() {
                    tracing::warn!(alloc, node, "agent command queue full or closed");
                }
            }
            None => connection.held.push(command),
        }
    }

    fn disconnect(&mut self, node: u32) {
        self.connections.lock().expect("agent streams").remove(&node);
    }
}

/// Watch and log streams open at once, across clients; more are refused
/// rather than holding memory for each.
const MAX_OPEN_STREAMS: usize = 1000;

#[derive(Clone)]
struct Api {
    core: CoreHandle,
    /// Signs the certificates of agents that join.
    ca: Arc<crate::tls::ClusterCa>,
    streams: AgentStreams,
    open_streams: Arc<tokio::sync::Semaphore>,
}

impl Api {
    /// A place for one more long-lived stream, held until it is dropped.
    fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.open_streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many watch and log streams are open ({MAX_OPEN_STREAMS}); close some and retry"
            ))
        })
    }

    /// Records an accepted change: who, what, when.
    async fn record(&self, who: &Principal, what: String) {
        let who = who.describe();
        let _ = self.core.call(move |core| core.audit(&who, &what)).await;
    }

    /// Runs a core call whose answer may be refused.
    async fn ask<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> Result<R, CoordinatorError> + Send + 'static,
    ) -> Result<R, Status> {
        self.core.call(f).await.map_err(status_of)?.map_err(status_of)
    }

    /// Runs a core call that cannot be refused.
    async fn read<R: Send + 'static>(&self, f: impl FnOnce(&mut Core) -> R + Send + 'static) -> Result<R, Status> {
        self.core.call(f).await.map_err(status_of)
    }

    /// A pipeline's topics must exist before members wait on them forever.
    /// (A spec that does not parse is left for the core to refuse, with
    /// its line.)
    async fn check_topics(&self, file: &str, text: &str, spec: &crate::spec::JobSpec) -> Result<(), Status> {
        let crate::spec::JobKind::Pipeline { config, .. } = &spec.kind else { return Ok(()) };
        let bootstrap = self.read(|core| core.status().kafka_bootstrap).await?;
        let brokers = config.brokers.clone().unwrap_or(bootstrap);
        if brokers.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{file}:{}: source.kafka.brokers: not set, and this cluster has no embedded broker",
                crate::spec::line_of_field(text, "source.kafka")
            )));
        }
        let field = "source.kafka.topic";
        let at = format!("{file}:{}: {field}", crate::spec::line_of_field(text, field));
        let topic = config.topic.clone();
        tokio::task::spawn_blocking(move || {
            cohort_connectors::kafka::topic_partitions(&brokers, &topic, std::time::Duration::from_secs(5))
                .map(|_| ())
                .map_err(|e| Status::failed_precondition(format!("{at}: {e}")))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let check = who.clone();
        self.ask(move |core| core.check_join(&check)).await?;
        if req.name.trim().is_empty() || req.name.len() > 253 {
            return Err(Status::invalid_argument("an agent's name must be 1 to 253 characters"));
        }
        let host = req.address.split(':').next().unwrap_or_default();
        let certificate_pem = self
            .ca
            .sign_agent(&req.name, host, &req.csr_pem)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e:#}")))?;
        self.record(&who, format!("join agent {} (certificate issued)", req.name)).await;
        Ok(Response::new(pb::JoinResponse { certificate_pem }))
    }

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let who = caller(&req)?;
        let reg = registration_from_pb(req.into_inner());
        let name = reg.name.clone();
        let check = who.clone();
        let registered = self
            .ask(move |core| {
                core.check_agent(&check, &reg.name)?;
                core.register(reg)
            })
            .await?;
        self.record(&who, format!("register agent {name}")).await;
        Ok(Response::new(pb::RegisterResponse {
            node_id: registered.node,
            heartbeat_interval_ms: registered.heartbeat_interval_ms,
            logs_token: registered.logs_token,
        }))
    }

    type AttachStream = BoxStream<pb::Command>;

    async fn attach(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::AttachStream>, Status> {
        let who = caller(&req)?;
        let mut incoming = req.into_inner();
        let first = incoming.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(pb::agent_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let node = hello.node_id;
        self.ask(move |core| core.check_node(&who, node)).await?;
        let (commands, rx) = mpsc::channel(1024);
        self.streams.attach(node, commands);
        self.read(move |core| core.attached(node)).await?;
        let core = self.core.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                let Some(report) = report_from_pb(msg) else { continue };
                match core.call(move |core| core.report(node, report)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(node, error = %e, "agent report failed"),
                    Err(_) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Api {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let file = if req.file_name.is_empty() { "job.toml".to_string() } else { req.file_name };
        // Parsed once, here: the queue decides who may submit it.
        let spec =
            crate::spec::parse_job(&file, &req.spec_toml).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let queue = spec.gang.queue.clone();
        let check = (who.clone(), queue.clone());
        self.ask(move |core| core.check_queue(&check.0, &check.1)).await?;
        self.check_topics(&file, &req.spec_toml, &spec).await?;
        let id = self.ask(move |core| core.submit_parsed(&file, &req.spec_toml, spec)).await?;
        self.record(&who, format!("submit job {id} to queue {queue}")).await;
        Ok(Response::new(pb::SubmitResponse { job_id: id }))
    }

    async fn get(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().job_id;
        Ok(Response::new(job_to_pb(self.ask_job(who, id, move |core| core.job(id)).await?)))
    }

    async fn list(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::JobList>, Status> {
        let who = caller(&req)?;
        let jobs = self
            .ask(move |core| {
                core.check_user(&who)?;
                Ok(core.jobs().into_iter().filter(|j| who.may_use_queue(&j.queue)).collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(pb::JobList { jobs: jobs.into_iter().map(job_to_pb).collect() }))
    }

    async fn cancel(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        self.change_job(req, "cancel", Core::cancel).await
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let (job, slot) = (req.job_id, req.slot);
        let (address, alloc, token) = self.ask_job(who, job, move |core| core.log_source(job, slot)).await?;
        let mut agent = crate::coordinator::logs::agent_client(&self.core, &address, &token)
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the agent holding the logs at {address}: {e}")))?;
        let request = pb::ReadLogRequest { alloc_id: alloc, follow: req.follow, tail_bytes: 0 };
        let permit = self.stream_permit()?;
        let stream = agent.read(request).await?.into_inner().map(move |chunk| {
            let _held = &permit;
            chunk
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let who = caller(&req)?;
        let s = self
            .ask(move |core| {
                core.check_user(&who)?;
                Ok(core.status())
            })
            .await?;
        Ok(Response::new(pb::ClusterStatus {
            coordinator: s.coordinator,
            http: s.http,
            kafka_bootstrap: s.kafka_bootstrap,
            agents: s.agents,
            kafka_embedded: s.kafka_embedded,
        }))
    }

    async fn scale(&self, req: Request<pb::ScaleRequest>) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let (id, instances) = (req.job_id, req.instances);
        let job = self.ask_job(who.clone(), id, move |core| core.scale_service(id, instances)).await?;
        self.record(&who, format!("scale job {id} to {instances}")).await;
        Ok(Response::new(job_to_pb(job)))
    }

    async fn pause(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        self.change_job(req, "pause", Core::pause).await
    }

    async fn resume(&self, req: Request<pb::JobRef>) -> Result<Response<pb::Job>, Status> {
        self.change_job(req, "resume", Core::resume).await
    }

    async fn pipeline(&self, req: Request<pb::JobRef>) -> Result<Response<pb::PipelineStatus>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().job_id;
        self.ask_job(who, id, |_| Ok(())).await?;
        let p = crate::coordinator::pipelines::view(&self.core, id, false).await.map_err(status_of)?;
        Ok(Response::new(pb::PipelineStatus {
            job: Some(job_to_pb(p.job)),
            topic: p.topic,
            group: p.group,
            brokers: p.brokers,
            sink: p.sink,
            partitions: p
                .partitions
                .into_iter()
                .map(|x| pb::PartitionLag {
                    partition: x.partition,
                    committed: x.committed.unwrap_or(-1),
                    end: x.end,
                    lag: x.lag,
                })
                .collect(),
            lag_error: p.lag_error,
        }))
    }

    async fn endpoints(&self, req: Request<pb::JobRef>) -> Result<Response<pb::EndpointList>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().job_id;
        let endpoints = self.ask_job(who, id, move |core| core.endpoints(id)).await?;
        Ok(Response::new(pb::EndpointList {
            endpoints: endpoints
                .into_iter()
                .map(|e| pb::Endpoint {
                    slot: e.slot,
                    node: e.node,
                    host: e.host,
                    port: e.ports.values().next().copied().unwrap_or(0) as u32,
                    ports: ports_to_pb(&e.ports),
                })
                .collect(),
        }))
    }

    async fn resolve(&self, req: Request<pb::ResolveRequest>) -> Result<Response<pb::JobRef>, Status> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        let job_id = self.ask(move |core| core.resolve_for(&who, &name)).await?;
        Ok(Response::new(pb::JobRef { job_id }))
    }

    type WatchStream = BoxStream<pb::JobEvent>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let who = caller(&req)?;
        let job = req.into_inner().job_id;
        let permit = self.stream_permit()?;
        let check = who.clone();
        let events = self
            .ask(move |core| {
                if job == 0 {
                    core.check_user(&check)?
                } else {
                    core.check_job(&check, job)?
                }
                Ok(core.subscribe())
            })
            .await?;
        let stream = tokio_stream::wrappers::BroadcastStream::new(events).filter_map(move |e| {
            let _held = &permit;
            match e {
                Ok(e) if (job == 0 || e.job == job) && who.may_use_queue(&e.queue) => Some(Ok(event_to_pb(e))),
                Ok(_) => None,
                Err(lagged) => Some(Err(Status::data_loss(format!("watcher fell behind: {lagged}")))),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for Api {
    async fn list(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::NodeList>, Status> {
        let who = caller(&req)?;
        self.ask(move |core| core.check_user(&who)).await?;
        let nodes = self.read(|core| core.nodes()).await?;
        Ok(Response::new(pb::NodeList { nodes: nodes.into_iter().map(node_to_pb).collect() }))
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
        let who = caller(&req)?;
        let name = req.into_inner().name;
        let (check, target) = (who.clone(), name.clone());
        let node = self
            .ask(move |core| {
                core.check_admin(&check)?;
                core.node_op(&target, op)
            })
            .await?;
        self.record(&who, format!("{op:?} node {name}").to_lowercase()).await;
        Ok(Response::new(node_to_pb(node)))
    }

    /// Applies `change` to the job the request names, if its caller may
    /// use that job, and audits it as `verb`.
    async fn change_job(
        &self,
        req: Request<pb::JobRef>,
        verb: &'static str,
        change: fn(&mut Core, u64) -> Result<JobView, CoordinatorError>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().job_id;
        let job = self.ask_job(who.clone(), id, move |core| change(core, id)).await?;
        self.record(&who, format!("{verb} job {id}")).await;
        Ok(Response::new(job_to_pb(job)))
    }

    /// Runs `f` if `who` may use job `id`.
    async fn ask_job<R: Send + 'static>(
        &self,
        who: Principal,
        id: u64,
        f: impl FnOnce(&mut Core) -> Result<R, CoordinatorError> + Send + 'static,
    ) -> Result<R, Status> {
        self.ask(move |core| {
            core.check_job(&who, id)?;
            f(core)
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for Api {
    async fn create(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::CreatedToken>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let role = Role::parse(&req.role).map_err(status_of)?;
        let (_, token) =
            super::auth::random_token().map_err(|e| Status::internal(format!("cannot read /dev/urandom: {e}")))?;
        let secret = token.clone();
        let check = who.clone();
        let ttl = (req.ttl_ms > 0).then_some(req.ttl_ms);
        let record = self
            .ask(move |core| {
                core.check_admin(&check)?;
                core.create_token(&secret, role, req.queues, ttl, req.description)
            })
            .await?;
        self.record(&who, format!("create {} token {}", record.role.as_str(), record.id)).await;
        // Agents pin the CA by the fingerprint their join token carries.
        let token = if role == Role::Agent { crate::tls::join_token(&token, &self.ca.fingerprint()) } else { token };
        Ok(Response::new(pb::CreatedToken { info: Some(token_to_pb(record)), token }))
    }

    async fn list(&self, req: Request<pb::ListTokensRequest>) -> Result<Response<pb::TokenList>, Status> {
        let who = caller(&req)?;
        let tokens = self
            .ask(move |core| {
                core.check_admin(&who)?;
                Ok(core.tokens())
            })
            .await?;
        Ok(Response::new(pb::TokenList { tokens: tokens.into_iter().map(token_to_pb).collect() }))
    }

    async fn revoke(&self, req: Request<pb::TokenRef>) -> Result<Response<pb::TokenInfo>, Status> {
        let who = caller(&req)?;
        let id = req.into_inner().id;
        let check = who.clone();
        let record = self
            .ask(move |core| {
                core.check_admin(&check)?;
                core.revoke_token(&id)
            })
            .await?;
        self.record(&who, format!("revoke token {}", record.id)).await;
        Ok(Response::new(token_to_pb(record)))
    }

    async fn audit(&self, req: Request<pb::AuditRequest>) -> Result<Response<pb::AuditLog>, Status> {
        let who = caller(&req)?;
        let limit = match req.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = self
            .ask(move |core| {
                core.check_admin(&who)?;
                Ok(core.audit_log(limit))
            })
            .await?;
        Ok(Response::new(pb::AuditLog {
            entries: entries.into_iter().map(|e| pb::AuditEntry { at_ms: e.at_ms, who: e.who, what: e.what }).collect(),
        }))
    }

    async fn whoami(&self, req: Request<pb::WhoamiRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let who = caller(&req)?;
        let (role, queues) = match &who {
            Principal::Admin { .. } => ("admin", vec![]),
            Principal::Tenant { queues, .. } => ("submit", queues.iter().cloned().collect()),
            Principal::Agent { .. } | Principal::Node { .. } => ("agent", vec![]),
        };
        let id = who.describe().split(' ').take(2).collect::<Vec<_>>().join(" ");
        Ok(Response::new(pb::TokenInfo { id, role: role.into(), queues, ..Default::default() }))
    }
}

/// The principal the auth layer found for this call.
fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| Status::unauthenticated(HOW_TO_GET_A_TOKEN))
}

fn token_to_pb(t: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id,
        role: t.role.as_str().into(),
        queues: t.queues,
        created_ms: t.created_ms,
        expires_ms: t.expires_ms.unwrap_or(0),
        revoked: t.revoked,
        description: t.description,
    }
}

// ---------- protobuf ↔ domain ----------

fn resources_to_pb(r: Resources) -> pb::Resources {
    pb::Resources { cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes }
}

fn registration_from_pb(req: pb::RegisterRequest) -> Registration {
    let capacity = req.capacity.unwrap_or_default();
    let ports = (req.port_first > 0 && req.port_first <= req.port_last && req.port_last <= u16::MAX as u32)
        .then_some((req.port_first as u16, req.port_last as u16));
    Registration {
        name: req.name,
        capacity: Resources::new(capacity.cpu_millis, capacity.memory_bytes),
        labels: req.labels.into_iter().collect(),
        logs_address: req.logs_address,
        running: req.running.into_iter().map(running_from_pb).collect(),
        ended: req.ended.into_iter().map(exit_from_pb).collect(),
        isolation: req.isolation,
        max_executors: req.max_executors,
        ports,
        address: req.address,
        runs_as: req.runs_as,
    }
}

fn exit_from_pb(e: pb::ExecutorExited) -> ExitReport {
    ExitReport {
        alloc: e.alloc_id,
        exit_code: e.exit_code,
        signal: e.signal,
        output_tail: e.stderr_tail,
        stopped: e.stopped,
        reason: e.reason,
        lost: e.lost,
    }
}

fn running_from_pb(r: pb::RunningExecutor) -> RunningExecutor {
    RunningExecutor { alloc: r.alloc_id, job: r.job_id, slot: r.slot, pid: r.pid }
}

fn report_from_pb(msg: pb::AgentMessage) -> Option<AgentReport> {
    Some(match msg.body? {
        pb::agent_message::Body::Hello(_) => return None,
        pb::agent_message::Body::Heartbeat(h) => {
            AgentReport::Heartbeat { running: h.running.into_iter().map(running_from_pb).collect() }
        }
        pb::agent_message::Body::Started(s) => AgentReport::Started { alloc: s.alloc_id, pid: s.pid },
        pb::agent_message::Body::Exited(e) => AgentReport::Exited(exit_from_pb(e)),
        pb::agent_message::Body::Health(h) => {
            AgentReport::Health { alloc: h.alloc_id, healthy: h.healthy, detail: h.detail }
        }
    })
}

fn command_to_pb(command: AgentCommand) -> pb::Command {
    let body = match command {
        AgentCommand::Launch(l) => pb::command::Body::Launch(pb::Launch {
            alloc_id: l.alloc,
            job_id: l.job,
            slot: l.slot,
            kind: pb::ExecutorKind::from(l.kind).into(),
            argv: l.argv,
            env: l.env.into_iter().collect(),
            limits: Some(resources_to_pb(l.limits)),
            ports: ports_to_pb(&l.ports),
            health: l.health.as_ref().map(crate::wire::health_to_pb),
            run_as: l.run_as,
        }),
        AgentCommand::Kill { alloc, grace_ms, reason } => {
            pb::command::Body::Kill(pb::Kill { alloc_id: alloc, grace_ms, reason })
        }
    };
    pb::Command { body: Some(body) }
}

fn ports_to_pb(ports: &BTreeMap<String, u16>) -> HashMap<String, u32> {
    ports.iter().map(|(k, v)| (k.clone(), *v as u32)).collect()
}

fn job_to_pb(j: JobView) -> pb::Job {
    pb::Job {
        id: j.id,
        name: j.name,
        kind: j.kind,
        state: j.state.to_string(),
        attempts: j.attempts,
        priority: j.priority,
        queue: j.queue,
        reason: j.reason,
        slots: j
            .slots
            .into_iter()
            .map(|s| pb::Slot {
                index: s.index,
                node: s.node,
                state: s.state.to_string(),
                alloc_id: s.alloc_id,
                exit_code: s.exit_code,
                healthy: s.healthy,
                ports: ports_to_pb(&s.ports),
            })
            .collect(),
        submitted_at_ms: j.submitted_at_ms,
        history: j
            .history
            .into_iter()
            .map(|a| pb::Attempt {
                attempt: a.attempt,
                started_ms: a.started_ms,
                ended_ms: a.ended_ms.unwrap_or(0),
                nodes: a.nodes,
                outcome: a.outcome,
                reason: a.reason,
                charged: a.charged,
            })
            .collect(),
        deployment: j.deployment.map(|d| pb::Deployment {
            state: d.state.as_str().into(),
            instances: d.instances,
            healthy_new: d.healthy_new,
            healthy_old: d.healthy_old,
            started_ms: d.started_ms,
            deadline_ms: d.deadline_ms,
            reason: d.reason,
        }),
    }
}

fn node_to_pb(n: NodeView) -> pb::Node {
    pb::Node {
        id: n.id,
        name: n.name,
        state: crate::json::node_state_name(n.state).into(),
        capacity: Some(resources_to_pb(n.capacity)),
        allocated: Some(resources_to_pb(n.allocated)),
        slots: n.slots,
        isolation: n.isolation,
        labels: n.labels.into_iter().collect(),
        max_executors: n.max_executors,
        address: n.address,
        runs_as: n.runs_as,
    }
}

fn event_to_pb(e: JobEvent) -> pb::JobEvent {
    pb::JobEvent { job_id: e.job, at_ms: e.at_ms, state: e.state.to_string(), what: e.what }
}
