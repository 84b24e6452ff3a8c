//! The HTTP front door: health probes, `/metrics`, the JSON API under
//! `/api/v1/` and the web UI (files compiled into the binary: it works
//! offline, with no other server).
//!
//! It reads the core's views directly (one core call per answer) and
//! serves the same documents as `cohort ... --output json`
//! ([`crate::json`]). Pipelines' lag and the utilization chart come from a
//! sampler that records the cluster every [`SAMPLE_EVERY`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::coordinator::CoreHandle;
use crate::coordinator::core::CoordinatorError;
use crate::coordinator::core::auth::Principal;
use crate::coordinator::core::model::{JobState, JobView};
use crate::coordinator::metrics::{self, Metrics, Snapshot};
use crate::coordinator::pipelines::{self, PipelineView};
use crate::coordinator::sql::{Described, SqlFront};
use crate::json::{JobDoc, NodeDoc};

/// What `/metrics` answers with: OpenMetrics text, which Prometheus reads.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How often the sampler records utilization and pipeline lag.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
const SAMPLES_KEPT: usize = 360;
/// Rows the SQL box shows at most.
const SQL_ROWS_SHOWN: usize = 1000;

/// The UI's files, compiled in.
const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The cluster at one moment, for the overview's chart.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at_ms: i64,
    pub cpu_allocated_cores: f64,
    pub cpu_capacity_cores: f64,
    pub memory_allocated_bytes: u64,
    pub memory_capacity_bytes: u64,
    pub running_gangs: u32,
    pub pending_gangs: u32,
}

/// A pipeline's lag per partition at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct LagSample {
    pub at_ms: i64,
    pub partitions: BTreeMap<i32, i64>,
}

#[derive(Default)]
struct History {
    cluster: VecDeque<Sample>,
    lag: BTreeMap<String, VecDeque<LagSample>>,
}

#[derive(Clone)]
struct Http {
    core: CoreHandle,
    sql: Arc<OnceLock<Arc<SqlFront>>>,
    metrics: Arc<Metrics>,
    history: Arc<Mutex<History>>,
}

/// The HTTP server's shared parts: the SQL front arrives once it has
/// started (until then `/readyz` says not ready).
pub struct HttpServer {
    pub sql: Arc<OnceLock<Arc<SqlFront>>>,
    router: Router,
    state: Http,
}

impl HttpServer {
    pub fn new(core: CoreHandle, metrics: Arc<Metrics>) -> HttpServer {
        let state = Http { core, sql: Arc::default(), metrics, history: Arc::default() };
        // Everything but the probes and the UI's own files needs a token.
        let guarded = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/api/v1/status", get(status))
            .route("/api/v1/nodes", get(nodes))
            .route("/api/v1/jobs", get(jobs))
            .route("/api/v1/jobs/{job}", get(job))
            .route("/api/v1/jobs/{job}/logs", get(logs))
            .route("/api/v1/services", get(services))
            .route("/api/v1/pipelines", get(pipelines_list))
            .route("/api/v1/queues", get(queues))
            .route("/api/v1/utilization", get(utilization))
            .route("/api/v1/queries", get(queries))
            .route("/api/v1/sql", post(run_sql))
            .route("/api/v1/targets", get(targets))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
        let router = Router::new()
            .route("/", get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }))
            .route("/ui/app.js", get(|| async { page("text/javascript; charset=utf-8", APP_JS) }))
            .route("/ui/style.css", get(|| async { page("text/css; charset=utf-8", STYLE_CSS) }))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .merge(guarded)
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(state.clone());
        HttpServer { sql: state.sql.clone(), router, state }
    }

    /// Serves until the process ends; samples the cluster meanwhile.
    pub async fn serve(self, listener: crate::tls::TlsListener) -> anyhow::Result<()> {
        tokio::spawn(sample(self.state.clone()));
        axum::serve(listener, self.router).await?;
        Ok(())
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// An error answer: the status for the core's error, and its words.
struct ApiError(StatusCode, String);

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        let status = match &e {
            CoordinatorError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            CoordinatorError::NotFound(_) => StatusCode::NOT_FOUND,
            CoordinatorError::Conflict(_) => StatusCode::CONFLICT,
            CoordinatorError::Store(_) | CoordinatorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CoordinatorError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            CoordinatorError::Forbidden(_) => StatusCode::FORBIDDEN,
            CoordinatorError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// What a script that mistyped a path gets: JSON, like every other answer.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such path `{}`: the JSON API is under /api/v1/ (see the README's web UI section)", uri.path()),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let allowed = if uri.path() == "/api/v1/sql" { "POST" } else { "GET" };
    ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("`{method} {}` is not served: use {allowed}", uri.path()))
}

impl Http {
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::coordinator::core::Core) -> R + Send + 'static,
    ) -> ApiResult<R> {
        Ok(self.core.call(f).await?)
    }

    async fn ask<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut crate::coordinator::core::Core) -> Result<R, CoordinatorError> + Send + 'static,
    ) -> ApiResult<R> {
        Ok(self.core.call(f).await??)
    }

    /// The jobs `who` may see.
    async fn visible_jobs(&self, who: Principal) -> ApiResult<Vec<JobView>> {
        self.ask(move |c| {
            c.check_user(&who)?;
            Ok(c.jobs().into_iter().filter(|j| who.may_use_queue(&j.queue)).collect())
        })
        .await
    }

    /// A job by id or name, among those `who` may see.
    async fn job_id(&self, job: String, who: &Principal) -> ApiResult<u64> {
        match job.parse::<u64>() {
            Ok(id) => Ok(id),
            Err(_) => {
                let who = who.clone();
                Ok(self.core.call(move |c| c.resolve_for(&who, &job)).await??)
            }
        }
    }

    /// The live pipelines `who` may see (all, for `None`) with their lag;
    /// with their members' progress when `progress`.
    async fn pipelines(&self, progress: bool, who: Option<Principal>) -> Vec<PipelineView> {
        let visible = move |queue: &str| who.as_ref().is_none_or(|w| w.may_use_queue(queue));
        let ids: Vec<u64> = self
            .read(move |c| {
                let live = |j: &JobView| j.kind == "pipeline" && !j.state.is_final() && visible(&j.queue);
                c.jobs().into_iter().filter(live).map(|j| j.id).collect()
            })
            .await
            .unwrap_or_default();
        let views = ids.into_iter().map(|id| pipelines::view(&self.core, id, progress));
        futures::future::join_all(views).await.into_iter().filter_map(Result::ok).collect()
    }
}

/// Resolves the request's bearer token to a [`Principal`] for the handler.
async fn authenticate(
    State(http): State<Http>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = crate::coordinator::api::auth::bearer(request.headers()) else {
        // Said the HTTP way: CLI flags mean nothing to curl or Prometheus.
        let how = "no token: send `Authorization: Bearer <token>` (`cohort up` prints a signed-in link to the web \
                   UI; its client config and a standalone coordinator's admin.token hold one); an admin creates \
                   more with `cohort token create`";
        return ApiError::from(CoordinatorError::Unauthenticated(how.into())).into_response();
    };
    match crate::coordinator::api::auth::principal(&http.core, Some(token)).await {
        Ok(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn readyz(State(http): State<Http>) -> Response {
    let failed = http.core.call(|c| c.failed()).await.unwrap_or(true);
    match (failed, http.sql.get().is_some()) {
        (false, true) => (StatusCode::OK, "ready\n").into_response(),
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the core stopped after a state store failure\n")
            .into_response(),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the SQL catalog is loading\n").into_response(),
    }
}

async fn metrics_text(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Response> {
    let (nodes, jobs, queues, stats) = http
        .ask(move |c| {
            c.check_admin(&who)?;
            Ok((c.nodes(), c.jobs(), c.queues(), c.stats().clone()))
        })
        .await?;
    let pipelines = http.pipelines(true, None).await;
    let snapshot = Snapshot { nodes, jobs, queues, stats, pipelines };
    let query_latency = http.sql.get().map(|s| s.queries().latency().clone());
    let text = metrics::render(&snapshot, &http.metrics, query_latency.as_ref())
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response())
}

async fn status(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Value>> {
    let s = http
        .ask(move |c| {
            c.check_user(&who)?;
            Ok(c.status())
        })
        .await?;
    Ok(Json(json!({
        "coordinator": s.coordinator,
        "http": s.http,
        "kafka_bootstrap": s.kafka_bootstrap,
        "kafka_embedded": s.kafka_embedded,
        "agents": s.agents,
    })))
}

async fn nodes(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<NodeDoc>>> {
    let nodes = http
        .ask(move |c| {
            c.check_user(&who)?;
            Ok(c.nodes())
        })
        .await?;
    Ok(Json(nodes.iter().map(NodeDoc::from).collect()))
}

async fn jobs(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<JobDoc>>> {
    Ok(Json(http.visible_jobs(who).await?.iter().map(JobDoc::from).collect()))
}

async fn job(
    State(http): State<Http>,
    Extension(who): Extension<Principal>,
    Path(job): Path<String>,
) -> ApiResult<Json<JobDoc>> {
    let id = http.job_id(job, &who).await?;
    Ok(Json(JobDoc::from(&http.ask(move |c| c.check_job(&who, id).and_then(|()| c.job(id))).await?)))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    slot: u32,
    /// The last this many bytes (default 64 KiB).
    tail: Option<u64>,
}

async fn logs(
    State(http): State<Http>,
    Extension(who): Extension<Principal>,
    Path(job): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let id = http.job_id(job, &who).await?;
    http.ask(move |c| c.check_job(&who, id)).await?;
    let tail = q.tail.unwrap_or(64 * 1024).max(1);
    let text = crate::coordinator::logs::read(&http.core, id, q.slot, tail).await?;
    let body = String::from_utf8_lossy(&text).into_owned();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

#[derive(Serialize)]
struct ServiceDoc {
    #[serde(flatten)]
    job: JobDoc,
    instances: u32,
    endpoints: Vec<Value>,
}

async fn services(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<ServiceDoc>>> {
    let list = http
        .ask(move |c| {
            c.check_user(&who)?;
            Ok(c.jobs()
                .into_iter()
                .filter(|j| j.kind == "service" && who.may_use_queue(&j.queue))
                .map(|j| {
                    let endpoints = c.endpoints(j.id).unwrap_or_default();
                    (j, endpoints)
                })
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(Json(
        list.into_iter()
            .map(|(j, endpoints)| ServiceDoc {
                instances: j.desired_slots,
                job: JobDoc::from(&j),
                endpoints: endpoints
                    .into_iter()
                    .map(|e| json!({ "slot": e.slot, "node": e.node, "host": e.host, "ports": e.ports }))
                    .collect(),
            })
            .collect(),
    ))
}

async fn pipelines_list(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<Value>>> {
    let check = who.clone();
    http.ask(move |c| c.check_user(&check)).await?;
    let views = http.pipelines(true, Some(who)).await;
    let history = http.history.lock().expect("history").lag.clone();
    Ok(Json(
        views
            .into_iter()
            .map(|p| {
                let lag: i64 = p.partitions.iter().map(|x| x.lag).sum();
                let members: Vec<Value> = p
                    .job
                    .slots
                    .iter()
                    .map(|s| {
                        let mut m = json!({ "member": s.index, "node": s.node, "state": s.state.as_str() });
                        if let Some(progress) = p.members.iter().find(|m| m.member == s.index) {
                            for (k, v) in &progress.figures {
                                m[k] = json!(v);
                            }
                        }
                        m
                    })
                    .collect();
                json!({
                    "id": p.job.id,
                    "name": p.job.name,
                    "state": p.job.state.as_str(),
                    "reason": p.job.reason,
                    "topic": p.topic,
                    "group": p.group,
                    "brokers": p.brokers,
                    "sink": p.sink,
                    "lag": lag,
                    "lag_error": p.lag_error,
                    "partitions": p.partitions,
                    "members": members,
                    "lag_history": history.get(&p.job.name).cloned().unwrap_or_default(),
                })
            })
            .collect(),
    ))
}

async fn queues(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<Value>>> {
    let queues = http
        .ask(move |c| {
            c.check_user(&who)?;
            Ok(c.queues())
        })
        .await?;
    Ok(Json(
        queues
            .into_iter()
            .map(|q| {
                json!({
                    "name": q.name, "guarantee": q.guarantee, "cap": q.cap, "share": q.share, "pending": q.pending,
                    "allocated_cpu_millis": q.allocated.cpu_millis, "allocated_memory_bytes": q.allocated.memory_bytes,
                })
            })
            .collect(),
    ))
}

/// The samples of the last hour, and one of now.
async fn utilization(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Vec<Sample>>> {
    let now = http
        .ask(move |c| {
            c.check_user(&who)?;
            Ok(cluster_sample(&c.nodes(), &c.jobs(), c.now_ms()))
        })
        .await?;
    let mut samples: Vec<Sample> = http.history.lock().expect("history").cluster.iter().cloned().collect();
    samples.push(now);
    Ok(Json(samples))
}

async fn queries(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Value>> {
    http.ask(move |c| c.check_user(&who)).await?;
    Ok(Json(json!(http.sql.get().map(|s| s.queries().recent()).unwrap_or_default())))
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

/// Runs one statement: a query's first rows as JSON objects, or what a
/// change did.
async fn run_sql(
    State(http): State<Http>,
    Extension(who): Extension<Principal>,
    Json(req): Json<SqlRequest>,
) -> ApiResult<Json<Value>> {
    http.ask(move |c| c.check_user(&who)).await?;
    let front = http.sql.get().cloned().ok_or_else(|| {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "the SQL catalog is still loading; retry shortly".into())
    })?;
    let bad = |e: cohort_batch::Error| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let started = std::time::Instant::now();
    match front.describe(&req.sql, None).await.map_err(bad)? {
        Described::Effect(statement) => {
            let rows = front.execute(&req.sql, statement, None).await.map_err(bad)?;
            Ok(Json(json!({ "rows_affected": rows, "duration_ms": started.elapsed().as_secs_f64() * 1000.0 })))
        }
        Described::Query(schema) => {
            let outcome = front.query(&req.sql, None).await.map_err(bad)?;
            let mut stream = outcome.stream;
            let mut batches = Vec::new();
            let (mut shown, mut total) = (0usize, 0usize);
            while let Some(batch) = stream.try_next().await.map_err(|e| bad(e.into()))? {
                total += batch.num_rows();
                if shown < SQL_ROWS_SHOWN {
                    let take = batch.num_rows().min(SQL_ROWS_SHOWN - shown);
                    shown += take;
                    batches.push(batch.slice(0, take));
                }
            }
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for b in &batches {
                writer.write(b).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            }
            writer.finish().map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let bytes = writer.into_inner();
            let rows: Value =
                if bytes.is_empty() { json!([]) } else { serde_json::from_slice(&bytes).unwrap_or(json!([])) };
            Ok(Json(json!({
                "columns": schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
                "rows": rows,
                "row_count": total,
                "truncated": total > shown,
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
            })))
        }
    }
}

/// Prometheus HTTP service discovery: every agent's `/metrics`.
async fn targets(State(http): State<Http>, Extension(who): Extension<Principal>) -> ApiResult<Json<Value>> {
    let nodes = http
        .ask(move |c| {
            c.check_admin(&who)?;
            Ok(c.nodes())
        })
        .await?;
    let groups: Vec<Value> = nodes
        .iter()
        .filter(|n| !n.agent_address.is_empty())
        .map(|n| json!({ "targets": [n.agent_address], "labels": { "job": "cohort-agent", "node": n.name, "__scheme__": "https" } }))
        .collect();
    Ok(Json(json!(groups)))
}

/// Records the cluster (and each pipeline's lag) every [`SAMPLE_EVERY`].
async fn sample(http: Http) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        let Ok(sample) = http.read(|c| cluster_sample(&c.nodes(), &c.jobs(), c.now_ms())).await else { return };
        let lags: Vec<(String, LagSample)> = http
            .pipelines(false, None)
            .await
            .into_iter()
            .filter(|p| p.lag_error.is_empty())
            .map(|p| {
                let partitions = p.partitions.iter().map(|x| (x.partition, x.lag)).collect();
                (p.job.name, LagSample { at_ms: sample.at_ms, partitions })
            })
            .collect();
        let mut history = http.history.lock().expect("history");
        push_bounded(&mut history.cluster, sample);
        // Deleted pipelines' history goes with them.
        history.lag.retain(|name, _| lags.iter().any(|(live, _)| live == name));
        for (name, lag) in lags {
            push_bounded(history.lag.entry(name).or_default(), lag);
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == SAMPLES_KEPT {
        q.pop_front();
    }
    q.push_back(item);
}

fn cluster_sample(nodes: &[crate::coordinator::core::model::NodeView], jobs: &[JobView], at_ms: i64) -> Sample {
    let live = nodes.iter().filter(|n| n.state != cohort_scheduler::NodeState::Lost);
    let (mut cpu_used, mut cpu_cap, mut mem_used, mut mem_cap) = (0u64, 0u64, 0u64, 0u64);
    for n in live {
        cpu_used += n.allocated.cpu_millis;
        cpu_cap += n.capacity.cpu_millis;
        mem_used += n.allocated.memory_bytes;
        mem_cap += n.capacity.memory_bytes;
    }
    let count = |state: JobState| jobs.iter().filter(|j| j.state == state).count() as u32;
    Sample {
        at_ms,
        cpu_allocated_cores: cpu_used as f64 / 1000.0,
        cpu_capacity_cores: cpu_cap as f64 / 1000.0,
        memory_allocated_bytes: mem_used,
        memory_capacity_bytes: mem_cap,
        running_gangs: count(JobState::Running),
        pending_gangs: count(JobState::Pending),
    }
}

/// Binds the HTTP address (before the core loads, so a taken port fails fast).
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot serve HTTP on {address}"))
}
