//! `/metrics`: the cluster in the Prometheus text format, with the
//! ecosystem's conventions (`cohort_` prefix, base units: cores, bytes,
//! seconds; `_total` counters; `_seconds` histograms).
//!
//! Gauges are read off the core's views at scrape time and counters off
//! its [`CoreStats`], so a scrape costs one core call and nothing is
//! counted twice; the scheduling-pass and query latencies are observed
//! where they happen (the ticker, the SQL front).

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::core::model::{JobState, JobView, NodeView, QueueUsage};
use super::core::{CoreStats, stats};
use super::pipelines::PipelineView;
use crate::json::node_state_name;

/// Latencies observed outside the core.
#[derive(Debug)]
pub struct Metrics {
    /// One tick of the core: time, lost agents, a scheduling pass, rollouts.
    pub scheduling_pass: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        // 10 µs to about 2.6 s.
        Metrics { scheduling_pass: Histogram::new(exponential_buckets(0.00001, 2.0, 18)) }
    }
}

/// What one scrape reads off the core (and the pipelines' brokers).
pub struct Snapshot {
    pub nodes: Vec<NodeView>,
    pub jobs: Vec<JobView>,
    pub queues: Vec<QueueUsage>,
    pub stats: CoreStats,
    pub pipelines: Vec<PipelineView>,
}

type Labels = Vec<(String, String)>;

/// Label values escaped as the exposition format asks (prometheus-client
/// writes them as given): a queue named `q"x` would otherwise make the
/// whole scrape unreadable.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    pairs.iter().map(|(k, v)| (k.to_string(), escape(v))).collect()
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauges<V: Into<f64>>(
    rows: impl IntoIterator<Item = (Labels, V)>,
) -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (l, v) in rows {
        family.get_or_create(&l).inc_by(v.into());
    }
    family
}

/// A histogram the core keeps as plain buckets.
#[derive(Debug)]
struct Buckets(stats::Histogram);

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let mut buckets: Vec<(f64, u64)> = h.bounds.iter().copied().zip(h.counts.iter().copied()).collect();
        buckets.push((f64::MAX, h.counts[h.bounds.len()]));
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Renders the exposition text.
pub fn render(s: &Snapshot, process: &Metrics, query_latency: Option<&Histogram>) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("cohort");
    r.register(
        "build",
        "Cohort's version",
        prometheus_client::metrics::info::Info::new(vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
    );

    // Nodes.
    let mut by_state: BTreeMap<&str, f64> = ["ready", "cordoned", "draining", "lost"].map(|k| (k, 0.0)).into();
    for n in &s.nodes {
        *by_state.entry(node_state_name(n.state)).or_default() += 1.0;
    }
    r.register("nodes", "Nodes by state", gauges(by_state.into_iter().map(|(k, v)| (labels(&[("state", k)]), v))));
    let per_node = |f: fn(&NodeView) -> f64| gauges(s.nodes.iter().map(|n| (labels(&[("node", &n.name)]), f(n))));
    r.register("node_cpu_capacity_cores", "Cpu a node offers", per_node(|n| n.capacity.cpu_millis as f64 / 1000.0));
    r.register(
        "node_cpu_allocated_cores",
        "Cpu held by slots on a node",
        per_node(|n| n.allocated.cpu_millis as f64 / 1000.0),
    );
    r.register("node_memory_capacity_bytes", "Memory a node offers", per_node(|n| n.capacity.memory_bytes as f64));
    r.register(
        "node_memory_allocated_bytes",
        "Memory held by slots on a node",
        per_node(|n| n.allocated.memory_bytes as f64),
    );
    r.register("node_slots", "Slots placed on a node", per_node(|n| n.slots as f64));

    // Gangs (a job's current gang) by state and priority class; pending ones by reason.
    let mut gangs: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut pending: BTreeMap<&str, f64> = BTreeMap::new();
    for j in s.jobs.iter().filter(|j| !j.state.is_final()) {
        *gangs.entry((j.state.to_string(), j.priority.clone())).or_default() += 1.0;
        if j.state == JobState::Pending {
            *pending.entry(j.pending_kind.unwrap_or("unknown")).or_default() += 1.0;
        }
    }
    r.register(
        "gangs",
        "Live gangs by state and priority class",
        gauges(gangs.iter().map(|((state, class), v)| (labels(&[("state", state), ("priority", class)]), *v))),
    );
    r.register(
        "pending_gangs",
        "Pending gangs by the kind of reason they wait",
        gauges(pending.into_iter().map(|(k, v)| (labels(&[("reason", k)]), v))),
    );

    // Queues.
    let per_queue = |f: fn(&QueueUsage) -> f64| gauges(s.queues.iter().map(|q| (labels(&[("queue", &q.name)]), f(q))));
    r.register("queue_share_ratio", "A queue's dominant share of the cluster now", per_queue(|q| q.share));
    r.register("queue_guarantee_ratio", "The share a queue is guaranteed", per_queue(|q| q.guarantee));
    r.register("queue_cap_ratio", "The share a queue may never exceed", per_queue(|q| q.cap));
    r.register("queue_pending_gangs", "Gangs waiting in a queue", per_queue(|q| q.pending as f64));

    // What the core did.
    let st = &s.stats;
    r.register("placements", "Slots placed by scheduling passes", counter(st.placements));
    r.register("preemptions", "Slots stopped to make room for more important work", counter(st.preemptions));
    r.register("job_attempts_started", "Job attempts started", counter(st.attempts_started));
    let ended = Family::<Labels, Counter>::default();
    for (outcome, n) in &st.attempts_ended {
        ended.get_or_create(&labels(&[("outcome", outcome)])).inc_by(*n);
    }
    r.register("job_attempts_ended", "Job attempts and service instances that ended, by outcome", ended);
    r.register(
        "executor_restarts",
        "Executors started again after their work ended early",
        counter(st.executor_restarts),
    );
    r.register(
        "queue_wait_seconds",
        "Time from submission (or the last attempt's end) to placement",
        Buckets(st.queue_wait.clone()),
    );
    r.register(
        "scheduling_pass_seconds",
        "Duration of a core tick with its scheduling pass",
        process.scheduling_pass.clone(),
    );
    if let Some(h) = query_latency {
        r.register("query_duration_seconds", "Interactive SQL queries, from planning to the last batch", h.clone());
    }

    // Services.
    let services: Vec<&JobView> = s.jobs.iter().filter(|j| j.kind == "service" && !j.state.is_final()).collect();
    r.register(
        "service_instances_healthy",
        "Service instances passing their health check",
        gauges(services.iter().map(|j| {
            let healthy = j.slots.iter().filter(|x| x.state.is_live() && x.healthy == Some(true)).count();
            (labels(&[("service", &j.name)]), healthy as f64)
        })),
    );
    r.register(
        "service_instances_desired",
        "Service instances asked for",
        gauges(services.iter().map(|j| (labels(&[("service", &j.name)]), j.desired_slots as f64))),
    );

    // Pipelines.
    let records = |key: &'static str| {
        let family = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        for p in &s.pipelines {
            for m in &p.members {
                if let Some((_, v)) = m.figures.iter().find(|(k, _)| k == key) {
                    let member = m.member.to_string();
                    family.get_or_create(&labels(&[("pipeline", &p.job.name), ("member", &member)])).inc_by(*v);
                }
            }
        }
        family
    };
    r.register("pipeline_records_in", "Records a running member read (since it started)", records("in"));
    r.register("pipeline_records_out", "Records a running member wrote to its sink (since it started)", records("out"));
    r.register("pipeline_records_dead_lettered", "Bad records sent to the dead-letter topic", records("dead_lettered"));
    r.register(
        "pipeline_lag_messages",
        "Messages in a partition not yet committed by the pipeline's group",
        gauges(s.pipelines.iter().flat_map(|p| {
            p.partitions.iter().map(|x| {
                let partition = x.partition.to_string();
                (labels(&[("pipeline", &p.job.name), ("partition", &partition)]), x.lag as f64)
            })
        })),
    );

    let mut text = String::new();
    encode(&mut text, &r)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(String::from)
            .collect()
    }

    #[test]
    fn an_empty_cluster_renders_every_family_in_openmetrics_text() {
        let empty =
            Snapshot { nodes: vec![], jobs: vec![], queues: vec![], stats: CoreStats::default(), pipelines: vec![] };
        let text =
            render(&empty, &Metrics::default(), Some(&Histogram::new(exponential_buckets(0.001, 2.0, 4)))).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("cohort_placements_total 0"), "{text}");
        assert!(text.contains("cohort_queue_wait_seconds_bucket{le=\"+Inf\"} 0"), "{text}");
        assert!(text.contains("cohort_nodes{state=\"ready\"} 0"), "{text}");
    }

    /// A cluster with one of everything: a node, a queue, a pending gang,
    /// a service and a pipeline with lag and a member's progress.
    fn busy() -> Snapshot {
        use std::collections::BTreeMap;

        use cohort_scheduler::{NodeState, Resources};

        use crate::coordinator::core::model::{SlotState, SlotView};
        use crate::coordinator::pipelines::{MemberProgress, PartitionLag};

        let slot = SlotView {
            index: 0,
            node: "a".into(),
            state: SlotState::Running,
            alloc_id: 1,
            exit_code: 0,
            healthy: Some(true),
            ports: BTreeMap::new(),
            version: 1,
        };
        let job = |name: &str, kind: &str, state: JobState| JobView {
            id: 1,
            name: name.into(),
            kind: kind.into(),
            state,
            attempts: 1,
            priority: "service".into(),
            queue: "default".into(),
            reason: String::new(),
            pending_kind: (state == JobState::Pending).then_some("no_room"),
            desired_slots: 1,
            slots: vec![slot.clone()],
            submitted_at_ms: 0,
            history: vec![],
            deployment: None,
        };
        let node = NodeView {
            id: 0,
            name: "a".into(),
            state: NodeState::Ready,
            capacity: Resources::new(2000, 1 << 30),
            allocated: Resources::new(1000, 1 << 29),
            slots: 1,
            isolation: "rss-watch".into(),
            labels: BTreeMap::new(),
            max_executors: 110,
            address: "a".into(),
            agent_address: "127.0.0.1:1".into(),
            runs_as: "nobody (uid 65534)".into(),
        };
        let queue = QueueUsage {
            name: "default".into(),
            guarantee: 1.0,
            cap: 1.0,
            share: 0.5,
            allocated: Resources::new(1000, 1 << 29),
            pending: 1,
        };
        let pipeline = PipelineView {
            job: job("clicks", "pipeline", JobState::Running),
            topic: "clicks".into(),
            group: "clicks".into(),
            brokers: "localhost:9092".into(),
            sink: "parquet:/tmp/x".into(),
            partitions: vec![PartitionLag { partition: 0, committed: Some(5), end: 7, lag: 2 }],
            lag_error: String::new(),
            members: vec![MemberProgress {
                member: 0,
                node: "a".into(),
                figures: vec![("in".into(), 7.0), ("out".into(), 5.0), ("dead_lettered".into(), 1.0)],
            }],
        };
        Snapshot {
            nodes: vec![node],
            jobs: vec![job("web", "service", JobState::Running), job("wide", "command", JobState::Pending)],
            queues: vec![queue],
            stats: CoreStats { attempts_ended: [("failed".to_string(), 1)].into(), ..CoreStats::default() },
            pipelines: vec![pipeline],
        }
    }

    #[test]
    fn a_busy_cluster_is_labelled_in_base_units() {
        let text = render(&busy(), &Metrics::default(), None).unwrap();
        for line in [
            "cohort_node_cpu_capacity_cores{node=\"a\"} 2.0",
            "cohort_node_memory_allocated_bytes{node=\"a\"} 536870912.0",
            "cohort_pending_gangs{reason=\"no_room\"} 1.0",
            "cohort_service_instances_healthy{service=\"web\"} 1.0",
            "cohort_pipeline_lag_messages{pipeline=\"clicks\",partition=\"0\"} 2.0",
            "cohort_pipeline_records_in_total{pipeline=\"clicks\",member=\"0\"} 7.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut odd = busy();
        odd.queues[0].name = "q\"x\\y\nz".into();
        let text = render(&odd, &Metrics::default(), None).unwrap();
        assert!(text.contains(r#"cohort_queue_share_ratio{queue="q\"x\\y\nz"} 0.5"#), "{text}");
    }

    /// Every coordinator metric the Grafana dashboard in `docs/` queries exists.
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let text =
            render(&busy(), &Metrics::default(), Some(&Histogram::new(exponential_buckets(0.001, 2.0, 4)))).unwrap();
        let known = families(&text);
        let dashboard = include_str!("../../docs/grafana/cohort.json");
        let mut queried = Vec::new();
        let mut rest = dashboard;
        while let Some(at) = rest.find("cohort_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            queried.push(name);
        }
        assert!(queried.len() > 15, "{queried:?}");
        for name in queried.iter().filter(|n| !n.starts_with("cohort_agent_")) {
            let family = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(known.iter().any(|k| k == family), "the dashboard queries {name}, which /metrics lacks");
        }
    }
}
