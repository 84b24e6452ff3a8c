//! The agent's HTTP side, on the same address as its log service (gRPC and
//! HTTP/1 share the port): `/healthz` and `/metrics` for Prometheus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Settings;
use super::executors::Executors;

/// What the agent counts as executors come and go.
#[derive(Debug, Default)]
pub(super) struct AgentStats {
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub stopped: AtomicU64,
    pub lost: AtomicU64,
}

impl AgentStats {
    /// Counts an executor's end under the outcome its report gives.
    pub fn ended(&self, e: &cohort_proto::ExecutorExited) {
        let counter = if e.lost {
            &self.lost
        } else if e.stopped {
            &self.stopped
        } else if e.exit_code == 0 {
            &self.succeeded
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Agent {
    settings: Arc<Settings>,
    executors: Executors,
}

/// `router` (the log service) with `/healthz` and `/metrics` beside it.
pub(super) fn with_http(router: Router, settings: Settings, executors: Executors) -> Router {
    let state = Agent { settings: Arc::new(settings), executors };
    router.merge(
        Router::new().route("/healthz", get(|| async { "ok\n" })).route("/metrics", get(metrics)).with_state(state),
    )
}

async fn metrics(State(agent): State<Agent>) -> impl IntoResponse {
    let mut registry = Registry::with_prefix("cohort_agent");
    let s = &agent.settings;
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    registry.register("executors", "Executors running on this host", gauge(agent.executors.running().len() as i64));
    registry.register("executors_max", "At most this many executors at once", gauge(s.max_executors as i64));
    registry.register("cpu_capacity_millicores", "Cpu this host offers", gauge(s.cpu_millis as i64));
    registry.register("memory_capacity_bytes", "Memory this host offers", gauge(s.memory_bytes as i64));
    let stats = &agent.executors.stats;
    let started = Counter::<u64>::default();
    started.inc_by(stats.started.load(Ordering::Relaxed));
    registry.register("executors_started", "Executors this agent started", started);
    let ended = Family::<Vec<(String, String)>, Counter>::default();
    for (outcome, n) in
        [("succeeded", &stats.succeeded), ("failed", &stats.failed), ("stopped", &stats.stopped), ("lost", &stats.lost)]
    {
        ended.get_or_create(&vec![("outcome".into(), outcome.into())]).inc_by(n.load(Ordering::Relaxed));
    }
    registry.register("executors_ended", "Executors that ended, by outcome", ended);
    let mut text = String::new();
    match encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, crate::coordinator::api::http::METRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
