//! Where the tasks that read cached partitions run: on the hosts that hold
//! them, so they map the partitions from shared memory instead of pulling
//! them over the network.
//!
//! datafusion-distributed asks three questions of a leaf; for a
//! [`CachedScanExec`] they are answered here:
//!
//! 1. how many tasks its stage wants ([`desired_tasks`]): one per host
//!    holding its partitions;
//! 2. what each task reads ([`split_by_host`]): task `i` gets the
//!    partitions of host `i mod hosts` (spread over the tasks sharing a
//!    host when there are more tasks than hosts, and several hosts per task
//!    when there are fewer);
//! 3. which worker runs each task ([`route_to_hosts`]): one on the host
//!    holding most of the task's bytes, else any (the task then reads over
//!    Flight, which is correct, only slower).
//!
//! The warm pool is grown near the cached bytes first (the coordinator's
//! `GangLocated`), so a worker on each such host is usually there.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedGetterExt, DistributedLeafExec, RouteTasksEvent,
    RouteTasksEventResponse, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse,
};
use url::Url;

use crate::cached::{CachedScanExec, Placement};

/// The host of a store or worker URL ("" if it has none).
fn host(url: &str) -> String {
    Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
}

/// A cached scan's stage wants one task per host holding its partitions.
pub(crate) fn desired_tasks(ev: DesiredTaskCountEvent) -> Option<Result<DesiredTaskCountEventResponse>> {
    let scan = ev.plan.downcast_ref::<CachedScanExec>()?;
    let hosts = hosts_by_bytes(scan.parts()).len();
    Some(Ok(DesiredTaskCountEventResponse::desired(hosts.max(1))))
}

/// Hosts and the bytes each holds, in host order.
fn hosts_by_bytes<'a>(parts: impl IntoIterator<Item = &'a Placement>) -> BTreeMap<String, u64> {
    let mut hosts = BTreeMap::new();
    for part in parts {
        *hosts.entry(host(&part.store)).or_insert(0) += part.bytes;
    }
    hosts
}

/// Which stored partitions each of `tasks` tasks reads: every partition
/// exactly once, each task's from as few hosts as the counts allow.
pub(crate) fn assign(parts: &[Placement], tasks: usize) -> Vec<Vec<Placement>> {
    let tasks = tasks.max(1);
    let hosts: Vec<String> = hosts_by_bytes(parts).into_keys().collect();
    let mut out = vec![Vec::new(); tasks];
    let mut next_of_host = vec![0usize; hosts.len()];
    for part in parts {
        let h = hosts.binary_search(&host(&part.store)).expect("every part's host is listed");
        let task = if tasks >= hosts.len() {
            // This host's tasks are h, h + hosts, h + 2 hosts, ...: take turns among them.
            let shared_by = (tasks - h).div_ceil(hosts.len());
            let turn = next_of_host[h] % shared_by;
            next_of_host[h] += 1;
            h + turn * hosts.len()
        } else {
            h % tasks
        };
        out[task].push(part.clone());
    }
    out
}

/// Splits a cached scan into one variant per task (see [`assign`]); every
/// variant has as many output partitions as the largest needs, so they
/// line up (the smaller ones leave some empty).
pub(crate) fn split_by_host(ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
    let scan = ev.plan.downcast_ref::<CachedScanExec>()?;
    let groups = assign(scan.parts(), ev.task_count);
    let widest = groups.iter().map(Vec::len).max().unwrap_or(1);
    let outputs = widest.clamp(1, ev.session_config.target_partitions().max(1));
    let variants = groups.into_iter().map(|parts| Arc::new(scan.with_parts(parts, outputs)) as Arc<dyn ExecutionPlan>);
    Some(
        DistributedLeafExec::try_new(ev.plan.clone(), variants)
            .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
    )
}

/// Sends each task of a stage that reads a cached scan to a worker on the
/// host holding most of its bytes.
pub(crate) fn route_to_hosts(ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
    let mut variants: Option<Vec<Arc<dyn ExecutionPlan>>> = None;
    let walked = ev.plan.apply(|node| {
        if let Some(leaf) = node.downcast_ref::<DistributedLeafExec>()
            && leaf.original().downcast_ref::<CachedScanExec>().is_some()
        {
            variants = Some(leaf.variants().to_vec());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Err(e) = walked {
        return Some(Err(e));
    }
    let variants = variants?;
    let workers = match ev.task_ctx.session_config().get_distributed_worker_resolver().and_then(|r| r.get_urls()) {
        Ok(workers) if !workers.is_empty() => workers,
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    };
    let reads: Vec<Vec<Placement>> = (0..ev.task_count)
        .map(|i| {
            variants
                .get(i)
                .and_then(|v| v.downcast_ref::<CachedScanExec>())
                .map(|s| s.parts().to_vec())
                .unwrap_or_default()
        })
        .collect();
    Some(Ok(RouteTasksEventResponse::new(route(&reads, &workers))))
}

/// One worker per task: on the host holding most of the task's bytes
/// (taking turns among that host's workers), else round-robin.
pub(crate) fn route(reads: &[Vec<Placement>], workers: &[Url]) -> Vec<Url> {
    let mut sorted = workers.to_vec();
    sorted.sort();
    let mut on_host: BTreeMap<String, Vec<Url>> = BTreeMap::new();
    for worker in &sorted {
        on_host.entry(worker.host_str().unwrap_or_default().to_string()).or_default().push(worker.clone());
    }
    let mut turns: BTreeMap<String, usize> = BTreeMap::new();
    reads
        .iter()
        .enumerate()
        .map(|(i, parts)| {
            let busiest = hosts_by_bytes(parts).into_iter().max_by_key(|(_, bytes)| *bytes).map(|(h, _)| h);
            match busiest.and_then(|h| on_host.get(&h).map(|local| (h, local))) {
                Some((h, local)) => {
                    let turn = turns.entry(h).or_insert(0);
                    *turn += 1;
                    local[(*turn - 1) % local.len()].clone()
                }
                None => sorted[i % sorted.len()].clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PartId, StoreSettings, serve_store};
    use crate::{EngineSettings, SqlEngine, WorkerSettings, WorkerSource};
    use arrow::record_batch::RecordBatch;
    use futures::TryStreamExt;

    fn part(store: &str, partition: u32, bytes: u64) -> Placement {
        Placement {
            store: store.into(),
            part: PartId { table: "t".into(), version: 1, partition },
            rows: 1,
            bytes,
            shm: None,
            stats: None,
            deleted: None,
        }
    }

    fn hosts_of(tasks: &[Vec<Placement>]) -> Vec<Vec<String>> {
        tasks.iter().map(|t| t.iter().map(|p| host(&p.store)).collect()).collect()
    }

    #[test]
    fn given_partitions_on_two_hosts_each_task_reads_one_hosts_partitions() {
        let parts = vec![
            part("https://10.0.0.2:7001", 0, 10),
            part("https://10.0.0.1:7001", 1, 10),
            part("https://10.0.0.2:7001", 2, 10),
            part("https://10.0.0.1:7002", 3, 10),
        ];
        let two = assign(&parts, 2);
        assert_eq!(hosts_of(&two), [vec!["10.0.0.1"; 2], vec!["10.0.0.2"; 2]], "one host per task");

        // More tasks than hosts: a host's partitions are shared by its tasks.
        let four = assign(&parts, 4);
        assert_eq!(four.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1, 1]);
        assert_eq!(hosts_of(&four), [vec!["10.0.0.1"], vec!["10.0.0.2"], vec!["10.0.0.1"], vec!["10.0.0.2"]]);

        // Fewer tasks than hosts: every partition is still read, once.
        let one = assign(&parts, 1);
        let mut read: Vec<u32> = one[0].iter().map(|p| p.part.partition).collect();
        read.sort();
        assert_eq!(read, [0, 1, 2, 3]);
    }

    #[test]
    fn given_workers_on_some_hosts_tasks_go_where_their_bytes_are() {
        let workers: Vec<Url> = ["https://10.0.0.2:9000", "https://10.0.0.1:9000", "https://10.0.0.1:9001"]
            .iter()
            .map(|u| Url::parse(u).unwrap())
            .collect();
        let reads = vec![
            vec![part("https://10.0.0.1:7001", 0, 10)],
            vec![part("https://10.0.0.2:7001", 1, 5), part("https://10.0.0.1:7001", 2, 50)],
            vec![part("https://10.0.0.1:7001", 3, 10)],
            vec![part("https://10.0.0.3:7001", 4, 10)],
        ];
        let routed: Vec<String> = route(&reads, &workers).iter().map(Url::to_string).collect();
        assert_eq!(
            routed,
            [
                "https://10.0.0.1:9000/",
                "https://10.0.0.1:9001/",
                "https://10.0.0.1:9000/",
                // No worker on 10.0.0.3: any, by task index.
                "https://10.0.0.1:9000/",
            ],
            "the host with most bytes wins, its workers take turns"
        );
    }

    /// A free port on `ip` (any 127.x address is this machine's loopback).
    fn free(ip: &str) -> std::net::SocketAddr {
        std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
    }

    async fn until_serving(address: std::net::SocketAddr) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("nothing served on {address} within 4 s");
    }

    /// Workers, and how often a query asked for them (only distributed ones do).
    struct Pool(Vec<Url>, std::sync::atomic::AtomicU32);

    #[async_trait::async_trait]
    impl WorkerSource for Pool {
        async fn workers(&self, _: u32) -> crate::Result<Vec<Url>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.0.clone())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_table_cached_on_two_hosts_a_query_runs_on_their_workers_and_answers_right() {
        // Given a store and a worker on each of two hosts (127.0.0.1 and
        // 127.0.0.2), and no shared memory the driver could map
        let spill = tempfile::tempdir().unwrap();
        let (mut stores, mut workers) = (Vec::new(), Vec::new());
        for ip in ["127.0.0.1", "127.0.0.2"] {
            let listen = free(ip);
            tokio::spawn(serve_store(
                StoreSettings { listen, budget_bytes: 64 << 20, tls: None, shm_dir: None },
                std::future::pending(),
            ));
            until_serving(listen).await;
            stores.push(Url::parse(&format!("http://{listen}")).unwrap());
            let listen = free(ip);
            let settings =
                WorkerSettings { listen, memory_bytes: 256 << 20, spill_dir: spill.path().join(ip), tls: None };
            tokio::spawn(crate::serve(settings, std::future::pending()));
            until_serving(listen).await;
            workers.push(Url::parse(&format!("http://{listen}")).unwrap());
        }
        let engine = SqlEngine::new(EngineSettings { target_partitions: 2, ..Default::default() }).unwrap();
        let pool = Pool(workers, Default::default());
        let source = "SELECT value AS id, value % 7 AS k FROM generate_series(1, 200000)";
        let cached = engine.cache_table("t", Some(source), &pool, &stores, 1 << 30).await.unwrap();
        let hosts: std::collections::BTreeSet<String> = cached.parts.iter().map(|p| host(&p.store)).collect();
        assert_eq!(hosts.len(), 2, "the table is spread over both hosts");

        // When a query reads it
        let sql = "SELECT k, count(*) AS n, sum(id) AS total FROM t GROUP BY k ORDER BY k";
        let asked_before = pool.1.load(std::sync::atomic::Ordering::SeqCst);
        let plan = engine.plan(sql, None).await.unwrap();
        let out: Vec<RecordBatch> = engine.run(plan, &pool).await.unwrap().stream.try_collect().await.unwrap();

        // Then it ran on the workers (the driver maps nothing here) and
        // answers as DataFusion does over the source
        assert_eq!(pool.1.load(std::sync::atomic::Ordering::SeqCst), asked_before + 1, "planned over the workers");
        let expected = datafusion::prelude::SessionContext::new()
            .sql(&sql.replace("FROM t", &format!("FROM ({source})")))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let pretty = |b: &[RecordBatch]| arrow::util::pretty::pretty_format_batches(b).unwrap().to_string();
        assert_eq!(pretty(&out), pretty(&expected));
    }
}
